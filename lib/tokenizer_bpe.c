/*
 * Byte-level BPE (tokenizer.ggml.model "gpt2"): NFC, the pre-tokenizer's regex (PCRE2), then
 * merges by rank inside each piece.
 *
 * Invalid UTF-8 never fails: the text is cut into maximal valid runs, each invalid maximal
 * subpart becoming a piece of its own, so every byte is tokenized and detokenizes back to itself.
 * BPE keeps a heap of candidate pairs (lowest rank first, then leftmost, as Hugging Face and
 * llama.cpp do), so a piece of n bytes costs O(n log n) however long it is. Repeated pieces of a
 * call come from a small cache.
 */
#include "vocab_impl.h"

#include "utf8.h"

#include <stdlib.h>
#include <utf8proc.h>

/* Unicode White_Space, which \s is in Hugging Face's regex engine (PCRE2's \s lacks U+0085). */
#define WS "\\t-\\r\\x{85}\\p{Z}"

static const char qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" WS
    "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+";

static const char gpt2_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS
                                   "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

const char *bsi_bpe_pattern(bsi_pre_kind pre)
{
    return pre == BSI_PRE_QWEN2 ? qwen2_pattern : gpt2_pattern;
}

/* ---- per-call state ---- */

#define CACHE_MAX_WORD  48 /* longer pieces are not cached */
#define CACHE_MIN_SLOTS 64
#define CACHE_MAX_SLOTS (1u << 15)

typedef struct cache_entry {
    uint64_t hash;
    uint32_t off; /* key bytes in keys, then n ids in ids */
    uint32_t ids;
    uint8_t len;
    uint8_t n;
} cache_entry;

struct bsi_bpe_state {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    /* BPE on one piece: symbol i covers bytes [i, i + len[i]) (len 0: merged away) */
    int32_t *id;
    uint32_t *len;
    int32_t *prev;
    size_t cap;
    uint64_t *heap; /* rank << 32 | left position */
    size_t heap_n, heap_cap;
    /* the cache of short pieces */
    cache_entry *cache; /* cache_mask + 1 slots; len 0 = empty */
    uint32_t cache_mask, cache_used;
    uint8_t *keys;
    size_t keys_n, keys_cap;
    bsi_ids cache_ids;
    /* NFC text */
    uint8_t *nfc;
    size_t nfc_n, nfc_cap;
    utf8proc_int32_t *cp; /* code points of a run being normalised */
    size_t cp_cap;
};

bonsai_status bsi_bpe_state_new(const bsi_vocab *v, size_t text_len, bsi_bpe_state **out)
{
    bsi_bpe_state *s = bsi_calloc(1, sizeof *s);
    if (!s) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    s->md = pcre2_match_data_create_from_pattern(v->re, v->re_mem);
    /* The default limit (10 million steps) stops the pre-tokenizer in a run of whitespace of some
     * megabytes (\s*[\r\n]+ tries every length). These patterns backtrack at most over the run
     * they then consume, so the work stays linear without it. */
    s->mc = pcre2_match_context_create(v->re_mem);
    if (s->mc) pcre2_set_match_limit(s->mc, UINT32_MAX);
    /* about one slot per 4 bytes of text: a short prompt does not pay for a large cache */
    uint32_t slots = CACHE_MIN_SLOTS;
    while (slots < CACHE_MAX_SLOTS && slots < text_len / 4) slots *= 2;
    s->cache_mask = slots - 1;
    s->cache = bsi_calloc(slots, sizeof *s->cache);
    if (!s->md || !s->mc || !s->cache) {
        bsi_bpe_state_free(s);
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    }
    *out = s;
    return BONSAI_OK;
}

void bsi_bpe_state_free(bsi_bpe_state *s)
{
    if (!s) return;
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mc);
    free(s->id);
    free(s->len);
    free(s->prev);
    free(s->heap);
    free(s->cache);
    free(s->cp);
    free(s->keys);
    free(s->cache_ids.v);
    free(s->nfc);
    free(s);
}

