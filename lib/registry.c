/*
 * The backend registry: which backends exist in this process, how usable each is, and creating
 * instances by name. The CPU backend is built in; others are shared modules (libbonsai-NAME.so)
 * loaded with dlopen on first use, so the core never links a GPU runtime.
 *
 * Modules are looked for, in order, in the directories of BONSAI_BACKEND_PATH (absolute paths
 * separated by ':'), in the install directory ($libdir/bonsai), beside the binary that holds
 * libbonsai (the directory itself and its bonsai/ subdirectory), and last in the build tree the
 * library was built in (so programs run from a build directory find its module). Never in the
 * current directory: empty and relative entries of BONSAI_BACKEND_PATH are ignored.
 */
#define _GNU_SOURCE
#include "backend.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef BONSAI_MODULE_DIR
#define BONSAI_MODULE_DIR "/usr/local/lib/bonsai"
#endif
#ifndef BONSAI_BUILD_MODULE_DIR
#define BONSAI_BUILD_MODULE_DIR ""
#endif

#define MAX_BACKENDS 8

static bsi_backend_entry entries[MAX_BACKENDS];
static size_t n_entries;
static pthread_once_t probed = PTHREAD_ONCE_INIT;

/* The modules this library knows of. */
static const char *const module_names[] = {"cuda"};

static bonsai_status host_fail(bonsai_status status, const char *message)
{
    return bsi_fail(status, "%s", message);
}

static void host_log(bonsai_log_level level, const char *message)
{
    bsi_log(level, "%s", message);
}

static const bsi_module_host module_host = {BSI_BACKEND_ABI, host_fail, host_log};

static bsi_backend_entry *new_entry(const char *name)
{
    if (n_entries == MAX_BACKENDS) return NULL;
    bsi_backend_entry *e = &entries[n_entries++];
    memset(e, 0, sizeof *e);
    e->name = name;
    return e;
}

static void add_builtin(const bsi_backend_vtable *vt)
{
    bsi_backend_entry *e = new_entry(vt->name);
    if (!e) return;
    e->vt = vt;
    e->score = vt->probe(&e->device, e->reason, sizeof e->reason);
}

/* Tries dir/libbonsai-NAME.so; true when a file was there (loaded or not: e says). */
static bool try_module(bsi_backend_entry *e, const char *dir, const char *name)
{
    char path[sizeof e->path];
    if (snprintf(path, sizeof path, "%s/libbonsai-%s.so", dir, name) >= (int)sizeof path)
        return false;
    if (access(path, F_OK) != 0) return false;
    snprintf(e->path, sizeof e->path, "%s", path);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(e->reason, sizeof e->reason, "cannot load %s: %s", path, dlerror());
        return true;
    }
    bsi_module_entry_fn entry;
    *(void **)&entry = dlsym(h, BSI_MODULE_ENTRY);
    const bsi_backend_vtable *vt = entry ? entry(&module_host) : NULL;
    if (!vt) {
        snprintf(e->reason, sizeof e->reason, "%s: %s", path,
                 entry ? "the module did not start" : "not a libbonsai backend module");
        dlclose(h);
        return true;
    }
    if (vt->abi != BSI_BACKEND_ABI) {
        snprintf(e->reason, sizeof e->reason,
                 "%s was built for backend interface %u, this library has %u: rebuild it", path,
                 vt->abi, BSI_BACKEND_ABI);
        dlclose(h);
        return true;
    }
    if (!vt->copy || !vt->decode != !vt->decode_ok) {
        snprintf(e->reason, sizeof e->reason,
                 "%s: copy is missing, or decode comes without decode_ok", path);
        dlclose(h);
        return true;
    }
    /* the module stays loaded for the life of the process: its table is in use */
    e->vt = vt;
    e->score = vt->probe(&e->device, e->reason, sizeof e->reason);
    return true;
}

