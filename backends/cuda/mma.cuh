/*
 * Tensor-core and asynchronous-copy primitives (sm_80 and newer) for the prompt GEMM (gemm.cuh),
 * prompt attention (flash.cuh) and the batched decode product (decode.cuh). Fragment layouts are
 * the PTX ISA's for mma.sync: lane l is group g = l / 4, thread t = l % 4; the C fragment holds
 * rows g and g + 8, columns 2t and 2t + 1. tests/cuda_emu implements the same functions on the
 * CPU with the same layouts.
 */
#ifndef BONSAI_CUDA_MMA_CUH
#define BONSAI_CUDA_MMA_CUH

#include "kernels.cuh"

namespace bsi_cuda {

#ifdef BSI_CUDA_EMU
/* tests/cuda_emu provides mma_16816, mma_16832_s8, cp_async16, cp_async_commit and
 * cp_async_wait<N> */
#else
/* d = a * b + d for one warp: a 16x16 (row-major), b 16x8 (column-major), fp16; d fp32. */
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2])
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* d = a * b + d for one warp: a 16x32 (row-major), b 32x8 (column-major), int8; d int32. */
__device__ __forceinline__ void mma_16832_s8(int d[4], const uint32_t a[4], const uint32_t b[2])
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* 16 bytes global -> shared without passing through registers (completes at cp_async_wait). */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif

/* Warpgroup products (wgmma, sm_90a only: BSI_WGMMA says whether this compilation has them). A is
 * in registers, each warp w of the warpgroup holding rows 16 w .. 16 w + 15 in mma_16816's A
 * layout; B (k16 x N, K-major) is in shared memory, described by wgmma_desc: without swizzling,
 * as 8 x 8 "core matrices" of 128 contiguous bytes (8 rows of 8 k), the next 8 k `lbo` bytes on,
 * the next 8 columns `sbo` bytes on. D: d[4 j + e] is row 16 w + g (+ 8 for e >= 2), column
 * 8 j + 2 t (+ 1 for odd e). B written by ordinary stores or cp.async needs wgmma_proxy_fence
 * and a barrier before the products read it. The products are asynchronous: wgmma_fence before
 * the first (after the accumulators or A were written), wgmma_commit after the last, and nothing
 * reads the accumulators or rewrites B before wgmma_wait0. */
#if defined(BSI_CUDA_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define BSI_WGMMA 1
#else
#define BSI_WGMMA 0
#endif

/* The descriptor of a K-major operand at smem (16-byte aligned), without swizzling. */
__device__ __forceinline__ unsigned long long wgmma_desc(const void *smem, unsigned lbo,
                                                         unsigned sbo)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    return (unsigned long long)((a >> 4) & 0x3FFFu) |
           (unsigned long long)((lbo >> 4) & 0x3FFFu) << 16 |
           (unsigned long long)((sbo >> 4) & 0x3FFFu) << 32;
}

#if BSI_WGMMA && !defined(BSI_CUDA_EMU)
__device__ __forceinline__ void wgmma_fence()
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

/* Makes this thread's shared-memory writes (st.shared, cp.async: the generic proxy) visible to
 * wgmma's reads (the async proxy); then a barrier, for the other threads' writes. */
__device__ __forceinline__ void wgmma_proxy_fence()
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit()
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_wait0()
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}

/* Pins accumulators in place between two volatile statements: without it the compiler, which
 * sees d written by the wgmma statements only, could move their zeroing past wgmma_fence or
 * their reads before wgmma_wait0. */
template <int N> __device__ __forceinline__ void wgmma_hold(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

/* d += A (64 x 16, registers) * B (16 x N, shared memory), fp16 inputs, fp32 sums; N 64 or 128. */
template <int N>
__device__ void wgmma_f16(float (&d)[N / 2], const uint32_t a[4], unsigned long long desc);

template <>
__device__ __forceinline__ void wgmma_f16<64>(float (&d)[32], const uint32_t a[4],
                                              unsigned long long desc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                   "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_f16<128>(float (&d)[64], const uint32_t a[4],
                                               unsigned long long desc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                 "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                   "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
                   "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
                   "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
                   "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}
#endif

} // namespace bsi_cuda

#endif
