/*
 * The CUDA backend: a module (libbonsai-cuda.so) that the library loads with dlopen, so the core
 * never links the CUDA runtime. It exports one function, bonsai_backend_module(), returning the
 * backend table of lib/backend.h.
 *
 * An instance is a device and a stream. Activations and KV caches are device memory; weights are
 * uploaded once per device when a model's first session is created there (Q1_0 repacked, see
 * kernels.cuh) and shared by the model's sessions on that device. Every CUDA call is checked:
 * a failure becomes BONSAI_ERR_BACKEND (BONSAI_ERR_NO_MEMORY for allocations) with the call and
 * CUDA's message, never a crash.
 */
#include "decode.cuh"
#include "flash.cuh"
#include "sample.cuh"

extern "C" {
#include "backend.h"
}

#ifdef BSI_CUDA_EMU /* on the CPU, for tests (tests/cuda_emu) */
#include "cuda_emu_runtime.h"
#else
#include <cuda_runtime.h>
#endif

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utility>

using namespace bsi_cuda;

static const bsi_module_host *host;

static bonsai_status failf(bonsai_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bonsai_status failf(bonsai_status status, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return host ? host->fail(status, msg) : status;
}

static bonsai_status cuda_fail(cudaError_t e, const char *what)
{
    (void)cudaGetLastError(); /* clear a sticky-free error so later calls can go on */
    return failf(e == cudaErrorMemoryAllocation ? BONSAI_ERR_NO_MEMORY : BONSAI_ERR_BACKEND,
                 "cuda: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

#define CU(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) return cuda_fail(e_, #call);                                        \
    } while (0)

/* A step's inputs, uploaded together before each decode step (the graph reads them):
 * tok[DEC_MAX_SEQ], pos[DEC_MAX_SEQ], then kc[n_layer][n_seq] and vc[n_layer][n_seq]. */
struct dec_graph {
    const bsi_decode_model *m; /* what it was captured for */
    uint32_t kv_type;
    cudaGraphExec_t exec;
};

/* The fused decode step's buffers (for the model last decoded), made on first use for the
 * sequences of that step and grown with larger steps: a session that only ever steps alone keeps
 * one row of logits, not DEC_MAX_SEQ (~39 MB at 151,669 tokens). */
struct dec_state {
    const bsi_decode_model *m;
    uint32_t cap; /* sequences the buffers hold: a power of two, at most DEC_MAX_SEQ */
    float *x, *q, *k, *v, *h, *part;
    float *logits; /* [cap][n_vocab]: the graph's output, copied to the caller's buffer */
    qact qa, qb; /* quantized activations: qa the normed x; qb the attention output, then g */
    unsigned *counter;
    double *freq;
    float rope_m;
    unsigned char *in_dev, *in_host; /* in_host: pinned */
    size_t in_bytes;
    cudaEvent_t in_done; /* the last upload of in_host finished */
    dec_graph graphs[DEC_MAX_SEQ + 1];
    int wave[DG_MAX_NT][3]; /* dgemv STORE, SILU of 1 .. 8 tokens: the blocks of one full wave */
};

/* An fp16 copy of an operation's fp32 output y (n values), exactly what to_half would make of it,
 * left by the operation itself for a tensor-core GEMM that may take y as its input next: rmsnorm
 * (not in place) and a prompt's attention in xh, the SiLU GEMM in gh. It serves the next operation
 * called through this instance's table only (seq), as any other may have written y in between.
 * Another instance of the device writing y in between (copy may cross instances) would go
 * unseen: lib/ never does, as a copy is made only of a session's own activations, and a forward
 * pass never ends with an operation that makes one. */
struct half_copy {
    const float *y;
    int64_t n;
    const __half *h;
    unsigned long long seq;
};

struct cuda_backend {
    bsi_backend base;
    int device;
    int n_sm;
    size_t smem_optin; /* the most shared memory a block may have */
    bool fused, graphs; /* BONSAI_CUDA_FUSED, BONSAI_CUDA_GRAPH (default on) */
    bool pdl;           /* the decode step's kernels as programmatic dependent launches */
    bool prefetch;      /* BONSAI_CUDA_PREFETCH: their weights and cache rows asked of L2 first */
    int capture_oom;    /* decode-step captures in a row that ran out of memory */
    dec_state dec;
    void *samp; /* device: sampling jobs, then their results */
    size_t samp_cap;
    unsigned char *samp_host; /* the same, pinned host memory */
    size_t samp_host_cap;
    cudaStream_t stream;
    int32_t *ids; /* device copies of a batch's token ids / positions */
    int32_t *pos;
    size_t ids_cap, pos_cap;
    __half *xh; /* a prompt's activations in fp16 for the tensor-core GEMM */
    size_t xh_cap;
    __half *gh; /* the SiLU GEMM's output in fp16 (its input is in xh) */
    size_t gh_cap;
    bool half_copies;       /* BONSAI_CUDA_HALF_COPY (default on) */
    bool wgmma;             /* the prompt GEMMs on wgmma (BONSAI_CUDA_WGMMA=1, sm_90, checked) */
    int gemm_tokens;        /* BONSAI_CUDA_GEMM_TOKENS: 64 or 128 tokens per GEMM block; 0 auto */
    int fa_split;           /* BONSAI_CUDA_FA_SPLIT: attn_prefill's splits, 1..16; 0 auto */
    float *fa_part;         /* attn_prefill's partial rows, and its counters (kept at 0) */
    size_t fa_part_cap;
    unsigned *fa_counter;
    size_t fa_counter_cap;
    unsigned long long seq; /* operations called through the table so far */
    half_copy fresh;        /* the one the last operation left, if any */
    float *tmp; /* products of matmul_add and matmul_swiglu when no GEMM takes them */
    size_t tmp_cap;
    /* the positions last staged: RoPE of q and k in every layer uses the same ones, and a copy
     * from pageable memory waits for the stream, so they are uploaded once per batch */
    int32_t *pos_host;
    int64_t pos_n;
    double *prep_freq; /* attn_prep's RoPE angles per pair, for the model's rope prep_rope */
    bsi_rope prep_rope;
    char desc[320];
};

struct bsi_weight {
    uint32_t type;
    int64_t rows, cols;
    void *data;        /* file layout (not Q1_0), device */
    uint32_t *bits;    /* Q1_0: [rows][cols / 32] */
    __half *scales;    /* Q1_0: [rows][cols / 128] */
    size_t row_bytes;  /* file layout */
};

static cuda_backend *cb(bsi_backend *be)
{
    return (cuda_backend *)be;
}

/* Makes the instance's device current on the calling thread (sessions move between threads). */
static bonsai_status use_device(cuda_backend *b)
{
    CU(cudaSetDevice(b->device));
    return BONSAI_OK;
}

#define USE(b)                                                                                     \
    do {                                                                                           \
        bonsai_status s_ = use_device(b);                                                          \
        if (s_) return s_;                                                                         \
    } while (0)

/* Why cudaGetDeviceCount failed, in a user's terms: the runtime says "insufficient driver" both
 * where no driver is installed and where it is too old for the runtime linked in. */
static void no_device_reason(cudaError_t e, char *reason, size_t size)
{
    int drv = 0, rt = 0;
    (void)cudaDriverGetVersion(&drv); /* 0 without a driver */
    (void)cudaRuntimeGetVersion(&rt);
    if (e == cudaErrorInsufficientDriver && drv == 0)
        snprintf(reason, size, "no NVIDIA driver (libcuda.so.1 is not installed or does not load)");
    else if (e == cudaErrorInsufficientDriver)
        snprintf(reason, size,
                 "the NVIDIA driver supports CUDA %d.%d, older than the CUDA %d.%d runtime this "
                 "module was built with",
                 drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    else if (e == cudaErrorNoDevice)
        snprintf(reason, size, "no CUDA device");
    else
        snprintf(reason, size, "no usable CUDA driver or device: %s", cudaGetErrorString(e));
    (void)cudaGetLastError();
}

/* Usable when some device has compute capability 8.0 or newer: *device is the first such one,
 * which "auto" and "cuda" take (a machine's device 0 may be an older card that drives a
 * display). */
static int cuda_probe(int *device, char *reason, size_t size)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        no_device_reason(e, reason, size);
        return 0;
    }
    if (n == 0) {
        snprintf(reason, size, "no CUDA device");
        return 0;
    }
    /* the reason lists the devices, in case none will do */
    int len = snprintf(reason, size, "this build needs compute capability 8.0 or newer;");
    for (int i = 0; i < n; i++) {
        cudaDeviceProp prop;
        e = cudaGetDeviceProperties(&prop, i);
        if (e != cudaSuccess) {
            snprintf(reason, size, "cudaGetDeviceProperties(%d): %s", i, cudaGetErrorString(e));
            (void)cudaGetLastError();
            return 0;
        }
        if (prop.major >= 8) {
            *device = i;
            reason[0] = 0;
            return 100;
        }
        if (len >= 0 && (size_t)len < size)
            len += snprintf(reason + len, size - (size_t)len, "%s cuda:%d %s has %d.%d",
                            i ? "," : "", i, prop.name, prop.major, prop.minor);
    }
    return 0;
}

/* Whether a switch of the environment (BONSAI_CUDA_GRAPH...) is on: unset, or anything but 0. */
static bool env_on(const char *name)
{
    const char *v = getenv(name);
    return !v || strcmp(v, "0");
}

/* Whether the decode step's kernels go out as programmatic dependent launches (dep_enter in
 * kernels.cuh): a GPU of compute capability 9.0 or newer running code built for 9.0 or newer
 * (code built for older GPUs, such as the compute_80 PTX JIT-compiled for a newer GPU, has no
 * wait in it, so it must never be launched that way), a runtime and driver that capture such
 * launches into graphs (12.3), and BONSAI_CUDA_PDL not 0. */
static bool pdl_usable(const cudaDeviceProp *prop)
{
    if (!env_on("BONSAI_CUDA_PDL")) return false;
    int rt = 0, drv = 0;
    cudaFuncAttributes fa;
    if (prop->major < 9 || cudaRuntimeGetVersion(&rt) != cudaSuccess ||
        cudaDriverGetVersion(&drv) != cudaSuccess || rt < 12030 || drv < 12030 ||
        cudaFuncGetAttributes(&fa, (const void *)quant_rows) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return fa.binaryVersion >= 90 && fa.ptxVersion >= 90;
}

/* Stops using dependent launches on this instance (they failed: the driver or the capture would
 * not take them), with a warning. */
static void pdl_off(cuda_backend *b, const char *why)
{
    b->pdl = false;
    char *tag = strstr(b->desc, ", PDL)");
    if (tag) memmove(tag, tag + 5, strlen(tag + 5) + 1);
    char msg[256];
    snprintf(msg, sizeof msg, "cuda: %s; going on without programmatic dependent launches", why);
    if (host) host->log(BONSAI_LOG_WARN, msg);
}

/* Launches kernel k with smem bytes of dynamic shared memory on the backend's stream: a plain
 * launch, or (pdl) a programmatic dependent launch, for which k must call dep_enter first. */
template <typename... P, typename... A>
static cudaError_t launch_as(cuda_backend *b, bool pdl, void (*k)(P...), dim3 grid, dim3 block,
                             size_t smem, A &&...args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = b->stream;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, std::forward<A>(args)...);
}

/* A plain launch of k on the backend's stream. */
template <typename... P, typename... A>
static cudaError_t launch(cuda_backend *b, void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                          A &&...args)
{
    return launch_as(b, false, k, grid, block, smem, std::forward<A>(args)...);
}

/* A launch of k (which calls dep_enter first) as a programmatic dependent launch when the backend
 * uses them. If such a launch is refused and a plain one is not, plain ones from then on; if both
 * fail (a fault left by an earlier kernel, a bad configuration), dependent launches were not the
 * cause and stay on. */
template <typename... P, typename... A>
static cudaError_t dep_launch(cuda_backend *b, void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                              A &&...args)
{
    cudaError_t e = launch_as(b, b->pdl, k, grid, block, smem, args...);
    if (e == cudaSuccess || !b->pdl) return e;
    (void)cudaGetLastError();
    cudaError_t plain = launch_as(b, false, k, grid, block, smem, args...);
    if (plain != cudaSuccess) return plain;
    char why[160];
    snprintf(why, sizeof why, "a dependent launch failed (%s)", cudaGetErrorString(e));
    pdl_off(b, why);
    return cudaSuccess;
}

static void cuda_destroy(bsi_backend *be);
static bool wgmma_check(cuda_backend *b, char *why, size_t len);

static bonsai_status cuda_create(const bsi_backend_config *cfg, bsi_backend **out)
{
    *out = NULL;
    int n = 0;
    CU(cudaGetDeviceCount(&n));
    int dev = cfg ? cfg->device : 0;
    if (dev < 0 || dev >= n)
        return failf(BONSAI_ERR_UNSUPPORTED, "cuda:%d: there %s %d CUDA device%s", dev,
                     n == 1 ? "is" : "are", n, n == 1 ? "" : "s");
    cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, dev));
    if (prop.major < 8)
        return failf(BONSAI_ERR_UNSUPPORTED,
                     "cuda:%d: %s has compute capability %d.%d; this build needs 8.0 or newer", dev,
                     prop.name, prop.major, prop.minor);
    cuda_backend *b = (cuda_backend *)calloc(1, sizeof *b);
    if (!b) return failf(BONSAI_ERR_NO_MEMORY, "out of memory creating the CUDA backend");
    b->device = dev;
    bonsai_status st = use_device(b);
    if (!st) {
        cudaError_t e = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking);
        if (e != cudaSuccess) st = cuda_fail(e, "cudaStreamCreateWithFlags");
    }
    if (st) {
        free(b);
        return st;
    }
    b->n_sm = prop.multiProcessorCount;
    b->smem_optin = prop.sharedMemPerBlockOptin;
    b->fused = env_on("BONSAI_CUDA_FUSED");
    b->graphs = env_on("BONSAI_CUDA_GRAPH");
    b->prefetch = env_on("BONSAI_CUDA_PREFETCH");
    b->half_copies = env_on("BONSAI_CUDA_HALF_COPY");
    const char *env = getenv("BONSAI_CUDA_GEMM_TOKENS");
    b->gemm_tokens = env && (!strcmp(env, "64") || !strcmp(env, "128")) ? atoi(env) : 0;
    env = getenv("BONSAI_CUDA_FA_SPLIT");
    b->fa_split = env ? atoi(env) : 0;
    b->fa_split = b->fa_split < 0 ? 0 : b->fa_split > FA_MAX_SPLIT ? FA_MAX_SPLIT : b->fa_split;
    b->pdl = pdl_usable(&prop);
    const char *wg = getenv("BONSAI_CUDA_WGMMA");
    if (wg && !strcmp(wg, "1")) {
        char why[200];
        b->wgmma = prop.major == 9 && wgmma_check(b, why, sizeof why);
        /* an error a kernel leaves (a fault) is sticky, so later calls return it again: an
         * instance on that device could do nothing */
        cudaError_t e = b->wgmma ? cudaSuccess : cudaStreamSynchronize(b->stream);
        if (e != cudaSuccess) {
            cuda_destroy(&b->base);
            return failf(BONSAI_ERR_BACKEND,
                         "cuda:%d: the wgmma self-check (BONSAI_CUDA_WGMMA=1) left the device "
                         "unusable: %s",
                         dev, cudaGetErrorString(e));
        }
        if (!b->wgmma && host) {
            char msg[280];
            snprintf(msg, sizeof msg,
                     "cuda: BONSAI_CUDA_WGMMA=1, but the prompt GEMMs stay on "
                     "mma.sync: %s",
                     prop.major == 9 ? why : "wgmma needs sm_90");
            host->log(BONSAI_LOG_WARN, msg);
        }
    }
    snprintf(b->desc, sizeof b->desc, "cuda:%d %s (sm_%d%d, %.0f GiB%s%s)", dev, prop.name,
             prop.major, prop.minor, (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024),
             b->wgmma ? ", wgmma" : "", b->pdl ? ", PDL" : "");
    b->base.vt = NULL; /* set by the entry point's table below */
    *out = &b->base;
    return BONSAI_OK;
}

