/*
 * Out of memory anywhere: a scenario (load a model, create sessions, tokenize, generate with a
 * sampler chain and a JSON constraint, chat, embed, step two sessions together) is run once to
 * count its allocations, then again for every n with the n-th allocation failing. Each failing
 * step must return BONSAI_ERR_NO_MEMORY with a message, and the same step retried (allocations
 * working again) must succeed on the objects made before, ending with exactly the results of the
 * clean run. Leaks are LeakSanitizer's job (the sanitizer build runs this test too).
 */
#include "test_util.h"

#include "alloc.h"

#include <math.h>

typedef struct scenario {
    const char *path;
    bool json; /* with a JSON-constrained generation (a vocabulary with byte tokens) */
    bonsai_model *m;
    bonsai_session *s, *s2;
    bonsai_chat *chat;
    int32_t toks[64];
    uint32_t n_toks;
    char text[512]; /* generated */
    char json_text[512];
    char reply[512];
    float emb[8];
    float batch_logit;
} scenario;

static bool append_text(int32_t tok, const char *text, size_t len, float lp, void *ud)
{
    (void)tok, (void)lp;
    char *buf = ud;
    size_t have = strlen(buf);
    if (have + len < 511) {
        memcpy(buf + have, text, len);
        buf[have + len] = 0;
    }
    return true;
}

/* Step k of the scenario on `c` (objects of earlier steps exist). */
static bonsai_status step(scenario *c, int k)
{
    bonsai_status st = BONSAI_OK;
    switch (k) {
    case 0: return bonsai_model_load(c->path, NULL, &c->m);
    case 1: {
        bonsai_session_params p;
        bonsai_session_params_init(&p);
        p.n_ctx = 128;
        p.n_threads = 2;
        st = bonsai_session_create(c->m, &p, &c->s);
        if (!st) {
            st = bonsai_session_create(c->m, &p, &c->s2);
            if (st) {
                bonsai_session_free(c->s);
                c->s = NULL;
            }
        }
        return st;
    }
    case 2:
        return bonsai_tokenize(c->m, "Once upon a time", 16, BONSAI_TOKENIZE_ADD_BOS, c->toks, 64,
                               &c->n_toks);
    case 3: { /* greedy-equivalent chain: penalties off, top-k 1 */
        bonsai_sampler *smp = NULL;
        st = bonsai_sampler_create(7, &smp);
        if (!st) st = bonsai_sampler_add_penalties(smp, 16, 1.0f, 0.0f, 0.0f);
        if (!st) st = bonsai_sampler_add_top_k(smp, 1);
        if (!st) st = bonsai_sampler_add_dist(smp);
        bonsai_generate_params gp;
        bonsai_generate_params_init(&gp);
        gp.max_tokens = 8;
        gp.sampler = smp;
        gp.on_token = append_text;
        gp.user_data = c->text;
        const char *stop[] = {"zzz"};
        gp.stop = stop;
        gp.n_stop = 1;
        c->text[0] = 0;
        if (!st) st = bonsai_generate_tokens(c->s, c->toks, c->n_toks, &gp, NULL);
        bonsai_sampler_free(smp);
        return st;
    }
    case 4: {
        if (!c->json) return BONSAI_OK;
        bonsai_sampler *smp = NULL;
        st = bonsai_sampler_create(3, &smp);
        const char schema[] = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
                              "\"required\":[\"a\"]}";
        if (!st) st = bonsai_sampler_add_json(smp, c->m, schema, sizeof schema - 1);
        if (!st) st = bonsai_sampler_add_greedy(smp);
        bonsai_generate_params gp;
        bonsai_generate_params_init(&gp);
        gp.max_tokens = 12;
        gp.sampler = smp;
        gp.on_token = append_text;
        gp.user_data = c->json_text;
        c->json_text[0] = 0;
        if (!st) st = bonsai_generate(c->s, "JSON:", &gp, NULL);
        bonsai_sampler_free(smp);
        return st;
    }
    case 5:
        if (!c->chat) st = bonsai_chat_create(c->s2, "Be brief.", 0, &c->chat);
        if (!st) {
            bonsai_generate_params gp;
            bonsai_generate_params_init(&gp);
            gp.max_tokens = 4;
            st = bonsai_chat_send(c->chat, "Hello", &gp, NULL);
        }
        if (!st) {
            size_t len;
            const char *r = bonsai_chat_last_reply(c->chat, &len);
            snprintf(c->reply, sizeof c->reply, "%.*s", (int)len, r);
        }
        return st;
    case 6: {
        float out[4096];
        bonsai_model_hparams h = {.struct_size = sizeof h};
        bonsai_model_hparams_get(c->m, &h);
        assert_true(h.n_embd <= 4096);
        st = bonsai_embed(c->s, c->toks, c->n_toks, out, h.n_embd);
        if (!st) memcpy(c->emb, out, sizeof c->emb);
        return st;
    }
    case 7: {
        bonsai_session_clear(c->s);
        bonsai_session_clear(c->s2);
        bonsai_batch_item items[2] = {{c->s, c->toks[0]}, {c->s2, c->toks[1]}};
        st = bonsai_batch_eval(items, 2, 0);
        if (!st) c->batch_logit = bonsai_session_logits(c->s2, NULL)[5];
        return st;
    }
    default: return BONSAI_OK;
    }
}

