/* rag: answer a question from a folder of text files (retrieval-augmented generation).
 *
 *   cc rag.c $(pkg-config --cflags --libs bonsai) -o rag
 *   ./rag -k 3 model.gguf notes/ "When was the bridge opened?"
 *
 * 1. Every .txt file of the folder is tokenized and cut into chunks of a few hundred tokens,
 *    each ending at a word boundary where possible.
 * 2. Each chunk is embedded with bonsai_embed() (mean-pooled, unit-length hidden states).
 * 3. The question is embedded the same way; chunks are ranked by cosine similarity (a dot
 *    product, since the vectors have unit length) and the top k are printed with their scores.
 * 4. The model answers from those chunks, in its chat format (bonsai_chat), streamed to stdout.
 */
#define _POSIX_C_SOURCE 200809L /* opendir, strdup */
#include <bonsai/bonsai.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct chunk {
    char *file; /* the file's name in the folder */
    int index;  /* chunk number within the file */
    char *text;
    float *vec; /* embedding, n_embd floats of unit length */
    float score;
} chunk;

/* Every chunk of every file. */
typedef struct corpus {
    chunk *chunks;
    size_t n, cap;
    uint32_t n_embd;
} corpus;

static void corpus_free(corpus *docs)
{
    for (size_t i = 0; i < docs->n; i++) {
        free(docs->chunks[i].file);
        free(docs->chunks[i].text);
        free(docs->chunks[i].vec);
    }
    free(docs->chunks);
}

/* Library failures print bonsai_last_error(); the others say what they are. */
static int fail_bonsai(void)
{
    fprintf(stderr, "error: %s\n", bonsai_last_error());
    return -1;
}

static int fail_oom(void)
{
    fprintf(stderr, "error: out of memory\n");
    return -1;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "error: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        char *bigger = realloc(buf, cap *= 2);
        if (!bigger) free(buf);
        buf = bigger;
    }
    if (!buf || ferror(f)) {
        fprintf(stderr, "error: cannot read %s\n", path);
        free(buf);
        buf = NULL;
    } else {
        buf[n] = '\0';
    }
    fclose(f);
    return buf;
}

/* Tokenizes text into a malloc'd array (sizing it with a first call). */
static int tokenize(const bonsai_model *model, const char *text, int32_t **tokens, uint32_t *n)
{
    size_t len = strlen(text);
    *tokens = NULL;
    bonsai_status st = bonsai_tokenize(model, text, len, 0, NULL, 0, n);
    if (st != BONSAI_OK && st != BONSAI_ERR_OUT_OF_RANGE) return fail_bonsai();
    if (!(*tokens = malloc((*n ? *n : 1) * sizeof **tokens))) return fail_oom();
    if (bonsai_tokenize(model, text, len, 0, *tokens, *n, n) != BONSAI_OK) {
        free(*tokens);
        *tokens = NULL;
        return fail_bonsai();
    }
    return 0;
}

/* The text of tokens[0 .. n) as a malloc'd string. */
static char *detokenize(const bonsai_model *model, const int32_t *tokens, uint32_t n)
{
    size_t len = 0;
    bonsai_status st = bonsai_detokenize(model, tokens, n, 0, NULL, 0, &len);
    char *text = NULL;
    if (st != BONSAI_OK && st != BONSAI_ERR_OUT_OF_RANGE)
        fail_bonsai();
    else if (!(text = malloc(len + 1)))
        fail_oom();
    else if (bonsai_detokenize(model, tokens, n, 0, text, len + 1, &len) != BONSAI_OK) {
        fail_bonsai();
        free(text);
        text = NULL;
    }
    return text;
}

/* True when the token's text starts with whitespace: a chunk may end just before it. */
static bool starts_word(const bonsai_model *model, int32_t token)
{
    char piece[64];
    size_t len = 0;
    if (bonsai_token_to_piece(model, token, 0, piece, sizeof piece, &len) != BONSAI_OK || !len)
        return false;
    return piece[0] == ' ' || piece[0] == '\n' || piece[0] == '\t';
}

