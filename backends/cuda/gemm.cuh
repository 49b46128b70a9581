/*
 * Prompt processing on tensor cores (sm_80 and newer, as the module requires): Q1_0 weights times
 * many tokens with mma.sync m16n8k16 (fp16 inputs, fp32 accumulators).
 *
 * The weights never pass through shared memory: a lane builds its A fragment in registers from
 * the sign bits, each fp16 pair being the row's scale d with its two sign bits set from the
 * weights' (one multiply, one mask-and-xor). The activations (fp16, converted once per input by
 * to_half) are copied to shared memory with cp.async, two k-tiles in flight, and read as B
 * fragments with one 64-bit load per 8 tokens.
 *
 * The k order inside an mma is free as long as A and B agree: lane (g, t) holds the k slots
 * 2t, 2t+1, 2t+8, 2t+9 of both fragments, and here those slots are the columns 4t .. 4t+3 of the
 * 16-column step, so a lane's four weights are one nibble of a sign word and its four
 * activations are adjacent in shared memory.
 *
 * A block is 4 warps (2 along rows x 2 along tokens) and covers 64 rows x (16 WN) tokens; a
 * launch covers up to GEMM_MAX_MATS matrices of the same width (q, k, v; gate, up), their row
 * tiles one after another along blockIdx.x.
 *
 * What the block does with its sums (OUT):
 *   GEMM_STORE  y_m = W_m x for each matrix m;
 *   GEMM_ADD    y_m += W_m x (the residual added in place: no separate product and add);
 *   GEMM_SILU   y = silu(W_gate x) * (W_up x), mats = {gate, up} of the same rows: a block
 *               covers 32 rows, its warps 0 and 2 of gate, 1 and 3 of up, and the gate warps
 *               hand their sums to the up warps through shared memory (so neither product is
 *               written out, nor read back by a separate kernel); y also in fp16 when mats.yh
 *               is given, as to_half would make it for the down projection.
 */
#ifndef BONSAI_CUDA_GEMM_CUH
#define BONSAI_CUDA_GEMM_CUH

#include "mma.cuh"

namespace bsi_cuda {

constexpr int GEMM_BM = 64;           /* rows per block */
constexpr int GEMM_BK = 64;           /* columns per k-tile (half a Q1_0 block) */
constexpr int GEMM_SX = GEMM_BK + 16; /* row stride in halves: no bank conflicts */
constexpr int GEMM_THREADS = 128;
constexpr int GEMM_MAX_MATS = 3;
enum { GEMM_STORE, GEMM_ADD, GEMM_SILU };

struct gemm_mats {
    const uint32_t *bits[GEMM_MAX_MATS];
    const __half *scales[GEMM_MAX_MATS];
    float *y[GEMM_MAX_MATS];
    __half *yh; /* GEMM_SILU: also y in fp16 (sat_half) when given, for the next GEMM */
    int rows[GEMM_MAX_MATS];
    int tile0[GEMM_MAX_MATS + 1]; /* first row tile of each matrix; tile0[n] = all tiles */
    int n;
};

/* Two fp16 lanes of value +-d: `nd` is -d in both halves; bit 0 of t2 flips the low half to +d,
 * bit 1 the high half (bits 0 -> 15 and 1 -> 31 of t2 * 0x40008000, as t2 < 4). */
__device__ __forceinline__ uint32_t signed_pair(uint32_t t2, uint32_t nd)
{
    return ((t2 * 0x40008000u) & 0x80008000u) ^ nd;
}

/* The same for bits 2 and 3 of a nibble (bits 2 -> 15 and 3 -> 31 of (n & 0xC) * 0x10002000). */
__device__ __forceinline__ uint32_t signed_pair_hi(uint32_t nib, uint32_t nd)
{
    return (((nib & 0xCu) * 0x10002000u) & 0x80008000u) ^ nd;
}

/* A row tile's matrix (blockIdx.x among mats.tile0): its bits, scales, output and rows; returns
 * its first tile. Constant indices only, so that the parameters stay out of local memory. */
__device__ __forceinline__ int gemm_pick(const gemm_mats &mats, const uint32_t **bits,
                                         const __half **scales, float **y, int *rows)
{
    int tile0 = 0;
    *bits = mats.bits[0];
    *scales = mats.scales[0];
    *y = mats.y[0];
    *rows = mats.rows[0];
#pragma unroll
    for (int i = 1; i < GEMM_MAX_MATS; i++)
        if (i < mats.n && (int)blockIdx.x >= mats.tile0[i]) {
            *bits = mats.bits[i];
            *scales = mats.scales[i];
            *y = mats.y[i];
            *rows = mats.rows[i];
            tile0 = mats.tile0[i];
        }
    return tile0;
}

/* A lane's N rows first, first + 8, ... (clamped to the last row, for loads only): where their
 * sign bits and scales start. */
template <int N>
__device__ __forceinline__ void gemm_rows(const uint32_t *bits, const __half *scales, int first,
                                          int rows, int cols, const uint32_t *(&rbits)[N],
                                          const __half *(&rscale)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++) {
        int r = min(first + 8 * i, rows - 1);
        rbits[i] = bits + (size_t)r * (cols / 32);
        rscale[i] = scales + (size_t)r * (cols / QK);
    }
}

