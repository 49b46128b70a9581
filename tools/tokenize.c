/* bonsai tokenize: a text's token ids with the model's tokenizer, or the tokenizer's speed. */
#include "cli.h"

#include "internal.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = (n + 4096) * 2;
            char *p = realloc(buf, cap);
            if (!p) break;
            buf = p;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (!got) break;
    }
    bool bad = ferror(f) || !buf;
    fclose(f);
    if (bad) {
        free(buf);
        errno = errno ? errno : ENOMEM;
        return NULL;
    }
    *len = n;
    return buf;
}

/* Tokenize into a new array: *n tokens. */
static bonsai_status tokenize(const bonsai_model *m, const char *text, size_t len, uint32_t flags,
                              int32_t **out, uint32_t *n)
{
    *out = NULL;
    bonsai_status st = bonsai_tokenize(m, text, len, flags, NULL, 0, n);
    if (st && st != BONSAI_ERR_OUT_OF_RANGE) return st;
    int32_t *t = malloc(((size_t)*n + 1) * sizeof *t);
    if (!t) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory (%u tokens)", *n);
    st = bonsai_tokenize(m, text, len, flags, t, *n, n);
    if (st)
        free(t);
    else
        *out = t;
    return st;
}

static int bench(const bonsai_model *m, const char *text, size_t len, uint32_t flags,
                 double vocab_ms)
{
    int32_t *t = NULL;
    uint32_t n = 0, cap = 0;
    bonsai_status st = tokenize(m, text, len, flags, &t, &cap);
    if (st) return cli_error("tokenize", st);
    unsigned runs = 0;
    double t0 = now_s(), elapsed;
    do {
        if ((st = bonsai_tokenize(m, text, len, flags, t, cap, &n))) {
            free(t);
            return cli_error("tokenize", st);
        }
        runs++;
        elapsed = now_s() - t0;
    } while (elapsed < 1.0);
    free(t);
    printf("vocabulary: %u tokens, built in %.1f ms\n", bonsai_model_n_vocab(m), vocab_ms);
    printf("text: %zu bytes -> %u tokens (%.2f bytes/token)\n", len, n, n ? (double)len / n : 0.0);
    printf("throughput: %.2f MB/s, %.0f tokens/s (%u runs in %.2f s, 1 thread)\n",
           (double)len * runs / elapsed / 1e6, (double)n * runs / elapsed, runs, elapsed);
    return 0;
}

typedef struct tokenize_opts {
    const char *model, *file;
    bool special, no_bos, bench;
    const char *text[1];
} tokenize_opts;

static int cmd_tokenize(int argc, char **argv);

static const cli_option tokenize_options[] = {
    {.names = "-m, --model",
     .value = "MODEL",
     .kind = CLI_STRING,
     .offset = offsetof(tokenize_opts, model),
     .required = true,
     .help = "The GGUF model whose tokenizer to use."},
    {.names = "-f, --file",
     .value = "FILE",
     .kind = CLI_STRING,
     .offset = offsetof(tokenize_opts, file),
     .help = "Tokenize the bytes of FILE instead of TEXT."},
    {.names = "--special",
     .kind = CLI_FLAG,
     .offset = offsetof(tokenize_opts, special),
     .help = "Match special tokens such as <|im_start|> written in the text."},
    {.names = "--no-bos",
     .kind = CLI_FLAG,
     .offset = offsetof(tokenize_opts, no_bos),
     .help = "Do not prepend BOS even when the model's tokenizer adds one."},
    {.names = "--bench",
     .kind = CLI_FLAG,
     .offset = offsetof(tokenize_opts, bench),
     .help = "Measure the tokenizer's speed on the text instead of printing ids."},
};

static const cli_positional tokenize_positionals[] = {
    {"TEXT", 0, 1, offsetof(tokenize_opts, text),
     "The text to tokenize (or -f); after --, it may start with a dash."},
};

