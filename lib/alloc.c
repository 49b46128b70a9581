/* Heap allocation with a failure-injection hook for tests (alloc.h). */
#include "alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_uint_fast64_t n_allocs;
static atomic_uint_fast64_t fail_at; /* the value of n_allocs that fails; 0: none */

static inline int should_fail(void)
{
    uint_fast64_t k = atomic_fetch_add_explicit(&n_allocs, 1, memory_order_relaxed) + 1;
    uint_fast64_t f = atomic_load_explicit(&fail_at, memory_order_relaxed);
    if (f && k == f) {
        atomic_store(&fail_at, 0);
        return 1;
    }
    return 0;
}

void *bsi_malloc(size_t size)
{
    return should_fail() ? NULL : malloc(size);
}

void *bsi_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : calloc(n, size);
}

void *bsi_realloc(void *p, size_t size)
{
    return should_fail() ? NULL : realloc(p, size);
}

void *bsi_aligned_alloc(size_t alignment, size_t size)
{
    return should_fail() ? NULL : aligned_alloc(alignment, size);
}

char *bsi_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = bsi_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void bsi_alloc_fail_at(uint64_t n)
{
    atomic_store(&fail_at, n ? atomic_load(&n_allocs) + n : 0);
}

uint64_t bsi_alloc_count(void)
{
    return atomic_load(&n_allocs);
}
