/*
 * Q1_0 kernels, checkasm-style: every ISA variant this CPU runs against the fp32 reference, on
 * random data, many shapes, outputs poisoned before each call. The int8 activation scheme makes
 * each output differ from the reference by at most sum_b |dw_b| * sum_j |x_j - dx_b q_j|, which the
 * test computes per output and uses as the tolerance (plus fp32 rounding slack).
 */
#include "test_util.h"

#include "q1.h"
#include "quantizer_check.h"

#include <math.h>

static uint8_t *random_q1(int64_t rows, int64_t cols)
{
    size_t bytes = (size_t)rows * (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    uint8_t *w = malloc(bytes);
    assert_non_null(w);
    for (size_t b = 0; b < bytes / BSI_Q1_BLOCK_BYTES; b++) {
        uint8_t *blk = w + b * BSI_Q1_BLOCK_BYTES;
        uint16_t d = bsi_fp32_to_fp16(0.001f + 0.05f * fabsf(test_uniform()));
        memcpy(blk, &d, 2);
        for (int k = 0; k < 16; k++) blk[2 + k] = (uint8_t)test_rand();
    }
    return w;
}

/* Per-output error bound of the int8 scheme for token row xf against quantized a (token t). */
static void error_bounds(const uint8_t *w, const bsi_q8_act *a, const float *xf, int64_t t,
                         int64_t rows, int64_t cols, double *bound)
{
    int64_t nb = cols / BSI_QK;
    double *blk_err = malloc((size_t)nb * sizeof(double));
    for (int64_t b = 0; b < nb; b++) {
        double e = 0;
        for (int j = 0; j < BSI_QK; j++) {
            int64_t i = b * BSI_QK + j;
            e += fabs((double)xf[t * cols + i] - (double)a->d[t * nb + b] * a->q[t * cols + i]);
        }
        blk_err[b] = e;
    }
    for (int64_t r = 0; r < rows; r++) {
        double s = 0, mag = 0;
        for (int64_t b = 0; b < nb; b++) {
            uint16_t h;
            memcpy(&h, w + ((size_t)r * nb + b) * BSI_Q1_BLOCK_BYTES, 2);
            double d = bsi_fp16_to_fp32(h);
            s += d * blk_err[b];
            for (int j = 0; j < BSI_QK; j++) mag += d * fabs(xf[t * cols + b * BSI_QK + j]);
        }
        bound[r] = s * 1.001 + mag * 2e-6 + 1e-7;
    }
    free(blk_err);
}

static float nan_f(void)
{
    return nanf("");
}

static void check_shape(const bsi_q1_kernels *k, int64_t rows, int64_t cols, int64_t n_tok)
{
    uint8_t *w = random_q1(rows, cols);
    size_t packed_bytes = bsi_q1_packed_bytes(k, rows, cols);
    uint8_t *packed = NULL;
    const uint8_t *kw = w;
    if (k->pack) {
        packed = aligned_alloc(64, (packed_bytes + 63) / 64 * 64);
        memset(packed, 0xA5, packed_bytes);
        k->pack(w, packed, rows, cols);
        kw = packed;
    }
    float *x = malloc((size_t)(n_tok * cols) * sizeof(float));
    for (int64_t i = 0; i < n_tok * cols; i++) x[i] = test_uniform() * (i % 97 == 0 ? 8.0f : 1.0f);
    size_t lut = bsi_q1_lut_bytes(k, cols);
    void *abuf = malloc(bsi_q8_act_bytes(cols, n_tok, lut));
    bsi_q8_act a;
    bsi_q8_act_init(&a, abuf, cols, n_tok, lut);
    bsi_q1_prepare(k, &a, x, 0, n_tok);

    float *ref = malloc((size_t)(n_tok * rows) * sizeof(float));
    float *y = malloc((size_t)(n_tok * rows) * sizeof(float));
    double *bound = malloc((size_t)rows * sizeof(double));
    for (int64_t t = 0; t < n_tok; t++)
        bsi_q1_gemv_ref(w, x + t * cols, ref + t * rows, rows, cols);

    /* gemv over the whole matrix and over a sub-range starting at a later tile */
    for (int pass = 0; pass < 2; pass++) {
        int64_t r0 = pass ? k->row_tile * (rows / (2 * k->row_tile)) : 0, r1 = rows;
        for (int64_t r = 0; r < rows; r++) y[r] = nan_f();
        k->gemv(kw, &a, x, y, r0, r1, cols);
        error_bounds(w, &a, x, 0, rows, cols, bound);
        for (int64_t r = 0; r < rows; r++) {
            if (r < r0) {
                if (!isnan(y[r]))
                    fail_msg("%s gemv %lldx%lld: row %lld outside the range written",
                             bsi_isa_name(k->isa), (long long)rows, (long long)cols, (long long)r);
                continue;
            }
            double tol = k->isa == BSI_ISA_SCALAR ? 1e-6 * (1 + fabs(ref[r])) : bound[r];
            if (!(fabs((double)y[r] - ref[r]) <= tol))
                fail_msg("%s gemv %lldx%lld row %lld: %.7g vs reference %.7g (bound %.3g)",
                         bsi_isa_name(k->isa), (long long)rows, (long long)cols, (long long)r,
                         (double)y[r], (double)ref[r], tol);
        }
    }

    /* gemm over tokens [t0, n_tok): earlier tokens' outputs must stay poisoned */
    if (n_tok > 1) {
        int64_t t0 = n_tok > 2 ? 1 : 0;
        for (int64_t i = 0; i < n_tok * rows; i++) y[i] = nan_f();
        k->gemm(kw, &a, x, y, rows, 0, rows, cols, t0, n_tok);
        for (int64_t t = 0; t < n_tok; t++) {
            error_bounds(w, &a, x, t, rows, cols, bound);
            for (int64_t r = 0; r < rows; r++) {
                float v = y[t * rows + r];
                if (t < t0) {
                    assert_true(isnan(v));
                    continue;
                }
                double tol =
                    k->isa == BSI_ISA_SCALAR ? 1e-6 * (1 + fabs(ref[t * rows + r])) : bound[r];
                if (!(fabs((double)v - ref[t * rows + r]) <= tol))
                    fail_msg("%s gemm %lldx%lld token %lld row %lld: %.7g vs %.7g",
                             bsi_isa_name(k->isa), (long long)rows, (long long)cols, (long long)t,
                             (long long)r, (double)v, (double)ref[t * rows + r]);
            }
        }
        /* token n_tok - 1 through gemv must equal gemm bit for bit */
        bsi_q8_act last = a;
        last.q += (n_tok - 1) * cols;
        last.d += (n_tok - 1) * (cols / BSI_QK);
        last.sum += (n_tok - 1) * (cols / BSI_QK);
        if (last.lut) last.lut += (size_t)(n_tok - 1) * last.lut_bytes;
        float *g = malloc((size_t)rows * sizeof(float));
        k->gemv(kw, &last, x + (n_tok - 1) * cols, g, 0, rows, cols);
        for (int64_t r = 0; r < rows; r++)
            if (memcmp(&g[r], &y[(n_tok - 1) * rows + r], sizeof(float)))
                fail_msg("%s: gemm and gemv differ at row %lld: %.9g vs %.9g", bsi_isa_name(k->isa),
                         (long long)r, (double)y[(n_tok - 1) * rows + r], (double)g[r]);
        free(g);
    }
    free(bound);
    free(y);
    free(ref);
    free(abuf);
    free(x);
    free(packed);
    free(w);
}

static void test_all_isas(void **state)
{
    (void)state;
    static const int64_t rows[] = {1, 3, 8, 13, 64, 257};
    static const int64_t cols[] = {128, 256, 384, 2048};
    int tested = 0;
    for (int i = 0; i < BSI_ISA_COUNT; i++) {
        if (!bsi_isa_available((bsi_isa)i)) {
            print_message("ISA %s not available here: skipped\n", bsi_isa_name((bsi_isa)i));
            continue;
        }
        const bsi_q1_kernels *k = bsi_q1_kernels_for((bsi_isa)i);
        assert_non_null(k);
        assert_int_equal(k->isa, i);
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++)
            for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++)
                check_shape(k, rows[r], cols[c], 1 + (int64_t)((r + c) % 3) * 2);
        check_shape(k, 2048, 2048, 2);
        check_shape(k, 17, 128, 40); /* more tokens than one gemm chunk */
        tested++;
    }
    assert_true(tested >= 1);
}

