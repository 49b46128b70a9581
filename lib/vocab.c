/*
 * The vocabulary: tokenizer.ggml.* metadata validated and turned into lookup tables once per
 * model. Every token's detokenized bytes are computed here, into one blob.
 */
#include "vocab_impl.h"

#include "model.h"
#include "utf8.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

/* PCRE2's allocations, through the library's allocator. */
static void *pcre_alloc(PCRE2_SIZE size, void *ctx)
{
    (void)ctx;
    return bsi_malloc(size);
}

static void pcre_free(void *p, void *ctx)
{
    (void)ctx;
    free(p);
}

/* ---- helpers ---- */

/* s[0 .. len) for an error message: at most 48 bytes, anything but printable ASCII as '?'. */
static const char *printable(const char *s, size_t len, char buf[64])
{
    size_t n = 0;
    for (size_t i = 0; i < len && n < 48; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (len > 48) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = 0;
    return buf;
}

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

bonsai_status bsi_ids_grow(bsi_ids *ids, size_t more)
{
    size_t cap = ids->cap ? ids->cap : 64;
    while (cap - ids->n < more) {
        if (cap > SIZE_MAX / 2 / sizeof *ids->v)
            return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory (token array)");
        cap *= 2;
    }
    int32_t *v = bsi_realloc(ids->v, cap * sizeof *v);
    if (!v) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory (%zu tokens)", cap);
    ids->v = v;
    ids->cap = cap;
    return BONSAI_OK;
}

/* ---- metadata readers ---- */

typedef struct reader {
    const bonsai_model *m;
    const char *path;
} reader;

static bonsai_status opt_string(const reader *r, const char *key, const bonsai_value **out)
{
    const bonsai_value *v = bsi_gguf_get(r->m->gguf, key);
    *out = NULL;
    if (!v) return BONSAI_OK;
    if (v->type != BONSAI_VALUE_STRING)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s has type %s, not string", r->path, key,
                        bonsai_value_type_name(v->type));
    *out = v;
    return BONSAI_OK;
}

static bonsai_status opt_bool(const reader *r, const char *key, bool *out)
{
    const bonsai_value *v = bsi_gguf_get(r->m->gguf, key);
    if (!v) return BONSAI_OK;
    if (v->type != BONSAI_VALUE_BOOL)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s has type %s, not bool", r->path, key,
                        bonsai_value_type_name(v->type));
    *out = v->v.b;
    return BONSAI_OK;
}

/* A token id: -1 when absent or outside the vocabulary (files use 0xffffffff for "none"). */
static bonsai_status opt_id(const reader *r, const char *key, uint32_t n, int32_t *out)
{
    const bonsai_value *v = bsi_gguf_get(r->m->gguf, key);
    *out = -1;
    if (!v) return BONSAI_OK;
    int64_t x;
    switch (v->type) {
    case BONSAI_VALUE_U8: x = v->v.u8; break;
    case BONSAI_VALUE_I8: x = v->v.i8; break;
    case BONSAI_VALUE_U16: x = v->v.u16; break;
    case BONSAI_VALUE_I16: x = v->v.i16; break;
    case BONSAI_VALUE_U32: x = v->v.u32; break;
    case BONSAI_VALUE_I32: x = v->v.i32; break;
    case BONSAI_VALUE_U64: x = v->v.u64 > INT64_MAX ? -1 : (int64_t)v->v.u64; break;
    case BONSAI_VALUE_I64: x = v->v.i64; break;
    default:
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s has type %s, not an integer", r->path, key,
                        bonsai_value_type_name(v->type));
    }
    if (x >= 0 && x < (int64_t)n) *out = (int32_t)x;
    return BONSAI_OK;
}

/* An array of `n` elements of `elem` type, or absent (*out NULL). */
static bonsai_status opt_array(const reader *r, const char *key, uint32_t elem, uint64_t n,
                               const bonsai_value **out)
{
    const bonsai_value *v = bsi_gguf_get(r->m->gguf, key);
    *out = NULL;
    if (!v) return BONSAI_OK;
    if (v->type != BONSAI_VALUE_ARRAY || v->elem_type != elem)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s must be an array of %s", r->path, key,
                        bonsai_value_type_name(elem));
    if (n != UINT64_MAX && v->count != n)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: %s has %" PRIu64 " elements but the vocabulary has %" PRIu64 " tokens",
                        r->path, key, v->count, n);
    *out = v;
    return BONSAI_OK;
}

