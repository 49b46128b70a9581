/*
 * Just enough of CUDA to run this project's kernels on the CPU, for tests on machines without a
 * GPU: every CUDA thread of a block is a fiber (its own stack, switched with ucontext) on the
 * calling thread, run in turn until it waits at a barrier or ends; __syncthreads is a barrier of
 * the block, warp shuffles exchange values through a per-warp slot array between two barriers of
 * the warp. Blocks run one after another, so __shared__ variables are function statics (and
 * launches from several threads take turns). Slow, and blind to
 * what only hardware shows (memory ordering, timing, occupancy), but it executes the kernels'
 * own source: indexing, reductions, barriers and the algorithms. Used with BSI_CUDA_EMU defined
 * before the kernels' headers (tests/test_cuda_emu.cpp).
 */
#ifndef BONSAI_CUDA_EMU_H
#define BONSAI_CUDA_EMU_H

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::max;
using std::min;

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct int4 {
    int x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct char4 {
    signed char x, y, z, w;
};
inline float2 make_float2(float a, float b)
{
    return {a, b};
}
inline float4 make_float4(float a, float b, float c, float d)
{
    return {a, b, c, d};
}
inline char4 make_char4(signed char a, signed char b, signed char c, signed char d)
{
    return {a, b, c, d};
}

/* fp16 through the library's own conversions (not every compiler has _Float16) */
extern "C" {
float bsi_fp16_to_fp32(uint16_t h);
uint16_t bsi_fp32_to_fp16(float f);
}
struct __half {
    uint16_t u;
};
inline float __half2float(__half h) { return bsi_fp16_to_fp32(h.u); }
inline __half __float2half(float f) { return __half{bsi_fp32_to_fp16(f)}; }
inline __half __hneg(__half h) { return __half{(uint16_t)(h.u ^ 0x8000u)}; }
inline __half __ushort_as_half(uint16_t u) { return __half{u}; }
inline uint16_t __half_as_ushort(__half h) { return h.u; }
inline uint32_t __float_as_uint(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline float __expf(float x)
{
    return expf(x);
}
inline float rsqrtf(float x)
{
    return 1.0f / sqrtf(x);
}
inline int __float2int_rn(float x)
{
    return (int)nearbyintf(x);
}
/* sincos(double, double *, double *): glibc's (g++ defines _GNU_SOURCE) */
template <typename T> inline T __ldg(const T *p)
{
    return *p;
}
template <typename T> inline T __ldcg(const T *p)
{
    return *p;
}
inline int __dp4a(int a, int b, int c)
{
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> 8 * i) * (int)(int8_t)(b >> 8 * i);
    return c;
}
/* Under ThreadSanitizer (cuda_emu.cpp) a fence does nothing (TSan has no fences of its own): the
 * blocks run one after another, each one's end happening before the next one's start, so what a
 * fence orders between blocks is ordered anyway, and TSan checks the threads of one block against
 * each other, which a fence does not order. Otherwise a fence is a fence. */
#ifndef CUDA_EMU_TSAN /* cuda_emu.cpp, not instrumented, is told by a definition */
#if defined(__SANITIZE_THREAD__)
#define CUDA_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUDA_EMU_TSAN 1
#endif
#endif
#endif
template <typename T> inline T atomicAdd(T *p, T v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
#ifdef CUDA_EMU_TSAN
inline void __threadfence() {}
#else
inline void __threadfence()
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
#endif

/* ---- the launch ---- */

namespace cuda_emu
{

constexpr unsigned WG_MAX_OPS = 8; /* wgmma products a lane may have in flight */

/* A barrier of `expected` fibers; `generation` counts the times it opened. */
struct barrier {
    unsigned count, expected;
    unsigned long generation;
};

struct block_state {
    barrier block;
    barrier warp[32];
    uint64_t slot[2][32][32];     /* shuffles: [parity][warp][lane] */
    unsigned char parity[32][32]; /* [warp][lane]: the lane's shuffles so far, modulo 2 */
    /* mma: each lane's a[4] and b[2], decoded (up to 4 elements of 4 bytes per register), by the
     * same parity as the shuffles' slots */
    uint32_t frag[2][32][32][24];
    unsigned char mma_parity[32][32];
    /* wgmma: each lane's products not yet waited for (their accumulators, B's descriptor and
     * width), and their A fragments, by the lane's order of issue */
    struct wg_product {
        float *d;
        const uint32_t *a; /* must hold wg_a's copy until the wait, as on a GPU */
        unsigned long long desc;
        int n;
    } wg_op[32][32][WG_MAX_OPS];
    uint32_t wg_a[WG_MAX_OPS][32][32][4];
    unsigned char wg_pending[32][32];
};

extern block_state *g_state; /* the running block's */

/* Waits until all the barrier's fibers have arrived (the others run meanwhile). */
void barrier_wait(barrier *b);

} // namespace cuda_emu

/* the built-in variables: the running fiber's (launches take turns, see run()) */
extern dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads()
{
    cuda_emu::barrier_wait(&cuda_emu::g_state->block);
}
inline void __syncwarp(unsigned = 0xffffffffu)
{
    cuda_emu::barrier_wait(&cuda_emu::g_state->warp[threadIdx.x / 32]);
}

template <typename T> inline T __shfl_xor_sync(unsigned, T v, int o)
{
    static_assert(sizeof(T) <= 8, "shuffle of a small type");
    unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    /* one barrier: a lane cannot write this slot set again before the next shuffle's barrier,
     * which every lane reaches only after reading this one's */
    unsigned char &par = cuda_emu::g_state->parity[w][lane];
    cuda_emu::g_state->slot[par][w][lane] = bits;
    __syncwarp();
    bits = cuda_emu::g_state->slot[par][w][lane ^ (unsigned)o];
    par ^= 1;
    T r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* mma.sync m16n8kK for one warp with the PTX ISA's fragment layout, E elements per 32-bit
 * register (K = 8 E): lane l is group g = l / 4, thread t = l % 4; a[0] holds A[g][E t ..],
 * a[1] A[g+8][E t ..], a[2] A[g][K/2 + E t ..], a[3] A[g+8][K/2 + E t ..] (lowest k in the low
 * bits); b[0] holds B[E t ..][g], b[1] B[K/2 + E t ..][g]; d[0..1] = D[g][2t .. 2t+1],
 * d[2..3] = D[g+8][2t ..]. elem(reg, i) is element i of a register. */
template <int E, class Acc, class Elem>
inline void mma_emu(Acc d[4], const uint32_t a[4], const uint32_t b[2], Elem elem)
{
    static_assert(sizeof(Acc) == 4 && E <= 4, "4-byte elements, at most 4 per register");
    constexpr unsigned K = 8 * E, H = K / 2;
    unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
    /* each lane decodes its own registers once: element i of register r at [E r + i] */
    unsigned char &par = cuda_emu::g_state->mma_parity[w][lane];
    auto frags = cuda_emu::g_state->frag[par];
    Acc *mine = (Acc *)frags[w][lane];
    for (unsigned r = 0; r < 6; r++)
        for (unsigned i = 0; i < E; i++) mine[E * r + i] = elem(r < 4 ? a[r] : b[r - 4], i);
    /* one barrier, as for shuffles: no lane writes this parity's slots again before every lane
     * has passed the next mma's barrier, i.e. has read these */
    __syncwarp();
    unsigned g = lane / 4, t = lane % 4;
    for (unsigned e = 0; e < 4; e++) {
        unsigned row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        Acc sum = 0;
        for (unsigned k = 0; k < K; k++) {
            const Acc *fa = (const Acc *)frags[w][(row % 8) * 4 + (k % H) / E];
            const Acc *fb = (const Acc *)frags[w][col * 4 + (k % H) / E];
            sum += fa[E * ((row >= 8 ? 1 : 0) + (k >= H ? 2 : 0)) + k % E] *
                   fb[E * (4 + (k >= H ? 1 : 0)) + k % E];
        }
        d[e] += sum;
    }
    par ^= 1;
}

/* mma.sync.m16n8k16.row.col f32.f16.f16.f32 */
inline void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2])
{
    mma_emu<2>(d, a, b, [](uint32_t reg, unsigned i) {
        return bsi_fp16_to_fp32((uint16_t)(reg >> (16 * i)));
    });
}

/* mma.sync.m16n8k32.row.col s32.s8.s8.s32 */
inline void mma_16832_s8(int d[4], const uint32_t a[4], const uint32_t b[2])
{
    mma_emu<4>(d, a, b, [](uint32_t reg, unsigned i) { return (int)(int8_t)(reg >> (8 * i)); });
}

/* A pointer into dynamic shared memory (dyn_smem()) as its offset there, which is what wgmma's
 * descriptors hold; aborts for any other pointer. */
unsigned __cvta_generic_to_shared(const void *p);

namespace cuda_emu
{
/* Tells ThreadSanitizer that the calling lane reads the B of a wgmma (descriptor, width N): at
 * its issue and again at its wait, B being read at some time between (a no-op without TSan) */
void wgmma_reads(unsigned long long desc, int n);
} // namespace cuda_emu

/* wgmma (mma.cuh): a product is recorded when issued and computed at wgmma_wait0, from the
 * shared memory and accumulators as they are then, so that a kernel which reads the sums or
 * rewrites B before waiting gets wrong results here as it would on a GPU (and one that rewrites
 * A's registers before waiting aborts). The A fragments are mma_16816's, per warp of the
 * warpgroup; B is read through the descriptor (no swizzling). */
template <int N>
inline void wgmma_f16(float (&d)[N / 2], const uint32_t a[4], unsigned long long desc)
{
    static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma's N");
    unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
    unsigned char &n = cuda_emu::g_state->wg_pending[w][lane];
    if (n == cuda_emu::WG_MAX_OPS) {
        fprintf(stderr, "cuda_emu: more than %u wgmma products in flight\n", cuda_emu::WG_MAX_OPS);
        abort();
    }
    cuda_emu::wgmma_reads(desc, N); /* B may be read from now to the wait (ThreadSanitizer) */
    cuda_emu::g_state->wg_op[w][lane][n] = {d, a, desc, N};
    memcpy(cuda_emu::g_state->wg_a[n][w][lane], a, 4 * sizeof(uint32_t));
    n++;
}
inline void wgmma_fence() {}
inline void wgmma_proxy_fence() {}
template <int N> inline void wgmma_hold(float (&)[N]) {}
inline void wgmma_commit() {}
namespace cuda_emu
{
void wgmma_run(); /* the calling lane's products in flight, in order */
}
inline void wgmma_wait0()
{
    cuda_emu::wgmma_run();
}

/* cp.async: the source is read when the copy is issued, and the copy lands in shared memory as
 * late as the PTX ISA allows, at the issuing thread's cp_async_wait<N> that covers its group (or
 * when the thread ends). So a kernel that reads a tile before waiting for it, waits for too few
 * groups, or reads another thread's copies without a barrier after their wait sees what was
 * there before and fails, as it may on a GPU. */
namespace cuda_emu
{
void cp_async_issue(void *smem, const void *gmem);
void cp_async_commit_group();
void cp_async_wait_groups(unsigned n); /* all but the n most recent committed groups land */
} // namespace cuda_emu
inline void cp_async16(void *smem, const void *gmem)
{
    cuda_emu::cp_async_issue(smem, gmem);
}
inline void cp_async_commit()
{
    cuda_emu::cp_async_commit_group();
}
template <int N> inline void cp_async_wait()
{
    static_assert(N >= 0, "cp.async.wait_group's count");
    cuda_emu::cp_async_wait_groups((unsigned)N);
}

namespace cuda_emu
{

/* Runs body() as every thread of every block of grid x block (1-D blocks of a multiple of 32
 * threads), a block at a time. */
void run(dim3 grid, dim3 block, const std::function<void()> &body);

/* A block's dynamic shared memory (blocks run one at a time): DYN_SMEM_BYTES, 16-byte aligned,
 * filled with 0xA5 before each block. */
constexpr size_t DYN_SMEM_BYTES = 256 * 1024;
unsigned char *dyn_smem();

/* Run the blocks last to first instead of first to last (a kernel's results must not depend on
 * the order). */
extern bool g_reverse_blocks;

/* l2_prefetch's spans (start, bytes), one per call by the first thread of its share, appended
 * here while it is not NULL: tests check that a kernel asks for what it will read, no more. */
struct span {
    const void *p;
    size_t n;
};
extern std::vector<span> *g_prefetches;
void record_prefetch(const void *p, size_t n); /* appends to g_prefetches if not NULL */

/* The order in which a block's threads take turns between two barriers: a thread runs until it
 * waits at a barrier (__syncthreads, __syncwarp, a shuffle, an mma), then the next in turn runs,
 * and the last to arrive at a barrier goes on first. forward: 0, 1, 2...; reverse: n-1, n-2...;
 * shuffle: a pseudo-random order from `seed`, different for every block (and the same for a
 * block of the same index and size in every launch, so a failure repeats). The environment
 * variable CUDA_EMU_SCHEDULE (forward, reverse, shuffle or shuffle:SEED) sets it for a whole
 * run; this call overrides it. No kernel's results may depend on it: one that does reads shared
 * memory that another thread writes with no barrier between them, a race on a GPU. */
enum class schedule_order { forward, reverse, shuffle };
void set_schedule(schedule_order how, uint64_t seed = 1);
void reset_schedule(); /* back to CUDA_EMU_SCHEDULE */

} // namespace cuda_emu

/* kernel<<<grid, block>>>(args...) becomes EMU_LAUNCH(kernel, grid, block, args...) */
#define EMU_LAUNCH(kernel, grid, block, ...)                                                       \
    cuda_emu::run((grid), (block), [&] { kernel(__VA_ARGS__); })

#endif
