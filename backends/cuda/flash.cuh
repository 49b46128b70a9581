/*
 * Causal attention of a prompt on tensor cores (mma.sync m16n8k16, fp16 inputs, fp32
 * accumulators), flash-attention style: a block takes one query head and FA_BQ query tokens
 * (16 per warp) and walks the cache in tiles of FA_BK positions with an online softmax, so each
 * tile of K and V is read once per block instead of once per query token.
 *
 * Per tile: K (as stored, positions x dims) and V transposed (dims x positions) are converted to
 * fp16 in shared memory (from the f16 or Q8_0 cache); S = Q K^T comes out in the accumulator
 * layout, which is also the layout of the A operand of P V, so the probabilities never leave
 * registers. Q is scaled and converted to fp16 once, into A fragments.
 */
#ifndef BONSAI_CUDA_FLASH_CUH
#define BONSAI_CUDA_FLASH_CUH

#include "gemm.cuh"

namespace bsi_cuda {

constexpr int FA_BQ = 64; /* query tokens per block (16 per warp) */
constexpr int FA_BK = 64; /* cache positions per tile */
constexpr int FA_THREADS = 128;
constexpr int FA_MIN_TOK = 17; /* fewer tokens: the per-token attention kernel */
constexpr int FA_MAX_SPLIT = 16; /* blocks sharing one (head, query tile)'s cache positions */

/* Two floats as an fp16 pair (lo in the low half). */
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi)
{
    return (uint32_t)__half_as_ushort(__float2half(lo)) |
           (uint32_t)__half_as_ushort(__float2half(hi)) << 16;
}

/* Dims d .. d + 7 (d a multiple of 8) of cache row p as 8 fp16 values. */
template <bool Q8>
__device__ __forceinline__ uint4 kv_row8(const void *__restrict__ cache, int p, int kv_dim, int d)
{
    if (!Q8) return *(const uint4 *)((const __half *)cache + (size_t)p * kv_dim + d);
    const uint8_t *blk = (const uint8_t *)cache + (size_t)p * (kv_dim / 32) * 34 + (d / 32) * 34;
    float s = half_bits_to_f32((uint16_t)(blk[0] | blk[1] << 8));
    const int8_t *v = (const int8_t *)blk + 2 + d % 32;
    uint4 r;
    r.x = pack_half2(s * v[0], s * v[1]);
    r.y = pack_half2(s * v[2], s * v[3]);
    r.z = pack_half2(s * v[4], s * v[5]);
    r.w = pack_half2(s * v[6], s * v[7]);
    return r;
}

/* out [n_tok][n_head][HD] = softmax(q K^T * scale) V for tokens at positions pos .. pos + n_tok - 1,
 * token t attending to cache positions 0 .. pos + t; q as out; also out in fp16 (sat_half, as
 * to_half makes it) in outh when given. Grid (n_head, ceil(n_tok / FA_BQ), n_split).
 *
 * With n_split > 1 (at most FA_MAX_SPLIT), the cache tiles a (head, query tile) attends to are
 * shared out among n_split blocks (a few tokens after a long cache would otherwise keep a few
 * blocks busy and most SMs idle). Each writes its rows' (m, l, unnormalized output) to part [n_head][n_qtiles][n_split]
 * [FA_BQ][HD + 2]; the last of them to finish (counted in counter [n_head][n_qtiles], which it
 * resets for the next launch) merges them in split order, so the result does not depend on
 * which block finishes last. */
