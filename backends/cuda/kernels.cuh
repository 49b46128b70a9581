/*
 * CUDA kernels of the backend's operations (backends/cuda/cuda_backend.cu launches them). Shapes
 * follow lib/backend.h: activations [n_tok][n] f32 row-major; weights `rows` rows of `cols`.
 *
 * Q1_0 weights are repacked at upload into two arrays:
 *   bits   [rows][cols / 32] u32: word c holds weights 32c .. 32c+31, bit j = weight 32c + j
 *          (the file's bytes read as little-endian words: bit j of byte j/8, as FORMAT.md says);
 *   scales [rows][cols / 128] fp16.
 * so a warp reads one row's sign words and scales with aligned loads.
 */
#ifndef BONSAI_CUDA_KERNELS_CUH
#define BONSAI_CUDA_KERNELS_CUH

#ifdef BSI_CUDA_EMU /* run on the CPU by tests/cuda_emu */
#include "cuda_emu.h"
#else
#include <cuda_fp16.h>
#endif
#include <stdint.h>

namespace bsi_cuda {

constexpr int QK = 128;          /* weights per Q1_0 block */
constexpr int WARP = 32;
constexpr int GEMV_MAX_TOK = 8;  /* up to this many tokens: the matrix-vector kernel */
constexpr int GEMV_ROWS = 4;     /* rows per warp in the matrix-vector kernel */
constexpr int GEMV_WARPS = 8;    /* warps per block */

enum wtype : uint32_t { T_F32 = 0, T_F16 = 1, T_Q8_0 = 8, T_BF16 = 30, T_Q1_0 = 41 };

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* A kernel's dynamic shared memory, as bytes aligned to 16. */
#ifdef BSI_CUDA_EMU
#define DYN_SMEM(name) unsigned char *name = cuda_emu::dyn_smem()
#else
#define DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

/* Programmatic dependent launch (sm_90 and newer). The fused decode step launches its kernels
 * with the programmatic-serialization attribute, so the next kernel's blocks can be scheduled
 * while this one drains instead of after it. Every kernel launched that way calls this first, in
 * every block, before it touches memory: it waits until the previous kernel has completed and its
 * writes are visible (so ordering stays transitive along the stream), then lets the next kernel be
 * scheduled. Launched without the attribute, or below sm_90, it does nothing. */
__device__ __forceinline__ void dep_enter()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Asks L2 for the bytes [p, p + n), a 128-byte line per thread: lines i, i + stride, ... (i and
 * stride: the caller's share of its threads). The decode step's kernels call it before dep_enter
 * for the first weights they will read (and attn_decode for its cache rows): nothing the step
 * runs writes those, so they may be fetched while the kernel before still runs, and the loads
 * after the wait find them in L2 instead of waiting on DRAM. A hint: no result depends on it. The
 * emulator reads each span's first and last bytes (AddressSanitizer sees a span outside its
 * buffer) and records it (cuda_emu::g_prefetches). */
__device__ __forceinline__ void l2_prefetch(const void *p, size_t n, int i, int stride)
{
#if defined(__CUDA_ARCH__)
    const uintptr_t end = (uintptr_t)p + n;
    for (uintptr_t a = ((uintptr_t)p & ~(uintptr_t)127) + (uintptr_t)i * 128; a < end;
         a += (uintptr_t)stride * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
#elif defined(BSI_CUDA_EMU)
    (void)stride;
    if (i == 0 && n > 0) {
        volatile const unsigned char *c = (const unsigned char *)p;
        (void)c[0];
        (void)c[n - 1];
        cuda_emu::record_prefetch(p, n);
    }
#else
    (void)p, (void)n, (void)i, (void)stride;
#endif
}

__device__ __forceinline__ float bf16_to_f32(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ float half_bits_to_f32(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

/* Element i of row r of a weight in the file layout (F32, F16, BF16, Q8_0) or the Q1_0 repacked
 * layout. */
struct wview {
    uint32_t type;
    int64_t rows, cols;
    const uint8_t *data;    /* file layout (not Q1_0) */
    const uint32_t *bits;   /* Q1_0 */
    const __half *scales;   /* Q1_0 */
    size_t row_bytes;       /* file layout */
};

__device__ __forceinline__ float weight_at(const wview &w, int64_t r, int64_t i)
{
    switch (w.type) {
    case T_F32: return ((const float *)(w.data + r * w.row_bytes))[i];
    case T_F16: return half_bits_to_f32(((const uint16_t *)(w.data + r * w.row_bytes))[i]);
    case T_BF16: return bf16_to_f32(((const uint16_t *)(w.data + r * w.row_bytes))[i]);
    case T_Q8_0: {
        const uint8_t *blk = w.data + r * w.row_bytes + (i / 32) * 34;
        uint16_t d = (uint16_t)(blk[0] | blk[1] << 8);
        return half_bits_to_f32(d) * (float)(int8_t)blk[2 + i % 32];
    }
    default: { /* Q1_0 */
        int64_t words = w.cols / 32;
        uint32_t word = w.bits[r * words + i / 32];
        float d = __half2float(w.scales[r * (w.cols / QK) + i / QK]);
        return (word >> (i % 32)) & 1u ? d : -d;
    }
    }
}

/* ---- Q1_0 matrix x few vectors ----
 * Each warp takes GEMV_ROWS rows; lane j handles weight j of every 32-weight word, so the warp
 * reads the activations coalesced and each word once per row. Per block of 128 the partial sums
 * are scaled by the row's d. */
template <int NT>
__global__ void q1_gemv(const uint32_t *__restrict__ bits, const __half *__restrict__ scales,
                        const float *__restrict__ x, float *__restrict__ y, int rows, int cols)
{
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int r0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_ROWS;
    if (r0 >= rows) return;
    int words = cols / 32, nb = cols / QK;
    float acc[GEMV_ROWS][NT];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
    for (int b = 0; b < nb; b++) {
        float part[GEMV_ROWS][NT];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
            for (int t = 0; t < NT; t++) part[r][t] = 0.0f;
#pragma unroll
        for (int c = 0; c < QK / 32; c++) {
            int word = b * (QK / 32) + c;
            float xv[NT];
#pragma unroll
            for (int t = 0; t < NT; t++) xv[t] = x[(size_t)t * cols + word * 32 + lane];
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) {
                int row = r0 + r < rows ? r0 + r : rows - 1;
                uint32_t wbits = __ldg(bits + (size_t)row * words + word);
                bool plus = (wbits >> lane) & 1u;
#pragma unroll
                for (int t = 0; t < NT; t++) part[r][t] += plus ? xv[t] : -xv[t];
            }
        }
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) {
            int row = r0 + r < rows ? r0 + r : rows - 1;
            float d = __half2float(scales[(size_t)row * nb + b]);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[r][t] += d * part[r][t];
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float v = warp_sum(acc[r][t]);
            if (lane == 0 && r0 + r < rows) y[(size_t)t * rows + r0 + r] = v;
        }
}

/* ---- other weight types: a warp per row, every token ---- */
__global__ void dense_matmul(wview w, const float *__restrict__ x, float *__restrict__ y,
                             int n_tok)
{
    dep_enter();
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / WARP) + warp;
    if (row >= w.rows) return;
    for (int t = 0; t < n_tok; t++) {
        float s = 0.0f;
        for (int64_t i = lane; i < w.cols; i += WARP) s += weight_at(w, row, i) * x[t * w.cols + i];
        s = warp_sum(s);
        if (lane == 0) y[(int64_t)t * w.rows + row] = s;
    }
}

/* y[t] = row ids[t] of w. */
__global__ void get_rows(wview w, const int32_t *__restrict__ ids, float *__restrict__ y,
                         int n_tok)
{
    dep_enter();
    for (int64_t t = blockIdx.y; t < n_tok; t += gridDim.y) { /* gridDim.y <= 65535 */
        int64_t r = ids[t];
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < w.cols;
             i += (int64_t)gridDim.x * blockDim.x)
            y[t * w.cols + i] = weight_at(w, r, i);
    }
}

/* fp16 of v, saturated to +-65504: an activation beyond fp16's range costs precision, not inf
 * and then NaN in the products (a NaN stays NaN, as on the CPU). */
__device__ __forceinline__ __half sat_half(float v)
{
    return __float2half(v != v ? v : fminf(fmaxf(v, -65504.0f), 65504.0f));
}

/* One block per row: y = x / sqrt(mean(x^2) + eps) * w (y may alias x); also y in fp16
 * (sat_half, as to_half makes it) in yh when given. */
__global__ void rmsnorm(const float *x, const float *__restrict__ w, float *y, int n, float eps,
                        __half *yh)
{
    dep_enter();
    __shared__ float part[32];
    const float *xr = x + (size_t)blockIdx.x * n;
    float *yr = y + (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
    s = warp_sum(s);
    if (threadIdx.x % WARP == 0) part[threadIdx.x / WARP] = s;
    __syncthreads();
    if (threadIdx.x < WARP) {
        float v = threadIdx.x < blockDim.x / WARP ? part[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    float scale = rsqrtf(part[0] / (float)n + eps);
    __half *hr = yh ? yh + (size_t)blockIdx.x * n : NULL;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i] * scale * w[i];
        yr[i] = v;
        if (hr) hr[i] = sat_half(v);
    }
}

/* RoPE angles as FORMAT.md section 3 (and the CPU's bsi_rope_table): per pair i of n_rot,
 * theta_e = pos * base^(-2i/n_rot), blended with theta_e / factor by the YaRN ramp; cos and sin
 * scaled by m = 1 + 0.1 ln(factor). Computed in double, as the CPU does. */
struct rope_params {
    int n_rot, neox;
    double freq_base, factor, lo, hi, m;
    int yarn;
};

/* The angle of pair i per position: base^(-2i/n_rot), YaRN's blend folded in. */
__host__ __device__ inline double rope_freq(const rope_params &p, int i)
{
    double f = pow(p.freq_base, -2.0 * (double)i / (double)p.n_rot);
    if (!p.yarn) return f;
    double ramp = ((double)i - p.lo) / fmax(0.001, p.hi - p.lo);
    double r = 1.0 - fmin(fmax(ramp, 0.0), 1.0);
    return f / p.factor * (1.0 - r) + f * r;
}

__global__ void rope(float *x, const int32_t *__restrict__ pos, int n_heads, int head_dim,
                     rope_params p)
{
    int t = blockIdx.x, h = blockIdx.y;
    for (int i = threadIdx.x; i < p.n_rot / 2; i += blockDim.x) {
        double theta = (double)pos[t] * rope_freq(p, i);
        float c = (float)(cos(theta) * p.m), s = (float)(sin(theta) * p.m);
        float *v = x + ((size_t)t * n_heads + h) * head_dim;
        int a = p.neox ? i : 2 * i, b = p.neox ? i + p.n_rot / 2 : 2 * i + 1;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
    }
}

/* One block per row. */
__global__ void softmax(float *x, int n)
{
    __shared__ float part[32];
    __shared__ float shared_val;
    float *xr = x + (size_t)blockIdx.x * n;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = warp_max(m);
    if (threadIdx.x % WARP == 0) part[threadIdx.x / WARP] = m;
    __syncthreads();
    if (threadIdx.x < WARP) {
        float v = threadIdx.x < blockDim.x / WARP ? part[threadIdx.x] : -INFINITY;
        v = warp_max(v);
        if (threadIdx.x == 0) shared_val = v;
    }
    __syncthreads();
    m = shared_val;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float e = m == -INFINITY ? 0.0f : __expf(xr[i] - m);
        xr[i] = e;
        s += e;
    }
    s = warp_sum(s);
    __syncthreads();
    if (threadIdx.x % WARP == 0) part[threadIdx.x / WARP] = s;
    __syncthreads();
    if (threadIdx.x < WARP) {
        float v = threadIdx.x < blockDim.x / WARP ? part[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0) shared_val = v;
    }
    __syncthreads();
    float inv = shared_val > 0.0f ? 1.0f / shared_val : 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) xr[i] *= inv;
}

