/* UTF-8 oracles for the tokenizer tests and fuzzer, written independently of lib/utf8.h so that
 * they check it rather than repeat it. Header-only: each user includes it once. */
#ifndef BONSAI_TESTS_UTF8_ORACLE_H
#define BONSAI_TESTS_UTF8_ORACLE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* True if s[0 .. n) is valid UTF-8, by Table 3-7 of the Unicode standard. */
static inline bool oracle_valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i], lo = 0x80, hi = 0xbf;
        size_t k;
        if (b <= 0x7f)
            k = 0;
        else if (b >= 0xc2 && b <= 0xdf)
            k = 1;
        else if (b == 0xe0)
            k = 2, lo = 0xa0;
        else if (b == 0xed)
            k = 2, hi = 0x9f;
        else if (b >= 0xe1 && b <= 0xef)
            k = 2;
        else if (b == 0xf0)
            k = 3, lo = 0x90;
        else if (b == 0xf4)
            k = 3, hi = 0x8f;
        else if (b >= 0xf1 && b <= 0xf3)
            k = 3;
        else
            return false;
        if (k && i + k >= n) return false;
        for (size_t j = 1; j <= k; j++) {
            uint8_t c = s[i + j];
            if (j == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xbf)) return false;
        }
        i += k + 1;
    }
    return true;
}

/* NFC of each maximal valid run, invalid bytes kept: what a qwen2 tokenizer round-trips to.
 * Returns a malloc'd buffer of *out_len bytes, or NULL if memory or utf8proc failed. */
static inline uint8_t *oracle_nfc_runs(const uint8_t *s, size_t n, size_t *out_len)
{
    uint8_t *out = malloc(4 * n + 16);
    if (!out) return NULL;
    size_t o = 0, i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n) {
            size_t k = 1;
            while (k <= 4 && j + k <= n && !oracle_valid_utf8(s + j, k)) k++;
            if (k > 4 || j + k > n) break;
            j += k;
        }
        if (j > i) {
            utf8proc_uint8_t *nfc = NULL;
            utf8proc_ssize_t l = utf8proc_map(s + i, (utf8proc_ssize_t)(j - i), &nfc,
                                              UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (l < 0 || (size_t)l > 3 * (j - i)) {
                free(nfc);
                free(out);
                return NULL;
            }
            memcpy(out + o, nfc, (size_t)l);
            o += (size_t)l;
            free(nfc);
        }
        if (j < n) out[o++] = s[j++];
        i = j;
    }
    *out_len = o;
    return out;
}

#endif
