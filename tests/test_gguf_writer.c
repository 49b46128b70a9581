/* The internal GGUF writer: everything it writes reads back identically. */
#include "test_util.h"

#include "gguf.h"
#include "gguf_writer.h"

#include <unistd.h>

/* One nested value: [[1, 2], [], [3]] as arrays of u32 inside an array of arrays. */
static const uint32_t nest_a[] = {1, 2}, nest_c[] = {3};

static bsi_gguf_writer *make_writer(uint32_t alignment)
{
    bsi_gguf_writer *w = bsi_gguf_writer_new(alignment);
    assert_non_null(w);
    uint8_t u8 = 250;
    int8_t i8 = -100;
    uint16_t u16 = 65000;
    int16_t i16 = -32000;
    int32_t i32 = -2000000000;
    uint64_t u64 = 0xfedcba9876543210ull;
    int64_t i64 = INT64_MIN;
    double f64 = -1.0 / 3.0;
    bool b = false;
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.u8", BONSAI_VALUE_U8, &u8), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.i8", BONSAI_VALUE_I8, &i8), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.u16", BONSAI_VALUE_U16, &u16), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.i16", BONSAI_VALUE_I16, &i16), 0);
    assert_int_equal(bsi_gguf_writer_add_u32(w, "t.u32", 4000000000u), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.i32", BONSAI_VALUE_I32, &i32), 0);
    assert_int_equal(bsi_gguf_writer_add_f32(w, "t.f32", 1.5e-6f), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.bool", BONSAI_VALUE_BOOL, &b), 0);
    assert_int_equal(bsi_gguf_writer_add_string(w, "t.string", "h\xc3\xa9llo"), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.u64", BONSAI_VALUE_U64, &u64), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.i64", BONSAI_VALUE_I64, &i64), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.f64", BONSAI_VALUE_F64, &f64), 0);
    /* an embedded NUL survives as data */
    bonsai_value nul = {.type = BONSAI_VALUE_STRING, .count = 3, .v.str = "a\0b"};
    assert_int_equal(bsi_gguf_writer_add_value(w, "t.nul", &nul), 0);

    const float fa[] = {1.0f, -2.0f, 3.5f};
    const bool ba[] = {true, false, true, true};
    const char *const sa[] = {"", "one", "two words"};
    assert_int_equal(bsi_gguf_writer_add_array(w, "a.f32", BONSAI_VALUE_F32, 3, fa), 0);
    assert_int_equal(bsi_gguf_writer_add_array(w, "a.bool", BONSAI_VALUE_BOOL, 4, ba), 0);
    assert_int_equal(bsi_gguf_writer_add_array(w, "a.empty", BONSAI_VALUE_I64, 0, NULL), 0);
    assert_int_equal(bsi_gguf_writer_add_string_array(w, "a.str", 3, sa), 0);

    bonsai_value inner[3] = {
        {.type = BONSAI_VALUE_ARRAY,
         .elem_type = BONSAI_VALUE_U32,
         .count = 2,
         .v.raw = (const uint8_t *)nest_a},
        {.type = BONSAI_VALUE_ARRAY, .elem_type = BONSAI_VALUE_U32, .count = 0, .v.raw = NULL},
        {.type = BONSAI_VALUE_ARRAY,
         .elem_type = BONSAI_VALUE_U32,
         .count = 1,
         .v.raw = (const uint8_t *)nest_c},
    };
    bonsai_value outer = {
        .type = BONSAI_VALUE_ARRAY, .elem_type = BONSAI_VALUE_ARRAY, .count = 3, .v.arrays = inner};
    assert_int_equal(bsi_gguf_writer_add_value(w, "a.nested", &outer), 0);

    const uint64_t s_f32[] = {3, 2}, s_f16[] = {5}, s_q8[] = {64, 3}, s_bf16[] = {2, 2, 2, 2},
                   s_q1[] = {256, 3};
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "w.f32", BONSAI_TENSOR_F32, 2, s_f32), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "w.f16", BONSAI_TENSOR_F16, 1, s_f16), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "w.q8", BONSAI_TENSOR_Q8_0, 2, s_q8), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "w.bf16", BONSAI_TENSOR_BF16, 4, s_bf16), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "w.q1", BONSAI_TENSOR_Q1_0, 2, s_q1), 0);
    return w;
}

