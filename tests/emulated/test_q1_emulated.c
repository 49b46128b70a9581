/*
 * The AVX-512 and NEON Q1_0 kernels, compiled against SIMDe (SIMD Everywhere) so they run on any
 * host (tests/emulated/meson.build builds them with -DBSI_SIMDE and renamed tables). Each is
 * checked
 *  - against the fp32 reference bsi_q1_gemv_ref, within the error bound of the int8 activation
 *    scheme: sum over blocks of |dw| * sum_j |x_j - dx q_j| (times 1.01, plus 1e-6);
 *  - against the int8 math itself, per block dw * dx * (2 * sum_{b=1} q - Sq) accumulated with fmaf
 *    in block order (what the kernels compute), within 1e-5 of the sum of the terms' magnitudes
 *    (the count of bit-exact outputs is printed);
 *  - for the contract: outputs poisoned with NaN before each call, rows outside [r0, r1) and tokens
 *    outside [t0, t1) still poisoned after; gemv with r0 > 0; gemm over token ranges not starting
 *    at 0; gemm bit-identical to gemv on the same token.
 * Without SIMDe the test is built with BSI_EMU_MISSING: it skips (77), or fails when
 * BONSAI_REQUIRE_SIMDE=1.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(BSI_EMU_MISSING)

#include "q1.h"
#include "quantizer_check.h"

#include <math.h>
#include <time.h>

extern const bsi_q1_kernels bsi_q1_avx512_emu;
extern const bsi_q1_kernels bsi_q1_neon_emu;
extern const bsi_q1_kernels bsi_q1_neon_dot_emu;

typedef struct variant {
    const char *name;
    const bsi_q1_kernels *k;
} variant;

static const variant variants[] = {
    {"avx512 (SIMDe)", &bsi_q1_avx512_emu},
    {"neon (SIMDe)", &bsi_q1_neon_emu},
    {"neon dotprod (SIMDe)", &bsi_q1_neon_dot_emu},
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float uniform(void) /* (-1, 1), never 0 */
{
    float f = (float)((next() >> 40) + 1) / (float)(1ull << 24);
    return next() & 1 ? f : -f;
}

static uint8_t *random_q1(int64_t rows, int64_t cols)
{
    size_t n_blk = (size_t)rows * (size_t)(cols / BSI_QK);
    uint8_t *w = malloc(n_blk * BSI_Q1_BLOCK_BYTES);
    assert_non_null(w);
    for (size_t b = 0; b < n_blk; b++) {
        uint8_t *blk = w + b * BSI_Q1_BLOCK_BYTES;
        uint16_t d = bsi_fp32_to_fp16(0.001f + 0.05f * fabsf(uniform()));
        memcpy(blk, &d, 2);
        for (int k = 0; k < 16; k++) blk[2 + k] = (uint8_t)next();
    }
    return w;
}

static float scale_of(const uint8_t *w, int64_t nb, int64_t r, int64_t b)
{
    uint16_t h;
    memcpy(&h, w + ((size_t)r * (size_t)nb + (size_t)b) * BSI_Q1_BLOCK_BYTES, 2);
    return bsi_fp16_to_fp32(h);
}

/* Expected results of one token t (file-layout w, fp32 x, quantized a) for every row:
 * ref = fp32 reference, exact = int8 math, mag = sum of |int8 terms|, bound = int8 error bound. */
typedef struct expected {
    float *ref, *exact;
    double *mag, *bound;
} expected;

