/*
 * CPU ops for AVX2 (+FMA, F16C). Compiled with -mavx2 -mfma -mf16c; used only when the CPU and
 * OS support them. Same results as ops_ref.c up to fp32 rounding: products are fused, sums are
 * split over 32 lanes, exp is a polynomial (relative error ~1e-7).
 */
#include "ops.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lane mask selecting the first n (0..8) lanes, for maskload / maskstore. */
static inline __m256i tail_mask(int64_t n)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), idx);
}

/* 8 fp16 / bf16 values, the last `n` (< 8) of a row copied to a zeroed buffer so that nothing is
 * read past the row. */
static inline __m128i load_u16_tail(const uint8_t *p, int64_t n)
{
    uint16_t buf[8] = {0};
    memcpy(buf, p, (size_t)n * 2);
    return _mm_loadu_si128((const __m128i *)buf);
}

static inline __m256 bf16x8_to_ps(__m128i h)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/*
 * e^x for 8 lanes (Cephes expf): x = n ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial, and
 * 2^n applied in two halves so that results overflow to inf and underflow gradually to 0 as expf
 * does. NaN propagates.
 */
static inline __m256 exp_ps(__m256 x)
{
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x); /* operand order: a NaN x passes through */
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1);
    __m256i n2 = _mm256_sub_epi32(ni, n1), bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* ---- matrix-vector products ---- */

static void gemv_f32(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols)
{
    const float *m = w;
    int64_t c32 = cols & ~(int64_t)31, c8 = cols & ~(int64_t)7;
    __m256i mask = tail_mask(cols - c8);
    for (int64_t r = r0; r < r1; r++) {
        const float *row = m + r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t i = 0;
        for (; i < c32; i += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(x + i), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 8), _mm256_loadu_ps(x + i + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 16), _mm256_loadu_ps(x + i + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 24), _mm256_loadu_ps(x + i + 24), a3);
        }
        for (; i < c8; i += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(x + i), a0);
        if (i < cols)
            a1 = _mm256_fmadd_ps(_mm256_maskload_ps(row + i, mask), _mm256_maskload_ps(x + i, mask),
                                 a1);
        y[r] = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
}

static inline __m256 half8_to_ps(int bf16, __m128i v)
{
    return bf16 ? bf16x8_to_ps(v) : _mm256_cvtph_ps(v);
}

/* F16 and BF16 rows: one loop, the conversion chosen by a constant the compiler folds. */
static inline __attribute__((always_inline)) void
gemv_half(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols, int bf16)
{
    const uint8_t *m = w;
    int64_t c32 = cols & ~(int64_t)31, c8 = cols & ~(int64_t)7;
    __m256i mask = tail_mask(cols - c8);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = m + (size_t)r * (size_t)cols * 2;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t i = 0;
        for (; i < c32; i += 32) {
            const __m128i *p = (const __m128i *)(row + 2 * i);
            a0 = _mm256_fmadd_ps(half8_to_ps(bf16, _mm_loadu_si128(p)), _mm256_loadu_ps(x + i), a0);
            a1 = _mm256_fmadd_ps(half8_to_ps(bf16, _mm_loadu_si128(p + 1)),
                                 _mm256_loadu_ps(x + i + 8), a1);
            a2 = _mm256_fmadd_ps(half8_to_ps(bf16, _mm_loadu_si128(p + 2)),
                                 _mm256_loadu_ps(x + i + 16), a2);
            a3 = _mm256_fmadd_ps(half8_to_ps(bf16, _mm_loadu_si128(p + 3)),
                                 _mm256_loadu_ps(x + i + 24), a3);
        }
        for (; i < c8; i += 8)
            a0 = _mm256_fmadd_ps(half8_to_ps(bf16, _mm_loadu_si128((const __m128i *)(row + 2 * i))),
                                 _mm256_loadu_ps(x + i), a0);
        if (i < cols)
            a1 = _mm256_fmadd_ps(half8_to_ps(bf16, load_u16_tail(row + 2 * i, cols - i)),
                                 _mm256_maskload_ps(x + i, mask), a1);
        y[r] = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
}

static void gemv_f16(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols)
{
    gemv_half(w, x, y, r0, r1, cols, 0);
}

static void gemv_bf16(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols)
{
    gemv_half(w, x, y, r0, r1, cols, 1);
}

