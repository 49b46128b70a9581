/*
 * Kernels of the fused decode step (cuda_backend.cu, cuda_decode): one token for each of up to
 * DEC_MAX_SEQ sequences. Everything a step reads that changes from step to step (token ids,
 * positions, the sequences' KV cache buffers) is read from device memory, so one captured CUDA
 * graph serves every step. Per layer:
 *
 *   dgemv STORE    q, k, v = Wq, Wk, Wv . rmsnorm(x)                          (one launch)
 *   attn_decode    per (head, split): q/k RMS norm and RoPE of its own copies of q, k and v
 *                  (k and v also go into the caches), attention over its share of the
 *                  positions; the last block of a head merges and writes the output as int8
 *   dgemv ADD      x += Wo . att
 *   dgemv SILU     g = silu(Wgate . h) * (Wup . h), h = rmsnorm(x), quantized to int8 in
 *                  its epilogue
 *   dgemv ADD      x += Wdown . g
 *
 * and at the end logits = Wout . rmsnorm(x) (dgemv STORE): 5 kernels a layer.
 *
 * dgemv (up to DG_MAX_NT tokens): in STORE and SILU each block first RMS-norms and quantizes its
 * own copy of x (int8 in blocks of 32, in shared memory; a few KB, read from L2); ADD's input
 * comes quantized by the kernel before. A warp takes DG_ROWS rows at a time (grid-stride over the
 * rows of all the launch's matrices); lane j reads sign word j, j + 32, ... of each row
 * (coalesced) and expands each 4 bits to 4 byte masks for dp4a: with S1 the sum of the int8
 * values whose bit is set and S the block's sum, the word's dot product is d_w * d_x * (2 S1 - S).
 * More tokens: dmma, the same launches on tensor cores (below), after quant_rows (a block per
 * token: rmsnorm(x) -> int8), 7 kernels a layer.
 */
#ifndef BONSAI_CUDA_DECODE_CUH
#define BONSAI_CUDA_DECODE_CUH

#include "mma.cuh"

