/* bonsai eval (a batch of token ids -> logits, greedy next token) and bonsai bench (pp/tg
 * throughput like llama-bench). */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
    double *running = NULL; /* perplexity after each chunk, when its line waits */
    uint32_t n_tok = 0;
    int rc = 0;
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_threads = threads;
    sp.n_ctx = n_ctx;
    if (backend) sp.backend = backend;
    bonsai_status st = cli_load_model(model_path, &m);
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
    fflush(stdout);
    bonsai_progress_fn bar;
    void *bar_data;
    cli_progress_begin(&bar, &bar_data, "perplexity");
    /* the bar and a line growing on stdout cannot share one terminal: then the line waits */
    if (bar && isatty(STDOUT_FILENO) && !(running = malloc((size_t)n_chunk * sizeof *running)))
        bar = NULL;
    if (bar) bar(0.0f, bar_data);
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
        if (running) {
            running[c] = exp(nll / (double)count);
        } else {
            printf("[%u]%.4f%s", c + 1, exp(nll / (double)count), c + 1 < n_chunk ? "," : "\n");
            fflush(stdout);
        }
        if (bar) bar((float)(c + 1) / (float)n_chunk, bar_data);
    }
    cli_progress_end();
    for (uint32_t c = 0; running && c < n_chunk; c++)
        printf("[%u]%.4f%s", c + 1, running[c], c + 1 < n_chunk ? "," : "\n");
    double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
    double err = count > 1 && var > 0 ? sqrt(var / (double)(count - 1)) : 0;
    printf("PPL = %.4f +/- %.4f (%" PRIu64 " tokens scored, %.1f s)\n", exp(mean), exp(mean) * err,
           count, now() - t0);
done:
    cli_progress_end();
    free(running);
    free(text);
    free(toks);
    bonsai_session_free(s);
    bonsai_model_free(m);
    return rc;
}

typedef struct eval_opts {
    const char *model, *ids, *logits, *file, *backend;
    bool all, perplexity;
    int64_t n_ctx, threads;
} eval_opts;

static int cmd_eval(int argc, char **argv);

static const cli_option eval_options[] = {
    {.names = "-m, --model",
     .value = "MODEL",
     .kind = CLI_STRING,
     .offset = offsetof(eval_opts, model),
     .required = true,
     .help = "The GGUF model."},
    {.names = "--ids",
     .value = "IDS",
     .kind = CLI_STRING,
     .offset = offsetof(eval_opts, ids),
     .help = "The token ids to evaluate in one batch, separated by spaces or commas."},
    {.names = "--logits",
     .value = "FILE",
     .kind = CLI_STRING,
     .offset = offsetof(eval_opts, logits),
     .help = "Write the last position's logits to FILE as text, one float per line."},
    {.names = "--all",
     .kind = CLI_FLAG,
     .offset = offsetof(eval_opts, all),
     .help = "With --logits: every position's logits, position after position."},
    {.names = "--perplexity",
     .kind = CLI_FLAG,
     .offset = offsetof(eval_opts, perplexity),
     .help = "Score the text of -f instead (see above)."},
    {.names = "-f, --file",
     .value = "TEXT_FILE",
     .kind = CLI_STRING,
     .offset = offsetof(eval_opts, file),
     .help = "The text whose perplexity --perplexity measures."},
    {.names = "-c, --ctx-size",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(eval_opts, n_ctx),
     .min = 2,
     .max = 1 << 20,
     .def = "512",
     .help = "With --perplexity: the tokens of a chunk."},
    {.names = "-t, --threads",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(eval_opts, threads),
     .min = 0,
     .max = 1024,
     .def = "0, one per physical core",
     .help = "Threads of the CPU backend."},
    {.names = "--backend",
     .value = "NAME",
     .kind = CLI_STRING,
     .offset = offsetof(eval_opts, backend),
     .def = "auto",
     .help = "Where it runs: auto, cpu, cuda or cuda:N."},
};

