/*
 * The CUDA backend's fused-decode and sampling kernels, run on the CPU through tests/cuda_emu
 * (their own source, compiled as C++ with the emulator's stand-ins for CUDA), against references
 * computed here and the host sampler. This runs everywhere; the same kernels on a real GPU are
 * checked by test_cuda gpu.
 */
#define BSI_CUDA_EMU 1
#include "../backends/cuda/decode.cuh"
#include "../backends/cuda/flash.cuh"
#include "../backends/cuda/sample.cuh"

extern "C" {
#include "backend.h"
#include "sampler.h"
}

#include <cstdarg>
#include <cstddef>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>

extern "C" {
#include <cmocka.h>
}

using namespace bsi_cuda;

/* Built with ThreadSanitizer (test_cuda_emu_tsan), where any race between two threads of a block
 * is reported (tests/cuda_emu/cuda_emu.cpp): the tests of the emulator's schedules leave out
 * their deliberate races, which `race` (below) runs alone. */
#ifdef CUDA_EMU_TSAN
static const bool tsan = true;
#else
static const bool tsan = false;
#endif

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t next_u64()
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((next_u64() >> 11) * 0x1.0p-53);
}

/* ---- activations quantized as the kernels do it (host copy of quant32 / quant_rows) ---- */

struct host_q {
    std::vector<int8_t> q;
    std::vector<float2> d;
};

static host_q quantize(const float *x, int n_tok, int cols, const float *nw, float eps)
{
    host_q r;
    r.q.resize((size_t)n_tok * cols);
    r.d.resize((size_t)n_tok * cols / 32);
    for (int t = 0; t < n_tok; t++) {
        const float *xr = x + (size_t)t * cols;
        float scale = 1.0f;
        if (nw) {
            double ss = 0;
            for (int i = 0; i < cols; i++) ss += (double)xr[i] * xr[i];
            scale = 1.0f / sqrtf((float)(ss / cols) + eps);
        }
        for (int b = 0; b < cols / 32; b++) {
            float v[32], amax = 0;
            for (int j = 0; j < 32; j++) {
                v[j] = xr[b * 32 + j];
                if (nw) v[j] = v[j] * scale * nw[b * 32 + j];
                amax = fmaxf(amax, fabsf(v[j]));
            }
            float id = amax > 0 ? 127.0f / amax : 0.0f;
            int sum = 0;
            for (int j = 0; j < 32; j++) {
                int q = (int)nearbyintf(v[j] * id);
                r.q[(size_t)t * cols + b * 32 + j] = (int8_t)q;
                sum += q;
            }
            r.d[(size_t)t * cols / 32 + b] = make_float2(amax / 127.0f, (float)sum);
        }
    }
    return r;
}

/* A random Q1_0 matrix in the repacked layout. */
struct q1_matrix {
    int rows, cols;
    std::vector<uint32_t> bits;
    std::vector<__half> scales;
};

static q1_matrix random_q1(int rows, int cols)
{
    q1_matrix m{rows, cols, {}, {}};
    m.bits.resize((size_t)rows * cols / 32);
    m.scales.resize((size_t)rows * cols / QK);
    for (auto &w : m.bits) w = (uint32_t)next_u64();
    for (auto &s : m.scales) s = __float2half(uniform(0.005f, 0.03f));
    return m;
}

/* Row r of m . token t of the quantized input, in double: sum over words of
 * d_w d_x (2 S1 - S). */
static double ref_dot(const q1_matrix &m, int r, const host_q &x, int t)
{
    int words = m.cols / 32;
    double acc = 0;
    for (int w = 0; w < words; w++) {
        uint32_t b = m.bits[(size_t)r * words + w];
        int s1 = 0;
        for (int j = 0; j < 32; j++)
            if (b >> j & 1u) s1 += x.q[(size_t)t * m.cols + w * 32 + j];
        float2 xd = x.d[(size_t)t * words + w];
        acc += (double)__half2float(m.scales[(size_t)r * (m.cols / QK) + w / 4]) * xd.x *
               (2.0 * s1 - xd.y);
    }
    return acc;
}

static dg_mat device_view(q1_matrix &m, float *y)
{
    dg_mat d;
    d.bits = m.bits.data();
    d.scales = m.scales.data();
    d.y = y;
    d.rows = m.rows;
    return d;
}

/* dgemv (up to DG_MAX_NT tokens) or dmma as cuda_backend.cu's dg_run launches them, with at most
 * max_blocks blocks (fewer than planned: the grid-stride loops go round). */
static void launch_dgemv(int nt, int mode, dg_args a, int max_blocks)
{
    int threads, blocks = std::min(dg_plan(a, nt, mode, &threads), max_blocks);
#define CASE(k, n, ...)                                                                            \
    case k:                                                                                        \
        if (mode == DG_STORE) EMU_LAUNCH((__VA_ARGS__<n, DG_STORE>), dim3(blocks), dim3(threads), a); \
        if (mode == DG_ADD) EMU_LAUNCH((__VA_ARGS__<n, DG_ADD>), dim3(blocks), dim3(threads), a);     \
        if (mode == DG_SILU) EMU_LAUNCH((__VA_ARGS__<n, DG_SILU>), dim3(blocks), dim3(threads), a);   \
        break;
    int key = nt <= DG_MAX_NT ? nt : 100 + dm_wn(nt); /* dgemv<nt> or dmma<dm_wn(nt)> */
    switch (key) {
        CASE(1, 1, dgemv) CASE(8, 8, dgemv)
        CASE(102, 2, dmma) CASE(104, 4, dmma) CASE(108, 8, dmma)
    default: fail_msg("no kernel for %d tokens", nt);
    }
#undef CASE
}

static bool close_to(double got, double want, double tol)
{
    return fabs(got - want) <= tol * (1.0 + fabs(want));
}

/* ---- the decode kernels' prefetches (l2_prefetch before dep_enter) ---- */

/* Buffers a kernel may ask L2 for, each with the bytes it should ask for: every recorded span
 * must lie in one buffer, and the spans together must cover exactly the expected bytes. */
struct prefetch_target {
    const unsigned char *base;
    std::vector<bool> want, got;
};

static void check_prefetches(const char *what, const std::vector<cuda_emu::span> &spans,
                             std::vector<prefetch_target> &bufs)
{
    for (const cuda_emu::span &s : spans) {
        const unsigned char *p = (const unsigned char *)s.p;
        prefetch_target *in = nullptr;
        for (auto &b : bufs)
            if (p >= b.base && p + s.n <= b.base + b.want.size()) in = &b;
        if (!in) fail_msg("%s: a prefetch of %zu bytes outside every buffer", what, s.n);
        for (size_t i = 0; i < s.n; i++) in->got[p - in->base + i] = true;
    }
    for (size_t k = 0; k < bufs.size(); k++)
        for (size_t i = 0; i < bufs[k].want.size(); i++)
            if (bufs[k].want[i] != bufs[k].got[i])
                fail_msg("%s: buffer %zu byte %zu %s", what, k, i,
                         bufs[k].want[i] ? "not prefetched" : "prefetched, not expected");
}

