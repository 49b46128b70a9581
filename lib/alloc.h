/*
 * Every heap allocation of the library goes through these, so that tests can make the n-th one
 * fail (bsi_alloc_fail_at) and check that each failure path returns BONSAI_ERR_NO_MEMORY, leaks
 * nothing and leaves earlier objects usable. Release with free(). Not installed.
 */
#ifndef BONSAI_ALLOC_H
#define BONSAI_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *bsi_malloc(size_t size);
void *bsi_calloc(size_t n, size_t size);
void *bsi_realloc(void *p, size_t size);
void *bsi_aligned_alloc(size_t alignment, size_t size);
char *bsi_strdup(const char *s);

/* Tests only: the n-th allocation from now on fails (n >= 1), and every later one succeeds;
 * 0 turns failures off. Process-wide (all threads). */
void bsi_alloc_fail_at(uint64_t n);
/* Allocations made since the process started (a test counts the ones of an operation). */
uint64_t bsi_alloc_count(void);

#endif
