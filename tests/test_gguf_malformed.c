/*
 * The GGUF reader against malformed input: each structure of FORMAT.md section 1 broken in turn.
 * Every case checks the exact status and a distinctive part of the message, because a bounds check
 * that fires for the wrong reason (a truncation reported as corruption, one field blamed for
 * another) looks like a passing test unless the message is checked too.
 *
 * Malformed files are assembled byte by byte with put_*(), since the writer refuses to produce
 * them; valid ones come from the writer. Every parse runs on a heap copy of exactly the file's
 * size, so that AddressSanitizer reports any read past the end.
 */
#include "test_util.h"

#include "gguf.h"
#include "gguf_writer.h"
#include "types.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#define LABEL "mem.gguf"

/* ---- a byte builder for raw files ---- */

static void put(bsi_buf *b, const void *p, size_t n)
{
    assert_int_equal(bsi_buf_sink(b, p, n), BONSAI_OK);
}

static void put_u8(bsi_buf *b, uint8_t v)
{
    put(b, &v, 1);
}

static void put_u32(bsi_buf *b, uint32_t v)
{
    put(b, &v, 4);
}

static void put_u64(bsi_buf *b, uint64_t v)
{
    put(b, &v, 8);
}

/* A GGUF string of `len` bytes (which may contain NULs). */
static void put_strn(bsi_buf *b, const char *s, uint64_t len)
{
    put_u64(b, len);
    put(b, s, (size_t)len);
}

static void put_str(bsi_buf *b, const char *s)
{
    put_strn(b, s, strlen(s));
}

static void put_fill(bsi_buf *b, uint8_t byte, size_t n)
{
    for (size_t i = 0; i < n; i++) put_u8(b, byte);
}

static void put_header(bsi_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}

/* Key and value type of a metadata entry; the caller appends the value. */
static void put_key(bsi_buf *b, const char *key, uint32_t type)
{
    put_str(b, key);
    put_u32(b, type);
}

static void put_kv_u32(bsi_buf *b, const char *key, uint32_t v)
{
    put_key(b, key, BONSAI_VALUE_U32);
    put_u32(b, v);
}

static void put_tensor(bsi_buf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset)
{
    put_str(b, name);
    put_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) put_u64(b, ne[d]);
    put_u32(b, type);
    put_u64(b, offset);
}

/* Padding up to the data section at `alignment`, then `n` bytes of tensor data. */
static void put_data(bsi_buf *b, uint32_t alignment, size_t n)
{
    put_fill(b, 0, (alignment - b->len % alignment) % alignment);
    for (size_t i = 0; i < n; i++) put_u8(b, (uint8_t)(i * 7 + 1));
}

/* A file with no metadata and one tensor, followed by `data_len` bytes of data. */
static void one_tensor(bsi_buf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset, size_t data_len)
{
    put_header(b, 3, 1, 0);
    put_tensor(b, name, n_dims, ne, type, offset);
    put_data(b, BSI_GGUF_DEFAULT_ALIGNMENT, data_len);
}

/* ---- parsing helpers ---- */

typedef struct parsed {
    uint8_t *copy; /* the bytes the result points into */
    bsi_gguf *g;
} parsed;

/* Parses an exact-size heap copy of `len` bytes; on failure checks that *out was cleared and that
 * the message names the file. */
static bonsai_status parse_copy(const uint8_t *data, size_t len, parsed *out)
{
    static bsi_gguf sentinel;
    out->copy = malloc(len ? len : 1);
    assert_non_null(out->copy);
    if (len) memcpy(out->copy, data, len);
    out->g = &sentinel;
    bonsai_status st = bsi_gguf_parse(out->copy, len, LABEL, &out->g);
    if (st) {
        assert_null(out->g);
        if (!strstr(bonsai_last_error(), LABEL))
            fail_msg("error message \"%s\" does not name the file", bonsai_last_error());
        free(out->copy);
        out->copy = NULL;
    }
    return st;
}

static void parsed_free(parsed *p)
{
    bsi_gguf_free(p->g);
    free(p->copy);
    p->g = NULL;
    p->copy = NULL;
}

static void assert_msg_has(const char *needle)
{
    if (!strstr(bonsai_last_error(), needle))
        fail_msg("error message \"%s\" does not contain \"%s\"", bonsai_last_error(), needle);
}

/* Parses `b` (then frees it) and expects failure with `expected` and `needle` in the message. */
static void expect_fail(bsi_buf *b, bonsai_status expected, const char *needle)
{
    parsed p;
    bonsai_status st = parse_copy(b->data, b->len, &p);
    if (st == BONSAI_OK) parsed_free(&p);
    bsi_buf_free(b);
    assert_error(st, expected, needle);
}

