#include "gguf_writer.h"

#include "gguf.h"
#include "types.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

typedef struct wtensor {
    char *name;
    uint32_t type, n_dims;
    uint64_t ne[BSI_GGUF_MAX_DIMS];
    uint64_t n_bytes, offset;
} wtensor;

struct bsi_gguf_writer {
    uint32_t version, alignment;
    bsi_buf meta; /* encoded key/value pairs */
    uint64_t n_kv;
    char **keys;
    wtensor *tensors;
    uint64_t n_tensors, data_size;
    /* streaming state */
    int header_written;
    uint64_t cur, cur_done; /* tensor being written and its bytes so far */
};

bonsai_status bsi_buf_sink(void *buf, const void *data, size_t n)
{
    bsi_buf *b = buf;
    if (n > SIZE_MAX - b->len) return bsi_fail(BONSAI_ERR_NO_MEMORY, "buffer too large");
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        uint8_t *p = bsi_realloc(b->data, cap);
        if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory growing a buffer");
        b->data = p;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    return BONSAI_OK;
}

void bsi_buf_free(bsi_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

bonsai_status bsi_file_sink(void *file, const void *data, size_t n)
{
    if (n && fwrite(data, 1, n, file) != n) return bsi_fail(BONSAI_ERR_IO, "write failed");
    return BONSAI_OK;
}

bsi_gguf_writer *bsi_gguf_writer_new(uint32_t alignment)
{
    if (alignment && (alignment & (alignment - 1))) return NULL;
    bsi_gguf_writer *w = bsi_calloc(1, sizeof *w);
    if (!w) return NULL;
    w->version = 3;
    w->alignment = alignment ? alignment : BSI_GGUF_DEFAULT_ALIGNMENT;
    if (alignment && alignment != BSI_GGUF_DEFAULT_ALIGNMENT &&
        bsi_gguf_writer_add_u32(w, "general.alignment", alignment)) {
        bsi_gguf_writer_free(w);
        return NULL;
    }
    return w;
}

void bsi_gguf_writer_free(bsi_gguf_writer *w)
{
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (uint64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->keys);
    free(w->tensors);
    bsi_buf_free(&w->meta);
    free(w);
}

void bsi_gguf_writer_set_version(bsi_gguf_writer *w, uint32_t version)
{
    w->version = version;
}

static bonsai_status put(bsi_buf *b, const void *p, size_t n)
{
    return bsi_buf_sink(b, p, n);
}

static bonsai_status put_u32(bsi_buf *b, uint32_t v)
{
    return put(b, &v, 4);
}

static bonsai_status put_u64(bsi_buf *b, uint64_t v)
{
    return put(b, &v, 8);
}

static bonsai_status put_str(bsi_buf *b, const char *s, uint64_t len)
{
    bonsai_status st = put_u64(b, len);
    return st ? st : put(b, s, (size_t)len);
}

/* Encodes a value's payload (without its type tag). */
static bonsai_status put_value(bsi_buf *b, const bonsai_value *v)
{
    bonsai_status st = BONSAI_OK;
    if (v->type == BONSAI_VALUE_STRING) return put_str(b, v->v.str, v->count);
    if (v->type != BONSAI_VALUE_ARRAY) {
        uint32_t size = bsi_value_type_size(v->type);
        if (!size) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "unknown value type %u", v->type);
        return put(b, &v->v, size);
    }
    if ((st = put_u32(b, v->elem_type)) || (st = put_u64(b, v->count))) return st;
    if (v->elem_type == BONSAI_VALUE_STRING) {
        for (uint64_t i = 0; i < v->count && !st; i++)
            st = put_str(b, v->v.strs[i].s, v->v.strs[i].len);
    } else if (v->elem_type == BONSAI_VALUE_ARRAY) {
        for (uint64_t i = 0; i < v->count && !st; i++) st = put_value(b, &v->v.arrays[i]);
    } else {
        uint32_t size = bsi_value_type_size(v->elem_type);
        if (!size)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "unknown element type %u", v->elem_type);
        st = put(b, v->v.raw, (size_t)(v->count * size));
    }
    return st;
}

