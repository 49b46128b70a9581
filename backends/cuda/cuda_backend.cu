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
#include "kernels.cuh"

extern "C" {
#include "backend.h"
}

#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

struct cuda_backend {
    bsi_backend base;
    int device;
    cudaStream_t stream;
    int32_t *ids; /* device copies of a batch's token ids / positions */
    int32_t *pos;
    size_t ids_cap, pos_cap;
    /* the positions last staged: RoPE of q and k in every layer uses the same ones, and a copy
     * from pageable memory waits for the stream, so they are uploaded once per batch */
    int32_t *pos_host;
    int64_t pos_n;
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

static int cuda_probe(char *reason, size_t size)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(reason, size, "no usable CUDA driver or device: %s", cudaGetErrorString(e));
        (void)cudaGetLastError();
        return 0;
    }
    if (n == 0) {
        snprintf(reason, size, "no CUDA device");
        return 0;
    }
    cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, 0);
    if (e != cudaSuccess) {
        snprintf(reason, size, "cudaGetDeviceProperties: %s", cudaGetErrorString(e));
        return 0;
    }
    if (prop.major < 8) {
        snprintf(reason, size, "%s has compute capability %d.%d; this build needs 8.0 or newer",
                 prop.name, prop.major, prop.minor);
        return 0;
    }
    return 100;
}

static void cuda_destroy(bsi_backend *be);

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
    snprintf(b->desc, sizeof b->desc, "cuda:%d %s (sm_%d%d, %.0f GiB)", dev, prop.name, prop.major,
             prop.minor, (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024));
    b->base.vt = NULL; /* set by the entry point's table below */
    *out = &b->base;
    return BONSAI_OK;
}

static void cuda_destroy(bsi_backend *be)
{
    if (!be) return;
    cuda_backend *b = cb(be);
    if (cudaSetDevice(b->device) == cudaSuccess) {
        if (b->stream) {
            cudaStreamSynchronize(b->stream);
            cudaStreamDestroy(b->stream);
        }
        cudaFree(b->ids);
        cudaFree(b->pos);
    }
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
    if (cudaSetDevice(cb(be)->device) == cudaSuccess) {
        cudaStreamSynchronize(cb(be)->stream);
        cudaFree(ptr);
    }
    (void)cudaGetLastError();
}

static bonsai_status cuda_upload(bsi_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (!bytes) return BONSAI_OK;
    CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, b->stream));
    CU(cudaStreamSynchronize(b->stream)); /* the caller may reuse src at once */
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
            if (e == cudaSuccess)
                e = cudaMemcpy(w->bits, hb, nbits * sizeof *hb, cudaMemcpyHostToDevice);
            if (e == cudaSuccess)
                e = cudaMemcpy(w->scales, hs, nsc * sizeof *hs, cudaMemcpyHostToDevice);
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
        if (e == cudaSuccess) e = cudaMemcpy(w->data, d->data, bytes, cudaMemcpyHostToDevice);
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
    if (w && cudaSetDevice(cb(be)->device) == cudaSuccess) weight_release(w);
    (void)cudaGetLastError();
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

static bonsai_status cuda_matmul(bsi_backend *be, const bsi_weight *w, const float *x, float *y,
                                 int64_t n_tok)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_tok < 1) return BONSAI_OK;
    if (n_tok > 65535 * (int64_t)MM_BN)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: matmul of %lld tokens", (long long)n_tok);
    int rows = (int)w->rows, cols = (int)w->cols;
    if (w->type == T_Q1_0) {
        if (n_tok <= GEMV_MAX_TOK) {
            int rows_per_block = GEMV_WARPS * GEMV_ROWS;
            dim3 grid((unsigned)((rows + rows_per_block - 1) / rows_per_block));
            dim3 block(GEMV_WARPS * WARP);
            switch (n_tok) {
#define CASE(n)                                                                                    \
    case n: q1_gemv<n><<<grid, block, 0, b->stream>>>(w->bits, w->scales, x, y, rows, cols); break;
                CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
            default: break;
            }
        } else {
            dim3 grid((unsigned)((rows + MM_BM - 1) / MM_BM), (unsigned)((n_tok + MM_BN - 1) / MM_BN));
            q1_gemm_wmma<<<grid, MM_THREADS, 0, b->stream>>>(w->bits, w->scales, x, y, rows, cols,
                                                             (int)n_tok);
        }
    } else {
        int warps = 8;
        dim3 grid((unsigned)((rows + warps - 1) / warps));
        dense_matmul<<<grid, warps * WARP, 0, b->stream>>>(view(w), x, y, (int)n_tok);
    }
    CU(cudaGetLastError());
    return BONSAI_OK;
}