/* Everything a caller of the reader relies on: a successful parse must satisfy all of it. */
static void check_consistent(const bsi_gguf *g)
{
    assert_true(g->version == 2 || g->version == 3);
    assert_true(g->alignment != 0 && (g->alignment & (g->alignment - 1)) == 0);
    assert_int_equal(g->data_offset % g->alignment, 0);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        assert_true(g->kv[i].key[0] != 0);
        assert_int_equal(bsi_gguf_find_key(g, g->kv[i].key), (int64_t)i);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const bsi_gguf_tensor *t = &g->tensors[i];
        const bsi_type_traits *tt = bsi_type_traits_of(t->type);
        assert_non_null(tt);
        assert_true(t->n_dims >= 1 && t->n_dims <= BSI_GGUF_MAX_DIMS);
        uint64_t n = 1;
        for (uint32_t d = 0; d < BSI_GGUF_MAX_DIMS; d++) {
            if (d >= t->n_dims) assert_int_equal(t->ne[d], 1);
            assert_false(bsi_mul_overflow(n, t->ne[d], &n));
        }
        assert_int_equal(n, t->n_elements);
        assert_int_equal(t->ne[0] % tt->block_size, 0);
        uint64_t bytes;
        assert_false(bsi_mul_overflow(n / tt->block_size, tt->type_size, &bytes));
        assert_int_equal(bytes, t->n_bytes);
        assert_int_equal(t->offset % g->alignment, 0);
        if (t->n_bytes) {
            assert_true(g->data_offset <= g->size);
            assert_true(t->offset <= g->size - g->data_offset);
            assert_true(t->n_bytes <= g->size - g->data_offset - t->offset);
        }
        assert_int_equal(bsi_gguf_find_tensor(g, t->name), (int64_t)i);
    }
}

/* ---- a small valid file from the writer ---- */

static const uint32_t nest_a[] = {1, 2}, nest_c[] = {3};

/* Several value types, a string array, an array of arrays, and F32, F16 and Q1_0 tensors whose
 * data runs to the very end of the file (so that every shorter prefix lacks something). */
static void build_valid(bsi_buf *out, uint32_t alignment, uint32_t version)
{
    bsi_gguf_writer *w = bsi_gguf_writer_new(alignment);
    assert_non_null(w);
    bsi_gguf_writer_set_version(w, version);
    int16_t i16 = -1234;
    uint64_t u64 = 0x0123456789abcdefull;
    double f64 = 2.5;
    bool b = true;
    const int8_t i8s[] = {-1, 0, 1};
    const char *const strs[] = {"", "a", "bc"};
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
    bonsai_value nested = {
        .type = BONSAI_VALUE_ARRAY, .elem_type = BONSAI_VALUE_ARRAY, .count = 3, .v.arrays = inner};
    assert_int_equal(bsi_gguf_writer_add_string(w, "general.architecture", "testarch"), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.i16", BONSAI_VALUE_I16, &i16), 0);
    assert_int_equal(bsi_gguf_writer_add_u32(w, "t.u32", 7), 0);
    assert_int_equal(bsi_gguf_writer_add_f32(w, "t.f32", 0.5f), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.bool", BONSAI_VALUE_BOOL, &b), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.u64", BONSAI_VALUE_U64, &u64), 0);
    assert_int_equal(bsi_gguf_writer_add_scalar(w, "t.f64", BONSAI_VALUE_F64, &f64), 0);
    assert_int_equal(bsi_gguf_writer_add_array(w, "a.i8", BONSAI_VALUE_I8, 3, i8s), 0);
    assert_int_equal(bsi_gguf_writer_add_string_array(w, "a.str", 3, strs), 0);
    assert_int_equal(bsi_gguf_writer_add_value(w, "a.nested", &nested), 0);

    const uint64_t s_f32[] = {4, 3}, s_f16[] = {5}, s_q1[] = {256, 2};
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "w.f32", BONSAI_TENSOR_F32, 2, s_f32), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "w.f16", BONSAI_TENSOR_F16, 1, s_f16), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "w.q1", BONSAI_TENSOR_Q1_0, 2, s_q1), 0);

    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_buf_sink, out), 0);
    for (uint64_t i = 0; i < 3; i++) {
        uint64_t n = bsi_gguf_writer_tensor_bytes(w, i);
        uint8_t *data = malloc((size_t)n);
        assert_non_null(data);
        for (uint64_t j = 0; j < n; j++) data[j] = (uint8_t)(i * 41 + j);
        assert_int_equal(bsi_gguf_writer_write_data(w, bsi_buf_sink, out, data, (size_t)n), 0);
        free(data);
    }
    assert_int_equal(bsi_gguf_writer_finish(w), 0);
    bsi_gguf_writer_free(w);
}

/* ---- truncation and byte flips ---- */

static void test_valid_file_parses(void **state)
{
    (void)state;
    bsi_buf b = {0};
    build_valid(&b, 0, 3);
    parsed p;
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    check_consistent(p.g);
    assert_int_equal(p.g->n_kv, 10);
    assert_int_equal(p.g->n_tensors, 3);
    assert_int_equal(p.g->alignment, BSI_GGUF_DEFAULT_ALIGNMENT);
    const bsi_gguf_tensor *q1 = &p.g->tensors[2];
    assert_int_equal(q1->n_bytes, 2 * 2 * 18);
    /* the last tensor ends exactly at the end of the file */
    assert_int_equal(p.g->data_offset + q1->offset + q1->n_bytes, b.len);
    const bonsai_value *nested = bsi_gguf_get(p.g, "a.nested");
    assert_non_null(nested);
    assert_int_equal(nested->count, 3);
    assert_int_equal(nested->v.arrays[2].count, 1);
    parsed_free(&p);
    bsi_buf_free(&b);
}

static void test_truncated_every_offset(void **state)
{
    (void)state;
    bsi_buf b = {0};
    build_valid(&b, 0, 3);
    for (size_t len = 0; len < b.len; len++) {
        parsed p;
        bonsai_status st = parse_copy(b.data, len, &p);
        if (st == BONSAI_OK) {
            parsed_free(&p);
            fail_msg("a prefix of %zu of %zu bytes parsed", len, b.len);
        }
        if (st != BONSAI_ERR_TRUNCATED)
            fail_msg("prefix of %zu bytes: status %s, expected truncated: %s", len,
                     bonsai_status_string(st), bonsai_last_error());
        const char *msg = bonsai_last_error();
        if (!strstr(msg, "truncated") && !strstr(msg, "extends past the end"))
            fail_msg("prefix of %zu bytes: unexpected message \"%s\"", len, msg);
    }
    bsi_buf_free(&b);
}

