/* Model loading and the model-level accessors. */
#include "model.h"

#include "handle.h"
#include "vocab.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The size of bonsai_model_params in ABI 1: callers built against that header pass this. */
#define BSI_MODEL_PARAMS_V1_SIZE                                                                   \
    (offsetof(bonsai_model_params, progress_user_data) + sizeof(void *))

void bonsai_model_params_init(bonsai_model_params *params)
{
    if (!params) return;
    memset(params, 0, sizeof *params);
    params->struct_size = sizeof *params;
    params->use_mmap = true;
}

/* Optional string key: "" when absent; an error when present with another type. */
static bonsai_status opt_string(const bonsai_model *m, const char *key, const char **out)
{
    *out = "";
    const bonsai_value *v = bsi_gguf_get(m->gguf, key);
    if (!v) return BONSAI_OK;
    if (v->type != BONSAI_VALUE_STRING)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s has type %s, not string", m->path, key,
                        bonsai_value_type_name(v->type));
    *out = v->v.str;
    return BONSAI_OK;
}

/* Optional `<arch>.<suffix>` integer that must fit in uint32; `*out` keeps its value if absent. */
/* `<arch>.<suffix>` into key[256]; the architecture name was length-checked at load. */
static void arch_key(const bonsai_model *m, const char *suffix, char *key)
{
    snprintf(key, 256, "%s.%s", m->arch, suffix);
}

static bonsai_status opt_u32(const bonsai_model *m, const char *suffix, uint32_t *out)
{
    char key[256];
    arch_key(m, suffix, key);
    const bonsai_value *v = bsi_gguf_get(m->gguf, key);
    if (!v) return BONSAI_OK;
    uint64_t x;
    if (bonsai_value_to_u64(v, &x) || x > UINT32_MAX)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s must be an integer from 0 to %u", m->path, key,
                        UINT32_MAX);
    *out = (uint32_t)x;
    return BONSAI_OK;
}

static bonsai_status opt_f32(const bonsai_model *m, const char *suffix, float *out)
{
    char key[256];
    arch_key(m, suffix, key);
    const bonsai_value *v = bsi_gguf_get(m->gguf, key);
    if (!v) return BONSAI_OK;
    double x;
    if (bonsai_value_to_f64(v, &x))
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s must be a number", m->path, key);
    *out = (float)x;
    return BONSAI_OK;
}

static bonsai_status read_hparams(bonsai_model *m)
{
    bonsai_model_hparams *h = &m->hparams;
    memset(h, 0, sizeof *h);
    h->struct_size = sizeof *h;
    const bonsai_value *tokens = bsi_gguf_get(m->gguf, "tokenizer.ggml.tokens");
    if (tokens) {
        if (tokens->type != BONSAI_VALUE_ARRAY || tokens->elem_type != BONSAI_VALUE_STRING)
            return bsi_fail(BONSAI_ERR_CORRUPT,
                            "%s: tokenizer.ggml.tokens must be an array of strings", m->path);
        if (tokens->count > UINT32_MAX)
            return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %" PRIu64 " tokens is too many", m->path,
                            tokens->count);
        h->n_vocab = (uint32_t)tokens->count;
    }
    if (!m->arch[0]) return BONSAI_OK;
    if (strlen(m->arch) > 64)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: general.architecture is %zu bytes long (limit 64)",
                        m->path, strlen(m->arch));
    bonsai_status st;
    if ((st = opt_u32(m, "context_length", &h->n_ctx_train)) ||
        (st = opt_u32(m, "embedding_length", &h->n_embd)) ||
        (st = opt_u32(m, "block_count", &h->n_layer)) ||
        (st = opt_u32(m, "feed_forward_length", &h->n_ff)) ||
        (st = opt_u32(m, "attention.head_count", &h->n_head)))
        return st;
    h->n_head_kv = h->n_head;
    h->head_dim_k = h->n_head ? h->n_embd / h->n_head : 0;
    if ((st = opt_u32(m, "attention.head_count_kv", &h->n_head_kv)) ||
        (st = opt_u32(m, "attention.key_length", &h->head_dim_k)))
        return st;
    h->head_dim_v = h->head_dim_k;
    h->n_rot = h->head_dim_k;
    if ((st = opt_u32(m, "attention.value_length", &h->head_dim_v)) ||
        (st = opt_u32(m, "rope.dimension_count", &h->n_rot)) ||
        (st = opt_f32(m, "attention.layer_norm_rms_epsilon", &h->rms_eps)) ||
        (st = opt_f32(m, "rope.freq_base", &h->rope_freq_base)) ||
        (st = opt_f32(m, "rope.scaling.factor", &h->rope_scaling_factor)) ||
        (st = opt_u32(m, "rope.scaling.original_context_length", &h->rope_scaling_orig_ctx)))
        return st;
    char key[256];
    arch_key(m, "rope.scaling.type", key);
    const char *scaling;
    if ((st = opt_string(m, key, &scaling))) return st;
    h->rope_scaling_yarn = !strcmp(scaling, "yarn");
    return BONSAI_OK;
}