namespace bsi_cuda {

constexpr int DEC_MAX_SEQ = 64; /* sequences of one fused step */
constexpr int DG_MAX_NT = 8;    /* up to this many: dgemv (dp4a); more: dmma (tensor cores) */
constexpr int DM_WARPS = 4;     /* warps per dmma block */
constexpr int DG_WARPS = 8;    /* warps per dgemv block */
constexpr int DG_ROWS = 2;     /* rows per warp (STORE, ADD) */
constexpr int DG_SILU_ROWS = 4; /* rows per warp (SILU): a block covers 32 rows of g */
constexpr int QR_THREADS = DG_WARPS * WARP; /* quant_rows, as dgemv's prologue */
/* norm_quant's shared floats: partial sums of squares per (token, warp), then a scale per token */
constexpr int DG_RED = DG_MAX_NT * DG_WARPS + DG_MAX_NT;
constexpr int ATT_MAX_SPLIT = 32;

enum dg_mode { DG_STORE = 0, DG_ADD = 1, DG_SILU = 2 };

/* An activation row set quantized for dgemv: q [NT][cols] int8 in blocks of 32, d [NT][cols / 32]
 * (scale, sum of the block's 32 quantized values). */
struct qact {
    int8_t *q;
    float2 *d;
};

struct dg_mat {
    const uint32_t *bits;
    const __half *scales;
    float *y; /* [NT][rows] (not SILU) */
    int rows;
};

/* A dgemv launch: STORE: n_mat (1..3) matrices, each to its own y; ADD: one, y += W x; SILU: two
 * (gate, up) of the same rows, g = silu(gate . x) * (up . x) quantized into `out`. */
struct dg_args {
    dg_mat m[3];
    int n_mat;
    int groups[3]; /* row groups of each matrix: DG_ROWS rows (a warp), SILU 32 rows (a block) */
    qact x;        /* the input, [NT][cols] (dmma; dgemv ADD) */
    const float *xf; /* dgemv STORE and SILU: the input unquantized, [NT][cols], */
    const float *nw; /* RMS-normed with this weight (when not NULL) */
    float eps;
    qact out;      /* SILU: g, [NT][rows] */
    int cols;
    int nt;        /* tokens (dmma; dgemv has them as its template argument) */
    int prefetch;  /* row groups whose weights a warp (dgemv) or block (dmma) asks L2 for
                      before its dep_enter (dg_prefetch); 0: none (BONSAI_CUDA_PREFETCH=0) */
};

constexpr int DG_PREFETCH = 4; /* dg_args.prefetch when on */

/* The matrix of a STORE or ADD launch that row group gw belongs to; *g: the group within it. */
__device__ __forceinline__ int dg_locate(const dg_args &a, int mode, int gw, int *g)
{
    int mi = 0;
    if (mode == DG_STORE)
        while (mi < a.n_mat - 1 && gw >= a.groups[mi]) gw -= a.groups[mi++];
    *g = gw;
    return mi;
}

/* Asks L2 (l2_prefetch) for rows r0 .. r0 + n - 1 of M (those that exist), bits and scales, as
 * thread i of stride. */
__device__ __forceinline__ void dg_prefetch_rows(const dg_mat &M, int r0, int n, int words, int nb,
                                                 int i, int stride)
{
    n = min(n, M.rows - r0);
    if (n <= 0) return;
    l2_prefetch(M.bits + (size_t)r0 * words, (size_t)n * words * sizeof(uint32_t), i, stride);
    l2_prefetch(M.scales + (size_t)r0 * nb, (size_t)n * nb * sizeof(__half), i, stride);
}

/* Before dep_enter: the weights of the first a.prefetch row groups this warp (dgemv) or block
 * (dmma: TC) will take, as the kernels below walk them. */
template <int MODE, bool TC> __device__ __forceinline__ void dg_prefetch(const dg_args &a)
{
    const int words = a.cols / 32, nb = a.cols / QK;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (MODE == DG_SILU) { /* a block per 32 rows of gate and up */
        /* dgemv: warp w's DG_SILU_ROWS rows; dmma: the block's 32 rows, all threads sharing */
        const int off = TC ? 0 : warp * DG_SILU_ROWS, n = TC ? 32 : DG_SILU_ROWS;
        const int i = TC ? (int)threadIdx.x : lane, stride = TC ? (int)blockDim.x : WARP;
        for (int k = 0, g = blockIdx.x; k < a.prefetch && g < a.groups[0]; k++, g += gridDim.x)
            for (int m = 0; m < 2; m++)
                dg_prefetch_rows(a.m[m], g * 32 + off, n, words, nb, i, stride);
        return;
    }
    const int total = MODE == DG_STORE ? a.groups[0] + a.groups[1] + a.groups[2] : a.groups[0];
    const int first = TC ? blockIdx.x : blockIdx.x * DG_WARPS + warp;
    const int step = TC ? gridDim.x : gridDim.x * DG_WARPS, rows = TC ? 16 : DG_ROWS;
    for (int k = 0, gw = first; k < a.prefetch && gw < total; k++, gw += step) {
        int g, mi = dg_locate(a, MODE, gw, &g);
        dg_prefetch_rows(a.m[mi], g * rows, rows, words, nb, TC ? (int)threadIdx.x : lane,
                         TC ? (int)blockDim.x : WARP);
    }
}

/* Quantizes the 32 values a warp holds (one per lane) into q[lane] and *d (lane 0 writes). */
__device__ __forceinline__ void quant32(float v, int8_t *q, float2 *d)
{
    int lane = threadIdx.x % WARP;
    float amax = warp_max(fabsf(v));
    float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int qv = __float2int_rn(v * id);
    q[lane] = (int8_t)qv;
    float sum = warp_sum((float)qv);
    if (lane == 0) *d = make_float2(amax / 127.0f, sum);
}

/* Rows 0 .. n - 1 (n <= DG_MAX_NT) of x [n][cols] (cols a multiple of 128), RMS-normed with
 * weight nw when given, quantized into out by a block of DG_WARPS warps: each thread takes 4
 * values at a time, and the 8 threads of a block of 32 reduce among themselves. red: DG_RED
 * shared floats. quant_rows and dgemv's prologue both use it, so they quantize alike. HALVES
 * (dgemv's copy in shared memory): in each row, the first 16 values of every block of 32 come
 * first, in block order, then the last 16 of each, so that lanes reading consecutive blocks read
 * consecutive 16-byte pieces (no bank conflicts). */
template <bool HALVES>
__device__ __forceinline__ void norm_quant(const float *__restrict__ x,
                                           const float *__restrict__ nw, float eps, int cols,
                                           int n, qact out, float *red)
{
    constexpr int T = DG_WARPS * WARP;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    float *scale = red + DG_MAX_NT * DG_WARPS;
    if (nw) {
        float s[DG_MAX_NT];
#pragma unroll
        for (int t = 0; t < DG_MAX_NT; t++) s[t] = 0.0f;
        for (int i = threadIdx.x * 4; i < cols; i += T * 4)
#pragma unroll
            for (int t = 0; t < DG_MAX_NT; t++)
                if (t < n) {
                    float4 v = *(const float4 *)(x + (size_t)t * cols + i);
                    s[t] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                }
#pragma unroll
        for (int t = 0; t < DG_MAX_NT; t++)
            if (t < n) {
                float w = warp_sum(s[t]);
                if (lane == 0) red[t * DG_WARPS + warp] = w;
            }
        __syncthreads();
        if ((int)threadIdx.x < n) {
            float tot = 0.0f;
            for (int w = 0; w < DG_WARPS; w++) tot += red[threadIdx.x * DG_WARPS + w];
            scale[threadIdx.x] = rsqrtf(tot / (float)cols + eps);
        }
        __syncthreads();
    }
    for (int j = threadIdx.x * 4; j < n * cols; j += T * 4) {
        const int t = j / cols, i = j - t * cols;
        float4 v = *(const float4 *)(x + j);
        if (nw) {
            float sc = scale[t];
            float4 w = *(const float4 *)(nw + i);
            v.x = v.x * sc * w.x;
            v.y = v.y * sc * w.y;
            v.z = v.z * sc * w.z;
            v.w = v.w * sc * w.w;
        }
        float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
        for (int o = 4; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int q0 = __float2int_rn(v.x * id), q1 = __float2int_rn(v.y * id),
            q2 = __float2int_rn(v.z * id), q3 = __float2int_rn(v.w * id);
        size_t at = j;
        if (HALVES) at = (size_t)t * cols + (i & 16 ? cols / 2 : 0) + (i >> 5) * 16 + (i & 15);
        *(char4 *)(out.q + at) = make_char4((signed char)q0, (signed char)q1, (signed char)q2,
                                            (signed char)q3);
        int sum = q0 + q1 + q2 + q3;
        for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane % 8 == 0) out.d[j / 32] = make_float2(amax / 127.0f, (float)sum);
    }
}

/* One block per row of x [n][cols]: RMS-normed with weight nw when given, quantized into out
 * (the input of dmma; dgemv quantizes its own). */
__global__ void __launch_bounds__(QR_THREADS)
    quant_rows(const float *__restrict__ x, const float *__restrict__ nw, float eps, int cols,
               qact out)
{
    dep_enter();
    __shared__ float red[DG_RED];
    const size_t t = blockIdx.x;
    qact row{out.q + t * cols, out.d + t * (cols / 32)};
    norm_quant<false>(x + t * cols, nw, eps, cols, 1, row, red);
}

/* Dynamic shared memory of a dgemv STORE or SILU block of nt tokens over cols columns: norm_quant's
 * floats, then the block's copy of x quantized (scales, then values in halves; all 16-byte
 * aligned). */
__host__ __device__ inline size_t dg_smem(int nt, int cols)
{
    return DG_RED * sizeof(float) + (size_t)nt * (cols / 32) * sizeof(float2) + (size_t)nt * cols;
}

/* 4 bits (weights 4k .. 4k + 3 of a word) to 4 bytes of 0 or 1, low weight in the low byte. */
__device__ __forceinline__ int nibble_mask(uint32_t word, int k)
{
    return (int)((((word >> (4 * k)) & 0xfu) * 0x00204081u) & 0x01010101u);
}

/* acc[r][t] += row r of the word-set . token t, over the row's words lane, lane + 32, ...; x in
 * shared memory (SM) or global. */
template <int NT, int R, bool SM>
__device__ __forceinline__ void dg_dot(const uint32_t *const (&bp)[R], const __half *const (&sp)[R],
                                       const qact &x, int cols, float (&acc)[R][NT])
{
    const int lane = threadIdx.x % WARP, words = cols / 32;
    for (int w = lane; w < words; w += WARP) {
        int4 xa[NT][2];
        float2 xs[NT];
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if constexpr (SM) { /* the block's own copy in shared memory, in halves */
                const int8_t *r = x.q + (size_t)t * cols + (size_t)w * 16;
                xa[t][0] = *(const int4 *)r;
                xa[t][1] = *(const int4 *)(r + cols / 2);
                xs[t] = x.d[(size_t)t * words + w];
            } else {
                const int4 *p = (const int4 *)(x.q + (size_t)t * cols + (size_t)w * 32);
                xa[t][0] = __ldg(p);
                xa[t][1] = __ldg(p + 1);
                xs[t] = __ldg(x.d + (size_t)t * words + w);
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            uint32_t b = __ldg(bp[r] + w);
            float d = __half2float(sp[r][w / (QK / 32)]);
            int mk[8];
#pragma unroll
            for (int k = 0; k < 8; k++) mk[k] = nibble_mask(b, k);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                int s1 = __dp4a(mk[0], xa[t][0].x, 0);
                s1 = __dp4a(mk[1], xa[t][0].y, s1);
                s1 = __dp4a(mk[2], xa[t][0].z, s1);
                s1 = __dp4a(mk[3], xa[t][0].w, s1);
                s1 = __dp4a(mk[4], xa[t][1].x, s1);
                s1 = __dp4a(mk[5], xa[t][1].y, s1);
                s1 = __dp4a(mk[6], xa[t][1].z, s1);
                s1 = __dp4a(mk[7], xa[t][1].w, s1);
                acc[r][t] = fmaf(d * xs[t].x, (float)(2 * s1) - xs[t].y, acc[r][t]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = warp_sum(acc[r][t]);
}

template <int R>
__device__ __forceinline__ void dg_rows(const dg_mat &M, int r0, int words, int nb,
                                        const uint32_t *(&bp)[R], const __half *(&sp)[R])
{
#pragma unroll
    for (int r = 0; r < R; r++) {
        int row = r0 + r < M.rows ? r0 + r : M.rows - 1;
        bp[r] = M.bits + (size_t)row * words;
        sp[r] = M.scales + (size_t)row * nb;
    }
}

template <int NT, int MODE>
__global__ void __launch_bounds__(DG_WARPS *WARP) dgemv(dg_args a)
{
    dg_prefetch<MODE, false>(a);
    dep_enter();
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int cols = a.cols, words = cols / 32, nb = cols / QK;
    /* STORE and SILU: the block first normalizes and quantizes its own copy of x (a few KB) in
     * shared memory, instead of a separate quant_rows launch; ADD reads x already quantized */
    constexpr bool SM = MODE != DG_ADD;
    qact x = a.x;
    if constexpr (SM) {
        DYN_SMEM(smem);
        x.d = (float2 *)(smem + DG_RED * sizeof(float));
        x.q = (int8_t *)(x.d + (size_t)NT * (cols / 32));
        norm_quant<true>(a.xf, a.nw, a.eps, cols, NT, x, (float *)smem);
        __syncthreads();
    }
    if (MODE == DG_SILU) {
        /* a block per 32 rows of g: warp w takes rows 4w .. 4w + 3 of gate and of up */
        __shared__ float gs[NT][32];
        const dg_mat &G = a.m[0], &U = a.m[1];
        for (int g = blockIdx.x; g < a.groups[0]; g += gridDim.x) {
            const int r0 = g * 32 + warp * DG_SILU_ROWS;
            const uint32_t *bp[2 * DG_SILU_ROWS];
            const __half *sp[2 * DG_SILU_ROWS];
            const uint32_t *gb[DG_SILU_ROWS], *ub[DG_SILU_ROWS];
            const __half *gsc[DG_SILU_ROWS], *usc[DG_SILU_ROWS];
            dg_rows<DG_SILU_ROWS>(G, r0, words, nb, gb, gsc);
            dg_rows<DG_SILU_ROWS>(U, r0, words, nb, ub, usc);
#pragma unroll
            for (int r = 0; r < DG_SILU_ROWS; r++) {
                bp[r] = gb[r], sp[r] = gsc[r];
                bp[DG_SILU_ROWS + r] = ub[r], sp[DG_SILU_ROWS + r] = usc[r];
            }
            float acc[2 * DG_SILU_ROWS][NT];
#pragma unroll
            for (int r = 0; r < 2 * DG_SILU_ROWS; r++)
#pragma unroll
                for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
            dg_dot<NT, 2 * DG_SILU_ROWS, SM>(bp, sp, x, cols, acc);
            if (lane == 0)
#pragma unroll
                for (int r = 0; r < DG_SILU_ROWS; r++)
#pragma unroll
                    for (int t = 0; t < NT; t++)
                        gs[t][warp * DG_SILU_ROWS + r] =
                            silu_times(acc[r][t], acc[DG_SILU_ROWS + r][t]);
            __syncthreads();
            if (warp < NT) /* rows is a multiple of 32: the block's 32 rows all exist */
                quant32(gs[warp][lane], a.out.q + (size_t)warp * G.rows + g * 32,
                        a.out.d + (size_t)warp * (G.rows / 32) + g);
            __syncthreads();
        }
        return;
    }
    /* STORE, ADD: a warp per DG_ROWS rows, grid-stride over the rows of every matrix */
    const int total = MODE == DG_STORE ? a.groups[0] + a.groups[1] + a.groups[2] : a.groups[0];
    for (int gw = blockIdx.x * DG_WARPS + warp; gw < total; gw += gridDim.x * DG_WARPS) {
        int g;
        const dg_mat &M = a.m[dg_locate(a, MODE, gw, &g)];
        const int r0 = g * DG_ROWS;
        const uint32_t *bp[DG_ROWS];
        const __half *sp[DG_ROWS];
        dg_rows<DG_ROWS>(M, r0, words, nb, bp, sp);
        float acc[DG_ROWS][NT];
#pragma unroll
        for (int r = 0; r < DG_ROWS; r++)
#pragma unroll
            for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
        dg_dot<NT, DG_ROWS, SM>(bp, sp, x, cols, acc);
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < DG_ROWS; r++) {
                int row = r0 + r;
                if (row >= M.rows) break;
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    float *y = M.y + (size_t)t * M.rows + row;
                    if (MODE == DG_STORE)
                        *y = acc[r][t];
                    else
                        *y += acc[r][t];
                }
            }
        }
    }
}

/* RoPE of one model on the device: the angle of pair i at position p is p * freq[i] (YaRN's blend
 * folded in, in double as the CPU computes it), cos and sin scaled by m. */
struct rope_dev {
    const double *freq; /* [n_rot / 2] */
    int n_rot, neox;
    float m;
};

/* One warp: head src (hd values) into buf, RMS-normed with weight nw when given (qwen3's q and k
 * norms) and rotated for position p when rp is given. */
__device__ __forceinline__ void head_prep(const float *__restrict__ src,
                                          const float *__restrict__ nw, float eps, int hd, int p,
                                          const rope_dev *rp, float *buf)
{
    const int lane = threadIdx.x % WARP;
    float ss = 0.0f;
    for (int d = lane; d < hd; d += WARP) {
        buf[d] = src[d];
        ss += buf[d] * buf[d];
    }
    __syncwarp();
    if (nw) {
        float sc = rsqrtf(warp_sum(ss) / (float)hd + eps);
        for (int d = lane; d < hd; d += WARP) buf[d] = buf[d] * sc * nw[d];
        __syncwarp();
    }
    if (!rp) return;
    for (int i = lane; i < rp->n_rot / 2; i += WARP) {
        double s, c;
        sincos((double)p * rp->freq[i], &s, &c);
        float cf = (float)c * rp->m, sf = (float)s * rp->m;
        int ia = rp->neox ? i : 2 * i, ib = rp->neox ? i + rp->n_rot / 2 : 2 * i + 1;
        float x0 = buf[ia], x1 = buf[ib];
        buf[ia] = x0 * cf - x1 * sf;
        buf[ib] = x0 * sf + x1 * cf;
    }
    __syncwarp();
}

/* Where kv head kvh of position p starts in a cache of kv_dim values a position. */
template <bool Q8>
__device__ __forceinline__ void *kv_row(void *cache, int p, int kv_dim, int kvh, int hd)
{
    if (!Q8) return (__half *)cache + (size_t)p * kv_dim + (size_t)kvh * hd;
    return (uint8_t *)cache + ((size_t)p * (kv_dim / 32) + (size_t)kvh * hd / 32) * 34;
}

/* One warp: buf (hd values, a multiple of 32) rounded in place to what the cache holds (f16, or
 * Q8_0 blocks of 32 by q8_0_block, as kv_store_q8_0 stores them), and stored at row in the
 * cache's layout when row is given: what the block then uses equals what later steps read back. */
template <bool Q8>
__device__ __forceinline__ void kv_round(float *buf, int hd, void *row)
{
    const int lane = threadIdx.x % WARP;
    if constexpr (!Q8) {
        for (int d = lane; d < hd; d += WARP) {
            __half h = __float2half(buf[d]);
            if (row) ((__half *)row)[d] = h;
            buf[d] = __half2float(h);
        }
    } else {
        for (int b = 0; b < hd / 32; b++)
            buf[b * 32 + lane] =
                q8_0_block(buf[b * 32 + lane], row ? (uint8_t *)row + (size_t)b * 34 : NULL);
    }
    __syncwarp();
}

/* What lies between a prompt's q/k/v products and its attention (attn_prep in the backend's
 * table), in one launch instead of up to five (two norms, two RoPEs, a KV store): a warp per head
 * of a token, striding over the grid's warps. For token t: its n_head query heads, then its
 * n_head_kv key heads (RMS norm with qn / kn when given, RoPE at pos[t], written back in place;
 * a key head is then also stored in kc, rounded as the cache holds it), then, when kc is given,
 * its value heads (stored in vc). The per-head work is the decode step's (head_prep, kv_round),
 * so the cache rows a prompt stores equal those a decode step would store for the same values. */
constexpr int PREP_WARPS = 4;
template <bool Q8>
__global__ void __launch_bounds__(PREP_WARPS *WARP)
    attn_prep(float *q, float *k, const float *__restrict__ v, const float *__restrict__ qn,
              const float *__restrict__ kn, float eps, rope_dev rp,
              const int32_t *__restrict__ pos, void *kc, void *vc, int n_tok, int n_head,
              int n_head_kv, int hd)
{
    __shared__ float buf[PREP_WARPS][ATT_MAX_HD];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int kv_dim = n_head_kv * hd, per_tok = n_head + n_head_kv * (kc ? 2 : 1);
    float *b = buf[warp];
    /* the condition is the same for a warp's lanes, as the shuffles of the norm and Q8_0 need */
    for (int64_t job = (int64_t)blockIdx.x * PREP_WARPS + warp; job < (int64_t)n_tok * per_tok;
         job += (int64_t)gridDim.x * PREP_WARPS) {
        const int t = (int)(job / per_tok), j = (int)(job % per_tok), p = pos[t];
        if (j < n_head + n_head_kv) {
            const bool is_q = j < n_head;
            const int kvh = j - n_head;
            float *x = is_q ? q + ((size_t)t * n_head + j) * hd
                            : k + (size_t)t * kv_dim + (size_t)kvh * hd;
            head_prep(x, is_q ? qn : kn, eps, hd, p, &rp, b);
            for (int d = lane; d < hd; d += WARP) x[d] = b[d];
            if (!is_q && kc) kv_round<Q8>(b, hd, kv_row<Q8>(kc, p, kv_dim, kvh, hd));
        } else {
            const int kvh = j - n_head - n_head_kv;
            head_prep(v + (size_t)t * kv_dim + (size_t)kvh * hd, NULL, eps, hd, p, NULL, b);
            kv_round<Q8>(b, hd, kv_row<Q8>(vc, p, kv_dim, kvh, hd));
        }
        __syncwarp(); /* b is the next job's */
    }
}

/* Attention of a decode step: a block per (query head, sequence, split), from the step's raw q,
 * k and v. Warps 0 to 2 first make the block's own copies of query head h (RMS norm, RoPE), and
 * of k (the same) and v of h's kv head at the sequence's position p, rounded as the cache holds
 * them; in split 0 the first query head of each kv head also stores them in the cache (caches of
 * layer `layer`: kc_tab[layer * n_seq + t]). Split s of n_split then takes its share of positions
 * 0 .. p, position p from the copies (no block reads it from the cache during the step), and
 * writes (m, l, acc) to part; the last split of a head to finish (counted in counter, which it
 * resets for the next step) merges them into att, quantized. */
static_assert(ATT_WARPS >= 3, "attn_decode prepares q, k and v with a warp each");
template <bool Q8>
__global__ void __launch_bounds__(ATT_WARPS *WARP)
    attn_decode(const float *__restrict__ q, const float *__restrict__ k,
                const float *__restrict__ v, const float *__restrict__ qn,
                const float *__restrict__ kn, float eps, rope_dev rp,
                void *const *__restrict__ kc_tab, void *const *__restrict__ vc_tab, int layer,
                const int32_t *__restrict__ pos, qact att, float *part, unsigned *counter,
                int n_seq, int n_head, int n_head_kv, int hd, float scale, bool prefetch)
{
    __shared__ attn_smem sm;
    __shared__ float cur[3][ATT_MAX_HD]; /* query head h; k and v of kv head kvh at p */
    __shared__ bool last;
    const int h = blockIdx.x, t = blockIdx.y, split = blockIdx.z, n_split = gridDim.z;
    const int grp = n_head / n_head_kv, kvh = h / grp, kv_dim = n_head_kv * hd;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    /* the step's inputs (positions, caches) were uploaded before its first kernel: they may be
     * read before dep_enter, and so may the cache rows before p, which earlier steps wrote */
    const int p = pos[t];
    void *kc = kc_tab[(size_t)layer * n_seq + t], *vc = vc_tab[(size_t)layer * n_seq + t];
    int n_pos = p + 1, chunk = (n_pos + n_split - 1) / n_split;
    int p0 = split * chunk, p1 = min(n_pos, p0 + chunk);
    if (prefetch) {
        const size_t row = Q8 ? (size_t)hd / 32 * 34 : (size_t)hd * sizeof(__half);
        for (int j = p0 + (int)threadIdx.x; j < min(p1, p); j += blockDim.x) {
            l2_prefetch(kv_row<Q8>(kc, j, kv_dim, kvh, hd), row, 0, 1);
            l2_prefetch(kv_row<Q8>(vc, j, kv_dim, kvh, hd), row, 0, 1);
        }
    }
    dep_enter();
    const bool store = split == 0 && h % grp == 0;
    if (warp == 0) {
        head_prep(q + ((size_t)t * n_head + h) * hd, qn, eps, hd, p, &rp, cur[0]);
    } else if (warp == 1) {
        head_prep(k + (size_t)t * kv_dim + (size_t)kvh * hd, kn, eps, hd, p, &rp, cur[1]);
        kv_round<Q8>(cur[1], hd, store ? kv_row<Q8>(kc, p, kv_dim, kvh, hd) : NULL);
    } else if (warp == 2) {
        head_prep(v + (size_t)t * kv_dim + (size_t)kvh * hd, NULL, eps, hd, p, NULL, cur[2]);
        kv_round<Q8>(cur[2], hd, store ? kv_row<Q8>(vc, p, kv_dim, kvh, hd) : NULL);
    }
    __syncthreads();
    attn_block<Q8>(cur[0], scale, kc, vc, kv_dim, kvh * hd, hd, p0, p1, sm, p, cur[1], cur[2]);
    /* the head's output, quantized (hd is a multiple of 32): att [t][n_head * hd] */
    const int Q = n_head * hd;
    int8_t *oq = att.q + (size_t)t * Q + (size_t)h * hd;
    float2 *od = att.d + (size_t)t * (Q / 32) + (size_t)h * hd / 32;
    if (n_split == 1) {
        for (int b = warp; b < hd / 32; b += ATT_WARPS)
            quant32(sm.acc[b * 32 + lane] / sm.l, oq + b * 32, od + b);
        return;
    }
    size_t stride = (size_t)hd + 2;
    float *mine = part + (((size_t)t * n_head + h) * n_split + split) * stride;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) mine[2 + d] = sm.acc[d];
    if (threadIdx.x == 0) {
        mine[0] = sm.m;
        mine[1] = sm.l;
    }
    __threadfence();
    __syncthreads();
    unsigned *cnt = counter + (size_t)t * n_head + h;
    if (threadIdx.x == 0) last = atomicAdd(cnt, 1u) == (unsigned)n_split - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float *all = part + ((size_t)t * n_head + h) * n_split * stride;
    float mm = -INFINITY;
    for (int s = 0; s < n_split; s++) mm = fmaxf(mm, __ldcg(all + s * stride));
    float ll = 0.0f;
    for (int s = 0; s < n_split; s++) {
        float ms = __ldcg(all + s * stride);
        if (ms > -INFINITY) ll += __ldcg(all + s * stride + 1) * __expf(ms - mm);
    }
    for (int b = warp; b < hd / 32; b += ATT_WARPS) {
        int d = b * 32 + lane;
        float o = 0.0f;
        for (int s = 0; s < n_split; s++) {
            float ms = __ldcg(all + s * stride);
            if (ms > -INFINITY) o += __ldcg(all + s * stride + 2 + d) * __expf(ms - mm);
        }
        quant32(o / ll, oq + b * 32, od + b);
    }
    if (threadIdx.x == 0) *cnt = 0;
}