static void test_byte_flips(void **state)
{
    (void)state;
    bsi_buf b = {0};
    build_valid(&b, 0, 3);
    parsed p;
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    uint64_t header_end = p.g->data_offset;
    parsed_free(&p);
    for (uint64_t i = 0; i < header_end; i++) {
        b.data[i] ^= 0xff;
        bonsai_status st = parse_copy(b.data, b.len, &p);
        b.data[i] ^= 0xff;
        switch (st) {
        case BONSAI_OK:
            check_consistent(p.g);
            parsed_free(&p);
            break;
        case BONSAI_ERR_BAD_MAGIC:
        case BONSAI_ERR_UNSUPPORTED_VERSION:
        case BONSAI_ERR_TRUNCATED:
        case BONSAI_ERR_CORRUPT:
        case BONSAI_ERR_UNSUPPORTED_TYPE:
        case BONSAI_ERR_DUPLICATE: break;
        default:
            fail_msg("flipping byte %" PRIu64 ": unexpected status %s: %s", i,
                     bonsai_status_string(st), bonsai_last_error());
        }
    }
    bsi_buf_free(&b);
}

/* ---- header ---- */

static void test_empty_files_parse(void **state)
{
    (void)state;
    for (uint32_t version = 2; version <= 3; version++) {
        bsi_buf b = {0};
        put_header(&b, version, 0, 0);
        parsed p;
        assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
        assert_int_equal(p.g->version, version);
        assert_int_equal(p.g->n_kv, 0);
        assert_int_equal(p.g->n_tensors, 0);
        check_consistent(p.g);
        parsed_free(&p);
        bsi_buf_free(&b);
    }
}

static void test_bad_magic(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put(&b, "GGUG", 4);
    put_u32(&b, 3);
    put_u64(&b, 0);
    put_u64(&b, 0);
    expect_fail(&b, BONSAI_ERR_BAD_MAGIC, "not a GGUF file");
    assert_msg_has("47 47 55 47");
    /* "GGML", ggml's pre-GGUF format, must not get past the magic either */
    put(&b, "lmgg", 4);
    put_fill(&b, 0, 20);
    expect_fail(&b, BONSAI_ERR_BAD_MAGIC, "expected 'GGUF'");
}

static void test_bad_version(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put_header(&b, 1, 0, 0);
    expect_fail(&b, BONSAI_ERR_UNSUPPORTED_VERSION, "version 1 is not supported");
    assert_null(strstr(bonsai_last_error(), "big-endian"));
    put_header(&b, 4, 0, 0);
    expect_fail(&b, BONSAI_ERR_UNSUPPORTED_VERSION, "version 4 is not supported");
    assert_null(strstr(bonsai_last_error(), "big-endian"));
    /* a big-endian file stores version 3 as 00 00 00 03 */
    put(&b, "GGUF", 4);
    put(&b, "\0\0\0\3", 4);
    put_fill(&b, 0, 16);
    expect_fail(&b, BONSAI_ERR_UNSUPPORTED_VERSION, "big-endian");
}

/* ---- counts and lengths ---- */

static void test_huge_kv_count(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put_header(&b, 3, 0, (uint64_t)1 << 62);
    put_kv_u32(&b, "k", 1);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "absurd");
    assert_msg_has("metadata count");
    /* two entries of at least 13 bytes each cannot fit in the 13 bytes left */
    put_header(&b, 3, 0, 2);
    put_key(&b, "k", BONSAI_VALUE_U8);
    put_u8(&b, 1);
    expect_fail(&b, BONSAI_ERR_TRUNCATED, "metadata count");
}

static void test_huge_tensor_count(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t ne[] = {8};
    put_header(&b, 3, (uint64_t)1 << 62, 0);
    put_tensor(&b, "t", 1, ne, BONSAI_TENSOR_F32, 0);
    put_data(&b, 32, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "absurd");
    assert_msg_has("tensor count");
    /* two tensor infos of at least 33 bytes each declared, 33 bytes follow */
    put_header(&b, 3, 2, 0);
    put_tensor(&b, "t", 1, ne, BONSAI_TENSOR_F32, 0);
    expect_fail(&b, BONSAI_ERR_TRUNCATED, "tensor count");
}

static void test_huge_string_length(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put_header(&b, 3, 0, 1);
    put_key(&b, "s", BONSAI_VALUE_STRING);
    put_u64(&b, (uint64_t)1 << 60);
    put(&b, "abcd", 4);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "absurd size");
    assert_msg_has("string value");
    /* one byte more than the file holds */
    put_header(&b, 3, 0, 1);
    put_key(&b, "s", BONSAI_VALUE_STRING);
    put_u64(&b, 5);
    put(&b, "abcd", 4);
    expect_fail(&b, BONSAI_ERR_TRUNCATED, "needs 5 bytes but the file has 4 left");
    /* the same inside an array of strings */
    put_header(&b, 3, 0, 1);
    put_key(&b, "s", BONSAI_VALUE_ARRAY);
    put_u32(&b, BONSAI_VALUE_STRING);
    put_u64(&b, 1);
    put_u64(&b, (uint64_t)1 << 60);
    put(&b, "abcd", 4);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "absurd size");
    assert_msg_has("string in array");
}