/* ---- piece decoding ---- */

/* GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the others for
 * U+0100 onwards in byte order. */
static void gpt2_byte_map(uint32_t cp_of_byte[256], int16_t byte_of_cp[324])
{
    uint32_t next = 256;
    for (int i = 0; i < 324; i++) byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        cp_of_byte[b] = keep ? (uint32_t)b : next++;
        byte_of_cp[cp_of_byte[b]] = (int16_t)b;
    }
}

/* The bytes of a byte-level BPE token: each mapped character is its byte; anything else (not
 * produced by the map) is copied as it is. */
static size_t decode_bpe(const uint8_t *s, size_t len, const int16_t byte_of_cp[324], uint8_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        bsi_utf8_kind kind;
        size_t l = bsi_utf8_next(s + i, len - i, &kind);
        if (kind == BSI_UTF8_VALID) {
            uint32_t cp = bsi_utf8_decode(s + i, l);
            if (cp < 324 && byte_of_cp[cp] >= 0) {
                out[n++] = (uint8_t)byte_of_cp[cp];
                i += l;
                continue;
            }
        }
        memcpy(out + n, s + i, l);
        n += l;
        i += l;
    }
    return n;
}

static int hex_digit(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xNN>" -> NN, else -1. */
static int spm_byte_value(const uint8_t *s, size_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* SentencePiece text: U+2581 is a space. */
static size_t decode_spm(const uint8_t *s, size_t len, uint8_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (i + 3 <= len && s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
            out[n++] = ' ';
            i += 3;
        } else {
            out[n++] = s[i++];
        }
    }
    return n;
}

static bonsai_status build_pieces(const reader *r, bsi_vocab *v)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < v->n; i++) total += v->text[i].len;
    if (total >= UINT32_MAX)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: the token texts total %" PRIu64 " bytes", r->path,
                        total);
    v->piece_off = bsi_malloc(((size_t)v->n + 1) * sizeof *v->piece_off);
    v->pieces = bsi_malloc(total ? (size_t)total : 1);
    if (!v->piece_off || !v->pieces) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    uint32_t cp_of_byte[256];
    int16_t byte_of_cp[324];
    gpt2_byte_map(cp_of_byte, byte_of_cp);
    uint32_t off = 0;
    for (uint32_t i = 0; i < v->n; i++) {
        const uint8_t *s = (const uint8_t *)v->text[i].s;
        size_t len = (size_t)v->text[i].len, n;
        uint8_t *out = v->pieces + off;
        int byte;
        v->piece_off[i] = off;
        switch (v->type[i]) {
        case BSI_TOKEN_CONTROL:
        case BSI_TOKEN_UNKNOWN:
        case BSI_TOKEN_USER_DEFINED:
            memcpy(out, s, len);
            n = len;
            break;
        case BSI_TOKEN_UNUSED: n = 0; break;
        case BSI_TOKEN_BYTE:
            if (v->kind == BSI_VOCAB_SPM && (byte = spm_byte_value(s, len)) >= 0) {
                out[0] = (uint8_t)byte;
                n = 1;
                break;
            }
            /* fall through */
        default:
            n = v->kind == BSI_VOCAB_BPE ? decode_bpe(s, len, byte_of_cp, out)
                                         : decode_spm(s, len, out);
        }
        off += (uint32_t)n;
    }
    v->piece_off[v->n] = off;

    /* the token of each byte */
    for (int b = 0; b < 256; b++) {
        int32_t id = -1;
        if (v->kind == BSI_VOCAB_BPE) {
            uint8_t u[4];
            id = bsi_vocab_find(v, u, bsi_utf8_put(cp_of_byte[b], u));
            if (id < 0)
                return bsi_fail(BONSAI_ERR_CORRUPT,
                                "%s: no token stands for the byte 0x%02X (a byte-level BPE "
                                "vocabulary needs all 256)",
                                r->path, b);
        } else {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            id = bsi_vocab_find(v, hex, 6);
            if (id < 0 && b < 0x80) id = bsi_vocab_find(v, (const char[]){(char)b}, 1);
            if (id < 0) id = v->unk;
        }
        v->byte_token[b] = id;
    }
    return BONSAI_OK;
}