/* Cuts one file into chunks of at most chunk_size tokens and embeds each. */
static int add_file(corpus *docs, bonsai_session *session, const bonsai_model *model,
                    const char *name, const char *text, uint32_t chunk_size)
{
    int32_t *tokens;
    uint32_t n_tokens;
    if (tokenize(model, text, &tokens, &n_tokens)) return -1;
    int rc = 0;
    for (uint32_t start = 0, index = 0; start < n_tokens && rc == 0; index++) {
        uint32_t end = n_tokens - start > chunk_size ? start + chunk_size : n_tokens;
        if (end < n_tokens) /* back up to a word boundary within the last quarter */
            for (uint32_t e = end; e > end - chunk_size / 4; e--)
                if (starts_word(model, tokens[e])) {
                    end = e;
                    break;
                }
        if (docs->n == docs->cap) {
            size_t cap = docs->cap ? docs->cap * 2 : 16;
            chunk *p = realloc(docs->chunks, cap * sizeof *p);
            if (!p) {
                rc = fail_oom();
                break;
            }
            docs->chunks = p;
            docs->cap = cap;
        }
        chunk *c = &docs->chunks[docs->n];
        *c = (chunk){
            .file = strdup(name), .index = (int)index, .vec = malloc(docs->n_embd * sizeof(float))};
        c->text = c->file && c->vec ? detokenize(model, tokens + start, end - start) : NULL;
        docs->n++; /* owned by the index from here, freed with it even when incomplete */
        if (!c->file || !c->vec)
            rc = fail_oom();
        else if (!c->text)
            rc = -1;
        else if (bonsai_embed(session, tokens + start, end - start, c->vec, docs->n_embd) !=
                 BONSAI_OK)
            rc = fail_bonsai();
        start = end;
    }
    free(tokens);
    return rc;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_txt(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && !strcmp(name + n - 4, ".txt");
}

/* Embeds the .txt files of `folder`, in name order. */
static int build_index(corpus *docs, bonsai_session *session, const bonsai_model *model,
                       const char *folder, uint32_t chunk_size)
{
    DIR *dir = opendir(folder);
    if (!dir) {
        fprintf(stderr, "error: %s: %s\n", folder, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n_names = 0, cap = 0;
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(dir));) {
        if (!is_txt(e->d_name)) continue;
        if (n_names == cap) {
            char **p = realloc(names, (cap = cap ? cap * 2 : 16) * sizeof *p);
            if (!p) {
                rc = fail_oom();
                break;
            }
            names = p;
        }
        if (!(names[n_names] = strdup(e->d_name)))
            rc = fail_oom();
        else
            n_names++;
    }
    closedir(dir);
    if (names) qsort(names, n_names, sizeof *names, compare_names);

    for (size_t i = 0; i < n_names && rc == 0; i++) {
        size_t len = strlen(folder) + strlen(names[i]) + 2;
        char *path = malloc(len);
        if (!path) {
            rc = fail_oom();
            break;
        }
        snprintf(path, len, "%s/%s", folder, names[i]);
        char *text = read_file(path);
        if (!text)
            rc = -1;
        else
            rc = add_file(docs, session, model, names[i], text, chunk_size);
        free(text);
        free(path);
    }
    for (size_t i = 0; i < n_names; i++) free(names[i]);
    free(names);
    if (rc == 0 && docs->n == 0) {
        fprintf(stderr, "error: no text in any .txt file of %s\n", folder);
        rc = -1;
    }
    return rc;
}

static int by_score(const void *a, const void *b)
{
    float sa = (*(chunk *const *)a)->score, sb = (*(chunk *const *)b)->score;
    return (sa < sb) - (sa > sb); /* highest first */
}

/* Prints at most `max` bytes of text on one line, without cutting a UTF-8 character. */
static void print_preview(const char *text, size_t max)
{
    while (*text == ' ' || *text == '\n') text++;
    size_t n = strlen(text);
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80) n--;
    }
    for (size_t i = 0; i < n; i++) putchar(text[i] == '\n' || text[i] == '\t' ? ' ' : text[i]);
    if (n < strlen(text)) fputs("...", stdout);
}

static bool print_piece(int32_t token, const char *text, size_t len, float logprob, void *user_data)
{
    (void)token, (void)logprob, (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

/* Asks the model to answer from the top chunks; the reply streams to stdout. */
static int answer(bonsai_session *session, chunk *const *top, size_t k, const char *question,
                  uint32_t max_tokens)
{
    size_t len = strlen(question) + 64;
    for (size_t i = 0; i < k; i++) len += strlen(top[i]->file) + strlen(top[i]->text) + 16;
    char *message = malloc(len);
    if (!message) return fail_oom();
    size_t at = (size_t)snprintf(message, len, "Context:\n");
    for (size_t i = 0; i < k; i++)
        at += (size_t)snprintf(message + at, len - at, "\n[%s]\n%s\n", top[i]->file, top[i]->text);
    snprintf(message + at, len - at, "\nQuestion: %s", question);

    bonsai_chat *chat = NULL;
    bonsai_status st = bonsai_chat_create(session,
                                          "Answer the question using only the context. Name the "
                                          "file the answer comes from.",
                                          0, &chat);
    bonsai_generate_stats stats = {.struct_size = sizeof stats};
    if (st == BONSAI_OK) {
        bonsai_generate_params gp;
        bonsai_generate_params_init(&gp); /* greedy */
        gp.max_tokens = max_tokens;
        gp.on_token = print_piece;
        printf("\nanswer: ");
        st = bonsai_chat_send(chat, message, &gp, &stats);
        printf("\n");
    }
    int rc = 0;
    if (st != BONSAI_OK)
        rc = fail_bonsai();
    else
        fprintf(stderr, "answer: prompt %u tokens, %u generated (%.1f tok/s)\n", stats.n_prompt,
                stats.n_generated, stats.generate_tps);
    bonsai_chat_free(chat);
    free(message);
    return rc;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-k K] [--chunk N] [-n MAX_TOKENS] MODEL.gguf FOLDER QUESTION\n"
            "  -k K        chunks to retrieve (default 3)\n"
            "  --chunk N   tokens per chunk at most (default 200)\n"
            "  -n N        tokens of the answer at most (default 256; 0: no answer, retrieval "
            "only)\n",
            argv0);
}

