/* The compiled form of a JSON schema (internal to json_schema.c, the compiler, and
 * json_constraint.c, the matcher). Not installed. */
#ifndef BONSAI_JSON_SCHEMA_H
#define BONSAI_JSON_SCHEMA_H

#include "arena.h"
#include "json_constraint.h"

enum {
    T_NULL = 1,
    T_BOOL = 2,
    T_INT = 4,
    T_NUM = 8,
    T_STR = 16,
    T_ARR = 32,
    T_OBJ = 64,
    T_ANY = 127,
};

/* A byte string: an encoded property name with its closing quote (and the property's schema),
 * or an enum value's serialisation. */
typedef struct jstr {
    const uint8_t *s;
    uint32_t len;
    uint16_t node;
} jstr;

typedef struct jnode {
    uint8_t types;    /* T_* */
    uint8_t n_props;  /* object: listed properties */
    uint8_t any_keys; /* object without listed properties: any keys, any values */
    uint8_t has_enum;
    uint16_t items;    /* array: the items' node */
    uint32_t props;    /* object: first property in s->props (sorted by encoded name) */
    uint64_t required; /* object: required properties, bit i = property props + i */
    uint64_t all;      /* object: every property */
    uint32_t enum_lo;  /* enum: values [enum_lo, enum_hi) in s->enums, sorted */
    uint32_t enum_hi;
} jnode;

struct bsi_jschema {
    jnode *nodes;
    uint32_t n_nodes, cap_nodes;
    jstr *props;
    uint32_t n_props, cap_props;
    jstr *enums;
    uint32_t n_enums, cap_enums;
    uint16_t root;
    bsi_arena *arena; /* the strings */
};

#define NODE_ANY 0 /* any value; objects with any keys, arrays of any values */

static inline uint64_t bsi_jrange_bits(uint32_t lo, uint32_t hi) /* bits [lo, hi), hi <= 64 */
{
    uint64_t below_hi = hi >= 64 ? ~0ull : (1ull << hi) - 1;
    return below_hi & ~((1ull << lo) - 1);
}

#endif