static void compute_expected(const uint8_t *w, const float *x, const bsi_q8_act *a, int64_t t,
                             int64_t rows, int64_t cols, expected *e)
{
    int64_t nb = cols / BSI_QK;
    const float *xt = x + t * cols;
    const int8_t *q = a->q + t * cols;
    bsi_q1_gemv_ref(w, xt, e->ref, rows, cols);
    double *blk_err = malloc((size_t)nb * sizeof(double));
    assert_non_null(blk_err);
    for (int64_t b = 0; b < nb; b++) {
        double s = 0;
        for (int j = 0; j < BSI_QK; j++)
            s += fabs((double)xt[b * BSI_QK + j] - (double)a->d[t * nb + b] * q[b * BSI_QK + j]);
        blk_err[b] = s;
    }
    size_t row_bytes = (size_t)nb * BSI_Q1_BLOCK_BYTES;
    for (int64_t r = 0; r < rows; r++) {
        float acc = 0;
        double mag = 0, bound = 0;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *bits = w + (size_t)r * row_bytes + (size_t)b * BSI_Q1_BLOCK_BYTES + 2;
            int32_t s1 = 0;
            for (int j = 0; j < BSI_QK; j++)
                if ((bits[j >> 3] >> (j & 7)) & 1) s1 += q[b * BSI_QK + j];
            int32_t v = 2 * s1 - a->sum[t * nb + b];
            float dw = scale_of(w, nb, r, b), dx = a->d[t * nb + b];
            acc = fmaf(dw * dx, (float)v, acc);
            mag += fabs((double)(dw * dx) * v);
            bound += fabs((double)dw) * blk_err[b];
        }
        e->exact[r] = acc;
        e->mag[r] = mag;
        e->bound[r] = bound * 1.01 + 1e-6;
    }
    free(blk_err);
}

typedef struct stats {
    long outputs, bit_exact, shapes;
} stats;

/* y (one token's outputs) against e for rows [r0, r1); every other row must be NaN. */
static void check_outputs(const char *what, const variant *v, int64_t rows, int64_t cols,
                          int64_t tok, const float *y, int64_t r0, int64_t r1, const expected *e,
                          stats *st)
{
    for (int64_t r = 0; r < rows; r++) {
        if (r < r0 || r >= r1) {
            if (!isnan(y[r]))
                fail_msg("%s %s %lldx%lld token %lld: row %lld outside [%lld, %lld) written",
                         v->name, what, (long long)rows, (long long)cols, (long long)tok,
                         (long long)r, (long long)r0, (long long)r1);
            continue;
        }
        if (!(fabs((double)y[r] - e->ref[r]) <= e->bound[r]))
            fail_msg("%s %s %lldx%lld token %lld row %lld: %.9g vs fp32 reference %.9g "
                     "(bound %.3g)",
                     v->name, what, (long long)rows, (long long)cols, (long long)tok, (long long)r,
                     (double)y[r], (double)e->ref[r], e->bound[r]);
        if (!(fabs((double)y[r] - e->exact[r]) <= 1e-5 * e->mag[r] + 1e-30))
            fail_msg("%s %s %lldx%lld token %lld row %lld: %.9g vs int8 math %.9g", v->name, what,
                     (long long)rows, (long long)cols, (long long)tok, (long long)r, (double)y[r],
                     (double)e->exact[r]);
        st->outputs++;
        st->bit_exact += !memcmp(&y[r], &e->exact[r], sizeof(float));
    }
}

static void poison(float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = nanf("");
}

/* a with token `t` as its token 0 (what gemv reads). */
static bsi_q8_act token_view(const bsi_q8_act *a, int64_t t)
{
    bsi_q8_act v = *a;
    v.q += t * a->cols;
    v.d += t * (a->cols / BSI_QK);
    v.sum += t * (a->cols / BSI_QK);
    if (v.lut) v.lut += (size_t)t * v.lut_bytes;
    v.n_tok = a->n_tok - t;
    return v;
}

