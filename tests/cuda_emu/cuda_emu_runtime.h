/*
 * Just enough of the CUDA runtime API for the CUDA backend's host code (backends/cuda/
 * cuda_backend.cu) to run on the CPU over tests/cuda_emu: one emulated device ("cuda_emu",
 * compute capability 9.0, 2 multiprocessors; more with CUDA_EMU_DEVICES, below), device memory that
 * is host memory, streams that run their work at once (in order), and graph capture that records a
 * stream's work instead, to run it at each cudaGraphLaunch. It also checks what a real runtime
 * refuses and a test should hear of: more than 48 KB of dynamic shared memory without the
 * function's attribute raised, synchronizing a stream or copying synchronously while this thread
 * captures, unknown pointers freed. The module built this way (tests/cuda_emu/libbonsai-cuda.so)
 * lets test_cuda run its GPU tests where there is no GPU.
 *
 * Fault injection: cuda_emu_fail_call(n, by_site), exported by the module, makes the n-th call
 * from now (0: the next) of those that can fail on a GPU (allocations, copies, launches, stream,
 * event and graph calls; not frees and destroys) fail once, with cudaErrorMemoryAllocation where it
 * allocates and cudaErrorUnknown elsewhere. A call that fails on a stream being captured
 * invalidates the capture, as on a GPU (cudaStreamEndCapture then fails too).
 * cuda_emu_fault_from(call, n) emulates a kernel's fault instead: from the n-th call of `call` on,
 * every call that can fail fails with cudaErrorIllegalAddress (sticky, as on a GPU) until the
 * next cuda_emu_fail_call.
 *
 * CUDA_EMU_DRIVER=none or =old: the runtime of a machine without an NVIDIA driver (driver
 * version 0) or with one older than the runtime (11.8); cudaGetDeviceCount then fails with
 * cudaErrorInsufficientDriver, as the real runtime does in both cases.
 *
 * CUDA_EMU_DEVICES=7.5,9.0: that many devices, of those compute capabilities (all of them this
 * one emulated device and its memory under another number), for a machine whose first GPU is
 * too old.
 */
#ifndef BONSAI_CUDA_EMU_RUNTIME_H
#define BONSAI_CUDA_EMU_RUNTIME_H

#include "cuda_emu.h"

#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalAddress = 700,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureImplicit = 906,
    cudaErrorUnknown = 999,
};

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
};

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

enum cudaLaunchAttributeID { cudaLaunchAttributeProgrammaticStreamSerialization = 5 };

constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDisableTiming = 2;

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlockOptin;
    int major, minor;
    int multiProcessorCount;
};

struct cudaFuncAttributes {
    size_t sharedSizeBytes;
    int binaryVersion, ptxVersion;
    int maxDynamicSharedSizeBytes;
};

union cudaLaunchAttributeValue {
    int programmaticStreamSerializationAllowed;
};
struct cudaLaunchAttribute {
    cudaLaunchAttributeID id;
    cudaLaunchAttributeValue val;
};

struct cuda_emu_stream;
struct cuda_emu_graph;
typedef cuda_emu_stream *cudaStream_t;
typedef cuda_emu_graph *cudaGraph_t;
typedef cuda_emu_graph *cudaGraphExec_t;
typedef struct cuda_emu_event *cudaEvent_t;

struct cudaLaunchConfig_t {
    dim3 gridDim, blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    cudaLaunchAttribute *attrs;
    unsigned numAttrs;
};

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaDriverGetVersion(int *v);

cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s);
cudaError_t cudaMemsetAsync(void *dst, int v, size_t bytes, cudaStream_t s);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);

extern "C" {
/* The n-th failable call from now (0: the next) fails, once; n < 0: none. With by_site, only the
 * first call from each call site (return address) counts: a sweep over n then tries every
 * site once instead of every call. */
void cuda_emu_fail_call(long n, int by_site);
/* The same, counting only the calls of the function named `call` ("cudaGraphInstantiate"), and
 * for `times` calls in a row from the n-th. */
void cuda_emu_fail_named(const char *call, long n, long times);
/* A kernel's fault: from the n-th call of `call` on, every failable call fails with
 * cudaErrorIllegalAddress until the next cuda_emu_fail_call. */
void cuda_emu_fault_from(const char *call, long n);
/* The failable calls of the function named `call` made so far. */
long cuda_emu_calls(const char *call);
/* The failures injected so far. */
long cuda_emu_failures(void);
/* Allocations (device and pinned host memory), streams, events and graphs that exist: what a
 * test expects to be 0 once it has freed everything. */
long cuda_emu_live(void);
}

namespace cuda_emu
{
/* e (recorded as the last error) when this failable call (named `call`) is the one to fail,
 * else cudaSuccess. */
cudaError_t injected(cudaError_t e, const char *call, const void *site);
/* In a runtime function: returns `error` when this call is the one to fail (its site: where the
 * function was called from). */
#define CUDA_EMU_INJECT(error)                                                                     \
    do {                                                                                           \
        if (cudaError_t e_ = cuda_emu::injected(error, __func__, __builtin_return_address(0)))     \
            return e_;                                                                             \
    } while (0)
constexpr int SMEM_OPTIN = 232448;  /* shared memory a block may opt into (an H100's) */
constexpr int SMEM_PER_SM = 233472; /* shared memory of a multiprocessor */
/* Work on stream s: done now, or recorded if s is being captured. */
cudaError_t submit(cudaStream_t s, std::function<void()> work);
/* The function's attributes, by its address. */
cudaFuncAttributes &func_attributes(const void *fn);
/* A launch of fn: checks the configuration, then submits. */
cudaError_t launch(const void *fn, const cudaLaunchConfig_t *cfg, std::function<void()> body);
} // namespace cuda_emu

inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, const void *fn)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    *a = cuda_emu::func_attributes(fn);
    return cudaSuccess;
}
template <typename... P> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, void (*fn)(P...))
{
    return cudaFuncGetAttributes(a, (const void *)fn);
}

template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*fn)(P...), cudaFuncAttribute attr, int value)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
        value > cuda_emu::SMEM_OPTIN)
        return cudaErrorInvalidValue;
    cuda_emu::func_attributes((const void *)fn).maxDynamicSharedSizeBytes = value;
    return cudaSuccess;
}

/* Blocks of `threads` threads with `smem` bytes each that fit one multiprocessor of the
 * emulated device (2048 threads, 228 KB of shared memory, at most 32 blocks). */
template <typename... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, void (*)(P...), int threads,
                                                          size_t smem)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    if (threads < 1 || threads > 1024) return cudaErrorInvalidValue;
    int by_threads = 2048 / threads, by_smem = (int)(cuda_emu::SMEM_PER_SM / (smem + 1024));
    *n = std::min(32, std::min(by_threads, by_smem));
    return cudaSuccess;
}

/* kernel(args...) as the grid of cfg: the arguments are converted to the kernel's parameter
 * types and copied now, as a real launch (or a captured one) takes them. */
template <typename... P, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *cfg, void (*kernel)(P...), A &&...args)
{
    static_assert(sizeof...(P) == sizeof...(A), "a kernel's arguments, one for each parameter");
    std::tuple<typename std::decay<P>::type...> params(std::forward<A>(args)...);
    return cuda_emu::launch((const void *)kernel, cfg,
                            [kernel, params]() { std::apply(kernel, params); });
}

#endif
