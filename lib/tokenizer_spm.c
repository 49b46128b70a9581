/*
 * SentencePiece (tokenizer.ggml.model "llama"), as llama.cpp runs it: spaces become U+2581 (one
 * added in front when asked), the text is cut into characters, and the adjacent pair whose
 * concatenation is the token of highest score is merged (leftmost on ties) until no pair is a
 * token. Symbols that are not tokens fall back to their bytes' <0xNN> tokens.
 */
#include "vocab_impl.h"

#include "utf8.h"

#include <stdlib.h>

typedef struct bigram {
    float score;
    int32_t left, right;
    uint32_t size;
} bigram;

typedef struct spm {
    const bsi_vocab *v;
    const uint8_t *text;
    uint32_t *start, *len; /* len 0: merged away */
    int32_t *prev, *next;
    bigram *heap;
    size_t heap_n, heap_cap;
} spm;

/* a comes out of the heap before b */
static inline bool before(const bigram *a, const bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static bonsai_status try_pair(spm *s, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) return BONSAI_OK;
    uint32_t size = s->len[left] + s->len[right];
    int32_t id = bsi_vocab_find(s->v, s->text + s->start[left], size);
    if (id < 0) return BONSAI_OK;
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        bigram *h = bsi_realloc(s->heap, cap * sizeof *h);
        if (!h) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        s->heap = h;
        s->heap_cap = cap;
    }
    bigram b = {bsi_vocab_score(s->v, id), left, right, size};
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(&b, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = b;
    return BONSAI_OK;
}

static bigram pop(spm *s)
{
    bigram top = s->heap[0], last = s->heap[--s->heap_n];
    size_t n = s->heap_n, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static bonsai_status merge_all(spm *s, uint32_t n_sym)
{
    bonsai_status st;
    for (uint32_t i = 1; i < n_sym; i++)
        if ((st = try_pair(s, (int32_t)i - 1, (int32_t)i))) return st;
    while (s->heap_n) {
        bigram b = pop(s);
        uint32_t *len = s->len;
        if (!len[b.left] || !len[b.right] || len[b.left] + len[b.right] != b.size) continue;
        len[b.left] += len[b.right];
        len[b.right] = 0;
        int32_t next = s->next[b.right];
        s->next[b.left] = next;
        if (next >= 0) s->prev[next] = b.left;
        if ((st = try_pair(s, s->prev[b.left], b.left)) || (st = try_pair(s, b.left, next)))
            return st;
    }
    return BONSAI_OK;
}

bonsai_status bsi_spm_encode(const bsi_vocab *v, const uint8_t *text, size_t len, bool space_prefix,
                             bsi_ids *out)
{
    if (len > (INT32_MAX - 3) / 3)
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "a text of %zu bytes is too long", len);
    size_t cap = 3 * len + 3, n = 0;
    uint8_t *buf = bsi_malloc(cap);
    spm s = {.v = v, .text = buf};
    s.start = bsi_malloc(cap * sizeof *s.start);
    s.len = bsi_malloc(cap * sizeof *s.len);
    s.prev = bsi_malloc(cap * sizeof *s.prev);
    s.next = bsi_malloc(cap * sizeof *s.next);
    bonsai_status st = BONSAI_OK;
    if (!buf || !s.start || !s.len || !s.prev || !s.next) {
        st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    static const uint8_t space[3] = {0xe2, 0x96, 0x81}; /* U+2581 */
    if (space_prefix) {
        memcpy(buf, space, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + n, space, 3);
            n += 3;
        } else {
            buf[n++] = text[i];
        }
    }
    /* one symbol per character; each byte of invalid UTF-8 on its own */
    uint32_t n_sym = 0;
    for (size_t i = 0; i < n;) {
        bsi_utf8_kind kind;
        size_t l = bsi_utf8_next(buf + i, n - i, &kind);
        if (kind != BSI_UTF8_VALID) l = 1;
        s.start[n_sym] = (uint32_t)i;
        s.len[n_sym] = (uint32_t)l;
        s.prev[n_sym] = (int32_t)n_sym - 1;
        s.next[n_sym] = i + l < n ? (int32_t)n_sym + 1 : -1;
        n_sym++;
        i += l;
    }
    if (!n_sym || (st = merge_all(&s, n_sym))) goto done;
    for (int32_t i = 0; i >= 0 && !st; i = s.next[i]) {
        int32_t id = bsi_vocab_find(v, buf + s.start[i], s.len[i]);
        if (id >= 0) {
            st = bsi_ids_push(out, id);
            continue;
        }
        for (uint32_t k = 0; k < s.len[i] && !st; k++) {
            int32_t b = v->byte_token[buf[s.start[i] + k]];
            if (b >= 0) st = bsi_ids_push(out, b); /* no byte token and no <unk>: dropped */
        }
    }
done:
    free(buf);
    free(s.start);
    free(s.len);
    free(s.prev);
    free(s.next);
    free(s.heap);
    return st;
}