static void dec_free(cuda_backend *b);

static void cuda_destroy(bsi_backend *be)
{
    if (!be) return;
    cuda_backend *b = cb(be);
    /* frees are tried whatever fails before them: a device in an error state may refuse them too,
     * but nothing is left behind that could have been freed */
    (void)cudaSetDevice(b->device);
    dec_free(b);
    if (b->stream) {
        cudaStreamSynchronize(b->stream);
        cudaStreamDestroy(b->stream);
    }
    cudaFree(b->ids);
    cudaFree(b->pos);
    cudaFree(b->xh);
    cudaFree(b->gh);
    cudaFree(b->tmp);
    cudaFree(b->samp);
    cudaFree(b->prep_freq);
    cudaFree(b->fa_part);
    cudaFree(b->fa_counter);
    cudaFreeHost(b->samp_host);
    (void)cudaGetLastError();
    free(b->pos_host);
    free(b);
}

static const char *cuda_describe(const bsi_backend *be)
{
    return ((const cuda_backend *)be)->desc;
}

static bonsai_status cuda_alloc(bsi_backend *be, size_t bytes, void **out)
{
    *out = NULL;
    USE(cb(be));
    if (!bytes) return BONSAI_OK;
    cudaError_t e = cudaMalloc(out, bytes);
    if (e != cudaSuccess) {
        *out = NULL;
        (void)cudaGetLastError();
        return failf(BONSAI_ERR_NO_MEMORY, "cuda: cannot allocate %zu bytes of device memory: %s",
                     bytes, cudaGetErrorString(e));
    }
    return BONSAI_OK;
}

static void cuda_free(bsi_backend *be, void *ptr)
{
    if (!ptr) return;
    (void)cudaSetDevice(cb(be)->device); /* tried whatever fails, as in cuda_destroy */
    cudaStreamSynchronize(cb(be)->stream);
    cudaFree(ptr);
    (void)cudaGetLastError();
}

/* Host to device on the instance's stream, waited for: complete on the device when it returns, so
 * any stream may read it after. (A plain cudaMemcpy from pageable memory returns once the data is
 * staged, its DMA possibly still under way, and it is not ordered with the instances'
 * non-blocking streams.) */
static cudaError_t upload_now(cuda_backend *b, void *dst, const void *src, size_t bytes)
{
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, b->stream);
    return e == cudaSuccess ? cudaStreamSynchronize(b->stream) : e;
}

static bonsai_status cuda_upload(bsi_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (!bytes) return BONSAI_OK;
    CU(upload_now(b, dst, src, bytes));
    return BONSAI_OK;
}

static bonsai_status cuda_download(bsi_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (!bytes) return BONSAI_OK;
    CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, b->stream));
    CU(cudaStreamSynchronize(b->stream));
    return BONSAI_OK;
}

/* Device to device, queued on the stream (the caller syncs before another instance reads). */
static bonsai_status cuda_copy(bsi_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (!bytes) return BONSAI_OK;
    CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, b->stream));
    return BONSAI_OK;
}

/* ---- weights ---- */

static void weight_release(bsi_weight *w)
{
    if (!w) return;
    cudaFree(w->data);
    cudaFree(w->bits);
    cudaFree(w->scales);
    (void)cudaGetLastError();
    free(w);
}