static bonsai_status begin_kv(bsi_gguf_writer *w, const char *key, uint32_t type)
{
    if (w->header_written)
        return bsi_fail(BONSAI_ERR_INVALID_STATE, "gguf writer: metadata after the header");
    if (!key || !key[0]) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "gguf writer: empty key");
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key))
            return bsi_fail(BONSAI_ERR_DUPLICATE, "gguf writer: key '%s' added twice", key);
    char **keys = bsi_realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *keys);
    if (!keys) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    w->keys = keys;
    if (!(keys[w->n_kv] = bsi_strdup(key))) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    w->n_kv++;
    bonsai_status st = put_str(&w->meta, key, strlen(key));
    return st ? st : put_u32(&w->meta, type);
}

/* Undoes a partly added entry so that a failed call leaves the writer as it was. */
static bonsai_status rollback(bsi_gguf_writer *w, bonsai_status st, size_t mark, uint64_t n_kv)
{
    if (st) {
        w->meta.len = mark;
        while (w->n_kv > n_kv) free(w->keys[--w->n_kv]);
    }
    return st;
}

bonsai_status bsi_gguf_writer_add_value(bsi_gguf_writer *w, const char *key,
                                        const bonsai_value *value)
{
    size_t mark = w->meta.len;
    uint64_t n_kv = w->n_kv;
    bonsai_status st = begin_kv(w, key, value->type);
    if (!st) st = put_value(&w->meta, value);
    return rollback(w, st, mark, n_kv);
}

bonsai_status bsi_gguf_writer_add_scalar(bsi_gguf_writer *w, const char *key,
                                         bonsai_value_type type, const void *value)
{
    bonsai_value v = {.type = type};
    uint32_t size = bsi_value_type_size(type);
    if (!size) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "not a scalar type: %u", type);
    memcpy(&v.v, value, size);
    return bsi_gguf_writer_add_value(w, key, &v);
}

bonsai_status bsi_gguf_writer_add_u32(bsi_gguf_writer *w, const char *key, uint32_t v)
{
    return bsi_gguf_writer_add_scalar(w, key, BONSAI_VALUE_U32, &v);
}

bonsai_status bsi_gguf_writer_add_f32(bsi_gguf_writer *w, const char *key, float v)
{
    return bsi_gguf_writer_add_scalar(w, key, BONSAI_VALUE_F32, &v);
}

bonsai_status bsi_gguf_writer_add_string(bsi_gguf_writer *w, const char *key, const char *s)
{
    bonsai_value v = {.type = BONSAI_VALUE_STRING, .count = strlen(s), .v.str = s};
    return bsi_gguf_writer_add_value(w, key, &v);
}

bonsai_status bsi_gguf_writer_add_array(bsi_gguf_writer *w, const char *key,
                                        bonsai_value_type elem_type, uint64_t count,
                                        const void *data)
{
    bonsai_value v = {
        .type = BONSAI_VALUE_ARRAY, .elem_type = elem_type, .count = count, .v.raw = data};
    if (!bsi_value_type_size(elem_type))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "not a scalar element type: %u", elem_type);
    return bsi_gguf_writer_add_value(w, key, &v);
}

bonsai_status bsi_gguf_writer_add_string_array(bsi_gguf_writer *w, const char *key, uint64_t count,
                                               const char *const *strs)
{
    size_t mark = w->meta.len;
    uint64_t n_kv = w->n_kv;
    bonsai_status st = begin_kv(w, key, BONSAI_VALUE_ARRAY);
    if (!st) st = put_u32(&w->meta, BONSAI_VALUE_STRING);
    if (!st) st = put_u64(&w->meta, count);
    for (uint64_t i = 0; i < count && !st; i++) st = put_str(&w->meta, strs[i], strlen(strs[i]));
    return rollback(w, st, mark, n_kv);
}