static void check_shape(const variant *v, int64_t rows, int64_t cols, int64_t n_tok, stats *st)
{
    const bsi_q1_kernels *k = v->k;
    int64_t tile = k->row_tile;
    uint8_t *w = random_q1(rows, cols);
    uint8_t *packed = NULL;
    const uint8_t *kw = w;
    if (k->pack) {
        size_t bytes = bsi_q1_packed_bytes(k, rows, cols);
        packed = aligned_alloc(64, (bytes + 63) / 64 * 64);
        assert_non_null(packed);
        memset(packed, 0xA5, bytes);
        k->pack(w, packed, rows, cols);
        kw = packed;
    }
    float *x = malloc((size_t)(n_tok * cols) * sizeof(float));
    assert_non_null(x);
    for (int64_t i = 0; i < n_tok * cols; i++) x[i] = uniform() * (i % 97 == 0 ? 8.0f : 1.0f);
    size_t lut = bsi_q1_lut_bytes(k, cols);
    void *abuf = malloc(bsi_q8_act_bytes(cols, n_tok, lut));
    assert_non_null(abuf);
    bsi_q8_act a;
    bsi_q8_act_init(&a, abuf, cols, n_tok, lut);
    bsi_q1_prepare(k, &a, x, 0, n_tok);

    expected *e = malloc((size_t)n_tok * sizeof *e);
    assert_non_null(e);
    for (int64_t t = 0; t < n_tok; t++) {
        e[t].ref = malloc((size_t)rows * sizeof(float));
        e[t].exact = malloc((size_t)rows * sizeof(float));
        e[t].mag = malloc((size_t)rows * sizeof(double));
        e[t].bound = malloc((size_t)rows * sizeof(double));
        assert_true(e[t].ref && e[t].exact && e[t].mag && e[t].bound);
        compute_expected(w, x, &a, t, rows, cols, &e[t]);
    }
    float *y = malloc((size_t)(n_tok * rows) * sizeof(float));
    float *g = malloc((size_t)rows * sizeof(float));
    assert_true(y && g);

    /* gemv of the last token (through a view of a) over row ranges, r0 > 0 included */
    int64_t tv = n_tok - 1;
    bsi_q8_act av = token_view(&a, tv);
    int64_t mid = tile * (rows / (2 * tile)), third = tile * (rows / (3 * tile));
    int64_t ranges[][2] = {
        {0, rows},
        {mid, rows},
        {third, third + 2 * tile < rows ? third + 2 * tile : rows},
        {0, tile < rows ? tile : rows},
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        poison(y, (size_t)rows);
        k->gemv(kw, &av, x + tv * cols, y, ranges[i][0], ranges[i][1], cols);
        check_outputs("gemv", v, rows, cols, tv, y, ranges[i][0], ranges[i][1], &e[tv], st);
    }
    poison(g, (size_t)rows);
    k->gemv(kw, &av, x + tv * cols, g, 0, rows, cols);

    /* gemm over token ranges [t0, t1), the first not starting at 0 when there are 2 tokens+ */
    int64_t tr[][2] = {
        {n_tok > 1 ? 1 : 0, n_tok}, {n_tok > 3 ? 2 : 0, n_tok > 3 ? n_tok - 1 : n_tok}, {0, n_tok}};
    int64_t rr[][2] = {{0, rows}, {mid, rows}, {0, rows}};
    for (size_t i = 0; i < sizeof tr / sizeof tr[0]; i++) {
        int64_t t0 = tr[i][0], t1 = tr[i][1];
        poison(y, (size_t)(n_tok * rows));
        k->gemm(kw, &a, x, y, rows, rr[i][0], rr[i][1], cols, t0, t1);
        for (int64_t t = 0; t < n_tok; t++) {
            bool in = t >= t0 && t < t1;
            check_outputs("gemm", v, rows, cols, t, y + t * rows, in ? rr[i][0] : rows,
                          in ? rr[i][1] : rows, &e[t], st);
        }
        /* the last token's outputs are bit-identical to gemv's */
        if (t1 == n_tok)
            for (int64_t r = rr[i][0]; r < rows; r++)
                if (memcmp(&g[r], &y[tv * rows + r], sizeof(float)))
                    fail_msg("%s %lldx%lld: gemm and gemv differ at row %lld: %.9g vs %.9g",
                             v->name, (long long)rows, (long long)cols, (long long)r,
                             (double)y[tv * rows + r], (double)g[r]);
    }
    st->shapes++;

    for (int64_t t = 0; t < n_tok; t++) {
        free(e[t].ref);
        free(e[t].exact);
        free(e[t].mag);
        free(e[t].bound);
    }
    free(e);
    free(g);
    free(y);
    free(abuf);
    free(x);
    free(packed);
    free(w);
}

static void report(const variant *v, const stats *st)
{
    print_message("%s: %ld shapes, %ld outputs checked, %ld bit-identical to the int8 math\n",
                  v->name, st->shapes, st->outputs, st->bit_exact);
}

/* A variant's own quantizer gives exactly bsi_q8_quantize's values (quantizer_check.h). */
static void test_quantizer(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_VARIANTS; i++) {
        if (!variants[i].k->quantize) continue;
        check_quantizer(variants[i].k, uniform);
        printf("%s: quantizer equal to the reference\n", variants[i].name);
    }
}

