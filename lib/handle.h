/*
 * Handles (model, session, sampler, chat, detokenizer) begin with a magic number saying what they
 * are and whether they are alive. In debug builds (NDEBUG undefined) a freed handle is kept, dead,
 * in a quarantine of the last BSI_QUARANTINE freed ones instead of going back to the allocator, so
 * that freeing it again or using it is caught and reported (an error status, and the log at ERROR
 * level) rather than corrupting the heap. Release builds only check for NULL. Not installed.
 */
#ifndef BONSAI_HANDLE_H
#define BONSAI_HANDLE_H

#include "internal.h"

#include <stdbool.h>

#define BSI_QUARANTINE 256

enum {
    BSI_MAGIC_MODEL = 0x4c444f4d,   /* "MODL" */
    BSI_MAGIC_SESSION = 0x53534553, /* "SESS" */
    BSI_MAGIC_SAMPLER = 0x504d4153, /* "SAMP" */
    BSI_MAGIC_CHAT = 0x54414843,    /* "CHAT" */
    BSI_MAGIC_DETOK = 0x4f544544,   /* "DETO" */
    BSI_MAGIC_DEAD = 0x44414544,    /* "DEAD" */
};

#ifdef NDEBUG
#define BSI_CHECK_HANDLES 0
#else
#define BSI_CHECK_HANDLES 1
#endif

/* Whether `magic` (the handle's first field) is `expected`; otherwise records an error for `fn`
 * ("freed twice?" for a dead handle) and returns false. Always true in release builds. */
bool bsi_handle_alive(const uint32_t *magic, uint32_t expected, const char *fn);

/* Frees a handle's memory (its contents already released): at once in release builds; in debug
 * builds after marking it dead and keeping it in the quarantine for a while. */
void bsi_handle_retire(void *handle, uint32_t *magic);

#endif
