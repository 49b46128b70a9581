/*
 * Q1_0 kernels for AArch64 Advanced SIMD. Weights stay in the file layout (pack = NULL,
 * row_tile = 1).
 *
 * Bit planes: byte c of a block's 16 sign bytes holds weights 8c .. 8c+7, so vtst of those 16
 * bytes against 1 << p gives, in one instruction, the 0/-1 byte mask of weights {8c + p : c}.
 * prepare() de-interleaves each token's int8 activations the same way: per block, plane p is
 * (q[p], q[8 + p], ..., q[120 + p]) (the tables: 128 bytes per block, cols bytes per token). Then
 * S1 = sum_{b=1} q is a sum over the 8 planes of mask_p . plane_p:
 *  - with __ARM_FEATURE_DOTPROD: vdotq_s32(acc, mask_p, plane_p) (mask -1 = set: acc = -S1);
 *  - otherwise: vpadalq_s8(acc16, vand(mask_p, plane_p)) into int16 lanes (|lane| <= 16 * 127).
 * Per 128 weights of a row: one 16-byte load, 8 vtst and 8 sdot (8 vand + 8 vpadal without
 * dotprod); no table lookups.
 * gemv: 4 rows at a time share the 8 plane registers of a block; a vpaddq tree turns their 4
 * accumulators into one vector of 4 row sums, then y += (dw * dx) * (float)(2 S1 - Sq) with one
 * fma for 4 rows (Sq: the block sum of the activations, see q1.h).
 * gemm: one row's 8 masks of a block serve 4 tokens, whose sums reduce the same way into lanes =
 * tokens; rows go in groups of 32 (kept in cache) over which each 4 tokens' planes pass. For every
 * output the float operations are the same as in gemv (bit-identical results).
 *
 * Under BSI_SIMDE + BSI_SIMDE_NEON (tests/emulated) this compiles against SIMDe's portable NEON;
 * BSI_SIMDE_DOTPROD selects the dotprod path there.
 */
#include "q1.h"
#include "simd.h"

#include <string.h>

#if defined(__ARM_FEATURE_DOTPROD) || (defined(BSI_SIMDE) && defined(BSI_SIMDE_DOTPROD))
#define Q1_NEON_DOT 1
#else
#define Q1_NEON_DOT 0
#endif

#define PLANE_BYTES BSI_QK /* de-interleaved activations per block */

static size_t lut_bytes(int64_t cols)
{
    return (size_t)cols;
}

static void prepare(bsi_q8_act *x, int64_t t0, int64_t t1)
{
    int64_t nb = x->cols / BSI_QK;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *q = x->q + t * x->cols + b * BSI_QK;
            int8_t *out = (int8_t *)(x->lut + (size_t)t * x->lut_bytes) + b * PLANE_BYTES;
            for (int p = 0; p < 8; p++)
                for (int c = 0; c < 16; c++) out[16 * p + c] = q[8 * c + p];
        }
}

/* ---- per-row accumulation of S1 over the 8 planes of a block ---- */

#if Q1_NEON_DOT
typedef int32x4_t racc; /* -S1, in 4 partial lanes */

static inline racc racc_zero(void)
{
    return vdupq_n_s32(0);
}

static inline racc racc_add(racc a, uint8x16_t mask, int8x16_t plane)
{
    return vdotq_s32(a, vreinterpretq_s8_u8(mask), plane);
}

static inline racc racc_merge(racc a, racc b)
{
    return vaddq_s32(a, b);
}

/* S1 of the 4 accumulators, lane k = a_k. */
static inline int32x4_t racc_reduce4(racc a0, racc a1, racc a2, racc a3)
{
    return vnegq_s32(vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3)));
}
#else
typedef int16x8_t racc; /* S1, in 8 partial lanes */

static inline racc racc_zero(void)
{
    return vdupq_n_s16(0);
}

static inline racc racc_add(racc a, uint8x16_t mask, int8x16_t plane)
{
    return vpadalq_s8(a, vandq_s8(vreinterpretq_s8_u8(mask), plane));
}

static inline racc racc_merge(racc a, racc b)
{
    return vaddq_s16(a, b);
}

static inline int32x4_t racc_reduce4(racc a0, racc a1, racc a2, racc a3)
{
    /* partial sums stay within |S1| <= 128 * 127: no int16 overflow */
    return vpaddlq_s16(vpaddq_s16(vpaddq_s16(a0, a1), vpaddq_s16(a2, a3)));
}
#endif

/* The 8 bit-plane masks of a row's block (sign bytes at `bits`). */
static inline void block_masks(const uint8_t *bits, uint8x16_t m[8])
{
    uint8x16_t v = vld1q_u8(bits);
    for (int p = 0; p < 8; p++) m[p] = vtstq_u8(v, vdupq_n_u8((uint8_t)(1u << p)));
}

/* Sum over the 8 planes for one row's sign bytes. */
static inline racc row_block(const uint8_t *bits, const int8x16_t pl[8])
{
    uint8x16_t m[8];
    block_masks(bits, m);
    racc a = racc_zero(), b = racc_zero();
    for (int p = 0; p < 8; p += 2) {
        a = racc_add(a, m[p], pl[p]);
        b = racc_add(b, m[p + 1], pl[p + 1]);
    }
    return racc_merge(a, b);
}