/* The bits and the scales of m, expecting rows [r0, r1) asked for. */
static void prefetch_rows(std::vector<prefetch_target> &bufs, const q1_matrix &m, int r0, int r1)
{
    const int words = m.cols / 32, nb = m.cols / QK;
    prefetch_target b{
        (const unsigned char *)m.bits.data(), std::vector<bool>(m.bits.size() * 4), {}};
    prefetch_target s{
        (const unsigned char *)m.scales.data(), std::vector<bool>(m.scales.size() * 2), {}};
    for (int r = r0; r < r1 && r < m.rows; r++) {
        std::fill_n(b.want.begin() + (size_t)r * words * 4, words * 4, true);
        std::fill_n(s.want.begin() + (size_t)r * nb * 2, nb * 2, true);
    }
    for (auto *t : {&b, &s}) {
        t->got.assign(t->want.size(), false);
        bufs.push_back(*t);
    }
}

/* dgemv (1 and 8 tokens) and dmma (13) in each mode ask L2, before their wait, for the weights of
 * the first a.prefetch row groups each warp (dgemv) or block (dmma) takes, exactly: everything
 * with a.prefetch above the groups, the first groups of each with 1, nothing with 0. */
static void test_prefetch(void **state)
{
    (void)state;
    const int E = 384, nts[] = {1, 8, 13};
    q1_matrix A = random_q1(96, E), B = random_q1(33, E), C = random_q1(64, E);
    q1_matrix G = random_q1(160, E), U = random_q1(160, E);
    /* each matrix's products in rows of their own (A, B, C: 193 rows; G, U: 160) */
    std::vector<float> x((size_t)16 * E), y((size_t)16 * 193);
    for (auto &v : x) v = uniform(-2, 2);
    std::vector<int8_t> q((size_t)16 * E), gq((size_t)16 * 160);
    std::vector<float2> qd((size_t)16 * E / 32), gd((size_t)16 * 160 / 32);
    qact qa{q.data(), qd.data()};
    EMU_LAUNCH(quant_rows, dim3(16), dim3(QR_THREADS), x.data(), (const float *)nullptr, 1e-6f, E,
               qa);
    std::vector<cuda_emu::span> spans;
    for (int nt : nts)
        for (int mode : {DG_STORE, DG_ADD, DG_SILU})
            for (int pf : {0, 1, 1000}) {
                const bool tc = nt > DG_MAX_NT;
                dg_args a;
                memset(&a, 0, sizeof a);
                std::vector<q1_matrix *> mats;
                if (mode == DG_STORE) mats = {&A, &B, &C};
                if (mode == DG_ADD) mats = {&A};
                if (mode == DG_SILU) mats = {&G, &U};
                for (size_t i = 0, off = 0; i < mats.size(); off += 16 * mats[i++]->rows)
                    a.m[i] = device_view(*mats[i], y.data() + off);
                a.n_mat = (int)mats.size();
                a.x = qa;
                a.xf = x.data();
                a.eps = 1e-6f;
                a.out = qact{gq.data(), gd.data()};
                a.cols = E;
                a.prefetch = pf;
                const int blocks = 2;
                spans.clear();
                cuda_emu::g_prefetches = &spans;
                launch_dgemv(nt, mode, a, blocks);
                cuda_emu::g_prefetches = nullptr;
                /* what each warp (dgemv) or block (dmma) of the `blocks` takes first: the
                 * groups below `reach`, counted over the matrices in order */
                std::vector<prefetch_target> bufs;
                if (mode == DG_SILU) { /* groups of 32 rows, the same of gate and up */
                    int reach = std::min(pf * blocks, G.rows / 32);
                    prefetch_rows(bufs, G, 0, reach * 32);
                    prefetch_rows(bufs, U, 0, reach * 32);
                } else {
                    int rows = tc ? 16 : DG_ROWS, per = tc ? blocks : blocks * DG_WARPS;
                    long reach = (long)pf * per, first = 0;
                    for (q1_matrix *m : mats) {
                        long groups = (m->rows + rows - 1) / rows;
                        long mine = std::max(0L, std::min(groups, reach - first));
                        prefetch_rows(bufs, *m, 0, (int)(mine * rows));
                        first += groups;
                    }
                }
                char what[64];
                snprintf(what, sizeof what, "%s mode %d, %d tokens, prefetch %d",
                         tc ? "dmma" : "dgemv", mode, nt, pf);
                check_prefetches(what, spans, bufs);
            }
}

/* quant_rows against a host quantization, then dgemv (1 and 8 tokens; STORE and SILU quantizing
 * their own input, which must equal quant_rows') and dmma (13, 24, 40) in their three modes
 * against double sums over quant_rows' output. */
