/* The persistent thread pool: every index exactly once, from 1 to 8 threads, many loops. */
#include "test_util.h"

#include "threadpool.h"

#include <stdatomic.h>
#include <time.h>

#define N 10007

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

typedef struct job {
    _Atomic int hits[N];
    _Atomic int threads_seen;
    int max_thread;
    _Atomic int bad_thread;
} job;

static void mark(void *ctx, int64_t begin, int64_t end, int thread)
{
    job *j = ctx;
    if (thread < 0 || thread > j->max_thread) atomic_store(&j->bad_thread, 1);
    atomic_fetch_or(&j->threads_seen, 1 << thread);
    for (int64_t i = begin; i < end; i++) atomic_fetch_add(&j->hits[i], 1);
}

static void test_every_index_once(void **state)
{
    (void)state;
    static job j;
    for (int threads = 1; threads <= 8; threads++) {
        bsi_pool *p = bsi_pool_new(threads);
        assert_non_null(p);
        assert_int_equal(bsi_pool_threads(p), threads);
        const int64_t grains[] = {1, 7, 64, N, 3 * N};
        for (size_t g = 0; g < sizeof grains / sizeof grains[0]; g++) {
            for (int rep = 0; rep < 20; rep++) {
                memset(&j, 0, sizeof j);
                j.max_thread = threads - 1;
                int64_t n = N - rep; /* sizes that do not divide evenly */
                bsi_pool_for(p, n, grains[g], mark, &j);
                for (int64_t i = 0; i < N; i++)
                    if (atomic_load(&j.hits[i]) != (i < n))
                        fail_msg("threads %d grain %lld: index %lld hit %d times", threads,
                                 (long long)grains[g], (long long)i, atomic_load(&j.hits[i]));
                assert_int_equal(atomic_load(&j.bad_thread), 0);
            }
        }
        bsi_pool_for(p, 0, 1, mark, &j); /* empty loop returns */
        bsi_pool_free(p);
    }
    bsi_pool_free(NULL);
}

typedef struct sum_job {
    _Atomic long long total;
} sum_job;

static void add_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    sum_job *s = ctx;
    long long local = 0;
    for (int64_t i = begin; i < end; i++) local += i;
    atomic_fetch_add(&s->total, local);
}

/* Many short loops back to back, as a decode step issues them, and loops after workers slept. */
static void test_many_loops(void **state)
{
    (void)state;
    bsi_pool *p = bsi_pool_new(4);
    assert_non_null(p);
    for (int rep = 0; rep < 20000; rep++) {
        sum_job s = {0};
        bsi_pool_for(p, 100, 3, add_range, &s);
        assert_int_equal(atomic_load(&s.total), 4950);
    }
    sleep_us(300 * 1000); /* workers fall asleep */
    sum_job s = {0};
    bsi_pool_for(p, 1000, 10, add_range, &s);
    assert_int_equal(atomic_load(&s.total), 499500);
    bsi_pool_free(p);
}

/* Work is shared: with slow tasks every thread takes part. */
static void slow(void *ctx, int64_t begin, int64_t end, int thread)
{
    job *j = ctx;
    atomic_fetch_or(&j->threads_seen, 1 << thread);
    (void)begin;
    (void)end;
    sleep_us(2000);
}

static void test_all_threads_work(void **state)
{
    (void)state;
    static job j;
    memset(&j, 0, sizeof j);
    bsi_pool *p = bsi_pool_new(4);
    bsi_pool_for(p, 64, 1, slow, &j);
    assert_int_equal(atomic_load(&j.threads_seen), 0xf);
    bsi_pool_free(p);
    assert_true(bsi_physical_cores() >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_index_once),
        cmocka_unit_test(test_many_loops),
        cmocka_unit_test(test_all_threads_work),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