/* Copies n host int32 values to a device buffer of the instance (grown on demand). */
static bonsai_status stage_ints(cuda_backend *b, int32_t **buf, size_t *cap, const int32_t *src,
                                int64_t n)
{
    size_t bytes = (size_t)n * sizeof(int32_t);
    if (bytes > *cap) {
        CU(cudaStreamSynchronize(b->stream));
        cudaFree(*buf);
        *buf = NULL;
        *cap = 0;
        size_t want = bytes < 4096 ? 4096 : bytes;
        CU(cudaMalloc((void **)buf, want));
        *cap = want;
    }
    CU(cudaMemcpyAsync(*buf, src, bytes, cudaMemcpyHostToDevice, b->stream));
    /* pageable source: the copy is complete when the call returns */
    return BONSAI_OK;
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
    if (n_tok > 65535) return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: get_rows of %lld tokens", (long long)n_tok);
    bonsai_status st = stage_ints(b, &b->ids, &b->ids_cap, ids, n_tok);
    if (st) return st;
    dim3 grid(grid_for(w->cols, 256), (unsigned)n_tok);
    get_rows<<<grid, 256, 0, b->stream>>>(view(w), b->ids, y);
    CU(cudaGetLastError());
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
    rmsnorm<<<(unsigned)n_rows, 256, 0, b->stream>>>(x, weight, y, (int)n, eps);
    CU(cudaGetLastError());
    return BONSAI_OK;
}

static bonsai_status cuda_rope(bsi_backend *be, float *x, const int32_t *pos, int64_t n_tok,
                               int64_t n_heads, int64_t head_dim, const bsi_rope *r)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (r->n_rot > head_dim || r->n_rot % 2)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "rope: %u rotated dimensions of %lld", r->n_rot,
                     (long long)head_dim);
    if (n_tok < 1 || n_heads < 1) return BONSAI_OK;
    if (n_tok > INT32_MAX || n_heads > 65535)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: rope of %lld x %lld heads",
                     (long long)n_tok, (long long)n_heads);
    if (n_tok != b->pos_n || memcmp(pos, b->pos_host, (size_t)n_tok * sizeof *pos)) {
        b->pos_n = 0;
        int32_t *keep = (int32_t *)realloc(b->pos_host, (size_t)n_tok * sizeof *pos);
        if (!keep) return failf(BONSAI_ERR_NO_MEMORY, "out of memory");
        b->pos_host = keep;
        bonsai_status st = stage_ints(b, &b->pos, &b->pos_cap, pos, n_tok);
        if (st) return st;
        memcpy(b->pos_host, pos, (size_t)n_tok * sizeof *pos);
        b->pos_n = n_tok;
    }
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
    dim3 grid((unsigned)n_tok, (unsigned)n_heads);
    rope<<<grid, 64, 0, b->stream>>>(x, b->pos, (int)n_heads, (int)head_dim, p);
    CU(cudaGetLastError());
    return BONSAI_OK;
}

static bonsai_status cuda_softmax(bsi_backend *be, float *x, int64_t n, int64_t n_rows)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_rows < 1) return BONSAI_OK;
    softmax<<<(unsigned)n_rows, 256, 0, b->stream>>>(x, (int)n);
    CU(cudaGetLastError());
    return BONSAI_OK;
}

