/* Metadata lookup and the typed value getters of the public API. */
#include "model.h"

#include "types.h"

#include <inttypes.h>
#include <string.h>

uint64_t bonsai_model_meta_count(const bonsai_model *model)
{
    return model ? model->gguf->n_kv : 0;
}

bonsai_status bonsai_model_meta_at(const bonsai_model *model, uint64_t index, const char **key,
                                   const bonsai_value **value)
{
    if (key) *key = NULL;
    if (value) *value = NULL;
    if (!model) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_model_meta_at: model is NULL");
    if (index >= model->gguf->n_kv)
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                        "bonsai_model_meta_at: index %" PRIu64 " (the model has %" PRIu64 " keys)",
                        index, model->gguf->n_kv);
    if (key) *key = model->gguf->kv[index].key;
    if (value) *value = &model->gguf->kv[index].value;
    return BONSAI_OK;
}

bonsai_status bonsai_model_meta_get(const bonsai_model *model, const char *key,
                                    const bonsai_value **value)
{
    if (value) *value = NULL;
    if (!model || !key || !value)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_model_meta_get: NULL argument");
    const bonsai_value *v = bsi_gguf_get(model->gguf, key);
    if (!v) return bsi_fail(BONSAI_ERR_NOT_FOUND, "no metadata key '%s'", key);
    *value = v;
    return BONSAI_OK;
}

bonsai_value_type bonsai_value_type_of(const bonsai_value *value)
{
    return value ? (bonsai_value_type)value->type : (bonsai_value_type)-1;
}