/* acc += scale * (float)(2 S1 - Sq), lane-wise. */
static inline float32x4_t lanes_update(float32x4_t acc, int32x4_t s1, int32x4_t sq,
                                       float32x4_t scale)
{
    int32x4_t v = vsubq_s32(vaddq_s32(s1, s1), sq);
    return vfmaq_f32(acc, scale, vcvtq_f32_s32(v));
}

static inline float fp16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return bsi_fp16_to_fp32(h);
}

static inline void load_planes(const int8_t *lut, int8x16_t pl[8])
{
    for (int p = 0; p < 8; p++) pl[p] = vld1q_s8(lut + 16 * p);
}

static void gemv(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t r0,
                 int64_t r1, int64_t cols)
{
    (void)xf;
    int64_t nb = cols / BSI_QK;
    size_t row_bytes = (size_t)nb * BSI_Q1_BLOCK_BYTES;
    const int8_t *lut = (const int8_t *)x->lut;
    for (int64_t r = r0; r < r1; r += 4) {
        int n = r1 - r < 4 ? (int)(r1 - r) : 4;
        const uint8_t *row[4];
        for (int k = 0; k < 4; k++) row[k] = w + (size_t)(r + (k < n ? k : 0)) * row_bytes;
        float32x4_t acc = vdupq_n_f32(0);
        for (int64_t b = 0; b < nb; b++) {
            int8x16_t pl[8];
            load_planes(lut + b * PLANE_BYTES, pl);
            size_t o = (size_t)b * BSI_Q1_BLOCK_BYTES;
            int32x4_t s1 =
                racc_reduce4(row_block(row[0] + o + 2, pl), row_block(row[1] + o + 2, pl),
                             row_block(row[2] + o + 2, pl), row_block(row[3] + o + 2, pl));
            float dw[4] = {fp16_at(row[0] + o), fp16_at(row[1] + o), fp16_at(row[2] + o),
                           fp16_at(row[3] + o)};
            float32x4_t scale = vmulq_f32(vld1q_f32(dw), vdupq_n_f32(x->d[b]));
            acc = lanes_update(acc, s1, vdupq_n_s32(x->sum[b]), scale);
        }
        float out[4];
        vst1q_f32(out, acc);
        memcpy(y + r, out, (size_t)n * sizeof(float));
    }
}

/* Rows in groups of ROW_GROUP (their bytes stay in cache), then tokens in fours (their planes,
 * 4 * cols bytes, stay in L1 while the rows pass), then rows. */
#define ROW_GROUP 32

static void gemm(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t rows,
                 int64_t r0, int64_t r1, int64_t cols, int64_t t0, int64_t t1)
{
    (void)xf;
    int64_t nb = cols / BSI_QK;
    size_t row_bytes = (size_t)nb * BSI_Q1_BLOCK_BYTES;
    for (int64_t rg = r0; rg < r1; rg += ROW_GROUP) {
        int64_t rg1 = r1 - rg < ROW_GROUP ? r1 : rg + ROW_GROUP;
        for (int64_t tc = t0; tc < t1; tc += 4) {
            int nt = t1 - tc < 4 ? (int)(t1 - tc) : 4;
            const int8_t *lut[4];
            for (int k = 0; k < 4; k++)
                lut[k] = (const int8_t *)(x->lut + (size_t)(tc + (k < nt ? k : 0)) * x->lut_bytes);
            for (int64_t r = rg; r < rg1; r++) {
                const uint8_t *row = w + (size_t)r * row_bytes;
                float32x4_t acc = vdupq_n_f32(0);
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *blk = row + (size_t)b * BSI_Q1_BLOCK_BYTES;
                    uint8x16_t m[8];
                    block_masks(blk + 2, m);
                    racc a[4];
                    for (int k = 0; k < 4; k++) {
                        const int8_t *pl = lut[k] + b * PLANE_BYTES;
                        racc u = racc_zero(), v = racc_zero();
                        for (int p = 0; p < 8; p += 2) {
                            u = racc_add(u, m[p], vld1q_s8(pl + 16 * p));
                            v = racc_add(v, m[p + 1], vld1q_s8(pl + 16 * p + 16));
                        }
                        a[k] = racc_merge(u, v);
                    }
                    int32x4_t s1 = racc_reduce4(a[0], a[1], a[2], a[3]);
                    float dx[4];
                    int32_t sq[4];
                    for (int k = 0; k < 4; k++) {
                        int64_t t = tc + (k < nt ? k : 0);
                        dx[k] = x->d[t * nb + b];
                        sq[k] = x->sum[t * nb + b];
                    }
                    float32x4_t scale = vmulq_f32(vdupq_n_f32(fp16_at(blk)), vld1q_f32(dx));
                    acc = lanes_update(acc, s1, vld1q_s32(sq), scale);
                }
                float out[4];
                vst1q_f32(out, acc);
                for (int k = 0; k < nt; k++) y[(tc + k) * rows + r] = out[k];
            }
        }
    }
}

const bsi_q1_kernels bsi_q1_neon = {
    .isa = BSI_ISA_NEON,
    .row_tile = 1,
    .pack = NULL,
    .lut_bytes = lut_bytes,
    .prepare = prepare,
    .gemv = gemv,
    .gemm = gemm,
};