/* 8 int8 weights at p as fp32 lanes. */
static inline __m256 q8x8_to_ps(const uint8_t *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Q8_0: each block's weights dequantized exactly (d * q fits fp32), then fused into the sums. */
static void gemv_q8_0(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols)
{
    const uint8_t *m = w;
    int64_t nb = cols / 32;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = m + (size_t)r * (size_t)nb * 34;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 34 * b;
            const float *xb = x + 32 * b;
            uint16_t dh;
            memcpy(&dh, blk, 2);
            __m256 d = _mm256_set1_ps(_cvtsh_ss(dh));
            a0 = _mm256_fmadd_ps(_mm256_mul_ps(d, q8x8_to_ps(blk + 2)), _mm256_loadu_ps(xb), a0);
            a1 = _mm256_fmadd_ps(_mm256_mul_ps(d, q8x8_to_ps(blk + 10)), _mm256_loadu_ps(xb + 8),
                                 a1);
            a2 = _mm256_fmadd_ps(_mm256_mul_ps(d, q8x8_to_ps(blk + 18)), _mm256_loadu_ps(xb + 16),
                                 a2);
            a3 = _mm256_fmadd_ps(_mm256_mul_ps(d, q8x8_to_ps(blk + 26)), _mm256_loadu_ps(xb + 24),
                                 a3);
        }
        y[r] = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
}

/* ---- element-wise ops and reductions ---- */

static void rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps)
{
    int64_t c32 = n & ~(int64_t)31, c8 = n & ~(int64_t)7;
    __m256i mask = tail_mask(n - c8);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i < c32; i += 32) {
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
        a0 = _mm256_fmadd_ps(v0, v0, a0);
        a1 = _mm256_fmadd_ps(v1, v1, a1);
        a2 = _mm256_fmadd_ps(v2, v2, a2);
        a3 = _mm256_fmadd_ps(v3, v3, a3);
    }
    for (; i < c8; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        a0 = _mm256_fmadd_ps(v, v, a0);
    }
    if (i < n) {
        __m256 v = _mm256_maskload_ps(x + i, mask);
        a1 = _mm256_fmadd_ps(v, v, a1);
    }
    float ss = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    __m256 scale = _mm256_set1_ps((float)(1.0 / sqrt((double)ss / (double)n + eps)));
    for (i = 0; i < c8; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), scale);
        if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(y + i, v);
    }
    if (i < n) {
        __m256 v = _mm256_mul_ps(_mm256_maskload_ps(x + i, mask), scale);
        if (w) v = _mm256_mul_ps(v, _mm256_maskload_ps(w + i, mask));
        _mm256_maskstore_ps(y + i, mask, v);
    }
}

/* x = e^(x - max x) over n > 0 values; returns their sum. */
static float exp_sum(float *x, int64_t n)
{
    int64_t c8 = n & ~(int64_t)7;
    __m256i mask = tail_mask(n - c8);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i < c8; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    float max = hmax(vmax);
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    __m256 m = _mm256_set1_ps(max), a0 = _mm256_setzero_ps(), a1 = a0;
    for (i = 0; i < c8; i += 8) {
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        a0 = _mm256_add_ps(a0, e);
    }
    if (i < n) {
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), m));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(mask)); /* lanes past n add nothing */
        _mm256_maskstore_ps(x + i, mask, e);
        a1 = _mm256_add_ps(a1, e);
    }
    return hsum(_mm256_add_ps(a0, a1));
}

