/*
 * A Q1_0 variant's own activation quantizer (bsi_q1_kernels.quantize) against bsi_q8_quantize,
 * the reference whose values the kernels' error bounds assume: the bytes, scales and sums must
 * be equal. Shared by test_q1_kernels (the variants this CPU runs) and test_q1_emulated (the
 * SIMDe builds). Include after cmocka.h and q1.h.
 */
#ifndef BONSAI_TEST_QUANTIZER_CHECK_H
#define BONSAI_TEST_QUANTIZER_CHECK_H

#include <stdlib.h>
#include <string.h>

/* Random blocks of many scales (zero, tiny, large), and exact .5 products; uniform() gives values
 * in (-1, 1). */
static void check_quantizer(const bsi_q1_kernels *k, float (*uniform)(void))
{
    enum { COLS = 128 * 24, TOK = 3 };
    static float x[TOK * COLS];
    for (int i = 0; i < TOK * COLS; i++) {
        int blk = (i / 128) % 8;
        float scale = blk == 0 ? 0.0f : blk == 1 ? 1e-35f : blk == 2 ? 1e4f : (float)blk / 3.0f;
        x[i] = scale * uniform();
    }
    for (int j = 0; j < 128; j++) x[128 * 3 + j] = (float)(j - 64) / 64.0f; /* .5 products */
    size_t bytes = bsi_q8_act_bytes(COLS, TOK, 0);
    unsigned char *ra = malloc(bytes), *va = malloc(bytes);
    assert_true(ra && va);
    memset(ra, 0x5a, bytes);
    memset(va, 0xa5, bytes); /* poisoned */
    bsi_q8_act r, v;
    bsi_q8_act_init(&r, ra, COLS, TOK, 0);
    bsi_q8_act_init(&v, va, COLS, TOK, 0);
    bsi_q8_quantize(&r, x, 0, TOK);
    k->quantize(&v, x, 0, TOK);
    assert_memory_equal(r.q, v.q, (size_t)TOK * COLS);
    assert_memory_equal(r.d, v.d, sizeof(float) * TOK * (COLS / 128));
    assert_memory_equal(r.sum, v.sum, sizeof(int32_t) * TOK * (COLS / 128));
    free(ra);
    free(va);
}

#endif
