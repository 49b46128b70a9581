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

} // namespace bsi_cuda

#endif