/* Tensor i's bytes are (i * 31 + j) & 0xff, written in uneven chunks. */
static void write_all(bsi_gguf_writer *w, bsi_buf *out)
{
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_buf_sink, out), 0);
    for (uint64_t i = 0; i < 5; i++) {
        uint64_t n = bsi_gguf_writer_tensor_bytes(w, i);
        uint8_t *data = malloc(n);
        assert_non_null(data);
        for (uint64_t j = 0; j < n; j++) data[j] = (uint8_t)(i * 31 + j);
        size_t half = (size_t)n / 3;
        assert_int_equal(bsi_gguf_writer_write_data(w, bsi_buf_sink, out, data, half), 0);
        assert_int_equal(bsi_gguf_writer_write_data(w, bsi_buf_sink, out, data + half, n - half),
                         0);
        free(data);
    }
    assert_int_equal(bsi_gguf_writer_finish(w), 0);
}

static void check_read_back(const bsi_gguf *g, uint32_t alignment)
{
    assert_int_equal(g->alignment, alignment);
    assert_int_equal(g->data_offset % alignment, 0);
    const bonsai_value *v;
    uint8_t u8;
    int8_t i8;
    uint16_t u16;
    int16_t i16;
    uint32_t u32;
    int32_t i32;
    float f32;
    bool b;
    uint64_t u64;
    int64_t i64;
    double f64;
    const char *s;
    uint64_t len;
    assert_int_equal(bonsai_value_get_u8(bsi_gguf_get(g, "t.u8"), &u8), 0);
    assert_int_equal(u8, 250);
    assert_int_equal(bonsai_value_get_i8(bsi_gguf_get(g, "t.i8"), &i8), 0);
    assert_int_equal(i8, -100);
    assert_int_equal(bonsai_value_get_u16(bsi_gguf_get(g, "t.u16"), &u16), 0);
    assert_int_equal(u16, 65000);
    assert_int_equal(bonsai_value_get_i16(bsi_gguf_get(g, "t.i16"), &i16), 0);
    assert_int_equal(i16, -32000);
    assert_int_equal(bonsai_value_get_u32(bsi_gguf_get(g, "t.u32"), &u32), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(bonsai_value_get_i32(bsi_gguf_get(g, "t.i32"), &i32), 0);
    assert_int_equal(i32, -2000000000);
    assert_int_equal(bonsai_value_get_f32(bsi_gguf_get(g, "t.f32"), &f32), 0);
    assert_true(f32 == 1.5e-6f);
    assert_int_equal(bonsai_value_get_bool(bsi_gguf_get(g, "t.bool"), &b), 0);
    assert_false(b);
    assert_int_equal(bonsai_value_get_string(bsi_gguf_get(g, "t.string"), &s, &len), 0);
    assert_string_equal(s, "h\xc3\xa9llo");
    assert_int_equal(len, 6);
    assert_int_equal(bonsai_value_get_u64(bsi_gguf_get(g, "t.u64"), &u64), 0);
    assert_true(u64 == 0xfedcba9876543210ull);
    assert_int_equal(bonsai_value_get_i64(bsi_gguf_get(g, "t.i64"), &i64), 0);
    assert_true(i64 == INT64_MIN);
    assert_int_equal(bonsai_value_get_f64(bsi_gguf_get(g, "t.f64"), &f64), 0);
    assert_true(f64 == -1.0 / 3.0);
    assert_int_equal(bonsai_value_get_string(bsi_gguf_get(g, "t.nul"), &s, &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "a\0b", 4); /* NUL-terminated copy */

    float fa[3];
    assert_int_equal(
        bonsai_value_array_copy(bsi_gguf_get(g, "a.f32"), BONSAI_VALUE_F32, 0, 3, fa, sizeof fa),
        0);
    assert_true(fa[0] == 1.0f && fa[1] == -2.0f && fa[2] == 3.5f);
    bool ba[4];
    assert_int_equal(
        bonsai_value_array_copy(bsi_gguf_get(g, "a.bool"), BONSAI_VALUE_BOOL, 0, 4, ba, sizeof ba),
        0);
    assert_true(ba[0] && !ba[1] && ba[2] && ba[3]);
    bonsai_value_type et;
    uint64_t n;
    assert_int_equal(bonsai_value_array_info(bsi_gguf_get(g, "a.empty"), &et, &n), 0);
    assert_int_equal(et, BONSAI_VALUE_I64);
    assert_int_equal(n, 0);
    v = bsi_gguf_get(g, "a.str");
    const char *sa[] = {"", "one", "two words"};
    for (uint64_t i = 0; i < 3; i++) {
        assert_int_equal(bonsai_value_array_string(v, i, &s, &len), 0);
        assert_string_equal(s, sa[i]);
    }

    v = bsi_gguf_get(g, "a.nested");
    assert_int_equal(bonsai_value_array_info(v, &et, &n), 0);
    assert_int_equal(et, BONSAI_VALUE_ARRAY);
    assert_int_equal(n, 3);
    const uint64_t counts[] = {2, 0, 1};
    const uint32_t *values[] = {nest_a, NULL, nest_c};
    for (uint64_t i = 0; i < 3; i++) {
        const bonsai_value *sub;
        assert_int_equal(bonsai_value_array_array(v, i, &sub), 0);
        assert_int_equal(bonsai_value_array_info(sub, &et, &n), 0);
        assert_int_equal(et, BONSAI_VALUE_U32);
        assert_int_equal(n, counts[i]);
        uint32_t got[2] = {0};
        assert_int_equal(bonsai_value_array_copy(sub, BONSAI_VALUE_U32, 0, n, got, sizeof got), 0);
        for (uint64_t j = 0; j < n; j++) assert_int_equal(got[j], values[i][j]);
    }

    static const struct {
        const char *name;
        uint32_t type;
        uint64_t bytes;
    } expect[] = {{"w.f32", BONSAI_TENSOR_F32, 24},
                  {"w.f16", BONSAI_TENSOR_F16, 10},
                  {"w.q8", BONSAI_TENSOR_Q8_0, 204},
                  {"w.bf16", BONSAI_TENSOR_BF16, 32},
                  {"w.q1", BONSAI_TENSOR_Q1_0, 108}};
    assert_int_equal(g->n_tensors, 5);
    for (uint64_t i = 0; i < 5; i++) {
        const bsi_gguf_tensor *t = &g->tensors[i];
        assert_string_equal(t->name, expect[i].name);
        assert_int_equal(t->type, expect[i].type);
        assert_int_equal(t->n_bytes, expect[i].bytes);
        assert_int_equal(t->offset % alignment, 0);
        const uint8_t *data = bsi_gguf_tensor_data(g, i);
        for (uint64_t j = 0; j < t->n_bytes; j++) assert_int_equal(data[j], (uint8_t)(i * 31 + j));
    }
}

static void round_trip(uint32_t version, uint32_t alignment)
{
    bsi_gguf_writer *w = make_writer(alignment == 32 ? 0 : alignment);
    bsi_gguf_writer_set_version(w, version);
    bsi_buf buf = {0};
    write_all(w, &buf);
    bsi_gguf_writer_free(w);
    bsi_gguf *g;
    bonsai_status st = bsi_gguf_parse(buf.data, buf.len, "round-trip", &g);
    if (st) fail_msg("%s", bonsai_last_error());
    assert_int_equal(g->version, version);
    check_read_back(g, alignment);
    bsi_gguf_free(g);
    bsi_buf_free(&buf);
}

static void test_round_trip_v3(void **state)
{
    (void)state;
    round_trip(3, 32);
}

static void test_round_trip_v2(void **state)
{
    (void)state;
    round_trip(2, 32);
}

static void test_round_trip_alignment(void **state)
{
    (void)state;
    round_trip(3, 64);
    round_trip(3, 4096);
    round_trip(3, 1);
}

/* Rewriting a parsed file value by value gives the same bytes: the writer copies any value. */
static void test_copy_is_identical(void **state)
{
    (void)state;
    bsi_gguf_writer *w = make_writer(0);
    bsi_buf a = {0}, b = {0};
    write_all(w, &a);
    bsi_gguf_writer_free(w);
    bsi_gguf *g;
    assert_int_equal(bsi_gguf_parse(a.data, a.len, "copy", &g), 0);
    w = bsi_gguf_writer_new(0);
    for (uint64_t i = 0; i < g->n_kv; i++)
        assert_int_equal(bsi_gguf_writer_add_value(w, g->kv[i].key, &g->kv[i].value), 0);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const bsi_gguf_tensor *t = &g->tensors[i];
        assert_int_equal(bsi_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne), 0);
    }
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_buf_sink, &b), 0);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        assert_int_equal(bsi_gguf_writer_write_data(w, bsi_buf_sink, &b, bsi_gguf_tensor_data(g, i),
                                                    g->tensors[i].n_bytes),
                         0);
    assert_int_equal(bsi_gguf_writer_finish(w), 0);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    bsi_gguf_writer_free(w);
    bsi_gguf_free(g);
    bsi_buf_free(&a);
    bsi_buf_free(&b);
}

