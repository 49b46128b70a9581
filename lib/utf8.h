/* UTF-8 validation by maximal subparts (Unicode 15, section 3.9, "U+FFFD substitution"). */
#ifndef BONSAI_UTF8_H
#define BONSAI_UTF8_H

#include <stddef.h>
#include <stdint.h>

typedef enum bsi_utf8_kind {
    BSI_UTF8_VALID,      /* a whole character */
    BSI_UTF8_INVALID,    /* a maximal subpart that can never start a character: one U+FFFD */
    BSI_UTF8_INCOMPLETE, /* the bytes so far are the valid start of a longer character */
} bsi_utf8_kind;

/* Classifies the bytes at s[0 .. n) (n >= 1): returns the length of the character, of the invalid
 * maximal subpart, or of the incomplete prefix (all n bytes), with *kind saying which. */
static inline size_t bsi_utf8_next(const uint8_t *s, size_t n, bsi_utf8_kind *kind)
{
    uint8_t b = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf; /* the range of the second byte */
    if (b < 0x80) {
        *kind = BSI_UTF8_VALID;
        return 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
        need = 2;
    } else if (b >= 0xe0 && b <= 0xef) {
        need = 3;
        if (b == 0xe0) lo = 0xa0;
        if (b == 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        need = 4;
        if (b == 0xf0) lo = 0x90;
        if (b == 0xf4) hi = 0x8f;
    } else {
        *kind = BSI_UTF8_INVALID;
        return 1;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) {
            *kind = BSI_UTF8_INCOMPLETE;
            return n;
        }
        uint8_t c = s[i];
        if (i == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xbf)) {
            *kind = BSI_UTF8_INVALID;
            return i;
        }
    }
    *kind = BSI_UTF8_VALID;
    return need;
}

/* Encodes code point cp (< 0x110000) at out (4 bytes of room); returns the length. */
static inline size_t bsi_utf8_put(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* The code point of a valid character of length len at s. */
static inline uint32_t bsi_utf8_decode(const uint8_t *s, size_t len)
{
    switch (len) {
    case 1: return s[0];
    case 2: return (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
    case 3: return (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    default:
        return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
               (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
    }
}

#endif
