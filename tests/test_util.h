/* Helpers shared by the cmocka tests. Include after <cmocka.h>'s prerequisites. */
#ifndef BONSAI_TEST_UTIL_H
#define BONSAI_TEST_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bonsai/bonsai.h"

/* 1 in builds with AddressSanitizer (tests shrink their slowest loops there). */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

/*
 * Path of a file of the shared test data (../shared/data, or BONSAI_TEST_DATA as set by
 * `meson test`). When the file is missing the test is skipped with a message, unless
 * BONSAI_REQUIRE_TEST_DATA=1 (CI), in which case it fails.
 */
static inline const char *test_data(const char *name)
{
    static char path[4096];
    const char *dir = getenv("BONSAI_TEST_DATA");
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "../shared/data", name);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        return path;
    }
    const char *req = getenv("BONSAI_REQUIRE_TEST_DATA");
    if (req && !strcmp(req, "1")) fail_msg("required test data missing: %s", path);
    print_message("SKIP: test data missing: %s (set BONSAI_TEST_DATA)\n", path);
    skip();
    return NULL;
}

/* Seeded xorshift64: the same random data on every run. */
static uint64_t test_rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t test_rand(void)
{
    test_rng_state ^= test_rng_state << 13;
    test_rng_state ^= test_rng_state >> 7;
    test_rng_state ^= test_rng_state << 17;
    return test_rng_state;
}

/* Uniform in (-1, 1), never exactly 0. */
static inline float test_uniform(void)
{
    float f = (float)((test_rand() >> 40) + 1) / (float)(1ull << 24);
    return test_rand() & 1 ? f : -f;
}

/* Attention of one query in double precision: out[0..hd) = sum_p softmax_p(scale q.k_p) v_p over
 * positions [0, n), k and v given as [n][hd] doubles; sc is scratch for n doubles. */
static inline void test_attention_ref(const float *q, const double *k, const double *v, int64_t n,
                                      int64_t hd, double scale, double *sc, double *out)
{
    double max = -INFINITY, sum = 0;
    for (int64_t p = 0; p < n; p++) {
        double d = 0;
        for (int64_t i = 0; i < hd; i++) d += (double)q[i] * k[p * hd + i];
        sc[p] = d * scale;
        max = fmax(max, sc[p]);
    }
    for (int64_t p = 0; p < n; p++) sum += (sc[p] = exp(sc[p] - max));
    for (int64_t i = 0; i < hd; i++) {
        double r = 0;
        for (int64_t p = 0; p < n; p++) r += sc[p] / sum * v[p * hd + i];
        out[i] = r;
    }
}

/* Asserts that `st` is `expected` and that bonsai_last_error() contains `needle`. */
#define assert_error(st, expected, needle)                                                         \
    do {                                                                                           \
        bonsai_status st_ = (st);                                                                  \
        if (st_ != (expected))                                                                     \
            fail_msg("status %d (%s), expected %d (%s); last error: %s", st_,                      \
                     bonsai_status_string(st_), (expected), bonsai_status_string(expected),        \
                     bonsai_last_error());                                                         \
        if (!strstr(bonsai_last_error(), (needle)))                                                \
            fail_msg("error message \"%s\" does not contain \"%s\"", bonsai_last_error(),          \
                     (needle));                                                                    \
    } while (0)

#endif
