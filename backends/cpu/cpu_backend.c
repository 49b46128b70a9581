/*
 * The CPU backend: host memory, weights left in the mapped file (Q1_0 matrices repacked once into
 * the chosen ISA's layout), and every op run on a persistent thread pool.
 */
#define _GNU_SOURCE
#include "backend.h"

#include "ops.h"
#include "q1.h"
#include "threadpool.h"
#include "types.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ALIGN 64

/* Packed weights are carved from slabs of anonymous memory aligned to 2 MiB, with transparent
 * huge pages asked for (Linux; madvise mode is the common default): a decode step reads every
 * weight once, and on 4 KiB pages that is a TLB miss per 4 KiB and a hardware prefetcher that
 * stops at each page boundary; 2 MiB pages made the GEMV 1.1-1.2x faster with AVX-512 and up to
 * 2x with AVX2 (docs/perf-notes.md). A slab is unmapped when its last weight is freed. One backend
 * instance's weights are created and freed by one thread at a time (the model's lock). */
#define SLAB_ALIGN ((size_t)2 << 20)
#define SLAB_BYTES ((size_t)64 << 20)

typedef struct slab {
    struct slab *next;
    uint8_t *base;
    size_t size, used;
    int64_t live; /* weights placed in it and not yet freed */
} slab;

typedef struct cpu_backend {
    bsi_backend base;
    bsi_pool *pool;
    bsi_isa isa;
    const bsi_q1_kernels *q1;
    const bsi_cpu_ops *ops;
    void *act; /* quantized activations, grown on demand */
    size_t act_bytes;
    /* RoPE angles of the last position rotated: q and k of a layer, and every layer of a decode
     * step, share one position */
    bsi_rope rope_key;
    int64_t rope_pos;
    float rope_cs[1024];
    float *scores; /* attention scratch, [threads][queries of a work item][positions] */
    size_t scores_bytes;
    uint16_t *dequant; /* Q8_0 KV heads as fp16, [threads][2][positions][head_dim] */
    size_t dequant_bytes;
    slab *slabs; /* of packed weights, the newest first */
    char desc[96];
} cpu_backend;

struct bsi_weight {
    uint32_t type;
    int64_t rows, cols;
    const uint8_t *src;  /* the file layout */
    const uint8_t *data; /* what the kernels read: src, or the packed copy */
    slab *slab;          /* holding the packed copy, or NULL */
    size_t row_bytes;    /* of the file layout */
};

static cpu_backend *cpu(bsi_backend *be)
{
    return (cpu_backend *)be;
}

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ON_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ON_HEAP 1
#endif
#endif

#ifdef SLAB_ON_HEAP
/* Under AddressSanitizer a slab is one weight on the heap, so that a kernel reading past its
 * matrix is caught. */
static uint8_t *slab_map(size_t *size)
{
    return bsi_aligned_alloc(ALIGN, *size);
}

