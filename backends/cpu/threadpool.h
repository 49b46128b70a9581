/*
 * A persistent thread pool for parallel loops. Threads are created once; each parallel loop hands
 * out chunks of its index range through one atomic counter, so threads that finish early take more
 * work and no barrier is needed inside a loop. Waiting workers spin briefly (a decode step issues
 * hundreds of short loops) and then sleep on a condition variable.
 */
#ifndef BONSAI_THREADPOOL_H
#define BONSAI_THREADPOOL_H

#include <stdint.h>

typedef struct bsi_pool bsi_pool;

/* fn(ctx, begin, end, thread) processes indices [begin, end); `thread` is 0..n_threads-1. */
typedef void (*bsi_task_fn)(void *ctx, int64_t begin, int64_t end, int thread);

/* A pool of n_threads (the caller's thread counts as one; n_threads - 1 are started). NULL when
 * out of memory or a thread cannot be created. */
bsi_pool *bsi_pool_new(int n_threads);
void bsi_pool_free(bsi_pool *pool);
int bsi_pool_threads(const bsi_pool *pool);

/* Runs fn over [0, n) in chunks of `grain` indices, on every thread of the pool including the
 * caller's, and returns when all are done. Not re-entrant: one loop at a time per pool. */
void bsi_pool_for(bsi_pool *pool, int64_t n, int64_t grain, bsi_task_fn fn, void *ctx);

/* Number of physical cores (falls back to logical CPUs, then 1). */
int bsi_physical_cores(void);

#endif