/* silu(g) * u, as every kernel that ends a SwiGLU computes it */
__device__ __forceinline__ float silu_times(float g, float u)
{
    return g / (1.0f + __expf(-g)) * u;
}

__global__ void silu_mul(const float *g, const float *u, float *y, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = silu_times(g[i], u[i]);
}

__global__ void add(const float *a, const float *b, float *y, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = a[i] + b[i];
}

/* KV cache rows, fp16: [pos][dim]. */
__global__ void kv_store_f16(__half *kc, __half *vc, const float *k, const float *v, int n_tok,
                             int dim, int pos)
{
    int64_t n = (int64_t)n_tok * dim;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        kc[(int64_t)pos * dim + i] = __float2half(k[i]);
        vc[(int64_t)pos * dim + i] = __float2half(v[i]);
    }
}

/* One warp, one Q8_0 block of 32 values (xv: this lane's), fp16 d = max|x| / 127 and
 * q = round(x * 127 / max|x|): stored at out (34 bytes: d, then the 32 q) when out is given;
 * returns this lane's value as the block holds it, d * q. */
__device__ __forceinline__ float q8_0_block(float xv, uint8_t *out)
{
    int lane = threadIdx.x % WARP;
    float amax = warp_max(fabsf(xv));
    float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    __half d = __float2half(amax / 127.0f);
    int q = __float2int_rn(xv * id);
    if (out) {
        if (lane == 0) {
            uint16_t bitsv = __half_as_ushort(d);
            out[0] = (uint8_t)(bitsv & 0xff);
            out[1] = (uint8_t)(bitsv >> 8);
        }
        out[2 + lane] = (uint8_t)(int8_t)q;
    }
    return __half2float(d) * (float)q;
}