static bonsai_status cuda_weight_create(bsi_backend *be, const bsi_matrix_desc *d, bsi_weight **out)
{
    cuda_backend *b = cb(be);
    *out = NULL;
    USE(b);
    int64_t block = d->type == T_Q1_0 ? QK : d->type == T_Q8_0 ? 32 : 1;
    if (d->type != T_F32 && d->type != T_F16 && d->type != T_BF16 && d->type != T_Q8_0 &&
        d->type != T_Q1_0)
        return failf(BONSAI_ERR_UNSUPPORTED_TYPE, "tensor '%s': type %u on CUDA", d->name,
                     d->type);
    if (d->rows < 1 || d->cols < 1 || d->cols % block || d->rows > INT32_MAX ||
        d->cols > INT32_MAX)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "tensor '%s': %lld x %lld is not a valid matrix",
                     d->name, (long long)d->rows, (long long)d->cols);
    bsi_weight *w = (bsi_weight *)calloc(1, sizeof *w);
    if (!w) return failf(BONSAI_ERR_NO_MEMORY, "out of memory");
    w->type = d->type;
    w->rows = d->rows;
    w->cols = d->cols;
    bonsai_status st = BONSAI_OK;
    if (d->type == T_Q1_0) {
        /* repack on the host: 18-byte blocks -> sign words and scales */
        int64_t nb = d->cols / QK, words = d->cols / 32;
        size_t nbits = (size_t)d->rows * (size_t)words, nsc = (size_t)d->rows * (size_t)nb;
        uint32_t *hb = (uint32_t *)malloc(nbits * sizeof *hb);
        uint16_t *hs = (uint16_t *)malloc(nsc * sizeof *hs);
        const uint8_t *src = (const uint8_t *)d->data;
        if (!hb || !hs) {
            st = failf(BONSAI_ERR_NO_MEMORY, "tensor '%s': out of memory repacking it", d->name);
        } else {
            for (int64_t r = 0; r < d->rows; r++)
                for (int64_t k = 0; k < nb; k++) {
                    const uint8_t *blk = src + ((size_t)r * (size_t)nb + (size_t)k) * 18;
                    hs[(size_t)r * nb + k] = (uint16_t)(blk[0] | blk[1] << 8);
                    for (int c = 0; c < 4; c++) {
                        const uint8_t *q = blk + 2 + 4 * c;
                        hb[(size_t)r * words + k * 4 + c] =
                            (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 |
                            (uint32_t)q[3] << 24;
                    }
                }
            cudaError_t e = cudaMalloc((void **)&w->bits, nbits * sizeof *hb);
            if (e == cudaSuccess) e = cudaMalloc((void **)&w->scales, nsc * sizeof *hs);
            if (e == cudaSuccess) e = upload_now(b, w->bits, hb, nbits * sizeof *hb);
            if (e == cudaSuccess) e = upload_now(b, w->scales, hs, nsc * sizeof *hs);
            if (e != cudaSuccess) st = cuda_fail(e, "uploading a Q1_0 matrix");
        }
        free(hb);
        free(hs);
    } else {
        w->row_bytes = d->type == T_F32                          ? (size_t)d->cols * 4
                       : d->type == T_F16 || d->type == T_BF16 ? (size_t)d->cols * 2
                                                                : (size_t)(d->cols / 32) * 34;
        size_t bytes = w->row_bytes * (size_t)d->rows;
        cudaError_t e = cudaMalloc(&w->data, bytes);
        if (e == cudaSuccess) e = upload_now(b, w->data, d->data, bytes);
        if (e != cudaSuccess) st = cuda_fail(e, "uploading a matrix");
    }
    if (st) {
        weight_release(w);
        return st;
    }
    *out = w;
    return BONSAI_OK;
}

static void cuda_weight_free(bsi_backend *be, bsi_weight *w)
{
    if (!w) return;
    (void)cudaSetDevice(cb(be)->device); /* tried whatever fails, as in cuda_destroy */
    weight_release(w);
}

static wview view(const bsi_weight *w)
{
    wview v;
    v.type = w->type;
    v.rows = w->rows;
    v.cols = w->cols;
    v.data = (const uint8_t *)w->data;
    v.bits = w->bits;
    v.scales = w->scales;
    v.row_bytes = w->row_bytes;
    return v;
}

/* ---- operations ---- */

static unsigned grid_for(int64_t n, int threads)
{
    int64_t g = (n + threads - 1) / threads;
    return (unsigned)(g < 1 ? 1 : g > 65535 ? 65535 : g);
}

/* A device buffer of the instance holding at least `bytes` (grown on demand; the old one is freed
 * once the stream's queued work, which may read it, is done). */
static bonsai_status grow(cuda_backend *b, void **buf, size_t *cap, size_t bytes)
{
    if (bytes <= *cap) return BONSAI_OK;
    CU(cudaStreamSynchronize(b->stream));
    cudaFree(*buf);
    *buf = NULL;
    *cap = 0;
    size_t want = bytes < 4096 ? 4096 : bytes;
    CU(cudaMalloc(buf, want));
    *cap = want;
    return BONSAI_OK;
}

/* Tokens of one launch of the per-token attention kernel: grid.y's limit, 65,535. The emulated
 * module (tests/cuda_emu) is built with a small one, so that its tests run the loop over such
 * launches that only prompts of more than 65,535 tokens reach on a GPU. */
#ifndef ATT_GRID_Y
#define ATT_GRID_Y 65535
#endif
static_assert(ATT_GRID_Y >= 1 && ATT_GRID_Y <= 65535, "grid.y");

/* The most tokens of one matrix product (the GEMM's grid: 65,535 blocks of 64 tokens). */
constexpr int64_t MAX_PRODUCT_TOK = 65535 * 64;

/* Where an operation writing n_rows rows of n values puts its fp16 copy (half_copy): *buf, grown
 * to fit, when those rows may be a tensor-core GEMM's input next (a prompt: more than
 * GEMV_MAX_TOK rows, n a multiple of 128 as the GEMM's columns) and BONSAI_CUDA_HALF_COPY is not
 * 0; else NULL. The caller records it in b->fresh once its kernel is launched. */
static bonsai_status half_out(cuda_backend *b, __half **buf, size_t *cap, int64_t n_rows,
                              int64_t n, __half **out)
{
    *out = NULL;
    if (!b->half_copies || n_rows <= GEMV_MAX_TOK || n_rows > MAX_PRODUCT_TOK || n % QK)
        return BONSAI_OK;
    bonsai_status st = grow(b, (void **)buf, cap, (size_t)(n_rows * n) * sizeof(__half));
    if (!st) *out = *buf;
    return st;
}

/* Copies n host int32 values to a device buffer of the instance (grown on demand). */
static bonsai_status stage_ints(cuda_backend *b, int32_t **buf, size_t *cap, const int32_t *src,
                                int64_t n)
{
    size_t bytes = (size_t)n * sizeof(int32_t);
    bonsai_status st = grow(b, (void **)buf, cap, bytes);
    if (st) return st;
    CU(cudaMemcpyAsync(*buf, src, bytes, cudaMemcpyHostToDevice, b->stream));
    /* pageable source: staged when the call returns (src may change), on the device in stream
     * order */
    return BONSAI_OK;
}

typedef void (*gemm_fn)(gemm_mats, const __half *, int, int);

/* The prompt GEMM for 128 tokens a block (wide) or 64, on wgmma or mma.sync (gemm.cuh). */
static gemm_fn gemm_kernel(bool wgmma, bool wide, int out)
{
    static const gemm_fn fn[2][2][3] = {
        {{q1_gemm_mma<4, GEMM_STORE>, q1_gemm_mma<4, GEMM_ADD>, q1_gemm_mma<4, GEMM_SILU>},
         {q1_gemm_mma<8, GEMM_STORE>, q1_gemm_mma<8, GEMM_ADD>, q1_gemm_mma<8, GEMM_SILU>}},
        {{q1_gemm_wgmma<64, GEMM_STORE>, q1_gemm_wgmma<64, GEMM_ADD>, q1_gemm_wgmma<64, GEMM_SILU>},
         {q1_gemm_wgmma<128, GEMM_STORE>, q1_gemm_wgmma<128, GEMM_ADD>,
          q1_gemm_wgmma<128, GEMM_SILU>}},
    };
    static_assert(wgmma_smem(128) <= 48 * 1024, "no opt-in for more shared memory needed");
    return fn[wgmma][wide][out];
}

/* Whether q1_gemm_wgmma gives q1_gemm_mma's sums on this device, the condition for using it: a
 * build without sm_90a code has empty wgmma kernels, and a misread layout shows here rather than
 * in a model's output. Random matrices of 3 row tiles and 8 k-tiles, times 200 tokens (a partial
 * token tile at each width): two matrices stored, and the SiLU product of the same two. On a
 * difference or a failed call: false, with why. */
static bool wgmma_check(cuda_backend *b, char *why, size_t len)
{
    enum { ROWS = 192, COLS = 512, NT = 200, WORDS = ROWS * COLS / 32, NB = ROWS * COLS / QK };
    const size_t in_bytes = 2 * (WORDS * 4 + NB * 2) + NT * COLS * 2, y_n = 2 * NT * ROWS;
    /* in: two matrices' bits, their scales, x; out: y of both matrices, by mma then wgmma */
    unsigned char *hb = (unsigned char *)malloc(in_bytes + 2 * y_n * sizeof(float)), *db = NULL;
    if (!hb) return snprintf(why, len, "out of memory for the self-check"), false;
    uint32_t *bits = (uint32_t *)hb;
    __half *scales = (__half *)(bits + 2 * WORDS), *x = scales + 2 * NB;
    float *hy = (float *)(hb + in_bytes);
    uint64_t r = 0x9E3779B97F4A7C15ull;
    auto next = [&r] {
        return (uint32_t)((r = r * 6364136223846793005ull + 1442695040888963407ull) >> 33);
    };
    for (int i = 0; i < 2 * WORDS; i++) bits[i] = next() ^ next() << 16;
    for (int i = 0; i < 2 * NB; i++)
        scales[i] = __float2half(0.01f + (float)(next() % 1000) * 1e-4f);
    for (int i = 0; i < NT * COLS; i++)
        x[i] = __float2half((float)(next() % 2001) / 1000.0f - 1.0f);
    cudaError_t e = cudaMalloc((void **)&db, in_bytes + 2 * y_n * sizeof(float));
    /* on the instance's stream: a cudaMemcpy from pageable memory may return before the data
     * is on the device, and the non-blocking stream would not wait for it */
    if (e == cudaSuccess) e = cudaMemcpyAsync(db, hb, in_bytes, cudaMemcpyHostToDevice, b->stream);
    /* the pointers into db are formed only once it exists (arithmetic on NULL is undefined) */
    const __half *dx = NULL;
    float *dy = NULL;
    gemm_mats m = {};
    m.n = 2;
    if (e == cudaSuccess) {
        dx = (const __half *)(db + in_bytes - NT * COLS * sizeof(__half));
        dy = (float *)(db + in_bytes);
        for (int k = 0; k < 2; k++) {
            m.bits[k] = (const uint32_t *)db + k * WORDS;
            m.scales[k] = (const __half *)((const uint32_t *)db + 2 * WORDS) + k * NB;
            m.rows[k] = ROWS;
            m.tile0[k + 1] = m.tile0[k] + ROWS / GEMM_BM;
        }
    }
    const char *what = NULL;
    for (int wide = 0; wide < 2 && e == cudaSuccess && !what; wide++)
        for (int silu = 0; silu < 2 && e == cudaSuccess && !what; silu++) {
            dim3 grid(silu ? ROWS / 32 : (unsigned)m.tile0[2],
                      wide ? (NT + 127) / 128 : (NT + 63) / 64);
            for (int wg = 0; wg < 2 && e == cudaSuccess; wg++) {
                m.y[0] = dy + wg * y_n;
                m.y[1] = m.y[0] + NT * ROWS;
                e = cudaMemsetAsync(m.y[0], 0, y_n * sizeof(float), b->stream);
                if (e == cudaSuccess)
                    e = launch(b, gemm_kernel(wg, wide, silu ? GEMM_SILU : GEMM_STORE), grid,
                               dim3(GEMM_THREADS), wg ? wgmma_smem(wide ? 128 : 64) : 0, m, dx,
                               (int)COLS, (int)NT);
            }
            if (e == cudaSuccess)
                e = cudaMemcpyAsync(hy, dy, 2 * y_n * sizeof(float), cudaMemcpyDeviceToHost,
                                    b->stream);
            if (e == cudaSuccess) e = cudaStreamSynchronize(b->stream);
            for (size_t i = 0; i < (silu ? y_n / 2 : y_n) && e == cudaSuccess && !what; i++)
                if (!(fabsf(hy[i] - hy[y_n + i]) <= 1e-3f * (1.0f + fabsf(hy[i]))))
                    what = silu ? "SiLU" : "stored";
            if (what)
                snprintf(why, len, "its %s sums (%d tokens a block) differ from mma.sync's", what,
                         wide ? 128 : 64);
        }
    if (e != cudaSuccess) {
        snprintf(why, len, "its self-check failed: %s", cudaGetErrorString(e));
        (void)cudaGetLastError();
    }
    cudaFree(db);
    free(hb);
    return e == cudaSuccess && !what;
}