static void test_shapes(void **state)
{
    (void)state;
    static const int64_t rows[] = {1, 3, 8, 13, 64, 257};
    static const int64_t cols[] = {128, 256, 384, 2048};
    static const int64_t toks[] = {1, 2, 5, 33};
    for (size_t i = 0; i < N_VARIANTS; i++) {
        stats st = {0};
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++)
            for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++)
                for (size_t t = 0; t < sizeof toks / sizeof toks[0]; t++)
                    check_shape(&variants[i], rows[r], cols[c], toks[t], &st);
        report(&variants[i], &st);
    }
}

/* An LM head-like shape: Bonsai's 151669 rows (not a multiple of any tile), short rows. */
static void test_lm_head(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_VARIANTS; i++) {
        stats st = {0};
        check_shape(&variants[i], 151669, 128, 2, &st);
        report(&variants[i], &st);
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Rough speed under emulation (a sanity number, nothing about real hardware). */
static void test_speed(void **state)
{
    (void)state;
    const int64_t rows = 2048, cols = 2048, n_tok = 8;
    uint8_t *w = random_q1(rows, cols);
    float *x = malloc((size_t)(n_tok * cols) * sizeof(float));
    float *y = malloc((size_t)(n_tok * rows) * sizeof(float));
    assert_true(x && y);
    for (int64_t i = 0; i < n_tok * cols; i++) x[i] = uniform();
    double wbytes = (double)rows * (double)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    for (size_t i = 0; i < N_VARIANTS; i++) {
        const bsi_q1_kernels *k = variants[i].k;
        uint8_t *packed = NULL;
        const uint8_t *kw = w;
        if (k->pack) {
            packed = aligned_alloc(64, (bsi_q1_packed_bytes(k, rows, cols) + 63) / 64 * 64);
            assert_non_null(packed);
            k->pack(w, packed, rows, cols);
            kw = packed;
        }
        size_t lut = bsi_q1_lut_bytes(k, cols);
        void *abuf = malloc(bsi_q8_act_bytes(cols, n_tok, lut));
        assert_non_null(abuf);
        bsi_q8_act a;
        bsi_q8_act_init(&a, abuf, cols, n_tok, lut);
        bsi_q1_prepare(k, &a, x, 0, n_tok);
        int reps = 0;
        double t0 = now(), t1;
        do {
            k->gemv(kw, &a, x, y, 0, rows, cols);
            reps++;
        } while ((t1 = now()) - t0 < 0.2);
        double gemv_s = (t1 - t0) / reps;
        reps = 0;
        t0 = now();
        do {
            k->gemm(kw, &a, x, y, rows, 0, rows, cols, 0, n_tok);
            reps++;
        } while ((t1 = now()) - t0 < 0.2);
        double gemm_s = (t1 - t0) / reps;
        print_message("%s, %lldx%lld: gemv %.3f ms (%.2f GB/s of weights, %.2f GMAC/s), "
                      "gemm x%lld %.3f ms (%.2f GMAC/s)\n",
                      variants[i].name, (long long)rows, (long long)cols, gemv_s * 1e3,
                      wbytes / gemv_s * 1e-9, (double)(rows * cols) / gemv_s * 1e-9,
                      (long long)n_tok, gemm_s * 1e3,
                      (double)(rows * cols * n_tok) / gemm_s * 1e-9);
        free(abuf);
        free(packed);
    }
    free(y);
    free(x);
    free(w);
}

int main(void)
{
#if defined(BSI_EMU_X86_AVX2) && (defined(__x86_64__) || defined(__i386__))
    /* the emulated kernels were compiled with -mavx2 -mfma -mf16c for speed */
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        fprintf(stderr, "SKIP: this CPU lacks AVX2/FMA, which the emulated build uses\n");
        return 77;
    }
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantizer),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_lm_head),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else /* BSI_EMU_MISSING */

int main(void)
{
    const char *req = getenv("BONSAI_REQUIRE_SIMDE");
    if (req && !strcmp(req, "1")) {
        fprintf(stderr, "FAIL: SIMDe (libsimde-dev) not found at configure time, and "
                        "BONSAI_REQUIRE_SIMDE=1: the AVX-512 and NEON kernels are untested\n");
        return 1;
    }
    fprintf(stderr, "SKIP: SIMDe (libsimde-dev) not found: the AVX-512 and NEON kernels are not "
                    "tested here (set BONSAI_REQUIRE_SIMDE=1 to make this a failure)\n");
    return 77;
}

#endif
