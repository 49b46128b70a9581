/*
 * JSON-constrained output (internal): a JSON Schema subset compiled into a byte-level pushdown
 * automaton, and a precomputed structure over a vocabulary's token strings that computes, for a
 * matcher state, which tokens may come next.
 *
 * Schema subset (anything else is BONSAI_ERR_UNSUPPORTED, naming the keyword and its location as
 * a JSON pointer such as "#/properties/name"):
 * - `type`: "object", "array", "string", "number", "integer", "boolean", "null", or an array of
 *   them. Without `type` a schema with `properties`/`required` is an object, one with `items` an
 *   array, and `{}` (or `true`) any value.
 * - Objects: `properties`, `required`; only listed properties are allowed (additionalProperties
 *   false is implied; `"additionalProperties": false` is accepted). Keys may come in any order,
 *   each at most once, spelled exactly as their shortest JSON encoding (no needless escapes); the
 *   closing brace is allowed once every required key appeared. An object schema without
 *   properties accepts any keys with any values (only `{}` with `"additionalProperties": false`).
 *   At most 64 properties per object.
 *   Keys of objects with any keys are unique too (as the strict parser in json.h demands),
 *   compared by a 32-bit hash of their decoded bytes (so a new key that collides with an earlier
 *   one, odds about 1 in 2^32 per pair, is refused too): a \u escape in such a key must be below
 *   U+0080 (other characters are written as they are), and the open objects of this kind hold at
 *   most BSI_JSON_MAX_KEYS keys together.
 * - Arrays: `items` (a schema; without it any values).
 * - `enum` (and `const`, a one-value enum): JSON values of any kind, matched as their compact
 *   canonical serialisation (numbers as written in the schema, strings with the shortest escapes,
 *   containers without whitespace, object members in schema order).
 * - Ignored annotations: `description`, `title`, `$schema`, `$id`, `$comment`, `default`,
 *   `examples`.
 * - Schema containers nest at most BSI_JSON_MAX_NEST deep. A NULL schema is "JSON mode": any
 *   object at the top level, with any values inside.
 *
 * The document grammar is strict RFC 8259 with bounds so that generation cannot run forever:
 * strings are valid UTF-8 (no overlong forms, surrogates or code points above U+10FFFF; \u
 * escapes must pair surrogates), without raw control characters; integer parts have at most 16
 * digits, fractions 16 and exponents 3; a whitespace run between tokens has at most one line
 * break (\n or \r\n) and 32 spaces or tabs; containers nest at most BSI_JSON_MAX_NEST deep.
 * Whitespace may precede the top-level value but nothing may follow it.
 */
#ifndef BONSAI_JSON_CONSTRAINT_H
#define BONSAI_JSON_CONSTRAINT_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BSI_JSON_MAX_NEST   32  /* arrays/objects in a document or a schema */
#define BSI_JSON_MAX_PROPS  64  /* properties per object schema */
#define BSI_JSON_MAX_INT    16  /* digits of a number's integer part */
#define BSI_JSON_MAX_FRAC   16  /* digits of a fraction */
#define BSI_JSON_MAX_EXP    3   /* digits of an exponent */
#define BSI_JSON_MAX_SPACES 32  /* spaces/tabs in one whitespace run (plus one line break) */
#define BSI_JSON_MAX_KEYS   128 /* keys in the open objects without listed properties */

typedef struct bsi_jschema bsi_jschema;

/* One value being matched (internal to the matcher; exposed for the state's size). */
typedef struct bsi_jframe {
    uint16_t node; /* compiled schema node */
    uint8_t kind;
    uint8_t sub;
    uint8_t ws;   /* whitespace run so far */
    uint8_t aux;  /* kind-specific */
    uint16_t pos; /* kind-specific */
    union {
        uint64_t used; /* object: properties seen */
        struct {
            uint32_t lo, hi; /* key / enum: candidates */
        } r;
    } u;
} bsi_jframe;

/*
 * A matcher state: a plain value, copied with bsi_jstate_copy() (or memcpy). frames[0] is the
 * document; above it the open containers and at most one scalar.
 */
typedef struct bsi_jstate {
    uint32_t depth;  /* frames in use */
    uint32_t n_keys; /* keys in use */
    bsi_jframe frames[BSI_JSON_MAX_NEST + 2];
    uint32_t keys[BSI_JSON_MAX_KEYS]; /* hashes of the keys of the open objects with any keys */
} bsi_jstate;

/* Compiles `len` bytes of schema text (NULL: JSON mode). BONSAI_ERR_INVALID_ARGUMENT for text
 * that is not JSON or not a valid schema, BONSAI_ERR_UNSUPPORTED for keywords outside the subset
 * and for limits exceeded. */
bonsai_status bsi_jschema_compile(const char *text, size_t len, bsi_jschema **out);
void bsi_jschema_free(bsi_jschema *s);