static bonsai_status reserve(bsi_bpe_state *s, size_t n)
{
    if (n <= s->cap) return BONSAI_OK;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    int32_t *id = bsi_realloc(s->id, cap * sizeof *id);
    if (id) s->id = id;
    uint32_t *len = bsi_realloc(s->len, cap * sizeof *len);
    if (len) s->len = len;
    int32_t *prev = bsi_realloc(s->prev, cap * sizeof *prev);
    if (prev) s->prev = prev;
    if (!id || !len || !prev)
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory (a piece of %zu bytes)", n);
    s->cap = cap;
    return BONSAI_OK;
}

/* ---- the heap of candidate merges ---- */

static bonsai_status heap_push(bsi_bpe_state *s, uint64_t key)
{
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 128;
        uint64_t *h = bsi_realloc(s->heap, cap * sizeof *h);
        if (!h) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        s->heap = h;
        s->heap_cap = cap;
    }
    uint64_t *h = s->heap;
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= key) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = key;
    return BONSAI_OK;
}

static uint64_t heap_pop(bsi_bpe_state *s)
{
    uint64_t *h = s->heap, top = h[0], last = h[--s->heap_n];
    size_t n = s->heap_n, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (last <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    if (n) h[i] = last;
    return top;
}

/* Queue the pair of symbols at a and b if the vocabulary merges it. */
static bonsai_status push_pair(const bsi_vocab *v, bsi_bpe_state *s, size_t a, size_t b)
{
    const bsi_merge *m = bsi_vocab_merge(v, s->id[a], s->id[b]);
    return m ? heap_push(s, (uint64_t)m->rank << 32 | a) : BONSAI_OK;
}

/* BPE on one piece of n >= 2 bytes, ids appended to out. */
static bonsai_status bpe(const bsi_vocab *v, bsi_bpe_state *s, const uint8_t *w, size_t n,
                         bsi_ids *out)
{
    bonsai_status st;
    if (n > INT32_MAX) return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "a piece of %zu bytes", n);
    if ((st = reserve(s, n))) return st;
    int32_t *id = s->id, *prev = s->prev;
    uint32_t *len = s->len;
    for (size_t i = 0; i < n; i++) {
        id[i] = v->byte_token[w[i]];
        len[i] = 1;
        prev[i] = (int32_t)i - 1;
    }
    s->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if ((st = push_pair(v, s, i, i + 1))) return st;
    while (s->heap_n) {
        uint64_t e = heap_pop(s);
        uint32_t rank = (uint32_t)(e >> 32), l = (uint32_t)e;
        if (!len[l]) continue;
        size_t r = (size_t)l + len[l];
        if (r >= n) continue;
        /* the pair is still there if it still merges with this rank (ranks are unique) */
        const bsi_merge *m = bsi_vocab_merge(v, id[l], id[r]);
        if (!m || m->rank != rank) continue;
        id[l] = m->result;
        len[l] += len[r];
        len[r] = 0;
        size_t next = (size_t)l + len[l];
        if (next < n) prev[next] = (int32_t)l;
        if (prev[l] >= 0 && (st = push_pair(v, s, (size_t)prev[l], l))) return st;
        if (next < n && (st = push_pair(v, s, l, next))) return st;
    }
    for (size_t i = 0; i < n; i += len[i])
        if ((st = bsi_ids_push(out, id[i]))) return st;
    return BONSAI_OK;
}

/* ---- the cache ---- */