/* Through a file and the public loader. */
static void test_file_and_public_api(void **state)
{
    (void)state;
    char path[] = "/tmp/bonsai-writer-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    assert_non_null(f);
    bsi_gguf_writer *w = make_writer(0);
    assert_int_equal(bsi_gguf_writer_add_string(w, "general.architecture", "testarch"), 0);
    assert_int_equal(bsi_gguf_writer_add_u32(w, "testarch.block_count", 28), 0);
    assert_int_equal(bsi_gguf_writer_add_f32(w, "testarch.rope.scaling.factor", 4.0f), 0);
    assert_int_equal(bsi_gguf_writer_add_string(w, "testarch.rope.scaling.type", "yarn"), 0);
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_file_sink, f), 0);
    for (uint64_t i = 0; i < 5; i++) {
        uint64_t n = bsi_gguf_writer_tensor_bytes(w, i);
        uint8_t *data = calloc(1, n);
        assert_int_equal(bsi_gguf_writer_write_data(w, bsi_file_sink, f, data, n), 0);
        free(data);
    }
    assert_int_equal(bsi_gguf_writer_finish(w), 0);
    bsi_gguf_writer_free(w);
    assert_int_equal(fclose(f), 0);

    bonsai_model *m;
    assert_int_equal(bonsai_model_load(path, NULL, &m), 0);
    assert_string_equal(bonsai_model_architecture(m), "testarch");
    assert_int_equal(bonsai_model_tensor_count(m), 5);
    bonsai_model_hparams h = {.struct_size = sizeof h};
    assert_int_equal(bonsai_model_hparams_get(m, &h), 0);
    assert_int_equal(h.n_layer, 28);
    assert_true(h.rope_scaling_factor == 4.0f);
    assert_int_equal(h.rope_scaling_yarn, 1);
    assert_int_equal(bonsai_model_n_params(m), 6 + 5 + 192 + 16 + 768);
    bonsai_model_free(m);
    unlink(path);
}