/* y_i = W_i x for n (<= GEMM_MAX_MATS) Q1_0 matrices of one width and more than GEMV_MAX_TOK
 * tokens, on tensor cores (gemm.cuh): x converted to fp16 once, then one launch for them all.
 * out GEMM_ADD: y_i += W_i x; GEMM_SILU: y_0 = silu(W_0 x) * (W_1 x) (n = 2, the same shape). */
static bonsai_status q1_gemm(cuda_backend *b, int out, int n, const bsi_weight *const *w,
                             const float *x, float *const *y, int64_t n_tok)
{
    int64_t cols = w[0]->cols;
    const half_copy &f = b->fresh;
    const __half *xh = f.h;
    if (!(xh && f.seq + 1 == b->seq && f.y == x && f.n == n_tok * cols)) {
        size_t bytes = (size_t)(n_tok * cols) * sizeof(__half);
        bonsai_status st = grow(b, (void **)&b->xh, &b->xh_cap, bytes);
        if (st) return st;
        int64_t n4 = n_tok * cols / 4;
        CU(launch(b, to_half, dim3(grid_for(n4, 256)), dim3(256), 0, x, b->xh, n4));
        xh = b->xh;
    }
    __half *yh = NULL; /* SILU: the output in fp16 too, for the down projection */
    if (out == GEMM_SILU && xh != b->gh) {
        bonsai_status st = half_out(b, &b->gh, &b->gh_cap, n_tok, w[0]->rows, &yh);
        if (st) return st;
    }

    gemm_mats m = {};
    m.yh = yh;
    m.n = n;
    for (int i = 0; i < n; i++) {
        m.bits[i] = w[i]->bits;
        m.scales[i] = w[i]->scales;
        m.y[i] = out == GEMM_SILU ? y[0] : y[i];
        m.rows[i] = (int)w[i]->rows;
        m.tile0[i + 1] = m.tile0[i] + (int)((w[i]->rows + GEMM_BM - 1) / GEMM_BM);
    }
    unsigned tiles = out == GEMM_SILU ? (unsigned)((w[0]->rows + 31) / 32) : (unsigned)m.tile0[n];
    /* 128 tokens per block when that still gives every SM two blocks, else 64 */
    bool wide = b->gemm_tokens ? b->gemm_tokens == 128
                               : tiles * ((n_tok + 127) / 128) >= 2 * (int64_t)b->n_sm;
    dim3 grid(tiles, (unsigned)(wide ? (n_tok + 127) / 128 : (n_tok + 63) / 64));
    CU(launch(b, gemm_kernel(b->wgmma, wide, out), grid, dim3(GEMM_THREADS),
              b->wgmma ? wgmma_smem(wide ? 128 : 64) : 0, m, xh, (int)cols, (int)n_tok));
    if (yh) b->fresh = {y[0], n_tok * w[0]->rows, yh, b->seq};
    return BONSAI_OK;
}

static bonsai_status too_many_tokens(int64_t n_tok)
{
    return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: matmul of %lld tokens", (long long)n_tok);
}

/* Whether a prompt's product of these Q1_0 matrices (one width) goes to the tensor-core GEMM. */
static bool gemm_takes(int n, const bsi_weight *const *w, int64_t n_tok)
{
    bool ok = n >= 1 && n <= GEMM_MAX_MATS && n_tok > GEMV_MAX_TOK && n_tok <= MAX_PRODUCT_TOK;
    for (int i = 0; i < n && ok; i++) ok = w[i]->type == T_Q1_0 && w[i]->cols == w[0]->cols;
    return ok;
}

static bonsai_status cuda_get_rows(bsi_backend *be, const bsi_weight *w, const int32_t *ids,
                                   float *y, int64_t n_tok)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_tok < 1) return BONSAI_OK;
    for (int64_t t = 0; t < n_tok; t++)
        if (ids[t] < 0 || ids[t] >= w->rows)
            return failf(BONSAI_ERR_OUT_OF_RANGE, "token id %d outside 0..%lld", (int)ids[t],
                         (long long)(w->rows - 1));
    if (n_tok > INT32_MAX)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: get_rows of %lld tokens",
                     (long long)n_tok);
    bonsai_status st = stage_ints(b, &b->ids, &b->ids_cap, ids, n_tok);
    if (st) return st;
    /* a block row per token up to 16 per multiprocessor, each striding over the tokens */
    int64_t rows = n_tok < 16 * (int64_t)b->n_sm ? n_tok : 16 * (int64_t)b->n_sm;
    dim3 grid(grid_for(w->cols, 256), (unsigned)(rows > 65535 ? 65535 : rows));
    CU(launch(b, get_rows, grid, dim3(256), 0, view(w), b->ids, y, (int)n_tok));
    return BONSAI_OK;
}

static bonsai_status cuda_rmsnorm(bsi_backend *be, const float *x, const float *weight, float *y,
                                  int64_t n, int64_t n_rows, float eps)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_rows < 1) return BONSAI_OK;
    if (n_rows > INT32_MAX || n > INT32_MAX)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: rmsnorm of %lld rows", (long long)n_rows);
    __half *yh = NULL; /* not for a norm in place (q and k heads): no GEMM takes those */
    bonsai_status st = x == y ? BONSAI_OK : half_out(b, &b->xh, &b->xh_cap, n_rows, n, &yh);
    if (st) return st;
    CU(launch(b, rmsnorm, dim3((unsigned)n_rows), dim3(256), 0, x, weight, y, (int)n, eps, yh));
    if (yh) b->fresh = {y, n_rows * n, yh, b->seq};
    return BONSAI_OK;
}

/* The model's RoPE with YaRN's ramp bounds and magnitude scale (FORMAT.md section 3), as the CPU's
 * bsi_rope_table computes them. */
static rope_params make_rope(const bsi_rope *r)
{
    rope_params p;
    p.n_rot = (int)r->n_rot;
    p.neox = (int)r->neox;
    p.freq_base = r->freq_base;
    p.factor = r->yarn_factor;
    p.yarn = r->yarn_factor > 1.0f;
    p.lo = p.hi = 0;
    p.m = 1;
    if (p.yarn) {
        const double pi = 3.14159265358979323846, ln_base = log((double)r->freq_base);
        double corr_fast = (double)r->n_rot *
                           log((double)r->yarn_orig_ctx / (r->yarn_beta_fast * 2 * pi)) /
                           (2 * ln_base);
        double corr_slow = (double)r->n_rot *
                           log((double)r->yarn_orig_ctx / (r->yarn_beta_slow * 2 * pi)) /
                           (2 * ln_base);
        p.lo = fmax(0.0, floor(corr_fast));
        p.hi = fmin((double)(r->n_rot - 1), ceil(corr_slow));
        p.m = 1.0 + 0.1 * log((double)r->yarn_factor);
    }
    return p;
}

/* The angle of each pair per position (rope_freq for i < n_rot / 2; YaRN's blend folded in), in a
 * new device array *out: what head_prep rotates by. On failure *out is NULL: no table, rather
 * than one that may be half written. */
static cudaError_t rope_table(cuda_backend *b, const bsi_rope *r, double **out)
{
    rope_params rp = make_rope(r);
    size_t n_pair = r->n_rot / 2 ? r->n_rot / 2 : 1;
    double *freq = (double *)calloc(n_pair, sizeof *freq);
    *out = NULL;
    if (!freq) return cudaErrorMemoryAllocation;
    for (size_t i = 0; i < r->n_rot / 2; i++) freq[i] = rope_freq(rp, (int)i);
    cudaError_t e = cudaMalloc((void **)out, n_pair * sizeof *freq);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(*out, freq, n_pair * sizeof *freq, cudaMemcpyHostToDevice, b->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(b->stream); /* freq is freed next */
    free(freq);
    if (e != cudaSuccess) {
        cudaFree(*out);
        *out = NULL;
    }
    return e;
}

static bonsai_status check_rope(const bsi_rope *r, int64_t head_dim)
{
    if (r->n_rot > head_dim || r->n_rot % 2)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "rope: %u rotated dimensions of %lld", r->n_rot,
                     (long long)head_dim);
    return BONSAI_OK;
}

/* The tokens' positions (host memory) to b->pos, unless they are the ones staged last: RoPE of q
 * and k in every layer uses the same ones. */
static bonsai_status stage_pos(cuda_backend *b, const int32_t *pos, int64_t n_tok)
{
    if (n_tok == b->pos_n && !memcmp(pos, b->pos_host, (size_t)n_tok * sizeof *pos))
        return BONSAI_OK;
    b->pos_n = 0;
    int32_t *keep = (int32_t *)realloc(b->pos_host, (size_t)n_tok * sizeof *pos);
    if (!keep) return failf(BONSAI_ERR_NO_MEMORY, "out of memory");
    b->pos_host = keep;
    bonsai_status st = stage_ints(b, &b->pos, &b->pos_cap, pos, n_tok);
    if (st) return st;
    memcpy(b->pos_host, pos, (size_t)n_tok * sizeof *pos);
    b->pos_n = n_tok;
    return BONSAI_OK;
}