static void test_huge_array_count(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put_header(&b, 3, 0, 1);
    put_key(&b, "a", BONSAI_VALUE_ARRAY);
    put_u32(&b, BONSAI_VALUE_U8);
    put_u64(&b, (uint64_t)1 << 61);
    put_fill(&b, 1, 16);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "absurd");
    /* count * element size overflows 64 bits */
    put_header(&b, 3, 0, 1);
    put_key(&b, "a", BONSAI_VALUE_ARRAY);
    put_u32(&b, BONSAI_VALUE_U64);
    put_u64(&b, (uint64_t)1 << 61);
    put_fill(&b, 1, 16);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "absurd count");
    put_header(&b, 3, 0, 1);
    put_key(&b, "a", BONSAI_VALUE_ARRAY);
    put_u32(&b, BONSAI_VALUE_STRING);
    put_u64(&b, (uint64_t)1 << 61);
    put_fill(&b, 0, 16);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "absurd count");
    /* three u32 elements declared, two present */
    put_header(&b, 3, 0, 1);
    put_key(&b, "a", BONSAI_VALUE_ARRAY);
    put_u32(&b, BONSAI_VALUE_U32);
    put_u64(&b, 3);
    put_u32(&b, 1);
    put_u32(&b, 2);
    expect_fail(&b, BONSAI_ERR_TRUNCATED, "needs 12 bytes but the file has 8 left");
    /* an array of arrays whose count its 12-byte minimum elements cannot fill */
    put_header(&b, 3, 0, 1);
    put_key(&b, "a", BONSAI_VALUE_ARRAY);
    put_u32(&b, BONSAI_VALUE_ARRAY);
    put_u64(&b, 2);
    put_u32(&b, BONSAI_VALUE_U8);
    put_u64(&b, 0);
    expect_fail(&b, BONSAI_ERR_TRUNCATED, "truncated");
}

static void test_key_length(void **state)
{
    (void)state;
    char *key = malloc(BSI_GGUF_MAX_KEY_LEN + 2);
    assert_non_null(key);
    memset(key, 'k', BSI_GGUF_MAX_KEY_LEN + 1);
    key[BSI_GGUF_MAX_KEY_LEN + 1] = 0;
    bsi_buf b = {0};
    put_header(&b, 3, 0, 1);
    put_key(&b, key, BONSAI_VALUE_U8); /* 65536 bytes */
    put_u8(&b, 1);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "(limit 65535)");
    assert_msg_has("metadata key");
    /* the limit itself is fine */
    key[BSI_GGUF_MAX_KEY_LEN] = 0;
    put_header(&b, 3, 0, 1);
    put_key(&b, key, BONSAI_VALUE_U8);
    put_u8(&b, 1);
    parsed p;
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    assert_int_equal(strlen(p.g->kv[0].key), BSI_GGUF_MAX_KEY_LEN);
    parsed_free(&p);
    bsi_buf_free(&b);
    /* a huge key length is refused by the limit, before the file size is considered */
    put_header(&b, 3, 0, 1);
    put_u64(&b, (uint64_t)1 << 60);
    put_fill(&b, 'k', 16);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "(limit 65535)");
    free(key);
}

/* ---- tensor infos ---- */

static void test_dims_overflow(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t wrap[] = {(uint64_t)1 << 33, (uint64_t)1 << 33};
    one_tensor(&b, "big", 2, wrap, BONSAI_TENSOR_F32, 0, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "overflow");
    assert_msg_has("'big'");
    /* one dimension above INT64_MAX */
    const uint64_t neg[] = {(uint64_t)1 << 63};
    one_tensor(&b, "neg", 1, neg, BONSAI_TENSOR_F32, 0, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "overflow");
    assert_msg_has("'neg'");
    /* a product of 2^63 fits in 64 bits but not in int64 */
    const uint64_t edge[] = {(uint64_t)1 << 32, 1, (uint64_t)1 << 31};
    one_tensor(&b, "edge", 3, edge, BONSAI_TENSOR_F32, 0, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "dimensions overflow (dimension 2");
}

static void test_n_dims(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t ne[] = {8, 1, 1, 1, 1};
    one_tensor(&b, "flat", 0, ne, BONSAI_TENSOR_F32, 0, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "dimensions");
    assert_msg_has("'flat' has 0 dimensions");
    one_tensor(&b, "five", 5, ne, BONSAI_TENSOR_F32, 0, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "dimensions");
    assert_msg_has("'five' has 5 dimensions");
    /* four is the most; unused dims read back as 1 */
    one_tensor(&b, "four", 4, ne, BONSAI_TENSOR_F32, 0, 32);
    parsed p;
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    check_consistent(p.g);
    parsed_free(&p);
    bsi_buf_free(&b);
}

static void test_tensor_offsets(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t ne[] = {8}; /* 32 bytes of F32 */
    one_tensor(&b, "late", 1, ne, BONSAI_TENSOR_F32, 32, 32);
    expect_fail(&b, BONSAI_ERR_TRUNCATED, "extends past the end");
    assert_msg_has("'late'");
    /* one byte short */
    one_tensor(&b, "short", 1, ne, BONSAI_TENSOR_F32, 0, 31);
    expect_fail(&b, BONSAI_ERR_TRUNCATED, "extends past the end");
    /* offset + size wraps around 2^64 */
    one_tensor(&b, "wrap", 1, ne, BONSAI_TENSOR_F32, UINT64_MAX - 31, 32);
    expect_fail(&b, BONSAI_ERR_TRUNCATED, "extends past the end");
    one_tensor(&b, "odd", 1, ne, BONSAI_TENSOR_F32, 16, 64);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "not a multiple of the alignment 32");
    assert_msg_has("'odd'");
}

