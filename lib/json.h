/*
 * A strict RFC 8259 JSON parser into a read-only document tree (internal).
 *
 * - Input is UTF-8 (a leading byte order mark is skipped, as RFC 8259 allows). Invalid UTF-8
 *   (overlong forms, surrogates, code points above U+10FFFF, truncated sequences), control
 *   characters inside strings, invalid escapes and lone or reversed \u surrogates are errors.
 * - Strings are decoded to UTF-8 and NUL-terminated; "\u0000" is legal, so the length (not the
 *   terminator) is authoritative.
 * - Numbers keep their exact source text and a double (correctly rounded; magnitudes beyond the
 *   double range become +-inf or +-0 in the double, the text stays exact).
 * - Objects keep their members in source order. Duplicate keys are refused (an error), so a
 *   lookup by key is never ambiguous. Lookup is O(1) on large objects (hashed at parse time).
 * - Nesting is limited to 256 arrays/objects; deeper input is an error.
 * - Any top-level value is accepted (not only objects and arrays); only whitespace may follow it.
 *
 * Every error is BONSAI_ERR_CORRUPT (BONSAI_ERR_NO_MEMORY when out of memory) through bsi_fail,
 * with a message "LABEL:LINE:COLUMN: what" (line and column 1-based, the column in bytes).
 *
 * The tree lives in the caller's arena and is freed with it; the input buffer is not referenced
 * after parsing. After a failure the arena may hold unreachable allocations. All accessors accept
 * NULL and nodes of the wrong type (returning NULL, 0 or false), so lookups can be chained.
 */
#ifndef BONSAI_JSON_H
#define BONSAI_JSON_H

#include "arena.h"
#include "internal.h"

#include <stdbool.h>

#define BSI_JSON_MAX_DEPTH 256

typedef enum bsi_json_type {
    BSI_JSON_INVALID = 0, /* only for a NULL node */
    BSI_JSON_NULL,
    BSI_JSON_BOOL,
    BSI_JSON_NUMBER,
    BSI_JSON_STRING,
    BSI_JSON_ARRAY,
    BSI_JSON_OBJECT,
} bsi_json_type;

typedef struct bsi_json bsi_json;

/* Parses `len` bytes at `buf` (no terminator needed); on success *root is the top-level value. */
bonsai_status bsi_json_parse(bsi_arena *arena, const char *buf, size_t len, const char *label,
                             const bsi_json **root);

bsi_json_type bsi_json_type_of(const bsi_json *v);
/* "null", "boolean", "number", "string", "array", "object" (or "invalid"). */
const char *bsi_json_type_name(bsi_json_type t);

/* Arrays: element count and element i (NULL when out of range). */
size_t bsi_json_array_len(const bsi_json *v);
const bsi_json *bsi_json_array_at(const bsi_json *v, size_t i);

/* Objects: member count, member i in source order (its key and key length through the optional
 * out-pointers), and the value of a key (NUL-terminated; NULL when absent). */
size_t bsi_json_object_len(const bsi_json *v);
const bsi_json *bsi_json_object_at(const bsi_json *v, size_t i, const char **key, size_t *key_len);
const bsi_json *bsi_json_object_get(const bsi_json *v, const char *key);
const bsi_json *bsi_json_object_getn(const bsi_json *v, const char *key, size_t key_len);

/* A string's decoded UTF-8 bytes (NUL-terminated) and length; NULL if `v` is not a string. */
const char *bsi_json_string(const bsi_json *v, size_t *len);

/* A number's value; false if `v` is not a number. */
bool bsi_json_number(const bsi_json *v, double *out);
/* A number's source text (NUL-terminated) and length; NULL if `v` is not a number. */
const char *bsi_json_number_text(const bsi_json *v, size_t *len);
/* A number that is an integer with magnitude at most 2^53 ("3", "3.0", "3e2" qualify). */
bool bsi_json_int64(const bsi_json *v, int64_t *out);

/* A boolean's value; false if `v` is not a boolean. */
bool bsi_json_bool(const bsi_json *v, bool *out);

#endif