/* The LM head of Bonsai: 151669 rows (not a multiple of any tile) of 2048. */
static void test_lm_head(void **state)
{
    (void)state;
    for (int i = 1; i < BSI_ISA_COUNT; i++)
        if (bsi_isa_available((bsi_isa)i))
            check_shape(bsi_q1_kernels_for((bsi_isa)i), 151669, 2048, 1);
}

/* Activation quantization: scale = max|x| / 127, sum of q, all-zero block. */
static void test_quantize_activations(void **state)
{
    (void)state;
    float x[256];
    for (int i = 0; i < 256; i++) x[i] = (float)(i - 64) / 64.0f; /* block 0: -1 .. 0.98 */
    for (int i = 128; i < 256; i++) x[i] = 0.0f;                  /* block 1: zeros */
    unsigned char buf[1024];
    bsi_q8_act a;
    assert_true(bsi_q8_act_bytes(256, 1, 0) <= sizeof buf);
    bsi_q8_act_init(&a, buf, 256, 1, 0);
    bsi_q8_quantize(&a, x, 0, 1);
    assert_true(a.d[0] == 1.0f / 127.0f);
    assert_int_equal(a.q[0], -127);
    assert_int_equal(a.q[64], 0);
    assert_int_equal(a.q[96], 64); /* 0.5 * 127 = 63.5 rounds to even: 64 */
    int32_t s = 0;
    for (int j = 0; j < 128; j++) s += a.q[j];
    assert_int_equal(a.sum[0], s);
    assert_true(a.d[1] == 0.0f);
    assert_int_equal(a.sum[1], 0);
    for (int j = 128; j < 256; j++) assert_int_equal(a.q[j], 0);
}

/* Each ISA's own quantizer gives exactly the reference's values (quantizer_check.h). */
static void test_quantizers_match(void **state)
{
    (void)state;
    for (int i = 0; i < BSI_ISA_COUNT; i++) {
        const bsi_q1_kernels *k = bsi_q1_kernels_for((bsi_isa)i);
        if (!k || !k->quantize || !bsi_isa_available((bsi_isa)i)) continue;
        check_quantizer(k, test_uniform);
        print_message("  %s quantizer: equal to the reference\n", bsi_isa_name((bsi_isa)i));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantize_activations),
        cmocka_unit_test(test_quantizers_match),
        cmocka_unit_test(test_all_isas),
        cmocka_unit_test(test_lm_head),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
