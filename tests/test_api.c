/* Versions, status strings, the thread-local last error, the log callback, argument checks. */
#include "test_util.h"

#include "model.h"

#include <pthread.h>

static void test_versions(void **state)
{
    (void)state;
    assert_int_equal(bonsai_version_number(), BONSAI_VERSION_NUMBER);
    assert_string_equal(bonsai_version_string(), BONSAI_VERSION_STRING);
    assert_int_equal(bonsai_abi_version(), BONSAI_ABI_VERSION);
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", BONSAI_VERSION_MAJOR, BONSAI_VERSION_MINOR,
             BONSAI_VERSION_PATCH);
    assert_string_equal(bonsai_version_string(), expect);
}

static void test_status_strings(void **state)
{
    (void)state;
    /* pinned values: changing one breaks every binding */
    assert_int_equal(BONSAI_OK, 0);
    assert_int_equal(BONSAI_ERR_INVALID_ARGUMENT, -1);
    assert_int_equal(BONSAI_ERR_NO_MEMORY, -2);
    assert_int_equal(BONSAI_ERR_IO, -3);
    assert_int_equal(BONSAI_ERR_BAD_MAGIC, -4);
    assert_int_equal(BONSAI_ERR_UNSUPPORTED_VERSION, -5);
    assert_int_equal(BONSAI_ERR_TRUNCATED, -6);
    assert_int_equal(BONSAI_ERR_CORRUPT, -7);
    assert_int_equal(BONSAI_ERR_UNSUPPORTED_TYPE, -8);
    assert_int_equal(BONSAI_ERR_DUPLICATE, -9);
    assert_int_equal(BONSAI_ERR_NOT_FOUND, -10);
    assert_int_equal(BONSAI_ERR_TYPE_MISMATCH, -11);
    assert_int_equal(BONSAI_ERR_OUT_OF_RANGE, -12);
    assert_int_equal(BONSAI_ERR_ABORTED, -13);
    assert_int_equal(BONSAI_ERR_UNSUPPORTED, -14);
    assert_int_equal(BONSAI_ERR_CONTEXT_FULL, -15);
    assert_int_equal(BONSAI_ERR_BACKEND, -16);
    assert_int_equal(BONSAI_ERR_INVALID_STATE, -17);
    /* every status has its own description */
    for (int a = 0; a >= BONSAI_ERR_INVALID_STATE; a--) {
        const char *s = bonsai_status_string((bonsai_status)a);
        assert_non_null(s);
        assert_string_not_equal(s, "unknown status");
        for (int b = a - 1; b >= BONSAI_ERR_INVALID_STATE; b--)
            assert_string_not_equal(s, bonsai_status_string((bonsai_status)b));
    }
    assert_string_equal(bonsai_status_string((bonsai_status)-1000), "unknown status");
    assert_string_equal(bonsai_status_string((bonsai_status)5), "unknown status");
}

static void *fail_in_thread(void *arg)
{
    (void)arg;
    bonsai_model *m = (bonsai_model *)1;
    bonsai_status st = bonsai_model_load("/nonexistent/other-thread.gguf", NULL, &m);
    assert_int_equal(st, BONSAI_ERR_IO);
    assert_null(m);
    assert_non_null(strstr(bonsai_last_error(), "other-thread"));
    return NULL;
}

static void test_last_error_is_thread_local(void **state)
{
    (void)state;
    bonsai_model *m;
    assert_error(bonsai_model_load("/nonexistent/main-thread.gguf", NULL, &m), BONSAI_ERR_IO,
                 "main-thread");
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fail_in_thread, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    /* the other thread's failure did not touch ours */
    assert_non_null(strstr(bonsai_last_error(), "main-thread"));
}

typedef struct log_capture {
    int calls;
    bonsai_log_level last_level;
    char last[1024];
} log_capture;

static void capture_log(bonsai_log_level level, const char *message, void *user_data)
{
    log_capture *c = user_data;
    c->calls++;
    c->last_level = level;
    snprintf(c->last, sizeof c->last, "%s", message);
}

static void test_log_callback(void **state)
{
    (void)state;
    log_capture c = {0};
    bonsai_model *m;
    /* silent by default: nothing to capture, and no crash without a callback */
    assert_int_not_equal(bonsai_model_load("/nonexistent/a.gguf", NULL, &m), BONSAI_OK);

    bonsai_log_set(capture_log, BONSAI_LOG_WARN, &c);
    assert_int_not_equal(bonsai_model_load("/nonexistent/b.gguf", NULL, &m), BONSAI_OK);
    assert_int_equal(c.calls, 0); /* failures are logged at debug level only */

    bonsai_log_set(capture_log, BONSAI_LOG_DEBUG, &c);
    assert_int_not_equal(bonsai_model_load("/nonexistent/c.gguf", NULL, &m), BONSAI_OK);
    assert_true(c.calls >= 1);
    assert_int_equal(c.last_level, BONSAI_LOG_DEBUG);
    assert_non_null(strstr(c.last, "c.gguf"));

    bonsai_log_set(NULL, BONSAI_LOG_DEBUG, NULL);
    int before = c.calls;
    assert_int_not_equal(bonsai_model_load("/nonexistent/d.gguf", NULL, &m), BONSAI_OK);
    assert_int_equal(c.calls, before);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    bonsai_model *m = (bonsai_model *)1;
    assert_error(bonsai_model_load(NULL, NULL, &m), BONSAI_ERR_INVALID_ARGUMENT, "path");
    assert_null(m);
    assert_error(bonsai_model_load("x.gguf", NULL, NULL), BONSAI_ERR_INVALID_ARGUMENT, "out");

    bonsai_model_params p;
    bonsai_model_params_init(&p);
    assert_int_equal(p.struct_size, sizeof p);
    assert_true(p.use_mmap);
    assert_null(p.progress);
    p.struct_size = 3;
    m = (bonsai_model *)1;
    assert_error(bonsai_model_load("x.gguf", &p, &m), BONSAI_ERR_INVALID_ARGUMENT, "struct_size");
    assert_null(m);
    p.struct_size = sizeof p + 64; /* from a newer header than this library */
    assert_error(bonsai_model_load("x.gguf", &p, &m), BONSAI_ERR_INVALID_ARGUMENT, "struct_size");

    /* NULL handles: accessors answer neutrally, destructors accept NULL */
    bonsai_model_free(NULL);
    assert_string_equal(bonsai_model_architecture(NULL), "");
    assert_int_equal(bonsai_model_tensor_count(NULL), 0);
    assert_int_equal(bonsai_model_meta_count(NULL), 0);
    const bonsai_value *v = (const bonsai_value *)1;
    assert_error(bonsai_model_meta_get(NULL, "k", &v), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_null(v);
    uint32_t u;
    assert_error(bonsai_value_get_u32(NULL, &u), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    bonsai_tensor_info ti = {.struct_size = sizeof ti};
    assert_error(bonsai_model_tensor_at(NULL, 0, &ti), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_string_equal(bonsai_value_type_name((bonsai_value_type)99), "?");
    assert_null(bonsai_tensor_type_name(2));
    assert_string_equal(bonsai_tensor_type_name(BONSAI_TENSOR_Q1_0), "Q1_0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_last_error_is_thread_local),
        cmocka_unit_test(test_log_callback),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
