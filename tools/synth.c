/*
 * bonsai synth --arch qwen3 --shape tiny|1.7b|4b|8b --seed N --tokenizer tokenizer.json -o OUT
 *
 * Writes a Bonsai-shaped model (FORMAT.md section 3): the exact tensor names, shapes and types of
 * the published models, seeded random weights quantized to Q1_0 by the reference quantizer, and
 * the real tokenizer metadata converted from a Hugging Face tokenizer.json (+ tokenizer_config).
 * Tensor data is generated row by row and streamed to disk, so memory stays small for any shape.
 */
#include "cli.h"

#include "arena.h"
#include "file.h"
#include "gguf_writer.h"
#include "json.h"
#include "quantize.h"
#include "threadpool.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define HEAD_DIM     128
#define CHUNK_BYTES  (8u << 20) /* quantized rows generated per write */
#define MAX_TOKEN_ID (1 << 24)
#define WEIGHT_STD   0.02f
#define NORM_NOISE   0.05f

typedef struct shape {
    const char *name;
    uint32_t n_layer, n_embd, n_ff, n_head, n_head_kv, n_ctx, yarn_orig_ctx;
    bool separate_output;
} shape;

static const shape shapes[] = {
    {"tiny", 2, 256, 768, 4, 2, 4096, 8192, false},
    {"1.7b", 28, 2048, 6144, 16, 8, 32768, 8192, false},
    {"4b", 36, 2560, 9728, 32, 8, 32768, 8192, false},
    {"8b", 36, 4096, 12288, 32, 8, 65536, 16384, true},
};

#define ROPE_FREQ_BASE 1e6f
#define YARN_FACTOR    4.0f
#define RMS_EPS        1e-6f

/* ---- tokenizer.json + tokenizer_config.json -> GGUF tokenizer metadata ---- */

enum { TOKEN_NORMAL = 1, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4 };

typedef struct tokenizer {
    const char **tokens; /* by id, NUL-terminated, in the arena */
    int32_t *types;
    uint32_t n_tokens;
    const char **merges; /* "a b" */
    uint32_t n_merges;
    int64_t eos_id, pad_id, bos_id; /* -1: none */
    const char *chat_template;      /* NULL: none */
} tokenizer;

static bonsai_status parse_json_file(const char *path, bsi_arena *a, const bsi_json **root)
{
    bsi_file f;
    bonsai_status st = bsi_file_open(path, true, NULL, NULL, &f);
    if (st) return st;
    st = bsi_json_parse(a, (const char *)f.data, (size_t)f.size, path, root);
    bsi_file_close(&f);
    return st;
}

/* A string without NUL bytes (GGUF strings here are written from C strings). */
static const char *plain_string(const bsi_json *v)
{
    size_t len;
    const char *s = bsi_json_string(v, &len);
    return s && strlen(s) == len ? s : NULL;
}

static bonsai_status put_token(const char *path, tokenizer *tk, int64_t id, const char *text,
                               int32_t type, bool added)
{
    if (id < 0 || id >= (int64_t)tk->n_tokens)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: token id %" PRId64 " out of range", path, id);
    const char *old = tk->tokens[id];
    if (old && (!added || strcmp(old, text)))
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: token id %" PRId64 " given twice (\"%.40s\", \"%.40s\")", path, id,
                        old, text);
    tk->tokens[id] = text;
    tk->types[id] = type;
    return BONSAI_OK;
}