/* The state before the first byte. */
void bsi_jstate_init(const bsi_jschema *s, bsi_jstate *st);
/* Copies only the frames and keys in use. */
void bsi_jstate_copy(bsi_jstate *dst, const bsi_jstate *src);
/* Advances by one byte; false if the byte cannot continue the document, and then the state is
 * unspecified (feed a copy when the state must survive a refusal). */
bool bsi_jstate_feed(const bsi_jschema *s, bsi_jstate *st, uint8_t byte);
/* Feeds n bytes; false (state unspecified) at the first refused one. */
bool bsi_jstate_feed_bytes(const bsi_jschema *s, bsi_jstate *st, const uint8_t *p, size_t n);
/* The bytes so far are a whole document (a top-level number may still go on). */
bool bsi_jstate_complete(const bsi_jschema *s, const bsi_jstate *st);
/* The top-level value has ended: complete, and no byte may follow. Never for a top-level
 * number (nor an enum value that a longer one extends), which ends with the document. */
bool bsi_jstate_closed(const bsi_jschema *s, const bsi_jstate *st);

/* Writes to out (cap bytes) a short continuation that ends the document: closes the open values
 * (a number or enum value may end as it is), writing the cheapest value wherever one is needed,
 * the required properties of open objects included. Returns its length (0 when the document is
 * closed, or a complete top-level number or enum value), or SIZE_MAX when it does not fit in cap
 * or the document cannot be finished within the nesting limit. *closed (optional) says whether
 * the document is then closed, or only complete so that an end-of-generation token must follow. */
size_t bsi_jstate_finish(const bsi_jschema *s, const bsi_jstate *st, uint8_t *out, size_t cap,
                         bool *closed);
/* Inside a string value (not a key), between characters: plain string characters (see
 * bsi_jvocab_is_plain) keep it there and change nothing else. */
bool bsi_jstate_in_string(const bsi_jstate *st);

/* ---------------------------------------------------------------------------------------- */
/* Token masking. */

typedef enum bsi_jtok_kind {
    BSI_JTOK_TEXT = 0, /* an ordinary token: allowed when its bytes can be fed */
    BSI_JTOK_EOG = 1,  /* ends generation: allowed exactly when the document is complete */
    BSI_JTOK_NEVER = 2 /* never allowed (control tokens); empty tokens are never allowed either */
} bsi_jtok_kind;

/* The bytes of token `id` (valid during the build) and its kind. */
typedef bsi_jtok_kind (*bsi_jtok_fn)(void *ctx, uint32_t id, const uint8_t **bytes, size_t *len);

typedef struct bsi_jvocab bsi_jvocab;

/* Precomputes the token structure for ids 0..n_tokens-1 (the bytes are copied). */
bonsai_status bsi_jvocab_build(uint32_t n_tokens, bsi_jtok_fn fn, void *ctx, bsi_jvocab **out);
void bsi_jvocab_free(bsi_jvocab *v);
uint32_t bsi_jvocab_n(const bsi_jvocab *v);
/* Bytes of scratch memory bsi_jvocab_mask() needs. */
size_t bsi_jvocab_scratch_size(const bsi_jvocab *v);
/*
 * Sets bit id of mask ((n_tokens + 63) / 64 words, fully written) for every token allowed in
 * state `st`. `scratch` is bsi_jvocab_scratch_size() bytes, aligned for any type. Read-only on
 * `v`, so threads may share one structure with their own scratch.
 */
void bsi_jvocab_mask(const bsi_jvocab *v, const bsi_jschema *s, const bsi_jstate *st,
                     uint64_t *mask, void *scratch);
/* Whether token `id` is allowed in state `st` (false for ids out of range). */
bool bsi_jvocab_check(const bsi_jvocab *v, const bsi_jschema *s, const bsi_jstate *st, int32_t id);
/* Advances `st` by token `id` if allowed (an EOG token leaves it unchanged); false and `st`
 * unchanged otherwise. */
bool bsi_jvocab_accept(const bsi_jvocab *v, const bsi_jschema *s, bsi_jstate *st, int32_t id);
/* The token's bytes (NULL for ids out of range). */
const uint8_t *bsi_jvocab_bytes(const bsi_jvocab *v, int32_t id, size_t *len);
bsi_jtok_kind bsi_jvocab_kind(const bsi_jvocab *v, int32_t id);
/* Made only of characters a string may hold as they are (complete UTF-8, no quote, backslash or
 * control character). */
bool bsi_jvocab_is_plain(const bsi_jvocab *v, int32_t id);
/* Tokens that spell p[0 .. n) taking the longest token at each step (an upper bound on the
 * fewest), and the first of them in *first; SIZE_MAX when some byte has no token. */
size_t bsi_jvocab_spell(const bsi_jvocab *v, const uint8_t *p, size_t n, int32_t *first);
/* An end-of-generation token, or -1. */
int32_t bsi_jvocab_eog_token(const bsi_jvocab *v);

/* The structure for a model's vocabulary (lib/json_sampler.c): bytes as bsi_vocab_bytes without
 * special text, EOG tokens as such, control tokens never. */
bonsai_status bsi_jvocab_from_model(const bonsai_model *m, bsi_jvocab **out);

#endif
