/*
 * API misuse: NULL handles and out-parameters everywhere, wrong struct_size in every parameter
 * struct, a session outliving its model's caller reference, and (debug builds) handles freed
 * twice or used after being freed: reported as errors, never a crash.
 */
#include "test_util.h"

#include <math.h>

#define INVAL BONSAI_ERR_INVALID_ARGUMENT

static void test_null_handles(void **state)
{
    (void)state;
    /* destructors take NULL */
    bonsai_model_free(NULL);
    bonsai_session_free(NULL);
    bonsai_sampler_free(NULL);
    bonsai_chat_free(NULL);
    bonsai_detokenizer_free(NULL);
    /* accessors answer neutrally */
    assert_string_equal(bonsai_model_architecture(NULL), "");
    assert_string_equal(bonsai_model_name(NULL), "");
    assert_int_equal(bonsai_model_file_size(NULL), 0);
    assert_int_equal(bonsai_model_n_params(NULL), 0);
    assert_int_equal(bonsai_model_n_vocab(NULL), 0);
    assert_int_equal(bonsai_model_meta_count(NULL), 0);
    assert_int_equal(bonsai_model_tensor_count(NULL), 0);
    assert_int_equal(bonsai_model_token(NULL, BONSAI_TOKEN_EOS), -1);
    assert_false(bonsai_token_is_eog(NULL, 0));
    assert_false(bonsai_token_is_control(NULL, 0));
    assert_int_equal(bonsai_session_n_past(NULL), 0);
    assert_int_equal(bonsai_session_n_ctx(NULL), 0);
    uint32_t rows = 7, n = 7;
    assert_null(bonsai_session_logits(NULL, &rows));
    assert_int_equal(rows, 0);
    assert_null(bonsai_session_tokens(NULL, &n));
    assert_int_equal(n, 0);
    assert_string_equal(bonsai_session_backend(NULL), "");
    bonsai_session_clear(NULL);
    bonsai_session_cancel(NULL);
    bonsai_sampler_reset(NULL);
    assert_false(bonsai_sampler_done(NULL));
    size_t len = 9;
    assert_string_equal(bonsai_chat_last_reply(NULL, &len), "");
    assert_int_equal(len, 0);
    const char *text = NULL;
    bonsai_detokenizer_flush(NULL, &text, &len);
    /* fallible calls: INVALID_ARGUMENT with a message */
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    bonsai_sampler *smp = NULL;
    bonsai_chat *chat = NULL;
    bonsai_detokenizer *d = NULL;
    const bonsai_value *v = NULL;
    const char *key = NULL;
    uint64_t idx = 0;
    int32_t tok = 0, toks[4] = {0};
    float f = 0, emb[4];
    char buf[16];
    bonsai_model_hparams h = {.struct_size = sizeof h};
    bonsai_tensor_info ti = {.struct_size = sizeof ti};
    assert_error(bonsai_model_load(NULL, NULL, &m), INVAL, "path");
    assert_error(bonsai_model_load("x", NULL, NULL), INVAL, "out");
    assert_error(bonsai_model_hparams_get(NULL, &h), INVAL, "");
    assert_error(bonsai_model_meta_at(NULL, 0, &key, &v), INVAL, "");
    assert_error(bonsai_model_meta_get(NULL, "k", &v), INVAL, "");
    assert_error(bonsai_model_tensor_at(NULL, 0, &ti), INVAL, "");
    assert_error(bonsai_model_tensor_find(NULL, "t", &idx), INVAL, "");
    assert_error(bonsai_session_create(NULL, NULL, &s), INVAL, "model");
    assert_error(bonsai_session_eval(NULL, toks, 1, 0), INVAL, "");
    assert_error(bonsai_session_truncate(NULL, 0), INVAL, "");
    assert_error(bonsai_embed(NULL, toks, 1, emb, 4), INVAL, "");
    assert_error(bonsai_tokenize(NULL, "a", 1, 0, toks, 4, &n), INVAL, "");
    assert_error(bonsai_detokenize(NULL, toks, 1, 0, buf, sizeof buf, &len), INVAL, "");
    assert_error(bonsai_token_to_piece(NULL, 0, 0, buf, sizeof buf, &len), INVAL, "");
    assert_error(bonsai_detokenizer_create(NULL, 0, &d), INVAL, "model");
    assert_error(bonsai_detokenizer_push(NULL, 0, &text, &len), INVAL, "");
    assert_error(bonsai_sampler_create(0, NULL), INVAL, "out");
    assert_error(bonsai_sampler_add_greedy(NULL), INVAL, "sampler");
    assert_error(bonsai_sampler_add_dist(NULL), INVAL, "sampler");
    assert_error(bonsai_sampler_add_top_k(NULL, 1), INVAL, "sampler");
    assert_error(bonsai_sampler_add_json(NULL, m, NULL, 0), INVAL, "sampler");
    assert_error(bonsai_sampler_sample(NULL, &f, 1, &tok, NULL), INVAL, "sampler");
    assert_error(bonsai_sampler_accept(NULL, 0), INVAL, "sampler");
    assert_int_equal(bonsai_sampler_create_default(NULL, &smp), 0); /* NULL: the defaults */
    bonsai_sampler_free(smp);
    assert_error(bonsai_sampler_create_default(NULL, NULL), INVAL, "");
    assert_error(bonsai_generate(NULL, "x", NULL, NULL), INVAL, "");
    assert_error(bonsai_generate_tokens(NULL, toks, 1, NULL, NULL), INVAL, "");
    assert_error(bonsai_batch_eval(NULL, 1, 0), INVAL, "");
    assert_error(bonsai_chat_create(NULL, NULL, 0, &chat), INVAL, "session");
    assert_error(bonsai_chat_send(NULL, "x", NULL, NULL), INVAL, "");
    assert_error(bonsai_chat_reset(NULL, NULL), INVAL, "");
    assert_error(bonsai_chat_render(NULL, 1, 0, buf, sizeof buf, &len), INVAL, "");
    assert_error(bonsai_chat_tokenize(NULL, NULL, 0, 0, toks, 4, &n), INVAL, "");
    assert_error(bonsai_backend_get(0, NULL), INVAL, "");
}