bonsai_status bsi_gguf_writer_add_tensor(bsi_gguf_writer *w, const char *name, uint32_t type,
                                         uint32_t n_dims, const uint64_t *ne)
{
    if (w->header_written)
        return bsi_fail(BONSAI_ERR_INVALID_STATE, "gguf writer: tensor after the header");
    const bsi_type_traits *tt = bsi_type_traits_of(type);
    if (!tt) return bsi_fail(BONSAI_ERR_UNSUPPORTED_TYPE, "gguf writer: type id %u", type);
    if (!name || !name[0] || strlen(name) > BSI_GGUF_MAX_NAME_LEN)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "gguf writer: bad tensor name");
    if (n_dims < 1 || n_dims > BSI_GGUF_MAX_DIMS)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "gguf writer: %u dimensions", n_dims);
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return bsi_fail(BONSAI_ERR_DUPLICATE, "gguf writer: tensor '%s' added twice", name);
    wtensor t = {.type = type, .n_dims = n_dims, .ne = {1, 1, 1, 1}};
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        t.ne[d] = ne[d];
        if (ne[d] == 0)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "gguf writer: '%s' has an empty dimension",
                            name);
        if (bsi_mul_overflow(n, ne[d], &n) || n > (uint64_t)INT64_MAX)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "gguf writer: '%s' is too large", name);
    }
    if (t.ne[0] % tt->block_size)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "gguf writer: '%s': rows of %" PRIu64 " are not a multiple of %u", name,
                        t.ne[0], tt->block_size);
    t.n_bytes = n / tt->block_size * tt->type_size;
    uint64_t a = w->alignment;
    t.offset = (w->data_size + a - 1) / a * a;
    if (bsi_add_overflow(t.offset, t.n_bytes, &w->data_size))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "gguf writer: data too large");
    wtensor *ts = bsi_realloc(w->tensors, (size_t)(w->n_tensors + 1) * sizeof *ts);
    if (!ts) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    w->tensors = ts;
    if (!(t.name = bsi_strdup(name))) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    ts[w->n_tensors++] = t;
    return BONSAI_OK;
}

uint64_t bsi_gguf_writer_tensor_bytes(const bsi_gguf_writer *w, uint64_t index)
{
    return index < w->n_tensors ? w->tensors[index].n_bytes : 0;
}

static const uint8_t zeros[256];

static bonsai_status pad(bsi_sink_fn sink, void *ctx, uint64_t n)
{
    bonsai_status st = BONSAI_OK;
    while (n && !st) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        st = sink(ctx, zeros, k);
        n -= k;
    }
    return st;
}

bonsai_status bsi_gguf_writer_write_header(bsi_gguf_writer *w, bsi_sink_fn sink, void *ctx)
{
    if (w->header_written)
        return bsi_fail(BONSAI_ERR_INVALID_STATE, "gguf writer: header written twice");
    bsi_buf h = {0};
    bonsai_status st = put(&h, "GGUF", 4);
    if (!st) st = put_u32(&h, w->version);
    if (!st) st = put_u64(&h, w->n_tensors);
    if (!st) st = put_u64(&h, w->n_kv);
    if (!st) st = put(&h, w->meta.data, w->meta.len);
    for (uint64_t i = 0; i < w->n_tensors && !st; i++) {
        const wtensor *t = &w->tensors[i];
        st = put_str(&h, t->name, strlen(t->name));
        if (!st) st = put_u32(&h, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims && !st; d++) st = put_u64(&h, t->ne[d]);
        if (!st) st = put_u32(&h, t->type);
        if (!st) st = put_u64(&h, t->offset);
    }
    if (!st) st = sink(ctx, h.data, h.len);
    if (!st) st = pad(sink, ctx, (w->alignment - h.len % w->alignment) % w->alignment);
    bsi_buf_free(&h);
    if (!st) w->header_written = 1;
    return st;
}

bonsai_status bsi_gguf_writer_write_data(bsi_gguf_writer *w, bsi_sink_fn sink, void *ctx,
                                         const void *data, size_t n)
{
    const uint8_t *p = data;
    if (!w->header_written)
        return bsi_fail(BONSAI_ERR_INVALID_STATE, "gguf writer: data before the header");
    while (n) {
        if (w->cur >= w->n_tensors)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "gguf writer: more data than tensors");
        const wtensor *t = &w->tensors[w->cur];
        uint64_t left = t->n_bytes - w->cur_done;
        size_t k = n < left ? n : (size_t)left;
        bonsai_status st = sink(ctx, p, k);
        if (st) return st;
        p += k;
        n -= k;
        w->cur_done += k;
        if (w->cur_done == t->n_bytes) {
            w->cur++;
            w->cur_done = 0;
            if (w->cur < w->n_tensors &&
                (st = pad(sink, ctx, w->tensors[w->cur].offset - (t->offset + t->n_bytes))))
                return st;
        }
    }
    return BONSAI_OK;
}

bonsai_status bsi_gguf_writer_finish(bsi_gguf_writer *w)
{
    if (!w->header_written)
        return bsi_fail(BONSAI_ERR_INVALID_STATE, "gguf writer: header not written");
    if (w->cur != w->n_tensors)
        return bsi_fail(BONSAI_ERR_INVALID_STATE,
                        "gguf writer: data of tensor %" PRIu64 " of %" PRIu64 " missing", w->cur,
                        w->n_tensors);
    return BONSAI_OK;
}