static void test_dgemv(void **state)
{
    (void)state;
    const int E = 640, F = 352; /* E: 5 Q1_0 blocks, split unevenly over dmma's 4 warps */
    const int nts[] = {1, 8, 13, 24, 40}; /* dgemv up to 8 tokens, dmma (tensor cores) beyond */
    for (int nt : nts) {
        std::vector<float> x((size_t)nt * E), nw(E);
        for (auto &v : x) v = uniform(-2, 2);
        for (auto &v : nw) v = uniform(0.5f, 1.5f);
        /* quant_rows against the host quantization */
        std::vector<int8_t> q((size_t)nt * E);
        std::vector<float2> qd((size_t)nt * E / 32);
        qact qa{q.data(), qd.data()};
        EMU_LAUNCH(quant_rows, dim3(nt), dim3(QR_THREADS), x.data(), nw.data(), 1e-6f, E, qa);
        host_q hq = quantize(x.data(), nt, E, nw.data(), 1e-6f);
        for (size_t i = 0; i < (size_t)nt * E; i++)
            assert_true(abs(q[i] - hq.q[i]) <= 1); /* the norm's sum differs in rounding */
        for (size_t i = 0; i < (size_t)nt * E / 32; i++) {
            assert_true(close_to(qd[i].x, hq.d[i].x, 1e-5));
            assert_true(fabsf(qd[i].y - hq.d[i].y) <= 32);
        }
        /* from here on the kernels' own quantization is the input */
        host_q in;
        in.q.assign(q.begin(), q.begin() + (size_t)nt * E);
        in.d.assign(qd.begin(), qd.begin() + (size_t)nt * E / 32);

        /* STORE: three matrices of different heights (one not a multiple of DG_ROWS) */
        q1_matrix A = random_q1(96, E), B = random_q1(33, E), C = random_q1(64, E);
        std::vector<float> ya((size_t)nt * 96), yb((size_t)nt * 33), yc((size_t)nt * 64);
        dg_args a;
        memset(&a, 0, sizeof a);
        a.m[0] = device_view(A, ya.data());
        a.m[1] = device_view(B, yb.data());
        a.m[2] = device_view(C, yc.data());
        a.n_mat = 3;
        a.x = nt > DG_MAX_NT ? qa : qact{}; /* dmma's input; dgemv quantizes its own from x */
        a.xf = x.data();
        a.nw = nw.data();
        a.eps = 1e-6f;
        a.cols = E;
        launch_dgemv(nt, DG_STORE, a, 1); /* one block: the grid-stride loop goes round */
        if (nt <= DG_MAX_NT) { /* its copy of x filled the shared memory dg_smem gives, no more */
            const unsigned char *sm = cuda_emu::dyn_smem();
            size_t end = dg_smem(nt, E), last_set = 0;
            for (size_t i = 0; i < end; i++)
                if (sm[i] != 0xA5) last_set = i;
            assert_true(last_set + 16 >= end);
            for (size_t i = end; i < end + 4096; i++) assert_int_equal(sm[i], 0xA5);
        }
        for (int t = 0; t < nt; t++) {
            for (int r = 0; r < 96; r++)
                assert_true(close_to(ya[(size_t)t * 96 + r], ref_dot(A, r, in, t), 1e-4));
            for (int r = 0; r < 33; r++)
                assert_true(close_to(yb[(size_t)t * 33 + r], ref_dot(B, r, in, t), 1e-4));
            for (int r = 0; r < 64; r++)
                assert_true(close_to(yc[(size_t)t * 64 + r], ref_dot(C, r, in, t), 1e-4));
        }
        /* ADD: y += W x */
        std::vector<float> y0(ya);
        memset(&a, 0, sizeof a);
        a.m[0] = device_view(A, ya.data());
        a.n_mat = 1;
        a.x = qa;
        a.cols = E;
        launch_dgemv(nt, DG_ADD, a, 2);
        for (size_t i = 0; i < ya.size(); i++) assert_true(close_to(ya[i], 2.0 * y0[i], 1e-4));
        /* SILU: g = silu(gate x) * (up x), quantized */
        q1_matrix G = random_q1(F, E), U = random_q1(F, E);
        std::vector<int8_t> gq((size_t)nt * F);
        std::vector<float2> gd((size_t)nt * F / 32);
        memset(&a, 0, sizeof a);
        a.m[0] = device_view(G, nullptr);
        a.m[1] = device_view(U, nullptr);
        a.n_mat = 2;
        a.x = nt > DG_MAX_NT ? qa : qact{};
        a.xf = x.data();
        a.nw = nw.data();
        a.eps = 1e-6f;
        a.out = qact{gq.data(), gd.data()};
        a.cols = E;
        launch_dgemv(nt, DG_SILU, a, 5);
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < F; r++) {
                double g = ref_dot(G, r, in, t), u = ref_dot(U, r, in, t);
                double want = g / (1 + exp(-g)) * u;
                float2 d = gd[(size_t)t * F / 32 + r / 32];
                double got = d.x * gq[(size_t)t * F + r];
                assert_true(fabs(got - want) <= 0.51 * d.x + 1e-4 * (1 + fabs(want)));
            }
    }
}

/* ---- prompt GEMM on tensor cores (mma_16816 emulated with the PTX fragment layout) ---- */

/* W_m[r] . x[t] in double of the fp16-rounded inputs, and the sum of the products' magnitudes */
static double ref_q1_dot(const q1_matrix &m, int r, const std::vector<__half> &xh, int t, int cols,
                         double *mag)
{
    double ref = 0;
    *mag = 0;
    for (int k = 0; k < cols; k++) {
        double w = (double)__half2float(m.scales[(size_t)r * (cols / QK) + k / QK]);
        if (!(m.bits[(size_t)r * (cols / 32) + k / 32] >> (k % 32) & 1u)) w = -w;
        double xv = __half2float(xh[(size_t)t * cols + k]);
        ref += w * xv;
        *mag += fabs(w * xv);
    }
    return ref;
}

/* A kernel's fp16 copy h of its output y: to_half's conversion of y, to the bit. */
static void check_half_copy(const char *what, const std::vector<float> &y,
                            const std::vector<__half> &h)
{
    std::vector<__half> want(y.size());
    EMU_LAUNCH(to_half, dim3(2), dim3(64), y.data(), want.data(), (int64_t)y.size() / 4);
    for (size_t i = 0; i < y.size(); i++)
        if (__half_as_ushort(h[i]) != __half_as_ushort(want[i]))
            fail_msg("%s: fp16 copy of element %zu (%g) is %g", what, i, (double)y[i],
                     (double)__half2float(h[i]));
}

/* Several matrices of one width in one launch (OUT: stored, added to what y held, or gate and up
 * into silu(gate) * up), against double sums of the fp16-rounded inputs (fp16 products are exact
 * and the accumulation is fp32, so the error is the summation's). */
template <int WN, int OUT, bool WG = false>
static void check_gemm(int n_mats, const int *rows, int cols, int n_tok)
{
    std::vector<q1_matrix> m;
    for (int i = 0; i < n_mats; i++) m.push_back(random_q1(rows[i], cols));
    std::vector<float> x((size_t)n_tok * cols);
    for (auto &v : x) v = uniform(-2.0f, 2.0f);
    std::vector<__half> xh(x.size());
    EMU_LAUNCH(to_half, dim3(3), dim3(64), x.data(), xh.data(), (int64_t)x.size() / 4);

    gemm_mats gm{};
    int n_out = OUT == GEMM_SILU ? 1 : n_mats;
    std::vector<std::vector<float>> y(n_out), y0(n_out);
    for (int i = 0; i < n_out; i++) {
        y[i].resize((size_t)n_tok * rows[i]);
        for (auto &v : y[i]) v = OUT == GEMM_ADD ? uniform(-3.0f, 3.0f) : NAN;
        y0[i] = y[i];
    }
    gm.n = n_mats;
    for (int i = 0; i < n_mats; i++) {
        gm.bits[i] = m[i].bits.data();
        gm.scales[i] = m[i].scales.data();
        gm.y[i] = y[OUT == GEMM_SILU ? 0 : i].data();
        gm.rows[i] = rows[i];
        gm.tile0[i + 1] = gm.tile0[i] + (rows[i] + GEMM_BM - 1) / GEMM_BM;
    }
    std::vector<__half> yh((size_t)n_tok * rows[0], __float2half(NAN));
    if (OUT == GEMM_SILU) gm.yh = yh.data(); /* the down projection's input in fp16 */
    unsigned tiles = OUT == GEMM_SILU ? (unsigned)(rows[0] + 31) / 32 : (unsigned)gm.tile0[n_mats];
    dim3 grid(tiles, (unsigned)((n_tok + 16 * WN - 1) / (16 * WN)));
    if (WG) /* the same grid */
        EMU_LAUNCH((q1_gemm_wgmma<16 * WN, OUT>), grid, dim3(GEMM_THREADS), gm,
                   (const __half *)xh.data(), cols, n_tok);
    else
        EMU_LAUNCH((q1_gemm_mma<WN, OUT>), grid, dim3(GEMM_THREADS), gm,
                   (const __half *)xh.data(), cols, n_tok);
    if (OUT == GEMM_SILU) check_half_copy("gemm SILU", y[0], yh);

    for (int i = 0; i < n_out; i++)
        for (int t = 0; t < n_tok; t++)
            for (int r = 0; r < rows[i]; r++) {
                double mag, ref = ref_q1_dot(m[i], r, xh, t, cols, &mag), tol = 1e-5 * mag + 1e-6;
                size_t at = (size_t)t * rows[i] + r;
                if (OUT == GEMM_ADD) {
                    ref += y0[i][at];
                    tol += 1e-6 * fabs(ref);
                }
                if (OUT == GEMM_SILU) { /* silu' is within (-0.1, 1.1) */
                    double mu, u = ref_q1_dot(m[1], r, xh, t, cols, &mu);
                    double sg = ref / (1 + exp(-ref));
                    tol = 1.1 * fabs(u) * tol + fabs(sg) * (1e-5 * mu + 1e-6) + 1e-6 * fabs(sg * u);
                    ref = sg * u;
                }
                double got = y[i][at];
                if (!(fabs(got - ref) <= tol))
                    fail_msg("%s<%d, %d> matrix %d row %d token %d: %.7g, want %.7g",
                             WG ? "wgmma" : "mma", WN, OUT, i, r, t, got, ref);
            }
}