int main(int argc, char **argv)
{
    const char *args[3] = {NULL, NULL, NULL}; /* model, folder, question */
    int n_args = 0;
    long k = 3, chunk_size = 200, max_tokens = 256;
    bool ok = true;
    for (int i = 1; i < argc && ok; i++) {
        const char *a = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "-k") && value) {
            k = strtol(value, &end, 10);
            ok = k > 0;
        } else if (!strcmp(a, "--chunk") && value) {
            chunk_size = strtol(value, &end, 10);
            ok = chunk_size >= 8 && chunk_size <= 65536;
        } else if (!strcmp(a, "-n") && value) {
            max_tokens = strtol(value, &end, 10);
            ok = max_tokens >= 0 && max_tokens <= 1L << 24;
        } else if ((a[0] == '-' && a[1]) || n_args == 3) {
            ok = false;
        } else {
            args[n_args++] = a;
        }
        if (end) {
            ok = ok && end != value && *end == 0;
            i++;
        }
    }
    if (!ok || n_args != 3) {
        usage(argv[0]);
        return 2;
    }
    const char *model_path = args[0], *folder = args[1], *question = args[2];

    bonsai_model *model = NULL;
    bonsai_session *session = NULL;
    corpus docs = {0};
    chunk **ranked = NULL;
    float *qvec = NULL;
    int32_t *qtokens = NULL;
    uint32_t n_qtokens = 0;
    int rc = -1;
    bonsai_model_hparams hp = {.struct_size = sizeof hp};
    if (bonsai_model_load(model_path, NULL, &model) != BONSAI_OK ||
        bonsai_session_create(model, NULL, &session) != BONSAI_OK ||
        bonsai_model_hparams_get(model, &hp) != BONSAI_OK) {
        fail_bonsai();
        goto done;
    }
    if ((uint32_t)chunk_size > bonsai_session_n_ctx(session)) {
        fprintf(stderr, "error: chunks of %ld tokens do not fit the context of %u\n", chunk_size,
                bonsai_session_n_ctx(session));
        goto done;
    }

    /* 1-2. The index: every chunk of every file with its embedding. */
    docs.n_embd = hp.n_embd;
    if (build_index(&docs, session, model, folder, (uint32_t)chunk_size)) goto done;
    printf("indexed %zu chunks of %s (embeddings of %u values)\n", docs.n, folder, docs.n_embd);

    /* 3. The question's embedding and the top k chunks by cosine similarity. */
    if (tokenize(model, question, &qtokens, &n_qtokens)) goto done;
    if (!n_qtokens) {
        fprintf(stderr, "error: the question is empty\n");
        goto done;
    }
    qvec = malloc(docs.n_embd * sizeof *qvec);
    ranked = malloc(docs.n * sizeof *ranked);
    if (!qvec || !ranked) {
        fail_oom();
        goto done;
    }
    if (bonsai_embed(session, qtokens, n_qtokens, qvec, docs.n_embd) != BONSAI_OK) {
        fail_bonsai();
        goto done;
    }
    for (size_t i = 0; i < docs.n; i++) {
        double dot = 0;
        for (uint32_t j = 0; j < docs.n_embd; j++) dot += (double)qvec[j] * docs.chunks[i].vec[j];
        docs.chunks[i].score = (float)dot;
        ranked[i] = &docs.chunks[i];
    }
    qsort(ranked, docs.n, sizeof *ranked, by_score);
    size_t top = (size_t)k < docs.n ? (size_t)k : docs.n;
    printf("top %zu:\n", top);
    for (size_t i = 0; i < top; i++) {
        printf("%zu. %.4f %s #%d: ", i + 1, ranked[i]->score, ranked[i]->file, ranked[i]->index);
        print_preview(ranked[i]->text, 72);
        printf("\n");
    }

    /* 4. The answer, from the retrieved chunks. */
    rc = max_tokens > 0 ? answer(session, ranked, top, question, (uint32_t)max_tokens) : 0;

done:
    free(ranked);
    free(qvec);
    free(qtokens);
    corpus_free(&docs);
    bonsai_session_free(session);
    bonsai_model_free(model);
    return rc == 0 ? 0 : 1;
}