/* Parameter structs with a struct_size of 0, too small, or larger than the library knows. */
static void test_struct_sizes(void **state)
{
    (void)state;
    const char *path = test_data("stories260K.gguf");
    bonsai_model *m = NULL;
    bonsai_model_params mp;
    uint32_t bad[] = {0, 3, (uint32_t)sizeof mp + 8};
    for (size_t i = 0; i < 3; i++) {
        bonsai_model_params_init(&mp);
        mp.struct_size = bad[i];
        assert_error(bonsai_model_load(path, &mp, &m), INVAL, "struct_size");
        assert_null(m);
    }
    assert_int_equal(bonsai_model_load(path, NULL, &m), 0);
    bonsai_session *s = NULL;
    bonsai_session_params sp;
    bad[2] = (uint32_t)sizeof sp + 8;
    for (size_t i = 0; i < 3; i++) {
        bonsai_session_params_init(&sp);
        sp.struct_size = bad[i];
        assert_error(bonsai_session_create(m, &sp, &s), INVAL, "struct_size");
        assert_null(s);
    }
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    bonsai_generate_params gp;
    bad[2] = (uint32_t)sizeof gp + 8;
    for (size_t i = 0; i < 3; i++) {
        bonsai_generate_params_init(&gp);
        gp.struct_size = bad[i];
        assert_error(bonsai_generate(s, "x", &gp, NULL), INVAL, "struct_size");
    }
    bonsai_generate_params_init(&gp);
    gp.max_tokens = 1;
    bonsai_generate_stats stats = {.struct_size = 2};
    assert_error(bonsai_generate(s, "x", &gp, &stats), INVAL, "struct_size");
    stats.struct_size = (uint32_t)sizeof stats + 8; /* from a newer header */
    assert_error(bonsai_generate(s, "x", &gp, &stats), INVAL, "struct_size");
    bonsai_sampler_params smp;
    bonsai_sampler *sampler = NULL;
    bad[2] = (uint32_t)sizeof smp + 8;
    for (size_t i = 0; i < 3; i++) {
        bonsai_sampler_params_init(&smp);
        smp.struct_size = bad[i];
        assert_error(bonsai_sampler_create_default(&smp, &sampler), INVAL, "struct_size");
        assert_null(sampler);
    }
    /* output structs: 0, or larger than this library fills */
    for (size_t i = 0; i < 2; i++) {
        bonsai_model_hparams h = {.struct_size = i ? (uint32_t)sizeof h + 8 : 0};
        assert_error(bonsai_model_hparams_get(m, &h), INVAL, "struct_size");
        bonsai_tensor_info ti = {.struct_size = i ? (uint32_t)sizeof ti + 8 : 0};
        assert_error(bonsai_model_tensor_at(m, 0, &ti), INVAL, "struct_size");
        bonsai_backend_info bi = {.struct_size = i ? (uint32_t)sizeof bi + 8 : 0};
        assert_error(bonsai_backend_get(0, &bi), INVAL, "struct_size");
    }
    /* the init functions accept NULL */
    bonsai_model_params_init(NULL);
    bonsai_session_params_init(NULL);
    bonsai_generate_params_init(NULL);
    bonsai_sampler_params_init(NULL);
    bonsai_session_free(s);
    bonsai_model_free(m);
}