static bool report(const bonsai_model_params *p, float progress)
{
    return !p->progress || p->progress(progress, p->progress_user_data);
}

bonsai_status bonsai_model_load(const char *path, const bonsai_model_params *params,
                                bonsai_model **out)
{
    if (!out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_model_load: out is NULL");
    *out = NULL;
    if (!path) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_model_load: path is NULL");
    bonsai_model_params defaults;
    bonsai_model_params_init(&defaults);
    if (!params) params = &defaults;
    if (!BSI_STRUCT_SIZE_OK(params, BSI_MODEL_PARAMS_V1_SIZE))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "bonsai_model_load: params->struct_size is %u; use "
                        "bonsai_model_params_init()",
                        params->struct_size);
    /* fields a caller's older struct lacks keep their defaults */
    bonsai_model_params given;
    bonsai_model_params_init(&given);
    memcpy(&given, params, params->struct_size);
    params = &given;
    if (!params->use_mmap && params->max_memory) {
        struct stat sb;
        if (stat(path, &sb) == 0 && (uint64_t)sb.st_size > params->max_memory)
            return bsi_fail(BONSAI_ERR_NO_MEMORY,
                            "%s: reading the file (%" PRIu64 " bytes) exceeds the model's memory "
                            "cap of %" PRIu64 " bytes (map it instead: use_mmap)",
                            path, (uint64_t)sb.st_size, params->max_memory);
    }
    if (!report(params, 0.0f))
        return bsi_fail(BONSAI_ERR_ABORTED, "%s: loading aborted by the progress callback", path);

    bonsai_model *m = bsi_calloc(1, sizeof *m);
    if (!m) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", path);
    m->magic = BSI_MAGIC_MODEL;
    atomic_init(&m->refs, 1);
    m->mem_cap = params->max_memory;
    atomic_init(&m->mem_used, 0);
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->vocab_lock, NULL);
    bonsai_status st = BONSAI_OK;
    if (!(m->path = bsi_strdup(path)))
        st = bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", path);
    if (!st)
        st = bsi_file_open(path, params->use_mmap, params->progress, params->progress_user_data,
                           &m->file);
    if (!st && !m->file.mapped) st = bsi_model_charge(m, m->file.size, "the file's contents");
    if (!st) st = bsi_gguf_parse(m->file.data, m->file.size, m->path, &m->gguf);
    if (!st) st = opt_string(m, "general.architecture", &m->arch);
    if (!st) st = opt_string(m, "general.name", &m->name);
    if (!st) st = read_hparams(m);
    if (!st)
        for (uint64_t i = 0; i < m->gguf->n_tensors; i++)
            m->n_params += m->gguf->tensors[i].n_elements;
    if (!st) st = bsi_arch_load(m);
    if (!st && !report(params, 1.0f))
        st = bsi_fail(BONSAI_ERR_ABORTED, "%s: loading aborted by the progress callback", path);
    if (st) {
        bonsai_model_free(m);
        return st;
    }
    bsi_log(BONSAI_LOG_INFO, "%s: GGUF v%u, %" PRIu64 " keys, %" PRIu64 " tensors, %s", path,
            m->gguf->version, m->gguf->n_kv, m->gguf->n_tensors,
            m->file.mapped ? "mapped" : "read into memory");
    *out = m;
    return BONSAI_OK;
}