/* KV cache rows, Q8_0 blocks of 32 (q8_0_block): a warp per block of 32 values of k or v. */
__global__ void kv_store_q8_0(uint8_t *kc, uint8_t *vc, const float *k, const float *v, int n_tok,
                              int dim, int pos)
{
    int lane = threadIdx.x % WARP;
    int64_t blocks = (int64_t)n_tok * (dim / 32);
    /* a warp per job, striding over the grid's warps (the grid is capped at 65,535 blocks);
     * the condition is the same for a warp's lanes, as q8_0_block's shuffles need */
    for (int64_t job = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / WARP; job < 2 * blocks;
         job += (int64_t)gridDim.x * blockDim.x / WARP) {
        bool is_v = job >= blocks;
        int64_t b = is_v ? job - blocks : job;
        int64_t t = b / (dim / 32), blk = b % (dim / 32);
        float xv = (is_v ? v : k)[t * dim + blk * 32 + lane];
        q8_0_block(xv, (is_v ? vc : kc) + (size_t)(pos + t) * (size_t)(dim / 32) * 34 + blk * 34);
    }
}

/* Element d of kv head h at position p of a cache row of kv_dim values. */
template <bool Q8>
__device__ __forceinline__ float kv_at(const void *cache, int64_t p, int kv_dim, int idx)
{
    if (!Q8) return __half2float(((const __half *)cache)[p * kv_dim + idx]);
    const uint8_t *blk = (const uint8_t *)cache + (size_t)p * (kv_dim / 32) * 34 + (idx / 32) * 34;
    uint16_t d = (uint16_t)(blk[0] | blk[1] << 8);
    return half_bits_to_f32(d) * (float)(int8_t)blk[2 + idx % 32];
}