static void slab_unmap(slab *s)
{
    free(s->base);
}
#else
/* A new slab of at least *size bytes (set to its size), or NULL. */
static uint8_t *slab_map(size_t *size)
{
    size_t want = *size;
    if (want > SIZE_MAX / 2) return NULL;
    want = want > SLAB_BYTES ? (want + SLAB_ALIGN - 1) / SLAB_ALIGN * SLAB_ALIGN : SLAB_BYTES;
    /* map SLAB_ALIGN more and trim both ends to an aligned span */
    uint8_t *map =
        mmap(NULL, want + SLAB_ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return NULL;
    uintptr_t start = ((uintptr_t)map + SLAB_ALIGN - 1) & ~(uintptr_t)(SLAB_ALIGN - 1);
    size_t head = (size_t)(start - (uintptr_t)map);
    if (head) munmap(map, head);
    munmap((uint8_t *)start + want, SLAB_ALIGN - head);
#ifdef MADV_HUGEPAGE
    madvise((void *)start, want, MADV_HUGEPAGE); /* advice: a failure leaves 4 KiB pages */
#endif
    *size = want;
    return (uint8_t *)start;
}

static void slab_unmap(slab *s)
{
    munmap(s->base, s->size);
}
#endif

/* `bytes` in the newest slab, or in a new one when it has no room; NULL when out of memory. */
static uint8_t *slab_alloc(cpu_backend *b, size_t bytes, slab **owner)
{
    bytes = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    slab *s = b->slabs;
    if (!s || s->size - s->used < bytes) {
        s = bsi_calloc(1, sizeof *s);
        if (!s) return NULL;
        s->size = bytes;
        s->base = slab_map(&s->size);
        if (!s->base) {
            free(s);
            return NULL;
        }
        s->next = b->slabs;
        b->slabs = s;
    }
    uint8_t *p = s->base + s->used;
    s->used += bytes;
    s->live++;
    *owner = s;
    return p;
}

static int cpu_probe(int *device, char *reason, size_t size)
{
    *device = 0;
    (void)reason;
    (void)size;
    return 1; /* always usable, the fallback */
}

static bonsai_status cpu_create(const bsi_backend_config *cfg, bsi_backend **out)
{
    *out = NULL;
    /* one device: "cpu:1" would otherwise place a second copy of a model's weights */
    if (cfg && cfg->device != 0)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED, "cpu:%d: the CPU is one device, cpu or cpu:0",
                        cfg->device);
    cpu_backend *b = bsi_calloc(1, sizeof *b);
    if (!b) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory creating the CPU backend");
    b->base.vt = bsi_cpu_backend();
    bool forced_ok;
    b->isa = bsi_isa_select(&forced_ok);
    if (!forced_ok)
        bsi_log(BONSAI_LOG_WARN, "BONSAI_CPU_ISA=%s is not available here; using %s",
                getenv("BONSAI_CPU_ISA"), bsi_isa_name(b->isa));
    if (cfg && cfg->cpu_isa) {
        int want = bsi_isa_parse(cfg->cpu_isa);
        if (want < 0 || !bsi_isa_available((bsi_isa)want)) {
            free(b);
            return bsi_fail(BONSAI_ERR_UNSUPPORTED, "CPU instruction set '%s' is not available",
                            cfg->cpu_isa);
        }
        b->isa = (bsi_isa)want;
    }
    b->q1 = bsi_q1_kernels_for(b->isa);
    b->ops = bsi_cpu_ops_for(b->isa);
    int n = cfg && cfg->n_threads > 0 ? cfg->n_threads : bsi_physical_cores();
    b->pool = bsi_pool_new(n);
    if (!b->pool) {
        free(b);
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "cannot start %d CPU threads", n);
    }
    b->rope_pos = -1;
    snprintf(b->desc, sizeof b->desc, "cpu %s, %d thread%s", bsi_isa_name(b->isa), n,
             n == 1 ? "" : "s");
    *out = &b->base;
    return BONSAI_OK;
}

static void cpu_destroy(bsi_backend *be)
{
    if (!be) return;
    cpu_backend *b = cpu(be);
    bsi_pool_free(b->pool);
    free(b->act);
    free(b->scores);
    free(b->dequant);
    while (b->slabs) { /* every weight was freed before (placement_free): nothing to leak */
        slab *next = b->slabs->next;
        slab_unmap(b->slabs);
        free(b->slabs);
        b->slabs = next;
    }
    free(b);
}

static const char *cpu_describe(const bsi_backend *be)
{
    return ((const cpu_backend *)be)->desc;
}

static bonsai_status cpu_alloc(bsi_backend *be, size_t bytes, void **out)
{
    (void)be;
    size_t size = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    *out = size ? bsi_aligned_alloc(ALIGN, size) : NULL;
    if (!*out && size)
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "cannot allocate %zu bytes of host memory", bytes);
    return BONSAI_OK;
}

static void cpu_free(bsi_backend *be, void *ptr)
{
    (void)be;
    free(ptr);
}

static bonsai_status cpu_copy(bsi_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes) memmove(dst, src, bytes);
    return BONSAI_OK;
}

/* ---- weights ---- */