bonsai_status bsi_model_charge(bonsai_model *m, uint64_t bytes, const char *what)
{
    uint64_t used = atomic_load(&m->mem_used);
    for (;;) {
        if (m->mem_cap && (used + bytes < used || used + bytes > m->mem_cap))
            return bsi_fail(BONSAI_ERR_NO_MEMORY,
                            "%s: %s (%" PRIu64 " bytes) exceeds the model's memory cap of %" PRIu64
                            " bytes (%" PRIu64 " in use)",
                            m->path, what, bytes, m->mem_cap, used);
        if (atomic_compare_exchange_weak(&m->mem_used, &used, used + bytes)) return BONSAI_OK;
    }
}

void bsi_model_uncharge(bonsai_model *m, uint64_t bytes)
{
    atomic_fetch_sub(&m->mem_used, bytes);
}

static void placement_free(bonsai_model *m, bsi_placement *p)
{
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        if (p->matrix && p->matrix[i]) p->vt->weight_free(p->owner, p->matrix[i]);
        if (p->vector && p->vector[i]) p->vt->free(p->owner, p->vector[i]);
    }
    free(p->matrix);
    free(p->vector);
    if (p->owner) p->vt->destroy(p->owner);
    bsi_model_uncharge(m, p->charged);
    memset(p, 0, sizeof *p);
}

/* The matrix of 2-D tensor i as the backends see it. */
static bsi_matrix_desc matrix_desc(const bonsai_model *m, uint64_t i)
{
    const bsi_gguf_tensor *t = &m->gguf->tensors[i];
    bsi_matrix_desc d = {t->name,
                         t->type,
                         (int64_t)t->ne[1],
                         (int64_t)t->ne[0],
                         bsi_gguf_tensor_data(m->gguf, i),
                         m->file.mapped};
    return d;
}

static bonsai_status place(bonsai_model *m, bsi_placement *p)
{
    uint64_t n = m->gguf->n_tensors;
    /* what the backend will hold, against the model's memory cap, before allocating any */
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < n; i++) {
        const bsi_gguf_tensor *t = &m->gguf->tensors[i];
        if (t->n_dims == 2) {
            bsi_matrix_desc d = matrix_desc(m, i);
            bytes += p->vt->weight_bytes ? p->vt->weight_bytes(p->owner, &d) : t->n_bytes;
        } else if (t->n_dims == 1 && t->type == BONSAI_TENSOR_F32) {
            bytes += t->n_bytes;
        }
    }
    char what[96];
    snprintf(what, sizeof what, "the weights on backend %s", p->vt->name);
    bonsai_status cst = bsi_model_charge(m, bytes, what);
    if (cst) return cst;
    p->charged = bytes;
    p->matrix = bsi_calloc((size_t)n, sizeof *p->matrix);
    p->vector = bsi_calloc((size_t)n, sizeof *p->vector);
    if (!p->matrix || !p->vector) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        const bsi_gguf_tensor *t = &m->gguf->tensors[i];
        bonsai_status st;
        if (t->n_dims == 2) {
            bsi_matrix_desc d = matrix_desc(m, i);
            st = p->vt->weight_create(p->owner, &d, &p->matrix[i]);
        } else if (t->n_dims == 1 && t->type == BONSAI_TENSOR_F32) {
            st = p->vt->alloc(p->owner, (size_t)t->n_bytes, (void **)&p->vector[i]);
            if (!st)
                st = p->vt->upload(p->owner, p->vector[i], bsi_gguf_tensor_data(m->gguf, i),
                                   (size_t)t->n_bytes);
        } else {
            continue;
        }
        if (st) return st;
    }
    return BONSAI_OK;
}

bonsai_status bsi_model_placement(bonsai_model *m, bsi_backend *be, const bsi_backend_config *cfg,
                                  const bsi_placement **out)
{
    bonsai_status st = BONSAI_OK;
    pthread_mutex_lock(&m->lock);
    bsi_placement *p = NULL;
    for (int i = 0; i < m->n_placed; i++)
        if (m->placed[i].vt == be->vt && m->placed[i].device == cfg->device) p = &m->placed[i];
    if (!p) {
        if (m->n_placed == BSI_MAX_PLACEMENTS) {
            st = bsi_fail(BONSAI_ERR_UNSUPPORTED, "too many backends on one model");
        } else {
            p = &m->placed[m->n_placed];
            p->vt = be->vt;
            p->device = cfg->device;
            /* weights outlive the sessions: a dedicated instance owns them */
            st = be->vt->create(cfg, &p->owner);
            if (!st) st = place(m, p);
            if (st)
                placement_free(m, p);
            else
                m->n_placed++;
        }
    }
    *out = st ? NULL : p;
    pthread_mutex_unlock(&m->lock);
    return st;
}

