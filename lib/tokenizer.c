/*
 * The tokenizer API: special tokens matched as whole strings, the text between them handed to
 * byte-level BPE (tokenizer_bpe.c) or SentencePiece (tokenizer_spm.c); detokenization from the
 * pieces the vocabulary decoded once; a streaming detokenizer that only emits whole UTF-8.
 */
#include "vocab_impl.h"

#include "handle.h"
#include "model.h"
#include "utf8.h"

#include <stdlib.h>

#define TOKENIZE_FLAGS   (BONSAI_TOKENIZE_ADD_BOS | BONSAI_TOKENIZE_PARSE_SPECIAL)
#define DETOKENIZE_FLAGS (BONSAI_DETOKENIZE_SPECIAL | BONSAI_DETOKENIZE_CONTINUATION)

/* The special token that starts at p (leftmost-longest, as Hugging Face's added vocabulary
 * matches): user-defined tokens always, control and unknown ones only when parse_special. */
static int32_t match_special(const bsi_vocab *v, const uint8_t *p, size_t rest, bool parse_special,
                             size_t *len)
{
    for (uint32_t k = v->special_start[p[0]]; k < v->special_start[p[0] + 1]; k++) {
        int32_t id = v->special[k];
        if (!parse_special && v->type[id] != BSI_TOKEN_USER_DEFINED) continue;
        const bsi_str *t = &v->text[id];
        if (t->len <= rest && !memcmp(t->s, p, (size_t)t->len)) {
            *len = (size_t)t->len;
            return id;
        }
    }
    return -1;
}

static bonsai_status fragment(const bsi_vocab *v, bsi_bpe_state *bpe, const uint8_t *t, size_t len,
                              bool after_special, bsi_ids *out)
{
    if (v->kind == BSI_VOCAB_BPE) return bsi_bpe_encode(v, bpe, t, len, out);
    /* llama.cpp adds SentencePiece's space before the text and after every special token */
    return bsi_spm_encode(v, t, len, v->add_space_prefix && after_special, out);
}

/* Whether [a, b) overlaps one of the sorted, disjoint spans [plain[2k], plain[2k + 1]), moving
 * *k past the spans that end before a (callers ask with a growing a). */
static bool in_plain(const size_t *plain, size_t n_plain, size_t *k, size_t a, size_t b)
{
    while (*k < n_plain && plain[2 * *k + 1] <= a) ++*k;
    return *k < n_plain && plain[2 * *k] < b;
}

/* plain: n_plain spans of the text where control tokens are not parsed (a chat's message
 * contents), or NULL. */
static bonsai_status encode(const bsi_vocab *v, const uint8_t *t, size_t len, uint32_t flags,
                            const size_t *plain, size_t n_plain, bsi_ids *out)
{
    size_t k_plain = 0;
    bonsai_status st = BONSAI_OK;
    bsi_bpe_state *bpe = NULL;
    if (v->kind == BSI_VOCAB_BPE && len && (st = bsi_bpe_state_new(v, len, &bpe))) return st;
    if ((flags & BONSAI_TOKENIZE_ADD_BOS) && v->add_bos && v->bos >= 0)
        st = bsi_ids_push(out, v->bos);
    bool parse = flags & BONSAI_TOKENIZE_PARSE_SPECIAL, after_special = true;
    uint8_t mask = parse ? 2 : 1;
    size_t start = 0, i = 0, mlen = 0;
    while (!st && i < len) {
        if (!(v->special_first[t[i]] & mask)) {
            i++;
            continue;
        }
        int32_t id = match_special(v, t + i, len - i, parse, &mlen);
        if (id >= 0 && v->type[id] != BSI_TOKEN_USER_DEFINED && plain &&
            in_plain(plain, n_plain, &k_plain, i, i + mlen)) {
            /* a control token's text inside a message: ordinary text; a user-defined token
             * matches everywhere, as it would without PARSE_SPECIAL */
            id = match_special(v, t + i, len - i, false, &mlen);
        }
        if (id < 0) {
            i++;
            continue;
        }
        if (i > start) st = fragment(v, bpe, t + start, i - start, after_special, out);
        if (!st) st = bsi_ids_push(out, id);
        after_special = true;
        i += mlen;
        start = i;
    }
    if (!st && start < len) st = fragment(v, bpe, t + start, len - start, after_special, out);
    bsi_bpe_state_free(bpe);
    return st;
}

