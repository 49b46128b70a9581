/* bonsai tokenize: a text's token ids with the model's tokenizer, or the tokenizer's speed. */
#include "cli.h"

#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void tokenize_usage(FILE *f)
{
    fprintf(f, "usage: bonsai tokenize -m MODEL [--special] [--no-bos] [--bench] TEXT\n"
               "       bonsai tokenize -m MODEL [--special] [--no-bos] [--bench] -f FILE\n"
               "\n"
               "Print the token ids of TEXT (or of the file's bytes) on one line, separated by\n"
               "spaces. BOS is prepended when the model's tokenizer adds one, unless --no-bos.\n"
               "--special matches special tokens such as <|im_start|> written in the text.\n"
               "--bench instead tokenizes the text repeatedly for at least a second on one\n"
               "thread and prints the throughput in MB/s (10^6 bytes) and tokens/s.\n");
}

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

int cmd_tokenize(int argc, char **argv)
{
    const char *model_path = NULL, *file = NULL, *text = NULL;
    bool special = false, no_bos = false, do_bench = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            tokenize_usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && has) {
            model_path = argv[++i];
        } else if ((!strcmp(a, "-f") || !strcmp(a, "--file")) && has) {
            file = argv[++i];
        } else if (!strcmp(a, "--special")) {
            special = true;
        } else if (!strcmp(a, "--no-bos")) {
            no_bos = true;
        } else if (!strcmp(a, "--bench")) {
            do_bench = true;
        } else if (!strcmp(a, "--") && has && !text && i + 2 == argc) {
            text = argv[++i];
        } else if (a[0] != '-' && !text) {
            text = a;
        } else {
            fprintf(stderr, "bonsai tokenize: unknown option, missing value or extra text '%s'\n",
                    a);
            tokenize_usage(stderr);
            return 2;
        }
    }
    if (!model_path || !text == !file) {
        fprintf(stderr, "bonsai tokenize: -m MODEL and either TEXT or -f FILE are required\n");
        tokenize_usage(stderr);
        return 2;
    }
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
    bonsai_status st = bonsai_model_load(model_path, NULL, &m);
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
