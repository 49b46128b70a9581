/* Status strings, the thread-local last error, the log callback and version functions. */
#include "internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *bonsai_version_string(void)
{
    return BONSAI_VERSION_STRING;
}

uint32_t bonsai_version_number(void)
{
    return BONSAI_VERSION_NUMBER;
}

uint32_t bonsai_abi_version(void)
{
    return BONSAI_ABI_VERSION;
}

const char *bonsai_status_string(bonsai_status status)
{
    switch (status) {
    case BONSAI_OK: return "ok";
    case BONSAI_ERR_INVALID_ARGUMENT: return "invalid argument";
    case BONSAI_ERR_NO_MEMORY: return "out of memory";
    case BONSAI_ERR_IO: return "input/output error";
    case BONSAI_ERR_BAD_MAGIC: return "not a GGUF file";
    case BONSAI_ERR_UNSUPPORTED_VERSION: return "unsupported GGUF version";
    case BONSAI_ERR_TRUNCATED: return "truncated file";
    case BONSAI_ERR_CORRUPT: return "corrupt file";
    case BONSAI_ERR_UNSUPPORTED_TYPE: return "unsupported tensor type";
    case BONSAI_ERR_DUPLICATE: return "duplicate key or tensor name";
    case BONSAI_ERR_NOT_FOUND: return "not found";
    case BONSAI_ERR_TYPE_MISMATCH: return "type mismatch";
    case BONSAI_ERR_OUT_OF_RANGE: return "out of range";
    case BONSAI_ERR_ABORTED: return "aborted";
    case BONSAI_ERR_UNSUPPORTED: return "unsupported";
    case BONSAI_ERR_CONTEXT_FULL: return "context full";
    case BONSAI_ERR_BACKEND: return "backend error";
    case BONSAI_ERR_INVALID_STATE: return "invalid state";
    }
    return "unknown status";
}

static _Thread_local char last_error[1024];

const char *bonsai_last_error(void)
{
    return last_error;
}

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static bonsai_log_fn log_fn;
static bonsai_log_level log_max = BONSAI_LOG_WARN;
static void *log_user;

void bonsai_log_set(bonsai_log_fn fn, bonsai_log_level max_level, void *user_data)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_max = max_level;
    log_user = user_data;
    pthread_mutex_unlock(&log_lock);
}

static void log_va(bonsai_log_level level, const char *fmt, va_list ap)
{
    pthread_mutex_lock(&log_lock);
    bonsai_log_fn fn = log_fn;
    void *user = log_user;
    int enabled = fn && level <= log_max;
    pthread_mutex_unlock(&log_lock);
    if (!enabled) return;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fn(level, msg, user);
}

void bsi_log(bonsai_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_va(level, fmt, ap);
    va_end(ap);
}

bonsai_status bsi_fail(bonsai_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    bsi_log(BONSAI_LOG_DEBUG, "%s (%s)", last_error, bonsai_status_string(status));
    return status;
}

bonsai_status bsi_out_size_check(uint32_t size, size_t min, size_t ours, const char *what)
{
    if (size >= min && size <= ours) return BONSAI_OK;
    return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                    "%s->struct_size is %u; set it to sizeof the struct (this library fills %zu to "
                    "%zu bytes)",
                    what, size, min, ours);
}

void bsi_out_copy(void *dst, const void *src)
{
    uint32_t size;
    memcpy(&size, dst, sizeof size);
    memcpy((char *)dst + sizeof size, (const char *)src + sizeof size, size - sizeof size);
}
