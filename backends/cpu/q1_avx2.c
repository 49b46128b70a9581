/*
 * Q1_0 kernels for AVX2 (+FMA, F16C): table lookup instead of multiplication. Compiled with
 * -mavx2 -mfma -mf16c; used only when the CPU and OS support them.
 *
 * For each group of 4 activations (q0..q3, int8) of a token, every activation is split into
 * q = 16 qh + ql (ql = q & 15 in 0..15, qh = q >> 4 in -8..7), and two 16-entry int8 tables hold
 * every subset sum of each part: L[m] = sum_{j: bit j of m} ql_j (0..60) and H[m] = the same of
 * qh (-32..28). A weight row's 4 sign bits for that group are the index m, so one vpshufb looks
 * up L for 32 rows at once and a second one H. Four lookups of each part still fit a byte
 * (L <= 240, H in -128..112), so two steps (16 weights) are added as bytes before being widened
 * to int16 once: per 8 weights x 32 rows, four lookups and two widening shuffles, where exact
 * int16 tables (low and high bytes) took four lookups and four. Shuffles are the limit of this
 * kernel (two ports), so that is a third fewer (see docs/perf-notes.md). A block of 128 then
 * sums to S1 = 16 H + L exactly in int16 (|H| <= 1024, L <= 1920), and
 * dot = dw * dx * (2 * S1 - Sq) as for every variant.
 *
 * Packed layout: rows in tiles of 32; per (tile, block) 576 bytes = the 32 rows' 18-byte blocks:
 *   bytes 32 p + r    (p = 0..15, r = 0..31): byte p of row r's sign bits (weights 8p .. 8p+7;
 *                     low nibble = group 2p, high nibble = group 2p+1), i.e. a transpose;
 *   bytes 512 + 2 r   the fp16 scale of row r.
 * Tables (prepare()): per token and block, per p: L(2p) H(2p) L(2p+1) H(2p+1), 16 bytes each:
 * 1 KiB per block, 8 bytes per activation.
 */
#include "q1.h"

#include <immintrin.h>
#include <stdbool.h>
#include <string.h>

#define TILE             32
#define TILE_BLOCK_BYTES (TILE * BSI_Q1_BLOCK_BYTES) /* 576 */
/* GEMV: bytes ahead of the tile-block being read, prefetched into L2 (T1): into L1 (T0) at 8
 * tile-blocks, the misses in flight were too few to stream from memory beyond 2048 columns, where
 * the hardware prefetchers help less (10 GB/s one thread, against 22 now; docs/perf-notes.md) */
#define PREFETCH         (12 * TILE_BLOCK_BYTES)
#define LUT_BLOCK_BYTES  1024
#define GEMM_TAB_KB      256 /* GEMM: tables of a chunk of tokens */
#define GEMM_W_KB        256 /* GEMM: weights of a group of rows */

static void pack(const uint8_t *src, uint8_t *dst, int64_t rows, int64_t cols)
{
    int64_t nb = cols / BSI_QK, tiles = (rows + TILE - 1) / TILE;
    size_t row_bytes = (size_t)nb * BSI_Q1_BLOCK_BYTES;
    for (int64_t t = 0; t < tiles; t++) {
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *out = dst + ((size_t)t * (size_t)nb + (size_t)b) * TILE_BLOCK_BYTES;
            memset(out, 0, TILE_BLOCK_BYTES); /* padding rows: scale 0 */
            for (int r = 0; r < TILE && t * TILE + r < rows; r++) {
                const uint8_t *blk =
                    src + (size_t)(t * TILE + r) * row_bytes + (size_t)b * BSI_Q1_BLOCK_BYTES;
                for (int p = 0; p < 16; p++) out[32 * p + r] = blk[2 + p];
                memcpy(out + 512 + 2 * r, blk, 2);
            }
        }
    }
}

static size_t lut_bytes(int64_t cols)
{
    return (size_t)(cols / BSI_QK) * LUT_BLOCK_BYTES;
}

