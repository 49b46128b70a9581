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
    uint64_t *buf = aligned_alloc(64, bytes);
    if (!buf) return 0;
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

/* Median seconds of one matmul of n_tok tokens, cycling through the copies. */
static double time_matmul(bench_ctx *c, int64_t n_tok, double budget)
{
    double times[64];
    int n = 0;
    c->be->vt->matmul(c->be, c->copies[0], c->x, c->y, n_tok); /* warm-up */
    double start = now();
    while (n < 64 && (n < 5 || now() - start < budget)) {
        double t0 = now();
        c->be->vt->matmul(c->be, c->copies[n % c->n_copies], c->x, c->y, n_tok);
        times[n++] = now() - t0;
    }
    return median(times, n);
}

typedef struct bench_kernels_opts {
    bool json, quick;
    int64_t threads, tokens;
    const char *isa;
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
};

const cli_command cli_bench_kernels_command = {
    .name = "bench-kernels",
    .summary = "measure memory bandwidth and the 1-bit kernels",
    .synopsis = "[--json] [--threads N] [--isa NAME] [--quick] [--tokens N]",
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
        "tokens, tok_per_s and speedup_vs_gemv.",
    .options = bench_kernels_options,
    .n_options = sizeof bench_kernels_options / sizeof bench_kernels_options[0],
    .exit_status = "0\tthe measurements were printed\n"
                   "1\tout of memory, or the CPU backend failed (one line on standard error)\n"
                   "2\ta usage error (one line on standard error)",
    .examples = "The 1.7B shapes only, as JSON lines:\n"
                "$ bonsai bench-kernels --quick --json\n"
                "The AVX2 kernels at 1 and 8 threads:\n"
                "$ bonsai bench-kernels --isa avx2 --threads 8",
    .opts_size = sizeof(bench_kernels_opts),
    .run = cmd_bench_kernels,
};

static int cmd_bench_kernels(int argc, char **argv)
{
    bench_kernels_opts o = {.threads = bsi_physical_cores(), .tokens = 512};
    cli_parsed parsed;
    int rc;
    if (!cli_begin(&cli_bench_kernels_command, argc, argv, &o, &parsed, &rc)) return rc;
    if (o.threads > 256) o.threads = 256; /* a default out of the range */
    if (o.threads < 1) o.threads = 1;
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
            size_t bytes = (size_t)s->rows * (size_t)(s->cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
            uint8_t *data = malloc(bytes);
            float *x = malloc((size_t)(tokens * s->cols) * sizeof(float));
            float *y = malloc((size_t)(tokens * s->rows) * sizeof(float));
            if (!data || !x || !y) {
                fprintf(stderr, "bonsai bench-kernels: out of memory\n");
                return 1;
            }
            for (size_t i = 0; i < bytes; i++) data[i] = (uint8_t)next();
            for (size_t b = 0; b < bytes; b += BSI_Q1_BLOCK_BYTES) { /* sane scales */
                uint16_t h = bsi_fp32_to_fp16(0.01f + (float)(next() % 100) * 1e-4f);
                memcpy(data + b, &h, 2);
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
