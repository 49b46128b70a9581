/*
 * GGUF reader. Every count, length and offset comes from an untrusted file, so each read is
 * bounds-checked against the bytes that remain, each size computation is overflow-checked, and
 * nothing is allocated before the file has shown it holds at least that many bytes: memory use is
 * bounded by a small multiple of the file size, whatever the file claims.
 */
#include "gguf.h"

#include "arena.h"
#include "types.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

typedef struct reader {
    const uint8_t *data;
    uint64_t size, pos;
    const char *label;
    bsi_arena *arena;
} reader;

/* Fewest bytes an element of each kind occupies in the file: a string is at least its u64 length,
 * an array at least its u32 type and u64 count. */
static uint64_t min_encoded_size(uint32_t type)
{
    if (type == BONSAI_VALUE_STRING) return 8;
    if (type == BONSAI_VALUE_ARRAY) return 12;
    return bsi_value_type_size(type);
}

/* Fails unless `n` more bytes are in the file; `what` says what was being read. */
static bonsai_status need(reader *r, uint64_t n, const char *what)
{
    if (n <= r->size - r->pos) return BONSAI_OK;
    if (n >= BSI_GGUF_ABSURD)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: %s at offset %" PRIu64 " declares an absurd size of %" PRIu64 " bytes",
                        r->label, what, r->pos, n);
    return bsi_fail(BONSAI_ERR_TRUNCATED,
                    "%s: truncated: %s at offset %" PRIu64 " needs %" PRIu64
                    " bytes but the file has %" PRIu64 " left",
                    r->label, what, r->pos, n, r->size - r->pos);
}

static bonsai_status read_bytes(reader *r, void *dst, uint64_t n, const char *what)
{
    bonsai_status st = need(r, n, what);
    if (st) return st;
    memcpy(dst, r->data + r->pos, n);
    r->pos += n;
    return BONSAI_OK;
}

static bonsai_status read_u32(reader *r, uint32_t *v, const char *what)
{
    return read_bytes(r, v, 4, what);
}

static bonsai_status read_u64(reader *r, uint64_t *v, const char *what)
{
    return read_bytes(r, v, 8, what);
}

/* A count of items each at least `min_size` bytes: refuse counts the rest of the file cannot hold
 * before anything is allocated for them. */
static bonsai_status check_count(reader *r, uint64_t count, uint64_t min_size, const char *what)
{
    uint64_t bytes;
    if (bsi_mul_overflow(count, min_size, &bytes))
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: %s at offset %" PRIu64 " declares an absurd count of %" PRIu64,
                        r->label, what, r->pos, count);
    return need(r, bytes, what);
}

/* A GGUF string, copied NUL-terminated into the arena. */
static bonsai_status read_string(reader *r, bsi_str *out, uint64_t max_len, const char *what)
{
    uint64_t len;
    bonsai_status st = read_u64(r, &len, what);
    if (st) return st;
    if (len > max_len)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: %s at offset %" PRIu64 " is %" PRIu64 " bytes long (limit %" PRIu64
                        ")",
                        r->label, what, r->pos - 8, len, max_len);
    if ((st = need(r, len, what))) return st;
    char *s = bsi_arena_alloc(r->arena, (size_t)len + 1);
    if (!s) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory reading %s", r->label, what);
    memcpy(s, r->data + r->pos, len);
    s[len] = 0;
    r->pos += len;
    out->s = s;
    out->len = len;
    return BONSAI_OK;
}

static bonsai_status read_value(reader *r, uint32_t type, bonsai_value *out, int depth,
                                const char *key);