static void test_gemm(void **state)
{
    (void)state;
    const int one[] = {64}, qkv[] = {128, 64, 96}, odd[] = {70, 5}, gu[] = {96, 96},
              gu_odd[] = {40, 40};
    check_gemm<4, GEMM_STORE>(1, one, 128, 9);   /* one tile, tokens past the end */
    check_gemm<4, GEMM_STORE>(3, qkv, 256, 70);  /* three matrices, two token tiles, two blocks */
    check_gemm<8, GEMM_STORE>(2, odd, 384, 130); /* rows not a multiple of 64; three k-blocks */
    check_gemm<4, GEMM_ADD>(1, odd, 256, 70);    /* the residual: y += W x */
    check_gemm<8, GEMM_ADD>(2, odd, 128, 20);
    check_gemm<4, GEMM_SILU>(2, gu, 256, 70);    /* silu(gate) * up, three 32-row tiles */
    check_gemm<8, GEMM_SILU>(2, gu_odd, 128, 130); /* rows not a multiple of 32 */
}

/* q1_gemm_wgmma: the cases (and the checks) of q1_gemm_mma, one with 8 k-tiles, so that the
 * three stages go round more than once. */
static void test_gemm_wgmma(void **state)
{
    (void)state;
    const int one[] = {64}, qkv[] = {128, 64, 96}, odd[] = {70, 5}, gu[] = {96, 96},
              gu_odd[] = {40, 40};
    check_gemm<4, GEMM_STORE, true>(1, one, 128, 9);
    check_gemm<4, GEMM_STORE, true>(3, qkv, 256, 70);
    check_gemm<8, GEMM_STORE, true>(2, odd, 384, 130);
    check_gemm<4, GEMM_ADD, true>(1, odd, 256, 70);
    check_gemm<8, GEMM_ADD, true>(2, odd, 128, 20);
    check_gemm<4, GEMM_SILU, true>(2, gu, 256, 70);
    check_gemm<8, GEMM_SILU, true>(2, gu_odd, 512, 130);
}

/* ---- attention ---- */

/* A K and a V cache of n_ctx rows of kv_dim random values, f16 or Q8_0, with the values they
 * hold as floats. */
struct kv_cache {
    std::vector<unsigned char> kbuf, vbuf;
    std::vector<float> kval, vval;
};

static kv_cache random_cache(bool q8, int n_ctx, int kv_dim)
{
    kv_cache c;
    size_t row = q8 ? (size_t)kv_dim / 32 * 34 : (size_t)kv_dim * 2;
    for (int which = 0; which < 2; which++) {
        auto &buf = which ? c.vbuf : c.kbuf;
        auto &val = which ? c.vval : c.kval;
        buf.assign(row * n_ctx, 0);
        val.assign((size_t)n_ctx * kv_dim, 0);
        for (int p = 0; p < n_ctx; p++)
            for (int b = 0; b < kv_dim / 32; b++) {
                float dq = 0.02f;
                for (int j = 0; j < 32; j++) {
                    int i = b * 32 + j;
                    if (q8) {
                        int8_t qv = (int8_t)(next_u64() % 255 - 127);
                        unsigned char *blk = buf.data() + p * row + b * 34;
                        uint16_t hb = __half_as_ushort(__float2half(dq));
                        blk[0] = (unsigned char)(hb & 0xff);
                        blk[1] = (unsigned char)(hb >> 8);
                        blk[2 + j] = (unsigned char)qv;
                        val[(size_t)p * kv_dim + i] = __half2float(__float2half(dq)) * qv;
                    } else {
                        __half h = __float2half(uniform(-2, 2));
                        memcpy(buf.data() + p * row + i * 2, &h, 2);
                        val[(size_t)p * kv_dim + i] = __half2float(h);
                    }
                }
            }
    }
    return c;
}

/* Attention of query qh (hd values) over cache positions 0 .. last of kv head kvh, in double. */
static std::vector<double> ref_attention(const float *qh, const kv_cache &c, int kv_dim, int kvh,
                                         int hd, int last, float scale)
{
    std::vector<double> w(last + 1), out(hd, 0.0);
    double mx = -INFINITY, sum = 0;
    for (int p = 0; p <= last; p++) {
        double d = 0;
        for (int i = 0; i < hd; i++)
            d += (double)qh[i] * scale * c.kval[(size_t)p * kv_dim + kvh * hd + i];
        w[p] = d;
        mx = fmax(mx, d);
    }
    for (int p = 0; p <= last; p++) sum += w[p] = exp(w[p] - mx);
    for (int i = 0; i < hd; i++)
        for (int p = 0; p <= last; p++)
            out[i] += w[p] / sum * c.vval[(size_t)p * kv_dim + kvh * hd + i];
    return out;
}

/* A prompt's attention on tensor cores (attn_prefill) against attention in double: n_tok tokens
 * at positions pos .. pos + n_tok - 1 over a cache already holding them, the cache tiles of each
 * (head, query tile) shared out among n_split blocks. With splits, also against the same launch
 * with one (the same up to rounding: each split's probabilities go to fp16 against its own running
 * maximum), and a second launch must find the counters reset. */