static void test_alignment_64(void **state)
{
    (void)state;
    bsi_buf b = {0};
    build_valid(&b, 64, 3);
    parsed p;
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    check_consistent(p.g);
    assert_int_equal(p.g->alignment, 64);
    assert_int_equal(p.g->data_offset % 64, 0);
    for (uint64_t i = 0; i < p.g->n_tensors; i++) assert_int_equal(p.g->tensors[i].offset % 64, 0);
    parsed_free(&p);
    bsi_buf_free(&b);

    /* offsets 0 and 64 with 64-byte alignment: the data section starts at a multiple of 64 */
    const uint64_t ne[] = {8};
    put_header(&b, 3, 2, 1);
    put_kv_u32(&b, "general.alignment", 64);
    put_tensor(&b, "a", 1, ne, BONSAI_TENSOR_F32, 0);
    put_tensor(&b, "b", 1, ne, BONSAI_TENSOR_F32, 64);
    size_t header_len = b.len;
    put_data(&b, 64, 96);
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    assert_int_equal(p.g->data_offset, (header_len + 63) / 64 * 64);
    check_consistent(p.g);
    parsed_free(&p);
    bsi_buf_free(&b);

    /* 32 is aligned for the default but not for 64 */
    put_header(&b, 3, 1, 1);
    put_kv_u32(&b, "general.alignment", 64);
    put_tensor(&b, "a", 1, ne, BONSAI_TENSOR_F32, 32);
    put_data(&b, 64, 64);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "not a multiple of the alignment 64");
}

static void test_bad_alignment(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t ne[] = {8};
    const uint32_t bad[] = {0, 48, 3};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put_header(&b, 3, 1, 1);
        put_kv_u32(&b, "general.alignment", bad[i]);
        put_tensor(&b, "a", 1, ne, BONSAI_TENSOR_F32, 0);
        put_data(&b, 32, 32);
        expect_fail(&b, BONSAI_ERR_CORRUPT, "is not a power of two");
        assert_msg_has("general.alignment");
    }
    put_header(&b, 3, 0, 1);
    put_key(&b, "general.alignment", BONSAI_VALUE_STRING);
    put_str(&b, "32");
    expect_fail(&b, BONSAI_ERR_CORRUPT, "general.alignment has type string, not u32");
    put_header(&b, 3, 0, 1);
    put_key(&b, "general.alignment", BONSAI_VALUE_U64);
    put_u64(&b, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "general.alignment has type u64, not u32");
}

static void test_overlap(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t ne[] = {16}; /* 64 bytes of F32 */
    put_header(&b, 3, 2, 0);
    put_tensor(&b, "first", 1, ne, BONSAI_TENSOR_F32, 0);
    put_tensor(&b, "second", 1, ne, BONSAI_TENSOR_F32, 32);
    put_data(&b, 32, 96);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "overlap");
    assert_msg_has("'first'");
    assert_msg_has("'second'");
    /* declared in the other order */
    put_header(&b, 3, 2, 0);
    put_tensor(&b, "second", 1, ne, BONSAI_TENSOR_F32, 32);
    put_tensor(&b, "first", 1, ne, BONSAI_TENSOR_F32, 0);
    put_data(&b, 32, 96);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "overlap");
    /* the same bytes twice */
    put_header(&b, 3, 2, 0);
    put_tensor(&b, "x", 1, ne, BONSAI_TENSOR_F32, 0);
    put_tensor(&b, "y", 1, ne, BONSAI_TENSOR_F32, 0);
    put_data(&b, 32, 64);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "overlap");
    /* touching is fine */
    put_header(&b, 3, 2, 0);
    put_tensor(&b, "x", 1, ne, BONSAI_TENSOR_F32, 0);
    put_tensor(&b, "y", 1, ne, BONSAI_TENSOR_F32, 64);
    put_data(&b, 32, 128);
    parsed p;
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    check_consistent(p.g);
    parsed_free(&p);
    bsi_buf_free(&b);
}

static void test_duplicates(void **state)
{
    (void)state;
    bsi_buf b = {0};
    char key[32];
    /* enough keys that the duplicate is found through the hash table, not by luck */
    put_header(&b, 3, 0, 41);
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof key, "key.%d", i);
        put_kv_u32(&b, key, (uint32_t)i);
    }
    put_kv_u32(&b, "key.17", 0);
    expect_fail(&b, BONSAI_ERR_DUPLICATE, "metadata key 'key.17' appears more than once");

    const uint64_t ne[] = {8};
    put_header(&b, 3, 3, 0);
    put_tensor(&b, "blk.0.w", 1, ne, BONSAI_TENSOR_F32, 0);
    put_tensor(&b, "blk.1.w", 1, ne, BONSAI_TENSOR_F32, 32);
    put_tensor(&b, "blk.0.w", 1, ne, BONSAI_TENSOR_F32, 64);
    put_data(&b, 32, 96);
    expect_fail(&b, BONSAI_ERR_DUPLICATE, "tensor name 'blk.0.w' appears more than once");
}

