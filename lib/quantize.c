#include "quantize.h"

#include "file.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "half.h"
#include "types.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bsi_quantize_q1_0(const float *x, int64_t n, uint8_t *out)
{
    for (int64_t b = 0; b < n / 128; b++, x += 128, out += 18) {
        float sum = 0;
        for (int j = 0; j < 128; j++) sum += fabsf(x[j]);
        uint16_t d = bsi_fp32_to_fp16(sum / 128.0f);
        memcpy(out, &d, 2);
        for (int k = 0; k < 16; k++) { /* branch-free: signs of random data mispredict */
            unsigned v = 0;
            for (int j = 0; j < 8; j++) v |= (unsigned)(x[8 * k + j] >= 0.0f) << j;
            out[2 + k] = (uint8_t)v;
        }
    }
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* One row of an F32/F16/BF16 tensor as f32. */
static void row_to_f32(uint32_t type, const uint8_t *src, int64_t n, float *dst)
{
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        if (type == BONSAI_TENSOR_F32) {
            memcpy(&dst[i], src + 4 * i, 4);
            continue;
        }
        memcpy(&h, src + 2 * i, 2);
        dst[i] = type == BONSAI_TENSOR_F16 ? bsi_fp16_to_fp32(h) : bf16_to_f32(h);
    }
}

static bool convertible(const bsi_gguf_tensor *t)
{
    return t->n_dims >= 2 && t->ne[0] % 128 == 0 &&
           (t->type == BONSAI_TENSOR_F32 || t->type == BONSAI_TENSOR_F16 ||
            t->type == BONSAI_TENSOR_BF16);
}

/* Decides each tensor's output type; fails on a matrix it cannot convert unless told to keep. */
static bonsai_status plan(const bsi_gguf *g, const char *path, const bsi_quantize_options *opt,
                          uint32_t *out_type, uint64_t *n_converted)
{
    *n_converted = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const bsi_gguf_tensor *t = &g->tensors[i];
        out_type[i] = t->type;
        if (convertible(t)) {
            out_type[i] = BONSAI_TENSOR_Q1_0;
            (*n_converted)++;
        } else if (t->n_dims >= 2 && t->type != BONSAI_TENSOR_Q1_0 && !opt->keep_unconvertible) {
            const bsi_type_traits *tt = bsi_type_traits_of(t->type);
            return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                            "%s: tensor '%s' (%s, rows of %" PRIu64
                            ") cannot be converted to Q1_0: %s (use --keep to copy it as it is)",
                            path, t->name, tt->name, t->ne[0],
                            t->ne[0] % 128 ? "rows must be a multiple of 128 values"
                                           : "only F32, F16 and BF16 matrices are converted");
        }
    }
    return BONSAI_OK;
}

static bonsai_status write_tensors(const bsi_gguf *g, const uint32_t *out_type, bsi_gguf_writer *w,
                                   FILE *f, const bsi_quantize_options *opt)
{
    float *row = NULL;
    uint8_t *blocks = NULL;
    bonsai_status st = BONSAI_OK;
    for (uint64_t i = 0; i < g->n_tensors && !st; i++) {
        const bsi_gguf_tensor *t = &g->tensors[i];
        const uint8_t *src = bsi_gguf_tensor_data(g, i);
        if (out_type[i] == t->type) {
            st = bsi_gguf_writer_write_data(w, bsi_file_sink, f, src, (size_t)t->n_bytes);
        } else {
            int64_t n = (int64_t)t->ne[0], n_rows = (int64_t)(t->n_elements / t->ne[0]);
            size_t in_row = (size_t)(t->n_bytes / (uint64_t)n_rows);
            size_t out_row = (size_t)(n / 128) * 18;
            float *r2 = bsi_realloc(row, (size_t)n * sizeof *row);
            uint8_t *b2 = bsi_realloc(blocks, out_row);
            if (r2) row = r2;
            if (b2) blocks = b2;
            if (!r2 || !b2) {
                st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
                break;
            }
            for (int64_t r = 0; r < n_rows && !st; r++) {
                row_to_f32(t->type, src + (size_t)r * in_row, n, row);
                bsi_quantize_q1_0(row, n, blocks);
                st = bsi_gguf_writer_write_data(w, bsi_file_sink, f, blocks, out_row);
            }
        }
        if (!st && opt->progress &&
            !opt->progress((float)(i + 1) / (float)g->n_tensors, opt->progress_user_data))
            st = bsi_fail(BONSAI_ERR_ABORTED, "quantization aborted");
    }
    free(row);
    free(blocks);
    return st;
}

bonsai_status bsi_quantize_file(const char *in_path, const char *out_path,
                                const bsi_quantize_options *opt, uint64_t *n_converted)
{
    bsi_quantize_options defaults = {0};
    if (!opt) opt = &defaults;
    bsi_file in;
    bsi_gguf *g = NULL;
    bsi_gguf_writer *w = NULL;
    uint32_t *out_type = NULL;
    bonsai_status st = bsi_file_open(in_path, true, NULL, NULL, &in);
    if (st) return st;
    if ((st = bsi_gguf_parse(in.data, in.size, in_path, &g))) goto done;
    out_type = bsi_calloc((size_t)g->n_tensors + 1, sizeof *out_type);
    if (!out_type) {
        st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    if ((st = plan(g, in_path, opt, out_type, n_converted))) goto done;

    w = bsi_gguf_writer_new(g->alignment == BSI_GGUF_DEFAULT_ALIGNMENT ? 0 : g->alignment);
    if (!w) {
        st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < g->n_kv && !st; i++)
        if (strcmp(g->kv[i].key, "general.alignment")) /* the writer sets it */
            st = bsi_gguf_writer_add_value(w, g->kv[i].key, &g->kv[i].value);
    for (uint64_t i = 0; i < g->n_tensors && !st; i++) {
        const bsi_gguf_tensor *t = &g->tensors[i];
        st = bsi_gguf_writer_add_tensor(w, t->name, out_type[i], t->n_dims, t->ne);
    }
    if (st) goto done;
    bsi_atomic_file out;
    if ((st = bsi_atomic_file_open(&out, out_path))) goto done;
    if (!(st = bsi_gguf_writer_write_header(w, bsi_file_sink, out.f)) &&
        !(st = write_tensors(g, out_type, w, out.f, opt)))
        st = bsi_gguf_writer_finish(w);
    st = bsi_atomic_file_close(&out, st);
done:
    bsi_gguf_writer_free(w);
    free(out_type);
    bsi_gguf_free(g);
    bsi_file_close(&in);
    return st;
}
