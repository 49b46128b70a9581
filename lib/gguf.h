/* GGUF v2/v3 reader: parses and validates a whole file held in memory (mapped or read). */
#ifndef BONSAI_GGUF_H
#define BONSAI_GGUF_H

#include "internal.h"

#define BSI_GGUF_MAX_DIMS          4
#define BSI_GGUF_DEFAULT_ALIGNMENT 32
#define BSI_GGUF_MAX_NESTING       8     /* arrays of arrays deeper than this are refused */
#define BSI_GGUF_MAX_KEY_LEN       65535 /* the GGUF specification's limit */
#define BSI_GGUF_MAX_NAME_LEN      255   /* tensor names (ggml itself allows 63) */
#define BSI_GGUF_ABSURD            ((uint64_t)1 << 48) /* no count or length in a real file comes near */

typedef struct bsi_str {
    const char *s; /* NUL-terminated copy */
    uint64_t len;
} bsi_str;

/* A metadata value (the public opaque bonsai_value). */
struct bonsai_value {
    uint32_t type;      /* bonsai_value_type */
    uint32_t elem_type; /* arrays: element type */
    uint64_t count;     /* strings: length in bytes; arrays: number of elements */
    union {
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
        const char *str;     /* STRING: NUL-terminated copy */
        const uint8_t *raw;  /* array of scalars: the elements in the file (unaligned) */
        const bsi_str *strs; /* array of strings */
        const struct bonsai_value *arrays; /* array of arrays */
    } v;
};

typedef struct bsi_gguf_kv {
    const char *key;
    bonsai_value value;
} bsi_gguf_kv;

typedef struct bsi_gguf_tensor {
    const char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[BSI_GGUF_MAX_DIMS]; /* ne[0] fastest; unused dims are 1 */
    uint64_t n_elements;
    uint64_t n_bytes;
    uint64_t offset; /* relative to the data section */
} bsi_gguf_tensor;

typedef struct bsi_gguf bsi_gguf;
struct bsi_gguf {
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv;
    bsi_gguf_kv *kv;
    uint64_t n_tensors;
    bsi_gguf_tensor *tensors;
    uint64_t data_offset; /* absolute offset of the data section */
    const uint8_t *base;  /* the file's bytes, not owned */
    uint64_t size;
    /* private */
    struct bsi_arena *arena;
    uint64_t *kv_index, *tensor_index; /* open-addressing hash tables of (position + 1) */
    uint64_t kv_index_mask, tensor_index_mask;
};

/*
 * Parse and validate `size` bytes at `data` (the whole file). `label` names the file in error
 * messages. The buffer must outlive the result: scalar arrays point into it.
 */
bonsai_status bsi_gguf_parse(const uint8_t *data, uint64_t size, const char *label, bsi_gguf **out);
void bsi_gguf_free(bsi_gguf *g);

/* Lookups: the entry's position, or -1. */
int64_t bsi_gguf_find_key(const bsi_gguf *g, const char *key);
int64_t bsi_gguf_find_tensor(const bsi_gguf *g, const char *name);

/* Value of `key` or NULL. */
const bonsai_value *bsi_gguf_get(const bsi_gguf *g, const char *key);

/* Pointer to the data of tensor `i` inside the file buffer. */
static inline const void *bsi_gguf_tensor_data(const bsi_gguf *g, uint64_t i)
{
    return g->base + g->data_offset + g->tensors[i].offset;
}

#endif