typedef struct pack_task {
    const bsi_q1_kernels *k;
    const uint8_t *src;
    uint8_t *dst;
    int64_t rows, cols;
} pack_task;

static void pack_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    pack_task *t = ctx;
    int64_t tile = t->k->row_tile, r0 = begin * tile, r1 = end * tile;
    if (r1 > t->rows) r1 = t->rows;
    size_t row_bytes = (size_t)(t->cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    /* tiles are independent: pack rows [r0, r1) as a matrix of their own */
    t->k->pack(t->src + (size_t)r0 * row_bytes, t->dst + (size_t)r0 * row_bytes, r1 - r0, t->cols);
}

/* The original of a repacked matrix is not read again (but for embedding rows, which fault back
 * in from the file): drop its pages so resident memory grows only by the packed copy. */
static void drop_pages(const void *data, size_t bytes)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)data + page - 1) & ~(page - 1);
    uintptr_t end = ((uintptr_t)data + bytes) & ~(page - 1);
    if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
}

static bonsai_status cpu_weight_create(bsi_backend *be, const bsi_matrix_desc *d, bsi_weight **out)
{
    cpu_backend *b = cpu(be);
    *out = NULL;
    const char *tn = bonsai_tensor_type_name(d->type);
    if (!tn)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED_TYPE, "tensor '%s': type %u on the CPU", d->name,
                        d->type);
    const bsi_type_traits *tt = bsi_type_traits_of(d->type);
    if (d->rows < 1 || d->cols < 1 || d->cols % tt->block_size)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "tensor '%s': %" PRId64 " x %" PRId64 " is not a valid %s matrix", d->name,
                        d->rows, d->cols, tn);
    bsi_weight *w = bsi_calloc(1, sizeof *w);
    if (!w) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    w->type = d->type;
    w->rows = d->rows;
    w->cols = d->cols;
    w->src = w->data = d->data;
    if (d->type == BONSAI_TENSOR_Q1_0) {
        w->row_bytes = (size_t)(d->cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
        if (b->q1->pack) {
            size_t bytes = bsi_q1_packed_bytes(b->q1, d->rows, d->cols);
            uint8_t *packed = slab_alloc(b, bytes, &w->slab);
            if (!packed) {
                free(w);
                return bsi_fail(BONSAI_ERR_NO_MEMORY,
                                "tensor '%s': cannot allocate %zu bytes to repack it", d->name,
                                bytes);
            }
            pack_task t = {b->q1, d->data, packed, d->rows, d->cols};
            int64_t tiles = (d->rows + b->q1->row_tile - 1) / b->q1->row_tile;
            bsi_pool_for(b->pool, tiles, 64, pack_range, &t);
            w->data = packed;
            if (d->mapped) drop_pages(d->data, w->row_bytes * (size_t)d->rows);
        }
    } else if (d->type == BONSAI_TENSOR_F32) {
        w->row_bytes = (size_t)d->cols * 4;
    } else if (d->type == BONSAI_TENSOR_F16 || d->type == BONSAI_TENSOR_BF16) {
        w->row_bytes = (size_t)d->cols * 2;
    } else { /* Q8_0 */
        w->row_bytes = (size_t)(d->cols / 32) * 34;
    }
    *out = w;
    return BONSAI_OK;
}

static uint64_t cpu_weight_bytes(bsi_backend *be, const bsi_matrix_desc *d)
{
    /* only Q1_0 matrices are copied (repacked); the others are read from the file */
    const bsi_q1_kernels *k = cpu(be)->q1;
    if (d->type != BONSAI_TENSOR_Q1_0 || !k->pack) return 0;
    return bsi_q1_packed_bytes(k, d->rows, d->cols);
}

static void cpu_weight_free(bsi_backend *be, bsi_weight *w)
{
    if (!w) return;
    if (w->slab && --w->slab->live == 0) {
        slab **p = &cpu(be)->slabs;
        while (*p != w->slab) p = &(*p)->next;
        *p = w->slab->next;
        slab_unmap(w->slab);
        free(w->slab);
    }
    free(w);
}

