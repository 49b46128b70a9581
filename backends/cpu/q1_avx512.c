/*
 * Q1_0 kernels for AVX-512 F/BW/VL + VNNI (compiled with -mavx512f -mavx512bw -mavx512vl
 * -mavx512vnni -mfma -mf16c; isa.c offers this variant only when the CPU has all of them).
 *
 * Packed layout (pack(), row_tile 16): rows in tiles of 16; per (tile, block) 288 bytes, the same
 * bytes as the 16 rows' 18-byte blocks:
 *   bytes 64 m + 4 i + j    (m = 0..3, i = 0..15, j = 0..3): bit k (0..7) is the sign bit of row i
 *                           for weight 32 m + 4 k + j of the block;
 *   bytes 256 + 2 i         the fp16 scale of row i (0 for the padding rows of the last tile).
 * So in the 64 bytes m, read as a zmm, byte 4 i + j belongs to dword lane i (row i), and bit k of
 * the four bytes of a lane is that row's four weights 32 m + 4 k .. 32 m + 4 k + 3, the
 * activations of which one vpdpbusd broadcasts to every lane.
 *
 * gemv: per 64 weight-MACs one vpandq and one vpdpbusd (its broadcast operand from memory), no
 * mask register. (bytes & 2^k) is 0 or 2^k, so the product sums 2^k * q over the set bits of row
 * i; bits k and k + 4 (the latter brought down by one 16-bit shift per 64 bytes) go to the same
 * accumulator c[k], and per block S1 = sum_k c[k] / 2^k by three shift-adds, exact (every term of
 * c[k] is a multiple of 2^k). The accumulators run over the whole row (|c| < 2^31 up to 8M
 * columns) and a block's S1 is the difference of two such sums, so nothing is zeroed per block.
 * One fma per 16 rows then adds (dw * dx) * (float)(2 S1 - Sq), Sq being the block sum of the
 * activations (bsi_q8_act), with dw the 16 rows' scales (one vcvtph2ps). The weights are
 * prefetched 8 blocks ahead (non-temporal: they are read once).
 * gemm: a group's bits k of the 64 bytes, expanded to 0/1 bytes (vpandq, vpminub), serve up to 8
 * tokens (one vpdpbusd per 64 MACs per token, 8 independent chains); tiles outer, tokens inner,
 * so a tile stays in cache while tokens pass.
 * For every output the integer S1 is exact and the float operations are the same in gemv and gemm
 * (bit-identical results).
 *
 * Under BSI_SIMDE (tests/emulated) the same code compiles against SIMDe's portable AVX-512.
 */
#include "q1.h"
#include "simd.h"

#include <string.h>

#define TILE             16
#define TILE_BLOCK_BYTES (TILE * BSI_Q1_BLOCK_BYTES) /* 288 */
#define SCALES           256                         /* offset of the scales in a tile-block */
#define NT_MAX           8                           /* tokens per gemm pass */
#define PREFETCH         (8 * TILE_BLOCK_BYTES)      /* gemv: bytes ahead of the block being read */

/* Bits j, j + 4, ..., j + 28 of u as one byte (bit 4 k + j -> bit k). */
static inline uint8_t gather_nibble_bits(uint32_t u, int j)
{
    uint32_t x = (u >> j) & 0x11111111u;
    x = (x | x >> 3) & 0x03030303u;
    x = (x | x >> 6) & 0x000F000Fu;
    return (uint8_t)(x | x >> 12);
}