/* ---- batched decode on tensor cores: 9 .. DEC_MAX_SEQ tokens ----
 * dmma does what dgemv does (STORE, ADD, SILU, same arguments and results) with int8 mma.sync
 * m16n8k32: the tokens' int8 activations times the weights as +-1 bytes built in registers from
 * the sign bits. The k order inside an mma is free as long as A and B agree, so of each 32
 * columns lane (g, t) takes columns 8t .. 8t + 7: for its rows one byte of the sign word (two
 * nibbles, two registers), for its token one 64-bit load. Each 32-column block's int32 result is
 * scaled by d_w d_x into fp32 accumulators. A warp takes 16 rows of one matrix (STORE, ADD) or
 * the same 16 rows of gate and of up (SILU), times all the tokens, over part of the columns, so
 * each weight byte is read once per step, and a 2048-row matrix still spreads over 128 blocks. */

/* The 4 bits of a nibble as 4 bytes of +1 (bit set) or -1, low bit in the low byte. */
__device__ __forceinline__ uint32_t nibble_pm1(uint32_t nib)
{
    return ~(((nib * 0x00204081u) & 0x01010101u) * 0xFEu);
}

/* acc[i][j] += tile i of rows (rows rb[i][0], rb[i][1] = this lane's g and g + 8) . n-tile j of
 * the tokens, over the Q1_0 blocks blk0, blk0 + step, ... of the columns; acc in the mma's C
 * layout. */