/* Sum v of row r, token tok to its place (see the top of this file); GEMM_SILU: v is up's sum and
 * gate gate's. */
template <int OUT>
__device__ __forceinline__ void gemm_out(const gemm_mats &mats, float *y, int rows, int r, int tok,
                                         float v, float gate)
{
    size_t at = (size_t)tok * rows + r;
    if (OUT == GEMM_SILU) {
        float s = silu_times(gate, v);
        y[at] = s;
        if (mats.yh) mats.yh[at] = sat_half(s);
    } else if (OUT == GEMM_ADD)
        y[at] += v;
    else
        y[at] = v;
}

/* x [n][cols] f32 -> fp16, n * cols a multiple of 4. */
__global__ void to_half(const float *__restrict__ x, __half *__restrict__ y, int64_t n4)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4;
         i += (int64_t)gridDim.x * blockDim.x) {
        float4 v = ((const float4 *)x)[i];
        __half *o = y + 4 * i;
        o[0] = sat_half(v.x);
        o[1] = sat_half(v.y);
        o[2] = sat_half(v.z);
        o[3] = sat_half(v.w);
    }
}

/* The output of q1_gemm_mma<WN, OUT> (see the top of this file) for tokens t < n_tok; x fp16
 * [n_tok][cols], cols a multiple of 128. Grid: (mats.tile0[mats.n], ceil(n_tok / (16 WN))), or
 * for GEMM_SILU (ceil(rows / 32), the same). */