static void test_unknown_tensor_types(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t ne[] = {256};
    const uint32_t types[] = {2, 40, 42, 143, 9999};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char needle[64];
        one_tensor(&b, "blk.3.ffn_up.weight", 1, ne, types[i], 0, 1024);
        snprintf(needle, sizeof needle, "has type id %u", types[i]);
        expect_fail(&b, BONSAI_ERR_UNSUPPORTED_TYPE, needle);
        assert_msg_has("'blk.3.ffn_up.weight'");
    }
    one_tensor(&b, "blk.3.ffn_up.weight", 1, ne, 2, 0, 1024);
    expect_fail(&b, BONSAI_ERR_UNSUPPORTED_TYPE, "type id 2 (Q4_0)");
}

static void test_supported_tensor_types(void **state)
{
    (void)state;
    const uint32_t types[] = {BONSAI_TENSOR_F32, BONSAI_TENSOR_F16, BONSAI_TENSOR_Q8_0,
                              BONSAI_TENSOR_BF16, BONSAI_TENSOR_Q1_0};
    const uint64_t bytes[] = {1024, 512, 272, 512, 36}; /* 256 elements of each */
    const uint64_t ne[] = {256};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        bsi_buf b = {0};
        one_tensor(&b, "t", 1, ne, types[i], 0, (size_t)bytes[i]);
        parsed p;
        assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
        assert_int_equal(p.g->tensors[0].n_bytes, bytes[i]);
        check_consistent(p.g);
        parsed_free(&p);
        bsi_buf_free(&b);
    }
}

static void test_block_size(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t ne[] = {100, 2};
    one_tensor(&b, "q1", 2, ne, BONSAI_TENSOR_Q1_0, 0, 1024);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "not a multiple of its block size 128");
    assert_msg_has("'q1' of type Q1_0 has rows of 100 elements");
    const uint64_t q8[] = {33};
    one_tensor(&b, "q8", 1, q8, BONSAI_TENSOR_Q8_0, 0, 1024);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "block size 32");
}

static void test_f32_byte_count_overflow(void **state)
{
    (void)state;
    /* 2^62 + 8 F32 elements are 2^64 + 32 bytes: the byte count must not wrap around to 32 */
    bsi_buf b = {0};
    const uint64_t ne[] = {((uint64_t)1 << 62) + 8};
    one_tensor(&b, "wrap", 1, ne, BONSAI_TENSOR_F32, 0, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "overflow");
    assert_msg_has("'wrap'");
}

static void test_overlap_across_empty_tensor(void **state)
{
    (void)state;
    /* "a" covers data bytes [0, 128) and "c" [64, 128); the empty tensor sorted between them
     * must not hide the overlap */
    bsi_buf b = {0};
    const uint64_t ne_a[] = {32}, ne_c[] = {16}, empty[] = {0};
    put_header(&b, 3, 3, 0);
    put_tensor(&b, "a", 1, ne_a, BONSAI_TENSOR_F32, 0);
    put_tensor(&b, "empty", 1, empty, BONSAI_TENSOR_F32, 32);
    put_tensor(&b, "c", 1, ne_c, BONSAI_TENSOR_F32, 64);
    put_data(&b, 32, 128);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "overlap");
    assert_msg_has("'a'");
    assert_msg_has("'c'");
}

/* ---- metadata values ---- */

static void test_unknown_value_types(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put_header(&b, 3, 0, 1);
    put_key(&b, "weird", 13);
    put_u32(&b, 0);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "unknown value type 13");
    assert_msg_has("'weird'");
    put_header(&b, 3, 0, 1);
    put_key(&b, "weird", 0xffffffffu);
    put_u32(&b, 0);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "unknown value type 4294967295");
    put_header(&b, 3, 0, 1);
    put_key(&b, "arr", BONSAI_VALUE_ARRAY);
    put_u32(&b, 13);
    put_u64(&b, 1);
    put_u32(&b, 0);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "unknown element type 13");
    assert_msg_has("'arr'");
    /* inside an array of arrays */
    put_header(&b, 3, 0, 1);
    put_key(&b, "arr", BONSAI_VALUE_ARRAY);
    put_u32(&b, BONSAI_VALUE_ARRAY);
    put_u64(&b, 1);
    put_u32(&b, 9999);
    put_u64(&b, 0);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "unknown element type 9999");
}

static void test_bad_bool(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put_header(&b, 3, 0, 1);
    put_key(&b, "flag", BONSAI_VALUE_BOOL);
    put_u8(&b, 2);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "is 2, not 0 or 1");
    assert_msg_has("'flag'");
    put_header(&b, 3, 0, 1);
    put_key(&b, "flags", BONSAI_VALUE_ARRAY);
    put_u32(&b, BONSAI_VALUE_BOOL);
    put_u64(&b, 3);
    put_u8(&b, 1);
    put_u8(&b, 0);
    put_u8(&b, 0xff);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "bool array element 2");
}

/* An entry `key` holding `levels` arrays inside each other around one u8. */
static void put_nested(bsi_buf *b, const char *key, int levels)
{
    put_key(b, key, BONSAI_VALUE_ARRAY);
    for (int i = 0; i < levels - 1; i++) {
        put_u32(b, BONSAI_VALUE_ARRAY);
        put_u64(b, 1);
    }
    put_u32(b, BONSAI_VALUE_U8);
    put_u64(b, 1);
    put_u8(b, 42);
}

