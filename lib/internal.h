/* Internal helpers shared by the core: errors, logging, small utilities. Not installed. */
#ifndef BONSAI_INTERNAL_H
#define BONSAI_INTERNAL_H

#include "alloc.h"
#include "bonsai/bonsai.h"

#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libbonsai reads GGUF (little-endian) in place and needs a little-endian host"
#endif

#if defined(__GNUC__)
#define BSI_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define BSI_UNLIKELY(x)  __builtin_expect(!!(x), 0)
#else
#define BSI_PRINTF(f, a)
#define BSI_UNLIKELY(x) (x)
#endif

/* Record `status` with a formatted message as this thread's last error; returns `status`, so a
 * failure reads `return bsi_fail(BONSAI_ERR_CORRUPT, "...", ...);`. Also logs at debug level. */
bonsai_status bsi_fail(bonsai_status status, const char *fmt, ...) BSI_PRINTF(2, 3);

/* Log through the user's callback, if any and if `level` is enabled. */
void bsi_log(bonsai_log_level level, const char *fmt, ...) BSI_PRINTF(2, 3);

/* Overflow-checked arithmetic on sizes read from untrusted files: true on overflow. */
static inline int bsi_add_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
    return __builtin_add_overflow(a, b, r);
}
static inline int bsi_mul_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
    return __builtin_mul_overflow(a, b, r);
}

/* Checks the struct_size of a caller's parameter struct: at least the first ABI version's size
 * (`min`), at most ours. */
#define BSI_STRUCT_SIZE_OK(p, min) ((p)->struct_size >= (min) && (p)->struct_size <= sizeof(*(p)))

/* Output structs (begin with a struct_size the caller sets): whether the library can fill `size`
 * bytes: at least `min`, at most `ours` (a larger size comes from a newer header and is refused,
 * docs/ABI.md). `what` names the struct in the message ("bonsai_backend_get: out"). */
bonsai_status bsi_out_size_check(uint32_t size, size_t min, size_t ours, const char *what);

/* Copies the library's filled output struct `src` into the caller's `dst`, the bytes after
 * struct_size up to the caller's (checked) struct_size, which stays as the caller set it. */
void bsi_out_copy(void *dst, const void *src);

#endif