/* ---- lookup tables ---- */

static bonsai_status build_text_index(bsi_vocab *v)
{
    uint64_t cap = pow2_at_least((uint64_t)v->n + v->n / 2); /* at most 2/3 full */
    v->by_text = bsi_calloc((size_t)cap, sizeof *v->by_text);
    if (!v->by_text) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    v->by_text_mask = cap - 1;
    for (uint32_t id = 0; id < v->n; id++) {
        const bsi_str *t = &v->text[id];
        uint64_t h = bsi_hash_bytes(t->s, (size_t)t->len), tag = h >> 32 << 32, i;
        for (i = h & v->by_text_mask;; i = (i + 1) & v->by_text_mask) {
            uint64_t e = v->by_text[i];
            if (!e) break;
            if ((e & ~(uint64_t)UINT32_MAX) != tag) continue;
            const bsi_str *o = &v->text[(uint32_t)e - 1];
            if (o->len == t->len && !memcmp(o->s, t->s, (size_t)t->len)) break; /* last wins */
        }
        v->by_text[i] = tag | (id + 1);
    }
    return BONSAI_OK;
}

static bonsai_status build_merges(const reader *r, bsi_vocab *v)
{
    const bonsai_value *merges;
    bonsai_status st =
        opt_array(r, "tokenizer.ggml.merges", BONSAI_VALUE_STRING, UINT64_MAX, &merges);
    if (st) return st;
    if (!merges)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: a gpt2 tokenizer needs tokenizer.ggml.merges",
                        r->path);
    if (merges->count >= UINT32_MAX)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %" PRIu64 " merges is too many", r->path,
                        merges->count);
    uint64_t cap = pow2_at_least(merges->count + merges->count / 2);
    v->merges = bsi_malloc((size_t)cap * sizeof *v->merges);
    if (!v->merges) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    v->merges_mask = cap - 1;
    for (uint64_t i = 0; i < cap; i++) v->merges[i].key = UINT64_MAX;
    char *buf = NULL;
    size_t buf_size = 0;
    char shown[64];
    for (uint32_t rank = 0; rank < merges->count; rank++) {
        const bsi_str *m = &merges->v.strs[rank];
        size_t len = (size_t)m->len;
        const char *sp = len > 1 ? memchr(m->s + 1, ' ', len - 1) : NULL;
        if (!sp || sp == m->s + len - 1) {
            st = bsi_fail(BONSAI_ERR_CORRUPT,
                          "%s: merge %" PRIu32 " (\"%s\") is not two tokens separated by a space",
                          r->path, rank, printable(m->s, len, shown));
            break;
        }
        size_t ll = (size_t)(sp - m->s), rl = len - ll - 1;
        int32_t left = bsi_vocab_find(v, m->s, ll), right = bsi_vocab_find(v, sp + 1, rl);
        if (len > buf_size) {
            free(buf);
            buf_size = len * 2;
            if (!(buf = bsi_malloc(buf_size))) {
                st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
                break;
            }
        }
        memcpy(buf, m->s, ll);
        memcpy(buf + ll, sp + 1, rl);
        int32_t result = left < 0 || right < 0 ? -1 : bsi_vocab_find(v, buf, ll + rl);
        if (result < 0) {
            st = bsi_fail(BONSAI_ERR_CORRUPT,
                          "%s: merge %" PRIu32 " (\"%s\") refers to a token that is not in the "
                          "vocabulary",
                          r->path, rank, printable(m->s, len, shown));
            break;
        }
        uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
        uint64_t i = bsi_merge_hash(key) & v->merges_mask;
        while (v->merges[i].key != UINT64_MAX && v->merges[i].key != key)
            i = (i + 1) & v->merges_mask;
        if (v->merges[i].key == key) continue; /* a repeated merge keeps its first rank */
        v->merges[i] = (bsi_merge){key, rank, result};
    }
    free(buf);
    return st;
}