const cli_command cli_eval_command = {
    .name = "eval",
    .summary = "evaluate token ids: logits and the greedy next token",
    .synopsis = "-m MODEL --ids \"ID ID ...\" [--logits FILE] [--all] [-t N] [--backend NAME]\n"
                "-m MODEL -f TEXT_FILE --perplexity [-c N] [-t N] [--backend NAME]",
    .description =
        "Evaluates the token ids in one batch and prints the greedy next token (id and piece). "
        "--logits writes the last position's logits (every position's with --all) as text, one "
        "float per line, position after position.\n\n"
        "--perplexity tokenizes the file, cuts it into chunks of -c tokens, and scores the second "
        "half of each chunk given the first, as llama.cpp's llama-perplexity does; it prints the "
        "running perplexity per chunk and the final estimate with its standard error. When "
        "standard error is a terminal a progress bar follows the chunks (and, when standard "
        "output is the same terminal, the per-chunk line is printed at the end).",
    .options = eval_options,
    .n_options = sizeof eval_options / sizeof eval_options[0],
    .exit_status = "0\tthe result was printed\n"
                   "1\tthe model could not be loaded or run, a file could not be read or written, "
                   "the text is shorter than one chunk (one line on standard error)\n"
                   "2\ta usage error, such as ids that are not non-negative integers (one line on "
                   "standard error)",
    .examples = "The token after \"<s> Once upon a time\" in the TinyStories model:\n"
                "$ bonsai eval -m stories260K.gguf --ids \"1 403 407 261 378\"\n"
                "Every position's logits:\n"
                "$ bonsai eval -m model.gguf --ids 1,2,3 --logits logits.txt --all\n"
                "Perplexity in chunks of 256 tokens:\n"
                "$ bonsai eval -m model.gguf -f wiki.test.raw --perplexity -c 256",
    .opts_size = sizeof(eval_opts),
    .run = cmd_eval,
};