template <int WN, int MI>
__device__ __forceinline__ void dm_dot(const uint32_t *const (&rb)[MI][2],
                                       const __half *const (&rs)[MI][2], const qact &x, int cols,
                                       int nt, int blk0, int step, float (&acc)[MI][WN][4])
{
    const int lane = threadIdx.x % WARP, g = lane >> 2, t = lane & 3;
    const int words = cols / 32, nb = cols / QK;
    for (int blk = blk0; blk < nb; blk += step) {
        uint4 wv[MI][2];
        float dw[MI][2];
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                wv[i][h] = __ldg((const uint4 *)(rb[i][h] + 4 * blk));
                dw[i][h] = __half2float(rs[i][h][blk]);
            }
#pragma unroll 1 /* unrolled, the loads of all four words' activations exhaust the registers */
        for (int k = 0; k < 4; k++) {
            const int w = 4 * blk + k;
            uint32_t a[MI][4];
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    uint32_t word = k == 0 ? wv[i][h].x : k == 1 ? wv[i][h].y
                                                       : k == 2 ? wv[i][h].z : wv[i][h].w;
                    uint32_t byte = word >> (8 * t);
                    a[i][h] = nibble_pm1(byte & 0xFu);            /* columns 8t .. 8t + 3 */
                    a[i][2 + h] = nibble_pm1((byte >> 4) & 0xFu); /* 8t + 4 .. 8t + 7 */
                }
#pragma unroll
            for (int j = 0; j < WN; j++) {
                int tb = min(8 * j + g, nt - 1), t0 = min(8 * j + 2 * t, nt - 1),
                    t1 = min(8 * j + 2 * t + 1, nt - 1);
                uint2 v = __ldg((const uint2 *)(x.q + (size_t)tb * cols + w * 32 + 8 * t));
                uint32_t b[2] = {v.x, v.y};
                float dx0 = __ldg(&x.d[(size_t)t0 * words + w]).x;
                float dx1 = __ldg(&x.d[(size_t)t1 * words + w]).x;
#pragma unroll
                for (int i = 0; i < MI; i++) {
                    int c[4] = {0, 0, 0, 0};
                    mma_16832_s8(c, a[i], b);
                    acc[i][j][0] = fmaf(dw[i][0] * dx0, (float)c[0], acc[i][j][0]);
                    acc[i][j][1] = fmaf(dw[i][0] * dx1, (float)c[1], acc[i][j][1]);
                    acc[i][j][2] = fmaf(dw[i][1] * dx0, (float)c[2], acc[i][j][2]);
                    acc[i][j][3] = fmaf(dw[i][1] * dx1, (float)c[3], acc[i][j][3]);
                }
            }
        }
    }
}

