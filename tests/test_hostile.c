/*
 * Hostile models: real models rewritten with one lie each in their metadata or tensor table
 * (absurd sizes, context lengths and head counts, invalid UTF-8 in the vocabulary, merges of
 * unknown tokens, special ids out of range...). Each must give a clear error where it is found
 * (at load, or when the tokenizer is first built), use bounded memory, and never crash; the
 * harmless ones must still run.
 */
#include "test_util.h"

#include "gguf.h"
#include "gguf_writer.h"
#include "model.h"

#include <unistd.h>

typedef enum { E_U32, E_I32, E_STR, E_STRS, E_I32S, E_DROP } edit_kind;

typedef struct edit {
    const char *key;
    edit_kind kind;
    uint32_t u32;
    int32_t i32;
    const char *str;
    const char *const *strs;
    const int32_t *i32s;
    uint64_t n;
} edit;

/* A tensor whose declared dims are replaced (its data is then whatever follows, or missing). */
typedef struct tensor_lie {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[4];
} tensor_lie;

static const edit *find_edit(const edit *e, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(e[i].key, key)) return &e[i];
    return NULL;
}

static void add_edit(bsi_gguf_writer *w, const edit *e)
{
    bonsai_status st = BONSAI_OK;
    switch (e->kind) {
    case E_U32: st = bsi_gguf_writer_add_u32(w, e->key, e->u32); break;
    case E_I32: st = bsi_gguf_writer_add_scalar(w, e->key, BONSAI_VALUE_I32, &e->i32); break;
    case E_STR: st = bsi_gguf_writer_add_string(w, e->key, e->str); break;
    case E_STRS: st = bsi_gguf_writer_add_string_array(w, e->key, e->n, e->strs); break;
    case E_I32S: st = bsi_gguf_writer_add_array(w, e->key, BONSAI_VALUE_I32, e->n, e->i32s); break;
    case E_DROP: break;
    }
    assert_int_equal(st, BONSAI_OK);
}

/* Writes `src` with the edits (replacing or adding keys) and a tensor lie to a temporary file. */
static void write_variant(const bonsai_model *src, const edit *e, size_t n_e, const tensor_lie *lie,
                          char *path)
{
    const bsi_gguf *g = src->gguf;
    bsi_gguf_writer *w = bsi_gguf_writer_new(0);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const edit *x = find_edit(e, n_e, g->kv[i].key);
        if (x)
            add_edit(w, x);
        else
            assert_int_equal(bsi_gguf_writer_add_value(w, g->kv[i].key, &g->kv[i].value), 0);
    }
    for (size_t k = 0; k < n_e; k++) {
        bool present = false;
        for (uint64_t i = 0; i < g->n_kv; i++) present |= !strcmp(g->kv[i].key, e[k].key);
        if (!present) add_edit(w, &e[k]);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const bsi_gguf_tensor *t = &g->tensors[i];
        if (lie && !strcmp(t->name, lie->name))
            assert_int_equal(bsi_gguf_writer_add_tensor(w, t->name, t->type, lie->n_dims, lie->ne),
                             0);
        else
            assert_int_equal(bsi_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne), 0);
    }
    strcpy(path, "/tmp/bonsai-hostile-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_file_sink, f), 0);
    /* the original data, whatever sizes the lie declares (a short or long data section) */
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (!lie || strcmp(g->tensors[i].name, lie->name))
            (void)bsi_gguf_writer_write_data(w, bsi_file_sink, f, bsi_gguf_tensor_data(g, i),
                                             g->tensors[i].n_bytes);
    fclose(f);
    bsi_gguf_writer_free(w);
}

static long peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kib = atol(line + 6);
    if (f) fclose(f);
    return kib;
}

/* Loading the variant gives `want` (0: loads) with `needle` in the message. */
static bonsai_model *expect_load(const bonsai_model *src, const edit *e, size_t n_e,
                                 const tensor_lie *lie, bonsai_status want, const char *needle)
{
    char path[64];
    write_variant(src, e, n_e, lie, path);
    long before = peak_rss_kib();
    bonsai_model *m = (bonsai_model *)1;
    bonsai_model_params mp;
    bonsai_model_params_init(&mp);
    mp.max_memory = 512u << 20;
    bonsai_status st = bonsai_model_load(path, &mp, &m);
    unlink(path);
    if (want) {
        assert_error(st, want, needle);
        assert_null(m);
    } else if (st) {
        fail_msg("expected to load: %s", bonsai_last_error());
    }
    long grown = peak_rss_kib() - before;
    assert_true(grown < 256 * 1024); /* bounded: never the sizes the file claims */
    print_message("  %-48s %s\n",
                  e && n_e ? e[0].key
                  : lie    ? lie->name
                           : "(none)",
                  st ? bonsai_last_error() : "loads");
    return st ? NULL : m;
}

static bonsai_model *stories(void)
{
    bonsai_model *m;
    assert_int_equal(bonsai_model_load(test_data("stories260K.gguf"), NULL, &m), 0);
    return m;
}

