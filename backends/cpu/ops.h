/*
 * CPU kernels other than Q1_0: matrix-vector products for F32, F16, BF16 and Q8_0 weights (the
 * real `llama` test model uses them) and the small ops of the forward pass. Each has a scalar
 * reference that reads like the formula (ops_ref.c) and, where it pays, an AVX2 variant
 * (ops_avx2.c), collected in one table per ISA.
 *
 * Matrices are in the GGUF file layout: `rows` rows of `cols` values, y[r] = sum_i W[r][i] x[i].
 * Q8_0 rows are blocks of 32: fp16 d, then 32 int8 q; w = d * q.
 */
#ifndef BONSAI_CPU_OPS_H
#define BONSAI_CPU_OPS_H

#include "isa.h"

#include <stddef.h>
#include <stdint.h>

#define BSI_ATTN_QUERIES 8 /* queries attn_heads serves in one pass over the cache */

typedef struct bsi_cpu_ops {
    bsi_isa isa;
    /* y[r] for r in [r0, r1); w points at row 0; x has cols f32 values. */
    void (*gemv_f32)(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols);
    void (*gemv_f16)(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols);
    void (*gemv_bf16)(const void *w, const float *x, float *y, int64_t r0, int64_t r1,
                      int64_t cols);
    void (*gemv_q8_0)(const void *w, const float *x, float *y, int64_t r0, int64_t r1,
                      int64_t cols);
    /* y = x / sqrt(mean(x^2) + eps) * w (w may be NULL: no scaling), n values. */
    void (*rmsnorm)(const float *x, const float *w, float *y, int64_t n, float eps);
    /* x = softmax(x) over n values, max-subtracted. */
    void (*softmax)(float *x, int64_t n);
    /* y = silu(g) * u = g / (1 + exp(-g)) * u. */
    void (*silu_mul)(const float *g, const float *u, float *y, int64_t n);
    /* y = a + b (y may alias a or b). */
    void (*add)(const float *a, const float *b, float *y, int64_t n);
    /* Rotates each of n_heads heads of head_dim values in x by the table cs = [n_rot/2] pairs of
     * (cos, sin) from bsi_rope_table(): neox pairs (i, i + n_rot/2), else (2i, 2i+1). Dimensions
     * from n_rot to head_dim are left as they are. */
    void (*rope)(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int neox,
                 const float *cs);
    /* Attention of n_tok consecutive tokens' `group` query heads that share one kv head (GQA):
     * query (i, g) (i < n_tok, g < group) is at q + i q_stride + g hd and sees cached positions
     * [0, n_pos + i); out[i q_stride + g hd ..] = sum_p softmax_p(scale q.k_p) v_p over them, with
     * k_p, v_p rows of hd fp16 values `stride` elements apart, read once for up to
     * BSI_ATTN_QUERIES queries (all rows up to the last query's limit must be readable); scores is
     * scratch for min(n_tok * group, BSI_ATTN_QUERIES) * (n_pos + n_tok - 1) floats. How many
     * queries share a pass may change the rounding of a query's scores. */
    void (*attn_heads)(const float *q, int64_t n_tok, int64_t group, int64_t q_stride,
                       const uint16_t *k, const uint16_t *v, int64_t n_pos, int64_t stride,
                       int64_t hd, float scale, float *scores, float *out);
    /* y = fp16(x), n values, rounded to nearest even (the KV cache rows). */
    void (*to_f16)(const float *x, uint16_t *y, int64_t n);
    /* y = fp16(d * q) for n_blocks Q8_0 blocks of 32 (fp16 d, 32 int8 q; a Q8_0 KV cache's
     * rows), the product in fp32 rounded to nearest even: what attention reads as fp16. */
    void (*q8_0_to_f16)(const uint8_t *blocks, uint16_t *y, int64_t n_blocks);
} bsi_cpu_ops;

/* The ops of `isa` (falls back to the scalar table for an ISA with no variant). */
const bsi_cpu_ops *bsi_cpu_ops_for(bsi_isa isa);

extern const bsi_cpu_ops bsi_cpu_ops_scalar;
extern const bsi_cpu_ops bsi_cpu_ops_avx2;

/*
 * RoPE angles for one position, FORMAT.md section 3 (NeoX/YaRN): writes n_rot/2 (cos, sin) pairs
 * to cs. theta_e = pos * base^(-2i/n_rot); with YaRN (factor > 1): theta_i = theta_e / factor,
 * ramp r_i from corr(beta) = n_rot * ln(orig_ctx / (beta * 2 pi)) / (2 ln base),
 * lo = max(0, floor(corr(beta_fast))), hi = min(n_rot - 1, ceil(corr(beta_slow))),
 * r_i = 1 - clamp((i - lo) / max(0.001, hi - lo), 0, 1), theta = theta_i (1 - r_i) + theta_e r_i,
 * and cos, sin scaled by m = 1 + 0.1 ln(factor).
 */
void bsi_rope_table(float *cs, int64_t pos, int64_t n_rot, float freq_base, float yarn_factor,
                    int64_t yarn_orig_ctx, float beta_fast, float beta_slow);

/* bf16 -> fp32 (exact). */
float bsi_bf16_to_fp32(uint16_t h);

#endif