/* Byte indices for building tables: entry m of a group's table takes part j of the group when
 * bit j of m is set (0x80: a zero byte). Groups g (lane 0, bytes 0-3) and g + 1 (lane 1, bytes
 * 4-7) are built at once. */
#define SEL(j, m, lane) ((uint8_t)(((m) >> (j)) & 1 ? 4 * (lane) + (j) : 0x80))
#define SEL16(j, lane)                                                                             \
    SEL(j, 0, lane), SEL(j, 1, lane), SEL(j, 2, lane), SEL(j, 3, lane), SEL(j, 4, lane),           \
        SEL(j, 5, lane), SEL(j, 6, lane), SEL(j, 7, lane), SEL(j, 8, lane), SEL(j, 9, lane),       \
        SEL(j, 10, lane), SEL(j, 11, lane), SEL(j, 12, lane), SEL(j, 13, lane), SEL(j, 14, lane),  \
        SEL(j, 15, lane)
static const uint8_t table_sel[4][32] __attribute__((aligned(32))) = {{SEL16(0, 0), SEL16(0, 1)},
                                                                      {SEL16(1, 0), SEL16(1, 1)},
                                                                      {SEL16(2, 0), SEL16(2, 1)},
                                                                      {SEL16(3, 0), SEL16(3, 1)}};
#undef SEL16
#undef SEL

/* Tables of one block of 128 activations: per group of 4, L (subset sums of the low nibbles) then
 * H (of the signed high parts), 16 bytes each; two groups per step, all in bytes (sums of 4 fit:
 * 0..60 and -32..28). */
static inline void build_block_tables(const int8_t *q, uint8_t *out)
{
    const __m256i nib = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    const __m256i s0 = _mm256_load_si256((const __m256i *)table_sel[0]);
    const __m256i s1 = _mm256_load_si256((const __m256i *)table_sel[1]);
    const __m256i s2 = _mm256_load_si256((const __m256i *)table_sel[2]);
    const __m256i s3 = _mm256_load_si256((const __m256i *)table_sel[3]);
    for (int g = 0; g < 32; g += 2) {
        int64_t eight_q;
        memcpy(&eight_q, q + 4 * g, 8);
        __m256i v = _mm256_set1_epi64x(eight_q);
        __m256i ql = _mm256_and_si256(v, nib);
        /* q >> 4 per byte: the high nibble, sign-extended from 4 bits */
        __m256i qh = _mm256_sub_epi8(
            _mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), nib), eight), eight);
        __m256i l = _mm256_add_epi8(
            _mm256_add_epi8(_mm256_shuffle_epi8(ql, s0), _mm256_shuffle_epi8(ql, s1)),
            _mm256_add_epi8(_mm256_shuffle_epi8(ql, s2), _mm256_shuffle_epi8(ql, s3)));
        __m256i h = _mm256_add_epi8(
            _mm256_add_epi8(_mm256_shuffle_epi8(qh, s0), _mm256_shuffle_epi8(qh, s1)),
            _mm256_add_epi8(_mm256_shuffle_epi8(qh, s2), _mm256_shuffle_epi8(qh, s3)));
        _mm256_storeu_si256((__m256i *)(out + 32 * g), _mm256_permute2x128_si256(l, h, 0x20));
        _mm256_storeu_si256((__m256i *)(out + 32 * (g + 1)), _mm256_permute2x128_si256(l, h, 0x31));
    }
}

static void prepare(bsi_q8_act *x, int64_t t0, int64_t t1)
{
    int64_t nb = x->cols / BSI_QK;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t b = 0; b < nb; b++)
            build_block_tables(x->q + t * x->cols + b * BSI_QK,
                               x->lut + (size_t)t * x->lut_bytes + (size_t)b * LUT_BLOCK_BYTES);
}

/* Two steps (p, p + 1) of lookups for one tile: the L and H parts of 16 weights x 32 rows,
 * summed as bytes (L <= 240, H in -128..112). */
