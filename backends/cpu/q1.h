/*
 * Q1_0 (GGUF type 41) matrix kernels: y = W x with W stored as 18-byte blocks of 128 weights
 * (fp16 scale d, then 128 sign bits; bit 1 = +d, bit 0 = -d).
 *
 * Activation scheme (all SIMD variants): each token's activations are quantized to int8 in blocks
 * of 128 matching the weight blocks: dx = max|x| / 127, q = round(x / dx) (0 when the block is all
 * zero), plus the block sum Sq = sum(q). A block's contribution to a dot product is then exact in
 * integers up to the two scales:
 *     sum_j w_j x_j ~= dw * dx * (2 * sum_{b_j = 1} q_j - Sq)
 * The scalar variant is the fp32 reference and does not quantize.
 */
#ifndef BONSAI_CPU_Q1_H
#define BONSAI_CPU_Q1_H

#include "half.h"
#include "isa.h"

#include <stddef.h>
#include <stdint.h>

#define BSI_QK             128 /* weights per Q1_0 block */
#define BSI_Q1_BLOCK_BYTES 18

/* Quantized activations of n_tok tokens of `cols` values: row t of q starts at t * cols. */
typedef struct bsi_q8_act {
    int8_t *q;        /* [n_tok][cols] */
    float *d;         /* [n_tok][cols / 128] */
    int32_t *sum;     /* [n_tok][cols / 128] */
    uint8_t *lut;     /* [n_tok][lut_bytes] tables a variant derives from q (prepare()), or NULL */
    size_t lut_bytes; /* per token */
    int64_t cols, n_tok;
} bsi_q8_act;

/* Bytes of the buffer bsi_q8_act_init needs for n_tok x cols, plus lut_bytes per token. */
size_t bsi_q8_act_bytes(int64_t cols, int64_t n_tok, size_t lut_bytes);
/* Points the arrays of `a` into `buf` (bsi_q8_act_bytes long; aligned inside). */
void bsi_q8_act_init(bsi_q8_act *a, void *buf, int64_t cols, int64_t n_tok, size_t lut_bytes);
/* Quantizes tokens [t0, t1) of x ([n_tok][cols] f32). */
void bsi_q8_quantize(bsi_q8_act *a, const float *x, int64_t t0, int64_t t1);

/* A block's scale d and its inverse from amax = max|x|, the rule every quantizer shares: a block
 * this small (or zero, or NaN) contributes nothing measurable, so it is treated as zero, which
 * keeps 127 / amax finite. q = round(x * *id). */
static inline void bsi_q8_block_scale(float amax, float *d, float *id)
{
    if (!(amax >= 1e-30f)) amax = 0.0f;
    *d = amax / 127.0f;
    *id = amax > 0 ? 127.0f / amax : 0.0f;
}

/*
 * One ISA's kernels. Weights are in the variant's packed layout (pack() of the file layout; the
 * file layout itself when pack is NULL); rows are grouped in tiles of row_tile rows.
 *  gemv: y[r] for rows [r0, r1) of token 0 (r0 a multiple of row_tile).
 *  gemm: y[t * rows + r] for rows [r0, r1) and tokens [t0, t1).
 * x holds the quantized activations (and the variant's tables when it has prepare()), xf the same
 * activations in f32 (used by the scalar variant).
 */
typedef struct bsi_q1_kernels {
    bsi_isa isa;
    int row_tile;
    void (*pack)(const uint8_t *src, uint8_t *dst, int64_t rows, int64_t cols);
    /* Optional: per-token tables derived from the quantized activations, built once per matrix
     * product for tokens [t0, t1) (after bsi_q8_quantize) and shared by every thread. */
    size_t (*lut_bytes)(int64_t cols);
    void (*prepare)(bsi_q8_act *x, int64_t t0, int64_t t1);
    /* Optional: bsi_q8_quantize with this ISA's instructions (the same values exactly). */
    void (*quantize)(bsi_q8_act *a, const float *x, int64_t t0, int64_t t1);
    void (*gemv)(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t r0,
                 int64_t r1, int64_t cols);
    void (*gemm)(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t rows,
                 int64_t r0, int64_t r1, int64_t cols, int64_t t0, int64_t t1);
} bsi_q1_kernels;

/* Size of the packed layout: rows rounded up to the tile, same bytes per block as the file. */
size_t bsi_q1_packed_bytes(const bsi_q1_kernels *k, int64_t rows, int64_t cols);
/* Quantizes tokens [t0, t1) of x into a and builds k's tables for them (when it has any). */
void bsi_q1_prepare(const bsi_q1_kernels *k, bsi_q8_act *a, const float *x, int64_t t0, int64_t t1);
/* lut_bytes of k for cols (0 when k has no tables). */
size_t bsi_q1_lut_bytes(const bsi_q1_kernels *k, int64_t cols);

/* The kernels of `isa`, or NULL when that variant is not compiled in. */
const bsi_q1_kernels *bsi_q1_kernels_for(bsi_isa isa);

/* Per-ISA tables (defined only where compiled). */
extern const bsi_q1_kernels bsi_q1_scalar;
extern const bsi_q1_kernels bsi_q1_avx2;
extern const bsi_q1_kernels bsi_q1_avx512;
extern const bsi_q1_kernels bsi_q1_neon;

/* The reference: y[r] = sum_i W[r][i] x[i] on dequantized weights in fp32, file layout. */
void bsi_q1_gemv_ref(const uint8_t *w, const float *x, float *y, int64_t rows, int64_t cols);

#endif
