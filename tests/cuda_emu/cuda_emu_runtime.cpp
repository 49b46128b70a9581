/* The emulated CUDA runtime of tests/cuda_emu/cuda_emu_runtime.h. */
#include "cuda_emu_runtime.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

struct cuda_emu_stream {
    std::vector<std::function<void()>> *recording; /* while captured, else null */
    bool invalidated;                              /* a call failed while captured */
};
struct cuda_emu_graph {
    std::vector<std::function<void()>> work;
};
struct cuda_emu_event {
    int unused;
};

namespace
{

typedef std::map<const unsigned char *, size_t> blocks; /* base -> bytes */

std::mutex lock; /* the tables below, for sessions on several threads */
blocks device_blocks, host_blocks;
std::map<const void *, cudaFuncAttributes> attributes;
thread_local cudaError_t last_error = cudaSuccess;
thread_local int capturing = 0; /* streams this thread is capturing */

cudaError_t fail(cudaError_t e)
{
    last_error = e;
    return e;
}

/* streams, events and graphs (captured or instantiated) that exist */
std::atomic<long> live_objects;

/* fault injection (cuda_emu_fail_call) */
std::mutex fault_lock;
long fault_at = -1, fault_last = -1, fault_calls, fault_count; /* calls fault_at .. fault_last */
bool fault_by_site;                 /* count only each call site's first call */
std::set<const void *> fault_sites; /* the call sites seen since cuda_emu_fail_call */
std::string fault_name;             /* cuda_emu_fail_named: only this function's calls count */
bool fault_sticks, fault_stuck;     /* cuda_emu_fault_from: the failure, once there, stays */
std::map<std::string, long, std::less<>> call_counts; /* failable calls so far, by function */

/* A failure of a call on stream s: while s is captured, it invalidates the capture. */
cudaError_t fail_on(cudaStream_t s, cudaError_t e)
{
    if (s && s->recording) s->invalidated = true;
    return fail(e);
}

cudaError_t alloc(blocks &set, void **p, size_t bytes)
{
    *p = nullptr;
    if (!bytes) return cudaSuccess;
    /* 256-byte alignment, as cudaMalloc's; never more than the emulated device holds */
    if (bytes > ((size_t)1 << 32)) return fail(cudaErrorMemoryAllocation);
    void *q = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!q) return fail(cudaErrorMemoryAllocation);
    std::lock_guard<std::mutex> hold(lock);
    set[(const unsigned char *)q] = bytes;
    *p = q;
    return cudaSuccess;
}

cudaError_t release(blocks &set, void *p)
{
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> hold(lock);
    if (!set.erase((const unsigned char *)p)) return fail(cudaErrorInvalidValue);
    free(p);
    return cudaSuccess;
}

/* Whether [p, p + bytes) lies in one block of device memory: the device side of a copy must (a
 * host pointer there would be a crash or garbage on a GPU). */
bool on_device(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> hold(lock);
    const unsigned char *c = (const unsigned char *)p;
    auto it = device_blocks.upper_bound(c);
    if (it == device_blocks.begin()) return false;
    --it;
    return c >= it->first && bytes <= it->second && (size_t)(c - it->first) <= it->second - bytes;
}

/* A copy's device sides checked; cudaErrorInvalidValue with a message if one is not device
 * memory. */