static void test_nesting(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put_header(&b, 3, 0, 1);
    put_nested(&b, "deep", BSI_GGUF_MAX_NESTING);
    parsed p;
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    const bonsai_value *v = &p.g->kv[0].value;
    for (int i = 0; i < BSI_GGUF_MAX_NESTING - 1; i++) {
        assert_int_equal(v->elem_type, BONSAI_VALUE_ARRAY);
        v = &v->v.arrays[0];
    }
    assert_int_equal(v->elem_type, BONSAI_VALUE_U8);
    assert_int_equal(v->v.raw[0], 42);
    parsed_free(&p);
    bsi_buf_free(&b);

    put_header(&b, 3, 0, 1);
    put_nested(&b, "deeper", BSI_GGUF_MAX_NESTING + 1);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "nested more than 8 deep");
    assert_msg_has("'deeper'");
}

static void test_bad_keys(void **state)
{
    (void)state;
    bsi_buf b = {0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "");
    put_u32(&b, BONSAI_VALUE_U8);
    put_u8(&b, 1);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "is empty or contains a NUL byte");
    assert_msg_has("metadata key 0");
    put_header(&b, 3, 0, 2);
    put_kv_u32(&b, "fine", 1);
    put_strn(&b, "a\0b", 3);
    put_u32(&b, BONSAI_VALUE_U8);
    put_u8(&b, 1);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "is empty or contains a NUL byte");
    assert_msg_has("metadata key 1");
}

static void test_bad_tensor_names(void **state)
{
    (void)state;
    bsi_buf b = {0};
    const uint64_t ne[] = {8};
    char name[BSI_GGUF_MAX_NAME_LEN + 2];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = 0; /* 256 bytes */
    one_tensor(&b, name, 1, ne, BONSAI_TENSOR_F32, 0, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "(limit 255)");
    assert_msg_has("tensor name");
    name[BSI_GGUF_MAX_NAME_LEN] = 0;
    one_tensor(&b, name, 1, ne, BONSAI_TENSOR_F32, 0, 32);
    parsed p;
    assert_int_equal(parse_copy(b.data, b.len, &p), BONSAI_OK);
    assert_int_equal(strlen(p.g->tensors[0].name), BSI_GGUF_MAX_NAME_LEN);
    parsed_free(&p);
    bsi_buf_free(&b);

    one_tensor(&b, "", 1, ne, BONSAI_TENSOR_F32, 0, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "is empty or contains a NUL byte");
    put_header(&b, 3, 1, 0);
    put_strn(&b, "t\0x", 3);
    put_u32(&b, 1);
    put_u64(&b, 8);
    put_u32(&b, BONSAI_TENSOR_F32);
    put_u64(&b, 0);
    put_data(&b, 32, 32);
    expect_fail(&b, BONSAI_ERR_CORRUPT, "is empty or contains a NUL byte");
}

/* ---- bonsai_model_load on files ---- */

static char tmp_dir[4096];

