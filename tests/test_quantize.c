/* The reference Q1_0 quantizer (bit-exact on hand-checked vectors) and whole-file conversion. */
#include "test_util.h"

#include "gguf.h"
#include "gguf_writer.h"
#include "half.h"
#include "quantize.h"

#include <math.h>
#include <unistd.h>

static uint16_t scale_of(const uint8_t *blk)
{
    uint16_t d;
    memcpy(&d, blk, 2);
    return d;
}

static void test_signs(void **state)
{
    (void)state;
    float x[128];
    for (int j = 0; j < 128; j++) x[j] = (j % 3 == 0) ? -0.5f : 0.5f;
    x[5] = 0.0f;  /* +0: bit 1 */
    x[6] = -0.0f; /* -0: bit 1 too, since -0 >= 0 */
    x[9] = -0.0f; /* j % 3 == 0 position, would be negative */
    uint8_t out[18];
    bsi_quantize_q1_0(x, 128, out);
    for (int j = 0; j < 128; j++) {
        int bit = (out[2 + j / 8] >> (j % 8)) & 1;
        int expect = j == 5 || j == 6 || j == 9 ? 1 : j % 3 != 0;
        if (bit != expect) fail_msg("weight %d: bit %d, expected %d", j, bit, expect);
    }
    /* first byte by hand: j = 0..7 -> signs - + + - + + - + with j = 5, 6 forced to +:
     * bits (LSB = j 0): 0 1 1 0 1 1 1 1 -> 0xF6 */
    assert_int_equal(out[2], 0xF6);
}

static void test_scale_rounding(void **state)
{
    (void)state;
    float x[128];
    uint8_t out[18];
    /* mean |x| = 0.5 exactly: fp16 0x3800 */
    for (int j = 0; j < 128; j++) x[j] = j & 1 ? 0.5f : -0.5f;
    bsi_quantize_q1_0(x, 128, out);
    assert_int_equal(scale_of(out), 0x3800);
    /* mean 1 + 2^-11: a tie between fp16 1.0 (0x3C00) and 1 + 2^-10 (0x3C01): to even, 0x3C00 */
    for (int j = 0; j < 128; j++) x[j] = 1.0f + 0x1p-11f;
    bsi_quantize_q1_0(x, 128, out);
    assert_int_equal(scale_of(out), 0x3C00);
    /* mean 1 + 3 * 2^-11: a tie between 0x3C01 and 0x3C02: to even, 0x3C02 */
    for (int j = 0; j < 128; j++) x[j] = -(1.0f + 3 * 0x1p-11f);
    bsi_quantize_q1_0(x, 128, out);
    assert_int_equal(scale_of(out), 0x3C02);
    for (int k = 0; k < 16; k++) assert_int_equal(out[2 + k], 0); /* all negative */
    /* mean just above the tie rounds up */
    for (int j = 0; j < 128; j++) x[j] = 1.0f + 0x1p-11f + (j == 0 ? 0x1p-16f : 0.0f);
    bsi_quantize_q1_0(x, 128, out);
    assert_int_equal(scale_of(out), 0x3C01);
    /* all zeros: scale 0, every bit set */
    memset(x, 0, sizeof x);
    bsi_quantize_q1_0(x, 128, out);
    assert_int_equal(scale_of(out), 0);
    for (int k = 0; k < 16; k++) assert_int_equal(out[2 + k], 0xFF);
    /* a natively binary row (every weight +-s) is reproduced exactly */
    for (int j = 0; j < 128; j++) x[j] = (j * 7) % 5 < 2 ? -0.013671875f : 0.013671875f;
    bsi_quantize_q1_0(x, 128, out);
    float d = bsi_fp16_to_fp32(scale_of(out));
    assert_true(d == 0.013671875f);
    for (int j = 0; j < 128; j++) {
        int bit = (out[2 + j / 8] >> (j % 8)) & 1;
        assert_true((bit ? d : -d) == x[j]);
    }
}

/* Two blocks: each gets its own scale from its own 128 values, summed in index order. */
static void test_blocks_independent(void **state)
{
    (void)state;
    float x[256];
    for (int j = 0; j < 256; j++) x[j] = j < 128 ? 2.0f : -0.25f;
    uint8_t out[36];
    bsi_quantize_q1_0(x, 256, out);
    assert_int_equal(scale_of(out), 0x4000);      /* 2.0 */
    assert_int_equal(scale_of(out + 18), 0x3400); /* 0.25 */
}