static bonsai_status piece(const bsi_vocab *v, bsi_bpe_state *s, const uint8_t *w, size_t n,
                           bsi_ids *out)
{
    if (n == 1) return bsi_ids_push(out, v->byte_token[w[0]]);
    if (n > CACHE_MAX_WORD) return bpe(v, s, w, n, out);
    uint64_t h = bsi_hash_bytes(w, n);
    const uint32_t mask = s->cache_mask;
    uint32_t i = (uint32_t)h & mask;
    for (;; i = (i + 1) & mask) {
        cache_entry *e = &s->cache[i];
        if (!e->len) break;
        if (e->hash == h && e->len == n && !memcmp(s->keys + e->off, w, n)) {
            bonsai_status st;
            if (out->cap - out->n < e->n && (st = bsi_ids_grow(out, e->n))) return st;
            memcpy(out->v + out->n, s->cache_ids.v + e->ids, e->n * sizeof *out->v);
            out->n += e->n;
            return BONSAI_OK;
        }
    }
    size_t before = out->n;
    bonsai_status st = bpe(v, s, w, n, out);
    size_t n_ids = out->n - before;
    /* keep it when there is room (at most 3/4 full; no eviction) */
    if (st || s->cache_used >= (s->cache_mask + 1) / 4 * 3) return st;
    if (s->keys_n + n > s->keys_cap) {
        size_t cap = s->keys_cap ? s->keys_cap * 2 : 16384;
        uint8_t *k = bsi_realloc(s->keys, cap);
        if (!k) return BONSAI_OK; /* the cache is optional */
        s->keys = k;
        s->keys_cap = cap;
    }
    if (s->cache_ids.cap - s->cache_ids.n < n_ids && bsi_ids_grow(&s->cache_ids, n_ids))
        return BONSAI_OK;
    memcpy(s->keys + s->keys_n, w, n);
    memcpy(s->cache_ids.v + s->cache_ids.n, out->v + before, n_ids * sizeof *out->v);
    s->cache[i] =
        (cache_entry){h, (uint32_t)s->keys_n, (uint32_t)s->cache_ids.n, (uint8_t)n, (uint8_t)n_ids};
    s->keys_n += n;
    s->cache_ids.n += n_ids;
    s->cache_used++;
    return BONSAI_OK;
}

/* ---- pre-tokenization ---- */

/*
 * Code points that NFC leaves alone whatever surrounds them and that never change a neighbour
 * before them: starters (combining class 0) whose NFC is themselves and that are never the second
 * half of a composition. Only ranges known to qualify are listed (Latin below the combining marks,
 * Cyrillic, punctuation, symbols, arrows, box drawing, dingbats, kana, CJK, Hangul syllables,
 * fullwidth forms, emoji); anything else is normalised with its neighbourhood.
 */
static inline bool nfc_inert(uint32_t cp)
{
    if (cp < 0x300) return true;
    if (cp < 0x2000) return (cp >= 0x400 && cp <= 0x482) || (cp >= 0x48a && cp <= 0x52f);
    if (cp < 0x3000)
        return (cp >= 0x2010 && cp <= 0x2027) || (cp >= 0x2030 && cp <= 0x205e) ||
               (cp >= 0x20a0 && cp <= 0x20cf) || (cp >= 0x2190 && cp <= 0x22ff) ||
               (cp >= 0x2500 && cp <= 0x27bf);
    if (cp < 0xac00)
        return cp <= 0x3029 || (cp >= 0x3041 && cp <= 0x3096) || (cp >= 0x309b && cp <= 0x30ff) ||
               (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x4e00 && cp <= 0x9fff);
    return cp <= 0xd7a3 || (cp >= 0xff01 && cp <= 0xffee) || (cp >= 0x1f300 && cp <= 0x1faff);
}

static bonsai_status nfc_append(bsi_bpe_state *s, const uint8_t *t, size_t n)
{
    if (!n) return BONSAI_OK;
    if (s->nfc_n + n > s->nfc_cap) {
        size_t cap = s->nfc_cap ? s->nfc_cap : 4096;
        while (cap < s->nfc_n + n) cap *= 2;
        uint8_t *p = bsi_realloc(s->nfc, cap);
        if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        s->nfc = p;
        s->nfc_cap = cap;
    }
    memcpy(s->nfc + s->nfc_n, t, n);
    s->nfc_n += n;
    return BONSAI_OK;
}

/* Appends run t[0 .. n) (valid UTF-8) in NFC: utf8proc decomposes it into code points in the
 * state's buffer (so it allocates nothing itself), composes and re-encodes them in place. */
static bonsai_status nfc_run(bsi_bpe_state *s, const uint8_t *t, size_t n)
{
    const utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    utf8proc_ssize_t need = utf8proc_decompose(t, (utf8proc_ssize_t)n, NULL, 0, opt);
    if (need < 0) return nfc_append(s, t, n); /* not valid UTF-8: cannot happen here */
    if ((size_t)need + 1 > s->cp_cap) {
        size_t cap = (size_t)need + 1 < 256 ? 256 : (size_t)need + 1;
        utf8proc_int32_t *p = bsi_realloc(s->cp, cap * sizeof *p);
        if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        s->cp = p;
        s->cp_cap = cap;
    }
    need = utf8proc_decompose(t, (utf8proc_ssize_t)n, s->cp, need, opt);
    utf8proc_ssize_t m = need < 0 ? need : utf8proc_reencode(s->cp, need, opt);
    if (m < 0) return nfc_append(s, t, n);
    return nfc_append(s, (const uint8_t *)s->cp, (size_t)m);
}