static bonsai_status read_array(reader *r, bonsai_value *out, int depth, const char *key)
{
    uint64_t start = r->pos;
    uint32_t elem_type;
    uint64_t count;
    bonsai_status st;
    if ((st = read_u32(r, &elem_type, "array element type"))) return st;
    if ((st = read_u64(r, &count, "array length"))) return st;
    uint64_t min = min_encoded_size(elem_type);
    if (min == 0)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: key '%s': array at offset %" PRIu64 " has unknown element type %u",
                        r->label, key, start, elem_type);
    if (elem_type == BONSAI_VALUE_ARRAY && depth + 1 >= BSI_GGUF_MAX_NESTING)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: key '%s': arrays nested more than %d deep at offset %" PRIu64,
                        r->label, key, BSI_GGUF_MAX_NESTING, start);
    if ((st = check_count(r, count, min, "array"))) return st;
    out->type = BONSAI_VALUE_ARRAY;
    out->elem_type = elem_type;
    out->count = count;
    if (elem_type == BONSAI_VALUE_STRING) {
        bsi_str *strs = bsi_arena_calloc(r->arena, (size_t)count, sizeof *strs);
        if (!strs && count) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", r->label);
        for (uint64_t i = 0; i < count; i++)
            if ((st = read_string(r, &strs[i], UINT64_MAX, "string in array"))) return st;
        out->v.strs = strs;
    } else if (elem_type == BONSAI_VALUE_ARRAY) {
        bonsai_value *arrays = bsi_arena_calloc(r->arena, (size_t)count, sizeof *arrays);
        if (!arrays && count) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", r->label);
        for (uint64_t i = 0; i < count; i++)
            if ((st = read_array(r, &arrays[i], depth + 1, key))) return st;
        out->v.arrays = arrays;
    } else {
        out->v.raw = r->data + r->pos;
        if (elem_type == BONSAI_VALUE_BOOL)
            for (uint64_t i = 0; i < count; i++)
                if (out->v.raw[i] > 1)
                    return bsi_fail(BONSAI_ERR_CORRUPT,
                                    "%s: key '%s': bool array element %" PRIu64
                                    " at offset %" PRIu64 " is %u, not 0 or 1",
                                    r->label, key, i, r->pos + i, out->v.raw[i]);
        r->pos += count * min; /* check_count proved this fits */
    }
    return BONSAI_OK;
}

static bonsai_status read_value(reader *r, uint32_t type, bonsai_value *out, int depth,
                                const char *key)
{
    memset(out, 0, sizeof *out);
    out->type = type;
    if (type == BONSAI_VALUE_STRING) {
        bsi_str s = {NULL, 0};
        bonsai_status st = read_string(r, &s, UINT64_MAX, "string value");
        out->v.str = s.s;
        out->count = s.len;
        return st;
    }
    if (type == BONSAI_VALUE_ARRAY) return read_array(r, out, depth, key);
    uint32_t size = bsi_value_type_size(type);
    if (size == 0)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: key '%s' at offset %" PRIu64 " has unknown value type %u", r->label,
                        key, r->pos - 4, type);
    bonsai_status st = read_bytes(r, &out->v, size, "metadata value");
    if (st) return st;
    if (type == BONSAI_VALUE_BOOL && out->v.u8 > 1)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: key '%s': bool at offset %" PRIu64 " is %u, not 0 or 1", r->label, key,
                        r->pos - 1, out->v.u8);
    return BONSAI_OK;
}

/* ---- name index: open addressing over FNV-1a, also how duplicates are found ---- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Builds a table of n names (name_at(i)); returns the index of a duplicate in *dup or -1. */
typedef const char *(*name_at_fn)(const bsi_gguf *g, uint64_t i);

static const char *kv_name(const bsi_gguf *g, uint64_t i)
{
    return g->kv[i].key;
}

static const char *tensor_name(const bsi_gguf *g, uint64_t i)
{
    return g->tensors[i].name;
}

static int64_t index_lookup(const bsi_gguf *g, const uint64_t *table, uint64_t mask,
                            name_at_fn name_at, const char *name)
{
    if (!table) return -1;
    for (uint64_t h = hash_str(name) & mask;; h = (h + 1) & mask) {
        if (!table[h]) return -1;
        if (!strcmp(name_at(g, table[h] - 1), name)) return (int64_t)(table[h] - 1);
    }
}