static inline void lookup2(const uint8_t *blk, const uint8_t *lut, int p, __m256i *l, __m256i *h)
{
    const __m256i nib = _mm256_set1_epi8(0x0F);
    __m256i al = _mm256_setzero_si256(), ah = al;
    for (int k = p; k < p + 2; k++) {
        __m256i idx = _mm256_load_si256((const __m256i *)(blk + 32 * k));
        __m256i ia = _mm256_and_si256(idx, nib);
        __m256i ib = _mm256_and_si256(_mm256_srli_epi16(idx, 4), nib);
        const uint8_t *t = lut + 64 * k;
        al = _mm256_add_epi8(
            al,
            _mm256_add_epi8(
                _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)t)),
                                    ia),
                _mm256_shuffle_epi8(
                    _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(t + 32))), ib)));
        ah = _mm256_add_epi8(
            ah,
            _mm256_add_epi8(
                _mm256_shuffle_epi8(
                    _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(t + 16))), ia),
                _mm256_shuffle_epi8(
                    _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(t + 48))), ib)));
    }
    *l = al;
    *h = ah;
}

/* Adds 16 H + L (byte sums: L unsigned, H signed) to the int16 accumulators of rows
 * 0-7 | 16-23 (lo) and 8-15 | 24-31 (hi). 16 H is H in the high byte shifted right by 4. */
static inline void widen(__m256i l, __m256i h, __m256i *lo, __m256i *hi)
{
    const __m256i zero = _mm256_setzero_si256();
    *lo = _mm256_add_epi16(*lo,
                           _mm256_add_epi16(_mm256_unpacklo_epi8(l, zero),
                                            _mm256_srai_epi16(_mm256_unpacklo_epi8(zero, h), 4)));
    *hi = _mm256_add_epi16(*hi,
                           _mm256_add_epi16(_mm256_unpackhi_epi8(l, zero),
                                            _mm256_srai_epi16(_mm256_unpackhi_epi8(zero, h), 4)));
}

/* S1 (sum of q over set bits) of the 32 rows of one tile-block, as int16:
 * *lo = rows 0-7 | 16-23, *hi = rows 8-15 | 24-31. */
static inline void tile_block_sums(const uint8_t *blk, const uint8_t *lut, __m256i *lo, __m256i *hi)
{
    __m256i a = _mm256_setzero_si256(), b = a;
    for (int p = 0; p < 16; p += 2) {
        __m256i l, h;
        lookup2(blk, lut, p, &l, &h);
        widen(l, h, &a, &b);
    }
    *lo = a;
    *hi = b;
}

/* The lookup indices of a tile-block: per step p, the low and high nibbles of byte p of the 32
 * rows (groups 2p and 2p + 1). The GEMM extracts them once for all its tokens. */
static inline void tile_block_nibbles(const uint8_t *blk, __m256i nibs[32])
{
    const __m256i nib = _mm256_set1_epi8(0x0F);
    for (int p = 0; p < 16; p++) {
        __m256i idx = _mm256_load_si256((const __m256i *)(blk + 32 * p));
        nibs[2 * p] = _mm256_and_si256(idx, nib);
        nibs[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(idx, 4), nib);
    }
}

/* tile_block_sums from extracted nibbles. */
static inline void tile_block_sums_nib(const __m256i nibs[32], const uint8_t *lut, __m256i *lo,
                                       __m256i *hi)
{
    __m256i a = _mm256_setzero_si256(), b = a;
    for (int p = 0; p < 16; p += 2) {
        __m256i l = _mm256_setzero_si256(), h = l;
        for (int k = p; k < p + 2; k++) {
            const uint8_t *t = lut + 64 * k;
            __m256i ia = nibs[2 * k], ib = nibs[2 * k + 1];
            __m256i tla = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)t));
            __m256i tha = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(t + 16)));
            __m256i tlb = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(t + 32)));
            __m256i thb = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(t + 48)));
            l = _mm256_add_epi8(
                l, _mm256_add_epi8(_mm256_shuffle_epi8(tla, ia), _mm256_shuffle_epi8(tlb, ib)));
            h = _mm256_add_epi8(
                h, _mm256_add_epi8(_mm256_shuffle_epi8(tha, ia), _mm256_shuffle_epi8(thb, ib)));
        }
        widen(l, h, &a, &b);
    }
    *lo = a;
    *hi = b;
}

