/* Q1_0 reference kernels (fp32, formula of FORMAT.md), activation quantization, fp16 helpers. */
#include "q1.h"

#include <math.h>
#include <string.h>

size_t bsi_q8_act_bytes(int64_t cols, int64_t n_tok, size_t lut_bytes)
{
    size_t nb = (size_t)(cols / BSI_QK) * (size_t)n_tok;
    return (size_t)(cols * n_tok) + nb * 8 + lut_bytes * (size_t)n_tok + 128;
}

void bsi_q8_act_init(bsi_q8_act *a, void *buf, int64_t cols, int64_t n_tok, size_t lut_bytes)
{
    uintptr_t p = ((uintptr_t)buf + 63) & ~(uintptr_t)63;
    size_t nb = (size_t)(cols / BSI_QK) * (size_t)n_tok;
    a->q = (int8_t *)p;
    a->d = (float *)(p + (size_t)(cols * n_tok));
    a->sum = (int32_t *)(a->d + nb);
    /* cols * n_tok is a multiple of 128 and nb * 8 of 8: re-align the tables to 32 bytes */
    uintptr_t lut = ((uintptr_t)(a->sum + nb) + 31) & ~(uintptr_t)31;
    a->lut = lut_bytes ? (uint8_t *)lut : NULL;
    a->lut_bytes = lut_bytes;
    a->cols = cols;
    a->n_tok = n_tok;
}

void bsi_q8_quantize(bsi_q8_act *a, const float *x, int64_t t0, int64_t t1)
{
    int64_t nb = a->cols / BSI_QK;
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + t * a->cols + b * BSI_QK;
            int8_t *q = a->q + t * a->cols + b * BSI_QK;
            float amax = 0;
            for (int j = 0; j < BSI_QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
            float d, id;
            bsi_q8_block_scale(amax, &d, &id);
            int32_t sum = 0;
            for (int j = 0; j < BSI_QK; j++) {
                int v = (int)lrintf(xb[j] * id);
                v = v > 127 ? 127 : v < -127 ? -127 : v;
                q[j] = (int8_t)v;
                sum += v;
            }
            a->d[t * nb + b] = d;
            a->sum[t * nb + b] = sum;
        }
    }
}

void bsi_q1_prepare(const bsi_q1_kernels *k, bsi_q8_act *a, const float *x, int64_t t0, int64_t t1)
{
    if (k->quantize)
        k->quantize(a, x, t0, t1);
    else
        bsi_q8_quantize(a, x, t0, t1);
    if (k->prepare) k->prepare(a, t0, t1);
}

size_t bsi_q1_lut_bytes(const bsi_q1_kernels *k, int64_t cols)
{
    return k->lut_bytes ? k->lut_bytes(cols) : 0;
}

size_t bsi_q1_packed_bytes(const bsi_q1_kernels *k, int64_t rows, int64_t cols)
{
    int64_t padded = (rows + k->row_tile - 1) / k->row_tile * k->row_tile;
    return (size_t)padded * (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
}

/* One row of the file layout against fp32 x, exactly as FORMAT.md writes it. */
static float row_dot_ref(const uint8_t *row, const float *x, int64_t cols)
{
    float sum = 0;
    for (int64_t b = 0; b < cols / BSI_QK; b++) {
        const uint8_t *blk = row + b * BSI_Q1_BLOCK_BYTES;
        uint16_t dh;
        memcpy(&dh, blk, 2);
        float d = bsi_fp16_to_fp32(dh), s = 0;
        for (int j = 0; j < BSI_QK; j++) {
            int bit = (blk[2 + (j >> 3)] >> (j & 7)) & 1;
            s += (float)(2 * bit - 1) * x[b * BSI_QK + j];
        }
        sum += d * s;
    }
    return sum;
}

void bsi_q1_gemv_ref(const uint8_t *w, const float *x, float *y, int64_t rows, int64_t cols)
{
    size_t row_bytes = (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    for (int64_t r = 0; r < rows; r++) y[r] = row_dot_ref(w + (size_t)r * row_bytes, x, cols);
}

static void scalar_gemv(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y,
                        int64_t r0, int64_t r1, int64_t cols)
{
    (void)x;
    size_t row_bytes = (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    for (int64_t r = r0; r < r1; r++) y[r] = row_dot_ref(w + (size_t)r * row_bytes, xf, cols);
}

static void scalar_gemm(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y,
                        int64_t rows, int64_t r0, int64_t r1, int64_t cols, int64_t t0, int64_t t1)
{
    (void)x;
    size_t row_bytes = (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t r = r0; r < r1; r++)
            y[t * rows + r] = row_dot_ref(w + (size_t)r * row_bytes, xf + t * cols, cols);
}

const bsi_q1_kernels bsi_q1_scalar = {
    .isa = BSI_ISA_SCALAR,
    .row_tile = 1,
    .pack = NULL,
    .gemv = scalar_gemv,
    .gemm = scalar_gemm,
};

const bsi_q1_kernels *bsi_q1_kernels_for(bsi_isa isa)
{
    switch (isa) {
    case BSI_ISA_SCALAR: return &bsi_q1_scalar;
#if defined(BSI_HAVE_AVX2)
    case BSI_ISA_AVX2: return &bsi_q1_avx2;
#endif
#if defined(BSI_HAVE_AVX512)
    case BSI_ISA_AVX512: return &bsi_q1_avx512;
#endif
#if defined(BSI_HAVE_NEON)
    case BSI_ISA_NEON: return &bsi_q1_neon;
#endif
    default: return NULL;
    }
}