template <int HD, bool Q8>
__global__ void __launch_bounds__(FA_THREADS)
    attn_prefill(const float *__restrict__ q, const void *__restrict__ kc,
                 const void *__restrict__ vc, float *__restrict__ out, __half *__restrict__ outh,
                 int pos, int n_tok, int n_head, int n_head_kv, float scale, float *part,
                 unsigned *counter)
{
    static_assert(HD % 16 == 0, "head size a multiple of 16");
    __shared__ __align__(16) __half ks[FA_BK][HD + 8]; /* row stride: conflict-free reads */
    __shared__ __align__(16) __half vt[HD][FA_BK + 8];
    const int h = blockIdx.x, t0 = blockIdx.y * FA_BQ;
    const int kv_dim = n_head_kv * HD, koff = (h / (n_head / n_head_kv)) * HD;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g = lane >> 2, tq = lane & 3;
    /* this lane's query rows (C layout: g and g + 8 of the warp's 16) and their positions */
    const int r0 = t0 + warp * 16 + g, r1 = r0 + 8;
    const int qp[2] = {pos + r0, pos + r1};
    const int last = pos + min(t0 + FA_BQ, n_tok) - 1; /* the block's last position */

    uint32_t qa[HD / 16][4];
    {
        const float *q0 = q + ((size_t)min(r0, n_tok - 1) * n_head + h) * HD;
        const float *q1 = q + ((size_t)min(r1, n_tok - 1) * n_head + h) * HD;
#pragma unroll
        for (int c = 0; c < HD / 16; c++) {
            int d = 16 * c + 2 * tq;
            qa[c][0] = pack_half2(q0[d] * scale, q0[d + 1] * scale);
            qa[c][1] = pack_half2(q1[d] * scale, q1[d + 1] * scale);
            qa[c][2] = pack_half2(q0[d + 8] * scale, q0[d + 9] * scale);
            qa[c][3] = pack_half2(q1[d + 8] * scale, q1[d + 9] * scale);
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[j][e] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    /* this block's share of the tiles 0 .. last / FA_BK (all of them when n_split is 1): shares
     * differ by one tile at most (some are empty when there are fewer tiles than splits) */
    const int n_split = gridDim.z, split = blockIdx.z, n_tiles = last / FA_BK + 1;
    const int kb_end = (split + 1) * n_tiles / n_split * FA_BK;

    for (int kb = split * n_tiles / n_split * FA_BK; kb < kb_end; kb += FA_BK) {
        __syncthreads(); /* the previous tile is consumed */
        /* K as stored: consecutive threads take consecutive 8-dim chunks of a position */
        for (int i = threadIdx.x; i < FA_BK * (HD / 8); i += FA_THREADS) {
            int pr = i / (HD / 8), d = (i % (HD / 8)) * 8;
            *(uint4 *)&ks[pr][d] = kv_row8<Q8>(kc, min(kb + pr, last), kv_dim, koff + d);
        }
        /* V transposed: consecutive threads take consecutive positions, so that their 2-byte
         * stores into a row of vt fall in different banks */
        for (int i = threadIdx.x; i < FA_BK * (HD / 8); i += FA_THREADS) {
            int pr = i % FA_BK, d = (i / FA_BK) * 8;
            uint4 v = kv_row8<Q8>(vc, min(kb + pr, last), kv_dim, koff + d);
            const __half *vh = (const __half *)&v;
#pragma unroll
            for (int j = 0; j < 8; j++) vt[d + j][pr] = vh[j];
        }
        __syncthreads();

        /* S = Q K^T: s[j] holds rows g, g + 8 x positions kb + 8 j + 2 tq (+ 1) */
        float s[FA_BK / 8][4];
#pragma unroll
        for (int j = 0; j < FA_BK / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
#pragma unroll
            for (int c = 0; c < HD / 16; c++) {
                const uint32_t *kp = (const uint32_t *)&ks[8 * j + g][16 * c + 2 * tq];
                uint32_t b[2] = {kp[0], kp[4]};
                mma_16816(s[j], qa[c], b);
            }
        }
        /* causal mask, then the online softmax per row (a row's 64 scores sit in 4 lanes) */
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int j = 0; j < FA_BK / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int p = kb + 8 * j + 2 * tq + (e & 1);
                if (p > qp[e >> 1]) s[j][e] = -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
            }
        float corr[2], ms[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            /* a row none of whose positions so far is visible (a later split's first tiles; with
             * one split never, position 0 being in the first tile): everything stays 0 */
            ms[r] = mx[r] == -INFINITY ? 0.0f : mx[r];
            corr[r] = __expf(m[r] - ms[r]);
            m[r] = mx[r];
            l[r] *= corr[r];
        }
#pragma unroll
        for (int j = 0; j < HD / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[j][e] *= corr[e >> 1];
#pragma unroll
        for (int j = 0; j < FA_BK / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = __expf(s[j][e] - ms[e >> 1]);
                l[e >> 1] += s[j][e];
            }
        /* O += P V, P's k16 chunk c being the score tiles 2c and 2c + 1 */
#pragma unroll
        for (int c = 0; c < FA_BK / 16; c++) {
            uint32_t pa[4] = {pack_half2(s[2 * c][0], s[2 * c][1]),
                              pack_half2(s[2 * c][2], s[2 * c][3]),
                              pack_half2(s[2 * c + 1][0], s[2 * c + 1][1]),
                              pack_half2(s[2 * c + 1][2], s[2 * c + 1][3])};
#pragma unroll
            for (int j = 0; j < HD / 8; j++) {
                const uint32_t *vp = (const uint32_t *)&vt[8 * j + g][16 * c + 2 * tq];
                uint32_t b[2] = {vp[0], vp[4]};
                mma_16816(o[j], pa, b);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    if (n_split == 1) {
#pragma unroll
        for (int j = 0; j < HD / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = e >> 1 ? r1 : r0;
                if (r >= n_tok) continue;
                size_t at = ((size_t)r * n_head + h) * HD + 8 * j + 2 * tq + (e & 1);
                float v = o[j][e] / l[e >> 1];
                out[at] = v;
                if (outh) outh[at] = sat_half(v);
            }
        return;
    }
    /* this split's rows: (m, l, output before dividing by l) */
    constexpr int ROW = HD + 2;
    const size_t tile = (size_t)h * gridDim.y + blockIdx.y;
    float *all = part + tile * n_split * (FA_BQ * ROW);
    float *mine = all + (size_t)split * (FA_BQ * ROW);
    const int lr[2] = {warp * 16 + g, warp * 16 + g + 8}; /* rows r0, r1 within the block */
#pragma unroll
    for (int j = 0; j < HD / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) mine[lr[e >> 1] * ROW + 2 + 8 * j + 2 * tq + (e & 1)] = o[j][e];
    if (tq == 0)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mine[lr[r] * ROW] = m[r];
            mine[lr[r] * ROW + 1] = l[r];
        }
    __shared__ bool is_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(counter + tile, 1u) == (unsigned)n_split - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    /* each row's weight per split, exp(m_split - max), and l summed with them: once per row, in
     * ks (its tiles are consumed), not once per value */
    float *wt = reinterpret_cast<float *>(&ks[0][0]); /* [FA_BQ][FA_MAX_SPLIT] */
    float *wl = wt + FA_BQ * FA_MAX_SPLIT;            /* [FA_BQ] */
    static_assert(sizeof ks >= FA_BQ * (FA_MAX_SPLIT + 1) * sizeof(float), "ks holds the weights");
    if (threadIdx.x < FA_BQ && t0 + (int)threadIdx.x < n_tok) {
        const int row = threadIdx.x;
        const float *at = all + row * ROW;
        float mm = -INFINITY; /* finite: the split with tile 0 saw position 0 */
        for (int sp = 0; sp < n_split; sp++) mm = fmaxf(mm, __ldcg(at + (size_t)sp * FA_BQ * ROW));
        float ll = 0.0f;
        for (int sp = 0; sp < n_split; sp++) {
            const float *p = at + (size_t)sp * FA_BQ * ROW;
            float msp = __ldcg(p), w = msp == -INFINITY ? 0.0f : __expf(msp - mm);
            wt[row * FA_MAX_SPLIT + sp] = w;
            ll += __ldcg(p + 1) * w;
        }
        wl[row] = ll;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < FA_BQ * HD; i += FA_THREADS) {
        int row = i / HD, d = i % HD, r = t0 + row;
        if (r >= n_tok) continue;
        const float *at = all + row * ROW + 2 + d;
        float acc = 0.0f;
        for (int sp = 0; sp < n_split; sp++)
            acc += __ldcg(at + (size_t)sp * FA_BQ * ROW) * wt[row * FA_MAX_SPLIT + sp];
        size_t o_at = ((size_t)r * n_head + h) * HD + d;
        float v = acc / wl[row];
        out[o_at] = v;
        if (outh) outh[o_at] = sat_half(v);
    }
    if (threadIdx.x == 0) counter[tile] = 0; /* for the next launch (its first read is after
                                                this kernel ends) */
}

} // namespace bsi_cuda

#endif