static bonsai_status cuda_rope(bsi_backend *be, float *x, const int32_t *pos, int64_t n_tok,
                               int64_t n_heads, int64_t head_dim, const bsi_rope *r)
{
    cuda_backend *b = cb(be);
    USE(b);
    bonsai_status st = check_rope(r, head_dim);
    if (st) return st;
    if (n_tok < 1 || n_heads < 1) return BONSAI_OK;
    if (n_tok > INT32_MAX || n_heads > 65535)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: rope of %lld x %lld heads",
                     (long long)n_tok, (long long)n_heads);
    if ((st = stage_pos(b, pos, n_tok))) return st;
    rope_params p = make_rope(r);
    dim3 grid((unsigned)n_tok, (unsigned)n_heads);
    CU(launch(b, rope, grid, dim3(64), 0, x, b->pos, (int)n_heads, (int)head_dim, p));
    return BONSAI_OK;
}

static bonsai_status cuda_softmax(bsi_backend *be, float *x, int64_t n, int64_t n_rows)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_rows < 1) return BONSAI_OK;
    CU(launch(b, softmax, dim3((unsigned)n_rows), dim3(256), 0, x, (int)n));
    return BONSAI_OK;
}

static bonsai_status cuda_silu_mul(bsi_backend *be, const float *gate, const float *up, float *y,
                                   int64_t n)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n < 1) return BONSAI_OK;
    CU(launch(b, silu_mul, dim3(grid_for(n, 256)), dim3(256), 0, gate, up, y, n));
    return BONSAI_OK;
}

static bonsai_status cuda_add(bsi_backend *be, const float *a, const float *bb, float *y, int64_t n)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n < 1) return BONSAI_OK;
    CU(launch(b, add, dim3(grid_for(n, 256)), dim3(256), 0, a, bb, y, n));
    return BONSAI_OK;
}

static bonsai_status cuda_matmul(bsi_backend *be, const bsi_weight *w, const float *x, float *y,
                                 int64_t n_tok)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_tok < 1) return BONSAI_OK;
    if (n_tok > MAX_PRODUCT_TOK) return too_many_tokens(n_tok);
    int rows = (int)w->rows, cols = (int)w->cols;
    if (w->type == T_Q1_0 && n_tok > GEMV_MAX_TOK)
        return q1_gemm(b, GEMM_STORE, 1, &w, x, &y, n_tok);
    if (w->type == T_Q1_0) {
        int rows_per_block = GEMV_WARPS * GEMV_ROWS;
        dim3 grid((unsigned)((rows + rows_per_block - 1) / rows_per_block));
        dim3 block(GEMV_WARPS * WARP);
        switch (n_tok) {
#define CASE(n)                                                                                    \
    case n:                                                                                        \
        CU(launch(b, (q1_gemv<n>), grid, block, 0, w->bits, w->scales, x, y, rows, cols));         \
        break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
        default: break;
        }
    } else {
        int warps = 8;
        dim3 grid((unsigned)((rows + warps - 1) / warps));
        CU(launch(b, dense_matmul, grid, dim3(warps * WARP), 0, view(w), x, y, (int)n_tok));
    }
    return BONSAI_OK;
}

/* q, k, v or gate, up of a prompt: one conversion of x and one GEMM launch; otherwise one by one */
static bonsai_status cuda_matmul_multi(bsi_backend *be, int n, const bsi_weight *const *w,
                                       const float *x, float *const *y, int64_t n_tok)
{
    cuda_backend *b = cb(be);
    if (gemm_takes(n, w, n_tok)) {
        USE(b);
        return q1_gemm(b, GEMM_STORE, n, w, x, y, n_tok);
    }
    for (int i = 0; i < n; i++) {
        bonsai_status st = cuda_matmul(be, w[i], x, y[i], n_tok);
        if (st) return st;
    }
    return BONSAI_OK;
}

/* y += W x: for a prompt, the residual added by the GEMM itself; otherwise the product into
 * scratch, then add. */
static bonsai_status cuda_matmul_add(bsi_backend *be, const bsi_weight *w, const float *x,
                                     float *y, int64_t n_tok)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_tok < 1) return BONSAI_OK;
    if (n_tok > MAX_PRODUCT_TOK) return too_many_tokens(n_tok);
    if (gemm_takes(1, &w, n_tok)) return q1_gemm(b, GEMM_ADD, 1, &w, x, &y, n_tok);
    int64_t n = n_tok * w->rows;
    bonsai_status st = grow(b, (void **)&b->tmp, &b->tmp_cap, (size_t)n * sizeof(float));
    if (!st) st = cuda_matmul(be, w, x, b->tmp, n_tok);
    if (!st) st = cuda_add(be, y, b->tmp, y, n);
    return st;
}

/* y = silu(W_gate x) * (W_up x): for a prompt, in the GEMM's epilogue (neither product is
 * written out); otherwise both products into scratch, then silu_mul. */
static bonsai_status cuda_matmul_swiglu(bsi_backend *be, const bsi_weight *gate,
                                        const bsi_weight *up, const float *x, float *y,
                                        int64_t n_tok)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (gate->rows != up->rows || gate->cols != up->cols)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: gate %lldx%lld and up %lldx%lld differ",
                     (long long)gate->rows, (long long)gate->cols, (long long)up->rows,
                     (long long)up->cols);
    if (n_tok < 1) return BONSAI_OK;
    if (n_tok > MAX_PRODUCT_TOK) return too_many_tokens(n_tok);
    const bsi_weight *w[2] = {gate, up};
    if (gemm_takes(2, w, n_tok)) return q1_gemm(b, GEMM_SILU, 2, w, x, &y, n_tok);
    /* the gate product into y, the up product into scratch */
    int64_t n = n_tok * gate->rows;
    bonsai_status st = grow(b, (void **)&b->tmp, &b->tmp_cap, (size_t)n * sizeof(float));
    float *out[2] = {y, b->tmp};
    if (!st) st = cuda_matmul_multi(be, 2, w, x, out, n_tok);
    if (!st) st = cuda_silu_mul(be, y, b->tmp, y, n);
    return st;
}

/* The caches (bsi_kv_shape) hold each position's kv heads together: [n_ctx][n_head_kv * head_dim]
 * values, fp16 or Q8_0 blocks of 32, as the attention kernels read them. */
static bonsai_status cuda_kv_store(bsi_backend *be, const bsi_kv_shape *kv, void *k_cache,
                                   void *v_cache, const float *k, const float *v, int64_t n_tok,
                                   int64_t pos)
{
    cuda_backend *b = cb(be);
    USE(b);
    const int64_t dim = kv->n_head_kv * kv->head_dim;
    char why[128];
    if (bsi_kv_check(kv, pos, n_tok, why, sizeof why))
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: kv_store: %s", why);
    if (n_tok < 1) return BONSAI_OK;
    if (kv->type == T_Q8_0) {
        /* a warp per 32 values of k or v, up to 8 blocks per multiprocessor, striding */
        unsigned blocks = grid_for(2 * n_tok * (dim / 32) * WARP, 256);
        if (blocks > 8u * (unsigned)b->n_sm) blocks = 8u * (unsigned)b->n_sm;
        CU(launch(b, kv_store_q8_0, dim3(blocks), dim3(256), 0, (uint8_t *)k_cache,
                  (uint8_t *)v_cache, k, v, (int)n_tok, (int)dim, (int)pos));
    } else {
        CU(launch(b, kv_store_f16, dim3(grid_for(n_tok * dim, 256)), dim3(256), 0,
                  (__half *)k_cache, (__half *)v_cache, k, v, (int)n_tok, (int)dim, (int)pos));
    }
    return BONSAI_OK;
}

/* attn_prep (backend.h): one attn_prep launch (decode.cuh) when the heads suit it (at most
 * ATT_MAX_HD values; a multiple of 32 for a Q8_0 cache), else the operations one by one. */
static bonsai_status cuda_attn_prep(bsi_backend *be, const bsi_attn_prep *a)
{
    cuda_backend *b = cb(be);
    USE(b);
    const int64_t n = a->n_tok, hd = a->head_dim;
    bonsai_status st = check_rope(a->rope, hd);
    if (st) return st;
    if ((a->q_norm == NULL) != (a->k_norm == NULL) || (a->k_cache == NULL) != (a->v_cache == NULL))
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: attn_prep: q and k norms, or caches, "
                                                  "given one without the other");
    char why[128];
    if (a->k_cache && (a->kv->n_head_kv != a->n_head_kv || a->kv->head_dim != hd))
        return failf(BONSAI_ERR_INVALID_ARGUMENT,
                     "cuda: attn_prep: caches of %lld heads of %lld values for %lld of %lld",
                     (long long)a->kv->n_head_kv, (long long)a->kv->head_dim,
                     (long long)a->n_head_kv, (long long)hd);
    if (a->k_cache && n > 0 && bsi_kv_check(a->kv, a->pos[0], n, why, sizeof why))
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: attn_prep: %s", why);
    if (n < 1) return BONSAI_OK;
    for (int64_t t = 1; a->k_cache && t < n; t++)
        if (a->pos[t] != a->pos[0] + t)
            return failf(BONSAI_ERR_INVALID_ARGUMENT,
                         "cuda: attn_prep: token %lld at position %d stored after position %d",
                         (long long)t, (int)a->pos[t], (int)a->pos[0]);
    bool q8 = a->k_cache && a->kv->type == T_Q8_0;
    int64_t per_tok = a->n_head + a->n_head_kv * (a->k_cache ? 2 : 1);
    if (hd > ATT_MAX_HD || n * per_tok > INT32_MAX) {
        if (a->q_norm) {
            if ((st = cuda_rmsnorm(be, a->q, a->q_norm, a->q, hd, n * a->n_head, a->eps)) ||
                (st = cuda_rmsnorm(be, a->k, a->k_norm, a->k, hd, n * a->n_head_kv, a->eps)))
                return st;
        }
        if ((st = cuda_rope(be, a->q, a->pos, n, a->n_head, hd, a->rope)) ||
            (st = cuda_rope(be, a->k, a->pos, n, a->n_head_kv, hd, a->rope)))
            return st;
        if (!a->k_cache) return BONSAI_OK;
        return cuda_kv_store(be, a->kv, a->k_cache, a->v_cache, a->k, a->v, n, a->pos[0]);
    }
    if ((st = stage_pos(b, a->pos, n))) return st;
    /* the angles per pair, made again only for another model's RoPE (after the stream's work,
     * which may still read them) */
    if (!b->prep_freq || memcmp(&b->prep_rope, a->rope, sizeof *a->rope)) {
        CU(cudaStreamSynchronize(b->stream));
        cudaFree(b->prep_freq);
        CU(rope_table(b, a->rope, &b->prep_freq));
        b->prep_rope = *a->rope;
    }
    rope_dev rp = {b->prep_freq, (int)a->rope->n_rot, (int)a->rope->neox,
                   (float)make_rope(a->rope).m};
    int64_t blocks = (n * per_tok + PREP_WARPS - 1) / PREP_WARPS;
    unsigned grid = (unsigned)(blocks < 65535 ? blocks : 65535); /* the warps stride beyond */
    CU(launch(b, q8 ? attn_prep<true> : attn_prep<false>, dim3(grid), dim3(PREP_WARPS * WARP), 0,
              a->q, a->k, a->v, a->q_norm, a->k_norm, a->eps, rp, (const int32_t *)b->pos,
              a->k_cache, a->v_cache, (int)n, (int)a->n_head, (int)a->n_head_kv, (int)hd));
    return BONSAI_OK;
}

