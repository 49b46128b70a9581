/* The backend registry: which backends exist in this process, how usable each is, and creating
 * instances by name. Built-in backends are listed here; run-time loaded modules join later. */
#include "backend.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define MAX_BACKENDS 8

static bsi_backend_entry entries[MAX_BACKENDS];
static size_t n_entries;
static pthread_once_t probed = PTHREAD_ONCE_INIT;

static void add(const bsi_backend_vtable *vt)
{
    if (!vt || vt->abi != BSI_BACKEND_ABI || n_entries == MAX_BACKENDS) return;
    bsi_backend_entry *e = &entries[n_entries++];
    e->vt = vt;
    e->reason[0] = 0;
    e->score = vt->probe(e->reason, sizeof e->reason);
}

static void probe_all(void)
{
    add(bsi_cpu_backend());
}

size_t bsi_backends(const bsi_backend_entry **out)
{
    pthread_once(&probed, probe_all);
    *out = entries;
    return n_entries;
}

bonsai_status bsi_backend_create(const char *name, const bsi_backend_config *cfg, bsi_backend **out)
{
    *out = NULL;
    const bsi_backend_entry *list;
    size_t n = bsi_backends(&list);
    const bsi_backend_entry *pick = NULL;
    if (!name || !*name || !strcmp(name, "auto")) {
        for (size_t i = 0; i < n; i++)
            if (list[i].score > 0 && (!pick || list[i].score > pick->score)) pick = &list[i];
        if (!pick) return bsi_fail(BONSAI_ERR_UNSUPPORTED, "no usable backend");
    } else {
        for (size_t i = 0; i < n; i++)
            if (!strcmp(list[i].vt->name, name)) pick = &list[i];
        if (!pick)
            return bsi_fail(BONSAI_ERR_UNSUPPORTED, "backend '%s' is not available in this build",
                            name);
        if (pick->score <= 0)
            return bsi_fail(BONSAI_ERR_UNSUPPORTED, "backend '%s' is not usable: %s", name,
                            pick->reason);
    }
    return pick->vt->create(cfg, out);
}
