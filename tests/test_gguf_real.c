/* The GGUF reader on real files nobody on this project wrote (../shared/data). */
#include "test_util.h"

#include <math.h>

static bonsai_model *load(const char *name, bool use_mmap)
{
    const char *path = test_data(name);
    bonsai_model_params p;
    bonsai_model_params_init(&p);
    p.use_mmap = use_mmap;
    bonsai_model *m = NULL;
    bonsai_status st = bonsai_model_load(path, &p, &m);
    if (st) fail_msg("loading %s: %s", path, bonsai_last_error());
    return m;
}

static const bonsai_value *get(const bonsai_model *m, const char *key)
{
    const bonsai_value *v = NULL;
    if (bonsai_model_meta_get(m, key, &v)) fail_msg("%s: %s", key, bonsai_last_error());
    return v;
}

static void check_hyllama(bool use_mmap)
{
    bonsai_model *m = load("hyllama-dummy.gguf", use_mmap);
    assert_int_equal(bonsai_model_gguf_version(m), 3);
    assert_int_equal(bonsai_model_meta_count(m), 15);
    assert_int_equal(bonsai_model_tensor_count(m), 10);
    assert_string_equal(bonsai_model_architecture(m), "");

    uint8_t u8;
    int8_t i8;
    uint16_t u16;
    int16_t i16;
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    bool b;
    assert_int_equal(bonsai_value_get_u8(get(m, "some.parameter.uint8"), &u8), 0);
    assert_int_equal(u8, 0x12);
    assert_int_equal(bonsai_value_get_i8(get(m, "some.parameter.int8"), &i8), 0);
    assert_int_equal(i8, -0x13);
    assert_int_equal(bonsai_value_get_u16(get(m, "some.parameter.uint16"), &u16), 0);
    assert_int_equal(u16, 0x1234);
    assert_int_equal(bonsai_value_get_i16(get(m, "some.parameter.int16"), &i16), 0);
    assert_int_equal(i16, -0x1235);
    assert_int_equal(bonsai_value_get_u32(get(m, "some.parameter.uint32"), &u32), 0);
    assert_int_equal(u32, 0x12345678u);
    assert_int_equal(bonsai_value_get_i32(get(m, "some.parameter.int32"), &i32), 0);
    assert_int_equal(i32, -0x12345679);
    assert_int_equal(bonsai_value_get_f32(get(m, "some.parameter.float32"), &f32), 0);
    assert_true(f32 == 0.123456789f);
    assert_int_equal(bonsai_value_get_u64(get(m, "some.parameter.uint64"), &u64), 0);
    assert_true(u64 == 0x123456789abcdef0ull);
    assert_int_equal(bonsai_value_get_i64(get(m, "some.parameter.int64"), &i64), 0);
    assert_true(i64 == -0x123456789abcdef1ll);
    assert_int_equal(bonsai_value_get_f64(get(m, "some.parameter.float64"), &f64), 0);
    assert_true(f64 == 0.1234567890123456789);
    assert_int_equal(bonsai_value_get_bool(get(m, "some.parameter.bool"), &b), 0);
    assert_true(b);
    const char *s;
    uint64_t len;
    assert_int_equal(bonsai_value_get_string(get(m, "some.parameter.string"), &s, &len), 0);
    assert_string_equal(s, "hello world");
    assert_int_equal(len, 11);

    /* exact getters refuse other types; converting getters widen */
    assert_error(bonsai_value_get_u32(get(m, "some.parameter.int32"), &u32),
                 BONSAI_ERR_TYPE_MISMATCH, "i32");
    assert_error(bonsai_value_get_string(get(m, "some.parameter.bool"), &s, &len),
                 BONSAI_ERR_TYPE_MISMATCH, "bool");
    assert_int_equal(bonsai_value_to_i64(get(m, "some.parameter.int16"), &i64), 0);
    assert_true(i64 == -0x1235);
    assert_error(bonsai_value_to_u64(get(m, "some.parameter.int8"), &u64), BONSAI_ERR_OUT_OF_RANGE,
                 "negative");
    assert_int_equal(bonsai_value_to_i64(get(m, "some.parameter.uint64"), &i64), 0);
    assert_true(i64 == 0x123456789abcdef0ll);
    assert_int_equal(bonsai_value_to_f64(get(m, "some.parameter.float32"), &f64), 0);
    assert_true(f64 == (double)0.123456789f);
    assert_error(bonsai_value_to_f64(get(m, "some.parameter.string"), &f64),
                 BONSAI_ERR_TYPE_MISMATCH, "string");

    /* arrays */
    bonsai_value_type et;
    uint64_t n;
    const bonsai_value *a16 = get(m, "some.parameter.arr.i16");
    assert_int_equal(bonsai_value_type_of(a16), BONSAI_VALUE_ARRAY);
    assert_int_equal(bonsai_value_array_info(a16, &et, &n), 0);
    assert_int_equal(et, BONSAI_VALUE_I16);
    assert_int_equal(n, 4);
    int16_t v16[4] = {0};
    assert_int_equal(bonsai_value_array_copy(a16, BONSAI_VALUE_I16, 0, 4, v16, sizeof v16), 0);
    for (int i = 0; i < 4; i++) assert_int_equal(v16[i], i + 1);
    assert_int_equal(bonsai_value_array_copy(a16, BONSAI_VALUE_I16, 3, 1, v16, sizeof v16), 0);
    assert_int_equal(v16[0], 4);
    assert_error(bonsai_value_array_copy(a16, BONSAI_VALUE_I16, 3, 2, v16, sizeof v16),
                 BONSAI_ERR_OUT_OF_RANGE, "elements");
    assert_error(bonsai_value_array_copy(a16, BONSAI_VALUE_I32, 0, 1, v16, sizeof v16),
                 BONSAI_ERR_TYPE_MISMATCH, "i32");
    assert_error(bonsai_value_array_copy(a16, BONSAI_VALUE_I16, 0, 4, v16, 7),
                 BONSAI_ERR_INVALID_ARGUMENT, "bytes");

    const bonsai_value *af = get(m, "some.parameter.arr.f32");
    float vf[3];
    assert_int_equal(bonsai_value_array_copy(af, BONSAI_VALUE_F32, 0, 3, vf, sizeof vf), 0);
    assert_true(vf[0] == 3.145f && vf[1] == 2.718f && vf[2] == 1.414f);

    const bonsai_value *as = get(m, "some.parameter.arr.str");
    const char *expect[] = {"hello", "world", "!"};
    assert_int_equal(bonsai_value_array_info(as, &et, &n), 0);
    assert_int_equal(et, BONSAI_VALUE_STRING);
    assert_int_equal(n, 3);
    for (uint64_t i = 0; i < n; i++) {
        assert_int_equal(bonsai_value_array_string(as, i, &s, &len), 0);
        assert_string_equal(s, expect[i]);
        assert_int_equal(len, strlen(expect[i]));
    }
    assert_error(bonsai_value_array_string(as, 3, &s, &len), BONSAI_ERR_OUT_OF_RANGE, "array");
    const bonsai_value *sub;
    assert_error(bonsai_value_array_array(as, 0, &sub), BONSAI_ERR_TYPE_MISMATCH, "array");

    /* iteration in file order */
    const char *key;
    assert_int_equal(bonsai_model_meta_at(m, 0, &key, NULL), 0);
    assert_string_equal(key, "some.parameter.uint8");
    assert_int_equal(bonsai_model_meta_at(m, 14, &key, NULL), 0);
    assert_string_equal(key, "some.parameter.arr.str");
    assert_error(bonsai_model_meta_at(m, 15, &key, NULL), BONSAI_ERR_OUT_OF_RANGE, "15");
    const bonsai_value *v;
    assert_error(bonsai_model_meta_get(m, "no.such.key", &v), BONSAI_ERR_NOT_FOUND, "no.such.key");

    /* tensors: tensor_i holds the value 100 + i everywhere */
    static const struct {
        uint32_t n_dims;
        uint64_t dims[4];
    } shapes[10] = {
        {4, {7, 8, 6, 4}}, {4, {7, 3, 10, 2}}, {3, {8, 1, 10, 1}}, {4, {7, 1, 7, 3}},
        {1, {2, 1, 1, 1}}, {1, {8, 1, 1, 1}},  {1, {3, 1, 1, 1}},  {3, {4, 8, 6, 1}},
        {2, {3, 3, 1, 1}}, {3, {10, 8, 4, 1}},
    };
    FILE *f = fopen(test_data("hyllama-dummy.gguf"), "rb");
    assert_non_null(f);
    for (uint64_t i = 0; i < 10; i++) {
        bonsai_tensor_info t = {.struct_size = sizeof t};
        assert_int_equal(bonsai_model_tensor_at(m, i, &t), 0);
        char name[32];
        snprintf(name, sizeof name, "tensor_%u", (unsigned)i);
        assert_string_equal(t.name, name);
        assert_int_equal(t.type, BONSAI_TENSOR_F32);
        assert_int_equal(t.n_dims, shapes[i].n_dims);
        uint64_t ne = 1;
        for (int d = 0; d < 4; d++) {
            assert_int_equal(t.dims[d], shapes[i].dims[d]);
            ne *= t.dims[d];
        }
        assert_int_equal(t.n_elements, ne);
        assert_int_equal(t.n_bytes, 4 * ne);
        assert_int_equal(t.file_offset % 32, 0);
        uint64_t idx;
        assert_int_equal(bonsai_model_tensor_find(m, name, &idx), 0);
        assert_int_equal(idx, i);
        float first, last;
        assert_int_equal(fseek(f, (long)t.file_offset, SEEK_SET), 0);
        assert_int_equal(fread(&first, 4, 1, f), 1);
        assert_int_equal(fseek(f, (long)(t.file_offset + t.n_bytes - 4), SEEK_SET), 0);
        assert_int_equal(fread(&last, 4, 1, f), 1);
        assert_true(first == 100.0f + (float)i && last == first);
    }
    fclose(f);
    uint64_t idx;
    assert_error(bonsai_model_tensor_find(m, "tensor_10", &idx), BONSAI_ERR_NOT_FOUND, "tensor_10");
    bonsai_tensor_info t = {.struct_size = sizeof t};
    assert_error(bonsai_model_tensor_at(m, 10, &t), BONSAI_ERR_OUT_OF_RANGE, "10");
    assert_int_equal(bonsai_model_n_params(m), 1344 + 420 + 80 + 147 + 2 + 8 + 3 + 192 + 9 + 320);
    bonsai_model_free(m);
}