template <int HD>
static void check_prefill(bool q8, int pos, int n_tok, int n_split = 1)
{
    const int nh = 4, nkv = 2, kv_dim = nkv * HD, n_ctx = pos + n_tok + 3;
    kv_cache kv = random_cache(q8, n_ctx, kv_dim);
    std::vector<float> q((size_t)n_tok * nh * HD), out(q.size(), NAN), one(q.size(), NAN);
    std::vector<__half> outh(q.size(), __float2half(NAN));
    for (auto &v : q) v = uniform(-1, 1);
    float scale = 1.0f / sqrtf((float)HD);
    const int n_qt = (n_tok + FA_BQ - 1) / FA_BQ;
    std::vector<float> part((size_t)nh * n_qt * n_split * FA_BQ * (HD + 2), NAN);
    std::vector<unsigned> counter((size_t)nh * n_qt, 0);
    auto launch = [&](int splits, float *o, __half *oh) {
        dim3 grid(nh, n_qt, splits);
        float *pp = splits > 1 ? part.data() : nullptr;
        unsigned *cp = splits > 1 ? counter.data() : nullptr;
        if (q8)
            EMU_LAUNCH((attn_prefill<HD, true>), grid, dim3(FA_THREADS), q.data(), kv.kbuf.data(),
                       kv.vbuf.data(), o, oh, pos, n_tok, nh, nkv, scale, pp, cp);
        else
            EMU_LAUNCH((attn_prefill<HD, false>), grid, dim3(FA_THREADS), q.data(), kv.kbuf.data(),
                       kv.vbuf.data(), o, oh, pos, n_tok, nh, nkv, scale, pp, cp);
    };
    launch(n_split, out.data(), outh.data());
    /* the fp16 copy for the output projection: what to_half makes of out */
    check_half_copy("attn_prefill", out, outh);
    if (n_split > 1) {
        for (unsigned c : counter) assert_int_equal(c, 0); /* reset by each tile's last block */
        launch(1, one.data(), nullptr);
        for (size_t i = 0; i < out.size(); i++)
            if (!(fabsf(out[i] - one[i]) <= 1e-3f * fmaxf(1.0f, fabsf(one[i]))))
                fail_msg("prefill in %d splits, element %zu: %g, in one %g", n_split, i,
                         (double)out[i], (double)one[i]);
        std::vector<float> again(q.size(), NAN);
        launch(n_split, again.data(), nullptr);
        if (memcmp(again.data(), out.data(), out.size() * sizeof(float)))
            fail_msg("prefill in %d splits: a second launch differs", n_split);
    }
    double worst = 0;
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < nh; h++) {
            const float *qh = q.data() + ((size_t)t * nh + h) * HD;
            std::vector<double> ref = ref_attention(qh, kv, kv_dim, h / (nh / nkv), HD, pos + t, scale);
            double mag = 0;
            for (int i = 0; i < HD; i++) mag = fmax(mag, fabs(ref[i]));
            for (int i = 0; i < HD; i++) {
                double got = out[((size_t)t * nh + h) * HD + i];
                /* q and the probabilities are rounded to fp16 for the tensor cores */
                double err = fabs(got - ref[i]) / (mag + 1e-3);
                if (!(err <= 4e-3))
                    fail_msg("prefill hd %d q8 %d pos %d token %d head %d dim %d: %g, want %g",
                             HD, (int)q8, pos, t, h, i, got, ref[i]);
                worst = fmax(worst, err);
            }
        }
    print_message("  attn_prefill hd %d %s, positions %d..%d, %d split%s: worst error %.2g of the "
                  "row's largest\n",
                  HD, q8 ? "q8_0" : "f16", pos, pos + n_tok - 1, n_split, n_split > 1 ? "s" : "",
                  worst);
}

static void test_prefill(void **state)
{
    (void)state;
    check_prefill<64>(false, 0, 70);   /* two query tiles, two cache tiles, tokens past the end */
    check_prefill<64>(true, 5, 9);     /* a prompt after earlier tokens, Q8_0 cache */
    check_prefill<128>(false, 100, 20); /* the 1.7B head size, cache tiles before the prompt */
    /* the cache tiles shared out: a few tokens after a long cache (splits of 2 and 3 tiles), a
     * prompt starting inside a tile (5 splits of one tile: rows 250..255 see nothing of the last
     * split's tile 4), and a prompt from 0 whose first query tile leaves two of its three splits
     * with no tiles at all */
    check_prefill<128>(false, 300, 20, 2);
    check_prefill<64>(true, 250, 40, 5);
    check_prefill<128>(false, 250, 40, 5);
    check_prefill<64>(false, 0, 130, 3);
}

/* Value i of a cache row (f16, or Q8_0 blocks of 32). */
static float cache_value(const unsigned char *row, int i, bool q8)
{
    if (!q8) {
        __half h;
        memcpy(&h, row + 2 * i, 2);
        return __half2float(h);
    }
    const unsigned char *b = row + (i / 32) * 34;
    return __half2float(__ushort_as_half((uint16_t)(b[0] | b[1] << 8))) * (int8_t)b[2 + i % 32];
}

/* attn_decode, the attention of a decode step from the raw q, k and v, against the per-operation
 * kernels it replaces (rmsnorm, rope and kv_store, run here one sequence at a time) and attention
 * in double: the cache rows at each sequence's own position (nothing else written), and the
 * output, split over positions (the last block of a head merging) and quantized. norms: q and
 * k RMS-normed per head (Qwen3) before RoPE, or not (Llama). */