/* A session holds its model: freeing the caller's reference does not end it. */
static void test_session_outlives_caller_reference(void **state)
{
    (void)state;
    bonsai_model *m = NULL;
    assert_int_equal(bonsai_model_load(test_data("stories260K.gguf"), NULL, &m), 0);
    bonsai_session *s = NULL;
    bonsai_detokenizer *d = NULL;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    assert_int_equal(bonsai_detokenizer_create(m, 0, &d), 0);
    bonsai_model_free(m); /* the caller is done with it */
    bonsai_generate_params gp;
    bonsai_generate_params_init(&gp);
    gp.max_tokens = 4;
    bonsai_generate_stats st = {.struct_size = sizeof st};
    assert_int_equal(bonsai_generate(s, "Once upon a time", &gp, &st), 0);
    assert_int_equal(st.n_generated, 4);
    const char *text;
    size_t len;
    assert_int_equal(bonsai_detokenizer_push(d, 403, &text, &len), 0);
    bonsai_detokenizer_free(d);
    bonsai_session_free(s); /* the model goes with its last user */
}

#ifndef NDEBUG
static int n_logged_errors;
static char last_log[1024];

static void on_log(bonsai_log_level level, const char *msg, void *ud)
{
    (void)ud;
    if (level == BONSAI_LOG_ERROR) {
        n_logged_errors++;
        snprintf(last_log, sizeof last_log, "%s", msg);
    }
}
#endif

/* Debug builds: handles freed twice or used afterwards are reported, not followed. */
static void test_double_free(void **state)
{
    (void)state;
#ifdef NDEBUG
    print_message("SKIP: handle checks are part of debug builds (this one has NDEBUG)\n");
    skip();
#else
    bonsai_log_set(on_log, BONSAI_LOG_ERROR, NULL);
    bonsai_model *m = NULL;
    assert_int_equal(bonsai_model_load(test_data("stories260K.gguf"), NULL, &m), 0);
    bonsai_session *s = NULL, *s2 = NULL;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    assert_int_equal(bonsai_session_create(m, NULL, &s2), 0);
    /* the model freed twice while sessions hold it: the second call is refused */
    bonsai_model_free(m);
    n_logged_errors = 0;
    bonsai_model_free(m);
    assert_int_equal(n_logged_errors, 1);
    assert_non_null(strstr(last_log, "already freed"));
    int32_t t = 1;
    assert_int_equal(bonsai_session_eval(s, &t, 1, 0), 0); /* the model is still there */
    /* a session freed twice, or used after */
    bonsai_session_free(s2);
    n_logged_errors = 0;
    bonsai_session_free(s2);
    assert_int_equal(n_logged_errors, 1);
    assert_error(bonsai_session_eval(s2, &t, 1, 0), INVAL, "already freed");
    assert_error(bonsai_generate(s2, "x", NULL, NULL), INVAL, "already freed");
    /* samplers, chats, detokenizers */
    bonsai_sampler *smp = NULL;
    assert_int_equal(bonsai_sampler_create(1, &smp), 0);
    bonsai_sampler_free(smp);
    n_logged_errors = 0;
    bonsai_sampler_free(smp);
    assert_int_equal(n_logged_errors, 1);
    assert_error(bonsai_sampler_add_greedy(smp), INVAL, "already freed");
    int32_t tok = -1; /* s has logits (evaluated above) */
    assert_error(bonsai_session_sample(s, smp, &tok, NULL), INVAL, "already freed");
    bonsai_batch_sample_item pick = {s, smp, -1, 0.0f};
    assert_error(bonsai_batch_sample(&pick, 1, 0), INVAL, "already freed");
    assert_int_equal(pick.token, -1);
    bonsai_chat *chat = NULL;
    assert_int_equal(bonsai_chat_create(s, NULL, 0, &chat), 0);
    bonsai_chat_free(chat);
    n_logged_errors = 0;
    bonsai_chat_free(chat);
    assert_int_equal(n_logged_errors, 1);
    assert_error(bonsai_chat_send(chat, "x", NULL, NULL), INVAL, "already freed");
    bonsai_detokenizer *d = NULL;
    assert_int_equal(bonsai_detokenizer_create(m, 0, &d), 0);
    bonsai_detokenizer_free(d);
    n_logged_errors = 0;
    bonsai_detokenizer_free(d);
    assert_int_equal(n_logged_errors, 1);
    /* the live session still works */
    assert_int_equal(bonsai_session_eval(s, &t, 1, 0), 0);
    bonsai_session_free(s);
    bonsai_log_set(NULL, BONSAI_LOG_ERROR, NULL);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_handles),
        cmocka_unit_test(test_struct_sizes),
        cmocka_unit_test(test_session_outlives_caller_reference),
        cmocka_unit_test(test_double_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