bonsai_status bonsai_tokenize(const bonsai_model *model, const char *text, size_t len,
                              uint32_t flags, int32_t *tokens, uint32_t n_max, uint32_t *n_tokens)
{
    if (!model || !n_tokens || (!text && len) || (!tokens && n_max))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_tokenize: NULL argument");
    if (flags & ~TOKENIZE_FLAGS)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_tokenize: unknown flags 0x%x",
                        flags & ~TOKENIZE_FLAGS);
    const bsi_vocab *v;
    bonsai_status st = bsi_vocab_get(model, &v);
    if (st) return st;
    bsi_ids ids = {0};
    st = encode(v, (const uint8_t *)text, len, flags, NULL, 0, &ids);
    if (!st && ids.n > UINT32_MAX)
        st = bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "bonsai_tokenize: %zu tokens is too many", ids.n);
    if (!st) {
        *n_tokens = (uint32_t)ids.n;
        if (ids.n > n_max)
            st = bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                          "bonsai_tokenize: the text has %zu tokens, more than n_max (%u)", ids.n,
                          n_max);
        else if (ids.n)
            memcpy(tokens, ids.v, ids.n * sizeof *tokens);
    }
    free(ids.v);
    return st;
}

bonsai_status bsi_tokenize_markup(const bonsai_model *model, const char *text, size_t len,
                                  uint32_t flags, const size_t *plain, size_t n_plain,
                                  int32_t **tokens, uint32_t *n_tokens)
{
    *tokens = NULL;
    const bsi_vocab *v;
    bonsai_status st = bsi_vocab_get(model, &v);
    if (st) return st;
    bsi_ids ids = {0};
    st = encode(v, (const uint8_t *)text, len, flags | BONSAI_TOKENIZE_PARSE_SPECIAL, plain,
                n_plain, &ids);
    if (!st && ids.n > UINT32_MAX)
        st = bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "%zu tokens is too many", ids.n);
    if (st) {
        free(ids.v);
        return st;
    }
    if (!ids.v && !(ids.v = bsi_malloc(sizeof *ids.v)))
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    *tokens = ids.v;
    *n_tokens = (uint32_t)ids.n;
    return BONSAI_OK;
}

/* ---- detokenization ---- */

static bonsai_status check_token(const bsi_vocab *v, int32_t token, const char *fn)
{
    if (token < 0 || (uint32_t)token >= v->n)
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "%s: token %d is outside the vocabulary (%u)", fn,
                        token, v->n);
    return BONSAI_OK;
}

/* Whether the first non-empty piece loses its leading space (SentencePiece's added one). */
static bool strips_first_space(const bsi_vocab *v, uint32_t flags)
{
    return v->kind == BSI_VOCAB_SPM && v->add_space_prefix &&
           !(flags & BONSAI_DETOKENIZE_CONTINUATION);
}

/* The piece of token id, with the leading space dropped while *strip is set. */
static const uint8_t *piece(const bsi_vocab *v, int32_t id, uint32_t flags, bool *strip,
                            size_t *len)
{
    const uint8_t *p = bsi_vocab_bytes(v, id, flags & BONSAI_DETOKENIZE_SPECIAL, len);
    if (*strip && *len) {
        *strip = false;
        if (p[0] == ' ') {
            p++;
            --*len;
        }
    }
    return p;
}