static void pack(const uint8_t *src, uint8_t *dst, int64_t rows, int64_t cols)
{
    int64_t nb = cols / BSI_QK, tiles = (rows + TILE - 1) / TILE;
    size_t row_bytes = (size_t)nb * BSI_Q1_BLOCK_BYTES;
    for (int64_t t = 0; t < tiles; t++) {
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *out = dst + ((size_t)t * (size_t)nb + (size_t)b) * TILE_BLOCK_BYTES;
            memset(out, 0, TILE_BLOCK_BYTES); /* padding rows: scale 0, no bits */
            for (int i = 0; i < TILE && t * TILE + i < rows; i++) {
                const uint8_t *blk =
                    src + (size_t)(t * TILE + i) * row_bytes + (size_t)b * BSI_Q1_BLOCK_BYTES;
                out[SCALES + 2 * i] = blk[0];
                out[SCALES + 2 * i + 1] = blk[1];
                for (int m = 0; m < 4; m++) {
                    const uint8_t *p = blk + 2 + 4 * m; /* weights 32 m .. 32 m + 31 */
                    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                 (uint32_t)p[3] << 24;
                    for (int j = 0; j < 4; j++) out[64 * m + 4 * i + j] = gather_nibble_bits(u, j);
                }
            }
        }
    }
}

/* The 4 activations q[0..3] in every dword lane. */
static inline __m512i bcast4(const int8_t *q)
{
    int32_t v;
    memcpy(&v, q, 4);
    return _mm512_set1_epi32(v);
}

/* The 16 fp16 scales of a tile-block as fp32. */
static inline __m512 load_scales(const uint8_t *p)
{
#if defined(BSI_SIMDE)
    /* SIMDe 0.7 has no _mm512_cvtph_ps: two halves */
    __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
#else
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#endif
}

/* int32 -> fp32 (SIMDe 0.7 lacks _mm512_cvtepi32_ps: two halves there). */
static inline __m512 cvt_ps(__m512i v)
{
#if defined(BSI_SIMDE)
    __m256 lo = _mm256_cvtepi32_ps(_mm512_castsi512_si256(v));
    __m256 hi = _mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(v, 1));
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
#else
    return _mm512_cvtepi32_ps(v);
#endif
}

/* acc (lane i = row i) += (dw_i * dx) * (float)(2 S1_i - Sq). */
static inline __m512 block_update(__m512 acc, __m512i s1, const uint8_t *blk, float dx, int32_t sq)
{
    __m512i v = _mm512_sub_epi32(_mm512_add_epi32(s1, s1), _mm512_set1_epi32(sq));
    __m512 scale = _mm512_mul_ps(load_scales(blk + SCALES), _mm512_set1_ps(dx));
    return _mm512_fmadd_ps(scale, cvt_ps(v), acc);
}

/* y[0 .. n) = the first n lanes of acc. */
static inline void store_rows(float *y, __m512 acc, int n)
{
    if (n == TILE) {
        _mm512_storeu_ps(y, acc);
    } else {
        float tmp[TILE];
        _mm512_storeu_ps(tmp, acc);
        memcpy(y, tmp, (size_t)n * sizeof(float));
    }
}