static bonsai_status load_vocab(const char *path, const bsi_json *root, bsi_arena *a, tokenizer *tk)
{
    const bsi_json *model = bsi_json_object_get(root, "model");
    const bsi_json *type = bsi_json_object_get(model, "type");
    const char *type_s = plain_string(type);
    if (!model || (type && (!type_s || strcmp(type_s, "BPE"))))
        return bsi_fail(BONSAI_ERR_UNSUPPORTED, "%s: not a BPE tokenizer (model.type %s)", path,
                        type_s ? type_s : "missing");
    const bsi_json *vocab = bsi_json_object_get(model, "vocab");
    const bsi_json *added = bsi_json_object_get(root, "added_tokens");
    if (bsi_json_type_of(vocab) != BSI_JSON_OBJECT || !bsi_json_object_len(vocab))
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: model.vocab must be a non-empty object", path);
    if (added && bsi_json_type_of(added) != BSI_JSON_ARRAY)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: added_tokens must be an array", path);
    /* the number of ids: one past the largest */
    int64_t max_id = -1, id;
    size_t n_vocab = bsi_json_object_len(vocab), n_added = bsi_json_array_len(added);
    for (size_t i = 0; i < n_vocab; i++) {
        const char *key;
        if (!bsi_json_int64(bsi_json_object_at(vocab, i, &key, NULL), &id) || id < 0 ||
            id >= MAX_TOKEN_ID)
            return bsi_fail(BONSAI_ERR_CORRUPT, "%s: vocab entry \"%.40s\": bad id", path, key);
        if (id > max_id) max_id = id;
    }
    for (size_t i = 0; i < n_added; i++) {
        if (!bsi_json_int64(bsi_json_object_get(bsi_json_array_at(added, i), "id"), &id) ||
            id < 0 || id >= MAX_TOKEN_ID)
            return bsi_fail(BONSAI_ERR_CORRUPT, "%s: added_tokens[%zu]: bad or missing id", path,
                            i);
        if (id > max_id) max_id = id;
    }
    tk->n_tokens = (uint32_t)max_id + 1;
    tk->tokens = bsi_arena_calloc(a, tk->n_tokens, sizeof *tk->tokens);
    tk->types = bsi_arena_calloc(a, tk->n_tokens, sizeof *tk->types);
    if (!tk->tokens || !tk->types) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    bonsai_status st;
    for (size_t i = 0; i < n_vocab; i++) {
        size_t len;
        const char *key;
        const bsi_json *v = bsi_json_object_at(vocab, i, &key, &len);
        bsi_json_int64(v, &id);
        if (strlen(key) != len)
            return bsi_fail(BONSAI_ERR_CORRUPT, "%s: token %" PRId64 " contains a NUL byte", path,
                            id);
        if ((st = put_token(path, tk, id, key, TOKEN_NORMAL, false))) return st;
    }
    for (size_t i = 0; i < n_added; i++) {
        const bsi_json *t = bsi_json_array_at(added, i);
        const char *content = plain_string(bsi_json_object_get(t, "content"));
        bool special = false;
        const bsi_json *sp = bsi_json_object_get(t, "special");
        if (!content || (sp && !bsi_json_bool(sp, &special)))
            return bsi_fail(BONSAI_ERR_CORRUPT,
                            "%s: added_tokens[%zu]: needs a string content and a boolean special",
                            path, i);
        bsi_json_int64(bsi_json_object_get(t, "id"), &id);
        if ((st = put_token(path, tk, id, content, special ? TOKEN_CONTROL : TOKEN_USER_DEFINED,
                            true)))
            return st;
    }
    for (uint32_t i = 0; i < tk->n_tokens; i++)
        if (!tk->tokens[i])
            return bsi_fail(BONSAI_ERR_CORRUPT,
                            "%s: token ids have a gap: no token has id %" PRIu32 " (ids 0..%" PRIu32
                            " expected)",
                            path, i, tk->n_tokens - 1);
    return BONSAI_OK;
}

static bonsai_status load_merges(const char *path, const bsi_json *root, bsi_arena *a,
                                 tokenizer *tk)
{
    const bsi_json *merges = bsi_json_object_get(bsi_json_object_get(root, "model"), "merges");
    if (bsi_json_type_of(merges) != BSI_JSON_ARRAY)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: model.merges must be an array", path);
    size_t n = bsi_json_array_len(merges);
    if (n > UINT32_MAX) return bsi_fail(BONSAI_ERR_CORRUPT, "%s: too many merges", path);
    tk->n_merges = (uint32_t)n;
    tk->merges = bsi_arena_calloc(a, n + 1, sizeof *tk->merges);
    if (!tk->merges) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const bsi_json *m = bsi_json_array_at(merges, i);
        if (bsi_json_type_of(m) == BSI_JSON_STRING) { /* older format: "a b" already */
            if (!(tk->merges[i] = plain_string(m)))
                return bsi_fail(BONSAI_ERR_CORRUPT, "%s: merges[%zu] contains a NUL byte", path, i);
            continue;
        }
        const char *l = plain_string(bsi_json_array_at(m, 0));
        const char *r = plain_string(bsi_json_array_at(m, 1));
        if (bsi_json_array_len(m) != 2 || !l || !r)
            return bsi_fail(BONSAI_ERR_CORRUPT, "%s: merges[%zu] must be a pair of strings", path,
                            i);
        size_t ll = strlen(l), rl = strlen(r);
        char *s = bsi_arena_alloc(a, ll + rl + 2);
        if (!s) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        memcpy(s, l, ll);
        s[ll] = ' ';
        memcpy(s + ll + 1, r, rl + 1);
        tk->merges[i] = s;
    }
    return BONSAI_OK;
}