bonsai_status bonsai_token_to_piece(const bonsai_model *model, int32_t token, uint32_t flags,
                                    char *buf, size_t buf_size, size_t *len)
{
    if (!model || !len || (!buf && buf_size))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_token_to_piece: NULL argument");
    if (flags & ~DETOKENIZE_FLAGS)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_token_to_piece: unknown flags 0x%x",
                        flags & ~DETOKENIZE_FLAGS);
    const bsi_vocab *v;
    bonsai_status st = bsi_vocab_get(model, &v);
    if (st || (st = check_token(v, token, "bonsai_token_to_piece"))) return st;
    size_t n;
    const uint8_t *p = bsi_vocab_bytes(v, token, flags & BONSAI_DETOKENIZE_SPECIAL, &n);
    if (n > buf_size) {
        *len = n;
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                        "bonsai_token_to_piece: the piece has %zu bytes, the buffer %zu", n,
                        buf_size);
    }
    if (n) memcpy(buf, p, n);
    if (n < buf_size) buf[n] = 0;
    *len = n;
    return BONSAI_OK;
}

bonsai_status bonsai_detokenize(const bonsai_model *model, const int32_t *tokens, uint32_t n_tokens,
                                uint32_t flags, char *buf, size_t buf_size, size_t *len)
{
    if (!model || !len || (!tokens && n_tokens) || (!buf && buf_size))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_detokenize: NULL argument");
    if (flags & ~DETOKENIZE_FLAGS)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_detokenize: unknown flags 0x%x",
                        flags & ~DETOKENIZE_FLAGS);
    const bsi_vocab *v;
    bonsai_status st = bsi_vocab_get(model, &v);
    if (st) return st;
    size_t total = 0, n;
    bool strip = strips_first_space(v, flags);
    for (uint32_t i = 0; i < n_tokens; i++) {
        if ((st = check_token(v, tokens[i], "bonsai_detokenize"))) return st;
        piece(v, tokens[i], flags, &strip, &n);
        total += n;
    }
    if (total > buf_size) {
        *len = total;
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                        "bonsai_detokenize: the text has %zu bytes, the buffer %zu", total,
                        buf_size);
    }
    strip = strips_first_space(v, flags);
    size_t at = 0;
    for (uint32_t i = 0; i < n_tokens; i++) {
        const uint8_t *p = piece(v, tokens[i], flags, &strip, &n);
        if (n) memcpy(buf + at, p, n);
        at += n;
    }
    if (total < buf_size) buf[total] = 0;
    *len = total;
    return BONSAI_OK;
}

/* ---- special tokens ---- */

int32_t bonsai_model_token(const bonsai_model *model, bonsai_special_token which)
{
    const bsi_vocab *v;
    if (!model || bsi_vocab_get(model, &v)) return -1;
    switch (which) {
    case BONSAI_TOKEN_BOS: return v->bos;
    case BONSAI_TOKEN_EOS: return v->eos;
    case BONSAI_TOKEN_EOT: return v->eot;
    case BONSAI_TOKEN_PAD: return v->pad;
    }
    return -1;
}

bool bonsai_token_is_eog(const bonsai_model *model, int32_t token)
{
    const bsi_vocab *v;
    return model && !bsi_vocab_get(model, &v) && bsi_vocab_is_eog(v, token);
}

bool bonsai_token_is_control(const bonsai_model *model, int32_t token)
{
    const bsi_vocab *v;
    return model && !bsi_vocab_get(model, &v) && bsi_vocab_is_control(v, token);
}

/* ---- streaming ---- */

struct bonsai_detokenizer {
    uint32_t magic;      /* BSI_MAGIC_DETOK (handle.h) */
    bonsai_model *model; /* a reference: the vocabulary lives with it */
    const bsi_vocab *v;
    uint32_t flags;
    bool strip;      /* the first non-empty piece is still to come */
    uint8_t held[4]; /* the start of a character whose other bytes have not come yet */
    size_t n_held;
    uint8_t *in; /* held + the new piece */
    char *out;   /* the text returned, NUL-terminated */
    size_t cap;  /* of in; out has 3 * cap + 1 */
};

static const char replacement[3] = {(char)0xef, (char)0xbf, (char)0xbd}; /* U+FFFD */