/* Attention of one query head over the cache positions [p0, p1), in one block of ATT_WARPS
 * warps: each warp takes every ATT_WARPS-th position with an online softmax (running max, sum and
 * weighted V), then the warps' results are merged into sm.m, sm.l and sm.acc[d] (weighted V not
 * yet divided by l; m = -inf and l = 0 for an empty range). Lane l holds dimensions l, l + 32, ...
 * of the head; qh is the query head, `scale` the score scale. Position pcur, when in the range,
 * is read from kcur and vcur (the head's values) instead of the cache. */
constexpr int ATT_WARPS = 4, ATT_MAX_HD = 256;

struct attn_smem {
    float wm[ATT_WARPS], wl[ATT_WARPS];
    float wacc[ATT_WARPS][ATT_MAX_HD];
    float m, l;
    float acc[ATT_MAX_HD];
};

template <bool Q8>
__device__ void attn_block(const float *__restrict__ qh, float scale, const void *__restrict__ kc,
                           const void *__restrict__ vc, int kv_dim, int koff, int head_dim, int p0,
                           int p1, attn_smem &sm, int pcur = -1, const float *kcur = NULL,
                           const float *vcur = NULL)
{
    constexpr int PER = ATT_MAX_HD / WARP;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    float qv[PER], acc[PER];
#pragma unroll
    for (int i = 0; i < PER; i++) {
        int d = lane + WARP * i;
        qv[i] = d < head_dim ? qh[d] * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int p = p0 + warp; p < p1; p += ATT_WARPS) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int d = lane + WARP * i;
            if (d < head_dim)
                s += qv[i] * (p == pcur ? kcur[d] : kv_at<Q8>(kc, p, kv_dim, koff + d));
        }
        s = warp_sum(s);
        float m_new = fmaxf(m, s);
        float corr = __expf(m - m_new), e = __expf(s - m_new);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int d = lane + WARP * i;
            float vv = d >= head_dim ? 0.0f
                       : p == pcur   ? vcur[d]
                                     : kv_at<Q8>(vc, p, kv_dim, koff + d);
            acc[i] = acc[i] * corr + e * vv;
        }
        m = m_new;
    }
    if (lane == 0) {
        sm.wm[warp] = m;
        sm.wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER; i++) {
        int d = lane + WARP * i;
        if (d < head_dim) sm.wacc[warp][d] = acc[i];
    }
    __syncthreads();
    float mm = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) mm = fmaxf(mm, sm.wm[w]);
    float ll = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (sm.wm[w] > -INFINITY) ll += sm.wl[w] * __expf(sm.wm[w] - mm);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (sm.wm[w] > -INFINITY) v += sm.wacc[w][d] * __expf(sm.wm[w] - mm);
        sm.acc[d] = v;
    }
    if (threadIdx.x == 0) {
        sm.m = mm;
        sm.l = ll;
    }
    __syncthreads();
}

/* Causal attention: a block per (query head, token) over positions 0 .. pos + t. */
template <bool Q8>
__global__ void attention(const float *__restrict__ q, const void *__restrict__ kc,
                          const void *__restrict__ vc, float *__restrict__ out, int pos,
                          int n_head, int n_head_kv, int head_dim, float scale)
{
    __shared__ attn_smem sm;
    int h = blockIdx.x, t = blockIdx.y;
    int kvh = h / (n_head / n_head_kv);
    attn_block<Q8>(q + ((size_t)t * n_head + h) * head_dim, scale, kc, vc, n_head_kv * head_dim,
                   kvh * head_dim, head_dim, 0, pos + t + 1, sm);
    float *oh = out + ((size_t)t * n_head + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) oh[d] = sm.acc[d] / sm.l;
}

} // namespace bsi_cuda

#endif