static void softmax(float *x, int64_t n)
{
    if (n <= 0) return;
    int64_t c8 = n & ~(int64_t)7, i;
    __m256i mask = tail_mask(n - c8);
    __m256 inv = _mm256_set1_ps(1.0f / exp_sum(x, n));
    for (i = 0; i < c8; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    if (i < n)
        _mm256_maskstore_ps(x + i, mask, _mm256_mul_ps(_mm256_maskload_ps(x + i, mask), inv));
}

static inline __m256 silu_mul8(__m256 g, __m256 u)
{
    __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

static void silu_mul(const float *g, const float *u, float *y, int64_t n)
{
    int64_t c8 = n & ~(int64_t)7, i = 0;
    for (; i < c8; i += 8)
        _mm256_storeu_ps(y + i, silu_mul8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (i < n) {
        __m256i mask = tail_mask(n - i);
        _mm256_maskstore_ps(
            y + i, mask,
            silu_mul8(_mm256_maskload_ps(g + i, mask), _mm256_maskload_ps(u + i, mask)));
    }
}

static void add(const float *a, const float *b, float *y, int64_t n)
{
    int64_t c8 = n & ~(int64_t)7, i = 0;
    for (; i < c8; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < n; i++) y[i] = a[i] + b[i];
}

/* ---- RoPE ---- */

static void rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int neox,
                 const float *cs)
{
    int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        int64_t i = 0;
        if (neox) {
            /* pairs (i, i + half): 8 pairs at a time, cos and sin de-interleaved from cs */
            for (; i + 8 <= half; i += 8) {
                __m256 p = _mm256_loadu_ps(cs + 2 * i), q = _mm256_loadu_ps(cs + 2 * i + 8);
                __m256 c = _mm256_castpd_ps(_mm256_permute4x64_pd(
                    _mm256_castps_pd(_mm256_shuffle_ps(p, q, _MM_SHUFFLE(2, 0, 2, 0))),
                    _MM_SHUFFLE(3, 1, 2, 0)));
                __m256 s = _mm256_castpd_ps(_mm256_permute4x64_pd(
                    _mm256_castps_pd(_mm256_shuffle_ps(p, q, _MM_SHUFFLE(3, 1, 3, 1))),
                    _MM_SHUFFLE(3, 1, 2, 0)));
                __m256 x0 = _mm256_loadu_ps(v + i), x1 = _mm256_loadu_ps(v + i + half);
                _mm256_storeu_ps(v + i, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
                _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
            }
            for (; i < half; i++) {
                float c = cs[2 * i], s = cs[2 * i + 1], x0 = v[i], x1 = v[i + half];
                v[i] = x0 * c - x1 * s;
                v[i + half] = x0 * s + x1 * c;
            }
        } else {
            /* adjacent pairs (2i, 2i+1) line up with cs = (cos, sin) pairs: 4 pairs at a time */
            for (; i + 4 <= half; i += 4) {
                __m256 t = _mm256_loadu_ps(cs + 2 * i), xv = _mm256_loadu_ps(v + 2 * i);
                __m256 c = _mm256_moveldup_ps(t), s = _mm256_movehdup_ps(t);
                __m256 xs = _mm256_permute_ps(xv, _MM_SHUFFLE(2, 3, 0, 1));
                /* even lanes x0 c - x1 s, odd lanes x1 c + x0 s */
                _mm256_storeu_ps(v + 2 * i, _mm256_fmaddsub_ps(xv, c, _mm256_mul_ps(xs, s)));
            }
            for (; i < half; i++) {
                float c = cs[2 * i], s = cs[2 * i + 1], x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c - x1 * s;
                v[2 * i + 1] = x0 * s + x1 * c;
            }
        }
    }
}

/* attn_heads streams K, then V, of one kv head: rows of hd fp16 values, stride apart. Both are
 * prefetched into L2 (T1; into L1 too few misses were in flight, docs/perf-notes.md): K rows
 * ATTN_AHEAD positions ahead, V rows a block of ATTN_VBLOCK positions ahead. */
#define ATTN_AHEAD  32
#define ATTN_VBLOCK 32
#define ATTN_HINT   _MM_HINT_T1
#define ATTN_QMAX  BSI_ATTN_QUERIES
_Static_assert(ATTN_QMAX == 8, "attn_heads has a case for each pass size up to 8");

/* Scores of gn queries at np positions from p: one accumulator a query and position, 8
 * dimensions at a time, each K vector converted from fp16 once for the gn queries; the np sums of
 * a query reduced together (horizontal adds), s[g n + p + i] = scale q_g.k_{p+i}. */
static inline __attribute__((always_inline)) void
attn_scores_at(const float *const *qp, const uint16_t *k, int64_t p, int64_t n, int64_t stride,
               int64_t hd, float scale, float *s, const int gn, const int np)
{
    for (int i = 0; i < np; i++)
        if (p + i + ATTN_AHEAD < n) /* (a pointer past the cache would be undefined) */
            for (int64_t d = 0; d < hd; d += 32)
                _mm_prefetch((const char *)(k + (p + i + ATTN_AHEAD) * stride + d), ATTN_HINT);
    __m256 a[ATTN_QMAX][4];
    for (int g = 0; g < gn; g++)
        for (int i = 0; i < np; i++) a[g][i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
        __m256 kd[4];
        for (int i = 0; i < np; i++)
            kd[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + (p + i) * stride + d)));
        for (int g = 0; g < gn; g++) {
            __m256 qd = _mm256_loadu_ps(qp[g] + d);
            for (int i = 0; i < np; i++) a[g][i] = _mm256_fmadd_ps(qd, kd[i], a[g][i]);
        }
    }
    const __m128 sc = _mm_set1_ps(scale);
    for (int g = 0; g < gn; g++) {
        float *out = s + g * n + p;
        if (np == 4) { /* [sum a0, sum a1, sum a2, sum a3] */
            __m256 h =
                _mm256_hadd_ps(_mm256_hadd_ps(a[g][0], a[g][1]), _mm256_hadd_ps(a[g][2], a[g][3]));
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(out, _mm_mul_ps(r, sc));
        } else if (np == 2) {
            __m256 h = _mm256_hadd_ps(a[g][0], a[g][1]);
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            r = _mm_hadd_ps(r, r); /* [sum a0, sum a1, ...] */
            _mm_storel_pi((__m64 *)out, _mm_mul_ps(r, sc));
        } else {
            out[0] = hsum(a[g][0]) * scale;
        }
    }
}

