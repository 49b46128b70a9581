/* Handle checks and the debug quarantine of freed handles (handle.h). */
#include "handle.h"

#include <pthread.h>
#include <stdlib.h>

#if BSI_CHECK_HANDLES
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *ring[BSI_QUARANTINE];
static size_t next;
#endif

bool bsi_handle_alive(const uint32_t *magic, uint32_t expected, const char *fn)
{
#if BSI_CHECK_HANDLES
    if (*magic == expected) return true;
    const char *why = *magic == BSI_MAGIC_DEAD
                          ? "the handle was already freed (freed twice, or used after being freed)"
                          : "not a handle of this kind";
    bsi_log(BONSAI_LOG_ERROR, "%s: %s", fn, why);
    bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: %s", fn, why);
    return false;
#else
    (void)magic, (void)expected, (void)fn;
    return true;
#endif
}

void bsi_handle_retire(void *handle, uint32_t *magic)
{
#if BSI_CHECK_HANDLES
    *magic = BSI_MAGIC_DEAD;
    pthread_mutex_lock(&lock);
    void *old = ring[next];
    ring[next] = handle;
    next = (next + 1) % BSI_QUARANTINE;
    pthread_mutex_unlock(&lock);
    free(old);
#else
    (void)magic;
    free(handle);
#endif
}