static void check_attn_decode(int hd, bool neox, bool yarn, bool q8, int n_split, bool reverse,
                              bool norms = true)
{
    const int n_seq = 2, nh = 4, nkv = 2, n_rot = neox ? hd : hd / 2, kv_dim = nkv * hd;
    const int n_ctx = 40, pos_of[n_seq] = {0, 29};
    const float eps = 1e-6f, scale = 1.0f / sqrtf((float)hd);
    std::vector<float> q((size_t)n_seq * nh * hd), k((size_t)n_seq * kv_dim),
        v((size_t)n_seq * kv_dim), qn(hd), kn(hd);
    for (auto *a : {&q, &k, &v})
        for (auto &x : *a) x = uniform(-2, 2);
    for (auto *a : {&qn, &kn})
        for (auto &x : *a) x = uniform(0.5f, 1.5f);
    rope_params rp;
    rp.n_rot = n_rot;
    rp.neox = neox;
    rp.freq_base = 10000;
    rp.factor = yarn ? 4 : 1;
    rp.yarn = yarn;
    rp.lo = yarn ? 3 : 0;
    rp.hi = yarn ? 20 : 0;
    rp.m = yarn ? 1 + 0.1 * log(4.0) : 1;
    /* the fused kernel's table, as cuda_backend.cu makes it: angle = pos * freq[i] */
    std::vector<double> freq(n_rot / 2);
    for (int i = 0; i < n_rot / 2; i++) freq[i] = rope_freq(rp, i);
    rope_dev rd{freq.data(), n_rot, neox, (float)rp.m};
    size_t row = q8 ? (size_t)kv_dim / 32 * 34 : (size_t)kv_dim * 2;
    std::vector<kv_cache> kv(n_seq), before(n_seq);
    std::vector<void *> ktab(n_seq), vtab(n_seq);
    for (int s = 0; s < n_seq; s++) {
        before[s] = kv[s] = random_cache(q8, n_ctx, kv_dim);
        ktab[s] = kv[s].kbuf.data(), vtab[s] = kv[s].vbuf.data();
    }
    std::vector<int32_t> pos(pos_of, pos_of + n_seq);
    std::vector<int8_t> oq((size_t)n_seq * nh * hd);
    std::vector<float2> od((size_t)n_seq * nh * hd / 32);
    std::vector<float> part((size_t)n_seq * nh * n_split * (hd + 2));
    std::vector<unsigned> counter((size_t)n_seq * nh, 0);
    qact out{oq.data(), od.data()};
    dim3 grid(nh, n_seq, n_split);
    /* last to first, the blocks that store k and v run after the others, which must not read
     * the new position from the cache */
    cuda_emu::g_reverse_blocks = reverse;
    std::vector<cuda_emu::span> spans;
    cuda_emu::g_prefetches = &spans;
    const float *qnp = norms ? qn.data() : nullptr, *knp = norms ? kn.data() : nullptr;
    if (q8)
        EMU_LAUNCH(attn_decode<true>, grid, dim3(ATT_WARPS * WARP), q.data(), k.data(), v.data(),
                   qnp, knp, eps, rd, ktab.data(), vtab.data(), 0, pos.data(), out, part.data(),
                   counter.data(), n_seq, nh, nkv, hd, scale, true);
    else
        EMU_LAUNCH(attn_decode<false>, grid, dim3(ATT_WARPS * WARP), q.data(), k.data(), v.data(),
                   qnp, knp, eps, rd, ktab.data(), vtab.data(), 0, pos.data(), out, part.data(),
                   counter.data(), n_seq, nh, nkv, hd, scale, true);
    cuda_emu::g_prefetches = nullptr;
    cuda_emu::g_reverse_blocks = false;
    /* before its wait each block asked L2 for the cache rows of its positions before the new
     * one: together every row before each sequence's position, k and v, and nothing else */
    std::vector<prefetch_target> bufs;
    for (int s = 0; s < n_seq; s++)
        for (auto *buf : {&kv[s].kbuf, &kv[s].vbuf}) {
            prefetch_target t{buf->data(), std::vector<bool>(buf->size()),
                              std::vector<bool>(buf->size())};
            std::fill_n(t.want.begin(), (size_t)pos[s] * row, true);
            bufs.push_back(t);
        }
    check_prefetches("attn_decode", spans, bufs);
    for (unsigned c : counter) assert_int_equal(c, 0); /* reset for the next step */
    double worst = 0;
    for (int s = 0; s < n_seq; s++) {
        /* the reference: q and k normed and rotated, k and v stored, by per-operation kernels */
        const size_t qd = (size_t)nh * hd;
        std::vector<float> qs(q.begin() + s * qd, q.begin() + (s + 1) * qd);
        std::vector<float> ks(k.begin() + s * kv_dim, k.begin() + (s + 1) * kv_dim);
        if (norms) {
            EMU_LAUNCH(rmsnorm, dim3(nh), dim3(256), qs.data(), qn.data(), qs.data(), hd, eps,
                       (__half *)nullptr);
            EMU_LAUNCH(rmsnorm, dim3(nkv), dim3(256), ks.data(), kn.data(), ks.data(), hd, eps,
                       (__half *)nullptr);
        }
        EMU_LAUNCH(rope, dim3(1, nh), dim3(64), qs.data(), pos.data() + s, nh, hd, rp);
        EMU_LAUNCH(rope, dim3(1, nkv), dim3(64), ks.data(), pos.data() + s, nkv, hd, rp);
        kv_cache ref = before[s];
        const float *vs = v.data() + (size_t)s * kv_dim;
        if (q8)
            EMU_LAUNCH(kv_store_q8_0, dim3(1), dim3(2 * (kv_dim / 32) * WARP), ref.kbuf.data(),
                       ref.vbuf.data(), ks.data(), vs, 1, kv_dim, pos[s]);
        else
            EMU_LAUNCH(kv_store_f16, dim3(1), dim3(256), (__half *)ref.kbuf.data(),
                       (__half *)ref.vbuf.data(), ks.data(), vs, 1, kv_dim, pos[s]);
        for (int which = 0; which < 2; which++) {
            auto &got = which ? kv[s].vbuf : kv[s].kbuf;
            auto &want = which ? ref.vbuf : ref.kbuf;
            auto &was = which ? before[s].vbuf : before[s].kbuf;
            auto &val = which ? kv[s].vval : kv[s].kval;
            const unsigned char *g = got.data() + pos[s] * row, *w = want.data() + pos[s] * row;
            for (int i = 0; i < kv_dim; i++) {
                float gv = cache_value(g, i, q8), wv = cache_value(w, i, q8);
                float tol = 2e-3f * (1 + fabsf(wv));
                if (q8) { /* one quantization step */
                    const unsigned char *bw = w + (i / 32) * 34;
                    tol = 1.01f * __half2float(__ushort_as_half((uint16_t)(bw[0] | bw[1] << 8)));
                }
                if (!(fabsf(gv - wv) <= tol))
                    fail_msg("hd %d neox %d yarn %d q8 %d seq %d %s[%d]: %g, want %g", hd, neox,
                             yarn, q8, s, which ? "v" : "k", i, gv, wv);
                val[(size_t)pos[s] * kv_dim + i] = gv; /* what the attention below reads */
            }
            /* nothing written at other positions */
            for (int p = 0; p < n_ctx; p++)
                if (p != pos[s])
                    assert_memory_equal(got.data() + p * row, was.data() + p * row, row);
        }
        for (int h = 0; h < nh; h++) {
            std::vector<double> want =
                ref_attention(qs.data() + (size_t)h * hd, kv[s], kv_dim, h / (nh / nkv), hd,
                              pos[s], scale);
            for (int i = 0; i < hd; i++) {
                size_t at = ((size_t)s * nh + h) * hd + i;
                float2 d = od[at / 32];
                double got = (double)d.x * oq[at];
                if (!(fabs(got - want[i]) <= 0.51 * d.x + 1e-3))
                    fail_msg("hd %d q8 %d split %d seq %d head %d dim %d: %g, want %g", hd, q8,
                             n_split, s, h, i, got, want[i]);
                worst = fmax(worst, fabs(got - want[i]));
            }
        }
    }
    print_message("  attn_decode hd %d %s%s %s, %d split%s%s: worst output error %.2g\n", hd,
                  neox ? "neox" : "normal", yarn ? " yarn" : "", q8 ? "q8_0" : "f16", n_split,
                  n_split > 1 ? "s" : "", reverse ? ", blocks last to first" : "", worst);
}

/* A warp's kv_round of hd values: the rounded copy into out, the cache row into row. */
template <bool Q8> static void kv_round_kernel(const float *in, float *out, void *row, int hd)
{
    __shared__ float buf[ATT_MAX_HD];
    for (int d = threadIdx.x; d < hd; d += WARP) buf[d] = in[d];
    __syncwarp();
    kv_round<Q8>(buf, hd, row);
    for (int d = threadIdx.x; d < hd; d += WARP) out[d] = buf[d];
}

