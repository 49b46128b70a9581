/*
 * libFuzzer target for the GGUF reader. Arbitrary bytes go through bsi_gguf_parse(); when the
 * reader accepts them, everything it returned is walked through the public value getters and every
 * tensor's first and last data byte is read, so that a length or pointer the reader got wrong
 * shows up under AddressSanitizer here rather than in a user's program. The invariants callers rely
 * on are checked too, and a broken one aborts (libFuzzer reports that as a crash).
 */
#include "gguf.h"
#include "types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_gguf: %s:%d: invariant failed: %s\n", __FILE__, __LINE__,        \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Reads go through a volatile sink so the compiler cannot drop them. */
static volatile uint8_t sink;

static void touch(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    if (!n) return;
    sink ^= b[0];
    sink ^= b[n - 1];
}

/* A NUL-terminated string of `len` bytes: every byte up to the terminator is readable. */
static void touch_string(const char *s, uint64_t len)
{
    CHECK(s != NULL);
    touch(s, len + 1);
    CHECK(s[len] == 0);
}

static bool ok(bonsai_status st)
{
    return st == BONSAI_OK;
}

/* Each exact getter succeeds exactly for its own type. */
static void check_getters(const bonsai_value *v, bonsai_value_type type)
{
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
    const char *s;
    CHECK(ok(bonsai_value_get_u8(v, &u8)) == (type == BONSAI_VALUE_U8));
    CHECK(ok(bonsai_value_get_i8(v, &i8)) == (type == BONSAI_VALUE_I8));
    CHECK(ok(bonsai_value_get_u16(v, &u16)) == (type == BONSAI_VALUE_U16));
    CHECK(ok(bonsai_value_get_i16(v, &i16)) == (type == BONSAI_VALUE_I16));
    CHECK(ok(bonsai_value_get_u32(v, &u32)) == (type == BONSAI_VALUE_U32));
    CHECK(ok(bonsai_value_get_i32(v, &i32)) == (type == BONSAI_VALUE_I32));
    CHECK(ok(bonsai_value_get_u64(v, &u64)) == (type == BONSAI_VALUE_U64));
    CHECK(ok(bonsai_value_get_i64(v, &i64)) == (type == BONSAI_VALUE_I64));
    CHECK(ok(bonsai_value_get_f32(v, &f32)) == (type == BONSAI_VALUE_F32));
    CHECK(ok(bonsai_value_get_f64(v, &f64)) == (type == BONSAI_VALUE_F64));
    CHECK(ok(bonsai_value_get_bool(v, &b)) == (type == BONSAI_VALUE_BOOL));
    if (type == BONSAI_VALUE_BOOL) sink ^= (uint8_t)b; /* UBSan checks the load of a bool */
    uint64_t len = 0;
    bonsai_status st = bonsai_value_get_string(v, &s, &len);
    CHECK(ok(st) == (type == BONSAI_VALUE_STRING));
    if (!st) touch_string(s, len);

    st = bonsai_value_to_i64(v, &i64);
    CHECK(st == BONSAI_OK || st == BONSAI_ERR_TYPE_MISMATCH || st == BONSAI_ERR_OUT_OF_RANGE);
    st = bonsai_value_to_u64(v, &u64);
    CHECK(st == BONSAI_OK || st == BONSAI_ERR_TYPE_MISMATCH || st == BONSAI_ERR_OUT_OF_RANGE);
    st = bonsai_value_to_f64(v, &f64);
    CHECK(st == BONSAI_OK || st == BONSAI_ERR_TYPE_MISMATCH);
}

/* Walks a value and everything inside it; `size` is the input size, which bounds every array. */
static void walk_value(const bonsai_value *v, int depth, size_t size)
{
    CHECK(depth < BSI_GGUF_MAX_NESTING);
    bonsai_value_type type = bonsai_value_type_of(v);
    CHECK((unsigned)type <= BONSAI_VALUE_F64);
    check_getters(v, type);

    bonsai_value_type elem;
    uint64_t count;
    bonsai_status st = bonsai_value_array_info(v, &elem, &count);
    CHECK(ok(st) == (type == BONSAI_VALUE_ARRAY));
    if (st) return;
    /* every element takes at least one byte of the file */
    CHECK(count <= size);

    uint32_t elem_size = bsi_value_type_size(elem);
    if (elem_size) {
        size_t n = (size_t)count * elem_size;
        uint8_t *dst = malloc(n ? n : 1);
        CHECK(dst != NULL);
        CHECK(bonsai_value_array_copy(v, elem, 0, count, dst, n) == BONSAI_OK);
        touch(dst, n);
        if (elem == BONSAI_VALUE_BOOL)
            for (uint64_t i = 0; i < count; i++) CHECK(dst[i] <= 1);
        /* the last element alone, an empty range at the end, and one past it */
        if (count)
            CHECK(bonsai_value_array_copy(v, elem, count - 1, 1, dst, elem_size) == BONSAI_OK);
        CHECK(bonsai_value_array_copy(v, elem, count, 0, dst, 0) == BONSAI_OK);
        CHECK(bonsai_value_array_copy(v, elem, count, 1, dst, n ? n : 1) ==
              BONSAI_ERR_OUT_OF_RANGE);
        bonsai_value_type other = elem == BONSAI_VALUE_U8 ? BONSAI_VALUE_I8 : BONSAI_VALUE_U8;
        CHECK(bonsai_value_array_copy(v, other, 0, count ? 1 : 0, dst, n ? n : 1) ==
              BONSAI_ERR_TYPE_MISMATCH);
        free(dst);
    } else if (elem == BONSAI_VALUE_STRING) {
        for (uint64_t i = 0; i < count; i++) {
            const char *s = NULL;
            uint64_t len = 0;
            CHECK(bonsai_value_array_string(v, i, &s, &len) == BONSAI_OK);
            touch_string(s, len);
        }
    } else {
        CHECK(elem == BONSAI_VALUE_ARRAY);
        for (uint64_t i = 0; i < count; i++) {
            const bonsai_value *inner = NULL;
            CHECK(bonsai_value_array_array(v, i, &inner) == BONSAI_OK);
            CHECK(bonsai_value_type_of(inner) == BONSAI_VALUE_ARRAY);
            walk_value(inner, depth + 1, size);
        }
    }
    const char *s;
    const bonsai_value *inner;
    st = bonsai_value_array_string(v, count, &s, NULL);
    CHECK(st == (elem == BONSAI_VALUE_STRING ? BONSAI_ERR_OUT_OF_RANGE : BONSAI_ERR_TYPE_MISMATCH));
    st = bonsai_value_array_array(v, count, &inner);
    CHECK(st == (elem == BONSAI_VALUE_ARRAY ? BONSAI_ERR_OUT_OF_RANGE : BONSAI_ERR_TYPE_MISMATCH));
}

