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
    fprintf(f,
            "usage: bonsai eval -m MODEL --ids \"ID ID ...\" [--logits FILE] [--all] [-t N]\n"
            "                  [--backend NAME]\n"
            "       bonsai eval -m MODEL -f TEXT_FILE --perplexity [-c N] [-t N] [--backend NAME]\n"
            "\n"
            "Evaluate the token ids in one batch and print the greedy next token (id and\n"
            "piece). --logits writes the last position's logits (every position's with --all)\n"
            "as text, one float per line, position after position. -t sets the threads.\n"
            "\n"
            "--perplexity tokenizes the file, cuts it into chunks of -c tokens (default 512),\n"
            "and scores the second half of each chunk given the first, as llama.cpp's\n"
            "llama-perplexity does; it prints the running perplexity per chunk and the final\n"
            "estimate with its standard error.\n");
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = (n + 4096 + 1) * 2;
            char *p = realloc(buf, cap);
            if (!p) break;
            buf = p;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (!got) break;
    }
    bool bad = ferror(f) || !buf;
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Perplexity of a text file, chunk by chunk (see eval_usage). */
static int perplexity(const char *model_path, const char *text_path, uint32_t n_ctx, int threads,
                      const char *backend)
{
    size_t len;
    char *text = slurp(text_path, &len);
    if (!text) {
        fprintf(stderr, "bonsai eval: cannot read %s: %s\n", text_path, strerror(errno));
        return 1;
    }
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    int32_t *toks = NULL;
    uint32_t n_tok = 0;
    int rc = 0;
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_threads = threads;
    sp.n_ctx = n_ctx;
    if (backend) sp.backend = backend;
    bonsai_status st = bonsai_model_load(model_path, NULL, &m);
    if (!st) {
        st = bonsai_tokenize(m, text, len, BONSAI_TOKENIZE_ADD_BOS, NULL, 0, &n_tok);
        if (st == BONSAI_ERR_OUT_OF_RANGE) st = BONSAI_OK;
    }
    if (!st && !(toks = malloc(((size_t)n_tok + 1) * sizeof *toks))) st = BONSAI_ERR_NO_MEMORY;
    if (!st) st = bonsai_tokenize(m, text, len, BONSAI_TOKENIZE_ADD_BOS, toks, n_tok, &n_tok);
    if (!st) st = bonsai_session_create(m, &sp, &s);
    if (st) {
        rc = cli_error("eval", st);
        goto done;
    }
    uint32_t n_chunk = n_tok / n_ctx, vocab = bonsai_model_n_vocab(m);
    if (n_chunk == 0) {
        fprintf(stderr, "bonsai eval: %s has %u tokens, fewer than one chunk of %u (use -c)\n",
                text_path, n_tok, n_ctx);
        rc = 1;
        goto done;
    }
    int32_t bos = bonsai_model_token(m, BONSAI_TOKEN_BOS);
    bool add_bos = n_tok && toks[0] == bos && bos >= 0;
    uint32_t first = n_ctx / 2;
    double nll = 0, nll2 = 0, t0 = now();
    uint64_t count = 0;
    printf("%u tokens, %u chunks of %u, scoring positions %u..%u of each\n", n_tok, n_chunk, n_ctx,
           first + 1, n_ctx - 1);
    for (uint32_t c = 0; c < n_chunk; c++) {
        int32_t *chunk = toks + (size_t)c * n_ctx;
        int32_t saved = chunk[0];
        if (add_bos) chunk[0] = bos; /* every chunk starts like a document */
        bonsai_session_clear(s);
        st = bonsai_session_eval(s, chunk, n_ctx, BONSAI_EVAL_ALL_LOGITS);
        chunk[0] = saved;
        if (st) {
            rc = cli_error("eval", st);
            goto done;
        }
        uint32_t rows;
        const float *logits = bonsai_session_logits(s, &rows);
        for (uint32_t j = first; j + 1 < n_ctx; j++) {
            const float *l = logits + (size_t)j * vocab;
            double mx = l[0], sum = 0;
            for (uint32_t v = 1; v < vocab; v++) mx = l[v] > mx ? l[v] : mx;
            for (uint32_t v = 0; v < vocab; v++) sum += exp(l[v] - mx);
            double x = log(sum) + mx - l[chunk[j + 1]];
            nll += x;
            nll2 += x * x;
            count++;
        }
        printf("[%u]%.4f%s", c + 1, exp(nll / (double)count), c + 1 < n_chunk ? "," : "\n");
        fflush(stdout);
    }
    double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
    double err = count > 1 && var > 0 ? sqrt(var / (double)(count - 1)) : 0;
    printf("PPL = %.4f +/- %.4f (%" PRIu64 " tokens scored, %.1f s)\n", exp(mean), exp(mean) * err,
           count, now() - t0);
done:
    free(text);
    free(toks);
    bonsai_session_free(s);
    bonsai_model_free(m);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    const char *model_path = NULL, *ids_text = NULL, *logits_path = NULL, *text_path = NULL;
    bool all = false, ppl = false;
    int threads = 0;
    const char *backend = NULL;
    long n_ctx = 512;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc)
            model_path = argv[++i];
        else if (!strcmp(argv[i], "--ids") && i + 1 < argc)
            ids_text = argv[++i];
        else if (!strcmp(argv[i], "--logits") && i + 1 < argc)
            logits_path = argv[++i];
        else if (!strcmp(argv[i], "--all"))
            all = true;
        else if (!strcmp(argv[i], "--perplexity"))
            ppl = true;
        else if (!strcmp(argv[i], "-f") && i + 1 < argc)
            text_path = argv[++i];
        else if (!strcmp(argv[i], "-c") && i + 1 < argc) {
            char *end;
            n_ctx = strtol(argv[++i], &end, 10);
            if (*end || n_ctx < 2 || n_ctx > 1 << 20) n_ctx = -1;
        } else if (!strcmp(argv[i], "-t") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc)
            backend = argv[++i];
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
    if (ppl || text_path) {
        if (!model_path || !ppl || !text_path || ids_text || n_ctx < 0 || threads < 0) {
            eval_usage(stderr);
            return 2;
        }
        return perplexity(model_path, text_path, (uint32_t)n_ctx, threads, backend);
    }
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
    if (backend) sp.backend = backend;
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
            "usage: bonsai bench -m MODEL [-p 512] [-n 128] [-r 5] [-t N] [--backend NAME]\n"
            "                    [--sessions 1,4,16,64] [--json]\n"
            "\n"
            "Prompt processing (one batch of -p tokens) and generation (-n tokens one at a\n"
            "time) in tokens/s, like llama-bench: one warm-up, then -r repetitions, reported as\n"
            "median, min and max. Token ids are fixed pseudo-random ones; each repetition\n"
            "starts from an empty cache. -p 0 or -n 0 skips that test. --backend picks where\n"
            "it runs: auto (default), cpu, cuda or cuda:N. --sessions also generates -n tokens\n"
            "in each of that many sessions at once, stepped together in one batch per token\n"
            "(continuous batching), and reports the aggregate tokens/s.\n");
}

