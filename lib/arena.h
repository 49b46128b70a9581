/* A grow-only allocator freed all at once: parsed metadata lives in one. */
#ifndef BONSAI_ARENA_H
#define BONSAI_ARENA_H

#include <stddef.h>

typedef struct bsi_arena bsi_arena;

bsi_arena *bsi_arena_new(void);
void bsi_arena_free(bsi_arena *a);
/* `n` bytes aligned for any type, or NULL when out of memory. */
void *bsi_arena_alloc(bsi_arena *a, size_t n);
/* `n` elements of `size` bytes, zeroed, NULL on overflow or out of memory. */
void *bsi_arena_calloc(bsi_arena *a, size_t n, size_t size);

#endif