static void check_tensor(const bsi_gguf *g, uint64_t i)
{
    const bsi_gguf_tensor *t = &g->tensors[i];
    touch_string(t->name, strlen(t->name));
    CHECK(t->name[0] != 0 && strlen(t->name) <= BSI_GGUF_MAX_NAME_LEN);
    CHECK(bsi_gguf_find_tensor(g, t->name) == (int64_t)i);
    const bsi_type_traits *tt = bsi_type_traits_of(t->type);
    CHECK(tt != NULL);
    CHECK(t->n_dims >= 1 && t->n_dims <= BSI_GGUF_MAX_DIMS);
    uint64_t n = 1;
    for (uint32_t d = 0; d < BSI_GGUF_MAX_DIMS; d++) {
        CHECK(d < t->n_dims || t->ne[d] == 1);
        CHECK(!bsi_mul_overflow(n, t->ne[d], &n));
    }
    CHECK(n == t->n_elements && n <= (uint64_t)INT64_MAX);
    CHECK(t->ne[0] % tt->block_size == 0);
    /* the byte count callers use must be the true size, not a wrapped one */
    uint64_t bytes;
    CHECK(!bsi_mul_overflow(n / tt->block_size, tt->type_size, &bytes));
    CHECK(bytes == t->n_bytes);
    CHECK(t->offset % g->alignment == 0);
    if (!t->n_bytes) return;
    CHECK(g->data_offset <= g->size);
    CHECK(t->offset <= g->size - g->data_offset);
    CHECK(t->n_bytes <= g->size - g->data_offset - t->offset);
    touch(bsi_gguf_tensor_data(g, i), t->n_bytes);
}

typedef struct extent {
    uint64_t begin, end;
} extent;

static int cmp_extent(const void *a, const void *b)
{
    const extent *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* No two tensors share a byte of data (empty tensors occupy none). */
static void check_no_overlap(const bsi_gguf *g)
{
    extent *e = malloc((size_t)g->n_tensors * sizeof *e + 1);
    CHECK(e != NULL);
    size_t n = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].n_bytes)
            e[n++] = (extent){g->tensors[i].offset, g->tensors[i].offset + g->tensors[i].n_bytes};
    qsort(e, n, sizeof *e, cmp_extent);
    for (size_t i = 1; i < n; i++) CHECK(e[i - 1].end <= e[i].begin);
    free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bsi_gguf *g = NULL;
    bonsai_status st = bsi_gguf_parse(data, size, "fuzz", &g);
    if (st) {
        CHECK(g == NULL);
        CHECK(st == BONSAI_ERR_BAD_MAGIC || st == BONSAI_ERR_UNSUPPORTED_VERSION ||
              st == BONSAI_ERR_TRUNCATED || st == BONSAI_ERR_CORRUPT ||
              st == BONSAI_ERR_UNSUPPORTED_TYPE || st == BONSAI_ERR_DUPLICATE);
        CHECK(strncmp(bonsai_last_error(), "fuzz: ", 6) == 0);
        return 0;
    }
    CHECK(g != NULL && g->base == data && g->size == size);
    CHECK(g->version == 2 || g->version == 3);
    CHECK(g->alignment && !(g->alignment & (g->alignment - 1)));
    CHECK(g->data_offset % g->alignment == 0);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const char *key = g->kv[i].key;
        touch_string(key, strlen(key));
        CHECK(key[0] != 0 && strlen(key) <= BSI_GGUF_MAX_KEY_LEN);
        CHECK(bsi_gguf_find_key(g, key) == (int64_t)i);
        CHECK(bsi_gguf_get(g, key) == &g->kv[i].value);
        walk_value(&g->kv[i].value, 0, size);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) check_tensor(g, i);
    check_no_overlap(g);
    /* empty names are refused, so lookups of one must miss */
    CHECK(bsi_gguf_find_key(g, "") == -1);
    CHECK(bsi_gguf_find_tensor(g, "") == -1);
    bsi_gguf_free(g);
    return 0;
}