/* Rows r and r + 8 of matrix M for this lane's A fragments (clamped for loads). */
__device__ __forceinline__ void dm_rows(const dg_mat &M, int r, const uint32_t *(&rb)[2],
                                        const __half *(&rs)[2], int words, int nb)
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int row = min(r + 8 * h, M.rows - 1);
        rb[h] = M.bits + (size_t)row * words;
        rs[h] = M.scales + (size_t)row * nb;
    }
}

/* A block of DM_WARPS warps per 16 rows of one matrix (STORE, ADD; a.groups[i] =
 * ceil(rows_i / 16)) or per 32 rows of g (SILU; a.groups[0] = rows / 32), grid-stride. The warps
 * split the columns (Q1_0 blocks w, w + DM_WARPS, ... for STORE and ADD; SILU: two warps per 16
 * rows, alternate blocks), and their partial sums are added in a fixed order through shared
 * memory, so results do not depend on timing. */
template <int WN, int MODE>
__global__ void __launch_bounds__(DM_WARPS *WARP) dmma(dg_args a)
{
    dg_prefetch<MODE, true>(a);
    dep_enter();
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g = lane >> 2, t = lane & 3;
    const int cols = a.cols, words = cols / 32, nb = cols / QK, nt = a.nt;
    if (MODE == DG_SILU) {
        constexpr int KS = DM_WARPS / 2; /* warps per 16 rows */
        __shared__ float red[DM_WARPS][2][8 * WN][16]; /* [warp][gate, up][token][row] */
        __shared__ float gs[8 * WN][32];
        const dg_mat &G = a.m[0], &U = a.m[1];
        const int half = warp / KS, kq = warp % KS;
        for (int tile = blockIdx.x; tile < a.groups[0]; tile += gridDim.x) {
            const int r0 = tile * 32 + half * 16;
            const uint32_t *rb[2][2];
            const __half *rs[2][2];
            dm_rows(G, r0 + g, rb[0], rs[0], words, nb);
            dm_rows(U, r0 + g, rb[1], rs[1], words, nb);
            float acc[2][WN][4] = {};
            dm_dot<WN, 2>(rb, rs, a.x, cols, nt, kq, KS, acc);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < WN; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        red[warp][i][8 * j + 2 * t + (e & 1)][g + (e >= 2 ? 8 : 0)] = acc[i][j][e];
            __syncthreads();
            for (int it = threadIdx.x; it < nt * 32; it += DM_WARPS * WARP) {
                int tok = it / 32, r = it % 32, h = r / 16, rr = r % 16;
                float gv = 0.0f, uv = 0.0f;
                for (int k = 0; k < KS; k++) {
                    gv += red[h * KS + k][0][tok][rr];
                    uv += red[h * KS + k][1][tok][rr];
                }
                gs[tok][r] = silu_times(gv, uv);
            }
            __syncthreads();
            for (int tok = warp; tok < nt; tok += DM_WARPS) /* rows is a multiple of 32 */
                quant32(gs[tok][lane], a.out.q + (size_t)tok * G.rows + tile * 32,
                        a.out.d + (size_t)tok * (G.rows / 32) + tile);
            __syncthreads();
        }
        return;
    }
    __shared__ float red[DM_WARPS][8 * WN][16]; /* [warp][token][row] */
    const int total = MODE == DG_STORE ? a.groups[0] + a.groups[1] + a.groups[2] : a.groups[0];
    for (int gb = blockIdx.x; gb < total; gb += gridDim.x) {
        int grp;
        const dg_mat &M = a.m[dg_locate(a, MODE, gb, &grp)];
        const int r0 = grp * 16;
        const uint32_t *rb[1][2];
        const __half *rs[1][2];
        dm_rows(M, r0 + g, rb[0], rs[0], words, nb);
        float acc[1][WN][4] = {};
        dm_dot<WN, 1>(rb, rs, a.x, cols, nt, warp, DM_WARPS, acc);
#pragma unroll
        for (int j = 0; j < WN; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                red[warp][8 * j + 2 * t + (e & 1)][g + (e >= 2 ? 8 : 0)] = acc[0][j][e];
        __syncthreads();
        for (int it = threadIdx.x; it < nt * 16; it += DM_WARPS * WARP) {
            int tok = it / 16, r = it % 16, row = r0 + r;
            if (row >= M.rows) continue;
            float v = 0.0f;
            for (int k = 0; k < DM_WARPS; k++) v += red[k][tok][r];
            float *y = M.y + (size_t)tok * M.rows + row;
            if (MODE == DG_STORE)
                *y = v;
            else
                *y += v;
        }
        __syncthreads();
    }
}

/* n-tiles of 8 tokens of the dmma that takes nt (9 .. DEC_MAX_SEQ) tokens. */
__host__ inline int dm_wn(int nt)
{
    return nt <= 16 ? 2 : nt <= 32 ? 4 : 8;
}

/* Plans a dgemv (nt <= DG_MAX_NT) or dmma launch of nt tokens in `mode`: sets a.nt and
 * a.groups, returns the blocks that give every group its own warp (dgemv STORE, ADD) or block,
 * and the threads per block in *threads. */
__host__ inline int dg_plan(dg_args &a, int nt, int mode, int *threads)
{
    a.nt = nt;
    bool tc = nt > DG_MAX_NT;
    int warps = tc ? DM_WARPS : DG_WARPS;
    *threads = warps * WARP;
    if (mode == DG_SILU) { /* a block per 32 rows of g */
        a.groups[0] = a.m[0].rows / 32;
        return a.groups[0];
    }
    int total = 0, per = tc ? 16 : DG_ROWS; /* rows per block (dmma) or per warp (dgemv) */
    for (int i = 0; i < a.n_mat; i++) total += a.groups[i] = (a.m[i].rows + per - 1) / per;
    return tc ? total : (total + warps - 1) / warps;
}

} // namespace bsi_cuda

#endif