/* acc[k] (rows 8k .. 8k+7) += dw * dx * (2 * S1 - sum_q). */
static inline void tile_block_accumulate(__m256 acc[4], const uint8_t *blk, __m256i lo, __m256i hi,
                                         float dx, int32_t sum_q)
{
    const __m256i sq = _mm256_set1_epi32(sum_q);
    const __m256 vdx = _mm256_set1_ps(dx);
    __m256i s[4] = {
        _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo)),      /* rows 0-7 */
        _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi)),      /* rows 8-15 */
        _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo, 1)), /* rows 16-23 */
        _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi, 1)), /* rows 24-31 */
    };
    for (int k = 0; k < 4; k++) {
        __m256i v = _mm256_sub_epi32(_mm256_slli_epi32(s[k], 1), sq);
        __m256 dw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(blk + 512 + 16 * k)));
        acc[k] = _mm256_fmadd_ps(_mm256_mul_ps(dw, vdx), _mm256_cvtepi32_ps(v), acc[k]);
    }
}

static inline void store_tile(float *y, const __m256 acc[4], int n)
{
    if (n == TILE) {
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 8 * k, acc[k]);
    } else {
        float tmp[TILE];
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(tmp + 8 * k, acc[k]);
        memcpy(y, tmp, (size_t)n * sizeof(float));
    }
}

/* One token over rows [r0, r1): y[r]. */
static void tile_rows(const uint8_t *w, const bsi_q8_act *x, int64_t tok, float *y, int64_t r0,
                      int64_t r1, int64_t cols)
{
    int64_t nb = cols / BSI_QK;
    const uint8_t *lut = x->lut + (size_t)tok * x->lut_bytes;
    const float *d = x->d + tok * nb;
    const int32_t *sum = x->sum + tok * nb;
    size_t tile_bytes = (size_t)nb * TILE_BLOCK_BYTES;
    for (int64_t r = r0; r < r1; r += TILE) {
        const uint8_t *tile = w + (size_t)(r / TILE) * tile_bytes;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = tile + (size_t)b * TILE_BLOCK_BYTES;
            for (int k = 0; k < TILE_BLOCK_BYTES; k += 64)
                _mm_prefetch((const char *)blk + PREFETCH + k, _MM_HINT_T1);
            __m256i lo, hi;
            tile_block_sums(blk, lut + (size_t)b * LUT_BLOCK_BYTES, &lo, &hi);
            tile_block_accumulate(acc, blk, lo, hi, d[b], sum[b]);
        }
        store_tile(y + (r - r0), acc, r1 - r < TILE ? (int)(r1 - r) : TILE);
    }
}

static void gemv(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t r0,
                 int64_t r1, int64_t cols)
{
    (void)xf;
    tile_rows(w, x, 0, y + r0, r0, r1, cols);
}

/* Blocked for the caches (L2 = 512 KiB here, of the 1 MiB a Zen 4 core has): tokens in chunks
 * whose tables (1 KiB per block and token) take 256 KiB, rows in groups whose weights take
 * 256 KiB. For each group, every chunk of tokens runs over every tile of the group: a tile-block's
 * 576 bytes stay in L1 while the chunk's tables stream past them from L2, and the group's weights
 * stay in L2 from one chunk to the next, so each weight and each table comes from memory once per
 * group rather than once per tile (the tables of a 512-token prompt are 8 MiB per 2048 columns). */
