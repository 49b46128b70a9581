/*
 * Q1_0 kernels for AVX2 (+FMA, F16C). Compiled with -mavx2 -mfma -mf16c; used only when the CPU
 * and OS support them.
 *
 * Packed layout: rows in tiles of 8, and per (tile, block) 144 bytes = the 8 rows' 18-byte blocks
 * rearranged:
 *   bytes 32p .. 32p+31   rows 2p (first 16 bytes) and 2p+1 (last 16) of the tile, p = 0..3,
 *                         "bit-sliced": bit i of byte k is weight 16 i + k of the block;
 *   bytes 128 .. 143      the 8 fp16 scales in the order the reduction leaves rows in:
 *                         rows 0 2 4 6 1 3 5 7.
 * Bit-slicing makes the 16 weights that meet x[16 i .. 16 i + 15] a plain `(v >> i) & 1` per byte,
 * with no shuffle, and one 32-byte load serves two rows. Then per 32 weights: shift, and,
 * vpmaddubsw (bits as u8 times q as s8: the sum of q over set bits) and an add.
 */
#include "q1.h"

#include <immintrin.h>
#include <string.h>

#define TILE 8
#define TILE_BLOCK_BYTES (TILE * BSI_Q1_BLOCK_BYTES) /* 144 */

static const int lane_row[8] = {0, 2, 4, 6, 1, 3, 5, 7};

/* Bit-slices one 16-byte block of sign bits (file order: bit j & 7 of byte j >> 3 = weight j). */
static void bitslice(const uint8_t *qs, uint8_t *out)
{
    memset(out, 0, 16);
    for (int j = 0; j < BSI_QK; j++) {
        int bit = (qs[j >> 3] >> (j & 7)) & 1;
        out[j & 15] |= (uint8_t)(bit << (j >> 4));
    }
}

static void pack(const uint8_t *src, uint8_t *dst, int64_t rows, int64_t cols)
{
    int64_t nb = cols / BSI_QK, tiles = (rows + TILE - 1) / TILE;
    size_t row_bytes = (size_t)nb * BSI_Q1_BLOCK_BYTES;
    for (int64_t t = 0; t < tiles; t++) {
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *out = dst + ((size_t)t * (size_t)nb + (size_t)b) * TILE_BLOCK_BYTES;
            memset(out, 0, TILE_BLOCK_BYTES); /* padding rows: scale 0 */
            for (int k = 0; k < TILE; k++) {
                int64_t r = t * TILE + k;
                if (r >= rows) continue;
                const uint8_t *blk = src + (size_t)r * row_bytes + (size_t)b * BSI_Q1_BLOCK_BYTES;
                bitslice(blk + 2, out + 32 * (k / 2) + 16 * (k % 2));
            }
            for (int l = 0; l < TILE; l++) {
                int64_t r = t * TILE + lane_row[l];
                if (r < rows)
                    memcpy(out + 128 + 2 * l,
                           src + (size_t)r * row_bytes + (size_t)b * BSI_Q1_BLOCK_BYTES, 2);
            }
        }
    }
}

/* Sum of q over set bits for the 8 rows of one tile-block, lanes in the order 0 2 4 6 1 3 5 7. */
static inline __m256i tile_block_dot(const uint8_t *blk, const int8_t *xq)
{
    const __m256i one = _mm256_set1_epi8(1);
    __m256i v0 = _mm256_loadu_si256((const __m256i *)(blk + 0));
    __m256i v1 = _mm256_loadu_si256((const __m256i *)(blk + 32));
    __m256i v2 = _mm256_loadu_si256((const __m256i *)(blk + 64));
    __m256i v3 = _mm256_loadu_si256((const __m256i *)(blk + 96));
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < 8; i++) {
        __m256i xi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xq + 16 * i)));
        a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(_mm256_and_si256(v0, one), xi));
        a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(_mm256_and_si256(v1, one), xi));
        a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(_mm256_and_si256(v2, one), xi));
        a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(_mm256_and_si256(v3, one), xi));
        v0 = _mm256_srli_epi16(v0, 1);
        v1 = _mm256_srli_epi16(v1, 1);
        v2 = _mm256_srli_epi16(v2, 1);
        v3 = _mm256_srli_epi16(v3, 1);
    }
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i m0 = _mm256_madd_epi16(a0, ones16), m1 = _mm256_madd_epi16(a1, ones16);
    __m256i m2 = _mm256_madd_epi16(a2, ones16), m3 = _mm256_madd_epi16(a3, ones16);
    return _mm256_hadd_epi32(_mm256_hadd_epi32(m0, m1), _mm256_hadd_epi32(m2, m3));
}

