/*
 * libFuzzer target for the JSON constraint: a schema (any bytes) and a document. The schema either
 * compiles or is refused with a status and message. The document is fed byte by byte; checked:
 *  - a document the matcher takes as complete parses with the strict JSON parser;
 *  - from every prefix it took, the shortest ending (bsi_jstate_finish) completes a document that
 *    parses (the budget logic of generation relies on it);
 *  - token masks over a small vocabulary made from the input (all bytes, some of the document's
 *    substrings, an end-of-generation token) equal token-by-token checks.
 * Input: byte 0 = schema length (0: JSON mode), then the schema, then the document.
 */
#include "arena.h"
#include "json.h"
#include "json_constraint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_json: %s:%d: invariant failed: %s\n", __FILE__, __LINE__,        \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

enum { MAX_DOC = 600, N_SUB = 48 };

/* A document must parse. */
static void parses(const uint8_t *p, size_t n)
{
    bsi_arena *a = bsi_arena_new();
    if (!a) return;
    const bsi_json *root = NULL;
    bonsai_status st = bsi_json_parse(a, (const char *)p, n, "doc", &root);
    if (st) fprintf(stderr, "fuzz_json: \"%.*s\" does not parse\n", (int)n, (const char *)p);
    CHECK(st == BONSAI_OK);
    bsi_arena_free(a);
}

typedef struct vocab {
    const uint8_t *tok[256 + N_SUB + 1];
    size_t len[256 + N_SUB + 1];
    uint8_t bytes[256];
    uint32_t n;
} vocab;

static bsi_jtok_kind vocab_fn(void *ctx, uint32_t id, const uint8_t **bytes, size_t *len)
{
    vocab *v = ctx;
    *bytes = v->tok[id];
    *len = v->len[id];
    return id == v->n - 1 ? BSI_JTOK_EOG : BSI_JTOK_TEXT;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t slen = data[0];
    if (slen > size - 1) slen = size - 1;
    const uint8_t *schema = data + 1, *doc = data + 1 + slen;
    size_t dlen = size - 1 - slen;
    if (dlen > MAX_DOC) dlen = MAX_DOC;

    bsi_jschema *s = NULL;
    bonsai_status st = bsi_jschema_compile(slen ? (const char *)schema : NULL, slen, &s);
    if (st) {
        CHECK(st == BONSAI_ERR_INVALID_ARGUMENT || st == BONSAI_ERR_UNSUPPORTED ||
              st == BONSAI_ERR_NO_MEMORY);
        CHECK(bonsai_last_error()[0] != 0);
        CHECK(s == NULL);
        return 0;
    }

    /* a small vocabulary: every byte, substrings of the document, an end-of-generation token */
    vocab v = {0};
    for (int b = 0; b < 256; b++) {
        v.bytes[b] = (uint8_t)b;
        v.tok[v.n] = &v.bytes[b];
        v.len[v.n++] = 1;
    }
    for (size_t k = 0; k < N_SUB && dlen >= 2; k++) {
        size_t at = (k * 131) % dlen, len = 2 + k % 6;
        if (at + len > dlen) len = dlen - at;
        if (len < 2) continue;
        v.tok[v.n] = doc + at;
        v.len[v.n++] = len;
    }
    v.tok[v.n] = (const uint8_t *)"";
    v.len[v.n++] = 0;
    bsi_jvocab *jv = NULL;
    if (bsi_jvocab_build(v.n, vocab_fn, &v, &jv)) {
        bsi_jschema_free(s);
        return 0;
    }
    uint64_t mask[(256 + N_SUB + 1 + 63) / 64];
    void *scratch = malloc(bsi_jvocab_scratch_size(jv));
    uint8_t *whole = malloc(MAX_DOC + 8192);
    uint8_t *fin = malloc(8192);
    CHECK(scratch && whole && fin);

    bsi_jstate state;
    bsi_jstate_init(s, &state);
    for (size_t i = 0;; i++) {
        /* the shortest ending from here */
        bool closed = false;
        size_t f = bsi_jstate_finish(s, &state, fin, 8192, &closed);
        if (f != SIZE_MAX) {
            bsi_jstate end;
            bsi_jstate_copy(&end, &state);
            CHECK(bsi_jstate_feed_bytes(s, &end, fin, f));
            CHECK(bsi_jstate_complete(s, &end));
            CHECK(closed == bsi_jstate_closed(s, &end));
            memcpy(whole, doc, i);
            memcpy(whole + i, fin, f);
            parses(whole, i + f);
        }
        /* masks against checks, now and then */
        if (i % 16 == 0) {
            bsi_jvocab_mask(jv, s, &state, mask, scratch);
            for (uint32_t id = 0; id < v.n; id++)
                CHECK(((mask[id / 64] >> (id % 64)) & 1) ==
                      (uint64_t)bsi_jvocab_check(jv, s, &state, (int32_t)id));
        }
        if (i == dlen) break;
        if (!bsi_jstate_feed(s, &state, doc[i])) break;
        if (bsi_jstate_complete(s, &state)) parses(doc, i + 1);
    }
    free(fin);
    free(whole);
    free(scratch);
    bsi_jvocab_free(jv);
    bsi_jschema_free(s);
    return 0;
}