static int cmd_eval(int argc, char **argv)
{
    eval_opts o = {.n_ctx = 512};
    cli_parsed parsed;
    int prc;
    if (!cli_begin(&cli_eval_command, argc, argv, &o, &parsed, &prc)) return prc;
    const char *model_path = o.model, *ids_text = o.ids, *logits_path = o.logits;
    const char *backend = o.backend;
    bool all = o.all;
    int threads = (int)o.threads;
    int32_t *ids;
    uint32_t n;
    if (o.perplexity || o.file) {
        if (!o.perplexity) return cli_usage_error(&cli_eval_command, "-f needs --perplexity");
        if (!o.file) return cli_usage_error(&cli_eval_command, "--perplexity needs -f TEXT_FILE");
        if (ids_text)
            return cli_usage_error(&cli_eval_command, "--ids and --perplexity exclude each other");
        return perplexity(model_path, o.file, (uint32_t)o.n_ctx, threads, backend);
    }
    if (!ids_text) return cli_usage_error(&cli_eval_command, "missing --ids (or --perplexity)");
    if (parse_ids(ids_text, &ids, &n))
        return cli_usage_error(&cli_eval_command, "--ids must be non-negative integers");
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_threads = threads;
    sp.n_ctx = n;
    if (backend) sp.backend = backend;
    int rc = 0;
    bonsai_status st = cli_load_model(model_path, &m);
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

/* A sampler that takes the most likely token. */
static bonsai_status greedy_sampler(bonsai_sampler **out)
{
    bonsai_status st = bonsai_sampler_create(0, out);
    if (!st) st = bonsai_sampler_add_greedy(*out);
    if (st) {
        bonsai_sampler_free(*out);
        *out = NULL;
    }
    return st;
}

/* `count` sessions generating n tokens each, stepped together with bonsai_batch_eval and
 * sampled together with bonsai_batch_sample (greedily, as a server would take each session's
 * next token): the median over reps of the aggregate tokens/s (after a warm-up). */
static bonsai_status bench_sessions(bonsai_model *m, const bonsai_session_params *base, int count,
                                    int depth, int n, int reps, const int32_t *ids, uint32_t vocab,
                                    double *out)
{
    bonsai_session_params sp = *base;
    sp.n_ctx = (uint32_t)(depth + n + 1);
    bonsai_session **ss = calloc((size_t)count, sizeof *ss);
    bonsai_batch_item *items = calloc((size_t)count, sizeof *items);
    bonsai_batch_sample_item *picks = calloc((size_t)count, sizeof *picks);
    double *rates = calloc((size_t)reps, sizeof *rates);
    bonsai_status st = ss && items && picks && rates ? BONSAI_OK : BONSAI_ERR_NO_MEMORY;
    for (int i = 0; i < count && !st; i++) {
        st = bonsai_session_create(m, &sp, &ss[i]);
        if (!st) st = greedy_sampler(&picks[i].sampler);
        picks[i].session = ss[i];
    }
    for (int r = -1; r < reps && !st; r++) {
        for (int i = 0; i < count && !st; i++) {
            bonsai_session_clear(ss[i]);
            bonsai_sampler_reset(picks[i].sampler);
            if (depth) st = bonsai_session_eval(ss[i], ids, (uint32_t)depth, 0);
        }
        double t0 = now();
        for (int k = 0; k < n && !st; k++) {
            for (int i = 0; i < count; i++) {
                items[i].session = ss[i];
                items[i].token = (int32_t)((ids[depth + k] + (uint32_t)i) % vocab);
            }
            st = bonsai_batch_eval(items, (uint32_t)count, 0);
            if (!st) st = bonsai_batch_sample(picks, (uint32_t)count, 0);
        }
        if (r >= 0) rates[r] = (double)count * n / (now() - t0);
    }
    if (!st) *out = summarize(rates, reps).median;
    for (int i = 0; ss && i < count; i++) {
        bonsai_session_free(ss[i]);
        bonsai_sampler_free(picks[i].sampler);
    }
    free(ss);
    free(items);
    free(picks);
    free(rates);
    return st;
}

/* The session's backend, before a result measured on it, and again if it changed since (the CUDA
 * backend drops "PDL" from its description when dependent launches fail on the first steps). */
static void print_backend(const bonsai_session *s, char *shown, size_t cap)
{
    const char *now = bonsai_session_backend(s);
    if (!strncmp(now, shown, cap - 1)) return;
    printf("backend:  %s\n", now);
    snprintf(shown, cap, "%s", now);
}

/* A test's name: "pp512", "tg128", with " @ d4096" when it starts from a filled cache. */
static const char *test_label(char *buf, size_t cap, const char *kind, int count, int depth)
{
    int len = snprintf(buf, cap, "%s%d", kind, count);
    if (depth && len > 0 && (size_t)len < cap)
        snprintf(buf + len, cap - (size_t)len, " @ d%d", depth);
    return buf;
}

/* One session's -p prompt (one batch of `count` tokens) or -n generation (`count` tokens one
 * at a time, each sampled as a generation takes it: on the GPU there), each repetition from a
 * cache holding `depth` tokens (ids[0, depth), evaluated before the clock starts) after one
 * warm-up, the tokens/s of each in rates[], summarized in *out; and its line (after the
 * backend's, print_backend) when shown is given. */
static bonsai_status bench_test(bonsai_session *s, bonsai_sampler *greedy, const int32_t *ids,
                                int depth, int count, bool one_by_one, int reps, double *rates,
                                char *shown, size_t shown_cap, stats *out)
{
    bonsai_status st = BONSAI_OK;
    for (int r = -1; r < reps && !st; r++) { /* r = -1: warm-up */
        bonsai_session_clear(s);
        if (depth) st = bonsai_session_eval(s, ids, (uint32_t)depth, 0);
        if (st) break;
        const int32_t *test = ids + depth;
        double t0 = now();
        if (!one_by_one) st = bonsai_session_eval(s, test, (uint32_t)count, 0);
        for (int i = 0; one_by_one && i < count && !st; i++) {
            st = bonsai_session_eval(s, &test[i], 1, 0);
            int32_t tok;
            if (!st) st = bonsai_session_sample(s, greedy, &tok, NULL);
        }
        if (r >= 0) rates[r] = count / (now() - t0);
    }
    if (st) return st;
    *out = summarize(rates, reps);
    if (shown) {
        print_backend(s, shown, shown_cap);
        char label[48];
        printf("%-7s  %9.2f tok/s  (median of %d; min %.2f, max %.2f)\n",
               test_label(label, sizeof label, one_by_one ? "tg" : "pp", count, depth), out->median,
               reps, out->min, out->max);
    }
    return st;
}

#define MAX_SESSION_COUNTS 16 /* of --sessions */

typedef struct bench_opts {
    const char *model, *backend;
    int64_t p, n, depth, reps, threads;
    int kv_type; /* index in cli_kv_types */
    int64_t sessions[MAX_SESSION_COUNTS];
    uint32_t n_sessions;
    float bw;
    bool json;
} bench_opts;

static int cmd_bench(int argc, char **argv);

static const cli_option bench_options[] = {
    {.names = "-m, --model",
     .value = "MODEL",
     .kind = CLI_STRING,
     .offset = offsetof(bench_opts, model),
     .required = true,
     .help = "The GGUF model."},
    {.names = "-p, --n-prompt",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(bench_opts, p),
     .min = 0,
     .max = 65536,
     .def = "512",
     .help = "Tokens of the prompt-processing test, evaluated in one batch; 0 skips it."},
    {.names = "-n, --n-gen",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(bench_opts, n),
     .min = 0,
     .max = 65536,
     .def = "128",
     .help = "Tokens of the generation test, evaluated one at a time; 0 skips it."},
    {.names = "-d, --depth",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(bench_opts, depth),
     .min = 0,
     .max = 1048576,
     .def = "0",
     .help = "Tokens already in the cache when each test starts (evaluated before the clock "
             "starts, every repetition): the speed deep into a long conversation."},
    {.names = "-r, --repetitions",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(bench_opts, reps),
     .min = 1,
     .max = 1000,
     .def = "5",
     .help = "Measured repetitions (after one warm-up per test)."},
    {.names = "-t, --threads",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(bench_opts, threads),
     .min = 0,
     .max = 1024,
     .def = "0, one per physical core",
     .help = "Threads of the CPU backend."},
    {.names = "--backend",
     .value = "NAME",
     .kind = CLI_STRING,
     .offset = offsetof(bench_opts, backend),
     .def = "auto",
     .help = "Where it runs: auto, cpu, cuda or cuda:N."},
    {.names = "--cache-type-k, --kv-type",
     .value = "TYPE",
     .kind = CLI_CHOICE,
     .offset = offsetof(bench_opts, kv_type),
     .choices = cli_kv_types,
     .def = "f16",
     .help = "The type of the KV cache (q8_0: half the memory, and half the bytes a long "
             "cache costs each token)."},
    {.names = "--sessions",
     .value = "LIST",
     .kind = CLI_INT_LIST,
     .offset = offsetof(bench_opts, sessions),
     .count_offset = offsetof(bench_opts, n_sessions),
     .capacity = MAX_SESSION_COUNTS,
     .min = 1,
     .max = 1024,
     .help = "Also generate -n tokens in each of that many sessions at once, stepped together "
             "in one batch per token (continuous batching), for every count of the "
             "comma-separated LIST, and report the aggregate tokens/s."},
    {.names = "--bw",
     .value = "GB/s",
     .kind = CLI_FLOAT,
     .offset = offsetof(bench_opts, bw),
     .help = "The memory bandwidth to compare generation with (as bonsai bench-kernels "
             "measures it, or a GPU's): generation reads every weight once per token, so "
             "GB/s divided by the bytes read per token bounds tg; the result is reported as a "
             "fraction of that bound."},
    {.names = "--json",
     .kind = CLI_FLAG,
     .offset = offsetof(bench_opts, json),
     .help = "Print one JSON object per line instead of the table."},
};

/* Bytes a generated token reads: every matrix once, but for token_embd when the model has a
 * separate output matrix (then only one of its rows is gathered); plus the KV cache (fp16, or
 * Q8_0: 34 bytes per 32 values) up to the middle of the -n tokens after `depth`. */
static double bytes_per_token(const bonsai_model *m, uint32_t kv_type, int depth, int n)
{
    uint64_t index;
    bool separate_head = bonsai_model_tensor_find(m, "output.weight", &index) == BONSAI_OK;
    double bytes = 0;
    for (uint64_t i = 0; i < bonsai_model_tensor_count(m); i++) {
        bonsai_tensor_info t = {.struct_size = sizeof t};
        if (bonsai_model_tensor_at(m, i, &t) || t.n_dims < 2) continue;
        if (separate_head && !strcmp(t.name, "token_embd.weight")) continue;
        bytes += (double)t.n_bytes;
    }
    bonsai_model_hparams h = {.struct_size = sizeof h};
    bonsai_model_hparams_get(m, &h);
    double per_value = kv_type == BONSAI_TENSOR_Q8_0 ? 34.0 / 32.0 : 2.0;
    bytes += 2.0 * h.n_layer * h.n_head_kv * h.head_dim_k * per_value * (depth + n / 2.0);
    return bytes;
}

const cli_command cli_bench_command = {
    .name = "bench",
    .summary = "prompt and generation speed (pp/tg tokens/s)",
    .synopsis = "-m MODEL [-p 512] [-n 128] [-d 0] [-r 5] [-t N] [--backend NAME] "
                "[--kv-type f16|q8_0] [--sessions 1,4,16,64] [--bw GB/s] [--json]",
    .description =
        "Measures prompt processing (one batch of -p tokens) and generation (-n tokens one at a "
        "time) in tokens/s, like llama-bench: for each, one warm-up, then -r repetitions, reported "
        "as median, min and max, with the model's size and parameter count and the backend. "
        "Token ids are fixed pseudo-random ones; each repetition starts from an empty cache, or "
        "with -d, from one holding that many tokens (\"pp512 @ d4096\"), as llama-bench's -d. "
        "Each line is printed (and flushed) as soon as it is measured; with --json, the first "
        "row, prompt and generation together, after both.\n\n"
        "--sessions also generates -n tokens in each of that many sessions at once, stepped "
        "together with bonsai_batch_eval (one forward pass per step for all of them) and "
        "sampled greedily with bonsai_batch_sample, and reports the aggregate tokens/s per "
        "count (from -d tokens in each session's cache).\n\n"
        "--bw compares generation with the memory bandwidth: a token reads every weight once "
        "(the embedding matrix only for its row when the model has a separate output matrix) "
        "and the KV cache (2 bytes a value, or 34 per 32 with --kv-type q8_0), so bandwidth / "
        "bytes per token bounds tg; the fraction of that bound reached is printed.",
    .options = bench_options,
    .n_options = sizeof bench_options / sizeof bench_options[0],
    .exit_status = "0\tthe results were printed\n"
                   "1\tthe model could not be loaded or run (one line on standard error; the lines "
                   "measured before it stay on standard output)\n"
                   "2\ta usage error, such as -p 0 with -n 0 (one line on standard error)",
    .examples = "The llama-bench defaults on two threads:\n"
                "$ bonsai bench -m b17.gguf -t 2\n"
                "Generation 4,096 tokens into a conversation:\n"
                "$ bonsai bench -m b17.gguf -p 0 -n 128 -d 4096\n"
                "Generation only, 1 to 64 sessions at once, as JSON:\n"
                "$ bonsai bench -m b17.gguf -p 0 -n 64 --sessions 1,4,16,64 --json",
    .opts_size = sizeof(bench_opts),
    .run = cmd_bench,
};

static int cmd_bench(int argc, char **argv)
{
    bench_opts o = {.p = 512, .n = 128, .reps = 5};
    cli_parsed parsed;
    int prc;
    setvbuf(stdout, NULL, _IOLBF, 0); /* each result as it comes, even into a pipe */
    if (!cli_begin(&cli_bench_command, argc, argv, &o, &parsed, &prc)) return prc;
    const char *model_path = o.model, *backend = o.backend;
    int p = (int)o.p, n = (int)o.n, depth = (int)o.depth, reps = (int)o.reps,
        threads = (int)o.threads;
    bool json = o.json;
    int counts[MAX_SESSION_COUNTS], n_counts = (int)o.n_sessions;
    for (int c = 0; c < n_counts; c++) counts[c] = (int)o.sessions[c];
    if (p + n < 1)
        return cli_usage_error(&cli_bench_command, "-p and -n are both 0: nothing to do");
    if (n_counts && n < 1)
        return cli_usage_error(&cli_bench_command, "--sessions needs -n 1 or more");
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_threads = threads;
    sp.n_ctx = (uint32_t)depth + (uint32_t)(p > n + 1 ? p : n + 1);
    sp.kv_type = cli_kv_type_values[o.kv_type];
    if (backend) sp.backend = backend;
    bonsai_sampler *greedy = NULL;
    bonsai_status st = cli_load_model(model_path, &m);
    if (!st) st = bonsai_session_create(m, &sp, &s);
    if (!st) st = greedy_sampler(&greedy);
    if (st) {
        bonsai_session_free(s);
        bonsai_model_free(m);
        return cli_error("bench", st);
    }
    uint32_t vocab = bonsai_model_n_vocab(m);
    int n_ids = depth + (p > n ? p : n);
    int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
    double *pp = malloc((size_t)reps * sizeof *pp), *tg = malloc((size_t)reps * sizeof *tg);
    if (!ids || !pp || !tg) st = BONSAI_ERR_NO_MEMORY;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; ids && i < n_ids; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % vocab);
    }
    bonsai_model_hparams h = {.struct_size = sizeof h};
    bonsai_model_hparams_get(m, &h);
    /* each line as soon as it is known: a run cut short keeps what it measured */
    if (!json && !st) {
        double np = (double)bonsai_model_n_params(m);
        printf("model:    %s (%s, %.2f MiB, %.3f %s parameters, %u layers; KV cache %s)\n",
               model_path, bonsai_model_architecture(m), bonsai_model_file_size(m) / 1048576.0,
               np >= 1e9 ? np / 1e9 : np / 1e6, np >= 1e9 ? "B" : "M", h.n_layer,
               cli_kv_types[o.kv_type]);
    }
    char shown[256] = ""; /* the backend line last printed */
    stats sp_ = {0, 0, 0}, sg = {0, 0, 0};
    char *line = json ? NULL : shown; /* text: each test's line as it is measured */
    if (p && !st)
        st = bench_test(s, greedy, ids, depth, p, false, reps, pp, line, sizeof shown, &sp_);
    if (n && !st) {
        st = bench_test(s, greedy, ids, depth, n, true, reps, tg, line, sizeof shown, &sg);
        if (!st && !json && o.bw > 0) {
            double bpt = bytes_per_token(m, sp.kv_type, depth, n), bound = o.bw * 1e9 / bpt;
            printf("bound:    %.2f tok/s at %.1f GB/s (%.1f MB read per token): tg%d is "
                   "%.1f%% of it\n",
                   bound, (double)o.bw, bpt / 1e6, n, 100.0 * sg.median / bound);
        }
    }
    if (!st && json) {
        printf("{\"model\":\"%s\",\"arch\":\"%s\",\"file_bytes\":%" PRIu64 ",\"params\":%" PRIu64
               ",\"backend\":\"%s\",\"kv_type\":\"%s\",\"repetitions\":%d,\"depth\":%d,"
               "\"pp\":%d,\"pp_tok_s\":%.2f,\"pp_min\":%.2f,\"pp_max\":%.2f,"
               "\"tg\":%d,\"tg_tok_s\":%.2f,\"tg_min\":%.2f,\"tg_max\":%.2f}\n",
               model_path, bonsai_model_architecture(m), bonsai_model_file_size(m),
               bonsai_model_n_params(m), bonsai_session_backend(s), cli_kv_types[o.kv_type], reps,
               depth, p, sp_.median, sp_.min, sp_.max, n, sg.median, sg.min, sg.max);
        if (o.bw > 0 && n) {
            double bpt = bytes_per_token(m, sp.kv_type, depth, n), bound = o.bw * 1e9 / bpt;
            printf("{\"model\":\"%s\",\"backend\":\"%s\",\"bw_gbps\":%.2f,"
                   "\"bytes_per_token\":%.0f,\"tg_bound\":%.2f,\"tg_fraction\":%.4f}\n",
                   model_path, bonsai_session_backend(s), (double)o.bw, bpt, bound,
                   sg.median / bound);
        }
    }
    /* concurrent sessions stepped together (bonsai_batch_eval): aggregate tokens/s */
    for (int c = 0; c < n_counts && !st; c++) {
        double agg = 0;
        st = bench_sessions(m, &sp, counts[c], depth, n, reps, ids, vocab, &agg);
        if (st) break;
        if (json) {
            printf("{\"model\":\"%s\",\"backend\":\"%s\",\"sessions\":%d,\"depth\":%d,"
                   "\"tg\":%d,\"aggregate_tok_s\":%.2f,\"per_session_tok_s\":%.2f}\n",
                   model_path, bonsai_session_backend(s), counts[c], depth, n, agg,
                   agg / counts[c]);
        } else {
            print_backend(s, shown, sizeof shown);
            char label[48];
            test_label(label, sizeof label, "tg", n, depth);
            printf("%-7s  %9.2f tok/s  aggregate of %d sessions stepped together "
                   "(%.2f each, median of %d)\n",
                   label, agg, counts[c], agg / counts[c], reps);
        }
    }
    int rc = st ? cli_error("bench", st) : 0;
    free(ids);
    free(pp);
    free(tg);
    bonsai_sampler_free(greedy);
    bonsai_session_free(s);
    bonsai_model_free(m);
    return rc;
}