cudaError_t check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    if (!bytes) return cudaSuccess;
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice,
         src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((dst_dev && !on_device(dst, bytes)) || (src_dev && !on_device(src, bytes))) {
        fprintf(stderr,
                "cuda_emu: a copy of %zu bytes (kind %d) whose device side is not device "
                "memory\n",
                bytes, (int)kind);
        return fail(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

} // namespace

/* Calls `from` .. `last` (counted from now) of function `call` (NULL: any) fail, or from `from`
 * on every call (sticky); -1: none. */
static void fail_calls(const char *call, long from, long last, bool by_site, bool sticky)
{
    std::lock_guard<std::mutex> hold(fault_lock);
    fault_at = from;
    fault_last = last;
    fault_calls = 0;
    fault_by_site = by_site;
    fault_sites.clear();
    fault_name = call ? call : "";
    fault_sticks = sticky;
    fault_stuck = false;
}

extern "C" __attribute__((visibility("default"))) void cuda_emu_fail_call(long n, int by_site)
{
    fail_calls(nullptr, n, n, by_site != 0, false);
}

extern "C" __attribute__((visibility("default"))) void cuda_emu_fail_named(const char *call,
                                                                           long n, long times)
{
    fail_calls(call, n, n < 0 || times < 1 ? -1 : n + times - 1, false, false);
}

extern "C" __attribute__((visibility("default"))) void cuda_emu_fault_from(const char *call, long n)
{
    fail_calls(call, n, n, false, true);
}

extern "C" __attribute__((visibility("default"))) long cuda_emu_calls(const char *call)
{
    std::lock_guard<std::mutex> hold(fault_lock);
    auto it = call_counts.find(call);
    return it == call_counts.end() ? 0 : it->second;
}

extern "C" __attribute__((visibility("default"))) long cuda_emu_failures(void)
{
    std::lock_guard<std::mutex> hold(fault_lock);
    return fault_count;
}

extern "C" __attribute__((visibility("default"))) long cuda_emu_live(void)
{
    std::lock_guard<std::mutex> hold(lock);
    return (long)(device_blocks.size() + host_blocks.size()) + live_objects.load();
}

namespace cuda_emu
{
cudaError_t injected(cudaError_t e, const char *call, const void *site)
{
    std::lock_guard<std::mutex> hold(fault_lock);
    auto counted = call_counts.find(call); /* no string made but for a function's first call */
    if (counted == call_counts.end())
        call_counts.emplace(call, 1);
    else
        counted->second++;
    if (fault_stuck) {
        fault_count++;
        return fail(cudaErrorIllegalAddress);
    }
    if (fault_at < 0) return cudaSuccess;
    if (!fault_name.empty() && fault_name != call) return cudaSuccess;
    if (fault_by_site && !fault_sites.insert(site).second) return cudaSuccess;
    long k = fault_calls++;
    if (k < fault_at || k > fault_last) return cudaSuccess;
    if (k == fault_last) fault_at = -1;
    fault_count++;
    fault_stuck = fault_sticks;
    if (fault_stuck) e = cudaErrorIllegalAddress;
    /* CUDA_EMU_FAULT_TRACE=1: which call failed, and where (for addr2line -f -e the module) */
    static const bool trace =
        getenv("CUDA_EMU_FAULT_TRACE") && !strcmp(getenv("CUDA_EMU_FAULT_TRACE"), "1");
    if (trace) {
        Dl_info info;
        uintptr_t at = (uintptr_t)site;
        if (dladdr(site, &info) && info.dli_fbase) at -= (uintptr_t)info.dli_fbase;
        fprintf(stderr, "cuda_emu: injected %s into %s, called at %#lx\n", cudaGetErrorName(e),
                call, (unsigned long)at);
    }
    return fail(e);
}
} // namespace cuda_emu

/* the same for a call on stream s (a capture it fails invalidates) */
#define INJECT_ON(s, error)                                                                        \
    do {                                                                                           \
        if (cudaError_t e_ = cuda_emu::injected(error, __func__, __builtin_return_address(0)))     \
            return fail_on(s, e_);                                                                 \
    } while (0)

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureImplicit:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorUnknown: return "unknown error";
    }
    return "unknown error";
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorUnknown: return "cudaErrorUnknown";
    }
    return "cudaErrorUnknown";
}

cudaError_t cudaGetLastError()
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

/* The emulated driver's CUDA version: CUDA_EMU_DRIVER=none, 0; =old, 11.8; else 12.8. */
static int driver_version()
{
    const char *d = getenv("CUDA_EMU_DRIVER");
    return d && !strcmp(d, "none") ? 0 : d && !strcmp(d, "old") ? 11080 : 12080;
}

/* The emulated devices' compute capabilities (major * 10 + minor): CUDA_EMU_DEVICES, such as
 * "7.5,9.0", or one device of 9.0. */
static std::vector<int> parse_devices()
{
    std::vector<int> cc;
    const char *d = getenv("CUDA_EMU_DEVICES");
    for (const char *p = d && *d ? d : "9.0"; *p;) {
        int major = 0, minor = 0, len = 0;
        if (sscanf(p, "%d.%d%n", &major, &minor, &len) != 2) {
            fprintf(stderr, "cuda_emu: CUDA_EMU_DEVICES=%s: not a list like 7.5,9.0\n", d);
            abort();
        }
        cc.push_back(major * 10 + minor);
        p += len;
        if (*p == ',') p++;
    }
    return cc;
}

/* The same, read once (cudaSetDevice comes before every operation of the backend). */
static const std::vector<int> &devices()
{
    static const std::vector<int> cc = parse_devices();
    return cc;
}

cudaError_t cudaGetDeviceCount(int *n)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    *n = 0;
    if (driver_version() < 12080) return fail(cudaErrorInsufficientDriver);
    *n = (int)devices().size();
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int dev)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    return dev >= 0 && dev < (int)devices().size() ? cudaSuccess : fail(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    const std::vector<int> &cc = devices();
    if (dev < 0 || dev >= (int)cc.size()) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cuda_emu");
    p->totalGlobalMem = (size_t)4 << 30;
    p->sharedMemPerBlockOptin = cuda_emu::SMEM_OPTIN;
    p->major = cc[dev] / 10;
    p->minor = cc[dev] % 10;
    p->multiProcessorCount = 2;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v)
{
    *v = 12080;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v)
{
    *v = driver_version();
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = nullptr;
    CUDA_EMU_INJECT(cudaErrorMemoryAllocation);
    return alloc(device_blocks, p, bytes);
}

cudaError_t cudaFree(void *p)
{
    return release(device_blocks, p);
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    *p = nullptr;
    CUDA_EMU_INJECT(cudaErrorMemoryAllocation);
    return alloc(host_blocks, p, bytes);
}