/* ---- matmul ---- */

typedef struct mm_task {
    cpu_backend *b;
    const bsi_weight *w;
    const bsi_q8_act *xq;
    const float *x;
    float *y;
    int64_t n_tok;
} mm_task;

static void quantize_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    mm_task *t = ctx;
    bsi_q1_prepare(t->b->q1, (bsi_q8_act *)t->xq, t->x, begin, end);
}

/* Q1_0: task i covers row tiles [begin, end). */
static void q1_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    mm_task *t = ctx;
    const bsi_q1_kernels *k = t->b->q1;
    int64_t r0 = begin * k->row_tile, r1 = end * k->row_tile;
    if (r1 > t->w->rows) r1 = t->w->rows;
    if (t->n_tok == 1)
        k->gemv(t->w->data, t->xq, t->x, t->y, r0, r1, t->w->cols);
    else
        k->gemm(t->w->data, t->xq, t->x, t->y, t->w->rows, r0, r1, t->w->cols, 0, t->n_tok);
}

/* Other types: rows [begin, end) for every token. */
static void dense_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    mm_task *t = ctx;
    const bsi_cpu_ops *ops = t->b->ops;
    void (*gemv)(const void *, const float *, float *, int64_t, int64_t, int64_t) =
        t->w->type == BONSAI_TENSOR_F32    ? ops->gemv_f32
        : t->w->type == BONSAI_TENSOR_F16  ? ops->gemv_f16
        : t->w->type == BONSAI_TENSOR_BF16 ? ops->gemv_bf16
                                           : ops->gemv_q8_0;
    for (int64_t tok = 0; tok < t->n_tok; tok++)
        gemv(t->w->data, t->x + tok * t->w->cols, t->y + tok * t->w->rows, begin, end, t->w->cols);
}

/* Quantizes x (n_tok tokens of cols) into the backend's activation buffer, with the ISA's
 * tables: once per input, whatever number of matrices it meets. */
static bonsai_status prepare_input(cpu_backend *b, const float *x, int64_t cols, int64_t n_tok,
                                   bsi_q8_act *xq)
{
    size_t lut = bsi_q1_lut_bytes(b->q1, cols);
    size_t need = bsi_q8_act_bytes(cols, n_tok, lut);
    if (need > b->act_bytes) {
        void *p = bsi_realloc(b->act, need);
        if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "cannot allocate %zu bytes", need);
        b->act = p;
        b->act_bytes = need;
    }
    bsi_q8_act_init(xq, b->act, cols, n_tok, lut);
    mm_task t = {b, NULL, xq, x, NULL, n_tok};
    bsi_pool_for(b->pool, n_tok, 4, quantize_range, &t);
    return BONSAI_OK;
}

/* Row tiles of a product: small chunks balance the threads, large enough to amortise the atomic
 * hand-out. */
static int64_t tile_grain(const cpu_backend *b, int64_t tiles, int64_t n_tok)
{
    int threads = bsi_pool_threads(b->pool);
    return n_tok > 1 ? tiles / (2 * threads) + 1 : tiles / (8 * threads) + 1;
}

static bonsai_status cpu_matmul(bsi_backend *be, const bsi_weight *w, const float *x, float *y,
                                int64_t n_tok)
{
    cpu_backend *b = cpu(be);
    mm_task t = {b, w, NULL, x, y, n_tok};
    if (w->type != BONSAI_TENSOR_Q1_0) {
        int64_t grain = w->rows / (4 * bsi_pool_threads(b->pool)) + 1;
        bsi_pool_for(b->pool, w->rows, grain, dense_range, &t);
        return BONSAI_OK;
    }
    bsi_q8_act xq;
    bonsai_status st = prepare_input(b, x, w->cols, n_tok, &xq);
    if (st) return st;
    t.xq = &xq;
    int64_t tiles = (w->rows + b->q1->row_tile - 1) / b->q1->row_tile;
    bsi_pool_for(b->pool, tiles, tile_grain(b, tiles, n_tok), q1_range, &t);
    return BONSAI_OK;
}