/* Scores of gn queries (a constant at every call site) at qp[g] against positions [0, n):
 * positions 4, 2 or 1 at a time (up to 2, 4 or 8 queries: registers). */
static inline __attribute__((always_inline)) void attn_scores(const float *const *qp,
                                                              const uint16_t *k, int64_t n,
                                                              int64_t stride, int64_t hd,
                                                              float scale, float *s, const int gn)
{
    const int np = gn <= 2 ? 4 : gn <= 4 ? 2 : 1;
    int64_t p = 0;
    for (; p + np <= n; p += np) attn_scores_at(qp, k, p, n, stride, hd, scale, s, gn, np);
    for (; p < n; p++) attn_scores_at(qp, k, p, n, stride, hd, scale, s, gn, 1);
}

/* op[g] = sum_{p < n[g]} w[g nmax + p] v_p * inv[g] for gn queries (a constant at every call
 * site; n[] non-decreasing): each V row converted once for the gn queries, 16 dimensions at a time
 * (8 from five queries on). A query never touches a row beyond its own limit (0 * inf is NaN).
 * Positions go in blocks of ATTN_VBLOCK whose rows stay in L1 while every slice of dimensions runs
 * over them (the sums wait in op[] between blocks: the same additions in the same order), and the
 * next block's rows are prefetched meanwhile, a line of each row per slice of 32 bytes. */
static inline __attribute__((always_inline)) void
attn_values(const float *w, const float *inv, const uint16_t *v, const int64_t *n, int64_t nmax,
            int64_t stride, int64_t hd, float *const *op, const int gn)
{
    const int nv = gn <= 4 ? 2 : 1; /* vectors of 8 dimensions a pass */
    for (int64_t p0 = 0; p0 < nmax; p0 += ATTN_VBLOCK) {
        int64_t p1 = p0 + ATTN_VBLOCK < nmax ? p0 + ATTN_VBLOCK : nmax;
        int64_t next = nmax - p1 < ATTN_VBLOCK ? nmax - p1 : ATTN_VBLOCK; /* rows to prefetch */
        for (int64_t d = 0; d < hd; d += 8 * nv) {
            __m256 a[ATTN_QMAX][2];
            for (int g = 0; g < gn; g++)
                for (int j = 0; j < nv; j++)
                    a[g][j] = p0 ? _mm256_loadu_ps(op[g] + d + 8 * j) : _mm256_setzero_ps();
            if (d % 32 == 0)
                for (int64_t p = p1; p < p1 + next; p++)
                    _mm_prefetch((const char *)(v + p * stride + d), ATTN_HINT);
            for (int64_t p = p0; p < p1; p++) {
                const uint16_t *vp = v + p * stride + d;
                __m256 vd[2];
                for (int j = 0; j < nv; j++)
                    vd[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vp + 8 * j)));
                for (int g = 0; g < gn; g++) {
                    if (p >= n[g]) continue;
                    __m256 wg = _mm256_broadcast_ss(w + g * nmax + p);
                    for (int j = 0; j < nv; j++) a[g][j] = _mm256_fmadd_ps(wg, vd[j], a[g][j]);
                }
            }
            for (int g = 0; g < gn; g++)
                for (int j = 0; j < nv; j++) _mm256_storeu_ps(op[g] + d + 8 * j, a[g][j]);
        }
    }
    for (int g = 0; g < gn; g++) {
        __m256 s = _mm256_set1_ps(inv[g]);
        for (int64_t d = 0; d < hd; d += 8)
            _mm256_storeu_ps(op[g] + d, _mm256_mul_ps(_mm256_loadu_ps(op[g] + d), s));
    }
}