/* acc += dw * dx * (2 * s1 - sum_q) for the 8 lanes of one tile-block. */
static inline __m256 tile_block_accumulate(__m256 acc, const uint8_t *blk, __m256i s1, float dx,
                                           int32_t sum_q)
{
    __m256i s = _mm256_sub_epi32(_mm256_slli_epi32(s1, 1), _mm256_set1_epi32(sum_q));
    __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 128)));
    return _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(dx)), _mm256_cvtepi32_ps(s), acc);
}

/* Stores lanes (order 0 2 4 6 1 3 5 7) as rows row0 .. row0 + n - 1 of y. */
static inline void store_tile(float *y, __m256 acc, int n)
{
    __m256 v = _mm256_permutevar8x32_ps(acc, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    if (n == TILE) {
        _mm256_storeu_ps(y, v);
    } else {
        float tmp[TILE];
        _mm256_storeu_ps(tmp, v);
        memcpy(y, tmp, (size_t)n * sizeof(float));
    }
}

static void gemv(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t r0,
                 int64_t r1, int64_t cols)
{
    (void)xf;
    int64_t nb = cols / BSI_QK;
    for (int64_t r = r0; r < r1; r += TILE) {
        const uint8_t *tile = w + (size_t)(r / TILE) * (size_t)nb * TILE_BLOCK_BYTES;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = tile + (size_t)b * TILE_BLOCK_BYTES;
            __m256i s1 = tile_block_dot(blk, x->q + b * BSI_QK);
            acc = tile_block_accumulate(acc, blk, s1, x->d[b], x->sum[b]);
        }
        store_tile(y + r, acc, r1 - r < TILE ? (int)(r1 - r) : TILE);
    }
}

#define GEMM_TOKENS 32 /* tokens sharing one expansion of a tile-block's bits */

static void gemm(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t rows,
                 int64_t r0, int64_t r1, int64_t cols, int64_t t0, int64_t t1)
{
    (void)xf;
    int64_t nb = cols / BSI_QK;
    /* bits of one tile-block expanded to 0/1 bytes: [i][pair] 32 bytes */
    _Alignas(32) uint8_t e[8][4][32];
    __m256 acc[GEMM_TOKENS];
    const __m256i one = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int64_t r = r0; r < r1; r += TILE) {
        const uint8_t *tile = w + (size_t)(r / TILE) * (size_t)nb * TILE_BLOCK_BYTES;
        int n_rows = r1 - r < TILE ? (int)(r1 - r) : TILE;
        for (int64_t tc = t0; tc < t1; tc += GEMM_TOKENS) {
            int n_tok = t1 - tc < GEMM_TOKENS ? (int)(t1 - tc) : GEMM_TOKENS;
            for (int t = 0; t < n_tok; t++) acc[t] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = tile + (size_t)b * TILE_BLOCK_BYTES;
                for (int p = 0; p < 4; p++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 32 * p));
                    for (int i = 0; i < 8; i++) {
                        _mm256_store_si256((__m256i *)e[i][p], _mm256_and_si256(v, one));
                        v = _mm256_srli_epi16(v, 1);
                    }
                }
                for (int t = 0; t < n_tok; t++) {
                    int64_t tok = tc + t;
                    const int8_t *xq = x->q + tok * cols + b * BSI_QK;
                    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                    for (int i = 0; i < 8; i++) {
                        __m256i xi = _mm256_broadcastsi128_si256(
                            _mm_loadu_si128((const __m128i *)(xq + 16 * i)));
                        a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(
                                                      _mm256_load_si256((const __m256i *)e[i][0]), xi));
                        a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(
                                                      _mm256_load_si256((const __m256i *)e[i][1]), xi));
                        a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(
                                                      _mm256_load_si256((const __m256i *)e[i][2]), xi));
                        a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(
                                                      _mm256_load_si256((const __m256i *)e[i][3]), xi));
                    }
                    __m256i s1 = _mm256_hadd_epi32(
                        _mm256_hadd_epi32(_mm256_madd_epi16(a0, ones16), _mm256_madd_epi16(a1, ones16)),
                        _mm256_hadd_epi32(_mm256_madd_epi16(a2, ones16), _mm256_madd_epi16(a3, ones16)));
                    acc[t] = tile_block_accumulate(acc[t], blk, s1, x->d[tok * nb + b],
                                                   x->sum[tok * nb + b]);
                }
            }
            for (int t = 0; t < n_tok; t++) store_tile(y + (tc + t) * rows + r, acc[t], n_rows);
        }
    }
}

const bsi_q1_kernels bsi_q1_avx2 = {
    .isa = BSI_ISA_AVX2,
    .row_tile = TILE,
    .pack = pack,
    .gemv = gemv,
    .gemm = gemm,
};