/* Arithmetic shift right of 16 int32 by 1 (SIMDe 0.7 lacks _mm512_srai_epi32: two halves). */
static inline __m512i half_epi32(__m512i v)
{
#if defined(BSI_SIMDE)
    __m256i lo = _mm256_srai_epi32(_mm512_castsi512_si256(v), 1);
    __m256i hi = _mm256_srai_epi32(_mm512_extracti64x4_epi64(v, 1), 1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
#else
    return _mm512_srai_epi32(v, 1);
#endif
}

static void gemv(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t r0,
                 int64_t r1, int64_t cols)
{
    (void)xf;
    int64_t nb = cols / BSI_QK;
    __m512i bit[4];
    for (int k = 0; k < 4; k++) bit[k] = _mm512_set1_epi8((char)(1 << k));
    for (int64_t r = r0; r < r1; r += TILE) {
        const uint8_t *tile = w + (size_t)(r / TILE) * (size_t)nb * TILE_BLOCK_BYTES;
        __m512 acc = _mm512_setzero_ps();
        /* c[k]: 2^k times the row's running sums over bits k and k + 4; prev: S1 up to the block */
        __m512i c[4], prev = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) c[k] = prev;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = tile + (size_t)b * TILE_BLOCK_BYTES;
            const int8_t *q = x->q + b * BSI_QK;
            for (int k = 0; k < TILE_BLOCK_BYTES; k += 64)
                _mm_prefetch((const char *)blk + PREFETCH + k, _MM_HINT_NTA);
            for (int m = 0; m < 4; m++) {
                __m512i lo = _mm512_loadu_si512(blk + 64 * m);
                __m512i hi = _mm512_srli_epi16(lo, 4); /* bits 4..7 of every byte to 0..3 */
                for (int k = 0; k < 4; k++) {
                    c[k] = _mm512_dpbusd_epi32(c[k], _mm512_and_si512(lo, bit[k]),
                                               bcast4(q + 32 * m + 4 * k));
                    c[k] = _mm512_dpbusd_epi32(c[k], _mm512_and_si512(hi, bit[k]),
                                               bcast4(q + 32 * m + 4 * k + 16));
                }
            }
            __m512i h = _mm512_add_epi32(half_epi32(c[3]), c[2]);
            h = _mm512_add_epi32(half_epi32(h), c[1]);
            h = _mm512_add_epi32(half_epi32(h), c[0]);
            acc = block_update(acc, _mm512_sub_epi32(h, prev), blk, x->d[b], x->sum[b]);
            prev = h;
        }
        store_rows(y + r, acc, r1 - r < TILE ? (int)(r1 - r) : TILE);
    }
}

/* One tile (n_rows valid rows, first row r) for tokens [t0, t0 + nt); nt is a constant at every
 * call site so the token loops unroll and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void gemm_tile(const uint8_t *tile,
                                                            const bsi_q8_act *x, float *y,
                                                            int64_t rows, int64_t r, int n_rows,
                                                            int64_t cols, int64_t t0, const int nt)
{
    int64_t nb = cols / BSI_QK;
    const __m512i ones = _mm512_set1_epi8(1);
    __m512 acc[NT_MAX];
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = tile + (size_t)b * TILE_BLOCK_BYTES;
        const int8_t *q = x->q + t0 * cols + b * BSI_QK;
        __m512i s[NT_MAX];
        for (int t = 0; t < nt; t++) s[t] = _mm512_setzero_si512();
        for (int m = 0; m < 4; m++) {
            __m512i wm = _mm512_loadu_si512(blk + 64 * m);
            for (int k = 0; k < 8; k++) {
                __m512i wv =
                    _mm512_min_epu8(_mm512_and_si512(wm, _mm512_set1_epi8((char)(1 << k))), ones);
                for (int t = 0; t < nt; t++)
                    s[t] = _mm512_dpbusd_epi32(s[t], wv, bcast4(q + t * cols + 32 * m + 4 * k));
            }
        }
        for (int t = 0; t < nt; t++)
            acc[t] =
                block_update(acc[t], s[t], blk, x->d[(t0 + t) * nb + b], x->sum[(t0 + t) * nb + b]);
    }
    for (int t = 0; t < nt; t++) store_rows(y + (t0 + t) * rows + r, acc[t], n_rows);
}

static void gemm(const uint8_t *w, const bsi_q8_act *x, const float *xf, float *y, int64_t rows,
                 int64_t r0, int64_t r1, int64_t cols, int64_t t0, int64_t t1)
{
    (void)xf;
    int64_t nb = cols / BSI_QK;
    for (int64_t r = r0; r < r1; r += TILE) {
        const uint8_t *tile = w + (size_t)(r / TILE) * (size_t)nb * TILE_BLOCK_BYTES;
        int n_rows = r1 - r < TILE ? (int)(r1 - r) : TILE;
        for (int64_t tc = t0; tc < t1; tc += NT_MAX) {
            switch (t1 - tc < NT_MAX ? (int)(t1 - tc) : NT_MAX) {
            case 1: gemm_tile(tile, x, y, rows, r, n_rows, cols, tc, 1); break;
            case 2: gemm_tile(tile, x, y, rows, r, n_rows, cols, tc, 2); break;
            case 3: gemm_tile(tile, x, y, rows, r, n_rows, cols, tc, 3); break;
            case 4: gemm_tile(tile, x, y, rows, r, n_rows, cols, tc, 4); break;
            case 5: gemm_tile(tile, x, y, rows, r, n_rows, cols, tc, 5); break;
            case 6: gemm_tile(tile, x, y, rows, r, n_rows, cols, tc, 6); break;
            case 7: gemm_tile(tile, x, y, rows, r, n_rows, cols, tc, 7); break;
            default: gemm_tile(tile, x, y, rows, r, n_rows, cols, tc, 8); break;
            }
        }
    }
}

/* The quantizer's reductions and conversions (SIMDe 0.7 lacks these four: through memory there). */
static inline float reduce_max(__m512 v)
{
#if defined(BSI_SIMDE)
    float f[16];
    _mm512_storeu_ps(f, v);
    float m = f[0];
    for (int i = 1; i < 16; i++) m = f[i] > m ? f[i] : m;
    return m;
#else
    return _mm512_reduce_max_ps(v);
#endif
}