/* How many blocks share each (head, query tile)'s cache tiles in attn_prefill (n_tiles: the most
 * any of them attends to): enough to give every SM a block when the grid would leave some idle
 * (a few query tiles after a long cache), the longest keeping at least 4 tiles a split; 1 when
 * the grid fills the GPU already. BONSAI_CUDA_FA_SPLIT=N forces N (1: never; at most 16, and at
 * most n_tiles), whatever the grid. */
static int fa_splits(const cuda_backend *b, int64_t blocks, int64_t n_tiles)
{
    int64_t n = b->fa_split ? b->fa_split : blocks >= b->n_sm ? 1 : (b->n_sm + blocks - 1) / blocks;
    if (!b->fa_split && n > n_tiles / 4) n = n_tiles / 4;
    if (n > n_tiles) n = n_tiles;
    if (n > FA_MAX_SPLIT) n = FA_MAX_SPLIT;
    return n < 1 ? 1 : (int)n;
}

/* attn_prefill's buffers for n_split blocks per (head, query tile) of `blocks`: whether they are
 * there. A failure (out of memory, the counters' clearing) is no error: the caller splits
 * nothing then. */
static bool fa_buffers(cuda_backend *b, int64_t blocks, int n_split, int64_t head_dim)
{
    size_t part = (size_t)(blocks * n_split) * FA_BQ * (size_t)(head_dim + 2) * sizeof(float);
    size_t cnt = (size_t)blocks * sizeof(unsigned);
    if (grow(b, (void **)&b->fa_part, &b->fa_part_cap, part)) return false;
    if (cnt <= b->fa_counter_cap) return true; /* all 0: each launch leaves them so */
    if (grow(b, (void **)&b->fa_counter, &b->fa_counter_cap, cnt)) return false;
    if (cudaMemsetAsync(b->fa_counter, 0, b->fa_counter_cap, b->stream) == cudaSuccess) return true;
    (void)cudaGetLastError();
    cudaFree(b->fa_counter); /* none, rather than counters that are not 0 */
    b->fa_counter = NULL;
    b->fa_counter_cap = 0;
    return false;
}

static bonsai_status cuda_attention(bsi_backend *be, const bsi_kv_shape *kv, const float *q,
                                    const void *k_cache, const void *v_cache, float *out,
                                    int64_t n_tok, int64_t pos, int64_t n_head, float scale)
{
    cuda_backend *b = cb(be);
    USE(b);
    const int64_t n_head_kv = kv->n_head_kv, head_dim = kv->head_dim;
    const uint32_t kv_type = kv->type;
    if (n_head_kv < 1 || n_head % n_head_kv)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "attention: %lld heads over %lld kv heads",
                     (long long)n_head, (long long)n_head_kv);
    if (head_dim > ATT_MAX_HD)
        return failf(BONSAI_ERR_UNSUPPORTED, "cuda attention: heads of %lld values (at most %d)",
                     (long long)head_dim, ATT_MAX_HD);
    char why[128];
    if (bsi_kv_check(kv, pos, n_tok, why, sizeof why))
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: attention: %s", why);
    if (n_tok < 1) return BONSAI_OK;
    bool q8 = kv_type == T_Q8_0;
    /* a prompt on tensor cores (flash.cuh). Its grid is n_head x ceil(n_tok / 64) blocks, each
     * walking the whole cache: a few tokens after a long cache keep more SMs busy in the
     * per-token kernel below, hence the threshold */
    if (n_tok >= FA_MIN_TOK && (head_dim == 64 || head_dim == 128)) {
        int64_t n_qt = (n_tok + FA_BQ - 1) / FA_BQ, blocks = n_head * n_qt;
        int n_split = fa_splits(b, blocks, (pos + n_tok - 1) / FA_BK + 1);
        if (n_split > 1 && !fa_buffers(b, blocks, n_split, head_dim))
            n_split = 1; /* without its buffers, the launch that needs none */
        dim3 grid((unsigned)n_head, (unsigned)n_qt, (unsigned)n_split);
        __half *oh = NULL; /* for the output projection */
        bonsai_status st = half_out(b, &b->xh, &b->xh_cap, n_tok, n_head * head_dim, &oh);
        if (st) return st;
        float *part = n_split > 1 ? b->fa_part : NULL;
        unsigned *counter = n_split > 1 ? b->fa_counter : NULL;
#define FA(hd, q8_)                                                                                \
    CU(launch(b, (attn_prefill<hd, q8_>), grid, dim3(FA_THREADS), 0, q, k_cache, v_cache, out, oh, \
              (int)pos, (int)n_tok, (int)n_head, (int)n_head_kv, scale, part, counter))
        if (head_dim == 64) {
            if (q8) FA(64, true); else FA(64, false);
        } else {
            if (q8) FA(128, true); else FA(128, false);
        }
#undef FA
        if (oh) b->fresh = {out, n_tok * n_head * head_dim, oh, b->seq};
        return BONSAI_OK;
    }
    /* a block per (head, token): grids of at most ATT_GRID_Y tokens (grid.y's limit) */
    for (int64_t t0 = 0; t0 < n_tok; t0 += ATT_GRID_Y) {
        int64_t nt = n_tok - t0 < ATT_GRID_Y ? n_tok - t0 : ATT_GRID_Y, at = t0 * n_head * head_dim;
        dim3 grid((unsigned)n_head, (unsigned)nt);
        CU(launch(b, q8 ? attention<true> : attention<false>, grid, dim3(ATT_WARPS * WARP), 0,
                  q + at, k_cache, v_cache, out + at, (int)(pos + t0), (int)n_head,
                  (int)n_head_kv, (int)head_dim, scale));
    }
    return BONSAI_OK;
}

/* ---- the fused decode step (decode.cuh) ---- */

typedef void (*dg_kernel)(dg_args);
#define DG_ROW(nt) {dgemv<nt, DG_STORE>, dgemv<nt, DG_ADD>, dgemv<nt, DG_SILU>}
static const dg_kernel dg_fn[DG_MAX_NT][3] = {DG_ROW(1), DG_ROW(2), DG_ROW(3), DG_ROW(4),
                                              DG_ROW(5), DG_ROW(6), DG_ROW(7), DG_ROW(8)};
#undef DG_ROW
/* dmma by dm_wn / 4: n-tiles of 8 tokens 2 (9-16 tokens), 4 (17-32), 8 (33-64) */
#define DM_ROW(wn) {dmma<wn, DG_STORE>, dmma<wn, DG_ADD>, dmma<wn, DG_SILU>}
static const dg_kernel dm_fn[3][3] = {DM_ROW(2), DM_ROW(4), DM_ROW(8)};
#undef DM_ROW
static_assert(DEC_MAX_SEQ <= 64, "dmma takes up to 64 tokens");