const cli_command cli_tokenize_command = {
    .name = "tokenize",
    .summary = "print the token ids of a text, or the tokenizer's speed",
    .synopsis = "-m MODEL [--special] [--no-bos] [--bench] TEXT\n"
                "-m MODEL [--special] [--no-bos] [--bench] -f FILE",
    .description =
        "Prints the token ids of TEXT (or of the file's bytes) on one line, separated by spaces. "
        "BOS is prepended when the model's tokenizer adds one, unless --no-bos. --special "
        "matches special tokens such as <|im_start|> written in the text; without it they are "
        "plain text.\n\n"
        "--bench instead tokenizes the text repeatedly for at least a second on one thread and "
        "prints the time the vocabulary took to build and the throughput in MB/s (10^6 bytes) "
        "and tokens/s.",
    .options = tokenize_options,
    .n_options = sizeof tokenize_options / sizeof tokenize_options[0],
    .positionals = tokenize_positionals,
    .n_positionals = 1,
    .exit_status = "0\tthe ids (or the speed) were printed\n"
                   "1\tthe model or the file could not be read, or the model has no tokenizer (one "
                   "line on standard error)\n"
                   "2\ta usage error: no model, both or neither of TEXT and -f (one line on "
                   "standard error)",
    .examples = "The ids of a sentence (1 403 407 261 378):\n"
                "$ bonsai tokenize -m stories260K.gguf \"Once upon a time\"\n"
                "A chat turn with its special tokens:\n"
                "$ bonsai tokenize -m qwen3.gguf --special \"<|im_start|>user\"\n"
                "Text that starts with a dash:\n"
                "$ bonsai tokenize -m model.gguf -- \"-x\"\n"
                "The tokenizer's speed on a file:\n"
                "$ bonsai tokenize -m model.gguf --bench -f book.txt",
    .opts_size = sizeof(tokenize_opts),
    .run = cmd_tokenize,
};

static int cmd_tokenize(int argc, char **argv)
{
    tokenize_opts o = {0};
    cli_parsed parsed;
    int prc;
    if (!cli_begin(&cli_tokenize_command, argc, argv, &o, &parsed, &prc)) return prc;
    const char *model_path = o.model, *file = o.file, *text = o.text[0];
    bool special = o.special, no_bos = o.no_bos, do_bench = o.bench;
    if (!text == !file)
        return cli_usage_error(&cli_tokenize_command,
                               text ? "TEXT and -f exclude each other" : "missing TEXT or -f FILE");
    size_t len = 0;
    char *buf = NULL;
    if (file) {
        errno = 0;
        if (!(buf = read_all(file, &len))) {
            fprintf(stderr, "bonsai tokenize: cannot read %s: %s\n", file, strerror(errno));
            return 1;
        }
        text = buf;
    } else {
        len = strlen(text);
    }
    uint32_t flags =
        (special ? BONSAI_TOKENIZE_PARSE_SPECIAL : 0) | (no_bos ? 0 : BONSAI_TOKENIZE_ADD_BOS);
    bonsai_model *m = NULL;
    bonsai_status st = cli_load_model(model_path, &m);
    int rc = 0;
    if (st) {
        rc = cli_error("tokenize", st);
        goto done;
    }
    /* the first call builds the vocabulary */
    uint32_t n = 0;
    double t0 = now_s();
    st = bonsai_tokenize(m, "", 0, 0, NULL, 0, &n);
    double vocab_ms = (now_s() - t0) * 1e3;
    if (st) {
        rc = cli_error("tokenize", st);
        goto done;
    }
    if (do_bench) {
        rc = bench(m, text, len, flags, vocab_ms);
        goto done;
    }
    int32_t *t;
    if ((st = tokenize(m, text, len, flags, &t, &n))) {
        rc = cli_error("tokenize", st);
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) printf(i ? " %d" : "%d", t[i]);
    putchar('\n');
    free(t);
done:
    bonsai_model_free(m);
    free(buf);
    return rc;
}