enum { N_STEPS = 8 };

static void finish(scenario *c)
{
    bonsai_chat_free(c->chat);
    bonsai_session_free(c->s);
    bonsai_session_free(c->s2);
    bonsai_model_free(c->m);
    c->chat = NULL;
    c->s = c->s2 = NULL;
    c->m = NULL;
}

/* Runs the scenario with the n-th allocation failing (0: none); returns the failing step or -1. */
static int run(scenario *c, uint64_t n)
{
    int failed = -1;
    bsi_alloc_fail_at(n);
    for (int k = 0; k < N_STEPS; k++) {
        bonsai_status st = step(c, k);
        if (st) {
            bsi_alloc_fail_at(0);
            if (st != BONSAI_ERR_NO_MEMORY || !strlen(bonsai_last_error()))
                fail_msg("allocation %llu: step %d gave status %d (%s): %s", (unsigned long long)n,
                         k, st, bonsai_status_string(st), bonsai_last_error());
            failed = k;
            /* the same step again, on what exists: it must work now */
            st = step(c, k);
            if (st)
                fail_msg("allocation %llu: step %d failed again after running out of memory: %s",
                         (unsigned long long)n, k, bonsai_last_error());
        }
    }
    bsi_alloc_fail_at(0);
    return failed;
}

static void sweep(const char *path, bool json, uint64_t max_trials)
{
    scenario ref = {.path = path, .json = json};
    uint64_t before = bsi_alloc_count();
    assert_int_equal(run(&ref, 0), -1);
    uint64_t total = bsi_alloc_count() - before;
    finish(&ref);
    uint64_t stride = total > max_trials ? total / max_trials : 1;
    uint64_t trials = 0, hits[N_STEPS] = {0};
    for (uint64_t n = 1; n <= total; n += stride) {
        scenario c = {.path = path, .json = json};
        int k = run(&c, n);
        if (k >= 0) hits[k]++;
        /* whatever failed on the way, the results are the clean run's */
        assert_string_equal(c.text, ref.text);
        assert_string_equal(c.json_text, ref.json_text);
        assert_string_equal(c.reply, ref.reply);
        assert_memory_equal(c.emb, ref.emb, sizeof c.emb);
        assert_true(c.batch_logit == ref.batch_logit);
        finish(&c);
        trials++;
    }
    print_message(
        "%s: %llu allocations in the scenario; %llu runs each failing one (every %llu); "
        "failures per step: load %llu, sessions %llu, tokenize %llu, generate %llu, "
        "json %llu, chat %llu, embed %llu, batch %llu\n",
        path, (unsigned long long)total, (unsigned long long)trials, (unsigned long long)stride,
        (unsigned long long)hits[0], (unsigned long long)hits[1], (unsigned long long)hits[2],
        (unsigned long long)hits[3], (unsigned long long)hits[4], (unsigned long long)hits[5],
        (unsigned long long)hits[6], (unsigned long long)hits[7]);
    print_message("  generated \"%s\", JSON \"%s\"\n", ref.text, ref.json_text);
}

static void test_stories(void **state)
{
    (void)state;
    sweep(test_data("stories260K.gguf"), true, UINT64_MAX); /* every allocation */
}

static void test_qwen3(void **state)
{
    (void)state;
    const char *path = getenv("BONSAI_TEST_QWEN3_TINY");
    if (!path || !*path) {
        test_data("qwen3-tokenizer.json"); /* skips without the data, fails in CI */
        fail_msg("BONSAI_TEST_QWEN3_TINY is not set (run through meson test)");
    }
    /* a large vocabulary: a sample of the allocations (fewer under the sanitizers' slowdown) */
    sweep(path, true, SANITIZED ? 40 : 150);
}