static void test_writer_refuses(void **state)
{
    (void)state;
    bsi_gguf_writer *w = bsi_gguf_writer_new(0);
    assert_null(bsi_gguf_writer_new(48));
    assert_int_equal(bsi_gguf_writer_add_u32(w, "k", 1), 0);
    assert_error(bsi_gguf_writer_add_u32(w, "k", 2), BONSAI_ERR_DUPLICATE, "'k'");
    assert_error(bsi_gguf_writer_add_u32(w, "", 2), BONSAI_ERR_INVALID_ARGUMENT, "empty key");
    const uint64_t bad_row[] = {100, 2}, ok[] = {128}, empty[] = {0};
    assert_error(bsi_gguf_writer_add_tensor(w, "q", BONSAI_TENSOR_Q1_0, 2, bad_row),
                 BONSAI_ERR_INVALID_ARGUMENT, "multiple of 128");
    assert_error(bsi_gguf_writer_add_tensor(w, "q", 2, 1, ok), BONSAI_ERR_UNSUPPORTED_TYPE, "2");
    assert_error(bsi_gguf_writer_add_tensor(w, "q", BONSAI_TENSOR_F32, 5, ok),
                 BONSAI_ERR_INVALID_ARGUMENT, "5 dimensions");
    assert_error(bsi_gguf_writer_add_tensor(w, "q", BONSAI_TENSOR_F32, 1, empty),
                 BONSAI_ERR_INVALID_ARGUMENT, "empty dimension");
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "q", BONSAI_TENSOR_Q1_0, 1, ok), 0);
    assert_error(bsi_gguf_writer_add_tensor(w, "q", BONSAI_TENSOR_F32, 1, ok), BONSAI_ERR_DUPLICATE,
                 "'q'");
    bsi_buf buf = {0};
    assert_error(bsi_gguf_writer_write_data(w, bsi_buf_sink, &buf, "x", 1),
                 BONSAI_ERR_INVALID_STATE, "before the header");
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_buf_sink, &buf), 0);
    assert_error(bsi_gguf_writer_add_u32(w, "late", 1), BONSAI_ERR_INVALID_STATE, "after");
    assert_error(bsi_gguf_writer_finish(w), BONSAI_ERR_INVALID_STATE, "missing");
    uint8_t block[19] = {0};
    assert_error(bsi_gguf_writer_write_data(w, bsi_buf_sink, &buf, block, 19),
                 BONSAI_ERR_INVALID_ARGUMENT, "more data");
    bsi_gguf_writer_free(w);
    bsi_buf_free(&buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_v3),        cmocka_unit_test(test_round_trip_v2),
        cmocka_unit_test(test_round_trip_alignment), cmocka_unit_test(test_copy_is_identical),
        cmocka_unit_test(test_file_and_public_api),  cmocka_unit_test(test_writer_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