/* Several Q1_0 matrices on one input: their row tiles form one index space. */
typedef struct multi_task {
    mm_task part[4];
    int64_t first[5]; /* tile index where matrix i starts; first[n] = all tiles */
    int n;
} multi_task;

static void q1_multi_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    multi_task *m = ctx;
    for (int i = 0; i < m->n && begin < end; i++) {
        int64_t lo = m->first[i], hi = m->first[i + 1];
        if (begin >= hi) continue;
        int64_t e = end < hi ? end : hi;
        q1_range(&m->part[i], begin - lo, e - lo, thread);
        begin = e;
    }
}

static bonsai_status cpu_matmul_multi(bsi_backend *be, int n, const bsi_weight *const *w,
                                      const float *x, float *const *y, int64_t n_tok)
{
    cpu_backend *b = cpu(be);
    bool fused = n >= 1 && n <= 4;
    for (int i = 0; i < n && fused; i++)
        fused = w[i]->type == BONSAI_TENSOR_Q1_0 && w[i]->cols == w[0]->cols;
    if (!fused) {
        for (int i = 0; i < n; i++) {
            bonsai_status st = cpu_matmul(be, w[i], x, y[i], n_tok);
            if (st) return st;
        }
        return BONSAI_OK;
    }
    bsi_q8_act xq;
    bonsai_status st = prepare_input(b, x, w[0]->cols, n_tok, &xq);
    if (st) return st;
    multi_task m = {.n = n};
    int64_t tiles = 0, tile = b->q1->row_tile;
    for (int i = 0; i < n; i++) {
        m.part[i] = (mm_task){b, w[i], &xq, x, y[i], n_tok};
        m.first[i] = tiles;
        tiles += (w[i]->rows + tile - 1) / tile;
    }
    m.first[n] = tiles;
    bsi_pool_for(b->pool, tiles, tile_grain(b, tiles, n_tok), q1_multi_range, &m);
    return BONSAI_OK;
}

/* ---- embedding rows ---- */

static void dequant_row(const bsi_weight *w, int64_t r, float *y)
{
    const uint8_t *row = w->src + (size_t)r * w->row_bytes;
    int64_t n = w->cols;
    switch (w->type) {
    case BONSAI_TENSOR_F32: memcpy(y, row, (size_t)n * 4); break;
    case BONSAI_TENSOR_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, row + 2 * i, 2);
            y[i] = bsi_fp16_to_fp32(h);
        }
        break;
    case BONSAI_TENSOR_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, row + 2 * i, 2);
            y[i] = bsi_bf16_to_fp32(h);
        }
        break;
    case BONSAI_TENSOR_Q8_0:
        for (int64_t b = 0; b < n / 32; b++) {
            uint16_t h;
            memcpy(&h, row + 34 * b, 2);
            float d = bsi_fp16_to_fp32(h);
            for (int j = 0; j < 32; j++) y[32 * b + j] = d * (float)(int8_t)row[34 * b + 2 + j];
        }
        break;
    case BONSAI_TENSOR_Q1_0:
        for (int64_t b = 0; b < n / BSI_QK; b++) {
            const uint8_t *blk = row + BSI_Q1_BLOCK_BYTES * b;
            uint16_t h;
            memcpy(&h, blk, 2);
            float d = bsi_fp16_to_fp32(h);
            for (int j = 0; j < BSI_QK; j++)
                y[BSI_QK * b + j] = (blk[2 + (j >> 3)] >> (j & 7)) & 1 ? d : -d;
        }
        break;
    }
}

static bonsai_status cpu_get_rows(bsi_backend *be, const bsi_weight *w, const int32_t *ids,
                                  float *y, int64_t n_tok)
{
    (void)be;
    for (int64_t t = 0; t < n_tok; t++) {
        if (ids[t] < 0 || ids[t] >= w->rows)
            return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "token id %" PRId32 " outside 0..%" PRId64,
                            ids[t], w->rows - 1);
        dequant_row(w, ids[t], y + t * w->cols);
    }
    return BONSAI_OK;
}

