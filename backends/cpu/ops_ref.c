/*
 * Scalar reference of the CPU ops (ops.h): each function is its formula, dot products accumulated
 * in fp32 in index order. Also the RoPE angle table, the bf16 conversion and the per-ISA choice.
 */
#include "ops.h"
#include "q1.h"

#include <math.h>
#include <string.h>

float bsi_bf16_to_fp32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t load_u16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static void gemv_f32(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols)
{
    const float *m = w;
    for (int64_t r = r0; r < r1; r++) {
        const float *row = m + r * cols;
        float sum = 0;
        for (int64_t i = 0; i < cols; i++) sum += row[i] * x[i];
        y[r] = sum;
    }
}

static void gemv_f16(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols)
{
    const uint8_t *m = w;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = m + (size_t)r * (size_t)cols * 2;
        float sum = 0;
        for (int64_t i = 0; i < cols; i++) sum += bsi_fp16_to_fp32(load_u16(row + 2 * i)) * x[i];
        y[r] = sum;
    }
}

static void gemv_bf16(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols)
{
    const uint8_t *m = w;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = m + (size_t)r * (size_t)cols * 2;
        float sum = 0;
        for (int64_t i = 0; i < cols; i++) sum += bsi_bf16_to_fp32(load_u16(row + 2 * i)) * x[i];
        y[r] = sum;
    }
}

/* Q8_0: blocks of 32 = fp16 d, then 32 int8 q; w = d * q (exact in fp32). */
static void gemv_q8_0(const void *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t cols)
{
    const uint8_t *m = w;
    int64_t nb = cols / 32;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = m + (size_t)r * (size_t)nb * 34;
        float sum = 0;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 34 * b;
            float d = bsi_fp16_to_fp32(load_u16(blk));
            for (int j = 0; j < 32; j++) sum += d * (float)(int8_t)blk[2 + j] * x[32 * b + j];
        }
        y[r] = sum;
    }
}

/* The sums of squares and of exponentials are kept in double: the reference should not lose
 * digits over thousands of positive terms. */
static void rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps)
{
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++) y[i] = w ? x[i] * scale * w[i] : x[i] * scale;
}

static void softmax(float *x, int64_t n)
{
    if (n <= 0) return;
    float max = x[0];
    for (int64_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

static void silu_mul(const float *g, const float *u, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void add(const float *a, const float *b, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

static void rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int neox,
                 const float *cs)
{
    int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        for (int64_t i = 0; i < half; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1];
            float *p0 = neox ? &v[i] : &v[2 * i], *p1 = neox ? &v[i + half] : &v[2 * i + 1];
            float x0 = *p0, x1 = *p1;
            *p0 = x0 * c - x1 * s;
            *p1 = x0 * s + x1 * c;
        }
    }
}

void bsi_rope_table(float *cs, int64_t pos, int64_t n_rot, float freq_base, float yarn_factor,
                    int64_t yarn_orig_ctx, float beta_fast, float beta_slow)
{
    const double pi = 3.14159265358979323846;
    double base = freq_base, ln_base = log(base);
    int yarn = yarn_factor > 1.0f;
    double lo = 0, hi = 0, m = 1;
    if (yarn) {
        double corr_fast =
            (double)n_rot * log((double)yarn_orig_ctx / (beta_fast * 2 * pi)) / (2 * ln_base);
        double corr_slow =
            (double)n_rot * log((double)yarn_orig_ctx / (beta_slow * 2 * pi)) / (2 * ln_base);
        lo = fmax(0.0, floor(corr_fast));
        hi = fmin((double)(n_rot - 1), ceil(corr_slow));
        m = 1.0 + 0.1 * log((double)yarn_factor);
    }
    /* base^(-2i/n_rot) as step^i: in double the product drifts by ~1e-14 over 512 pairs, far
     * below fp32, and saves a pow per pair */
    double inv_freq = 1, step = pow(base, -2.0 / (double)n_rot);
    for (int64_t i = 0; i < n_rot / 2; i++, inv_freq *= step) {
        double theta_e = (double)pos * inv_freq, theta = theta_e;
        if (yarn) {
            double theta_i = theta_e / yarn_factor;
            double t = ((double)i - lo) / fmax(0.001, hi - lo);
            double r = 1.0 - fmin(fmax(t, 0.0), 1.0);
            theta = theta_i * (1.0 - r) + theta_e * r;
        }
        cs[2 * i] = (float)(cos(theta) * m);
        cs[2 * i + 1] = (float)(sin(theta) * m);
    }
}

static void attn_heads(const float *q, int64_t n_tok, int64_t group, int64_t q_stride,
                       const uint16_t *k, const uint16_t *v, int64_t n_pos, int64_t stride,
                       int64_t hd, float scale, float *scores, float *out)
{
    for (int64_t i = 0; i < n_tok; i++)
        for (int64_t g = 0; g < group; g++) {
            const float *qg = q + i * q_stride + g * hd;
            float *o = out + i * q_stride + g * hd, max = -INFINITY;
            int64_t n = n_pos + i;
            for (int64_t p = 0; p < n; p++) {
                float dot = 0;
                for (int64_t d = 0; d < hd; d++) dot += qg[d] * bsi_fp16_to_fp32(k[p * stride + d]);
                scores[p] = dot * scale;
                if (scores[p] > max) max = scores[p];
            }
            float sum = 0;
            for (int64_t p = 0; p < n; p++) sum += (scores[p] = expf(scores[p] - max));
            for (int64_t d = 0; d < hd; d++) o[d] = 0;
            for (int64_t p = 0; p < n; p++) {
                float w = scores[p] / sum;
                for (int64_t d = 0; d < hd; d++) o[d] += w * bsi_fp16_to_fp32(v[p * stride + d]);
            }
        }
}

static void to_f16(const float *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = bsi_fp32_to_fp16(x[i]);
}

static void q8_0_to_f16(const uint8_t *blk, uint16_t *y, int64_t n_blocks)
{
    for (int64_t b = 0; b < n_blocks; b++, blk += 34, y += 32) {
        uint16_t h;
        memcpy(&h, blk, 2);
        float d = bsi_fp16_to_fp32(h);
        for (int j = 0; j < 32; j++) y[j] = bsi_fp32_to_fp16(d * (float)(int8_t)blk[2 + j]);
    }
}

const bsi_cpu_ops bsi_cpu_ops_scalar = {
    .isa = BSI_ISA_SCALAR,
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

const bsi_cpu_ops *bsi_cpu_ops_for(bsi_isa isa)
{
    switch (isa) {
#if defined(BSI_HAVE_AVX2)
    case BSI_ISA_AVX2:
    case BSI_ISA_AVX512: return &bsi_cpu_ops_avx2; /* no AVX-512 variant of these ops */
#endif
    default: return &bsi_cpu_ops_scalar;
    }
}