/* `count` sessions generating n tokens each, stepped together with bonsai_batch_eval: the median
 * over reps of the aggregate tokens/s (after a warm-up). */
static bonsai_status bench_sessions(bonsai_model *m, const bonsai_session_params *base, int count,
                                    int n, int reps, const int32_t *ids, uint32_t vocab,
                                    double *out)
{
    bonsai_session_params sp = *base;
    sp.n_ctx = (uint32_t)n + 1;
    bonsai_session **ss = calloc((size_t)count, sizeof *ss);
    bonsai_batch_item *items = calloc((size_t)count, sizeof *items);
    double *rates = calloc((size_t)reps, sizeof *rates);
    bonsai_status st = ss && items && rates ? BONSAI_OK : BONSAI_ERR_NO_MEMORY;
    for (int i = 0; i < count && !st; i++) st = bonsai_session_create(m, &sp, &ss[i]);
    for (int r = -1; r < reps && !st; r++) {
        for (int i = 0; i < count; i++) bonsai_session_clear(ss[i]);
        double t0 = now();
        for (int k = 0; k < n && !st; k++) {
            for (int i = 0; i < count; i++) {
                items[i].session = ss[i];
                items[i].token = (int32_t)((ids[k] + (uint32_t)i) % vocab);
            }
            st = bonsai_batch_eval(items, (uint32_t)count, 0);
        }
        if (r >= 0) rates[r] = (double)count * n / (now() - t0);
    }
    if (!st) *out = summarize(rates, reps).median;
    for (int i = 0; ss && i < count; i++) bonsai_session_free(ss[i]);
    free(ss);
    free(items);
    free(rates);
    return st;
}

int cmd_bench(int argc, char **argv)
{
    const char *model_path = NULL;
    int p = 512, n = 128, reps = 5, threads = 0;
    const char *backend = NULL, *sessions_list = NULL;
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
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc)
            backend = argv[++i];
        else if (!strcmp(argv[i], "--sessions") && i + 1 < argc)
            sessions_list = argv[++i];
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
    int counts[16], n_counts = 0;
    if (sessions_list) { /* "1,4,16,64" */
        for (const char *q = sessions_list; *q;) {
            char *end;
            long c = strtol(q, &end, 10);
            if (end == q || c < 1 || c > 1024 || n_counts == 16 || (*end && *end != ',')) {
                fprintf(stderr, "bonsai bench: --sessions takes counts 1..1024 such as 1,4,16\n");
                return 2;
            }
            counts[n_counts++] = (int)c;
            q = *end ? end + 1 : end;
        }
    }
    if (!model_path || p < 0 || n < 0 || p + n < 1 || p > 65536 || n > 65536 || reps < 1 ||
        reps > 1000 || threads < 0 || (n_counts && n < 1)) {
        bench_usage(stderr);
        return 2;
    }
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_threads = threads;
    sp.n_ctx = (uint32_t)(p > n + 1 ? p : n + 1);
    if (backend) sp.backend = backend;
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
    /* concurrent sessions stepped together (bonsai_batch_eval): aggregate tokens/s */
    double agg[16] = {0};
    for (int c = 0; c < n_counts && !st; c++)
        st = bench_sessions(m, &sp, counts[c], n, reps, ids, vocab, &agg[c]);
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
            for (int c = 0; c < n_counts; c++)
                printf("{\"model\":\"%s\",\"backend\":\"%s\",\"sessions\":%d,\"tg\":%d,"
                       "\"aggregate_tok_s\":%.2f,\"per_session_tok_s\":%.2f}\n",
                       model_path, bonsai_session_backend(s), counts[c], n, agg[c],
                       agg[c] / counts[c]);
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
            for (int c = 0; c < n_counts; c++)
                printf("tg%-5d  %9.2f tok/s  aggregate of %d sessions stepped together "
                       "(%.2f each, median of %d)\n",
                       n, agg[c], counts[c], agg[c] / counts[c], reps);
        }
    }
    free(ids);
    free(pp);
    free(tg);
    bonsai_session_free(s);
    bonsai_model_free(m);
    return rc;
}