/* ---- small ops ---- */

typedef struct rows_task {
    cpu_backend *b;
    const float *x, *w;
    float *y;
    int64_t n;
    float eps;
} rows_task;

static void rmsnorm_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    (void)thread;
    rows_task *t = ctx;
    for (int64_t r = begin; r < end; r++)
        t->b->ops->rmsnorm(t->x + r * t->n, t->w, t->y + r * t->n, t->n, t->eps);
}

static bonsai_status cpu_rmsnorm(bsi_backend *be, const float *x, const float *weight, float *y,
                                 int64_t n, int64_t n_rows, float eps)
{
    rows_task t = {cpu(be), x, weight, y, n, eps};
    bsi_pool_for(cpu(be)->pool, n_rows, 4, rmsnorm_range, &t);
    return BONSAI_OK;
}

static bonsai_status cpu_rope(bsi_backend *be, float *x, const int32_t *pos, int64_t n_tok,
                              int64_t n_heads, int64_t head_dim, const bsi_rope *r)
{
    cpu_backend *b = cpu(be);
    if (r->n_rot > head_dim || r->n_rot % 2 || r->n_rot > 1024)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "rope: %u rotated dimensions of %" PRId64,
                        r->n_rot, head_dim);
    for (int64_t t = 0; t < n_tok; t++) {
        if (pos[t] != b->rope_pos || memcmp(r, &b->rope_key, sizeof *r)) {
            bsi_rope_table(b->rope_cs, pos[t], r->n_rot, r->freq_base, r->yarn_factor,
                           r->yarn_orig_ctx, r->yarn_beta_fast, r->yarn_beta_slow);
            b->rope_key = *r;
            b->rope_pos = pos[t];
        }
        b->ops->rope(x + t * n_heads * head_dim, n_heads, head_dim, r->n_rot, (int)r->neox,
                     b->rope_cs);
    }
    return BONSAI_OK;
}

static bonsai_status cpu_softmax(bsi_backend *be, float *x, int64_t n, int64_t n_rows)
{
    for (int64_t r = 0; r < n_rows; r++) cpu(be)->ops->softmax(x + r * n, n);
    return BONSAI_OK;
}

static bonsai_status cpu_silu_mul(bsi_backend *be, const float *gate, const float *up, float *y,
                                  int64_t n)
{
    cpu(be)->ops->silu_mul(gate, up, y, n);
    return BONSAI_OK;
}

static bonsai_status cpu_add(bsi_backend *be, const float *a, const float *b, float *y, int64_t n)
{
    cpu(be)->ops->add(a, b, y, n);
    return BONSAI_OK;
}

/* ---- KV cache and attention ---- */

/* One row of dim values as Q8_0 blocks of 32 (fp16 d = max|x| / 127, q = round(x / d)). */
static void quantize_q8_0_row(const float *x, int64_t dim, uint8_t *out)
{
    for (int64_t b = 0; b < dim / 32; b++, x += 32, out += 34) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
        uint16_t h = bsi_fp32_to_fp16(d);
        memcpy(out, &h, 2);
        for (int j = 0; j < 32; j++) out[2 + j] = (uint8_t)(int8_t)lrintf(x[j] * id);
    }
}

/* The CPU's KV cache layout (bsi_kv_shape): each kv head's positions together, [n_head_kv][n_ctx]
 * rows of head_dim values (fp16, or Q8_0 blocks of 32), so that attention, which walks one kv
 * head over every position, streams contiguous memory instead of head_dim values out of every
 * n_head_kv * head_dim (at a long cache that stride halved its speed on one core). Where kv head
 * h of position p lies in a cache buffer: */
static size_t kv_at(const bsi_kv_shape *kv, int64_t h, int64_t p)
{
    return ((size_t)h * (size_t)kv->n_ctx + (size_t)p) * bsi_kv_head_bytes(kv);
}