static void test_hyllama_mmap(void **state)
{
    (void)state;
    check_hyllama(true);
}

static void test_hyllama_read(void **state)
{
    (void)state;
    check_hyllama(false);
}

static void test_gpt2_vocab(void **state)
{
    (void)state;
    bonsai_model *m = load("ggml-vocab-gpt-2.gguf", true);
    assert_int_equal(bonsai_model_tensor_count(m), 0);
    assert_int_equal(bonsai_model_meta_count(m), 16);
    assert_string_equal(bonsai_model_architecture(m), "gpt2");
    assert_int_equal(bonsai_model_n_vocab(m), 50257);

    const bonsai_value *tokens = get(m, "tokenizer.ggml.tokens");
    bonsai_value_type et;
    uint64_t n;
    const char *s;
    uint64_t len;
    assert_int_equal(bonsai_value_array_info(tokens, &et, &n), 0);
    assert_int_equal(et, BONSAI_VALUE_STRING);
    assert_int_equal(n, 50257);
    assert_int_equal(bonsai_value_array_string(tokens, 0, &s, &len), 0);
    assert_string_equal(s, "!");
    assert_int_equal(bonsai_value_array_string(tokens, 1, &s, &len), 0);
    assert_string_equal(s, "\"");
    assert_int_equal(bonsai_value_array_string(tokens, 50255, &s, &len), 0);
    assert_string_equal(s, "\xc4\xa0gazed"); /* "Ġgazed" */
    assert_int_equal(len, 7);
    assert_int_equal(bonsai_value_array_string(tokens, 50256, &s, &len), 0);
    assert_string_equal(s, "<|endoftext|>");

    const bonsai_value *merges = get(m, "tokenizer.ggml.merges");
    assert_int_equal(bonsai_value_array_info(merges, &et, &n), 0);
    assert_int_equal(et, BONSAI_VALUE_STRING);
    assert_int_equal(n, 50000);
    assert_int_equal(bonsai_value_array_string(merges, 0, &s, &len), 0);
    assert_string_equal(s, "\xc4\xa0 t"); /* "Ġ t" */
    assert_int_equal(bonsai_value_array_string(merges, 49999, &s, &len), 0);
    assert_string_equal(s, "\xc4\xa0g azed");

    const bonsai_value *types = get(m, "tokenizer.ggml.token_type");
    int32_t tt[2];
    assert_int_equal(bonsai_value_array_copy(types, BONSAI_VALUE_I32, 50255, 2, tt, sizeof tt), 0);
    assert_int_equal(tt[0], 1);
    assert_int_equal(tt[1], 3);
    uint32_t bos;
    assert_int_equal(bonsai_value_get_u32(get(m, "tokenizer.ggml.bos_token_id"), &bos), 0);
    assert_int_equal(bos, 50256);

    bonsai_model_hparams h = {.struct_size = sizeof h};
    assert_int_equal(bonsai_model_hparams_get(m, &h), 0);
    assert_int_equal(h.n_vocab, 50257);
    assert_int_equal(h.n_layer, 12);
    assert_int_equal(h.n_embd, 768);
    assert_int_equal(h.n_head, 12);
    assert_int_equal(h.n_ctx_train, 1024);
    bonsai_model_free(m);
}