typedef struct special_key {
    uint64_t len;
    int32_t id;
    uint8_t first;
} special_key;

static int special_cmp(const void *a, const void *b)
{
    const special_key *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static bonsai_status build_specials(bsi_vocab *v)
{
    uint32_t count = 0;
    for (uint32_t i = 0; i < v->n; i++) {
        uint8_t t = v->type[i];
        if ((t == BSI_TOKEN_CONTROL || t == BSI_TOKEN_UNKNOWN || t == BSI_TOKEN_USER_DEFINED) &&
            v->text[i].len)
            count++;
    }
    special_key *keys = bsi_malloc((count ? count : 1) * sizeof *keys);
    v->special = bsi_malloc((count ? count : 1) * sizeof *v->special);
    if (!keys || !v->special) {
        free(keys);
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < v->n; i++) {
        uint8_t t = v->type[i];
        if ((t == BSI_TOKEN_CONTROL || t == BSI_TOKEN_UNKNOWN || t == BSI_TOKEN_USER_DEFINED) &&
            v->text[i].len) {
            uint8_t first = (uint8_t)v->text[i].s[0];
            keys[k++] = (special_key){v->text[i].len, (int32_t)i, first};
            v->special_first[first] |= (uint8_t)(t == BSI_TOKEN_USER_DEFINED ? 3 : 2);
        }
    }
    qsort(keys, count, sizeof *keys, special_cmp);
    memset(v->special_start, 0, sizeof v->special_start);
    for (uint32_t i = 0; i < count; i++) {
        v->special[i] = keys[i].id;
        v->special_start[keys[i].first + 1]++;
    }
    for (int b = 0; b < 256; b++) v->special_start[b + 1] += v->special_start[b];
    free(keys);
    return BONSAI_OK;
}

/* ---- special ids ---- */

static void add_eog(bsi_vocab *v, int32_t id)
{
    if (id < 0) return;
    for (int i = 0; i < v->n_eog; i++)
        if (v->eog[i] == id) return;
    if (v->n_eog < BSI_VOCAB_MAX_EOG) v->eog[v->n_eog++] = id;
}

static int32_t find_str(const bsi_vocab *v, const char *s)
{
    return bsi_vocab_find(v, s, strlen(s));
}

static bonsai_status read_special_ids(const reader *r, bsi_vocab *v)
{
    bonsai_status st;
    int32_t eot;
    if ((st = opt_id(r, "tokenizer.ggml.bos_token_id", v->n, &v->bos)) ||
        (st = opt_id(r, "tokenizer.ggml.eos_token_id", v->n, &v->eos)) ||
        (st = opt_id(r, "tokenizer.ggml.padding_token_id", v->n, &v->pad)) ||
        (st = opt_id(r, "tokenizer.ggml.unknown_token_id", v->n, &v->unk)) ||
        (st = opt_id(r, "tokenizer.ggml.eot_token_id", v->n, &eot)))
        return st;
    static const char *const eot_texts[] = {"<|im_end|>", "<|eot_id|>", "<end_of_turn>"};
    for (size_t i = 0; eot < 0 && i < sizeof eot_texts / sizeof *eot_texts; i++)
        eot = find_str(v, eot_texts[i]);
    v->eot = eot;
    add_eog(v, v->eos);
    add_eog(v, v->eot);
    static const char *const eog_texts[] = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>",
                                            "<end_of_turn>", "<|end|>"};
    for (size_t i = 0; i < sizeof eog_texts / sizeof *eog_texts; i++)
        add_eog(v, find_str(v, eog_texts[i]));
    return BONSAI_OK;
}

/* ---- the whole vocabulary ---- */

