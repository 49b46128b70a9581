/*
 * libFuzzer target for the tokenizer. The first byte picks a vocabulary (gpt-2's byte-level BPE
 * and stories260K's SentencePiece from the shared test data; Qwen3's qwen2 BPE when the build
 * made it) and the flags; the rest is the text. Checked: tokenizing never fails, every id is in
 * the vocabulary, the text round-trips (exactly for gpt-2, up to NFC of each valid run for qwen2,
 * with U+2581 read as a space for SentencePiece), and the streaming detokenizer hands out valid
 * UTF-8 that adds up to the detokenized text whenever that text is valid.
 */
#include "bonsai/bonsai.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../utf8_oracle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_tokenize: %s:%d: invariant failed: %s (%s)\n", __FILE__,         \
                    __LINE__, #cond, bonsai_last_error());                                         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#ifndef BONSAI_FUZZ_QWEN3_VOCAB
#define BONSAI_FUZZ_QWEN3_VOCAB ""
#endif

static bonsai_model *models[3];
/* what the text comes back as */
typedef enum { SAME, NFC, SPM } back_as;
static back_as back[3];
static int n_models = -1;

static void load(const char *path, back_as b)
{
    bonsai_model *m = NULL;
    if (bonsai_model_load(path, NULL, &m)) {
        const char *req = getenv("BONSAI_REQUIRE_TEST_DATA");
        if (req && !strcmp(req, "1")) {
            fprintf(stderr, "fuzz_tokenize: %s\n", bonsai_last_error());
            abort();
        }
        return;
    }
    back[n_models] = b;
    models[n_models++] = m;
}

static void init(void)
{
    if (n_models >= 0) return;
    n_models = 0;
    const char *dir = getenv("BONSAI_TEST_DATA");
    if (!dir || !*dir) dir = "../shared/data";
    char path[4096];
    snprintf(path, sizeof path, "%s/ggml-vocab-gpt-2.gguf", dir);
    load(path, SAME);
    snprintf(path, sizeof path, "%s/stories260K.gguf", dir);
    load(path, SPM);
    const char *qwen = getenv("BONSAI_TEST_QWEN3_VOCAB");
    if (!qwen || !*qwen) qwen = BONSAI_FUZZ_QWEN3_VOCAB;
    if (*qwen) load(qwen, NFC);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    if (!size || !n_models) return 0;
    int which = data[0] % n_models;
    bonsai_model *m = models[which];
    uint32_t tflags = (data[0] >> 2) & 3, dflags = (data[0] >> 4) & 3;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    uint32_t n = 0;
    bonsai_status st = bonsai_tokenize(m, text, len, tflags, NULL, 0, &n);
    CHECK(st == BONSAI_OK || st == BONSAI_ERR_OUT_OF_RANGE);
    CHECK(n <= 2 * (uint64_t)len + 2);
    int32_t *t = malloc(((size_t)n + 1) * sizeof *t);
    CHECK(t);
    uint32_t n2 = 0;
    CHECK(bonsai_tokenize(m, text, len, tflags, t, n, &n2) == BONSAI_OK && n2 == n);
    uint32_t vocab = bonsai_model_n_vocab(m);
    for (uint32_t i = 0; i < n; i++) CHECK(t[i] >= 0 && (uint32_t)t[i] < vocab);

    size_t out_len = 0;
    st = bonsai_detokenize(m, t, n, dflags, NULL, 0, &out_len);
    CHECK(st == BONSAI_OK || st == BONSAI_ERR_OUT_OF_RANGE);
    char *out = malloc(out_len + 1);
    CHECK(out);
    size_t l2 = 0;
    CHECK(bonsai_detokenize(m, t, n, dflags, out, out_len + 1, &l2) == BONSAI_OK && l2 == out_len);
    if (!tflags && !dflags) {
        size_t want_len = len;
        uint8_t *want;
        if (back[which] == NFC) {
            want = oracle_nfc_runs((const uint8_t *)text, len, &want_len);
            CHECK(want);
        } else {
            want = malloc(len + 1);
            CHECK(want);
            want_len = 0;
            for (size_t i = 0; i < len; i++) {
                if (back[which] == SPM && i + 2 < len && !memcmp(text + i, "\xe2\x96\x81", 3)) {
                    want[want_len++] = ' '; /* SentencePiece's space */
                    i += 2;
                } else {
                    want[want_len++] = (uint8_t)text[i];
                }
            }
        }
        CHECK(want_len == out_len && !memcmp(want, out, out_len));
        free(want);
    }

    bonsai_detokenizer *d = NULL;
    CHECK(bonsai_detokenizer_create(m, dflags, &d) == BONSAI_OK);
    char *streamed = malloc(3 * out_len + 4);
    CHECK(streamed);
    size_t s_len = 0;
    for (uint32_t i = 0; i <= n; i++) {
        const char *piece;
        size_t pl;
        if (i < n)
            CHECK(bonsai_detokenizer_push(d, t[i], &piece, &pl) == BONSAI_OK);
        else
            bonsai_detokenizer_flush(d, &piece, &pl);
        CHECK(piece && oracle_valid_utf8((const uint8_t *)piece, pl));
        CHECK(s_len + pl <= 3 * out_len + 3);
        memcpy(streamed + s_len, piece, pl);
        s_len += pl;
    }
    if (oracle_valid_utf8((const uint8_t *)out, out_len))
        CHECK(s_len == out_len && !memcmp(streamed, out, out_len));
    bonsai_detokenizer_free(d);
    free(streamed);
    free(out);
    free(t);
    return 0;
}