/* Queries [q0, q0 + gn) of attn_heads (query i group + g is token i, head g). Query g sees n[g]
 * positions; the scores run to the largest, and a query's beyond its own are left out. */
static inline __attribute__((always_inline)) void
attn_pass(const float *q, int64_t group, int64_t q_stride, const uint16_t *k, const uint16_t *v,
          int64_t n_pos, int64_t stride, int64_t hd, float scale, float *scores, float *out,
          int64_t q0, const int gn)
{
    const float *qp[ATTN_QMAX];
    float *op[ATTN_QMAX], inv[ATTN_QMAX];
    int64_t n[ATTN_QMAX], nmax = 0;
    for (int g = 0; g < gn; g++) {
        int64_t i = (q0 + g) / group, h = (q0 + g) % group;
        qp[g] = q + i * q_stride + h * hd;
        op[g] = out + i * q_stride + h * hd;
        n[g] = n_pos + i;
        if (n[g] > nmax) nmax = n[g];
    }
    attn_scores(qp, k, nmax, stride, hd, scale, scores, gn);
    for (int g = 0; g < gn; g++) inv[g] = 1.0f / exp_sum(scores + g * nmax, n[g]);
    attn_values(scores, inv, v, n, nmax, stride, hd, op, gn);
}

/* Head dims that are a multiple of 32 go through F16C, up to ATTN_QMAX queries (heads, then
 * tokens) a pass over the cache; others take the scalar path. The rows of a head are stride apart
 * in the cache (all kv heads of a position together), so every page holds one or two positions
 * of a head and the hardware's stream prefetch, which stops at a page, keeps restarting: rows are
 * prefetched (ATTN_AHEAD). The softmax takes 8 exponentials at a time (exp_sum). */
static void attn_heads(const float *q, int64_t n_tok, int64_t group, int64_t q_stride,
                       const uint16_t *k, const uint16_t *v, int64_t n_pos, int64_t stride,
                       int64_t hd, float scale, float *scores, float *out)
{
    if (hd % 32) {
        bsi_cpu_ops_scalar.attn_heads(q, n_tok, group, q_stride, k, v, n_pos, stride, hd, scale,
                                      scores, out);
        return;
    }
    int64_t nq = n_tok * group;
    for (int64_t q0 = 0; q0 < nq; q0 += ATTN_QMAX) {
#define PASS(gn) attn_pass(q, group, q_stride, k, v, n_pos, stride, hd, scale, scores, out, q0, gn)
        switch (nq - q0 < ATTN_QMAX ? (int)(nq - q0) : ATTN_QMAX) {
        case 1: PASS(1); break;
        case 2: PASS(2); break;
        case 3: PASS(3); break;
        case 4: PASS(4); break;
        case 5: PASS(5); break;
        case 6: PASS(6); break;
        case 7: PASS(7); break;
        default: PASS(8); break;
        }
#undef PASS
    }
}

static void to_f16(const float *x, uint16_t *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    bsi_cpu_ops_scalar.to_f16(x + i, y + i, n - i);
}

static void q8_0_to_f16(const uint8_t *blk, uint16_t *y, int64_t n_blocks)
{
    for (int64_t b = 0; b < n_blocks; b++, blk += 34, y += 32) {
        uint16_t h;
        memcpy(&h, blk, 2);
        __m256 d = _mm256_set1_ps(_cvtsh_ss(h));
        for (int j = 0; j < 32; j += 8) {
            __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + j)));
            __m256 v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(q));
            _mm_storeu_si128((__m128i *)(y + j), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        }
    }
}

const bsi_cpu_ops bsi_cpu_ops_avx2 = {
    .isa = BSI_ISA_AVX2,
    .gemv_f32 = gemv_f32,
    .gemv_f16 = gemv_f16,
    .gemv_bf16 = gemv_bf16,
    .gemv_q8_0 = gemv_q8_0,
    .rmsnorm = rmsnorm,
    .softmax = softmax,
    .silu_mul = silu_mul,
    .add = add,
    .rope = rope,
    .attn_heads = attn_heads,
    .to_f16 = to_f16,
    .q8_0_to_f16 = q8_0_to_f16,
};