static bonsai_status cpu_kv_store(bsi_backend *be, const bsi_kv_shape *kv, void *k_cache,
                                  void *v_cache, const float *k, const float *v, int64_t n_tok,
                                  int64_t pos)
{
    const bsi_cpu_ops *ops = cpu(be)->ops;
    const int64_t hd = kv->head_dim, dim = kv->n_head_kv * hd;
    char why[128];
    if (bsi_kv_check(kv, pos, n_tok, why, sizeof why))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "kv_store: %s", why);
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t h = 0; h < kv->n_head_kv; h++) {
            uint8_t *kc = (uint8_t *)k_cache + kv_at(kv, h, pos + t),
                    *vc = (uint8_t *)v_cache + kv_at(kv, h, pos + t);
            const float *kh = k + t * dim + h * hd, *vh = v + t * dim + h * hd;
            if (kv->type == BONSAI_TENSOR_Q8_0) {
                quantize_q8_0_row(kh, hd, kc);
                quantize_q8_0_row(vh, hd, vc);
            } else {
                ops->to_f16(kh, (uint16_t *)kc, hd);
                ops->to_f16(vh, (uint16_t *)vc, hd);
            }
        }
    return BONSAI_OK;
}

typedef struct attn_task {
    const float *q;
    const uint16_t *kc, *vc;
    float *out;
    int64_t n_tok, pos, n_head, n_ctx_used;
    float scale;
    float *scores;                 /* [threads][pass_queries][n_ctx_used] */
    int64_t tok_block, head_block; /* tokens and query heads of a work item */
    int64_t pass_queries;          /* min(tok_block * head_block, BSI_ATTN_QUERIES) */
    const bsi_cpu_ops *ops;
    const bsi_kv_shape *kv; /* the caches' (kv heads, head size) */
    const uint8_t *kq, *vq; /* Q8_0 caches, or NULL */
    uint16_t *dequant;      /* [threads][2][n_ctx_used][head_dim]: a Q8_0 head as fp16 */
} attn_task;

/* K and V of kv head kvh at positions [0, n) of Q8_0 caches, as fp16 rows of head_dim (the head's
 * rows are contiguous: one run of blocks each). */
static void dequant_head(const attn_task *t, int64_t kvh, int64_t n, uint16_t *k, uint16_t *v)
{
    int64_t blocks = n * (t->kv->head_dim / 32);
    t->ops->q8_0_to_f16(t->kq + kv_at(t->kv, kvh, 0), k, blocks);
    t->ops->q8_0_to_f16(t->vq + kv_at(t->kv, kvh, 0), v, blocks);
}

/* Work item i = (block of tok_block tokens, head_block query heads of one kv head): those queries
 * in one pass over the kv head's cache (up to BSI_ATTN_QUERIES at a time). */
static void attn_range(void *ctx, int64_t begin, int64_t end, int thread)
{
    attn_task *t = ctx;
    int64_t hd = t->kv->head_dim, group = t->n_head / t->kv->n_head_kv;
    int64_t tb = t->tok_block, hg = t->head_block, n_hb = t->n_head / hg;
    float *scores = t->scores + (size_t)thread * (size_t)t->pass_queries * (size_t)t->n_ctx_used;
    for (int64_t i = begin; i < end; i++) {
        int64_t tok = i / n_hb * tb, h0 = i % n_hb * hg, kvh = h0 / group;
        int64_t nt = t->n_tok - tok < tb ? t->n_tok - tok : tb;
        int64_t n = t->pos + tok + 1; /* causal: the first token sees positions 0 .. pos + tok */
        const uint16_t *k, *v;
        if (t->kq) { /* Q8_0 cache: this head as fp16 first */
            uint16_t *dk = t->dequant + (size_t)thread * 2 * (size_t)t->n_ctx_used * (size_t)hd;
            uint16_t *dv = dk + (size_t)t->n_ctx_used * (size_t)hd;
            dequant_head(t, kvh, n + nt - 1, dk, dv);
            k = dk, v = dv;
        } else { /* the head's rows, one after another */
            k = t->kc + kv_at(t->kv, kvh, 0) / sizeof *k;
            v = t->vc + kv_at(t->kv, kvh, 0) / sizeof *v;
        }
        int64_t h = tok * t->n_head + h0; /* the first token's first query head */
        t->ops->attn_heads(t->q + h * hd, nt, hg, t->n_head * hd, k, v, n, hd, hd, t->scale, scores,
                           t->out + h * hd);
    }
}