static bonsai_status build(const bonsai_model *m, bsi_vocab **out)
{
    reader r = {m, m->path};
    char shown[64];
    const bonsai_value *model, *pre, *tokens, *types, *scores;
    bonsai_status st;
    if ((st = opt_string(&r, "tokenizer.ggml.model", &model))) return st;
    if (!model)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "%s: the model has no tokenizer (no tokenizer.ggml.model)", r.path);
    bsi_vocab_kind kind;
    if (!strcmp(model->v.str, "gpt2") && model->count == 4)
        kind = BSI_VOCAB_BPE;
    else if (!strcmp(model->v.str, "llama") && model->count == 5)
        kind = BSI_VOCAB_SPM;
    else if (!strcmp(model->v.str, "none") || !strcmp(model->v.str, "no_vocab"))
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "%s: the model has no tokenizer (tokenizer.ggml.model is \"%s\")", r.path,
                        model->v.str);
    else
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "%s: tokenizer model \"%s\" is not supported (gpt2 and llama are)", r.path,
                        printable(model->v.str, (size_t)model->count, shown));

    tokens = bsi_gguf_get(m->gguf, "tokenizer.ggml.tokens");
    if (!tokens)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "%s: the model has no tokenizer (no tokenizer.ggml.tokens)", r.path);
    if ((st = opt_array(&r, "tokenizer.ggml.tokens", BONSAI_VALUE_STRING, UINT64_MAX, &tokens)))
        return st;
    if (tokens->count == 0 || tokens->count > INT32_MAX)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: tokenizer.ggml.tokens has %" PRIu64 " tokens",
                        r.path, tokens->count);
    uint32_t n = (uint32_t)tokens->count;
    if ((st = opt_array(&r, "tokenizer.ggml.token_type", BONSAI_VALUE_I32, n, &types)) ||
        (st = opt_array(&r, "tokenizer.ggml.scores", BONSAI_VALUE_F32, n, &scores)) ||
        (st = opt_string(&r, "tokenizer.ggml.pre", &pre)))
        return st;

    bsi_vocab *v = bsi_calloc(1, sizeof *v);
    if (!v) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    *out = v;
    v->n = n;
    v->kind = kind;
    v->text = tokens->v.strs;
    v->score_raw = kind == BSI_VOCAB_SPM && scores ? scores->v.raw : NULL;
    v->add_bos = kind == BSI_VOCAB_SPM;
    v->add_space_prefix = kind == BSI_VOCAB_SPM;
    if (kind == BSI_VOCAB_BPE) {
        if (!pre)
            return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                            "%s: a gpt2 tokenizer without tokenizer.ggml.pre is not supported",
                            r.path);
        const char *p = pre->v.str;
        if (strlen(p) != pre->count)
            v->pre = BSI_PRE_NONE;
        else if (!strcmp(p, "qwen2") || !strcmp(p, "deepseek-r1-qwen"))
            v->pre = BSI_PRE_QWEN2;
        else if (!strcmp(p, "gpt-2"))
            v->pre = BSI_PRE_GPT2;
        if (!v->pre)
            return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                            "%s: pre-tokenizer \"%s\" is not supported (qwen2 and gpt-2 are)",
                            r.path, printable(p, (size_t)pre->count, shown));
        v->nfc = v->pre == BSI_PRE_QWEN2;
    }
    if ((st = opt_bool(&r, "tokenizer.ggml.add_bos_token", &v->add_bos)) ||
        (kind == BSI_VOCAB_SPM &&
         (st = opt_bool(&r, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix))))
        return st;

    if (!(v->type = bsi_malloc(n))) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        int32_t t = BSI_TOKEN_NORMAL;
        if (types) memcpy(&t, types->v.raw + 4 * (size_t)i, 4);
        v->type[i] = t >= BSI_TOKEN_NORMAL && t <= BSI_TOKEN_BYTE ? (uint8_t)t : BSI_TOKEN_NORMAL;
    }
    if ((st = build_text_index(v)) || (st = read_special_ids(&r, v)) ||
        (st = build_pieces(&r, v)) || (st = build_specials(v)))
        return st;
    if (kind == BSI_VOCAB_BPE) {
        if ((st = build_merges(&r, v))) return st;
        int err;
        PCRE2_SIZE at;
        v->re_mem = pcre2_general_context_create(pcre_alloc, pcre_free, NULL);
        pcre2_compile_context *cc = v->re_mem ? pcre2_compile_context_create(v->re_mem) : NULL;
        if (!cc) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        v->re = pcre2_compile((PCRE2_SPTR)bsi_bpe_pattern(v->pre), PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP, &err, &at, cc);
        pcre2_compile_context_free(cc);
        if (!v->re && err == PCRE2_ERROR_NOMEMORY)
            return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory compiling the pre-tokenizer");
        if (!v->re) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(err, msg, sizeof msg);
            return bsi_fail(BONSAI_ERR_UNSUPPORTED, "pre-tokenizer regex: %s at %zu", (char *)msg,
                            (size_t)at);
        }
        (void)pcre2_jit_compile(v->re, PCRE2_JIT_COMPLETE); /* without JIT: the interpreter */
    }
    return BONSAI_OK;
}