static void gemm(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t rows,
                 int64_t r0, int64_t r1, int64_t cols, int64_t t0, int64_t t1)
{
    (void)xf;
    int64_t nb = cols / BSI_QK;
    enum { CHUNK = 16 };
    __m256 acc[CHUNK][4];
    int64_t chunk = (int64_t)((GEMM_TAB_KB * 1024) / x->lut_bytes);
    chunk = chunk < 1 ? 1 : chunk > CHUNK ? CHUNK : chunk;
    size_t tile_bytes = (size_t)nb * TILE_BLOCK_BYTES;
    int64_t group = (int64_t)((GEMM_W_KB * 1024) / tile_bytes) * TILE;
    if (group < TILE) group = TILE;
    for (int64_t g0 = r0; g0 < r1; g0 += group) {
        int64_t g1 = g0 + group < r1 ? g0 + group : r1;
        for (int64_t tc = t0; tc < t1; tc += chunk) {
            int n_tok = (int)(t1 - tc < chunk ? t1 - tc : chunk);
            for (int64_t r = g0; r < g1; r += TILE) {
                const uint8_t *tile = w + (size_t)(r / TILE) * tile_bytes;
                int n_rows = g1 - r < TILE ? (int)(g1 - r) : TILE;
                for (int t = 0; t < n_tok; t++)
                    for (int k = 0; k < 4; k++) acc[t][k] = _mm256_setzero_ps();
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *blk = tile + (size_t)b * TILE_BLOCK_BYTES;
                    __m256i nibs[32];
                    tile_block_nibbles(blk, nibs);
                    for (int t = 0; t < n_tok; t++) {
                        int64_t tok = tc + t;
                        __m256i lo, hi;
                        tile_block_sums_nib(
                            nibs, x->lut + (size_t)tok * x->lut_bytes + (size_t)b * LUT_BLOCK_BYTES,
                            &lo, &hi);
                        tile_block_accumulate(acc[t], blk, lo, hi, x->d[tok * nb + b],
                                              x->sum[tok * nb + b]);
                    }
                }
                for (int t = 0; t < n_tok; t++) store_tile(y + (tc + t) * rows + r, acc[t], n_rows);
            }
        }
    }
}

/* bsi_q8_quantize with AVX2: the same arithmetic (fp32 product, round to nearest even as lrintf
 * in the default rounding mode, clamp to +-127), so the same values. */
static void quantize(bsi_q8_act *a, const float *x, int64_t t0, int64_t t1)
{
    int64_t nb = a->cols / BSI_QK;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
    for (int64_t t = t0; t < t1; t++)
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + t * a->cols + b * BSI_QK;
            int8_t *q = a->q + t * a->cols + b * BSI_QK;
            __m256 v[16], m = _mm256_setzero_ps();
            for (int k = 0; k < 16; k++) {
                v[k] = _mm256_loadu_ps(xb + 8 * k);
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
            }
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            float amax = _mm_cvtss_f32(h);
            float d, id;
            bsi_q8_block_scale(amax, &d, &id);
            const __m256 vid = _mm256_set1_ps(id);
            __m256i acc = _mm256_setzero_si256();
            for (int k = 0; k < 16; k += 4) {
                __m256i i[4];
                for (int j = 0; j < 4; j++) {
                    i[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k + j], vid));
                    i[j] = _mm256_max_epi32(_mm256_min_epi32(i[j], lim), nlim);
                    acc = _mm256_add_epi32(acc, i[j]);
                }
                /* 32 int32 -> 32 int8 in order: packs work within 128-bit lanes */
                __m256i w01 = _mm256_packs_epi32(i[0], i[1]), w23 = _mm256_packs_epi32(i[2], i[3]);
                __m256i bytes = _mm256_packs_epi16(w01, w23);
                bytes =
                    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256((__m256i *)(q + 8 * k), bytes);
            }
            __m128i s4 =
                _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
            a->d[t * nb + b] = d;
            a->sum[t * nb + b] = _mm_cvtsi128_si32(s4);
        }
}

const bsi_q1_kernels bsi_q1_avx2 = {
    .isa = BSI_ISA_AVX2,
    .row_tile = TILE,
    .pack = pack,
    .lut_bytes = lut_bytes,
    .prepare = prepare,
    .quantize = quantize,
    .gemv = gemv,
    .gemm = gemm,
};
