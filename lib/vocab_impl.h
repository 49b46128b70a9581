/* The vocabulary's layout, shared by vocab.c and the tokenizers (internal to them). */
#ifndef BONSAI_VOCAB_IMPL_H
#define BONSAI_VOCAB_IMPL_H

#include "vocab.h"

#include "gguf.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string.h>

/* tokenizer.ggml.token_type values */
enum {
    BSI_TOKEN_UNDEFINED = 0,
    BSI_TOKEN_NORMAL = 1,
    BSI_TOKEN_UNKNOWN = 2,
    BSI_TOKEN_CONTROL = 3,
    BSI_TOKEN_USER_DEFINED = 4,
    BSI_TOKEN_UNUSED = 5,
    BSI_TOKEN_BYTE = 6,
};

typedef enum bsi_vocab_kind { BSI_VOCAB_BPE, BSI_VOCAB_SPM } bsi_vocab_kind;
typedef enum bsi_pre_kind { BSI_PRE_NONE, BSI_PRE_QWEN2, BSI_PRE_GPT2 } bsi_pre_kind;

#define BSI_VOCAB_MAX_EOG 8

/* A BPE merge: the pair (left id << 32 | right id) -> its rank and the merged token. */
typedef struct bsi_merge {
    uint64_t key; /* UINT64_MAX: empty slot */
    uint32_t rank;
    int32_t result;
} bsi_merge;

struct bsi_vocab {
    uint32_t n;
    bsi_vocab_kind kind;
    bsi_pre_kind pre;
    bool nfc;              /* NFC-normalise text before pre-tokenization (qwen2) */
    bool add_bos;          /* tokenizer.ggml.add_bos_token */
    bool add_space_prefix; /* SPM: a space before the text (and after each special token) */
    int32_t bos, eos, eot, pad, unk; /* -1: none */
    int32_t eog[BSI_VOCAB_MAX_EOG];
    int n_eog;

    const bsi_str *text;      /* token texts as in the file (the model's GGUF owns them) */
    uint8_t *type;            /* token_type per token (unknown values read as NORMAL) */
    const uint8_t *score_raw; /* SPM: tokenizer.ggml.scores in the file (f32, unaligned), or NULL */

    uint32_t *piece_off; /* [n + 1]: token i decodes to pieces[piece_off[i] .. piece_off[i + 1]) */
    uint8_t *pieces;

    /* open addressing over the texts: (high 32 bits of the hash) << 32 | (id + 1); 0 = empty */
    uint64_t *by_text;
    uint64_t by_text_mask;
    bsi_merge *merges;
    uint64_t merges_mask;

    int32_t byte_token[256]; /* the token of each single byte, -1 if none (SPM) */

    /* Tokens matched as whole strings before BPE/SPM (user-defined always; control and unknown
     * with PARSE_SPECIAL): grouped by first byte, longest first within a group. */
    int32_t *special;
    uint32_t special_start[257];
    uint8_t special_first[256]; /* bit 0: a user-defined token starts with this byte; bit 1: any */

    pcre2_code *re; /* the pre-tokenizer (BPE) */
    /* PCRE2's memory comes from the library's allocator (alloc.h) through this context */
    pcre2_general_context *re_mem;
};

/* A fast 64-bit hash of a byte string. */
static inline uint64_t bsi_hash_bytes(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t k;
        memcpy(&k, p, 8);
        h = (h ^ k) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t k = 0;
    for (size_t i = 0; i < n; i++) k |= (uint64_t)p[i] << (8 * i);
    h = (h ^ k) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

/* The id of the token whose text is s[0 .. len), or -1 (the last one when texts repeat). */
static inline int32_t bsi_vocab_find(const bsi_vocab *v, const void *s, size_t len)
{
    uint64_t h = bsi_hash_bytes(s, len), tag = h >> 32 << 32;
    for (uint64_t i = h & v->by_text_mask;; i = (i + 1) & v->by_text_mask) {
        uint64_t e = v->by_text[i];
        if (!e) return -1;
        if ((e & ~(uint64_t)UINT32_MAX) != tag) continue;
        uint32_t id = (uint32_t)e - 1;
        const bsi_str *t = &v->text[id];
        if (t->len == len && !memcmp(t->s, s, len)) return (int32_t)id;
    }
}

static inline uint64_t bsi_merge_hash(uint64_t key)
{
    key ^= key >> 29;
    key *= 0xbf58476d1ce4e5b9ull;
    key ^= key >> 32;
    return key;
}

/* The merge of the pair (left, right), or NULL. */
static inline const bsi_merge *bsi_vocab_merge(const bsi_vocab *v, int32_t left, int32_t right)
{
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (uint64_t i = bsi_merge_hash(key) & v->merges_mask;; i = (i + 1) & v->merges_mask) {
        const bsi_merge *m = &v->merges[i];
        if (m->key == key) return m;
        if (m->key == UINT64_MAX) return NULL;
    }
}

static inline float bsi_vocab_score(const bsi_vocab *v, int32_t id)
{
    float f = 0;
    if (v->score_raw) memcpy(&f, v->score_raw + 4 * (size_t)id, 4);
    return f;
}

/* A growable array of token ids. */
typedef struct bsi_ids {
    int32_t *v;
    size_t n, cap;
} bsi_ids;

bonsai_status bsi_ids_grow(bsi_ids *ids, size_t more);
static inline bonsai_status bsi_ids_push(bsi_ids *ids, int32_t id)
{
    if (BSI_UNLIKELY(ids->n == ids->cap)) {
        bonsai_status st = bsi_ids_grow(ids, 1);
        if (st) return st;
    }
    ids->v[ids->n++] = id;
    return BONSAI_OK;
}

/* Per-call state of the BPE tokenizer (scratch memory, the regex match data, a word cache). */
typedef struct bsi_bpe_state bsi_bpe_state;
bonsai_status bsi_bpe_state_new(const bsi_vocab *v, size_t text_len, bsi_bpe_state **out);
void bsi_bpe_state_free(bsi_bpe_state *s);
/* Tokenize text without special tokens: NFC (if the vocabulary asks), pre-tokenizer, BPE. */
bonsai_status bsi_bpe_encode(const bsi_vocab *v, bsi_bpe_state *s, const uint8_t *text, size_t len,
                             bsi_ids *out);
/* The pre-tokenizer's regular expression (compiled with PCRE2_UTF | PCRE2_UCP). */
const char *bsi_bpe_pattern(bsi_pre_kind pre);

/* SentencePiece: spaces -> U+2581 (a leading one when space_prefix), score-driven merges,
 * byte fallback. */
bonsai_status bsi_spm_encode(const bsi_vocab *v, const uint8_t *text, size_t len, bool space_prefix,
                             bsi_ids *out);

#endif
