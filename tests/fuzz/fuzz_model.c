/*
 * libFuzzer target for model loading and running: the bytes are a GGUF file (in memory, through
 * memfd), loaded with memory caps; when the file holds a model the runtime runs, its tokenizer, a
 * session and a few tokens of evaluation and generation are exercised too. Any failure must be a
 * status with a message; a crash, a hang, a leak (LeakSanitizer) or an out-of-range token id is a
 * finding. Seeds: tests/fuzz/corpus/model (small runnable llama and qwen3 models, written by
 * make_corpus.py) and the GGUF corpus.
 */
#define _GNU_SOURCE
#include "bonsai/bonsai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_model: %s:%d: invariant failed: %s (%s)\n", __FILE__, __LINE__,  \
                    #cond, bonsai_last_error());                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A failure is a known status with a message. */
static void failed(bonsai_status st)
{
    CHECK(st < 0 && st >= BONSAI_ERR_INVALID_STATE);
    CHECK(bonsai_last_error()[0] != 0);
}

static void exercise_tokenizer(const bonsai_model *m)
{
    static const char text[] = "Hello <|im_start|> w\xc3\xa9rld \xff\xfe <think>";
    int32_t ids[256];
    uint32_t n = 0, vocab = bonsai_model_n_vocab(m);
    for (uint32_t flags = 0; flags < 4; flags++) {
        bonsai_status st = bonsai_tokenize(m, text, sizeof text - 1, flags, ids, 256, &n);
        if (st) {
            failed(st);
            return;
        }
        for (uint32_t i = 0; i < n; i++) CHECK(ids[i] >= 0 && (uint32_t)ids[i] < vocab);
        char out[2048];
        size_t len = 0;
        st = bonsai_detokenize(m, ids, n, flags & 1, out, sizeof out, &len);
        if (st) failed(st);
    }
}

static void exercise_session(bonsai_model *m)
{
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_ctx = 16;
    sp.n_threads = 1;
    sp.backend = "cpu";
    sp.max_memory = 64u << 20;
    bonsai_session *s = NULL;
    bonsai_status st = bonsai_session_create(m, &sp, &s);
    if (st) {
        failed(st);
        return;
    }
    bonsai_model_hparams h = {.struct_size = sizeof h};
    CHECK(bonsai_model_hparams_get(m, &h) == BONSAI_OK);
    /* token ids the embedding table has (the vocabulary may be absent) */
    bonsai_tensor_info ti = {.struct_size = sizeof ti};
    uint64_t index;
    uint32_t rows = 1;
    if (bonsai_model_tensor_find(m, "token_embd.weight", &index) == BONSAI_OK &&
        bonsai_model_tensor_at(m, index, &ti) == BONSAI_OK && ti.n_dims >= 2 && ti.dims[1] > 0)
        rows = ti.dims[1] < UINT32_MAX ? (uint32_t)ti.dims[1] : UINT32_MAX;
    int32_t toks[3] = {0, (int32_t)(1 % rows), (int32_t)(2 % rows)};
    st = bonsai_session_eval(s, toks, 3, BONSAI_EVAL_ALL_LOGITS);
    if (st) {
        failed(st);
    } else {
        uint32_t n_rows = 0;
        CHECK(bonsai_session_logits(s, &n_rows) != NULL && n_rows == 3);
        CHECK(bonsai_session_n_past(s) == 3);
    }
    bonsai_generate_params gp;
    bonsai_generate_params_init(&gp);
    gp.max_tokens = 3;
    st = bonsai_generate_tokens(s, toks, 2, &gp, NULL);
    if (st) failed(st);
    bonsai_session_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    if (fd < 0) {
        fd = memfd_create("fuzz-model.gguf", MFD_CLOEXEC);
        CHECK(fd >= 0);
    }
    CHECK(ftruncate(fd, 0) == 0);
    CHECK(size == 0 || pwrite(fd, data, size, 0) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

    bonsai_model_params mp;
    bonsai_model_params_init(&mp);
    mp.use_mmap = size % 2 == 0; /* both ways of reading the file */
    mp.max_memory = 256u << 20;
    bonsai_model *m = NULL;
    bonsai_status st = bonsai_model_load(path, &mp, &m);
    if (st) {
        failed(st);
        CHECK(m == NULL);
        return 0;
    }
    exercise_tokenizer(m);
    exercise_session(m);
    bonsai_model_free(m);
    return 0;
}