/* What attn_decode uses for the new position equals, to the bit, what later steps read back. */
static void check_kv_round(bool q8)
{
    const int hd = 128;
    std::vector<float> in(hd), out(hd);
    for (auto &v : in) v = uniform(-3, 3);
    in[5] = 0; /* and a block of zeros */
    for (int i = 64; i < 96; i++) in[i] = 0;
    std::vector<unsigned char> row(hd * 2);
    if (q8)
        EMU_LAUNCH(kv_round_kernel<true>, dim3(1), dim3(WARP), in.data(), out.data(), row.data(),
                   hd);
    else
        EMU_LAUNCH(kv_round_kernel<false>, dim3(1), dim3(WARP), in.data(), out.data(), row.data(),
                   hd);
    for (int i = 0; i < hd; i++) {
        float back = cache_value(row.data(), i, q8);
        assert_memory_equal(&out[i], &back, sizeof back);
        assert_true(fabsf(out[i] - in[i]) <= (q8 ? 0.6f * 3.0f / 127 : 2e-3f));
    }
}

static void test_attn_decode(void **state)
{
    (void)state;
    check_kv_round(false);
    check_kv_round(true);
    check_attn_decode(64, true, false, false, 1, true);
    check_attn_decode(64, true, true, false, 5, false);
    check_attn_decode(64, false, false, true, 5, true);
    check_attn_decode(128, true, true, true, 1, false);
    check_attn_decode(128, false, true, false, 5, true);
    check_attn_decode(64, false, false, false, 3, false, false); /* no q/k norms (Llama) */
    check_attn_decode(128, true, false, true, 1, true, false);
}

/* softmax (the backend's op, a block of 256 threads per row) against double sums: rows shorter
 * and longer than the block, and a row of -inf (all 0). */
static void test_softmax(void **state)
{
    (void)state;
    const int ns[] = {1, 37, 256, 1000};
    for (int n : ns) {
        const int rows = 3;
        std::vector<float> x((size_t)rows * n);
        for (auto &v : x) v = uniform(-8, 8);
        std::fill_n(x.begin() + n, n, -INFINITY); /* row 1 */
        std::vector<float> in = x;
        EMU_LAUNCH(softmax, dim3(rows), dim3(256), x.data(), n);
        for (int r = 0; r < rows; r++) {
            const float *xi = in.data() + (size_t)r * n, *y = x.data() + (size_t)r * n;
            double m = -INFINITY, sum = 0;
            for (int i = 0; i < n; i++) m = std::max(m, (double)xi[i]);
            for (int i = 0; i < n && m > -INFINITY; i++) sum += exp(xi[i] - m);
            for (int i = 0; i < n; i++) {
                double want = m == -INFINITY ? 0.0 : exp(xi[i] - m) / sum;
                if (fabs(y[i] - want) > 1e-5 * (1 + want))
                    fail_msg("softmax n %d row %d [%d]: %g, want %g", n, r, i, y[i], want);
            }
        }
    }
}

/* sample_rows against the host sampler with the same seed, for several chains. */
enum { TRIALS = 6 };
static void check_sample_chain(const char *name, const bonsai_sampler_params &p, int n_vocab,
                               float spread, int min_device)
{
    bonsai_sampler *host, *plan_s;
    assert_int_equal(bonsai_sampler_create_default(&p, &host), 0);
    assert_int_equal(bonsai_sampler_create_default(&p, &plan_s), 0);
    std::vector<float> logits(n_vocab);
    std::vector<float> other(n_vocab);
    sample_out *outs = new sample_out[2];
    int device = 0, same = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        for (auto &l : logits) l = uniform(-spread, spread);
        bsi_sample_params sp;
        assert_true(bsi_sampler_plan(plan_s, &sp));
        /* the first trial also samples another row greedily in the same launch (block 0) */
        int n_jobs = trial == 0 ? 2 : 1;
        sample_job jobs[2];
        jobs[n_jobs - 1] = {logits.data(), make_sample_params(sp)};
        int other_max = 0;
        if (n_jobs == 2) {
            for (int i = 0; i < n_vocab; i++) {
                other[i] = uniform(-5.0f, 5.0f);
                if (other[i] > other[other_max]) other_max = i;
            }
            bsi_sample_params g = sp;
            g.greedy = true;
            jobs[0] = {other.data(), make_sample_params(g)};
        }
        outs[0].token = outs[1].token = -2;
        EMU_LAUNCH(sample_rows, dim3(n_jobs), dim3(SAMPLE_THREADS), jobs, n_vocab, outs);
        if (n_jobs == 2) assert_int_equal(outs[0].token, other_max);
        sample_out *out = &outs[n_jobs - 1];
        int32_t want;
        float lp;
        assert_int_equal(bonsai_sampler_sample(host, logits.data(), (uint32_t)n_vocab, &want, &lp),
                         0);
        assert_true(out->token >= -1);
        if (out->token >= 0) {
            device++;
            same += out->token == want;
            if (out->token == want) assert_true(fabsf(out->logprob - lp) < 1e-3f);
        }
        assert_int_equal(bsi_sampler_took(plan_s, want), 0); /* both draw alike */
    }
    print_message("  %s (vocab %d): sampled on the device %d of %d, same token %d\n", name, n_vocab,
                  device, TRIALS, same);
    assert_true(device >= min_device);
    assert_int_equal(same, device);
    delete[] outs;
    bonsai_sampler_free(host);
    bonsai_sampler_free(plan_s);
}

static void test_sampling(void **state)
{
    (void)state;
    bonsai_sampler_params p;
    bonsai_sampler_params_init(&p);
    p.seed = 3;
    check_sample_chain("default chain", p, 2000, 8, TRIALS);
    check_sample_chain("default chain, small vocabulary", p, 300, 4, TRIALS);
    p.temperature = 0;
    check_sample_chain("greedy", p, 2000, 8, TRIALS);
    bonsai_sampler_params_init(&p);
    p.top_k = 0;
    p.min_p = 0;
    p.top_p = 0.6f;
    check_sample_chain("top-p 0.6 alone, peaked", p, 2000, 14, TRIALS);
    bonsai_sampler_params_init(&p);
    p.top_k = 0;
    p.top_p = 1;
    p.min_p = 0.2f;
    check_sample_chain("min-p 0.2 alone, peaked", p, 2000, 14, TRIALS);
    bonsai_sampler_params_init(&p);
    p.top_k = 300;
    p.top_p = 1;
    p.min_p = 0;
    p.temperature = 1.5f;
    check_sample_chain("top-k 300, hot", p, 2000, 3, TRIALS);
    bonsai_sampler_params_init(&p);
    p.top_k = 0;
    p.top_p = 0.9f;
    p.min_p = 0;
    check_sample_chain("top-p 0.9 over a flat distribution", p, 2000, 0.5f, 0); /* the host's */
}

/* ---- the emulator's thread schedules (CUDA_EMU_SCHEDULE) ---- */

/* Thread t of a block writes slot t of its block's row of buf, then reads slot t ^ 1 into out,
 * with or without a barrier between; `turns` records the order in which the threads started. */
__attribute__((noinline)) static void swap_neighbours(int *buf, int *out, int *turns,
                                                      unsigned *next, bool sync)
{
    int t = (int)threadIdx.x, n = (int)blockDim.x, b = (int)blockIdx.x;
    turns[b * n + (int)atomicAdd(&next[b], 1u)] = t;
    buf[b * n + t] = t + 1;
    if (sync) __syncthreads();
    out[b * n + t] = buf[b * n + (t ^ 1)];
}