bonsai_status bonsai_detokenizer_create(const bonsai_model *model, uint32_t flags,
                                        bonsai_detokenizer **out)
{
    if (!out)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_detokenizer_create: out is NULL");
    *out = NULL;
    if (!model)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_detokenizer_create: model is NULL");
    if (flags & ~DETOKENIZE_FLAGS)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "bonsai_detokenizer_create: unknown flags 0x%x", flags & ~DETOKENIZE_FLAGS);
    const bsi_vocab *v;
    bonsai_status st = bsi_vocab_get(model, &v);
    if (st) return st;
    bonsai_detokenizer *d = bsi_calloc(1, sizeof *d);
    if (!d) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    d->magic = BSI_MAGIC_DETOK;
    d->model = (bonsai_model *)model;
    bsi_model_retain(d->model);
    d->v = v;
    d->flags = flags;
    d->strip = strips_first_space(v, flags);
    *out = d;
    return BONSAI_OK;
}

static bonsai_status reserve(bonsai_detokenizer *d, size_t n)
{
    if (n <= d->cap && d->out) return BONSAI_OK;
    size_t cap = d->cap ? d->cap : 64;
    while (cap < n) cap *= 2;
    uint8_t *in = bsi_realloc(d->in, cap);
    if (in) d->in = in;
    char *out = bsi_realloc(d->out, 3 * cap + 1);
    if (out) d->out = out;
    if (!in || !out) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    d->cap = cap;
    return BONSAI_OK;
}

bonsai_status bonsai_detokenizer_push(bonsai_detokenizer *d, int32_t token, const char **text,
                                      size_t *len)
{
    if (text) *text = NULL;
    if (!d || !text || !len)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_detokenizer_push: NULL argument");
    if (!bsi_handle_alive(&d->magic, BSI_MAGIC_DETOK, "bonsai_detokenizer_push"))
        return BONSAI_ERR_INVALID_ARGUMENT;
    bonsai_status st = check_token(d->v, token, "bonsai_detokenizer_push");
    if (st) return st;
    size_t n;
    const uint8_t *p = piece(d->v, token, d->flags, &d->strip, &n);
    if ((st = reserve(d, d->n_held + n))) return st;
    memcpy(d->in, d->held, d->n_held);
    if (n) memcpy(d->in + d->n_held, p, n);
    n += d->n_held;
    d->n_held = 0;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (d->in[i] < 0x80) {
            d->out[o++] = (char)d->in[i++];
            continue;
        }
        bsi_utf8_kind kind;
        size_t l = bsi_utf8_next(d->in + i, n - i, &kind);
        if (kind == BSI_UTF8_VALID) {
            memcpy(d->out + o, d->in + i, l);
            o += l;
        } else if (kind == BSI_UTF8_INVALID) {
            memcpy(d->out + o, replacement, 3);
            o += 3;
        } else {
            memcpy(d->held, d->in + i, l);
            d->n_held = l;
        }
        i += l;
    }
    d->out[o] = 0;
    *text = d->out;
    *len = o;
    return BONSAI_OK;
}

void bonsai_detokenizer_flush(bonsai_detokenizer *d, const char **text, size_t *len)
{
    if (text) *text = "";
    if (len) *len = 0;
    if (!d) return;
    size_t o = 0;
    if (!reserve(d, 1) && d->n_held) { /* an incomplete character: one maximal subpart */
        memcpy(d->out, replacement, 3);
        o = 3;
    }
    d->n_held = 0;
    d->strip = strips_first_space(d->v, d->flags);
    if (!d->out) return;
    d->out[o] = 0;
    if (text) *text = d->out;
    if (len) *len = o;
}

void bonsai_detokenizer_free(bonsai_detokenizer *d)
{
    if (!d || !bsi_handle_alive(&d->magic, BSI_MAGIC_DETOK, "bonsai_detokenizer_free")) return;
    bsi_model_release(d->model);
    free(d->in);
    free(d->out);
    bsi_handle_retire(d, &d->magic);
}
