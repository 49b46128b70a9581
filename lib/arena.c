#include "arena.h"
#include "alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_CHUNK (64 * 1024)
#define ARENA_ALIGN 16

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(ARENA_ALIGN) unsigned char data[];
} chunk;

struct bsi_arena {
    chunk *head;
};

bsi_arena *bsi_arena_new(void)
{
    return bsi_calloc(1, sizeof(bsi_arena));
}

void bsi_arena_free(bsi_arena *a)
{
    if (!a) return;
    for (chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

void *bsi_arena_alloc(bsi_arena *a, size_t n)
{
    if (n > SIZE_MAX - 2 * ARENA_ALIGN - sizeof(chunk)) return NULL;
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        chunk *fresh = bsi_malloc(sizeof(chunk) + cap);
        if (!fresh) return NULL;
        fresh->used = 0;
        fresh->cap = cap;
        if (c && n > ARENA_CHUNK) {
            /* A big block gets its own chunk behind the current one, which keeps its room. */
            fresh->next = c->next;
            c->next = fresh;
        } else {
            fresh->next = c;
            a->head = fresh;
        }
        c = fresh;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

void *bsi_arena_calloc(bsi_arena *a, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = bsi_arena_alloc(a, n * size);
    if (p) memset(p, 0, n * size);
    return p;
}