#define E_U32_(k, v)                                                                               \
    {                                                                                              \
        .key = (k), .kind = E_U32, .u32 = (v)                                                      \
    }
#define E_STR_(k, v)                                                                               \
    {                                                                                              \
        .key = (k), .kind = E_STR, .str = (v)                                                      \
    }

static void test_absurd_hyperparameters(void **state)
{
    (void)state;
    bonsai_model *src = stories();
    const struct {
        edit e;
        const char *needle;
    } corrupt[] = {
        {E_U32_("llama.attention.head_count", 1000000000), "unsupported hyper-parameters"},
        {E_U32_("llama.attention.head_count", 3), "unsupported hyper-parameters"},
        {E_U32_("llama.attention.head_count_kv", 0), "unsupported hyper-parameters"},
        {E_U32_("llama.block_count", 4000000000u), "unsupported hyper-parameters"},
        {E_U32_("llama.block_count", 6), "'blk.5.attn_norm.weight' is missing"},
        {E_U32_("llama.embedding_length", 65), "token_embd.weight"},
        {E_U32_("llama.feed_forward_length", 4000000000u), "unsupported hyper-parameters"},
        {E_U32_("llama.rope.dimension_count", 9), "unsupported hyper-parameters"},
        {E_U32_("llama.embedding_length", 0), "missing or zero"},
    };
    for (size_t i = 0; i < sizeof corrupt / sizeof corrupt[0]; i++)
        expect_load(src, &corrupt[i].e, 1, NULL, BONSAI_ERR_CORRUPT, corrupt[i].needle);

    /* an absurd context length is only a maximum: sessions choose theirs */
    edit ctx = E_U32_("llama.context_length", 4294967295u);
    bonsai_model *m = expect_load(src, &ctx, 1, NULL, BONSAI_OK, "");
    bonsai_session *s = NULL;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    assert_int_equal(bonsai_session_n_ctx(s), 4096);
    bonsai_session_free(s);
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_ctx = 1u << 20;
    sp.max_memory = 64u << 20;
    assert_error(bonsai_session_create(m, &sp, &s), BONSAI_ERR_NO_MEMORY, "KV cache");
    sp.n_ctx = (1u << 20) + 1;
    assert_error(bonsai_session_create(m, &sp, &s), BONSAI_ERR_INVALID_ARGUMENT, "too large");
    bonsai_model_free(m);
    bonsai_model_free(src);
}

static void test_absurd_tensors(void **state)
{
    (void)state;
    bonsai_model *src = stories();
    /* terabytes declared: the data section cannot hold them */
    const tensor_lie lies[] = {
        {"token_embd.weight", 2, {1ull << 20, 1ull << 20}},
        {"blk.0.attn_q.weight", 4, {1ull << 15, 1ull << 15, 1ull << 15, 1ull << 15}},
        {"output.weight", 2, {64, 1ull << 40}},
    };
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        char path[64];
        write_variant(src, NULL, 0, &lies[i], path);
        bonsai_model *m = (bonsai_model *)1;
        bonsai_status st = bonsai_model_load(path, NULL, &m);
        unlink(path);
        assert_true(st == BONSAI_ERR_TRUNCATED || st == BONSAI_ERR_CORRUPT);
        assert_null(m);
        print_message("  %-48s %s\n", lies[i].name, bonsai_last_error());
    }
    bonsai_model_free(src);
}

/* The vocabulary's lies surface when the tokenizer is built (first use), as a status. */
static void expect_tokenizer(bonsai_model *m, bonsai_status want, const char *needle)
{
    int32_t ids[64];
    uint32_t n = 0;
    bonsai_status st =
        bonsai_tokenize(m, "Once upon a time", 16, BONSAI_TOKENIZE_ADD_BOS, ids, 64, &n);
    if (want) {
        assert_error(st, want, needle);
        /* the same answer on every later call, and generation refuses cleanly */
        assert_error(bonsai_tokenize(m, "x", 1, 0, ids, 64, &n), want, needle);
        bonsai_session *s = NULL;
        assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
        assert_error(bonsai_generate(s, "x", NULL, NULL), want, needle);
        bonsai_session_free(s);
    } else {
        if (st) fail_msg("%s", bonsai_last_error());
    }
}