static bonsai_status expect(const bonsai_value *v, const void *out, uint32_t type, const char *fn)
{
    if (!v || !out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: NULL argument", fn);
    if (v->type != type)
        return bsi_fail(BONSAI_ERR_TYPE_MISMATCH, "%s: the value has type %s, not %s", fn,
                        bonsai_value_type_name(v->type), bonsai_value_type_name(type));
    return BONSAI_OK;
}

#define SCALAR_GETTER(NAME, CTYPE, TYPE, FIELD)                                                    \
    bonsai_status bonsai_value_get_##NAME(const bonsai_value *value, CTYPE *out)                   \
    {                                                                                              \
        bonsai_status st = expect(value, out, TYPE, "bonsai_value_get_" #NAME);                    \
        if (!st) *out = value->v.FIELD;                                                            \
        return st;                                                                                 \
    }

SCALAR_GETTER(u8, uint8_t, BONSAI_VALUE_U8, u8)
SCALAR_GETTER(i8, int8_t, BONSAI_VALUE_I8, i8)
SCALAR_GETTER(u16, uint16_t, BONSAI_VALUE_U16, u16)
SCALAR_GETTER(i16, int16_t, BONSAI_VALUE_I16, i16)
SCALAR_GETTER(u32, uint32_t, BONSAI_VALUE_U32, u32)
SCALAR_GETTER(i32, int32_t, BONSAI_VALUE_I32, i32)
SCALAR_GETTER(u64, uint64_t, BONSAI_VALUE_U64, u64)
SCALAR_GETTER(i64, int64_t, BONSAI_VALUE_I64, i64)
SCALAR_GETTER(f32, float, BONSAI_VALUE_F32, f32)
SCALAR_GETTER(f64, double, BONSAI_VALUE_F64, f64)
SCALAR_GETTER(bool, bool, BONSAI_VALUE_BOOL, b)

bonsai_status bonsai_value_get_string(const bonsai_value *value, const char **str, uint64_t *len)
{
    if (str) *str = NULL;
    bonsai_status st = expect(value, str, BONSAI_VALUE_STRING, "bonsai_value_get_string");
    if (st) return st;
    *str = value->v.str;
    if (len) *len = value->count;
    return BONSAI_OK;
}

/* Any integer value as a sign flag and magnitude-free pair: returns 1 for integers. */
static int integer_of(const bonsai_value *v, int64_t *s, uint64_t *u, int *is_signed)
{
    *is_signed = 1;
    switch (v->type) {
    case BONSAI_VALUE_U8:
        *u = v->v.u8;
        *is_signed = 0;
        return 1;
    case BONSAI_VALUE_U16:
        *u = v->v.u16;
        *is_signed = 0;
        return 1;
    case BONSAI_VALUE_U32:
        *u = v->v.u32;
        *is_signed = 0;
        return 1;
    case BONSAI_VALUE_U64:
        *u = v->v.u64;
        *is_signed = 0;
        return 1;
    case BONSAI_VALUE_I8: *s = v->v.i8; return 1;
    case BONSAI_VALUE_I16: *s = v->v.i16; return 1;
    case BONSAI_VALUE_I32: *s = v->v.i32; return 1;
    case BONSAI_VALUE_I64: *s = v->v.i64; return 1;
    }
    return 0;
}

bonsai_status bonsai_value_to_i64(const bonsai_value *value, int64_t *out)
{
    if (!value || !out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_value_to_i64: NULL");
    int64_t s = 0;
    uint64_t u = 0;
    int is_signed;
    if (!integer_of(value, &s, &u, &is_signed))
        return bsi_fail(BONSAI_ERR_TYPE_MISMATCH, "bonsai_value_to_i64: the value is a %s",
                        bonsai_value_type_name(value->type));
    if (!is_signed && u > (uint64_t)INT64_MAX)
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "bonsai_value_to_i64: %" PRIu64 " does not fit",
                        u);
    *out = is_signed ? s : (int64_t)u;
    return BONSAI_OK;
}

bonsai_status bonsai_value_to_u64(const bonsai_value *value, uint64_t *out)
{
    if (!value || !out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_value_to_u64: NULL");
    int64_t s = 0;
    uint64_t u = 0;
    int is_signed;
    if (!integer_of(value, &s, &u, &is_signed))
        return bsi_fail(BONSAI_ERR_TYPE_MISMATCH, "bonsai_value_to_u64: the value is a %s",
                        bonsai_value_type_name(value->type));
    if (is_signed && s < 0)
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "bonsai_value_to_u64: %" PRId64 " is negative", s);
    *out = is_signed ? (uint64_t)s : u;
    return BONSAI_OK;
}

bonsai_status bonsai_value_to_f64(const bonsai_value *value, double *out)
{
    if (!value || !out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_value_to_f64: NULL");
    int64_t s = 0;
    uint64_t u = 0;
    int is_signed;
    if (value->type == BONSAI_VALUE_F32)
        *out = value->v.f32;
    else if (value->type == BONSAI_VALUE_F64)
        *out = value->v.f64;
    else if (integer_of(value, &s, &u, &is_signed))
        *out = is_signed ? (double)s : (double)u;
    else
        return bsi_fail(BONSAI_ERR_TYPE_MISMATCH, "bonsai_value_to_f64: the value is a %s",
                        bonsai_value_type_name(value->type));
    return BONSAI_OK;
}

bonsai_status bonsai_value_array_info(const bonsai_value *value, bonsai_value_type *elem_type,
                                      uint64_t *count)
{
    if (!value) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_value_array_info: NULL");
    if (value->type != BONSAI_VALUE_ARRAY)
        return bsi_fail(BONSAI_ERR_TYPE_MISMATCH, "bonsai_value_array_info: the value is a %s",
                        bonsai_value_type_name(value->type));
    if (elem_type) *elem_type = (bonsai_value_type)value->elem_type;
    if (count) *count = value->count;
    return BONSAI_OK;
}

/* Checks that `value` is an array of `elem_type` and that [first, first + count) is inside. */
static bonsai_status check_elements(const bonsai_value *value, uint32_t elem_type, uint64_t first,
                                    uint64_t count, const char *fn)
{
    if (!value) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: NULL value", fn);
    if (value->type != BONSAI_VALUE_ARRAY || value->elem_type != elem_type)
        return bsi_fail(BONSAI_ERR_TYPE_MISMATCH, "%s: the value is not an array of %s", fn,
                        bonsai_value_type_name(elem_type));
    if (first > value->count || count > value->count - first)
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                        "%s: elements [%" PRIu64 ", +%" PRIu64 ") of an array of %" PRIu64, fn,
                        first, count, value->count);
    return BONSAI_OK;
}

bonsai_status bonsai_value_array_copy(const bonsai_value *value, bonsai_value_type elem_type,
                                      uint64_t first, uint64_t count, void *dst, size_t dst_size)
{
    const char *fn = "bonsai_value_array_copy";
    uint32_t size = bsi_value_type_size(elem_type);
    if (size == 0)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: %s elements cannot be copied", fn,
                        bonsai_value_type_name(elem_type));
    bonsai_status st = check_elements(value, elem_type, first, count, fn);
    if (st) return st;
    if (count && !dst) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: dst is NULL", fn);
    if (count > dst_size / size)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "%s: %" PRIu64 " elements need %" PRIu64 " bytes, dst has %zu", fn, count,
                        count * size, dst_size);
    if (count) memcpy(dst, value->v.raw + first * size, (size_t)(count * size));
    return BONSAI_OK;
}

bonsai_status bonsai_value_array_string(const bonsai_value *value, uint64_t index, const char **str,
                                        uint64_t *len)
{
    const char *fn = "bonsai_value_array_string";
    if (str) *str = NULL;
    bonsai_status st = check_elements(value, BONSAI_VALUE_STRING, index, 1, fn);
    if (st) return st;
    if (!str) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: str is NULL", fn);
    *str = value->v.strs[index].s;
    if (len) *len = value->v.strs[index].len;
    return BONSAI_OK;
}

bonsai_status bonsai_value_array_array(const bonsai_value *value, uint64_t index,
                                       const bonsai_value **elem)
{
    const char *fn = "bonsai_value_array_array";
    if (elem) *elem = NULL;
    bonsai_status st = check_elements(value, BONSAI_VALUE_ARRAY, index, 1, fn);
    if (st) return st;
    if (!elem) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: elem is NULL", fn);
    *elem = &value->v.arrays[index];
    return BONSAI_OK;
}