static inline int32_t reduce_add(__m512i v)
{
#if defined(BSI_SIMDE)
    int32_t x[16], s = 0;
    _mm512_storeu_si512(x, v);
    for (int i = 0; i < 16; i++) s += x[i];
    return s;
#else
    return _mm512_reduce_add_epi32(v);
#endif
}

/* fp32 -> int32 rounded in the current mode (to nearest even). */
static inline __m512i cvt_epi32(__m512 v)
{
#if defined(BSI_SIMDE)
    __m256i lo = _mm256_cvtps_epi32(_mm512_castps512_ps256(v));
    __m256i hi =
        _mm256_cvtps_epi32(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
#else
    return _mm512_cvtps_epi32(v);
#endif
}

/* The low bytes of 16 int32 in -127..127 to q[0..15]. */
static inline void store_bytes(int8_t *q, __m512i v)
{
#if defined(BSI_SIMDE)
    int32_t x[16];
    _mm512_storeu_si512(x, v);
    for (int i = 0; i < 16; i++) q[i] = (int8_t)x[i];
#else
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(v));
#endif
}

/* bsi_q8_quantize with AVX-512: the same arithmetic (fp32 product, round to nearest even as lrintf
 * in the default rounding mode, clamp to +-127), so the same values. |x| is the first operand of
 * the max, so a NaN is skipped as fmaxf skips it. */
static void quantize(bsi_q8_act *a, const float *x, int64_t t0, int64_t t1)
{
    int64_t nb = a->cols / BSI_QK;
    const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
    for (int64_t t = t0; t < t1; t++)
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + t * a->cols + b * BSI_QK;
            int8_t *q = a->q + t * a->cols + b * BSI_QK;
            __m512 v[8], m = _mm512_setzero_ps();
            for (int k = 0; k < 8; k++) {
                v[k] = _mm512_loadu_ps(xb + 16 * k);
                m = _mm512_max_ps(_mm512_abs_ps(v[k]), m);
            }
            float amax = reduce_max(m);
            float d, id;
            bsi_q8_block_scale(amax, &d, &id);
            const __m512 vid = _mm512_set1_ps(id);
            __m512i acc = _mm512_setzero_si512();
            for (int k = 0; k < 8; k++) {
                __m512i i = cvt_epi32(_mm512_mul_ps(v[k], vid));
                i = _mm512_max_epi32(_mm512_min_epi32(i, lim), nlim);
                acc = _mm512_add_epi32(acc, i);
                store_bytes(q + 16 * k, i);
            }
            a->d[t * nb + b] = d;
            a->sum[t * nb + b] = reduce_add(acc);
        }
}

const bsi_q1_kernels bsi_q1_avx512 = {
    .isa = BSI_ISA_AVX512,
    .row_tile = TILE,
    .pack = pack,
    .quantize = quantize,
    .gemv = gemv,
    .gemm = gemm,
};