static void dec_free(cuda_backend *b)
{
    dec_state *d = &b->dec;
    if (b->stream) cudaStreamSynchronize(b->stream);
    for (int i = 0; i <= DEC_MAX_SEQ; i++)
        if (d->graphs[i].exec) cudaGraphExecDestroy(d->graphs[i].exec);
    void *bufs[] = {d->x,    d->q,    d->k,    d->v,    d->h,     d->part,
                    d->qa.q, d->qa.d, d->qb.q, d->qb.d, d->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    cudaFree(d->counter);
    cudaFree(d->freq);
    cudaFree(d->in_dev);
    cudaFreeHost(d->in_host);
    if (d->in_done) cudaEventDestroy(d->in_done);
    (void)cudaGetLastError();
    memset(d, 0, sizeof *d);
}

/* The widest input of a dgemv of the model: n_embd, n_head * head_dim or n_ff. */
static int dec_max_cols(const bsi_decode_model *m)
{
    uint32_t c = m->n_embd, q = m->n_head * m->head_dim;
    if (q > c) c = q;
    if (m->n_ff > c) c = m->n_ff;
    return (int)c;
}

/* Splits of the attention over positions: enough blocks for two per multiprocessor. */
static int dec_split(const cuda_backend *b, const bsi_decode_model *m, uint32_t n_seq)
{
    int heads = (int)(m->n_head * n_seq), want = (2 * b->n_sm + heads - 1) / heads;
    return want < 1 ? 1 : want > ATT_MAX_SPLIT ? ATT_MAX_SPLIT : want;
}

/* The most (sequence, split) pairs of any step of up to cap sequences: the attention partials'
 * rows per head. */
static size_t dec_max_splits(const cuda_backend *b, const bsi_decode_model *m, uint32_t cap)
{
    size_t most = 0;
    for (uint32_t n = 1; n <= cap; n++) {
        size_t k = (size_t)n * (size_t)dec_split(b, m, n);
        if (k > most) most = k;
    }
    return most;
}

static bool cuda_decode_ok(bsi_backend *be, const bsi_decode_model *m, uint32_t n_seq,
                           uint32_t kv_type)
{
    cuda_backend *b = cb(be);
    if (!b->fused || n_seq < 1 || n_seq > DEC_MAX_SEQ) return false;
    if (kv_type != T_F16 && kv_type != T_Q8_0) return false;
    if (m->head_dim > ATT_MAX_HD || m->head_dim % 2 || m->rope.n_rot > m->head_dim ||
        m->rope.n_rot % 2 || m->n_head_kv < 1 || m->n_head % m->n_head_kv)
        return false;
    if (m->head_dim % 32) return false; /* the attention output is quantized per head */
    /* dgemv's copy of x, and SILU's static gs (cuda_decode's setup makes room up to this) */
    if (dg_smem(DG_MAX_NT, (int)m->n_embd) + DG_MAX_NT * 32 * sizeof(float) > b->smem_optin)
        return false;
    for (uint32_t l = 0; l < m->n_layer; l++) {
        const bsi_decode_layer *L = &m->layers[l];
        const bsi_weight *w[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
            if (w[i]->type != T_Q1_0) return false;
    }
    return true;
}

/* The decode buffers for model m and steps of up to n sequences (n <= DEC_MAX_SEQ); made again,
 * the graphs with them, when they hold fewer. */
static bonsai_status dec_init(cuda_backend *b, const bsi_decode_model *m, uint32_t n)
{
    dec_state *d = &b->dec;
    if (d->m == m && n <= d->cap) return BONSAI_OK;
    uint32_t cap = 1;
    while (cap < n) cap *= 2;
    dec_free(b);
    size_t S = cap, E = m->n_embd, hd = m->head_dim, Q = (size_t)m->n_head * hd,
           KV = (size_t)m->n_head_kv * hd, C = (size_t)dec_max_cols(m);
    struct {
        void **p;
        size_t bytes;
    } want[] = {{(void **)&d->x, S * E * 4},
                {(void **)&d->q, S * Q * 4},
                {(void **)&d->k, S * KV * 4},
                {(void **)&d->v, S * KV * 4},
                {(void **)&d->h, S * E * 4},
                {(void **)&d->part, dec_max_splits(b, m, cap) * m->n_head * (hd + 2) * 4},
                {(void **)&d->qa.q, S * C},
                {(void **)&d->qa.d, S * (C / 32) * sizeof(float2)},
                {(void **)&d->qb.q, S * C},
                {(void **)&d->qb.d, S * (C / 32) * sizeof(float2)},
                {(void **)&d->logits, S * m->n_vocab * 4}};
    cudaError_t e = cudaSuccess;
    for (size_t i = 0; i < sizeof want / sizeof want[0] && e == cudaSuccess; i++)
        e = cudaMalloc(want[i].p, want[i].bytes);
    if (e == cudaSuccess) e = cudaMalloc((void **)&d->counter, S * m->n_head * sizeof(unsigned));
    if (e == cudaSuccess)
        e = cudaMemsetAsync(d->counter, 0, S * m->n_head * sizeof(unsigned), b->stream);
    if (e == cudaSuccess) e = rope_table(b, &m->rope, &d->freq);
    d->rope_m = (float)make_rope(&m->rope).m;
    d->in_bytes = 2 * DEC_MAX_SEQ * sizeof(int32_t) + 2 * (size_t)m->n_layer * S * sizeof(void *);
    if (e == cudaSuccess) e = cudaMalloc((void **)&d->in_dev, d->in_bytes);
    if (e == cudaSuccess) e = cudaMallocHost((void **)&d->in_host, d->in_bytes);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&d->in_done, cudaEventDisableTiming);
    /* dgemv STORE and SILU keep x quantized in shared memory (dg_smem). Each may have all the
     * device allows a block beyond its static shared memory (the attribute belongs to the
     * process, so it is only ever set to that most, never lowered by a smaller model), and is
     * launched as one full wave of blocks, so that each block's copy of x serves the most rows */
    const int modes[2] = {DG_STORE, DG_SILU};
    for (int nt = 1; nt <= DG_MAX_NT && e == cudaSuccess; nt++)
        for (int i = 0; i < 2 && e == cudaSuccess; i++) {
            dg_kernel fn = dg_fn[nt - 1][modes[i]];
            size_t need = dg_smem(nt, (int)E);
            cudaFuncAttributes fa;
            e = cudaFuncGetAttributes(&fa, fn);
            if (e == cudaSuccess && need + fa.sharedSizeBytes > 48 * 1024)
                e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)(b->smem_optin - fa.sharedSizeBytes));
            int per_sm = 0;
            if (e == cudaSuccess)
                e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, DG_WARPS * WARP,
                                                                  need);
            d->wave[nt - 1][modes[i]] = (per_sm > 0 ? per_sm : 1) * b->n_sm;
        }
    if (e != cudaSuccess) {
        dec_free(b);
        return cuda_fail(e, "setting up the decode step");
    }
    d->m = m;
    d->cap = cap;
    return BONSAI_OK;
}

static dg_mat dg_matrix(const bsi_weight *w, float *y)
{
    dg_mat r;
    r.bits = w->bits;
    r.scales = w->scales;
    r.y = y;
    r.rows = (int)w->rows;
    return r;
}

/* One dgemv launch of nt tokens. */
static bonsai_status dg_run(cuda_backend *b, int nt, int mode, dg_args &a)
{
    bool tc = nt > DG_MAX_NT, own_x = !tc && mode != DG_ADD;
    int threads, blocks = dg_plan(a, nt, mode, &threads);
    int cap = own_x ? b->dec.wave[nt - 1][mode] : 8 * b->n_sm;
    if (blocks > cap) blocks = cap; /* grid-stride loops take the rest */
    dg_kernel fn = tc ? dm_fn[dm_wn(nt) / 4][mode] : dg_fn[nt - 1][mode];
    size_t smem = own_x ? dg_smem(nt, a.cols) : 0;
    a.prefetch = b->prefetch ? DG_PREFETCH : 0;
    CU(dep_launch(b, fn, dim3((unsigned)blocks), dim3((unsigned)threads), smem, a));
    return BONSAI_OK;
}

/* y += W x for nt tokens of x quantized. */
static bonsai_status dg_add(cuda_backend *b, int nt, const bsi_weight *w, float *y, const qact &x)
{
    dg_args a;
    memset(&a, 0, sizeof a);
    a.m[0] = dg_matrix(w, y);
    a.n_mat = 1;
    a.x = x;
    a.cols = (int)w->cols;
    return dg_run(b, nt, DG_ADD, a);
}

/* Makes a's input rmsnorm(x) [nt][cols] with weight nw: dgemv (STORE, SILU) normalizes and
 * quantizes it in each block; for dmma quant_rows does it first, into the step's qa. */
static bonsai_status dg_input(cuda_backend *b, int nt, dg_args &a, const float *x,
                              const float *nw, float eps, int cols)
{
    a.cols = cols;
    if (nt <= DG_MAX_NT) {
        a.xf = x;
        a.nw = nw;
        a.eps = eps;
        return BONSAI_OK;
    }
    a.x = b->dec.qa;
    CU(dep_launch(b, quant_rows, dim3((unsigned)nt), dim3(QR_THREADS), 0, x, nw, eps, cols, a.x));
    return BONSAI_OK;
}

/* Launches one decode step of n sequences on the stream (eagerly, or while it is captured). */
static bonsai_status dec_launch(cuda_backend *b, const bsi_decode_model *m, uint32_t n,
                                uint32_t kv_type)
{
    float *logits = b->dec.logits;
    dec_state *d = &b->dec;
    int E = (int)m->n_embd, hd = (int)m->head_dim;
    int nh = (int)m->n_head, nkv = (int)m->n_head_kv, nt = (int)n;
    const int32_t *tok = (const int32_t *)d->in_dev, *pos = tok + DEC_MAX_SEQ;
    void *const *kc = (void *const *)(d->in_dev + 2 * DEC_MAX_SEQ * sizeof(int32_t));
    void *const *vc = kc + (size_t)m->n_layer * n;
    rope_dev rp;
    rp.freq = d->freq;
    rp.n_rot = (int)m->rope.n_rot;
    rp.neox = (int)m->rope.neox;
    rp.m = d->rope_m;
    int ns = dec_split(b, m, n);
    float scale = 1.0f / sqrtf((float)hd);
    bool q8 = kv_type == T_Q8_0;
    bonsai_status s;
#define TRY(call)                                                                                  \
    if ((s = (call))) return s
    /* a plain launch: it follows the copy of the step's inputs; every later kernel of the step
     * is a dependent launch (dep_launch) when the GPU takes them */
    CU(launch(b, get_rows, dim3(grid_for(E, 256), n), dim3(256), 0, view(m->tok_embd), tok, d->x,
              nt));
    for (uint32_t l = 0; l < m->n_layer; l++) {
        const bsi_decode_layer *L = &m->layers[l];
        /* q, k, v of the normed x */
        dg_args a;
        memset(&a, 0, sizeof a);
        a.m[0] = dg_matrix(L->wq, d->q);
        a.m[1] = dg_matrix(L->wk, d->k);
        a.m[2] = dg_matrix(L->wv, d->v);
        a.n_mat = 3;
        TRY(dg_input(b, nt, a, d->x, L->attn_norm, m->eps, E));
        TRY(dg_run(b, nt, DG_STORE, a));
        /* q/k norms, RoPE, k and v into the caches, attention: its output quantized into qb;
         * x += Wo att */
        dim3 g2((unsigned)nh, n, (unsigned)ns);
        CU(dep_launch(b, q8 ? attn_decode<true> : attn_decode<false>, g2, dim3(ATT_WARPS * WARP), 0,
                      d->q, d->k, d->v, L->q_norm, L->k_norm, m->eps, rp, kc, vc, (int)l, pos,
                      d->qb, d->part, d->counter, nt, nh, nkv, hd, scale, b->prefetch));
        TRY(dg_add(b, nt, L->wo, d->x, d->qb));
        /* g = silu(Wgate h) * (Wup h) of the normed x, quantized into qb; x += Wdown g */
        memset(&a, 0, sizeof a);
        a.m[0] = dg_matrix(L->w_gate, NULL);
        a.m[1] = dg_matrix(L->w_up, NULL);
        a.n_mat = 2;
        a.out = d->qb;
        TRY(dg_input(b, nt, a, d->x, L->ffn_norm, m->eps, E));
        TRY(dg_run(b, nt, DG_SILU, a));
        TRY(dg_add(b, nt, L->w_down, d->x, d->qb));
    }
    if (m->output->type == T_Q1_0) {
        dg_args a;
        memset(&a, 0, sizeof a);
        a.m[0] = dg_matrix(m->output, logits);
        a.n_mat = 1;
        TRY(dg_input(b, nt, a, d->x, m->output_norm, m->eps, E));
        TRY(dg_run(b, nt, DG_STORE, a));
    } else {
        CU(dep_launch(b, rmsnorm, dim3(n), dim3(256), 0, d->x, m->output_norm, d->h, E, m->eps,
                      (__half *)NULL));
        CU(dep_launch(b, dense_matmul, dim3((unsigned)((m->output->rows + 7) / 8)),
                      dim3(8 * WARP), 0, view(m->output), d->h, logits, nt));
    }
#undef TRY
    return BONSAI_OK;
}