cudaError_t cudaFreeHost(void *p)
{
    return release(host_blocks, p);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    /* the legacy stream: refused while this thread captures (cudaStreamCaptureModeThreadLocal) */
    if (capturing) return fail(cudaErrorStreamCaptureImplicit);
    if (cudaError_t e = check_copy(dst, src, bytes, kind)) return e;
    if (bytes) memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s)
{
    INJECT_ON(s, cudaErrorUnknown);
    if (cudaError_t e = check_copy(dst, src, bytes, kind)) return e;
    return cuda_emu::submit(s, [=] {
        if (bytes) memcpy(dst, src, bytes);
    });
}

cudaError_t cudaMemsetAsync(void *dst, int v, size_t bytes, cudaStream_t s)
{
    INJECT_ON(s, cudaErrorUnknown);
    if (cudaError_t e = check_copy(dst, nullptr, bytes, cudaMemcpyHostToDevice)) return e;
    return cuda_emu::submit(s, [=] { memset(dst, v, bytes); });
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    *s = nullptr;
    CUDA_EMU_INJECT(cudaErrorMemoryAllocation);
    *s = new cuda_emu_stream{nullptr, false};
    live_objects++;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    if (s->recording) capturing--;
    delete s->recording;
    delete s;
    live_objects--;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    if (s->recording) return fail(cudaErrorStreamCaptureUnsupported);
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned)
{
    *e = nullptr;
    CUDA_EMU_INJECT(cudaErrorMemoryAllocation);
    *e = new cuda_emu_event{0};
    live_objects++;
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    delete e;
    live_objects--;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    INJECT_ON(s, cudaErrorUnknown);
    if (!e || !s) return fail(cudaErrorInvalidResourceHandle);
    return s->recording ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    return e ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode)
{
    CUDA_EMU_INJECT(cudaErrorUnknown);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    if (s->recording) return fail(cudaErrorStreamCaptureUnsupported);
    s->recording = new std::vector<std::function<void()>>;
    capturing++;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    *g = nullptr;
    if (!s || !s->recording) return fail(cudaErrorInvalidValue);
    /* the capture ends, whatever happens (an injected failure included) */
    capturing--;
    std::vector<std::function<void()>> *work = s->recording;
    bool invalidated = s->invalidated;
    s->recording = nullptr;
    s->invalidated = false;
    cudaError_t e = cuda_emu::injected(cudaErrorUnknown, __func__, __builtin_return_address(0));
    if (!e && invalidated) e = fail(cudaErrorStreamCaptureInvalidated);
    if (!e) {
        *g = new cuda_emu_graph{std::move(*work)};
        live_objects++;
    }
    delete work;
    return e;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long)
{
    *e = nullptr;
    CUDA_EMU_INJECT(cudaErrorMemoryAllocation);
    *e = new cuda_emu_graph{g->work};
    live_objects++;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    if (!g) return fail(cudaErrorInvalidResourceHandle);
    delete g;
    live_objects--;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e)
{
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    delete e;
    live_objects--;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s)
{
    INJECT_ON(s, cudaErrorUnknown);
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    for (const std::function<void()> &w : e->work) {
        cudaError_t r = cuda_emu::submit(s, w);
        if (r) return r;
    }
    return cudaSuccess;
}

namespace cuda_emu
{

cudaError_t submit(cudaStream_t s, std::function<void()> work)
{
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    if (s->recording)
        s->recording->push_back(std::move(work));
    else
        work();
    return cudaSuccess;
}

cudaFuncAttributes &func_attributes(const void *fn)
{
    std::lock_guard<std::mutex> hold(lock);
    auto it = attributes.find(fn);
    if (it == attributes.end()) {
        /* compiled for sm_90 (so dependent launches are taken); no static shared memory is
         * counted (the emulator's __shared__ variables are function statics) */
        cudaFuncAttributes a = {};
        a.binaryVersion = a.ptxVersion = 90;
        a.maxDynamicSharedSizeBytes = 48 * 1024;
        it = attributes.emplace(fn, a).first;
    }
    return it->second;
}

cudaError_t launch(const void *fn, const cudaLaunchConfig_t *cfg, std::function<void()> body)
{
    INJECT_ON(cfg->stream, cudaErrorUnknown);
    const dim3 g = cfg->gridDim, b = cfg->blockDim;
    unsigned threads = b.x * b.y * b.z;
    if (!g.x || !g.y || !g.z || g.y > 65535 || g.z > 65535 || !threads || threads > 1024 ||
        b.y != 1 || b.z != 1 || threads % 32)
        return fail_on(cfg->stream, cudaErrorInvalidValue);
    int allowed = func_attributes(fn).maxDynamicSharedSizeBytes;
    if (cfg->dynamicSmemBytes > (size_t)allowed) {
        fprintf(stderr,
                "cuda_emu: a launch asks %zu bytes of dynamic shared memory, the "
                "function allows %d\n",
                cfg->dynamicSmemBytes, allowed);
        return fail_on(cfg->stream, cudaErrorInvalidValue);
    }
    return submit(cfg->stream, [g, b, body] { run(g, b, body); });
}

} // namespace cuda_emu
