/*
 * GGUF v3 writer (internal): used by tests, the quantizer and the test-model generator. Metadata
 * and tensor infos are collected first; then the header is written and tensor data is streamed in
 * declaration order, so writing a multi-gigabyte model needs no more memory than one tensor chunk.
 */
#ifndef BONSAI_GGUF_WRITER_H
#define BONSAI_GGUF_WRITER_H

#include "internal.h"

#include <stdio.h>

/* Where bytes go: returns BONSAI_OK or an error status (with bsi_fail called). */
typedef bonsai_status (*bsi_sink_fn)(void *ctx, const void *data, size_t n);

/* A growable in-memory byte buffer, usable as a sink. */
typedef struct bsi_buf {
    uint8_t *data;
    size_t len, cap;
} bsi_buf;
bonsai_status bsi_buf_sink(void *buf, const void *data, size_t n);
void bsi_buf_free(bsi_buf *b);
/* A sink writing to a FILE *. */
bonsai_status bsi_file_sink(void *file, const void *data, size_t n);

typedef struct bsi_gguf_writer bsi_gguf_writer;

/* alignment: a power of two (0 = the default 32; other values are recorded as general.alignment).
 */
bsi_gguf_writer *bsi_gguf_writer_new(uint32_t alignment);
void bsi_gguf_writer_free(bsi_gguf_writer *w);
/* The version number written (2 or 3; the layouts are identical). */
void bsi_gguf_writer_set_version(bsi_gguf_writer *w, uint32_t version);

/* Metadata. Keys must be unique (BONSAI_ERR_DUPLICATE otherwise). */
bonsai_status bsi_gguf_writer_add_value(bsi_gguf_writer *w, const char *key,
                                        const bonsai_value *value);
bonsai_status bsi_gguf_writer_add_scalar(bsi_gguf_writer *w, const char *key,
                                         bonsai_value_type type, const void *value);
bonsai_status bsi_gguf_writer_add_u32(bsi_gguf_writer *w, const char *key, uint32_t v);
bonsai_status bsi_gguf_writer_add_f32(bsi_gguf_writer *w, const char *key, float v);
bonsai_status bsi_gguf_writer_add_string(bsi_gguf_writer *w, const char *key, const char *s);
/* An array of numbers or bools, `count` elements of `elem_type` at `data`. */
bonsai_status bsi_gguf_writer_add_array(bsi_gguf_writer *w, const char *key,
                                        bonsai_value_type elem_type, uint64_t count,
                                        const void *data);
bonsai_status bsi_gguf_writer_add_string_array(bsi_gguf_writer *w, const char *key, uint64_t count,
                                               const char *const *strs);

/* Declare the next tensor; data follows in declaration order. */
bonsai_status bsi_gguf_writer_add_tensor(bsi_gguf_writer *w, const char *name, uint32_t type,
                                         uint32_t n_dims, const uint64_t *ne);
uint64_t bsi_gguf_writer_tensor_bytes(const bsi_gguf_writer *w, uint64_t index);

/* Header, metadata, tensor infos and padding up to the data section. */
bonsai_status bsi_gguf_writer_write_header(bsi_gguf_writer *w, bsi_sink_fn sink, void *ctx);
/* The next `n` bytes of tensor data (a tensor may come in several chunks); padding between
 * tensors is inserted automatically. */
bonsai_status bsi_gguf_writer_write_data(bsi_gguf_writer *w, bsi_sink_fn sink, void *ctx,
                                         const void *data, size_t n);
/* Checks that every tensor's data was written. */
bonsai_status bsi_gguf_writer_finish(bsi_gguf_writer *w);

#endif
