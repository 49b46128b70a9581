/* What the generation and chat code needs of a session beyond the public API (internal). */
#ifndef BONSAI_SESSION_H
#define BONSAI_SESSION_H

#include "internal.h"

#include <stdbool.h>

/* True if bonsai_session_cancel() was called since the last call; clears the request. */
bool bsi_session_take_cancel(bonsai_session *s);
/* While on, evaluations of more than one token check for a cancel request between layers and
 * fail with BONSAI_ERR_ABORTED (the cache is left as it was). */
void bsi_session_stop_on_cancel(bonsai_session *s, bool on);
/* Whether s is a live session (handle.h; always true in release builds); records the error. */
bool bsi_session_alive(const bonsai_session *s, const char *fn);
/* The session's model. */
const bonsai_model *bsi_session_model(const bonsai_session *s);

#endif