static void test_stories260k(void **state)
{
    (void)state;
    bonsai_model *m = load("stories260K.gguf", true);
    assert_string_equal(bonsai_model_architecture(m), "llama");
    assert_int_equal(bonsai_model_meta_count(m), 19);
    assert_int_equal(bonsai_model_tensor_count(m), 48);
    assert_int_equal(bonsai_model_n_vocab(m), 512);
    assert_int_equal(bonsai_model_file_size(m), 1185376);

    static const char *const per_layer[] = {"attn_q",      "attn_k",    "attn_v",
                                            "attn_output", "attn_norm", "ffn_gate",
                                            "ffn_down",    "ffn_up",    "ffn_norm"};
    static const uint64_t layer_shape[][2] = {{64, 64},  {64, 32},  {64, 32},  {64, 64}, {64, 1},
                                              {64, 172}, {172, 64}, {64, 172}, {64, 1}};
    uint64_t total = 0;
    for (uint64_t i = 0; i < 48; i++) {
        bonsai_tensor_info t = {.struct_size = sizeof t};
        assert_int_equal(bonsai_model_tensor_at(m, i, &t), 0);
        assert_int_equal(t.type, BONSAI_TENSOR_F32);
        char expect[64];
        uint64_t d0, d1;
        if (i == 0 || i == 2) {
            snprintf(expect, sizeof expect, "%s", i ? "output.weight" : "token_embd.weight");
            d0 = 64, d1 = 512;
        } else if (i == 1) {
            snprintf(expect, sizeof expect, "output_norm.weight");
            d0 = 64, d1 = 1;
        } else {
            uint64_t l = (i - 3) / 9, k = (i - 3) % 9;
            snprintf(expect, sizeof expect, "blk.%u.%s.weight", (unsigned)l, per_layer[k]);
            d0 = layer_shape[k][0], d1 = layer_shape[k][1];
        }
        assert_string_equal(t.name, expect);
        assert_int_equal(t.n_dims, d1 == 1 ? 1 : 2);
        assert_int_equal(t.dims[0], d0);
        assert_int_equal(t.dims[1], d1);
        assert_int_equal(t.n_bytes, 4 * d0 * d1);
        total += d0 * d1;
    }
    assert_int_equal(bonsai_model_n_params(m), total);
    bonsai_tensor_info last = {.struct_size = sizeof last};
    assert_int_equal(bonsai_model_tensor_at(m, 47, &last), 0);
    assert_int_equal(last.file_offset + last.n_bytes, bonsai_model_file_size(m));

    bonsai_model_hparams h = {.struct_size = sizeof h};
    assert_int_equal(bonsai_model_hparams_get(m, &h), 0);
    assert_int_equal(h.n_layer, 5);
    assert_int_equal(h.n_embd, 64);
    assert_int_equal(h.n_ff, 172);
    assert_int_equal(h.n_head, 8);
    assert_int_equal(h.n_head_kv, 4);
    assert_int_equal(h.head_dim_k, 8);
    assert_int_equal(h.n_rot, 8);
    assert_int_equal(h.n_ctx_train, 2048);
    assert_true(fabsf(h.rms_eps - 1e-5f) < 1e-9f);
    assert_int_equal(h.rope_scaling_yarn, 0);

    /* a caller built against an older, smaller struct gets only its fields written */
    unsigned char small[sizeof(bonsai_model_hparams)];
    memset(small, 0xAB, sizeof small);
    ((bonsai_model_hparams *)small)->struct_size = 3 * sizeof(uint32_t);
    assert_int_equal(bonsai_model_hparams_get(m, (bonsai_model_hparams *)small), 0);
    assert_int_equal(((bonsai_model_hparams *)small)->n_vocab, 512);
    assert_int_equal(((bonsai_model_hparams *)small)->n_ctx_train, 2048);
    for (size_t i = 3 * sizeof(uint32_t); i < sizeof small; i++) assert_int_equal(small[i], 0xAB);
    bonsai_model_free(m);
}

static bool count_progress(float progress, void *user_data)
{
    float *last = user_data;
    assert_true(progress >= *last && progress <= 1.0f);
    *last = progress;
    return true;
}

static void test_progress_reaches_one(void **state)
{
    (void)state;
    const char *path = test_data("stories260K.gguf");
    for (int mmap = 0; mmap < 2; mmap++) {
        bonsai_model_params p;
        bonsai_model_params_init(&p);
        float last = 0;
        p.use_mmap = mmap;
        p.progress = count_progress;
        p.progress_user_data = &last;
        bonsai_model *m;
        assert_int_equal(bonsai_model_load(path, &p, &m), 0);
        assert_true(last == 1.0f);
        bonsai_model_free(m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hyllama_mmap),         cmocka_unit_test(test_hyllama_read),
        cmocka_unit_test(test_gpt2_vocab),           cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_progress_reaches_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
