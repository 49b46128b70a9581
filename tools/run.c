/* bonsai eval (a batch of token ids -> logits, greedy next token) and bonsai bench (pp/tg
 * throughput like llama-bench). */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Parses "1 2 3" (spaces or commas) into a new array. */
static int parse_ids(const char *text, int32_t **out, uint32_t *n)
{
    size_t cap = 16, len = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    const char *p = text;
    while (ids && *p) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            free(ids);
            return -1;
        }
        if (len == cap) {
            int32_t *grown = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!grown) {
                free(ids);
                return -1;
            }
            ids = grown;
        }
        ids[len++] = (int32_t)v;
        p = end;
    }
    if (!ids || len == 0 || len > UINT32_MAX) {
        free(ids);
        return -1;
    }
    *out = ids;
    *n = (uint32_t)len;
    return 0;
}

static void eval_usage(FILE *f)
{
    fprintf(f, "usage: bonsai eval -m MODEL --ids \"ID ID ...\" [--logits FILE] [--all] [-t N]\n"
               "\n"
               "Evaluate the token ids in one batch and print the greedy next token (id and\n"
               "piece). --logits writes the last position's logits (every position's with --all)\n"
               "as text, one float per line, position after position. -t sets the threads.\n");
}

int cmd_eval(int argc, char **argv)
{
    const char *model_path = NULL, *ids_text = NULL, *logits_path = NULL;
    bool all = false;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc)
            model_path = argv[++i];
        else if (!strcmp(argv[i], "--ids") && i + 1 < argc)
            ids_text = argv[++i];
        else if (!strcmp(argv[i], "--logits") && i + 1 < argc)
            logits_path = argv[++i];
        else if (!strcmp(argv[i], "--all"))
            all = true;
        else if (!strcmp(argv[i], "-t") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            eval_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "bonsai eval: unknown argument '%s'\n", argv[i]);
            eval_usage(stderr);
            return 2;
        }
    }
    int32_t *ids;
    uint32_t n;
    if (!model_path || !ids_text || threads < 0) {
        eval_usage(stderr);
        return 2;
    }
    if (parse_ids(ids_text, &ids, &n)) {
        fprintf(stderr, "bonsai eval: --ids must be non-negative integers\n");
        return 2;
    }
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_threads = threads;
    sp.n_ctx = n;
    int rc = 0;
    bonsai_status st = bonsai_model_load(model_path, NULL, &m);
    if (!st) st = bonsai_session_create(m, &sp, &s);
    if (!st) st = bonsai_session_eval(s, ids, n, all ? BONSAI_EVAL_ALL_LOGITS : 0);
    if (st) {
        rc = cli_error("eval", st);
        goto done;
    }
    uint32_t rows, vocab = bonsai_model_n_vocab(m);
    const float *logits = bonsai_session_logits(s, &rows);
    const float *last = logits + (size_t)(rows - 1) * vocab;
    uint32_t best = 0;
    for (uint32_t v = 1; v < vocab; v++)
        if (last[v] > last[best]) best = v;
    const bonsai_value *toks;
    const char *piece = "";
    uint64_t piece_len = 0;
    if (!bonsai_model_meta_get(m, "tokenizer.ggml.tokens", &toks))
        bonsai_value_array_string(toks, best, &piece, &piece_len);
    printf("next token: %u ", best);
    cli_print_escaped(stdout, piece ? piece : "", piece ? piece_len : 0, 64);
    printf(" (logit %.6g)\n", (double)last[best]);
    if (logits_path) {
        FILE *f = fopen(logits_path, "w");
        if (!f) {
            fprintf(stderr, "bonsai eval: cannot write %s: %s\n", logits_path, strerror(errno));
            rc = 1;
            goto done;
        }
        for (size_t i = 0; i < (size_t)rows * vocab; i++) fprintf(f, "%.9g\n", (double)logits[i]);
        if (fclose(f)) {
            fprintf(stderr, "bonsai eval: write to %s failed\n", logits_path);
            rc = 1;
        }
    }
done:
    bonsai_session_free(s);
    bonsai_model_free(m);
    free(ids);
    return rc;
}