/* A special token of the config: a string, or an object with "content" (AddedToken form). */
static bonsai_status config_token(const char *path, const bsi_json *cfg, const char *key,
                                  const tokenizer *tk, int64_t *id)
{
    *id = -1;
    const bsi_json *v = bsi_json_object_get(cfg, key);
    if (bsi_json_type_of(v) == BSI_JSON_OBJECT) v = bsi_json_object_get(v, "content");
    if (!v || bsi_json_type_of(v) == BSI_JSON_NULL) return BONSAI_OK;
    const char *s = plain_string(v);
    if (!s) return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s must be a string", path, key);
    /* the last token with this text: added tokens come after the vocab */
    for (uint32_t i = tk->n_tokens; i-- > 0;)
        if (!strcmp(tk->tokens[i], s)) {
            *id = i;
            return BONSAI_OK;
        }
    return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s \"%.40s\" is not a token of the vocabulary", path,
                    key, s);
}

static bonsai_status load_config(const char *path, bsi_arena *a, tokenizer *tk)
{
    const bsi_json *cfg;
    bonsai_status st = parse_json_file(path, a, &cfg);
    if (st) return st;
    if (bsi_json_type_of(cfg) != BSI_JSON_OBJECT)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: not a JSON object", path);
    if ((st = config_token(path, cfg, "eos_token", tk, &tk->eos_id)) ||
        (st = config_token(path, cfg, "pad_token", tk, &tk->pad_id)) ||
        (st = config_token(path, cfg, "bos_token", tk, &tk->bos_id)))
        return st;
    const bsi_json *tmpl = bsi_json_object_get(cfg, "chat_template");
    if (tmpl && bsi_json_type_of(tmpl) != BSI_JSON_NULL &&
        !(tk->chat_template = plain_string(tmpl)))
        return bsi_fail(BONSAI_ERR_UNSUPPORTED, "%s: chat_template must be a string", path);
    return BONSAI_OK;
}

static bonsai_status load_tokenizer(const char *path, const char *cfg_path, bsi_arena *a,
                                    tokenizer *tk)
{
    const bsi_json *root;
    bonsai_status st = parse_json_file(path, a, &root);
    if (!st && bsi_json_type_of(root) != BSI_JSON_OBJECT)
        st = bsi_fail(BONSAI_ERR_CORRUPT, "%s: not a JSON object", path);
    if (!st) st = load_vocab(path, root, a, tk);
    if (!st) st = load_merges(path, root, a, tk);
    if (!st) st = load_config(cfg_path, a, tk);
    return st;
}

/* ---- a smaller vocabulary ---- */

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool kept(const char *const *sorted, uint32_t n, const char *s)
{
    return bsearch(&s, sorted, n, sizeof *sorted, compare_strings) != NULL;
}

/* Keeps the first n token ids (n >= 256 keeps a byte-level BPE's whole byte alphabet), the merges
 * whose two parts and result are among them, and the special ids below n; the chat template goes
 * (its control tokens are beyond any small n). A model of the same shapes with a small LM head:
 * fast tests of whole-model paths. */