/*
 * NFC of valid UTF-8 into s->nfc. NFC works span by span: each maximal run of characters that are
 * not inert, with the inert starter before it (which may compose with it), is normalised on its
 * own; inert characters between spans are copied.
 */
static bonsai_status nfc(bsi_bpe_state *s, const uint8_t *t, size_t n)
{
    bonsai_status st;
    size_t copied = 0, prev = 0, i = 0;
    s->nfc_n = 0;
    while (i < n) {
        bsi_utf8_kind kind;
        size_t l = t[i] < 0x80 ? 1 : bsi_utf8_next(t + i, n - i, &kind);
        if (t[i] < 0x80 || nfc_inert(bsi_utf8_decode(t + i, l))) {
            prev = i;
            i += l;
            continue;
        }
        size_t start = i > copied ? prev : i, end = i + l;
        while (end < n) {
            size_t k = bsi_utf8_next(t + end, n - end, &kind);
            if (t[end] < 0x80 || nfc_inert(bsi_utf8_decode(t + end, k))) break;
            end += k;
        }
        if ((st = nfc_append(s, t + copied, start - copied))) return st;
        st = nfc_run(s, t + start, end - start);
        if (st) return st;
        copied = i = end;
    }
    return nfc_append(s, t + copied, n - copied);
}

/* Split valid UTF-8 text with the pre-tokenizer's regex and tokenize each piece. */
static bonsai_status split(const bsi_vocab *v, bsi_bpe_state *s, const uint8_t *t, size_t n,
                           bsi_ids *out)
{
    bonsai_status st;
    size_t pos = 0;
    while (pos < n) {
        int rc = pcre2_match(v->re, t, n, pos, PCRE2_NO_UTF_CHECK, s->md, s->mc);
        if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) /* the JIT's stack: the interpreter */
            rc = pcre2_match(v->re, t, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, s->md, s->mc);
        size_t start = n, end = n;
        if (rc >= 0) {
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
            start = ov[0];
            end = ov[1];
        } else if (rc != PCRE2_ERROR_NOMATCH) { /* still failing (memory): the rest as a piece */
            start = pos;
        }
        if (start > n || end > n || start < pos) start = end = n; /* cannot happen */
        if (start > pos && (st = piece(v, s, t + pos, start - pos, out))) return st;
        if (end == start && start < n) { /* an empty match: step over one character */
            bsi_utf8_kind kind;
            end = start + bsi_utf8_next(t + start, n - start, &kind);
        }
        if (end > start && (st = piece(v, s, t + start, end - start, out))) return st;
        pos = end;
    }
    return BONSAI_OK;
}

bonsai_status bsi_bpe_encode(const bsi_vocab *v, bsi_bpe_state *s, const uint8_t *text, size_t len,
                             bsi_ids *out)
{
    bonsai_status st = BONSAI_OK;
    size_t i = 0;
    while (i < len) {
        /* the longest valid run from i */
        size_t j = i;
        bool normalize = false; /* a character that is not inert */
        bsi_utf8_kind kind = BSI_UTF8_VALID;
        while (j < len) {
            if (text[j] < 0x80) {
                j++;
                continue;
            }
            size_t l = bsi_utf8_next(text + j, len - j, &kind);
            if (kind != BSI_UTF8_VALID) break;
            if (v->nfc && !normalize && !nfc_inert(bsi_utf8_decode(text + j, l))) normalize = true;
            j += l;
        }
        if (j > i) {
            if (normalize) st = nfc(s, text + i, j - i);
            if (!st)
                st = normalize ? split(v, s, s->nfc, s->nfc_n, out)
                               : split(v, s, text + i, j - i, out);
            if (st) return st;
        }
        if (j < len) { /* an invalid maximal subpart (or a truncated character at the end) */
            size_t l = bsi_utf8_next(text + j, len - j, &kind);
            if ((st = piece(v, s, text + j, l, out))) return st;
            j += l;
        }
        i = j;
    }
    return BONSAI_OK;
}