template <int WN, int OUT>
__global__ void __launch_bounds__(GEMM_THREADS)
    q1_gemm_mma(gemm_mats mats, const __half *__restrict__ x, int cols, int n_tok)
{
    constexpr int BN = 16 * WN; /* tokens per block: 2 warps of WN tiles of 8 */
    constexpr int CHUNKS = BN * GEMM_BK / 8; /* 16-byte copies per k-tile */
    __shared__ __align__(16) __half xs[2][BN][GEMM_SX];

    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int g = lane >> 2, t = lane & 3;
    /* the warp's matrix (constant indices only, so the parameters stay out of local memory) */
    const uint32_t *bits = mats.bits[0];
    const __half *scales = mats.scales[0];
    float *y = mats.y[0];
    int rows = mats.rows[0], wrow;
    if (OUT == GEMM_SILU) {
        if (warp & 1) {
            bits = mats.bits[1];
            scales = mats.scales[1];
        }
        wrow = (int)blockIdx.x * 32;
    } else {
        int tile0 = gemm_pick(mats, &bits, &scales, &y, &rows);
        wrow = ((int)blockIdx.x - tile0) * GEMM_BM + (warp & 1) * 32;
    }
    int tok0 = (int)blockIdx.y * BN, wtok = (warp >> 1) * 8 * WN; /* wtok: within the block */
    int n_kt = cols / GEMM_BK;

    /* this lane's four rows: g, g + 8, g + 16, g + 24 of the warp's 32 (clamped for loads) */
    const uint32_t *wrow_bits[4];
    const __half *wrow_scale[4];
    gemm_rows(bits, scales, wrow + g, rows, cols, wrow_bits, wrow_scale);

    auto load_tile = [&](int kt, int stage) {
        for (int c = threadIdx.x; c < CHUNKS; c += GEMM_THREADS) {
            int tk = c / (GEMM_BK / 8), part = c % (GEMM_BK / 8);
            int tok = min(tok0 + tk, n_tok - 1); /* rows past the end: any valid data, not stored */
            cp_async16(&xs[stage][tk][part * 8], x + (size_t)tok * cols + kt * GEMM_BK + part * 8);
        }
        cp_async_commit();
    };

    float acc[2][WN][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < WN; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    /* sign words (2 per row per k-tile) and scales of the next k-tile, loaded one tile ahead */
    uint32_t wb[4][2];
    uint16_t sd[4];
    auto load_bits = [&](int kt, uint32_t (&w)[4][2], uint16_t (&s)[4]) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i][0] = __ldg(wrow_bits[i] + 2 * kt);
            w[i][1] = __ldg(wrow_bits[i] + 2 * kt + 1);
            s[i] = __half_as_ushort(wrow_scale[i][kt / 2]);
        }
    };
    load_bits(0, wb, sd);
    load_tile(0, 0);

    for (int kt = 0; kt < n_kt; kt++) {
        int stage = kt & 1;
        uint32_t nwb[4][2] = {};
        uint16_t nsd[4] = {};
        if (kt + 1 < n_kt) {
            load_tile(kt + 1, stage ^ 1);
            load_bits(kt + 1, nwb, nsd);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        uint32_t nd[4];
#pragma unroll
        for (int i = 0; i < 4; i++) nd[i] = ((uint32_t)sd[i] | (uint32_t)sd[i] << 16) ^ 0x80008000u;
#pragma unroll
        for (int s = 0; s < GEMM_BK / 16; s++) {
            /* the lane's nibble of each row: columns 16 s + 4 t .. + 3 of the tile */
            uint32_t a[2][4];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                uint32_t n0 = wb[2 * i][s / 2] >> (16 * (s % 2) + 4 * t);     /* row g + 16 i */
                uint32_t n1 = wb[2 * i + 1][s / 2] >> (16 * (s % 2) + 4 * t); /* row g + 16 i + 8 */
                a[i][0] = signed_pair(n0 & 3u, nd[2 * i]);
                a[i][1] = signed_pair(n1 & 3u, nd[2 * i + 1]);
                a[i][2] = signed_pair_hi(n0, nd[2 * i]);
                a[i][3] = signed_pair_hi(n1, nd[2 * i + 1]);
            }
#pragma unroll
            for (int j = 0; j < WN; j++) {
                const uint32_t *bp =
                    (const uint32_t *)&xs[stage][wtok + 8 * j + g][16 * s + 4 * t];
                uint32_t b[2] = {bp[0], bp[1]};
#pragma unroll
                for (int i = 0; i < 2; i++) mma_16816(acc[i][j], a[i], b);
            }
        }
        __syncthreads(); /* the stage is refilled by the next iteration's copy */
        if (kt + 1 < n_kt) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                wb[i][0] = nwb[i][0];
                wb[i][1] = nwb[i][1];
                sd[i] = nsd[i];
            }
        }
    }

    /* GEMM_SILU: the gate warps' sums to shared memory (the k-tiles are done with: the loop
     * ended at a barrier), where the up warp of the same tokens finds them in the same layout */
    float *gate = (float *)&xs[0][0][0] + (warp >> 1) * (2 * WN * 4 * WARP) + lane;
    static_assert(2 * 2 * WN * 4 * WARP * sizeof(float) <= sizeof xs, "gate sums fit in xs");
    if (OUT == GEMM_SILU) {
        if (!(warp & 1))
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < WN; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) gate[((i * WN + j) * 4 + e) * WARP] = acc[i][j][e];
        __syncthreads();
        if (!(warp & 1)) return;
    }
    /* acc[i][j]: rows wrow + 16 i + g (+ 8 for e >= 2), tokens tok0 + wtok + 8 j + 2 t (+ 1) */
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < WN; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = wrow + 16 * i + g + (e >= 2 ? 8 : 0);
                int tok = tok0 + wtok + 8 * j + 2 * t + (e & 1);
                if (r < rows && tok < n_tok)
                    gemm_out<OUT>(mats, y, rows, r, tok, acc[i][j][e],
                                  OUT == GEMM_SILU ? gate[((i * WN + j) * 4 + e) * WARP] : 0.0f);
            }
}