static void find_module(const char *name)
{
    bsi_backend_entry *e = new_entry(name);
    if (!e) return;
    const char *env = getenv("BONSAI_BACKEND_PATH");
    if (env) {
        char *list = bsi_strdup(env);
        for (char *save = NULL, *dir = list ? strtok_r(list, ":", &save) : NULL; dir;
             dir = strtok_r(NULL, ":", &save)) {
            if (dir[0] != '/') {
                bsi_log(BONSAI_LOG_WARN, "BONSAI_BACKEND_PATH: ignoring '%s' (not absolute)", dir);
                continue;
            }
            if (try_module(e, dir, name)) {
                free(list);
                return;
            }
        }
        free(list);
    }
    if (try_module(e, BONSAI_MODULE_DIR, name)) return;
    /* beside the binary holding this code: libbonsai.so, or a program linking the core */
    Dl_info info;
    if (dladdr(&module_host, &info) && info.dli_fname && info.dli_fname[0] == '/') {
        char dir[sizeof e->path];
        snprintf(dir, sizeof dir, "%s", info.dli_fname);
        char *slash = strrchr(dir, '/');
        if (slash) {
            *slash = 0;
            if (try_module(e, dir, name)) return;
            size_t len = strlen(dir);
            if (len + sizeof "/bonsai" <= sizeof dir) {
                memcpy(dir + len, "/bonsai", sizeof "/bonsai");
                if (try_module(e, dir, name)) return;
            }
        }
    }
    if (BONSAI_BUILD_MODULE_DIR[0] == '/' && try_module(e, BONSAI_BUILD_MODULE_DIR, name)) return;
    snprintf(e->reason, sizeof e->reason,
             "module libbonsai-%s.so not found (BONSAI_BACKEND_PATH, %s, beside libbonsai)", name,
             BONSAI_MODULE_DIR);
}

static void probe_all(void)
{
    add_builtin(bsi_cpu_backend());
    for (size_t i = 0; i < sizeof module_names / sizeof module_names[0]; i++)
        find_module(module_names[i]);
}

size_t bsi_backends(const bsi_backend_entry **out)
{
    pthread_once(&probed, probe_all);
    *out = entries;
    return n_entries;
}

bonsai_status bsi_backend_parse(const char *spec, char *name, size_t name_size, int *device)
{
    const char *colon = strchr(spec, ':');
    size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
    if (!len || len >= name_size)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "backend '%s': not a backend name", spec);
    memcpy(name, spec, len);
    name[len] = 0;
    *device = -1;
    if (colon) {
        char *end;
        long d = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || d < 0 || d > 1023)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                            "backend '%s': the device after ':' must be a number 0..1023", spec);
        *device = (int)d;
    }
    return BONSAI_OK;
}

bonsai_status bsi_backend_create(const char *spec, bsi_backend_config *cfg, bsi_backend **out)
{
    *out = NULL;
    const bsi_backend_entry *list;
    size_t n = bsi_backends(&list);
    const bsi_backend_entry *pick = NULL;
    bsi_backend_config c = {0};
    if (cfg) c = *cfg;
    if (!spec || !*spec || !strcmp(spec, "auto")) {
        for (size_t i = 0; i < n; i++)
            if (list[i].vt && list[i].score > 0 && (!pick || list[i].score > pick->score))
                pick = &list[i];
        if (!pick) return bsi_fail(BONSAI_ERR_UNSUPPORTED, "no usable backend");
        c.device = -1;
    } else {
        char name[32];
        bonsai_status st = bsi_backend_parse(spec, name, sizeof name, &c.device);
        if (st) return st;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(list[i].name, name)) pick = &list[i];
        if (!pick)
            return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                            "backend '%s' is not available in this build (cpu, cuda)", spec);
        if (!pick->vt || pick->score <= 0)
            return bsi_fail(BONSAI_ERR_UNSUPPORTED, "backend '%s' is not usable: %s", spec,
                            pick->reason);
    }
    /* no device named: the first one the backend can use (its probe's) */
    if (c.device < 0) c.device = pick->device;
    if (cfg) cfg->device = c.device;
    return pick->vt->create(&c, out);
}

uint32_t bonsai_backend_count(void)
{
    const bsi_backend_entry *list;
    return (uint32_t)bsi_backends(&list);
}

bonsai_status bonsai_backend_get(uint32_t index, bonsai_backend_info *out)
{
    if (!out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_backend_get: out is NULL");
    bonsai_status st = bsi_out_size_check(out->struct_size, sizeof(uint32_t), sizeof *out,
                                          "bonsai_backend_get: out");
    if (st) return st;
    const bsi_backend_entry *list;
    size_t n = bsi_backends(&list);
    if (index >= n) return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "backend %u of %zu", index, n);
    const bsi_backend_entry *e = &list[index];
    bonsai_backend_info info = {
        .name = e->name,
        .usable = e->vt && e->score > 0,
        .score = e->vt ? e->score : 0,
        .reason = e->reason,
        .path = e->path,
    };
    bsi_out_copy(out, &info);
    return BONSAI_OK;
}