static bonsai_status truncate_vocab(tokenizer *tk, uint32_t n, bsi_arena *a)
{
    if (n >= tk->n_tokens) return BONSAI_OK;
    const char **sorted = bsi_arena_alloc(a, (size_t)n * sizeof *sorted);
    if (!sorted) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    memcpy(sorted, tk->tokens, (size_t)n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, compare_strings);
    uint32_t k = 0;
    char *buf = NULL; /* a merge's left part, NUL, then the two parts joined */
    size_t cap = 0;
    for (uint32_t i = 0; i < tk->n_merges; i++) {
        const char *m = tk->merges[i], *right = strchr(m, ' ');
        if (!right++) continue;
        size_t ll = (size_t)(right - 1 - m), len = strlen(m);
        if (2 * len + 2 > cap) {
            free(buf);
            cap = 2 * len + 2;
            if (!(buf = malloc(cap))) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        }
        char *joined = buf + ll + 1;
        memcpy(buf, m, ll);
        buf[ll] = 0;
        memcpy(joined, m, ll);
        memcpy(joined + ll, right, len - ll); /* the right part and its NUL */
        if (kept(sorted, n, buf) && kept(sorted, n, right) && kept(sorted, n, joined))
            tk->merges[k++] = m;
    }
    free(buf);
    tk->n_merges = k;
    tk->n_tokens = n;
    if (tk->eos_id >= n) tk->eos_id = -1;
    if (tk->pad_id >= n) tk->pad_id = -1;
    if (tk->bos_id >= n) tk->bos_id = -1;
    tk->chat_template = NULL;
    return BONSAI_OK;
}

/* ---- metadata ---- */

static bonsai_status add_metadata(bsi_gguf_writer *w, const shape *s, uint64_t seed,
                                  const tokenizer *tk)
{
    char name[96];
    snprintf(name, sizeof name, "Bonsai-%s synthetic (seed %" PRIu64 ")", s->name, seed);
    bool add_bos = false;
    bonsai_status st;
    if ((st = bsi_gguf_writer_add_string(w, "general.architecture", "qwen3")) ||
        (st = bsi_gguf_writer_add_string(w, "general.name", name)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.block_count", s->n_layer)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.context_length", s->n_ctx)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.embedding_length", s->n_embd)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.feed_forward_length", s->n_ff)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.attention.head_count", s->n_head)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.attention.head_count_kv", s->n_head_kv)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.attention.key_length", HEAD_DIM)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.attention.value_length", HEAD_DIM)) ||
        (st = bsi_gguf_writer_add_f32(w, "qwen3.attention.layer_norm_rms_epsilon", RMS_EPS)) ||
        (st = bsi_gguf_writer_add_f32(w, "qwen3.rope.freq_base", ROPE_FREQ_BASE)) ||
        (st = bsi_gguf_writer_add_string(w, "qwen3.rope.scaling.type", "yarn")) ||
        (st = bsi_gguf_writer_add_f32(w, "qwen3.rope.scaling.factor", YARN_FACTOR)) ||
        (st = bsi_gguf_writer_add_u32(w, "qwen3.rope.scaling.original_context_length",
                                      s->yarn_orig_ctx)) ||
        (st = bsi_gguf_writer_add_string(w, "tokenizer.ggml.model", "gpt2")) ||
        (st = bsi_gguf_writer_add_string(w, "tokenizer.ggml.pre", "qwen2")) ||
        (st = bsi_gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", tk->n_tokens,
                                               tk->tokens)) ||
        (st = bsi_gguf_writer_add_array(w, "tokenizer.ggml.token_type", BONSAI_VALUE_I32,
                                        tk->n_tokens, tk->types)) ||
        (st = bsi_gguf_writer_add_string_array(w, "tokenizer.ggml.merges", tk->n_merges,
                                               tk->merges)))
        return st;
    if (tk->bos_id >= 0 &&
        (st = bsi_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)tk->bos_id)))
        return st;
    if (tk->eos_id >= 0 &&
        (st = bsi_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)tk->eos_id)))
        return st;
    if (tk->pad_id >= 0 &&
        (st = bsi_gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)tk->pad_id)))
        return st;
    if ((st = bsi_gguf_writer_add_scalar(w, "tokenizer.ggml.add_bos_token", BONSAI_VALUE_BOOL,
                                         &add_bos)))
        return st;
    if (tk->chat_template &&
        (st = bsi_gguf_writer_add_string(w, "tokenizer.chat_template", tk->chat_template)))
        return st;
    return BONSAI_OK;
}

/* ---- tensors ---- */

typedef struct tensor_spec {
    char name[48];
    uint32_t n_dims;
    uint64_t ne[2];
} tensor_spec;

enum { DIM_EMBD, DIM_Q, DIM_KV, DIM_FF, DIM_HEAD };

