/*
 * libFuzzer target for the chat format: the renderer, the reasoning parser and
 * bonsai_chat_tokenize. Input: byte 0 = render flags; then messages, each a role byte (system,
 * user, assistant, tool, or an unknown role) and its content up to a 0 byte. Checked: rendering
 * succeeds for known roles (INVALID_ARGUMENT otherwise), the size query agrees with the text;
 * the parser's pieces lie inside the text it was given; tokenizing the conversation yields exactly
 * the control tokens of the template's markup, whatever the contents hold (no forged turns).
 * The model: the small qwen3 of the model corpus (byte-level BPE with <|im_start|>, <|im_end|>).
 */
#include "bonsai/bonsai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_chat: %s:%d: invariant failed: %s (%s)\n", __FILE__, __LINE__,   \
                    #cond, bonsai_last_error());                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#ifndef BONSAI_FUZZ_CHAT_MODEL
#define BONSAI_FUZZ_CHAT_MODEL "tests/fuzz/corpus/model/qwen3-bpe.gguf"
#endif

enum { MAX_MSGS = 8 };

static bonsai_model *model;

static uint32_t count_control(const int32_t *t, uint32_t n)
{
    uint32_t c = 0;
    for (uint32_t i = 0; i < n; i++) c += bonsai_token_is_control(model, t[i]);
    return c;
}

/* Tokens of a conversation; NULL when the rendering is refused. */
static int32_t *tokens_of(const bonsai_chat_message *m, size_t n, uint32_t flags, uint32_t *count)
{
    bonsai_status st = bonsai_chat_tokenize(model, m, n, flags, NULL, 0, count);
    if (st == BONSAI_OK && *count == 0) return calloc(1, sizeof(int32_t));
    if (st != BONSAI_ERR_OUT_OF_RANGE) {
        CHECK(st == BONSAI_ERR_INVALID_ARGUMENT);
        return NULL;
    }
    int32_t *t = malloc(((size_t)*count + 1) * sizeof *t);
    CHECK(t != NULL);
    CHECK(bonsai_chat_tokenize(model, m, n, flags, t, *count, count) == BONSAI_OK);
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!model) {
        const char *path = getenv("BONSAI_FUZZ_CHAT_MODEL");
        if (!path || !*path) path = BONSAI_FUZZ_CHAT_MODEL;
        if (bonsai_model_load(path, NULL, &model)) {
            fprintf(stderr, "fuzz_chat: %s\n", bonsai_last_error());
            abort();
        }
    }
    if (size < 1) return 0;
    static const char *const roles[] = {"system", "user", "assistant", "tool", "narrator"};
    uint32_t flags = data[0] & 3;
    char *copy = malloc(size);
    CHECK(copy != NULL);
    memcpy(copy, data, size);
    bonsai_chat_message msgs[MAX_MSGS], blank[MAX_MSGS];
    size_t n = 0, at = 1;
    bool known = true;
    while (at < size && n < MAX_MSGS) {
        const char *role = roles[(unsigned char)copy[at] % 5];
        known &= strcmp(role, "narrator") != 0;
        at++;
        size_t start = at;
        while (at < size && copy[at]) at++;
        if (at == size) { /* the last content runs to the end: terminate it in place */
            copy[size - 1] = 0;
            if (start > size - 1) start = size - 1;
        }
        msgs[n] = (bonsai_chat_message){role, copy + start};
        blank[n] = (bonsai_chat_message){role, ""};
        n++;
        at++;
    }

    /* rendering */
    size_t len = 0;
    bonsai_status st = bonsai_chat_render(msgs, n, flags, NULL, 0, &len);
    if (!known) {
        CHECK(st == BONSAI_ERR_INVALID_ARGUMENT);
    } else {
        CHECK(st == (len ? BONSAI_ERR_OUT_OF_RANGE : BONSAI_OK));
        char *text = malloc(len + 1);
        size_t len2 = 0;
        CHECK(text && bonsai_chat_render(msgs, n, flags, text, len + 1, &len2) == BONSAI_OK);
        CHECK(len2 == len && text[len] == 0);
        /* the parser on the rendered text */
        const char *r, *c;
        size_t rn, cn;
        bonsai_chat_parse(text, len, &r, &rn, &c, &cn);
        CHECK(r == text + len || (r >= text && r + rn <= text + len) || rn == 0);
        CHECK(c >= text && c + cn <= text + len);
        free(text);
    }
    /* the parser on the raw input */
    const char *r, *c;
    size_t rn, cn;
    bonsai_chat_parse((const char *)data, size, &r, &rn, &c, &cn);
    CHECK(rn == 0 || (r >= (const char *)data && r + rn <= (const char *)data + size));
    CHECK(cn == 0 || (c >= (const char *)data && c + cn <= (const char *)data + size));

    /* tokenizing: the contents add no control tokens */
    uint32_t nt = 0, nb = 0;
    int32_t *t = tokens_of(msgs, n, flags, &nt), *b = tokens_of(blank, n, flags, &nb);
    CHECK((t == NULL) == !known && (b == NULL) == !known);
    if (t && b) CHECK(count_control(t, nt) == count_control(b, nb));
    free(t);
    free(b);
    free(copy);
    return 0;
}