static void test_hostile_vocabularies(void **state)
{
    (void)state;
    bonsai_model *src = stories();
    const bsi_gguf *g = src->gguf;
    int64_t ki = bsi_gguf_find_key(g, "tokenizer.ggml.tokens");
    assert_true(ki >= 0);
    const bonsai_value *tv = &g->kv[ki].value;
    bonsai_value_type et;
    uint64_t count;
    assert_int_equal(bonsai_value_array_info(tv, &et, &count), 0);
    const char **toks = calloc(count, sizeof *toks);
    for (uint64_t i = 0; i < count; i++)
        assert_int_equal(bonsai_value_array_string(tv, i, &toks[i], NULL), 0);

    /* invalid UTF-8 in token texts: tokens of their bytes, never a crash */
    toks[300] = "\xff\xfe";
    toks[301] = "\xc3";
    edit bad_utf8 = {.key = "tokenizer.ggml.tokens", .kind = E_STRS, .strs = toks, .n = count};
    bonsai_model *m = expect_load(src, &bad_utf8, 1, NULL, BONSAI_OK, "");
    expect_tokenizer(m, BONSAI_OK, "");
    int32_t pair[2] = {300, 301};
    char out[64];
    size_t len = 0;
    assert_int_equal(bonsai_detokenize(m, pair, 2, 0, out, sizeof out, &len), 0);
    bonsai_detokenizer *d;
    const char *piece;
    assert_int_equal(bonsai_detokenizer_create(m, 0, &d), 0);
    assert_int_equal(bonsai_detokenizer_push(d, 300, &piece, &len), 0);
    bonsai_detokenizer_flush(d, &piece, &len); /* replaced by U+FFFD, whole characters only */
    bonsai_detokenizer_free(d);
    bonsai_model_free(m);
    toks[300] = toks[301] = "x";

    /* fewer tokens than embedding rows */
    edit short_vocab = {.key = "tokenizer.ggml.tokens", .kind = E_STRS, .strs = toks, .n = 10};
    expect_load(src, &short_vocab, 1, NULL, BONSAI_ERR_CORRUPT, "embedding rows");
    free(toks);

    /* special ids outside the vocabulary read as absent */
    edit far_ids[2] = {E_U32_("tokenizer.ggml.bos_token_id", 99999),
                       E_U32_("tokenizer.ggml.eos_token_id", 4000000000u)};
    m = expect_load(src, far_ids, 2, NULL, BONSAI_OK, "");
    expect_tokenizer(m, BONSAI_OK, "");
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_BOS), -1);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_EOS), -1);
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    bonsai_generate_params gp;
    bonsai_generate_params_init(&gp);
    gp.max_tokens = 4;
    assert_int_equal(bonsai_generate(s, "Once", &gp, NULL), 0);
    bonsai_session_free(s);
    bonsai_model_free(m);

    /* arrays that disagree with the token list, or of the wrong type */
    int32_t types[5] = {1, 1, 1, 1, 1};
    edit short_types = {.key = "tokenizer.ggml.token_type", .kind = E_I32S, .i32s = types, .n = 5};
    m = expect_load(src, &short_types, 1, NULL, BONSAI_OK, "");
    expect_tokenizer(m, BONSAI_ERR_CORRUPT, "token_type");
    bonsai_model_free(m);
    const char *words[2] = {"a", "b"};
    edit scores_strings = {.key = "tokenizer.ggml.scores", .kind = E_STRS, .strs = words, .n = 2};
    m = expect_load(src, &scores_strings, 1, NULL, BONSAI_OK, "");
    expect_tokenizer(m, BONSAI_ERR_CORRUPT, "scores");
    bonsai_model_free(m);
    edit unknown_model = E_STR_("tokenizer.ggml.model", "wordpiece");
    m = expect_load(src, &unknown_model, 1, NULL, BONSAI_OK, "");
    expect_tokenizer(m, BONSAI_ERR_UNSUPPORTED, "wordpiece");
    bonsai_model_free(m);
    bonsai_model_free(src);
}

static void test_hostile_merges(void **state)
{
    (void)state;
    const char *path = getenv("BONSAI_TEST_QWEN3_TINY");
    if (!path || !*path) {
        test_data("qwen3-tokenizer.json");
        fail_msg("BONSAI_TEST_QWEN3_TINY is not set (run through meson test)");
    }
    bonsai_model *src;
    assert_int_equal(bonsai_model_load(path, NULL, &src), 0);
    const char *unknown[3] = {"\xc4\xa0 t", "no_such_token other", "h e"};
    const char *no_space[2] = {"\xc4\xa0 t", "single"};
    const struct {
        const char *const *merges;
        uint64_t n;
        const char *needle;
    } cases[] = {{unknown, 3, "no_such_token"}, {no_space, 2, "single"}};
    for (size_t i = 0; i < 2; i++) {
        edit e = {.key = "tokenizer.ggml.merges",
                  .kind = E_STRS,
                  .strs = cases[i].merges,
                  .n = cases[i].n};
        bonsai_model *m = expect_load(src, &e, 1, NULL, BONSAI_OK, "");
        expect_tokenizer(m, BONSAI_ERR_CORRUPT, cases[i].needle);
        bonsai_model_free(m);
    }
    edit pre = E_STR_("tokenizer.ggml.pre", "some-future-regex");
    bonsai_model *m = expect_load(src, &pre, 1, NULL, BONSAI_OK, "");
    expect_tokenizer(m, BONSAI_ERR_UNSUPPORTED, "some-future-regex");
    bonsai_model_free(m);
    bonsai_model_free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_absurd_hyperparameters),
        cmocka_unit_test(test_absurd_tensors),
        cmocka_unit_test(test_hostile_vocabularies),
        cmocka_unit_test(test_hostile_merges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