static bonsai_status index_build(bsi_gguf *g, uint64_t n, name_at_fn name_at, uint64_t **table,
                                 uint64_t *mask, int64_t *dup)
{
    *dup = -1;
    uint64_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    uint64_t *t = bsi_arena_calloc(g->arena, (size_t)cap, sizeof *t);
    if (!t) return BONSAI_ERR_NO_MEMORY;
    *table = t;
    *mask = cap - 1;
    for (uint64_t i = 0; i < n; i++) {
        const char *name = name_at(g, i);
        uint64_t h = hash_str(name) & *mask;
        for (; t[h]; h = (h + 1) & *mask) {
            if (!strcmp(name_at(g, t[h] - 1), name)) {
                *dup = (int64_t)i;
                return BONSAI_OK;
            }
        }
        t[h] = i + 1;
    }
    return BONSAI_OK;
}

int64_t bsi_gguf_find_key(const bsi_gguf *g, const char *key)
{
    return index_lookup(g, g->kv_index, g->kv_index_mask, kv_name, key);
}

int64_t bsi_gguf_find_tensor(const bsi_gguf *g, const char *name)
{
    return index_lookup(g, g->tensor_index, g->tensor_index_mask, tensor_name, name);
}

const bonsai_value *bsi_gguf_get(const bsi_gguf *g, const char *key)
{
    int64_t i = bsi_gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kv[i].value;
}

/* ---- sections ---- */

static bonsai_status read_header(reader *r, bsi_gguf *g)
{
    char magic[4];
    bonsai_status st;
    if ((st = read_bytes(r, magic, 4, "magic"))) return st;
    if (memcmp(magic, "GGUF", 4))
        return bsi_fail(BONSAI_ERR_BAD_MAGIC,
                        "%s: not a GGUF file (starts with bytes %02x %02x %02x %02x, expected "
                        "'GGUF')",
                        r->label, (uint8_t)magic[0], (uint8_t)magic[1], (uint8_t)magic[2],
                        (uint8_t)magic[3]);
    if ((st = read_u32(r, &g->version, "version"))) return st;
    if (g->version != 2 && g->version != 3) {
        uint32_t swapped = __builtin_bswap32(g->version);
        return bsi_fail(BONSAI_ERR_UNSUPPORTED_VERSION,
                        "%s: GGUF version %u is not supported (only 2 and 3)%s", r->label,
                        g->version,
                        swapped == 2 || swapped == 3 ? "; this looks like a big-endian file" : "");
    }
    if ((st = read_u64(r, &g->n_tensors, "tensor count"))) return st;
    return read_u64(r, &g->n_kv, "metadata count");
}

static bonsai_status read_metadata(reader *r, bsi_gguf *g)
{
    bonsai_status st;
    /* a key/value pair is at least an 8-byte key length, a 4-byte type and a 1-byte value */
    if ((st = check_count(r, g->n_kv, 13, "metadata count"))) return st;
    g->kv = bsi_arena_calloc(r->arena, (size_t)g->n_kv, sizeof *g->kv);
    if (!g->kv && g->n_kv) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", r->label);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        bsi_gguf_kv *kv = &g->kv[i];
        bsi_str key;
        uint64_t at = r->pos;
        if ((st = read_string(r, &key, BSI_GGUF_MAX_KEY_LEN, "metadata key"))) return st;
        if (key.len == 0 || strlen(key.s) != key.len)
            return bsi_fail(BONSAI_ERR_CORRUPT,
                            "%s: metadata key %" PRIu64 " at offset %" PRIu64
                            " is empty or contains a NUL byte",
                            r->label, i, at);
        kv->key = key.s;
        uint32_t type;
        if ((st = read_u32(r, &type, "metadata value type"))) return st;
        if ((st = read_value(r, type, &kv->value, 0, key.s))) return st;
    }
    int64_t dup;
    if (index_build(g, g->n_kv, kv_name, &g->kv_index, &g->kv_index_mask, &dup))
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", r->label);
    if (dup >= 0)
        return bsi_fail(BONSAI_ERR_DUPLICATE, "%s: metadata key '%s' appears more than once",
                        r->label, g->kv[dup].key);

    g->alignment = BSI_GGUF_DEFAULT_ALIGNMENT;
    const bonsai_value *align = bsi_gguf_get(g, "general.alignment");
    if (align) {
        if (align->type != BONSAI_VALUE_U32)
            return bsi_fail(BONSAI_ERR_CORRUPT, "%s: general.alignment has type %s, not u32",
                            r->label, bonsai_value_type_name(align->type));
        uint32_t a = align->v.u32;
        if (a == 0 || (a & (a - 1)))
            return bsi_fail(BONSAI_ERR_CORRUPT, "%s: general.alignment %u is not a power of two",
                            r->label, a);
        g->alignment = a;
    }
    return BONSAI_OK;
}