/* swap_neighbours over `blocks` blocks of n threads; out and turns per thread, in block order */
static void launch_swap(int blocks, int n, bool sync, std::vector<int> &out,
                        std::vector<int> &turns)
{
    std::vector<int> buf((size_t)n * blocks, 0);
    std::vector<unsigned> next((size_t)blocks, 0);
    out.assign((size_t)n * blocks, -1);
    turns.assign((size_t)n * blocks, -1);
    int *pb = buf.data(), *po = out.data(), *pt = turns.data();
    unsigned *pn = next.data();
    EMU_LAUNCH(swap_neighbours, dim3(blocks), dim3(n), pb, po, pt, pn, sync);
}

static void test_schedule(void **state)
{
    (void)state;
    constexpr int N = 64, B = 3;
    const cuda_emu::schedule_order orders[3] = {cuda_emu::schedule_order::forward,
                                                cuda_emu::schedule_order::reverse,
                                                cuda_emu::schedule_order::shuffle};
    std::vector<int> racy[3];
    for (int o = 0; o < 3; o++) {
        cuda_emu::set_schedule(orders[o], 5);
        for (int sync = 1; sync >= (tsan ? 1 : 0); sync--) {
            std::vector<int> out, turns;
            launch_swap(B, N, sync != 0, out, turns);
            for (int b = 0; b < B; b++) {
                std::vector<bool> seen(N, false);
                for (int i = 0; i < N; i++) {
                    int t = turns[b * N + i];
                    assert_true(t >= 0 && t < N && !seen[t]); /* every thread ran once */
                    seen[t] = true;
                    if (orders[o] == cuda_emu::schedule_order::forward) assert_int_equal(t, i);
                    if (orders[o] == cuda_emu::schedule_order::reverse)
                        assert_int_equal(t, N - 1 - i);
                }
                if (sync)
                    for (int t = 0; t < N; t++) assert_int_equal(out[b * N + t], (t ^ 1) + 1);
            }
            if (orders[o] == cuda_emu::schedule_order::shuffle) {
                /* neither order, and a different one in each block */
                bool fwd = true, rev = true, same = true;
                for (int i = 0; i < N; i++) {
                    fwd = fwd && turns[i] == i;
                    rev = rev && turns[i] == N - 1 - i;
                    same = same && turns[i] == turns[N + i];
                }
                assert_false(fwd || rev || same);
            }
            if (!sync) racy[o] = out;
        }
    }
    cuda_emu::reset_schedule();
    if (tsan) return;
    /* without the barrier each schedule shows the race differently: forward, thread 0 reads
     * slot 1 before thread 1 wrote it; reverse, thread 1 reads slot 0 too early */
    assert_int_equal(racy[0][0], 0);
    assert_int_equal(racy[0][1], 1);
    assert_int_equal(racy[1][0], 2);
    assert_int_equal(racy[1][1], 0);
    assert_true(racy[2] != racy[0] && racy[2] != racy[1]);
}

/* ---- the emulator's cp.async: copies land at the issuing thread's wait, not before ---- */

/* Thread t copies src[g][t] (16 bytes) to slot g of shared memory in groups g = 0, 1, 2 and a
 * fourth copy it never commits; seen[k][t] records the first byte of a slot at step k. */
static void async_copies(const unsigned char *src, unsigned char *seen, bool sync)
{
    unsigned t = threadIdx.x, n = blockDim.x;
    unsigned char *smem = cuda_emu::dyn_smem();
    auto slot = [&](unsigned g, unsigned th) { return smem + 16 * (g * n + th); };
    auto see = [&](unsigned k, const unsigned char *p) { seen[k * n + t] = p[0]; };
    for (unsigned g = 0; g < 3; g++) {
        cp_async16(slot(g, t), src + 16 * (g * n + t));
        cp_async_commit();
    }
    cp_async16(slot(3, t), src + 16 * (3 * n + t)); /* not committed */
    see(0, slot(0, t));                             /* nothing waited for */
    cp_async_wait<2>();
    see(1, slot(0, t)); /* group 0 landed */
    see(2, slot(1, t)); /* group 1 not yet */
    cp_async_wait<0>();
    see(3, slot(2, t));
    see(4, slot(3, t)); /* the copy outside any group has not landed */
    if (sync) __syncthreads();
    see(5, slot(2, t ^ 1)); /* the neighbour's: after its wait only with the barrier */
}

static void test_cp_async(void **state)
{
    (void)state;
    constexpr unsigned N = 32;
    std::vector<unsigned char> src(16 * 4 * N);
    for (unsigned g = 0; g < 4; g++)
        for (unsigned t = 0; t < N; t++) memset(&src[16 * (g * N + t)], (int)(10 * g + t % 2), 16);
    const unsigned char old = 0xA5; /* dynamic shared memory before each block */
    for (int sync = tsan ? 1 : 0; sync < 2; sync++) {
        std::vector<unsigned char> seen(6 * N, 0);
        const unsigned char *ps = src.data();
        unsigned char *pseen = seen.data();
        bool s = sync != 0;
        cuda_emu::set_schedule(cuda_emu::schedule_order::forward);
        EMU_LAUNCH(async_copies, dim3(1), dim3(N), ps, pseen, s);
        cuda_emu::reset_schedule();
        for (unsigned t = 0; t < N; t++) {
            assert_int_equal(seen[0 * N + t], old);
            assert_int_equal(seen[1 * N + t], t % 2);
            assert_int_equal(seen[2 * N + t], old);
            assert_int_equal(seen[3 * N + t], 20 + t % 2);
            assert_int_equal(seen[4 * N + t], old);
        }
        /* forward order without the barrier: thread 0 runs to its end before thread 1 starts */
        assert_int_equal(seen[5 * N + 0], s ? 21 : old);
        assert_int_equal(seen[5 * N + 1], 20);
        /* every copy landed by the end of its thread, the uncommitted one too */
        for (unsigned t = 0; t < N; t++)
            for (unsigned g = 0; g < 4; g++)
                assert_int_equal(cuda_emu::dyn_smem()[16 * (g * N + t) + 15], 10 * g + t % 2);
    }
}

/* `test_cuda_emu race`: swap_neighbours without its barrier, a race that a ThreadSanitizer build
 * must report (its exit status 66; tests/meson.build checks both). */
static int run_race()
{
    std::vector<int> out, turns;
    launch_swap(1, 64, false, out, turns);
    printf("race run: thread 0 read %d\n", out[0]);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "race")) return run_race();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dgemv),    cmocka_unit_test(test_prefetch),
        cmocka_unit_test(test_gemm),     cmocka_unit_test(test_gemm_wgmma),
        cmocka_unit_test(test_prefill),  cmocka_unit_test(test_attn_decode),
        cmocka_unit_test(test_sampling), cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_cp_async), cmocka_unit_test(test_softmax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