/* ---- the same products with wgmma (sm_90a) ----
 *
 * q1_gemm_wgmma<BN, OUT> computes what q1_gemm_mma<BN / 16, OUT> does, with the same grid, as one
 * warpgroup of 4 warps: each warp builds its 16 rows' A fragments from the sign bits as
 * q1_gemm_mma does (in the k order the hardware reads B in), and one m64nBNk16 product a 16-column
 * step takes all 64 rows (GEMM_SILU: 32 of gate above the same 32 of up) times the block's BN
 * tokens, which stay in shared memory: three k-tiles in flight with cp.async, laid out as wgmma's
 * 8 x 8 core matrices (token group n8 and column group k8 at (8 n8 + k8) x 128 bytes). A build
 * for another GPU (or the PTX JIT) has an empty body here: the backend uses these kernels only
 * where its self-check at start found their sums equal to q1_gemm_mma's. */
constexpr int WG_STAGES = 3;

/* The dynamic shared memory of q1_gemm_wgmma<bn, *>. */
__host__ __device__ constexpr size_t wgmma_smem(int bn)
{
    return (size_t)WG_STAGES * bn * GEMM_BK * sizeof(__half);
}

template <int BN, int OUT>
__global__ void __launch_bounds__(GEMM_THREADS)
    q1_gemm_wgmma(gemm_mats mats, const __half *__restrict__ x, int cols, int n_tok)
{
#if BSI_WGMMA
    static_assert(BN == 64 || BN == 128, "wgmma_f16 has N 64 and 128");
    constexpr int TILE = BN * GEMM_BK; /* halves per stage */
    constexpr int CHUNKS = TILE / 8;   /* 16-byte copies per k-tile */
    DYN_SMEM(smem);
    __half *xs = (__half *)smem;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int g = lane >> 2, t = lane & 3;
    const uint32_t *bits;
    const __half *scales;
    float *y;
    int rows, wrow;
    if (OUT == GEMM_SILU) { /* warps 0 and 1: gate rows, 2 and 3: the same rows of up */
        bits = warp >= 2 ? mats.bits[1] : mats.bits[0];
        scales = warp >= 2 ? mats.scales[1] : mats.scales[0];
        y = mats.y[0];
        rows = mats.rows[0];
        wrow = (int)blockIdx.x * 32 + (warp & 1) * 16;
    } else {
        int tile0 = gemm_pick(mats, &bits, &scales, &y, &rows);
        wrow = ((int)blockIdx.x - tile0) * GEMM_BM + warp * 16;
    }
    int tok0 = (int)blockIdx.y * BN;
    int n_kt = cols / GEMM_BK;
    /* this lane's two rows: g and g + 8 of the warp's 16 (clamped for loads) */
    const uint32_t *rbits[2];
    const __half *rscale[2];
    gemm_rows(bits, scales, wrow + g, rows, cols, rbits, rscale);

    /* k-tile kt into stage kt % WG_STAGES: a warp copies 16 tokens x 32 bytes (whole sectors),
     * each quarter of it 8 tokens of one core matrix (128 contiguous bytes: no bank conflict) */
    auto load_tile = [&](int kt) {
        if (kt < n_kt) {
            __half *stage = xs + (kt % WG_STAGES) * TILE;
            for (int c = threadIdx.x; c < CHUNKS; c += GEMM_THREADS) {
                int l = c % WARP, grp = c / WARP;
                int tk = grp % (BN / 16) * 16 + l % 16, part = grp / (BN / 16) * 2 + l / 16;
                int tok = min(tok0 + tk, n_tok - 1); /* past the end: any valid data, not stored */
                cp_async16(stage + ((tk / 8) * (GEMM_BK / 8) + part) * 64 + (tk % 8) * 8,
                           x + (size_t)tok * cols + kt * GEMM_BK + part * 8);
            }
        }
        cp_async_commit(); /* an empty group past the end keeps cp_async_wait's count */
    };

    /* the A fragments of k-tile kt: a[s][i] rows g + 8 i, columns 16 s + 2 t and + 1 of the tile;
     * a[s][2 + i] the same + 8 */
    auto load_a = [&](int kt, uint32_t (&a)[GEMM_BK / 16][4]) {
        uint32_t wb[2][2], nd[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            wb[i][0] = __ldg(rbits[i] + 2 * kt);
            wb[i][1] = __ldg(rbits[i] + 2 * kt + 1);
            uint32_t d = __half_as_ushort(rscale[i][kt / 2]);
            nd[i] = (d | d << 16) ^ 0x80008000u;
        }
#pragma unroll
        for (int s = 0; s < GEMM_BK / 16; s++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                uint32_t h = wb[i][s / 2] >> (16 * (s % 2));
                a[s][i] = signed_pair(h >> (2 * t) & 3u, nd[i]);
                a[s][2 + i] = signed_pair(h >> (8 + 2 * t) & 3u, nd[i]);
            }
    };

    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++) acc[i] = 0.0f;
    wgmma_hold(acc);
    /* k-tile kt's products with fragments a, and the next tile's fragments into b while they run
     * (two sets, taking turns: a copy from one to the other would make ptxas serialize) */
    auto step = [&](int kt, uint32_t (&a)[GEMM_BK / 16][4], uint32_t (&b)[GEMM_BK / 16][4]) {
        cp_async_wait<WG_STAGES - 2>(); /* this thread's copies of k-tile kt have landed */
        wgmma_proxy_fence();
        /* everyone's have, and every warp has waited for its products of kt - 1: the stage they
         * read is refilled with k-tile kt + 2 */
        __syncthreads();
        load_tile(kt + 2);
        const __half *stage = xs + (kt % WG_STAGES) * TILE;
        wgmma_fence();
#pragma unroll
        for (int s = 0; s < GEMM_BK / 16; s++)
            wgmma_f16<BN>(acc, a[s], wgmma_desc(stage + 2 * s * 64, 128, GEMM_BK / 8 * 128));
        wgmma_commit();
        if (kt + 1 < n_kt) load_a(kt + 1, b);
        wgmma_wait0();
    };
    uint32_t a0[GEMM_BK / 16][4], a1[GEMM_BK / 16][4];
    load_tile(0);
    load_tile(1);
    load_a(0, a0);
    for (int kt = 0; kt < n_kt; kt += 2) {
        step(kt, a0, a1);
        if (kt + 1 < n_kt) step(kt + 1, a1, a0);
    }
    wgmma_hold(acc);

    /* GEMM_SILU: the gate warps' sums to shared memory (no copy is in flight: the last groups
     * were empty), where the up warp of the same rows finds them */
    float *gate = (float *)smem + (warp & 1) * (BN / 2) * WARP + lane;
    static_assert(2 * (BN / 2) * WARP * sizeof(float) <= wgmma_smem(BN), "gate sums fit");
    if (OUT == GEMM_SILU) {
        __syncthreads(); /* every warp's products are done with the last stage */
        if (warp < 2)
#pragma unroll
            for (int i = 0; i < BN / 2; i++) gate[i * WARP] = acc[i];
        __syncthreads();
        if (warp < 2) return;
    }
    /* acc[4 j + e]: row wrow + g (+ 8 for e >= 2), token tok0 + 8 j + 2 t (+ 1 for odd e) */
#pragma unroll
    for (int i = 0; i < BN / 2; i++) {
        int r = wrow + g + (i % 4 >= 2 ? 8 : 0), tok = tok0 + 8 * (i / 4) + 2 * t + (i & 1);
        if (r < rows && tok < n_tok)
            gemm_out<OUT>(mats, y, rows, r, tok, acc[i], OUT == GEMM_SILU ? gate[i * WARP] : 0.0f);
    }
#endif
}

} // namespace bsi_cuda

#endif