static bonsai_status read_tensor_info(reader *r, bsi_gguf *g, bsi_gguf_tensor *t)
{
    bonsai_status st;
    bsi_str name;
    uint64_t at = r->pos;
    if ((st = read_string(r, &name, BSI_GGUF_MAX_NAME_LEN, "tensor name"))) return st;
    if (name.len == 0 || strlen(name.s) != name.len)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: tensor name at offset %" PRIu64 " is empty or contains a NUL byte",
                        r->label, at);
    t->name = name.s;
    if ((st = read_u32(r, &t->n_dims, "tensor dimension count"))) return st;
    if (t->n_dims < 1 || t->n_dims > BSI_GGUF_MAX_DIMS)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: tensor '%s' has %u dimensions (must be 1 to %d)",
                        r->label, t->name, t->n_dims, BSI_GGUF_MAX_DIMS);
    t->n_elements = 1;
    for (uint32_t d = 0; d < BSI_GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims) continue;
        if ((st = read_u64(r, &t->ne[d], "tensor dimension"))) return st;
        if (t->ne[d] > (uint64_t)INT64_MAX ||
            bsi_mul_overflow(t->n_elements, t->ne[d], &t->n_elements) ||
            t->n_elements > (uint64_t)INT64_MAX)
            return bsi_fail(BONSAI_ERR_CORRUPT,
                            "%s: tensor '%s': dimensions overflow (dimension %u is %" PRIu64 ")",
                            r->label, t->name, d, t->ne[d]);
    }
    if ((st = read_u32(r, &t->type, "tensor type"))) return st;
    if ((st = read_u64(r, &t->offset, "tensor offset"))) return st;
    const bsi_type_traits *tt = bsi_type_traits_of(t->type);
    if (!tt) {
        const char *known = bsi_foreign_type_name(t->type);
        return bsi_fail(BONSAI_ERR_UNSUPPORTED_TYPE,
                        "%s: tensor '%s' has type id %u%s%s%s, which libbonsai does not support "
                        "(F32, F16, BF16, Q8_0, Q1_0)",
                        r->label, t->name, t->type, known ? " (" : "", known ? known : "",
                        known ? ")" : "");
    }
    if (t->ne[0] % tt->block_size)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: tensor '%s' of type %s has rows of %" PRIu64
                        " elements, not a multiple of its block size %u",
                        r->label, t->name, tt->name, t->ne[0], tt->block_size);
    if (bsi_mul_overflow(t->n_elements / tt->block_size, tt->type_size, &t->n_bytes))
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: tensor '%s': byte size overflows (%" PRIu64 " elements of %s)",
                        r->label, t->name, t->n_elements, tt->name);
    if (t->offset % g->alignment)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: tensor '%s': offset %" PRIu64 " is not a multiple of the alignment %u",
                        r->label, t->name, t->offset, g->alignment);
    return BONSAI_OK;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const bsi_gguf_tensor *x = *(const bsi_gguf_tensor *const *)a;
    const bsi_gguf_tensor *y = *(const bsi_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Tensors must lie inside the file and must not share bytes. */
static bonsai_status check_tensor_data(reader *r, bsi_gguf *g)
{
    if (g->n_tensors == 0) return BONSAI_OK;
    uint64_t data_size = r->size >= g->data_offset ? r->size - g->data_offset : 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const bsi_gguf_tensor *t = &g->tensors[i];
        uint64_t end;
        if (bsi_add_overflow(t->offset, t->n_bytes, &end) || end > data_size)
            return bsi_fail(BONSAI_ERR_TRUNCATED,
                            "%s: tensor '%s' (%" PRIu64 " bytes at data offset %" PRIu64
                            ") extends past the end of the file (%" PRIu64 " bytes of tensor data)",
                            r->label, t->name, t->n_bytes, t->offset, data_size);
    }
    const bsi_gguf_tensor **order = bsi_malloc((size_t)g->n_tensors * sizeof *order);
    if (!order) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", r->label);
    for (uint64_t i = 0; i < g->n_tensors; i++) order[i] = &g->tensors[i];
    qsort(order, (size_t)g->n_tensors, sizeof *order, cmp_by_offset);
    bonsai_status st = BONSAI_OK;
    const bsi_gguf_tensor *a = NULL;
    for (uint64_t i = 0; i < g->n_tensors && !st; i++) {
        const bsi_gguf_tensor *b = order[i];
        if (!b->n_bytes) continue;
        if (a && a->offset + a->n_bytes > b->offset)
            st = bsi_fail(BONSAI_ERR_CORRUPT,
                          "%s: tensors '%s' (data offset %" PRIu64 ", %" PRIu64
                          " bytes) and '%s' (data offset %" PRIu64 ") overlap",
                          r->label, a->name, a->offset, a->n_bytes, b->name, b->offset);
        a = b;
    }
    free(order);
    return st;
}