static bonsai_status dec_replay(cuda_backend *b, const bsi_decode_model *m, uint32_t n,
                                uint32_t kv_type);

static bonsai_status cuda_decode(bsi_backend *be, const bsi_decode_model *m,
                                 const bsi_decode_seq *seqs, uint32_t n, float *logits)
{
    cuda_backend *b = cb(be);
    USE(b);
    uint32_t kv_type = seqs[0].kv.type;
    if (!cuda_decode_ok(be, m, n, kv_type))
        return failf(BONSAI_ERR_INVALID_STATE, "cuda: decode called for a step it does not take");
    bonsai_status s = dec_init(b, m, n);
    if (s) return s;
    dec_state *d = &b->dec;
    /* the step's inputs: the previous upload from the pinned buffer must be done */
    CU(cudaEventSynchronize(d->in_done));
    int32_t *tok = (int32_t *)d->in_host, *pos = tok + DEC_MAX_SEQ;
    void **kc = (void **)(d->in_host + 2 * DEC_MAX_SEQ * sizeof(int32_t));
    void **vc = kc + (size_t)m->n_layer * n;
    for (uint32_t i = 0; i < n; i++) {
        tok[i] = seqs[i].token;
        pos[i] = seqs[i].pos;
        for (uint32_t l = 0; l < m->n_layer; l++) {
            kc[(size_t)l * n + i] = seqs[i].k_cache[l];
            vc[(size_t)l * n + i] = seqs[i].v_cache[l];
        }
    }
    size_t bytes = 2 * DEC_MAX_SEQ * sizeof(int32_t) + 2 * (size_t)m->n_layer * n * sizeof(void *);
    CU(cudaMemcpyAsync(d->in_dev, d->in_host, bytes, cudaMemcpyHostToDevice, b->stream));
    CU(cudaEventRecord(d->in_done, b->stream));
    if (b->graphs)
        s = dec_replay(b, m, n, kv_type);
    else
        s = dec_launch(b, m, n, kv_type);
    if (s) return s;
    CU(cudaMemcpyAsync(logits, d->logits, (size_t)n * m->n_vocab * sizeof(float),
                       cudaMemcpyDeviceToDevice, b->stream));
    return BONSAI_OK;
}

/* The step from its graph (captured on first use for this batch size, model and cache type). */
constexpr int DEC_CAPTURE_TRIES = 8;
static bonsai_status dec_replay(cuda_backend *b, const bsi_decode_model *m, uint32_t n,
                                uint32_t kv_type)
{
    dec_graph *g = &b->dec.graphs[n];
    bonsai_status s;
    if (g->exec && (g->m != m || g->kv_type != kv_type)) {
        cudaGraphExecDestroy(g->exec);
        g->exec = NULL;
    }
    if (!g->exec) {
        bool pdl = b->pdl;
        CU(cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal));
        s = dec_launch(b, m, n, kv_type);
        cudaGraph_t graph = NULL;
        cudaError_t e = cudaStreamEndCapture(b->stream, &graph);
        if (e == cudaSuccess && !s) {
            e = cudaGraphInstantiate(&g->exec, graph, 0);
            if (e != cudaSuccess) g->exec = NULL;
        }
        if (graph) cudaGraphDestroy(graph);
        if (s || e != cudaSuccess) {
            (void)cudaGetLastError();
            /* a fault an earlier kernel left is sticky (every call returns it): not the capture's
             * doing, so nothing is turned off for it */
            cudaError_t fault = cudaStreamSynchronize(b->stream);
            if (fault != cudaSuccess) return cuda_fail(fault, "the decode step");
            char why[160];
            snprintf(why, sizeof why, "capturing the decode step failed (%s)",
                     s ? "a launch failed" : cudaGetErrorString(e));
            /* Out of memory (instantiating the graph, most likely) may pass: this step runs
             * without a graph and a later one captures again, up to DEC_CAPTURE_TRIES in a row.
             * Anything else will fail again: dependent launches, then graphs, are turned off. */
            bool oom = s ? s == BONSAI_ERR_NO_MEMORY : e == cudaErrorMemoryAllocation;
            if (oom && ++b->capture_oom < DEC_CAPTURE_TRIES) {
                char msg[256];
                snprintf(msg, sizeof msg, "cuda: %s; this step runs without its graph", why);
                if (host) host->log(BONSAI_LOG_INFO, msg);
                return dec_launch(b, m, n, kv_type);
            }
            if (pdl && !oom) { /* once more with plain launches before giving graphs up */
                if (b->pdl) pdl_off(b, why);
                return dec_replay(b, m, n, kv_type);
            }
            /* no graph: this instance launches its steps one kernel at a time from now on */
            char msg[256];
            snprintf(msg, sizeof msg, "cuda: %s; going on without graphs", why);
            if (host) host->log(BONSAI_LOG_WARN, msg);
            b->graphs = false;
            return dec_launch(b, m, n, kv_type);
        }
        g->m = m;
        g->kv_type = kv_type;
        b->capture_oom = 0;
    }
    CU(cudaGraphLaunch(g->exec, b->stream));
    return BONSAI_OK;
}

static bonsai_status cuda_sync(bsi_backend *be)
{
    cuda_backend *b = cb(be);
    USE(b);
    CU(cudaStreamSynchronize(b->stream));
    return BONSAI_OK;
}

/* ---- sampling on the device (sample.cuh) ---- */

static bonsai_status cuda_sample(bsi_backend *be, uint32_t n, const float *const *rows,
                                 uint32_t n_vocab, const bsi_sample_params *p, int32_t *tokens,
                                 float *logprobs)
{
    cuda_backend *b = cb(be);
    USE(b);
    for (uint32_t i = 0; i < n; i++) tokens[i] = -1;
    if (n < 1 || n_vocab < 1 || n_vocab > INT32_MAX) return BONSAI_OK;
    /* the jobs go up in one copy and the results come back in one, both through pinned memory
     * (the same layout on both sides: jobs, then results) */
    size_t job_bytes = (size_t)n * sizeof(sample_job), bytes = job_bytes + n * sizeof(sample_out);
    bonsai_status st = grow(b, (void **)&b->samp, &b->samp_cap, bytes);
    if (st) return st;
    if (bytes > b->samp_host_cap) {
        cudaFreeHost(b->samp_host);
        b->samp_host = NULL;
        b->samp_host_cap = 0;
        CU(cudaMallocHost((void **)&b->samp_host, bytes));
        b->samp_host_cap = bytes;
    }
    sample_job *jobs = (sample_job *)b->samp_host;
    sample_out *outs = (sample_out *)((unsigned char *)b->samp_host + job_bytes);
    for (uint32_t i = 0; i < n; i++) jobs[i] = {rows[i], make_sample_params(p[i])};
    sample_job *djobs = (sample_job *)b->samp;
    sample_out *douts = (sample_out *)((unsigned char *)b->samp + job_bytes);
    CU(cudaMemcpyAsync(djobs, jobs, job_bytes, cudaMemcpyHostToDevice, b->stream));
    CU(launch(b, sample_rows, dim3(n), dim3(SAMPLE_THREADS), 0, djobs, (int)n_vocab, douts));
    CU(cudaMemcpyAsync(outs, douts, n * sizeof(sample_out), cudaMemcpyDeviceToHost, b->stream));
    CU(cudaStreamSynchronize(b->stream)); /* also: the pinned jobs may be rewritten next call */
    for (uint32_t i = 0; i < n; i++) {
        tokens[i] = outs[i].token;
        logprobs[i] = outs[i].logprob;
    }
    return BONSAI_OK;
}

static bsi_backend_vtable table;

/* The table's entries that take an instance: each counts the call in b->seq before it does its
 * work (half_copy). */
template <auto F> struct counted;
template <typename R, typename... A, R (*F)(bsi_backend *, A...)> struct counted<F> {
    static R call(bsi_backend *be, A... a)
    {
        cb(be)->seq++;
        return F(be, a...);
    }
};

static bonsai_status cuda_create_instance(const bsi_backend_config *cfg, bsi_backend **out)
{
    bonsai_status st = cuda_create(cfg, out);
    if (!st) (*out)->vt = &table;
    return st;
}

extern "C" __attribute__((visibility("default"))) const bsi_backend_vtable *
bonsai_backend_module(const bsi_module_host *h)
{
    if (!h) return NULL;
    host = h;
    table.abi = BSI_BACKEND_ABI;
    table.name = "cuda";
    table.probe = cuda_probe;
    table.create = cuda_create_instance;
    table.destroy = cuda_destroy;
    table.describe = cuda_describe;
#define C(f) counted<f>::call
    table.alloc = C(cuda_alloc);
    table.free = C(cuda_free);
    table.upload = C(cuda_upload);
    table.download = C(cuda_download);
    table.copy = C(cuda_copy);
    table.weight_create = C(cuda_weight_create);
    table.weight_free = C(cuda_weight_free);
    table.matmul = C(cuda_matmul);
    table.matmul_multi = C(cuda_matmul_multi);
    table.get_rows = C(cuda_get_rows);
    table.rmsnorm = C(cuda_rmsnorm);
    table.rope = C(cuda_rope);
    table.softmax = C(cuda_softmax);
    table.silu_mul = C(cuda_silu_mul);
    /* BONSAI_CUDA_EPILOGUE=0: a prompt's residual adds and SiLU-multiply as separate kernels,
     * as before they were fused into the GEMM (to measure the fusion against) */
    bool fuse = env_on("BONSAI_CUDA_EPILOGUE");
    table.matmul_add = fuse ? C(cuda_matmul_add) : NULL;
    table.matmul_swiglu = fuse ? C(cuda_matmul_swiglu) : NULL;
    table.add = C(cuda_add);
    table.kv_store = C(cuda_kv_store);
    /* BONSAI_CUDA_PREP=0: a prompt's q/k norms, RoPE and KV stores as separate kernels (to
     * measure attn_prep against) */
    table.attn_prep = env_on("BONSAI_CUDA_PREP") ? C(cuda_attn_prep) : NULL;
    table.attention = C(cuda_attention);
    table.decode_ok = cuda_decode_ok;
    table.decode = C(cuda_decode);
    table.sync = C(cuda_sync);
    table.sample = C(cuda_sample);
#undef C
    return &table;
}