static uint64_t dim_of(const shape *s, int kind)
{
    switch (kind) {
    case DIM_EMBD: return s->n_embd;
    case DIM_Q: return (uint64_t)s->n_head * HEAD_DIM;
    case DIM_KV: return (uint64_t)s->n_head_kv * HEAD_DIM;
    case DIM_FF: return s->n_ff;
    default: return HEAD_DIM;
    }
}

/* FORMAT.md section 3, per layer: name, dimension count, ne[0], ne[1]. */
static const struct {
    const char *name;
    uint8_t n_dims, ne0, ne1;
} layer_tensors[] = {
    {"attn_norm", 1, DIM_EMBD, 0},       {"attn_q", 2, DIM_EMBD, DIM_Q},
    {"attn_k", 2, DIM_EMBD, DIM_KV},     {"attn_v", 2, DIM_EMBD, DIM_KV},
    {"attn_q_norm", 1, DIM_HEAD, 0},     {"attn_k_norm", 1, DIM_HEAD, 0},
    {"attn_output", 2, DIM_Q, DIM_EMBD}, {"ffn_norm", 1, DIM_EMBD, 0},
    {"ffn_gate", 2, DIM_EMBD, DIM_FF},   {"ffn_up", 2, DIM_EMBD, DIM_FF},
    {"ffn_down", 2, DIM_FF, DIM_EMBD},
};
#define N_LAYER_TENSORS (sizeof layer_tensors / sizeof layer_tensors[0])

static tensor_spec spec(const char *name, uint32_t n_dims, uint64_t ne0, uint64_t ne1)
{
    tensor_spec t = {.n_dims = n_dims, .ne = {ne0, n_dims == 2 ? ne1 : 1}};
    snprintf(t.name, sizeof t.name, "%s", name);
    return t;
}

/* The tensors of a shape in file order; returns the count (at most 2 + 11 * n_layer + 1). */
static uint32_t tensor_specs(const shape *s, uint32_t n_vocab, tensor_spec *out)
{
    uint32_t n = 0;
    out[n++] = spec("token_embd.weight", 2, s->n_embd, n_vocab);
    for (uint32_t l = 0; l < s->n_layer; l++)
        for (size_t k = 0; k < N_LAYER_TENSORS; k++) {
            char name[48];
            snprintf(name, sizeof name, "blk.%" PRIu32 ".%s.weight", l, layer_tensors[k].name);
            out[n++] = spec(name, layer_tensors[k].n_dims, dim_of(s, layer_tensors[k].ne0),
                            dim_of(s, layer_tensors[k].ne1));
        }
    out[n++] = spec("output_norm.weight", 1, s->n_embd, 0);
    if (s->separate_output) out[n++] = spec("output.weight", 2, s->n_embd, n_vocab);
    return n;
}

/* splitmix64: the seed of every row is derived from (seed, tensor, row), so rows are independent
 * (any thread may make any row) and the file depends on the seed alone. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t row_seed(uint64_t seed, uint32_t tensor, uint64_t row)
{
    uint64_t s = seed;
    uint64_t a = splitmix64(&s);
    s = a ^ ((uint64_t)tensor << 40) ^ row;
    return splitmix64(&s);
}

/* n values, roughly normal with standard deviation `std` around `mean`: the sum of four uniform
 * 16-bit numbers (Irwin-Hall) from one 64-bit draw. */
static void random_values(uint64_t state, float *x, int64_t n, float mean, float std)
{
    const float k = std / 37837.23f; /* 65536 / sqrt(3): the sum's standard deviation */
    for (int64_t i = 0; i < n; i++) {
        uint64_t r = splitmix64(&state);
        int32_t sum = (int32_t)(r & 0xFFFF) + (int32_t)(r >> 16 & 0xFFFF) +
                      (int32_t)(r >> 32 & 0xFFFF) + (int32_t)(r >> 48) - 131070;
        x[i] = mean + (float)sum * k;
    }
}

typedef struct gen_ctx {
    uint64_t seed;
    uint32_t tensor;
    int64_t ne0;
    uint64_t row0; /* first row of the chunk */
    size_t row_bytes;
    uint8_t *out;
    float *scratch; /* ne0 floats per thread */
} gen_ctx;