static bonsai_status cuda_silu_mul(bsi_backend *be, const float *gate, const float *up, float *y,
                                   int64_t n)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n < 1) return BONSAI_OK;
    silu_mul<<<grid_for(n, 256), 256, 0, b->stream>>>(gate, up, y, n);
    CU(cudaGetLastError());
    return BONSAI_OK;
}

static bonsai_status cuda_add(bsi_backend *be, const float *a, const float *bb, float *y, int64_t n)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n < 1) return BONSAI_OK;
    add<<<grid_for(n, 256), 256, 0, b->stream>>>(a, bb, y, n);
    CU(cudaGetLastError());
    return BONSAI_OK;
}

static bonsai_status cuda_kv_store(bsi_backend *be, uint32_t kv_type, void *k_cache, void *v_cache,
                                   const float *k, const float *v, int64_t n_tok, int64_t dim,
                                   int64_t pos)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_tok < 1) return BONSAI_OK;
    if (kv_type == T_Q8_0) {
        if (dim % 32) return failf(BONSAI_ERR_INVALID_ARGUMENT, "cuda: Q8_0 KV rows of %lld", (long long)dim);
        int64_t threads = 2 * n_tok * (dim / 32) * WARP;
        kv_store_q8_0<<<grid_for(threads, 256), 256, 0, b->stream>>>(
            (uint8_t *)k_cache, (uint8_t *)v_cache, k, v, (int)n_tok, (int)dim, (int)pos);
    } else {
        kv_store_f16<<<grid_for(n_tok * dim, 256), 256, 0, b->stream>>>(
            (__half *)k_cache, (__half *)v_cache, k, v, (int)n_tok, (int)dim, (int)pos);
    }
    CU(cudaGetLastError());
    return BONSAI_OK;
}

static bonsai_status cuda_attention(bsi_backend *be, uint32_t kv_type, const float *q,
                                    const void *k_cache, const void *v_cache, float *out,
                                    int64_t n_tok, int64_t pos, int64_t n_head, int64_t n_head_kv,
                                    int64_t head_dim, float scale)
{
    cuda_backend *b = cb(be);
    USE(b);
    if (n_head_kv < 1 || n_head % n_head_kv)
        return failf(BONSAI_ERR_INVALID_ARGUMENT, "attention: %lld heads over %lld kv heads",
                     (long long)n_head, (long long)n_head_kv);
    if (head_dim > ATT_MAX_HD)
        return failf(BONSAI_ERR_UNSUPPORTED, "cuda attention: heads of %lld values (at most %d)",
                     (long long)head_dim, ATT_MAX_HD);
    if (n_tok < 1) return BONSAI_OK;
    dim3 grid((unsigned)n_head, (unsigned)n_tok);
    if (kv_type == T_Q8_0)
        attention<true><<<grid, ATT_WARPS * WARP, 0, b->stream>>>(
            q, k_cache, v_cache, out, (int)pos, (int)n_head, (int)n_head_kv, (int)head_dim, scale);
    else
        attention<false><<<grid, ATT_WARPS * WARP, 0, b->stream>>>(
            q, k_cache, v_cache, out, (int)pos, (int)n_head, (int)n_head_kv, (int)head_dim, scale);
    CU(cudaGetLastError());
    return BONSAI_OK;
}

static bsi_backend_vtable table;

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
    table.alloc = cuda_alloc;
    table.free = cuda_free;
    table.upload = cuda_upload;
    table.download = cuda_download;
    table.weight_create = cuda_weight_create;
    table.weight_free = cuda_weight_free;
    table.matmul = cuda_matmul;
    table.get_rows = cuda_get_rows;
    table.rmsnorm = cuda_rmsnorm;
    table.rope = cuda_rope;
    table.softmax = cuda_softmax;
    table.silu_mul = cuda_silu_mul;
    table.add = cuda_add;
    table.kv_store = cuda_kv_store;
    table.attention = cuda_attention;
    return &table;
}