void bsi_vocab_free(bsi_vocab *v)
{
    if (!v) return;
    if (v->re) pcre2_code_free(v->re);
    if (v->re_mem) pcre2_general_context_free(v->re_mem);
    free(v->type);
    free(v->piece_off);
    free(v->pieces);
    free(v->by_text);
    free(v->merges);
    free(v->special);
    free(v);
}

/* Heap bytes of a built vocabulary (for the model's memory cap). */
static uint64_t vocab_bytes(const bsi_vocab *v)
{
    uint64_t b = (uint64_t)v->n * (1 + 4) + 4 + v->piece_off[v->n];
    b += (v->by_text_mask + 1) * sizeof *v->by_text;
    if (v->merges) b += (v->merges_mask + 1) * sizeof *v->merges;
    b += (uint64_t)v->special_start[256] * sizeof *v->special;
    return b;
}

bonsai_status bsi_vocab_get(const bonsai_model *cm, const bsi_vocab **out)
{
    /* the vocabulary is derived state, built once under the model's vocabulary lock */
    bonsai_model *m = (bonsai_model *)cm;
    *out = NULL;
    if (!atomic_load_explicit(&m->vocab_done, memory_order_acquire)) {
        pthread_mutex_lock(&m->vocab_lock);
        if (!atomic_load_explicit(&m->vocab_done, memory_order_relaxed)) {
            bsi_vocab *v = NULL;
            bonsai_status st = build(m, &v);
            uint64_t bytes = 0;
            if (!st) {
                bytes = vocab_bytes(v);
                st = bsi_model_charge(m, bytes, "the tokenizer's tables");
            }
            if (st == BONSAI_ERR_NO_MEMORY) {
                /* not a property of the file: a later call tries again */
                bsi_vocab_free(v);
                pthread_mutex_unlock(&m->vocab_lock);
                return st;
            }
            if (st) {
                bsi_vocab_free(v);
                m->vocab_status = st;
                /* without memory for the message, the status alone is kept */
                m->vocab_error = bsi_strdup(bonsai_last_error());
            } else {
                m->vocab = v;
            }
            atomic_store_explicit(&m->vocab_done, 1, memory_order_release);
            pthread_mutex_unlock(&m->vocab_lock);
            *out = m->vocab;
            return st;
        }
        pthread_mutex_unlock(&m->vocab_lock);
    }
    if (m->vocab_status)
        return bsi_fail(m->vocab_status, "%s",
                        m->vocab_error ? m->vocab_error : "the tokenizer could not be built");
    *out = m->vocab;
    return BONSAI_OK;
}

uint32_t bsi_vocab_n(const bsi_vocab *v)
{
    return v->n;
}

const uint8_t *bsi_vocab_bytes(const bsi_vocab *v, int32_t id, bool special, size_t *len)
{
    if (id < 0 || (uint32_t)id >= v->n) {
        *len = 0;
        return NULL;
    }
    uint8_t t = v->type[id];
    const uint8_t *p = v->pieces + v->piece_off[id];
    *len = !special && (t == BSI_TOKEN_CONTROL || t == BSI_TOKEN_UNKNOWN)
               ? 0
               : v->piece_off[id + 1] - v->piece_off[id];
    return p;
}

bool bsi_vocab_is_eog(const bsi_vocab *v, int32_t id)
{
    for (int i = 0; i < v->n_eog; i++)
        if (v->eog[i] == id) return true;
    return false;
}

bool bsi_vocab_is_control(const bsi_vocab *v, int32_t id)
{
    return id >= 0 && (uint32_t)id < v->n && v->type[id] == BSI_TOKEN_CONTROL;
}