static void gen_rows(void *ctx, int64_t begin, int64_t end, int thread)
{
    gen_ctx *g = ctx;
    float *x = g->scratch + (size_t)thread * (size_t)g->ne0;
    for (int64_t r = begin; r < end; r++) {
        random_values(row_seed(g->seed, g->tensor, g->row0 + (uint64_t)r), x, g->ne0, 0.0f,
                      WEIGHT_STD);
        bsi_quantize_q1_0(x, g->ne0, g->out + (size_t)r * g->row_bytes);
    }
}

typedef struct writer_state {
    bsi_gguf_writer *w;
    FILE *f;
    uint64_t done, total;
    bonsai_progress_fn progress;
    void *progress_user_data;
} writer_state;

static bonsai_status emit(writer_state *ws, const void *data, size_t n)
{
    bonsai_status st = bsi_gguf_writer_write_data(ws->w, bsi_file_sink, ws->f, data, n);
    if (st) return st;
    ws->done += n;
    if (ws->progress &&
        !ws->progress((float)((double)ws->done / (double)ws->total), ws->progress_user_data))
        return bsi_fail(BONSAI_ERR_ABORTED, "aborted");
    return BONSAI_OK;
}

static bonsai_status write_tensors(writer_state *ws, const tensor_spec *specs, uint32_t n_specs,
                                   uint64_t seed, bsi_pool *pool)
{
    if (!n_specs) return BONSAI_OK;
    uint64_t max_ne0 = 0;
    for (uint32_t i = 0; i < n_specs; i++)
        if (specs[i].ne[0] > max_ne0) max_ne0 = specs[i].ne[0];
    int n_threads = bsi_pool_threads(pool);
    float *scratch = malloc((size_t)max_ne0 * sizeof(float) * (size_t)n_threads);
    uint8_t *chunk = malloc(CHUNK_BYTES);
    bonsai_status st = BONSAI_OK;
    if (!scratch || !chunk) st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    for (uint32_t t = 0; t < n_specs && !st; t++) {
        const tensor_spec *sp = &specs[t];
        if (sp->n_dims == 1) { /* a norm: F32, around 1 */
            random_values(row_seed(seed, t, 0), scratch, (int64_t)sp->ne[0], 1.0f, NORM_NOISE);
            st = emit(ws, scratch, (size_t)sp->ne[0] * sizeof(float));
            continue;
        }
        gen_ctx g = {.seed = seed,
                     .tensor = t,
                     .ne0 = (int64_t)sp->ne[0],
                     .row_bytes = (size_t)(sp->ne[0] / 128 * 18),
                     .out = chunk,
                     .scratch = scratch};
        uint64_t rows_per_chunk = CHUNK_BYTES / g.row_bytes;
        for (uint64_t r = 0; r < sp->ne[1] && !st; r += rows_per_chunk) {
            uint64_t n = sp->ne[1] - r < rows_per_chunk ? sp->ne[1] - r : rows_per_chunk;
            g.row0 = r;
            bsi_pool_for(pool, (int64_t)n, 16, gen_rows, &g);
            st = emit(ws, chunk, (size_t)n * g.row_bytes);
        }
    }
    free(scratch);
    free(chunk);
    return st;
}

/* ---- the file ---- */

typedef struct synth_options {
    const shape *shape;
    uint64_t seed;
    const char *tokenizer, *tokenizer_config, *out;
    bool vocab_only;
    int threads;
    uint32_t n_vocab; /* 0: the tokenizer's; else its first n_vocab ids (truncate_vocab) */
} synth_options;

