/*
 * bonsai bench-kernels: memory read bandwidth of this machine, then the Q1_0 matrix kernels on the
 * shapes of Bonsai-1.7B and 8B, through the CPU backend's real matmul path (activation
 * quantization, thread pool, kernel), for every instruction set this CPU runs, at 1 and N threads.
 *
 * Each measurement cycles through enough copies of the matrix to exceed the last-level cache, as a
 * decode step does (every weight is read once per token), and reports the median of repetitions.
 */
#include "cli.h"

#include "backend.h"
#include "isa.h"
#include "q1.h"
#include "threadpool.h"

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define STREAM_BYTES (256u << 20) /* matrices cycled per measurement: well past any L3 */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- memory bandwidth: every thread sums its slice of a large buffer ---- */

typedef struct bw_task {
    const uint64_t *buf;
    int64_t words;
    uint64_t sink[64];
} bw_task;

static void bw_range_portable(void *ctx, int64_t begin, int64_t end, int thread)
{
    bw_task *t = ctx;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (int64_t i = begin * 1024; i < end * 1024 && i < t->words; i += 4) {
        a += t->buf[i];
        b += t->buf[i + 1];
        c += t->buf[i + 2];
        d += t->buf[i + 3];
    }
    t->sink[thread & 63] += a + b + c + d;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* 32-byte loads, four streams: the fastest plain read this CPU can do. */
__attribute__((target("avx2"))) static void bw_range_avx2(void *ctx, int64_t begin, int64_t end,
                                                          int thread)
{
    bw_task *t = ctx;
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (int64_t i = begin * 1024; i < end * 1024 && i < t->words; i += 16) {
        const __m256i *p = (const __m256i *)(t->buf + i);
        a = _mm256_add_epi64(a, _mm256_load_si256(p));
        b = _mm256_add_epi64(b, _mm256_load_si256(p + 1));
        c = _mm256_add_epi64(c, _mm256_load_si256(p + 2));
        d = _mm256_add_epi64(d, _mm256_load_si256(p + 3));
    }
    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    t->sink[thread & 63] += (uint64_t)_mm256_extract_epi64(a, 0);
}
#endif

static double measure_bandwidth(int threads)
{
    size_t bytes = 1u << 30;
    /* in 2 MiB pages where the system has them, as the CPU backend places packed weights */
    uint64_t *buf = aligned_alloc((size_t)2 << 20, bytes);
    if (!buf) return 0;
#ifdef MADV_HUGEPAGE
    madvise(buf, bytes, MADV_HUGEPAGE);
#endif
    memset(buf, 1, bytes);
    bsi_pool *pool = bsi_pool_new(threads);
    bw_task t = {buf, (int64_t)(bytes / 8), {0}};
    bsi_task_fn read_fn = bw_range_portable;
#if defined(__x86_64__) && defined(__GNUC__)
    if (bsi_isa_available(BSI_ISA_AVX2)) read_fn = bw_range_avx2;
#endif
    int64_t chunks = t.words / 1024;
    double best = 1e30;
    for (int rep = 0; rep < 6; rep++) {
        double t0 = now();
        bsi_pool_for(pool, chunks, chunks / (4 * threads) + 1, read_fn, &t);
        double dt = now() - t0;
        if (rep && dt < best) best = dt; /* first pass warms the pages */
    }
    bsi_pool_free(pool);
    free(buf);
    return (double)bytes / best / 1e9;
}

/* ---- kernels ---- */

typedef struct shape {
    int64_t rows, cols;
    const char *what;
} shape;

static const shape shapes[] = {
    {2048, 2048, "1.7B attn_q / attn_output"},
    {6144, 2048, "1.7B ffn_gate / ffn_up"},
    {2048, 6144, "1.7B ffn_down"},
    {12288, 4096, "8B ffn_gate / ffn_up"},
    {4096, 12288, "8B ffn_down"},
    {151669, 2048, "1.7B LM head"},
};

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

typedef struct bench_ctx {
    bsi_backend *be;
    bsi_weight **copies;
    int n_copies;
    float *x, *y;
} bench_ctx;

static void free_copies(bench_ctx *c)
{
    for (int i = 0; i < c->n_copies; i++) c->be->vt->weight_free(c->be, c->copies[i]);
    free(c->copies);
    c->copies = NULL;
    c->n_copies = 0;
}

static bonsai_status make_copies(bench_ctx *c, const shape *s, const uint8_t *data)
{
    size_t bytes = (size_t)s->rows * (size_t)(s->cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    c->n_copies = (int)(STREAM_BYTES / bytes) + 1;
    c->copies = calloc((size_t)c->n_copies, sizeof *c->copies);
    if (!c->copies) return BONSAI_ERR_NO_MEMORY;
    bsi_matrix_desc d = {"bench", BONSAI_TENSOR_Q1_0, s->rows, s->cols, data, false};
    for (int i = 0; i < c->n_copies; i++) {
        bonsai_status st = c->be->vt->weight_create(c->be, &d, &c->copies[i]);
        if (st) {
            c->n_copies = i;
            return st;
        }
    }
    return BONSAI_OK;
}

/* ---- --backend NAME: the backend's own operations, timed through its table ---- */

typedef bonsai_status (*queued_op)(void *ctx, int i);

/* Seconds per call of op(ctx, i), calls queued back to back in batches that end with the
 * backend's sync (a GPU's launches overlap as in a forward pass); the median over batches. */
static double time_queued(bsi_backend *be, queued_op op, void *ctx, double budget,
                          bonsai_status *st)
{
    int batch = be->vt->sync ? 20 : 1;
    double times[64];
    int n = 0;
    *st = op(ctx, 0); /* warm-up */
    if (!*st && be->vt->sync) *st = be->vt->sync(be);
    double start = now();
    while (!*st && n < 64 && (n < 5 || now() - start < budget)) {
        double t0 = now();
        for (int i = 0; i < batch && !*st; i++) *st = op(ctx, n * batch + i);
        if (!*st && be->vt->sync) *st = be->vt->sync(be);
        times[n++] = (now() - t0) / batch;
    }
    return n ? median(times, n) : 0;
}

typedef struct be_bench {
    bsi_backend *be;
    bsi_weight **w; /* copies of one matrix, or (multi) the matrices of one call */
    int n_w;
    float *x, *y[3], *q, *out;
    void *kc, *vc;
    bsi_kv_shape kv; /* of kc and vc */
    int64_t n_tok, n_head, n_kv, hd;
    int64_t att_pos; /* attention: the first query token's position */
    float *k, *v, *qn, *kn; /* attn_prep's inputs */
    int32_t *pos;
    const float *rows[16];
    int n_rows;
    uint32_t n_vocab;
    bsi_sample_params sp[16];
    int32_t tok[16];
    float lp[16];
} be_bench;

static bonsai_status op_matmul(void *ctx, int i)
{
    be_bench *b = ctx;
    return b->be->vt->matmul(b->be, b->w[i % b->n_w], b->x, b->y[0], b->n_tok);
}

/* Median seconds of one matmul of n_tok tokens through the CPU path, cycling through the copies
 * (a failure shows as the median of the calls made before it, as the measurement always was). */
static double time_matmul(bench_ctx *c, int64_t n_tok, double budget)
{
    be_bench b = {.be = c->be, .w = c->copies, .n_w = c->n_copies, .x = c->x, .y = {c->y},
                  .n_tok = n_tok};
    bonsai_status st;
    return time_queued(c->be, op_matmul, &b, budget, &st);
}

static bonsai_status op_multi(void *ctx, int i)
{
    be_bench *b = ctx;
    (void)i;
    if (b->be->vt->matmul_multi)
        return b->be->vt->matmul_multi(b->be, b->n_w, (const bsi_weight *const *)b->w, b->x,
                                       b->y, b->n_tok);
    for (int k = 0; k < b->n_w; k++) {
        bonsai_status st = b->be->vt->matmul(b->be, b->w[k], b->x, b->y[k], b->n_tok);
        if (st) return st;
    }
    return BONSAI_OK;
}

static bonsai_status op_swiglu(void *ctx, int i)
{
    be_bench *b = ctx;
    (void)i;
    return b->be->vt->matmul_swiglu(b->be, b->w[0], b->w[1], b->x, b->y[0], b->n_tok);
}

static bonsai_status op_attention(void *ctx, int i)
{
    be_bench *b = ctx;
    (void)i;
    return b->be->vt->attention(b->be, &b->kv, b->q, b->kc, b->vc, b->out, b->n_tok, b->att_pos,
                                b->n_head, 1.0f / sqrtf((float)b->hd));
}

/* Qwen3's RoPE (bonsai synth's): NeoX pairs, YaRN */
static const bsi_rope bench_rope = {.n_rot = 128,
                                    .neox = 1,
                                    .freq_base = 1e6f,
                                    .yarn_factor = 4,
                                    .yarn_orig_ctx = 8192,
                                    .yarn_beta_fast = 32,
                                    .yarn_beta_slow = 1};

/* a prompt's q/k norms, RoPE and KV store in one call (attn_prep)... */
static bonsai_status op_attn_prep(void *ctx, int i)
{
    be_bench *b = ctx;
    (void)i;
    bsi_attn_prep a = {.q = b->q,
                       .k = b->k,
                       .v = b->v,
                       .q_norm = b->qn,
                       .k_norm = b->kn,
                       .eps = 1e-6f,
                       .pos = b->pos,
                       .n_tok = b->n_tok,
                       .n_head = b->n_head,
                       .n_head_kv = b->n_kv,
                       .head_dim = b->hd,
                       .rope = &bench_rope,
                       .k_cache = b->kc,
                       .v_cache = b->vc,
                       .kv = &b->kv};
    return b->be->vt->attn_prep(b->be, &a);
}

/* ... and as the separate operations */
static bonsai_status op_prep_ops(void *ctx, int i)
{
    be_bench *b = ctx;
    const bsi_backend_vtable *vt = b->be->vt;
    (void)i;
    int64_t n = b->n_tok, hd = b->hd;
    bonsai_status st = vt->rmsnorm(b->be, b->q, b->qn, b->q, hd, n * b->n_head, 1e-6f);
    if (!st) st = vt->rmsnorm(b->be, b->k, b->kn, b->k, hd, n * b->n_kv, 1e-6f);
    if (!st) st = vt->rope(b->be, b->q, b->pos, n, b->n_head, hd, &bench_rope);
    if (!st) st = vt->rope(b->be, b->k, b->pos, n, b->n_kv, hd, &bench_rope);
    if (!st) st = vt->kv_store(b->be, &b->kv, b->kc, b->vc, b->k, b->v, n, 0);
    return st;
}

static bonsai_status op_sample(void *ctx, int i)
{
    be_bench *b = ctx;
    (void)i;
    return b->be->vt->sample(b->be, (uint32_t)b->n_rows, b->rows, b->n_vocab, b->sp, b->tok,
                             b->lp);
}

/* Device (or host) floats: n random values in [-scale, scale]. */
static bonsai_status be_floats(bsi_backend *be, size_t n, float scale, float **out)
{
    float *h = malloc(n * sizeof *h);
    if (!h) return BONSAI_ERR_NO_MEMORY;
    for (size_t i = 0; i < n; i++)
        h[i] = scale * (float)((int64_t)(next() % 2001) - 1000) / 1000.0f;
    bonsai_status st = be->vt->alloc(be, n * sizeof *h, (void **)out);
    if (!st) st = be->vt->upload(be, *out, h, n * sizeof *h);
    free(h);
    return st;
}

static uint8_t *random_q1_data(const shape *s, size_t *bytes)
{
    *bytes = (size_t)s->rows * (size_t)(s->cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    uint8_t *data = malloc(*bytes);
    if (!data) return NULL;
    for (size_t i = 0; i < *bytes; i++) data[i] = (uint8_t)next();
    for (size_t b = 0; b < *bytes; b += BSI_Q1_BLOCK_BYTES) { /* sane scales */
        uint16_t h = bsi_fp32_to_fp16(0.01f + (float)(next() % 100) * 1e-4f);
        memcpy(data + b, &h, 2);
    }
    return data;
}

typedef struct multi_shape {
    int64_t rows[3];
    int n;
    int64_t cols;
    const char *what;
} multi_shape;

static const multi_shape multi_shapes[] = {
    {{2048, 1024, 1024}, 3, 2048, "1.7B q, k, v"},
    {{6144, 6144}, 2, 2048, "1.7B gate, up"},
    {{4096, 1024, 1024}, 3, 4096, "8B q, k, v"},
    {{12288, 12288}, 2, 4096, "8B gate, up"},
};

static void report(bool json, const char *backend, const char *kernel, const char *what,
                   int64_t rows, int64_t cols, int64_t tokens, double t, double bytes,
                   double flop)
{
    if (json) {
        printf("{\"kernel\":\"%s\",\"backend\":\"%s\",\"shape\":\"%s\",\"rows\":%" PRId64
               ",\"cols\":%" PRId64 ",\"tokens\":%" PRId64 ",\"seconds\":%.9f,\"gbps\":%.6g,"
               "\"tflops\":%.6g}\n",
               kernel, backend, what, rows, cols, tokens, t, bytes / t / 1e9, flop / t / 1e12);
        return;
    }
    printf("%-13s %-24s %6" PRId64 " %6" PRId64 " %5" PRId64 " %10.1f us %8.1f GB/s %7.2f TFLOP/s\n",
           kernel, what, rows, cols, tokens, t * 1e6, bytes / t / 1e9, flop / t / 1e12);
}

/* Every measurement of --backend: matrix products of 1, 8 and `tokens` tokens (weights cycled
 * through copies past any cache), the prompt's multi-matrix products, attention of a prompt,
 * what lies between the products and attention (attn_prep's work: fused where the backend has
 * it, and as the five operations), and sampling one and 16 rows where the backend samples. */
static int bench_backend(const char *name, int threads, int tokens, bool quick, bool json)
{
    bsi_backend_config cfg = {.n_threads = threads};
    be_bench b = {0};
    bonsai_status st = bsi_backend_create(name, &cfg, &b.be);
    if (st) {
        fprintf(stderr, "bonsai bench-kernels: %s\n", bonsai_last_error());
        return 1;
    }
    const char *desc = b.be->vt->describe(b.be);
    if (!json)
        printf("%s\n\n%-13s %-24s %6s %6s %5s %13s %13s %15s\n", desc, "kernel", "shape", "rows",
               "cols", "tok", "time", "weights", "compute");
    int64_t max_rows = 151669, max_cols = 12288;
    for (int k = 0; k < 3 && !st; k++)
        st = b.be->vt->alloc(b.be, (size_t)(tokens * max_rows) * sizeof(float), (void **)&b.y[k]);
    if (!st) st = be_floats(b.be, (size_t)(tokens * max_cols), 1.0f, &b.x);
    size_t n_shapes = quick ? 3 : sizeof shapes / sizeof shapes[0];
    for (size_t si = 0; si < n_shapes && !st; si++) {
        const shape *s = &shapes[si];
        size_t bytes;
        uint8_t *data = random_q1_data(s, &bytes);
        if (!data) st = BONSAI_ERR_NO_MEMORY;
        bench_ctx c = {.be = b.be};
        if (!st) st = make_copies(&c, s, data);
        free(data);
        b.w = c.copies;
        b.n_w = c.n_copies;
        int64_t widths[3] = {1, 8, tokens};
        for (int k = 0; k < 3 && !st; k++) {
            if (s->rows > 100000 && k == 2) break; /* the LM head runs for one token */
            b.n_tok = widths[k];
            double t = time_queued(b.be, op_matmul, &b, 1.0, &st);
            if (!st)
                report(json, desc, "matmul", s->what, s->rows, s->cols, b.n_tok, t,
                       (double)bytes, 2.0 * s->rows * s->cols * b.n_tok);
        }
        free_copies(&c);
    }
    for (size_t mi = 0; mi < sizeof multi_shapes / sizeof multi_shapes[0] && !st; mi++) {
        const multi_shape *ms = &multi_shapes[mi];
        if (quick && ms->cols > 2048) break;
        bsi_weight *w[3] = {NULL, NULL, NULL};
        double bytes = 0, flop = 0;
        int64_t rows = 0;
        for (int k = 0; k < ms->n && !st; k++) {
            shape s = {ms->rows[k], ms->cols, ms->what};
            size_t n;
            uint8_t *data = random_q1_data(&s, &n);
            if (!data) st = BONSAI_ERR_NO_MEMORY;
            bsi_matrix_desc d = {"bench", BONSAI_TENSOR_Q1_0, s.rows, s.cols, data, false};
            if (!st) st = b.be->vt->weight_create(b.be, &d, &w[k]);
            free(data);
            bytes += (double)n;
            flop += 2.0 * s.rows * s.cols * tokens;
            rows += s.rows;
        }
        b.w = w;
        b.n_w = ms->n;
        b.n_tok = tokens;
        double t = st ? 0 : time_queued(b.be, op_multi, &b, 1.0, &st);
        if (!st) report(json, desc, "matmul_multi", ms->what, rows, ms->cols, tokens, t, bytes, flop);
        /* gate and up as a prompt runs them where the backend fuses SiLU-multiply */
        if (!st && ms->n == 2 && b.be->vt->matmul_swiglu) {
            t = time_queued(b.be, op_swiglu, &b, 1.0, &st);
            if (!st)
                report(json, desc, "matmul_swiglu", ms->what, rows, ms->cols, tokens, t, bytes,
                       flop);
        }
        for (int k = 0; k < ms->n; k++)
            if (w[k]) b.be->vt->weight_free(b.be, w[k]);
    }
    /* attention of a prompt from position 0: the 1.7B shape's heads (16 of 128, 8 kv heads) */
    b.n_tok = tokens;
    b.n_head = 16;
    b.n_kv = 8;
    b.hd = 128;
    size_t kv_dim = (size_t)(b.n_kv * b.hd), nq = (size_t)(tokens * b.n_head * b.hd);
    float *k = NULL, *v = NULL;
    if (!st) st = be_floats(b.be, (size_t)tokens * kv_dim, 2.0f, &k);
    if (!st) st = be_floats(b.be, (size_t)tokens * kv_dim, 2.0f, &v);
    if (!st) st = be_floats(b.be, nq, 1.0f, &b.q);
    if (!st) st = b.be->vt->alloc(b.be, nq * sizeof(float), (void **)&b.out);
    b.kv = (bsi_kv_shape){BONSAI_TENSOR_F16, tokens, b.n_kv, b.hd};
    if (!st) st = b.be->vt->alloc(b.be, bsi_kv_bytes(&b.kv), &b.kc);
    if (!st) st = b.be->vt->alloc(b.be, bsi_kv_bytes(&b.kv), &b.vc);
    if (!st) st = b.be->vt->kv_store(b.be, &b.kv, b.kc, b.vc, k, v, tokens, 0);
    if (!st) {
        double t = time_queued(b.be, op_attention, &b, 1.0, &st);
        /* q.k and p.v over the causal half: 2 products x 2 flop x heads x head size x n^2 / 2 */
        double flop = 2.0 * (double)b.n_head * (double)b.hd * (double)tokens * (double)tokens;
        if (!st)
            report(json, desc, "attention", "1.7B heads, causal", b.n_head, b.hd, tokens, t,
                   2.0 * (double)tokens * kv_dim * 2, flop);
    }
    /* a chat's next prompt: 64 tokens after 4,096 in the cache (a GPU shares the cache out among
     * blocks there, as 16 heads x 1 query tile would leave most SMs idle) */
    if (!st && !quick) {
        enum { PAST = 4096, NEW = 64 };
        be_bench a = b;
        float *k2 = NULL, *v2 = NULL;
        a.kc = a.vc = NULL;
        a.q = a.out = NULL;
        size_t rows = PAST + NEW;
        a.kv = (bsi_kv_shape){BONSAI_TENSOR_F16, (int64_t)rows, b.n_kv, b.hd};
        st = b.be->vt->alloc(b.be, bsi_kv_bytes(&a.kv), &a.kc);
        if (!st) st = b.be->vt->alloc(b.be, bsi_kv_bytes(&a.kv), &a.vc);
        if (!st) st = be_floats(b.be, rows * kv_dim, 2.0f, &k2);
        if (!st) st = be_floats(b.be, rows * kv_dim, 2.0f, &v2);
        if (!st) st = be_floats(b.be, (size_t)NEW * b.n_head * b.hd, 1.0f, &a.q);
        if (!st) st = b.be->vt->alloc(b.be, (size_t)NEW * b.n_head * b.hd * 4, (void **)&a.out);
        if (!st) st = b.be->vt->kv_store(b.be, &a.kv, a.kc, a.vc, k2, v2, (int64_t)rows, 0);
        a.n_tok = NEW;
        a.att_pos = PAST;
        double t = st ? 0 : time_queued(b.be, op_attention, &a, 1.0, &st);
        /* every query token sees ~PAST + NEW / 2 positions */
        double flop = 4.0 * (double)b.n_head * (double)b.hd * NEW * (PAST + NEW / 2.0);
        if (!st)
            report(json, desc, "attention", "64 after 4096 cached", b.n_head, b.hd, NEW, t,
                   (double)rows * kv_dim * 2 * 2, flop);
        void *more[] = {a.kc, a.vc, k2, v2, a.q, a.out};
        for (size_t i = 0; i < sizeof more / sizeof *more; i++)
            if (more[i]) b.be->vt->free(b.be, more[i]);
    }
    /* what lies between the q/k/v products and attention, fused (where the backend has it:
     * CUDA) and as the five operations; q and k are normed again at each call, so they stay in
     * range */
    if (!st) {
        b.k = k;
        b.v = v;
        b.pos = malloc((size_t)tokens * sizeof *b.pos);
        if (!b.pos) st = BONSAI_ERR_NO_MEMORY;
        for (int t = 0; !st && t < tokens; t++) b.pos[t] = t;
        if (!st) st = be_floats(b.be, (size_t)b.hd, 1.0f, &b.qn);
        if (!st) st = be_floats(b.be, (size_t)b.hd, 1.0f, &b.kn);
        /* bytes: q, k and v read, q and k written, the fp16 cache rows */
        double bytes = (2.0 * (double)nq + 3.0 * (double)tokens * (double)kv_dim) * 4 +
                       (double)tokens * (double)kv_dim * 2 * 2;
        for (int fused = b.be->vt->attn_prep ? 1 : 0; fused >= 0 && !st; fused--) {
            double t = time_queued(b.be, fused ? op_attn_prep : op_prep_ops, &b, 0.5, &st);
            if (!st)
                report(json, desc, fused ? "attn_prep" : "attn_prep_ops",
                       fused ? "1.7B heads, one call" : "1.7B heads, 5 operations", b.n_head,
                       b.hd, tokens, t, bytes, 0);
        }
    }
    /* sampling rows of the 1.7B vocabulary with the default chain: 16 rows of random logits
     * (not the products' outputs: fewer than 16 rows of those are written when tokens < 16) */
    float *logits = NULL;
    if (!st && b.be->vt->sample) {
        b.n_vocab = 151669;
        st = be_floats(b.be, (size_t)16 * b.n_vocab, 8.0f, &logits);
        for (int i = 0; i < 16 && !st; i++) {
            b.rows[i] = logits + (size_t)i * b.n_vocab;
            b.sp[i] = (bsi_sample_params){.top_k = 40, .has_top_p = true, .top_p = 0.95f,
                                          .top_p_keep = 1, .has_min_p = true,
                                          .min_p_log = logf(0.05f), .min_p_keep = 1,
                                          .temp = 0.8f, .u = 0.5};
        }
        for (int n = 1; n <= 16 && !st; n *= 16) {
            b.n_rows = n;
            double t = time_queued(b.be, op_sample, &b, 0.5, &st);
            if (!st)
                report(json, desc, "sample", n == 1 ? "one row" : "16 rows at once", n,
                       b.n_vocab, n, t, (double)n * b.n_vocab * 4, 0);
        }
    }
    if (st) fprintf(stderr, "bonsai bench-kernels: %s\n", bonsai_last_error());
    free(b.pos);
    float *bufs[] = {b.x, b.y[0], b.y[1], b.y[2], b.q, b.out, k, v, b.kc, b.vc, logits, b.qn, b.kn};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) b.be->vt->free(b.be, bufs[i]);
    b.be->vt->destroy(b.be);
    return st ? 1 : 0;
}

typedef struct bench_kernels_opts {
    bool json, quick;
    int64_t threads, tokens;
    const char *isa, *backend;
} bench_kernels_opts;

static int cmd_bench_kernels(int argc, char **argv);

static const cli_option bench_kernels_options[] = {
    {.names = "--json",
     .kind = CLI_FLAG,
     .offset = offsetof(bench_kernels_opts, json),
     .help = "Print one JSON object per measurement, one per line."},
    {.names = "--threads",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(bench_kernels_opts, threads),
     .min = 1,
     .max = 256,
     .def = "the number of physical cores",
     .help = "The second thread count measured (the first is 1)."},
    {.names = "--isa",
     .value = "NAME",
     .kind = CLI_STRING,
     .offset = offsetof(bench_kernels_opts, isa),
     .def = "every instruction set this CPU runs",
     .help = "Measure only this instruction set (scalar, avx2, avx512 or neon)."},
    {.names = "--quick",
     .kind = CLI_FLAG,
     .offset = offsetof(bench_kernels_opts, quick),
     .help = "Skip the 8B and LM-head shapes."},
    {.names = "--tokens",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(bench_kernels_opts, tokens),
     .min = 2,
     .max = 4096,
     .def = "512",
     .help = "The width of the matrix-matrix product (prompt processing)."},
    {.names = "--backend",
     .value = "NAME",
     .kind = CLI_STRING,
     .offset = offsetof(bench_kernels_opts, backend),
     .def = "none: the CPU's kernels per instruction set",
     .help = "Instead, time that backend's operations through its table (cuda, cuda:N, cpu): "
             "matrix products of 1, 8 and --tokens tokens, q/k/v and gate/up in one call, a "
             "prompt's attention, and sampling one and 16 rows at once."},
};

const cli_command cli_bench_kernels_command = {
    .name = "bench-kernels",
    .summary = "measure memory bandwidth and the 1-bit kernels",
    .synopsis = "[--json] [--threads N] [--isa NAME] [--quick] [--tokens N] [--backend NAME]",
    .description =
        "Measures this machine's memory read bandwidth (1 and N threads), then the Q1_0 "
        "matrix-vector product (decode) on the Bonsai-1.7B and 8B shapes for every available "
        "instruction set at 1 and N threads, reporting GB/s of packed weights read and the "
        "fraction of the measured bandwidth, and the matrix-matrix product at --tokens tokens "
        "(prompt processing) in tokens/s with its speed-up over that many matrix-vector "
        "calls.\n\n"
        "Every call goes through the CPU backend's real path (activation quantization, thread "
        "pool, kernel) and cycles through copies of the matrix totalling more than 256 MiB, so "
        "weights come from memory as in a real decode step; the median of repetitions is "
        "reported.\n\n"
        "With --json the keys are kernel (memory_read, q1_0_gemv, q1_0_gemm), isa, rows, cols, "
        "threads, gbps, bw_fraction, plus seconds, bw_gbps and, for the matrix-matrix product, "
        "tokens, tok_per_s and speedup_vs_gemv.\n\n"
        "--backend NAME times a backend's own operations instead (a GPU's kernels): each "
        "operation queued 20 times between waits for the device, the median per call, with the "
        "weights read (GB/s) and the arithmetic (TFLOP/s) per second. JSON keys: kernel "
        "(matmul, matmul_multi, attention, sample), backend, shape, rows, cols, tokens, "
        "seconds, gbps, tflops.",
    .options = bench_kernels_options,
    .n_options = sizeof bench_kernels_options / sizeof bench_kernels_options[0],
    .exit_status = "0\tthe measurements were printed\n"
                   "1\tout of memory, or the backend failed (one line on standard error)\n"
                   "2\ta usage error (one line on standard error)",
    .examples = "The 1.7B shapes only, as JSON lines:\n"
                "$ bonsai bench-kernels --quick --json\n"
                "The AVX2 kernels at 1 and 8 threads:\n"
                "$ bonsai bench-kernels --isa avx2 --threads 8\n"
                "The GPU's kernels at 512 tokens:\n"
                "$ bonsai bench-kernels --backend cuda",
    .opts_size = sizeof(bench_kernels_opts),
    .run = cmd_bench_kernels,
};

static int cmd_bench_kernels(int argc, char **argv)
{
    bench_kernels_opts o = {.threads = bsi_physical_cores(), .tokens = 512};
    cli_parsed parsed;
    int rc;
    setvbuf(stdout, NULL, _IOLBF, 0); /* each row as it comes, even into a pipe */
    if (!cli_begin(&cli_bench_kernels_command, argc, argv, &o, &parsed, &rc)) return rc;
    if (o.threads > 256) o.threads = 256; /* a default out of the range */
    if (o.threads < 1) o.threads = 1;
    if (o.backend) return bench_backend(o.backend, (int)o.threads, (int)o.tokens, o.quick, o.json);
    bool json = o.json, quick = o.quick;
    int threads = (int)o.threads, tokens = (int)o.tokens;
    const char *only_isa = o.isa;
    int thread_counts[2] = {1, threads};
    int n_counts = threads > 1 ? 2 : 1;
    double bw[2];
    for (int k = 0; k < n_counts; k++) {
        bw[k] = measure_bandwidth(thread_counts[k]);
        if (json)
            printf("{\"kernel\":\"memory_read\",\"isa\":\"-\",\"rows\":0,\"cols\":0,"
                   "\"threads\":%d,\"gbps\":%.6g,\"bw_fraction\":1.0}\n",
                   thread_counts[k], bw[k]);
        else
            printf("memory read bandwidth, %d thread%s: %.1f GB/s\n", thread_counts[k],
                   thread_counts[k] > 1 ? "s" : "", bw[k]);
    }
    if (!json)
        printf("\n%-7s %-26s %7s %7s %3s %10s %8s %7s\n", "isa", "shape", "rows", "cols", "thr",
               "time", "GB/s", "of bw");

    size_t n_shapes = quick ? 3 : sizeof shapes / sizeof shapes[0];
    for (int isa = 0; isa < BSI_ISA_COUNT; isa++) {
        if (!bsi_isa_available((bsi_isa)isa)) continue;
        if (only_isa && strcmp(only_isa, bsi_isa_name((bsi_isa)isa))) continue;
        for (size_t si = 0; si < n_shapes; si++) {
            const shape *s = &shapes[si];
            size_t bytes;
            uint8_t *data = random_q1_data(s, &bytes);
            float *x = malloc((size_t)(tokens * s->cols) * sizeof(float));
            float *y = malloc((size_t)(tokens * s->rows) * sizeof(float));
            if (!data || !x || !y) {
                fprintf(stderr, "bonsai bench-kernels: out of memory\n");
                return 1;
            }
            for (int64_t i = 0; i < tokens * s->cols; i++)
                x[i] = (float)((int64_t)(next() % 2001) - 1000) / 1000.0f;
            for (int k = 0; k < n_counts; k++) {
                bsi_backend_config cfg = {.n_threads = thread_counts[k],
                                          .cpu_isa = bsi_isa_name((bsi_isa)isa)};
                bench_ctx c = {.x = x, .y = y};
                bonsai_status st = bsi_backend_create("cpu", &cfg, &c.be);
                if (!st) st = make_copies(&c, s, data);
                if (st) {
                    fprintf(stderr, "bonsai bench-kernels: %s\n", bonsai_last_error());
                    return 1;
                }
                bool slow = isa == BSI_ISA_SCALAR;
                double t = time_matmul(&c, 1, slow ? 0.5 : 1.0);
                double gbps = (double)bytes / t / 1e9;
                if (json)
                    printf("{\"kernel\":\"q1_0_gemv\",\"isa\":\"%s\",\"rows\":%" PRId64
                           ",\"cols\":%" PRId64 ",\"threads\":%d,\"seconds\":%.9f,"
                           "\"gbps\":%.6g,\"bw_gbps\":%.2f,\"bw_fraction\":%.6g}\n",
                           bsi_isa_name((bsi_isa)isa), s->rows, s->cols, thread_counts[k], t, gbps,
                           bw[k], gbps / bw[k]);
                else
                    printf("%-7s %-26s %7" PRId64 " %7" PRId64 " %3d %8.1f us %8.2f %6.1f%%\n",
                           bsi_isa_name((bsi_isa)isa), s->what, s->rows, s->cols, thread_counts[k],
                           t * 1e6, gbps, 100 * gbps / bw[k]);
                /* prompt processing: 512 tokens in one call (skipped for the scalar reference on
                 * large shapes, which would take minutes) */
                if (!(slow && s->rows * s->cols > 2048 * 6144)) {
                    double tg = time_matmul(&c, tokens, slow ? 0.5 : 2.0);
                    double tok_s = tokens / tg, speedup = t * tokens / tg;
                    if (json)
                        printf("{\"kernel\":\"q1_0_gemm\",\"isa\":\"%s\",\"rows\":%" PRId64
                               ",\"cols\":%" PRId64 ",\"threads\":%d,\"tokens\":%d,"
                               "\"seconds\":%.9f,\"tok_per_s\":%.1f,\"speedup_vs_gemv\":%.2f,"
                               "\"gbps\":%.6g,\"bw_fraction\":%.6g}\n",
                               bsi_isa_name((bsi_isa)isa), s->rows, s->cols, thread_counts[k],
                               tokens, tg, tok_s, speedup, (double)bytes / tg / 1e9,
                               (double)bytes / tg / 1e9 / bw[k]);
                    else
                        printf("%-7s   gemm, %4d tokens          %7" PRId64 " %7" PRId64
                               " %3d %8.2f ms %8.0f tok/s (%.2fx %d gemv)\n",
                               "", tokens, s->rows, s->cols, thread_counts[k], tg * 1e3, tok_s,
                               speedup, tokens);
                }
                free_copies(&c);
                c.be->vt->destroy(c.be);
            }
            free(data);
            free(x);
            free(y);
        }
    }
    return 0;
}