void bsi_model_retain(bonsai_model *m)
{
    atomic_fetch_add(&m->refs, 1);
}

void bsi_model_release(bonsai_model *model)
{
    if (!model || atomic_fetch_sub(&model->refs, 1) != 1) return;
    for (int i = 0; i < model->n_placed; i++) placement_free(model, &model->placed[i]);
    bsi_arch_free(&model->a);
    bsi_vocab_free(model->vocab);
    free(model->vocab_error);
    pthread_mutex_destroy(&model->vocab_lock);
    pthread_mutex_destroy(&model->lock);
    bsi_gguf_free(model->gguf);
    bsi_file_close(&model->file);
    free(model->path);
    bsi_handle_retire(model, &model->magic);
}

void bonsai_model_free(bonsai_model *model)
{
    if (!model || !bsi_handle_alive(&model->magic, BSI_MAGIC_MODEL, "bonsai_model_free")) return;
    if (BSI_CHECK_HANDLES) {
        /* the caller's reference goes once: a second call would take a session's */
        if (model->caller_released) {
            bsi_log(BONSAI_LOG_ERROR, "bonsai_model_free: the model was already freed (its "
                                      "sessions keep it alive)");
            bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                     "bonsai_model_free: the model was already freed (its sessions keep it alive)");
            return;
        }
        model->caller_released = true;
    }
    bsi_model_release(model);
}

const char *bonsai_model_architecture(const bonsai_model *model)
{
    return model ? model->arch : "";
}

const char *bonsai_model_name(const bonsai_model *model)
{
    return model ? model->name : "";
}

uint64_t bonsai_model_file_size(const bonsai_model *model)
{
    return model ? model->file.size : 0;
}

uint32_t bonsai_model_gguf_version(const bonsai_model *model)
{
    return model ? model->gguf->version : 0;
}

uint64_t bonsai_model_n_params(const bonsai_model *model)
{
    return model ? model->n_params : 0;
}

uint32_t bonsai_model_n_vocab(const bonsai_model *model)
{
    return model ? model->hparams.n_vocab : 0;
}

bonsai_status bonsai_model_hparams_get(const bonsai_model *model, bonsai_model_hparams *out)
{
    if (!model || !out)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_model_hparams_get: NULL argument");
    bonsai_status st = bsi_out_size_check(out->struct_size, sizeof(uint32_t), sizeof *out,
                                          "bonsai_model_hparams_get: out");
    if (st) return st;
    bsi_out_copy(out, &model->hparams);
    return BONSAI_OK;
}

uint64_t bonsai_model_tensor_count(const bonsai_model *model)
{
    return model ? model->gguf->n_tensors : 0;
}

bonsai_status bonsai_model_tensor_at(const bonsai_model *model, uint64_t index,
                                     bonsai_tensor_info *out)
{
    if (!model || !out)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_model_tensor_at: NULL argument");
    bonsai_status st = bsi_out_size_check(out->struct_size, sizeof(uint32_t), sizeof *out,
                                          "bonsai_model_tensor_at: out");
    if (st) return st;
    if (index >= model->gguf->n_tensors)
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                        "bonsai_model_tensor_at: index %" PRIu64 " (the model has %" PRIu64
                        " tensors)",
                        index, model->gguf->n_tensors);
    const bsi_gguf_tensor *t = &model->gguf->tensors[index];
    bonsai_tensor_info info = {
        .name = t->name,
        .type = t->type,
        .n_dims = t->n_dims,
        .dims = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]},
        .n_elements = t->n_elements,
        .n_bytes = t->n_bytes,
        .file_offset = model->gguf->data_offset + t->offset,
    };
    bsi_out_copy(out, &info);
    return BONSAI_OK;
}

bonsai_status bonsai_model_tensor_find(const bonsai_model *model, const char *name, uint64_t *index)
{
    if (!model || !name || !index)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_model_tensor_find: NULL argument");
    int64_t i = bsi_gguf_find_tensor(model->gguf, name);
    if (i < 0) return bsi_fail(BONSAI_ERR_NOT_FOUND, "no tensor named '%s'", name);
    *index = (uint64_t)i;
    return BONSAI_OK;
}