static int make_tmp_dir(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/bonsai-gguf-malformed-XXXXXX",
             base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_tmp_dir(void **state)
{
    (void)state;
    /* tests delete their own files; anything left by a failed one goes here */
    DIR *d = opendir(tmp_dir);
    if (d) {
        struct dirent *e;
        char path[8192];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(path, sizeof path, "%s/%s", tmp_dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    return rmdir(tmp_dir) ? -1 : 0;
}

static const char *tmp_path(const char *name)
{
    static char path[8192];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    return path;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Open descriptors and mappings of `path`, to prove that a failed load released both; -1 where
 * /proc is not available. */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

static int count_mappings(const char *path)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, path)) n++;
    fclose(f);
    return n;
}

/* A non-NULL handle, to see that a failed load clears *out. */
static bonsai_model *not_null(void)
{
    return (bonsai_model *)(void *)tmp_dir;
}

/* Loads `path` and expects failure: *out must be NULL and nothing may stay open or mapped. */
static void expect_load_fail(const char *path, bool use_mmap, bonsai_status expected,
                             const char *needle)
{
    bonsai_model_params params;
    bonsai_model_params_init(&params);
    params.use_mmap = use_mmap;
    int fds = count_fds();
    bonsai_model *m = not_null();
    bonsai_status st = bonsai_model_load(path, &params, &m);
    if (st == BONSAI_OK) bonsai_model_free(m);
    assert_error(st, expected, needle);
    assert_null(m);
    assert_int_equal(count_fds(), fds);
    assert_true(count_mappings(path) <= 0);
}

static void test_load_missing_and_directory(void **state)
{
    (void)state;
    const char *missing = tmp_path("missing.gguf");
    expect_load_fail(missing, true, BONSAI_ERR_IO, "cannot open");
    assert_msg_has(missing);
    expect_load_fail(tmp_dir, true, BONSAI_ERR_IO, "not a regular file");
    expect_load_fail(tmp_dir, false, BONSAI_ERR_IO, "not a regular file");
}

static void test_load_empty_and_malformed(void **state)
{
    (void)state;
    const char *path = tmp_path("empty.gguf");
    write_file(path, "", 0);
    expect_load_fail(path, true, BONSAI_ERR_TRUNCATED, "empty");
    expect_load_fail(path, false, BONSAI_ERR_TRUNCATED, "empty");
    assert_int_equal(unlink(path), 0);

    bsi_buf b = {0};
    path = tmp_path("magic.gguf");
    put(&b, "GGML", 4);
    put_fill(&b, 0, 60);
    write_file(path, b.data, b.len);
    bsi_buf_free(&b);
    expect_load_fail(path, true, BONSAI_ERR_BAD_MAGIC, "not a GGUF file");
    assert_msg_has(path);
    expect_load_fail(path, false, BONSAI_ERR_BAD_MAGIC, "not a GGUF file");
    assert_int_equal(unlink(path), 0);

    /* the container parses, the model-level check of general.architecture refuses it */
    path = tmp_path("arch.gguf");
    put_header(&b, 3, 0, 1);
    put_kv_u32(&b, "general.architecture", 7);
    write_file(path, b.data, b.len);
    bsi_buf_free(&b);
    expect_load_fail(path, true, BONSAI_ERR_CORRUPT, "general.architecture has type u32");
    assert_int_equal(unlink(path), 0);
}

static void test_load_valid_and_truncated(void **state)
{
    (void)state;
    bsi_buf b = {0};
    build_valid(&b, 0, 2);
    const char *path = tmp_path("valid.gguf");
    write_file(path, b.data, b.len);
    for (int mmap = 0; mmap <= 1; mmap++) {
        bonsai_model_params params;
        bonsai_model_params_init(&params);
        params.use_mmap = mmap;
        bonsai_model *m = NULL;
        assert_int_equal(bonsai_model_load(path, &params, &m), BONSAI_OK);
        assert_non_null(m);
        assert_string_equal(bonsai_model_architecture(m), "testarch");
        assert_int_equal(bonsai_model_gguf_version(m), 2);
        assert_int_equal(bonsai_model_file_size(m), b.len);
        assert_int_equal(bonsai_model_tensor_count(m), 3);
        assert_int_equal(bonsai_model_meta_count(m), 10);
        assert_int_equal(bonsai_model_n_params(m), 12 + 5 + 512);
        bonsai_tensor_info info = {.struct_size = sizeof info};
        assert_int_equal(bonsai_model_tensor_at(m, 2, &info), BONSAI_OK);
        assert_int_equal(info.file_offset + info.n_bytes, b.len);
        bonsai_model_free(m);
    }
    assert_int_equal(unlink(path), 0);

    path = tmp_path("truncated.gguf");
    write_file(path, b.data, b.len - 1);
    expect_load_fail(path, true, BONSAI_ERR_TRUNCATED, "extends past the end");
    expect_load_fail(path, false, BONSAI_ERR_TRUNCATED, "extends past the end");
    assert_msg_has("'w.q1'");
    assert_int_equal(unlink(path), 0);
    bsi_buf_free(&b);
}

typedef struct progress_state {
    int calls;
    int abort_at; /* the call that returns false; -1: none */
    float last;
} progress_state;

static bool on_progress(float progress, void *user_data)
{
    progress_state *s = user_data;
    /* progress only ever moves forward, within [0, 1] */
    assert_true(progress >= 0.0f && progress <= 1.0f);
    assert_true(s->calls == 0 || progress >= s->last);
    s->last = progress;
    return s->calls++ != s->abort_at;
}

static void test_load_aborted(void **state)
{
    (void)state;
    bsi_buf b = {0};
    build_valid(&b, 0, 3);
    const char *path = tmp_path("abort.gguf");
    write_file(path, b.data, b.len);
    bsi_buf_free(&b);
    for (int mmap = 0; mmap <= 1; mmap++) {
        bonsai_model_params params;
        bonsai_model_params_init(&params);
        params.use_mmap = mmap;
        params.progress = on_progress;
        progress_state ps = {.abort_at = -1};
        params.progress_user_data = &ps;
        bonsai_model *m = NULL;
        assert_int_equal(bonsai_model_load(path, &params, &m), BONSAI_OK);
        bonsai_model_free(m);
        int calls = ps.calls;
        assert_true(calls >= 2); /* at least the start and the end */
        /* abort at each call in turn: before the file is opened, while it is read, after it is
         * parsed; every one must release what it took */
        for (int k = 0; k < calls; k++) {
            ps = (progress_state){.abort_at = k};
            int fds = count_fds();
            m = not_null();
            assert_error(bonsai_model_load(path, &params, &m), BONSAI_ERR_ABORTED, "aborted");
            assert_null(m);
            assert_int_equal(ps.calls, k + 1);
            assert_int_equal(count_fds(), fds);
            assert_true(count_mappings(path) <= 0);
        }
    }
    assert_int_equal(unlink(path), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_file_parses),
        cmocka_unit_test(test_truncated_every_offset),
        cmocka_unit_test(test_byte_flips),
        cmocka_unit_test(test_empty_files_parse),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_bad_version),
        cmocka_unit_test(test_huge_kv_count),
        cmocka_unit_test(test_huge_tensor_count),
        cmocka_unit_test(test_huge_string_length),
        cmocka_unit_test(test_huge_array_count),
        cmocka_unit_test(test_key_length),
        cmocka_unit_test(test_dims_overflow),
        cmocka_unit_test(test_n_dims),
        cmocka_unit_test(test_tensor_offsets),
        cmocka_unit_test(test_alignment_64),
        cmocka_unit_test(test_bad_alignment),
        cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_unknown_tensor_types),
        cmocka_unit_test(test_supported_tensor_types),
        cmocka_unit_test(test_block_size),
        cmocka_unit_test(test_f32_byte_count_overflow),
        cmocka_unit_test(test_overlap_across_empty_tensor),
        cmocka_unit_test(test_unknown_value_types),
        cmocka_unit_test(test_bad_bool),
        cmocka_unit_test(test_nesting),
        cmocka_unit_test(test_bad_keys),
        cmocka_unit_test(test_bad_tensor_names),
        cmocka_unit_test(test_load_missing_and_directory),
        cmocka_unit_test(test_load_empty_and_malformed),
        cmocka_unit_test(test_load_valid_and_truncated),
        cmocka_unit_test(test_load_aborted),
    };
    return cmocka_run_group_tests(tests, make_tmp_dir, remove_tmp_dir);
}