/* Memory caps of models and sessions. */
static void test_caps(void **state)
{
    (void)state;
    const char *stories = test_data("stories260K.gguf");
    bonsai_model_params mp;
    bonsai_model_params_init(&mp);
    bonsai_model *m = NULL;
    /* reading the file into memory counts */
    mp.use_mmap = false;
    mp.max_memory = 1000000; /* the file has 1,185,376 bytes */
    assert_error(bonsai_model_load(stories, &mp, &m), BONSAI_ERR_NO_MEMORY, "memory cap");
    assert_null(m);
    mp.use_mmap = true; /* mapped: the file does not count */
    assert_int_equal(bonsai_model_load(stories, &mp, &m), 0);
    /* the tokenizer's tables count (a few KiB for 512 tokens), the weights do not on the CPU
     * (F32, read in place) */
    int32_t ids[16];
    uint32_t n = 0;
    assert_int_equal(
        bonsai_tokenize(m, "Once upon a time", 16, BONSAI_TOKENIZE_ADD_BOS, ids, 16, &n), 0);
    bonsai_model_free(m);
    mp.max_memory = 1000;
    assert_int_equal(bonsai_model_load(stories, &mp, &m), 0);
    assert_error(bonsai_tokenize(m, "Once", 4, 0, ids, 16, &n), BONSAI_ERR_NO_MEMORY,
                 "tokenizer's tables");
    bonsai_model_free(m);

    /* sessions: the KV cache must fit; a batch too large fails and smaller ones work */
    assert_int_equal(bonsai_model_load(stories, NULL, &m), 0);
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_ctx = 256; /* KV: 5 layers x 256 x 32 values x 2 bytes x 2 = 160 KiB */
    sp.max_memory = 100000;
    bonsai_session *s = NULL;
    assert_error(bonsai_session_create(m, &sp, &s), BONSAI_ERR_NO_MEMORY, "smaller n_ctx");
    assert_null(s);
    sp.max_memory = 200000;
    assert_int_equal(bonsai_session_create(m, &sp, &s), 0);
    int32_t many[64];
    for (int i = 0; i < 64; i++) many[i] = 1 + i;
    /* 64 tokens with every row of logits: 64 x 512 x 8 bytes of logits alone */
    assert_error(bonsai_session_eval(s, many, 64, BONSAI_EVAL_ALL_LOGITS), BONSAI_ERR_NO_MEMORY,
                 "memory cap");
    assert_int_equal(bonsai_session_n_past(s), 0);
    assert_int_equal(bonsai_session_eval(s, many, 4, 0), 0);
    assert_int_equal(bonsai_session_n_past(s), 4);
    bonsai_session_free(s);
    /* generation splits a long prompt into batches that fit */
    sp.max_memory = 185000; /* the cache and batches of a few tokens */
    assert_int_equal(bonsai_session_create(m, &sp, &s), 0);
    int32_t prompt[200];
    for (int i = 0; i < 200; i++) prompt[i] = 1 + (i * 7) % 500;
    assert_error(bonsai_session_eval(s, prompt, 200, 0), BONSAI_ERR_NO_MEMORY, "smaller batches");
    bonsai_generate_params gp;
    bonsai_generate_params_init(&gp);
    gp.max_tokens = 4;
    bonsai_generate_stats st = {.struct_size = sizeof st};
    assert_int_equal(bonsai_generate_tokens(s, prompt, 200, &gp, &st), 0);
    assert_int_equal(st.n_generated, 4);
    bonsai_session_free(s);
    bonsai_model_free(m);

    /* repacked Q1_0 weights count against the model's cap when a session places them */
    const char *tiny = getenv("BONSAI_TEST_QWEN3_TINY");
    if (tiny && *tiny && bsi_alloc_count() > 0) {
        mp.max_memory = 3000000; /* the tiny model repacks about 5.7 MB on AVX2 */
        mp.use_mmap = true;
        assert_int_equal(bonsai_model_load(tiny, &mp, &m), 0);
        bonsai_session_params_init(&sp);
        sp.backend = "cpu";
        bonsai_status r = bonsai_session_create(m, &sp, &s);
        if (r == BONSAI_OK) { /* the scalar kernels read the file layout: nothing to count */
            print_message("no repacking on this CPU: weights read in place\n");
            bonsai_session_free(s);
        } else {
            assert_error(r, BONSAI_ERR_NO_MEMORY, "weights on backend cpu");
        }
        bonsai_model_free(m);
    }
    /* an older caller's struct (without max_memory) still works: no cap */
    bonsai_model_params old = mp;
    old.struct_size = (uint32_t)offsetof(bonsai_model_params, max_memory);
    old.max_memory = 1; /* beyond the struct: ignored */
    assert_int_equal(bonsai_model_load(stories, &old, &m), 0);
    bonsai_session_params olds;
    bonsai_session_params_init(&olds);
    olds.struct_size = (uint32_t)offsetof(bonsai_session_params, max_memory);
    olds.max_memory = 1;
    assert_int_equal(bonsai_session_create(m, &olds, &s), 0);
    bonsai_session_free(s);
    bonsai_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories),
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