static void write_model(const char *path, bool with_narrow)
{
    bsi_gguf_writer *w = bsi_gguf_writer_new(0);
    assert_int_equal(bsi_gguf_writer_add_string(w, "general.architecture", "testarch"), 0);
    const char *toks[] = {"a", "b"};
    assert_int_equal(bsi_gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", 2, toks), 0);
    const uint64_t mat[] = {256, 3}, norm[] = {256}, narrow[] = {64, 2}, f16m[] = {128, 2};
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "m.weight", BONSAI_TENSOR_F32, 2, mat), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "n.weight", BONSAI_TENSOR_F32, 1, norm), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "h.weight", BONSAI_TENSOR_F16, 2, f16m), 0);
    if (with_narrow)
        assert_int_equal(bsi_gguf_writer_add_tensor(w, "x.weight", BONSAI_TENSOR_F32, 2, narrow),
                         0);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_file_sink, f), 0);
    float m[768], n[256], x[128];
    uint16_t h[256];
    for (int i = 0; i < 768; i++) m[i] = sinf((float)i) * 0.1f;
    for (int i = 0; i < 256; i++) n[i] = 1.0f + (float)i / 256.0f;
    for (int i = 0; i < 256; i++) h[i] = bsi_fp32_to_fp16(cosf((float)i));
    for (int i = 0; i < 128; i++) x[i] = (float)i;
    assert_int_equal(bsi_gguf_writer_write_data(w, bsi_file_sink, f, m, sizeof m), 0);
    assert_int_equal(bsi_gguf_writer_write_data(w, bsi_file_sink, f, n, sizeof n), 0);
    assert_int_equal(bsi_gguf_writer_write_data(w, bsi_file_sink, f, h, sizeof h), 0);
    if (with_narrow)
        assert_int_equal(bsi_gguf_writer_write_data(w, bsi_file_sink, f, x, sizeof x), 0);
    assert_int_equal(bsi_gguf_writer_finish(w), 0);
    bsi_gguf_writer_free(w);
    assert_int_equal(fclose(f), 0);
}

static void test_quantize_file(void **state)
{
    (void)state;
    char in[] = "/tmp/bonsai-qin-XXXXXX", out[64];
    int fd = mkstemp(in);
    assert_true(fd >= 0);
    close(fd);
    snprintf(out, sizeof out, "%s.out", in);
    write_model(in, true);

    uint64_t n = 0;
    bsi_quantize_options opt = {0};
    assert_error(bsi_quantize_file(in, out, &opt, &n), BONSAI_ERR_UNSUPPORTED, "'x.weight'");
    assert_int_equal(access(out, F_OK), -1); /* nothing left behind */
    opt.keep_unconvertible = true;
    assert_int_equal(bsi_quantize_file(in, out, &opt, &n), 0);
    assert_int_equal(n, 2);

    bonsai_model *m;
    assert_int_equal(bonsai_model_load(out, NULL, &m), 0);
    assert_string_equal(bonsai_model_architecture(m), "testarch");
    assert_int_equal(bonsai_model_n_vocab(m), 2);
    const uint32_t types[] = {BONSAI_TENSOR_Q1_0, BONSAI_TENSOR_F32, BONSAI_TENSOR_Q1_0,
                              BONSAI_TENSOR_F32};
    FILE *f = fopen(out, "rb");
    for (uint64_t i = 0; i < 4; i++) {
        bonsai_tensor_info t = {.struct_size = sizeof t};
        assert_int_equal(bonsai_model_tensor_at(m, i, &t), 0);
        assert_int_equal(t.type, types[i]);
        if (i == 0) { /* rows quantized exactly by the reference quantizer */
            float row[256];
            uint8_t expect[36], got[36];
            for (int r = 0; r < 3; r++) {
                for (int j = 0; j < 256; j++) row[j] = sinf((float)(r * 256 + j)) * 0.1f;
                bsi_quantize_q1_0(row, 256, expect);
                assert_int_equal(fseek(f, (long)t.file_offset + 36 * r, SEEK_SET), 0);
                assert_int_equal(fread(got, 1, 36, f), 36);
                assert_memory_equal(got, expect, 36);
            }
        }
    }
    fclose(f);
    bonsai_model_free(m);
    unlink(out);

    /* writing over the input is safe: the result replaces it only when complete */
    assert_int_equal(bsi_quantize_file(in, in, &opt, &n), 0);
    assert_int_equal(bonsai_model_load(in, NULL, &m), 0);
    bonsai_model_free(m);
    unlink(in);
    assert_error(bsi_quantize_file("/nonexistent.gguf", out, &opt, &n), BONSAI_ERR_IO,
                 "nonexistent");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signs),
        cmocka_unit_test(test_scale_rounding),
        cmocka_unit_test(test_blocks_independent),
        cmocka_unit_test(test_quantize_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