static bonsai_status read_tensors(reader *r, bsi_gguf *g)
{
    bonsai_status st;
    /* a tensor info is at least: name length 8 + 1, n_dims 4, one dim 8, type 4, offset 8 */
    if ((st = check_count(r, g->n_tensors, 33, "tensor count"))) return st;
    g->tensors = bsi_arena_calloc(r->arena, (size_t)g->n_tensors, sizeof *g->tensors);
    if (!g->tensors && g->n_tensors)
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", r->label);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if ((st = read_tensor_info(r, g, &g->tensors[i]))) return st;
    int64_t dup;
    if (index_build(g, g->n_tensors, tensor_name, &g->tensor_index, &g->tensor_index_mask, &dup))
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", r->label);
    if (dup >= 0)
        return bsi_fail(BONSAI_ERR_DUPLICATE, "%s: tensor name '%s' appears more than once",
                        r->label, g->tensors[dup].name);
    uint64_t a = g->alignment;
    if (bsi_add_overflow(r->pos, a - 1, &g->data_offset))
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: alignment overflows", r->label);
    g->data_offset -= g->data_offset % a;
    return check_tensor_data(r, g);
}

bonsai_status bsi_gguf_parse(const uint8_t *data, uint64_t size, const char *label, bsi_gguf **out)
{
    *out = NULL;
    bsi_gguf *g = bsi_calloc(1, sizeof *g);
    bsi_arena *arena = bsi_arena_new();
    if (!g || !arena) {
        free(g);
        bsi_arena_free(arena);
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", label);
    }
    g->arena = arena;
    g->base = data;
    g->size = size;
    reader r = {.data = data, .size = size, .pos = 0, .label = label, .arena = arena};
    bonsai_status st = read_header(&r, g);
    if (!st) st = read_metadata(&r, g);
    if (!st) st = read_tensors(&r, g);
    if (st) {
        bsi_gguf_free(g);
        return st;
    }
    *out = g;
    return BONSAI_OK;
}

void bsi_gguf_free(bsi_gguf *g)
{
    if (!g) return;
    bsi_arena_free(g->arena);
    free(g);
}