static bonsai_status cpu_attention(bsi_backend *be, const bsi_kv_shape *kv, const float *q,
                                   const void *k_cache, const void *v_cache, float *out,
                                   int64_t n_tok, int64_t pos, int64_t n_head, float scale)
{
    cpu_backend *b = cpu(be);
    const int64_t n_head_kv = kv->n_head_kv, head_dim = kv->head_dim;
    if (n_head < 1 || n_head_kv < 1 || n_head % n_head_kv)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "attention: %" PRId64 " heads over %" PRId64 " kv heads", n_head,
                        n_head_kv);
    char why[128];
    if (bsi_kv_check(kv, pos, n_tok, why, sizeof why))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "attention: %s", why);
    int64_t n_ctx_used = pos + n_tok;
    /* A work item is a block of tokens times hg query heads of a kv head: all of them (a prompt's
     * tokens in blocks so that a pass serves ~BSI_ATTN_QUERIES queries), or one head at a time
     * when kv heads are fewer than threads (one token: decode). */
    int threads = bsi_pool_threads(b->pool);
    int64_t group = n_head / n_head_kv, hg = group, tb = 1;
    if (n_tok * n_head_kv < threads)
        hg = 1;
    else if (group < BSI_ATTN_QUERIES)
        tb = BSI_ATTN_QUERIES / group;
    int64_t nq = tb * hg < BSI_ATTN_QUERIES ? tb * hg : BSI_ATTN_QUERIES;
    size_t need = (size_t)threads * (size_t)nq * (size_t)n_ctx_used * sizeof(float);
    if (need > b->scores_bytes) {
        float *p = bsi_realloc(b->scores, need);
        if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "cannot allocate %zu bytes", need);
        b->scores = p;
        b->scores_bytes = need;
    }
    attn_task t = {.q = q,
                   .kc = k_cache,
                   .vc = v_cache,
                   .out = out,
                   .n_tok = n_tok,
                   .pos = pos,
                   .n_head = n_head,
                   .n_ctx_used = n_ctx_used,
                   .scale = scale,
                   .scores = b->scores,
                   .tok_block = tb,
                   .head_block = hg,
                   .pass_queries = nq,
                   .ops = b->ops,
                   .kv = kv};
    if (kv->type == BONSAI_TENSOR_Q8_0) {
        size_t bytes =
            (size_t)threads * 2 * (size_t)n_ctx_used * (size_t)head_dim * sizeof(uint16_t);
        if (bytes > b->dequant_bytes) {
            uint16_t *p = bsi_realloc(b->dequant, bytes);
            if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "cannot allocate %zu bytes", bytes);
            b->dequant = p;
            b->dequant_bytes = bytes;
        }
        t.kq = k_cache;
        t.vq = v_cache;
        t.kc = t.vc = NULL;
        t.dequant = b->dequant;
    }
    bsi_pool_for(b->pool, (n_tok + tb - 1) / tb * (n_head / hg), 1, attn_range, &t);
    return BONSAI_OK;
}

static const bsi_backend_vtable cpu_vtable = {
    .abi = BSI_BACKEND_ABI,
    .name = "cpu",
    .probe = cpu_probe,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .describe = cpu_describe,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .weight_create = cpu_weight_create,
    .weight_free = cpu_weight_free,
    .weight_bytes = cpu_weight_bytes,
    .matmul = cpu_matmul,
    .matmul_multi = cpu_matmul_multi,
    .get_rows = cpu_get_rows,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .softmax = cpu_softmax,
    .silu_mul = cpu_silu_mul,
    .add = cpu_add,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
};

const bsi_backend_vtable *bsi_cpu_backend(void)
{
    return &cpu_vtable;
}