static bonsai_status synth(const synth_options *o, uint64_t *n_tensors, uint64_t *data_bytes)
{
    bsi_arena *arena = bsi_arena_new();
    bsi_gguf_writer *w = bsi_gguf_writer_new(0);
    tensor_spec *specs = NULL;
    bsi_pool *pool = NULL;
    tokenizer tk = {.eos_id = -1, .pad_id = -1, .bos_id = -1};
    writer_state ws = {0};
    bonsai_status st = BONSAI_OK;
    uint32_t n_specs = 0;
    if (!arena || !w) {
        st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    if ((st = load_tokenizer(o->tokenizer, o->tokenizer_config, arena, &tk)) ||
        (o->n_vocab && (st = truncate_vocab(&tk, o->n_vocab, arena))) ||
        (st = add_metadata(w, o->shape, o->seed, &tk)))
        goto done;
    if (!o->vocab_only) {
        specs = calloc(3 + N_LAYER_TENSORS * (size_t)o->shape->n_layer, sizeof *specs);
        if (!specs) {
            st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
            goto done;
        }
        n_specs = tensor_specs(o->shape, tk.n_tokens, specs);
        for (uint32_t i = 0; i < n_specs && !st; i++)
            st = bsi_gguf_writer_add_tensor(
                w, specs[i].name, specs[i].n_dims == 1 ? BONSAI_TENSOR_F32 : BONSAI_TENSOR_Q1_0,
                specs[i].n_dims, specs[i].ne);
        for (uint32_t i = 0; i < n_specs; i++) ws.total += bsi_gguf_writer_tensor_bytes(w, i);
        if (st) goto done;
        if (!(pool = bsi_pool_new(o->threads))) {
            st = bsi_fail(BONSAI_ERR_NO_MEMORY, "cannot start %d threads", o->threads);
            goto done;
        }
    }
    /* a failure never leaves a partial model */
    bsi_atomic_file out;
    if ((st = bsi_atomic_file_open(&out, o->out))) goto done;
    ws.w = w;
    ws.f = out.f;
    cli_progress_begin(&ws.progress, &ws.progress_user_data, "synth");
    if (ws.progress && ws.total) ws.progress(0.0f, ws.progress_user_data);
    if (!(st = bsi_gguf_writer_write_header(w, bsi_file_sink, out.f)) &&
        !(st = write_tensors(&ws, specs, n_specs, o->seed, pool)))
        st = bsi_gguf_writer_finish(w);
    cli_progress_end();
    st = bsi_atomic_file_close(&out, st);
    *n_tensors = n_specs;
    *data_bytes = ws.total;
done:
    bsi_pool_free(pool);
    free(specs);
    bsi_gguf_writer_free(w);
    bsi_arena_free(arena);
    return st;
}

typedef struct synth_args {
    int arch, shape;
    uint64_t seed;
    int64_t threads, vocab;
    const char *tokenizer, *tokenizer_config, *out;
    bool vocab_only;
} synth_args;

static int cmd_synth(int argc, char **argv);

static const char *const synth_archs[] = {"qwen3", NULL};
/* in the order of shapes[] */
static const char *const synth_shapes[] = {"tiny", "1.7b", "4b", "8b", NULL};

static const cli_option synth_option_table[] = {
    {.names = "--arch",
     .value = "ARCH",
     .kind = CLI_CHOICE,
     .offset = offsetof(synth_args, arch),
     .choices = synth_archs,
     .required = true,
     .help = "The architecture."},
    {.names = "--shape",
     .value = "SHAPE",
     .kind = CLI_CHOICE,
     .offset = offsetof(synth_args, shape),
     .choices = synth_shapes,
     .required = true,
     .help = "The published model whose tensor shapes to copy; tiny is 2 layers of width 256 "
             "with the full vocabulary."},
    {.names = "--tokenizer",
     .value = "FILE",
     .kind = CLI_STRING,
     .offset = offsetof(synth_args, tokenizer),
     .required = true,
     .help = "The Hugging Face tokenizer.json to convert."},
    {.names = "-o, --output",
     .value = "FILE",
     .kind = CLI_STRING,
     .offset = offsetof(synth_args, out),
     .required = true,
     .help = "The model to write."},
    {.names = "--seed",
     .value = "N",
     .kind = CLI_U64,
     .offset = offsetof(synth_args, seed),
     .def = "0",
     .help = "The seed of the weights: the same seed gives a byte-identical file."},
    {.names = "--tokenizer-config",
     .value = "FILE",
     .kind = CLI_STRING,
     .offset = offsetof(synth_args, tokenizer_config),
     .def = "qwen3-tokenizer_config.json next to the tokenizer",
     .help = "The tokenizer_config.json giving the chat template, eos and pad tokens."},
    {.names = "--vocab-only",
     .kind = CLI_FLAG,
     .offset = offsetof(synth_args, vocab_only),
     .help = "Write the metadata without tensors."},
    {.names = "--vocab",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(synth_args, vocab),
     .min = 256,
     .max = MAX_TOKEN_ID,
     .def = "the tokenizer's",
     .help = "Keep the first N token ids (and the merges among them), without the chat template: "
             "a small LM head for fast tests."},
    {.names = "--threads",
     .value = "N",
     .kind = CLI_INT,
     .offset = offsetof(synth_args, threads),
     .min = 1,
     .max = 256,
     .def = "the number of physical cores",
     .help = "Threads generating and quantizing the weights."},
};

const cli_command cli_synth_command = {
    .name = "synth",
    .summary = "write a Bonsai-shaped test model with random weights",
    .synopsis =
        "--arch qwen3 --shape tiny|1.7b|4b|8b --tokenizer TOKENIZER.json -o OUT.gguf "
        "[--seed N] [--tokenizer-config CONFIG.json] [--vocab N] [--vocab-only] [--threads N]",
    .description =
        "Writes a Bonsai-shaped test model: the tensor names, shapes and types of the published "
        "Bonsai models (every matrix Q1_0, norms F32; a separate output.weight only for 8b), the "
        "qwen3 hyper-parameters with YaRN, seeded random weights (std 0.02; norms about 1) "
        "quantized by the reference quantizer, and the tokenizer metadata converted from a "
        "Hugging Face tokenizer.json (tokens, token types, merges, special ids, chat "
        "template).\n\n"
        "Weights are generated row by row and streamed to disk, so memory stays small for any "
        "shape; the same seed gives a byte-identical file. OUT is written to a temporary file "
        "and renamed into place when complete. A progress bar is drawn on standard error when it "
        "is a terminal.",
    .options = synth_option_table,
    .n_options = sizeof synth_option_table / sizeof synth_option_table[0],
    .exit_status = "0\tthe model was written: a line describes it\n"
                   "1\tthe tokenizer could not be read or converted, or the file not written "
                   "(one line on standard error; nothing is left behind)\n"
                   "2\ta usage error (one line on standard error)",
    .examples = "A tiny model with the real Qwen3 vocabulary:\n"
                "$ bonsai synth --arch qwen3 --shape tiny --tokenizer qwen3-tokenizer.json "
                "-o tiny.gguf\n"
                "The Bonsai-1.7B shapes, seed 1:\n"
                "$ bonsai synth --arch qwen3 --shape 1.7b --seed 1 --tokenizer "
                "qwen3-tokenizer.json -o b17.gguf",
    .opts_size = sizeof(synth_args),
    .run = cmd_synth,
};

static int cmd_synth(int argc, char **argv)
{
    synth_args a = {.threads = bsi_physical_cores()};
    cli_parsed parsed;
    int rc;
    if (!cli_begin(&cli_synth_command, argc, argv, &a, &parsed, &rc)) return rc;
    if (a.threads > 256) a.threads = 256; /* a default out of the range */
    if (a.threads < 1) a.threads = 1;
    synth_options o = {.shape = &shapes[a.shape],
                       .seed = a.seed,
                       .tokenizer = a.tokenizer,
                       .tokenizer_config = a.tokenizer_config,
                       .out = a.out,
                       .vocab_only = a.vocab_only,
                       .threads = (int)a.threads,
                       .n_vocab = (uint32_t)a.vocab};
    char *cfg = NULL;
    if (!o.tokenizer_config) { /* qwen3-tokenizer_config.json next to the tokenizer */
        const char *slash = strrchr(o.tokenizer, '/');
        size_t dir = slash ? (size_t)(slash - o.tokenizer) + 1 : 0;
        static const char name[] = "qwen3-tokenizer_config.json";
        cfg = malloc(dir + sizeof name);
        if (!cfg) return cli_error("synth", bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory"));
        memcpy(cfg, o.tokenizer, dir);
        memcpy(cfg + dir, name, sizeof name);
        o.tokenizer_config = cfg;
    }
    uint64_t n_tensors = 0, bytes = 0;
    bonsai_status st = synth(&o, &n_tensors, &bytes);
    free(cfg);
    if (st) return cli_error("synth", st);
    printf("%s: qwen3 %s, %" PRIu64 " tensors, %" PRIu64 " bytes of tensor data, seed %" PRIu64
           "\n",
           o.out, o.shape->name, n_tensors, bytes, o.seed);
    return 0;
}