/* ---- bench ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct stats {
    double median, min, max;
} stats;

static stats summarize(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    stats s = {n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]), v[0], v[n - 1]};
    return s;
}

static void bench_usage(FILE *f)
{
    fprintf(f,
            "usage: bonsai bench -m MODEL [-p 512] [-n 128] [-r 5] [-t N] [--json]\n"
            "\n"
            "Prompt processing (one batch of -p tokens) and generation (-n tokens one at a\n"
            "time) in tokens/s, like llama-bench: one warm-up, then -r repetitions, reported as\n"
            "median, min and max. Token ids are fixed pseudo-random ones; each repetition\n"
            "starts from an empty cache. -p 0 or -n 0 skips that test.\n");
}

int cmd_bench(int argc, char **argv)
{
    const char *model_path = NULL;
    int p = 512, n = 128, reps = 5, threads = 0;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc)
            model_path = argv[++i];
        else if (!strcmp(argv[i], "-p") && i + 1 < argc)
            p = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc)
            n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            bench_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "bonsai bench: unknown argument '%s'\n", argv[i]);
            bench_usage(stderr);
            return 2;
        }
    }
    if (!model_path || p < 0 || n < 0 || p + n < 1 || p > 65536 || n > 65536 || reps < 1 ||
        reps > 1000 || threads < 0) {
        bench_usage(stderr);
        return 2;
    }
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_threads = threads;
    sp.n_ctx = (uint32_t)(p > n + 1 ? p : n + 1);
    bonsai_status st = bonsai_model_load(model_path, NULL, &m);
    if (!st) st = bonsai_session_create(m, &sp, &s);
    if (st) {
        bonsai_model_free(m);
        return cli_error("bench", st);
    }
    uint32_t vocab = bonsai_model_n_vocab(m);
    int32_t *ids = malloc((size_t)(p > n ? p : n) * sizeof *ids);
    double *pp = malloc((size_t)reps * sizeof *pp), *tg = malloc((size_t)reps * sizeof *tg);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < (p > n ? p : n); i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % vocab);
    }
    for (int r = -1; r < reps && !st; r++) { /* r = -1: warm-up */
        if (p) {
            bonsai_session_clear(s);
            double t0 = now();
            st = bonsai_session_eval(s, ids, (uint32_t)p, 0);
            if (r >= 0) pp[r] = p / (now() - t0);
        }
        if (n && !st) {
            bonsai_session_clear(s);
            double t0 = now();
            for (int i = 0; i < n && !st; i++) st = bonsai_session_eval(s, &ids[i], 1, 0);
            if (r >= 0) tg[r] = n / (now() - t0);
        }
    }
    int rc = 0;
    if (st) {
        rc = cli_error("bench", st);
    } else {
        bonsai_model_hparams h = {.struct_size = sizeof h};
        bonsai_model_hparams_get(m, &h);
        stats sp_ = p ? summarize(pp, reps) : (stats){0, 0, 0};
        stats sg = n ? summarize(tg, reps) : (stats){0, 0, 0};
        if (json) {
            printf("{\"model\":\"%s\",\"arch\":\"%s\",\"file_bytes\":%" PRIu64
                   ",\"params\":%" PRIu64 ",\"backend\":\"%s\",\"repetitions\":%d,"
                   "\"pp\":%d,\"pp_tok_s\":%.2f,\"pp_min\":%.2f,\"pp_max\":%.2f,"
                   "\"tg\":%d,\"tg_tok_s\":%.2f,\"tg_min\":%.2f,\"tg_max\":%.2f}\n",
                   model_path, bonsai_model_architecture(m), bonsai_model_file_size(m),
                   bonsai_model_n_params(m), bonsai_session_backend(s), reps, p, sp_.median,
                   sp_.min, sp_.max, n, sg.median, sg.min, sg.max);
        } else {
            double np = (double)bonsai_model_n_params(m);
            printf("model:    %s (%s, %.2f MiB, %.3f %s parameters, %u layers)\n", model_path,
                   bonsai_model_architecture(m), bonsai_model_file_size(m) / 1048576.0,
                   np >= 1e9 ? np / 1e9 : np / 1e6, np >= 1e9 ? "B" : "M", h.n_layer);
            printf("backend:  %s\n", bonsai_session_backend(s));
            if (p)
                printf("pp%-5d  %9.2f tok/s  (median of %d; min %.2f, max %.2f)\n", p, sp_.median,
                       reps, sp_.min, sp_.max);
            if (n)
                printf("tg%-5d  %9.2f tok/s  (median of %d; min %.2f, max %.2f)\n", n, sg.median,
                       reps, sg.min, sg.max);
        }
    }
    free(ids);
    free(pp);
    free(tg);
    bonsai_session_free(s);
    bonsai_model_free(m);
    return rc;
}
