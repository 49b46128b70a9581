/*
 * Sessions and the forward pass, written once against the backend table (lib/backend.h), for the
 * llama and qwen3 blocks of FORMAT.md section 3. Activations live in the backend's memory:
 * x, h [n_tok][n_embd]; q, att [n_tok][n_head * head_dim]; k, v [n_tok][n_head_kv * head_dim];
 * g, u [n_tok][n_ff]; KV cache per layer [n_ctx][n_head_kv * head_dim] fp16.
 */
#include "session.h"

#include "handle.h"
#include "model.h"
#include "sampler.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_CTX 4096
/* the most sequences per fused decode step tried when a backend's step does not take a whole
 * batch (halved until the backend takes them) */
#define DECODE_CHUNK 64

typedef struct scratch {
    float *x, *h, *q, *k, *v, *att, *g, *u, *logits;
    int64_t n_tok, n_logit_rows; /* capacity */
} scratch;

struct bonsai_session {
    uint32_t magic; /* BSI_MAGIC_SESSION (handle.h) */
    bonsai_model *model;
    uint64_t mem_cap;   /* bonsai_session_params.max_memory (0: none) */
    uint64_t mem_fixed; /* bytes of the KV cache and the token history */
    const bsi_model_arch *a;
    bsi_backend *be;
    const bsi_placement *w;
    uint32_t n_ctx, n_past;
    bsi_kv_shape kv;           /* of each layer's caches */
    void **k_cache, **v_cache; /* [n_layer] */
    scratch s;
    float *logits_host; /* [n_logits][n_vocab] */
    size_t logits_host_cap;
    uint32_t n_logits;
    bool logits_pending; /* the logits are in backend memory (s.logits), not yet downloaded */
    int32_t *pos;        /* host positions of the batch */
    int64_t pos_cap;
    int32_t *history; /* [n_ctx]: the tokens in the cache */
    /* the model as the backend's fused decode step sees it (when the backend has one) */
    bsi_decode_model dm;
    bsi_decode_layer *dl;
    bsi_decode_seq *seqs; /* a step's sequences */
    uint32_t seqs_cap;
    atomic_bool cancel;
    bool stop_on_cancel; /* a generation's prompt: the forward pass stops between layers */
};

void bonsai_session_params_init(bonsai_session_params *params)
{
    if (!params) return;
    memset(params, 0, sizeof *params);
    params->struct_size = sizeof *params;
    params->backend = "auto";
    params->kv_type = BONSAI_TENSOR_F16;
}

static bonsai_status logits_to_host(bonsai_session *s);

static void scratch_free(bonsai_session *s)
{
    bsi_backend *be = s->be;
    float **bufs[] = {&s->s.x,   &s->s.h, &s->s.q, &s->s.k,     &s->s.v,
                      &s->s.att, &s->s.g, &s->s.u, &s->s.logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (*bufs[i]) be->vt->free(be, *bufs[i]);
        *bufs[i] = NULL;
    }
    s->s.n_tok = s->s.n_logit_rows = 0;
}

/* The up products have a buffer of their own only when the backend does not fuse SwiGLU (vt
 * NULL: not known yet, counted). */
static bool needs_up(const bsi_backend_vtable *vt)
{
    return !vt || !vt->matmul_swiglu;
}

/* Bytes of activations for n_tok tokens and of n_rows rows of logits (backend and host). */
static uint64_t scratch_bytes(const bsi_model_arch *a, const bsi_backend_vtable *vt,
                              int64_t n_tok, int64_t n_rows)
{
    uint64_t E = a->n_embd, Q = (uint64_t)a->n_head * a->head_dim,
             KV = (uint64_t)a->n_head_kv * a->head_dim, F = a->n_ff * (needs_up(vt) ? 2 : 1);
    return sizeof(float) * ((uint64_t)n_tok * (2 * E + 2 * Q + 2 * KV + F) +
                            2 * (uint64_t)n_rows * a->n_vocab) +
           (uint64_t)n_tok * sizeof(int32_t);
}

/* Activation buffers for a batch of n_tok tokens with n_rows rows of logits. */
static bonsai_status scratch_reserve(bonsai_session *s, int64_t n_tok, int64_t n_rows)
{
    if (n_tok <= s->s.n_tok && n_rows <= s->s.n_logit_rows) return BONSAI_OK;
    /* logits still in the old buffers stay valid: to the host first */
    bonsai_status st = logits_to_host(s);
    if (st) return st;
    if (n_tok < s->s.n_tok) n_tok = s->s.n_tok;
    if (n_rows < s->s.n_logit_rows) n_rows = s->s.n_logit_rows;
    uint64_t need = s->mem_fixed + scratch_bytes(s->a, s->be->vt, n_tok, n_rows);
    if (s->mem_cap && need > s->mem_cap)
        return bsi_fail(BONSAI_ERR_NO_MEMORY,
                        "a batch of %" PRId64 " tokens (%" PRId64 " rows of logits) needs %" PRIu64
                        " bytes with the KV cache, over the session's memory cap of %" PRIu64
                        " bytes; use smaller batches",
                        n_tok, n_rows, need, s->mem_cap);
    scratch_free(s);
    const bsi_model_arch *a = s->a;
    size_t f = sizeof(float), E = a->n_embd, Q = (size_t)a->n_head * a->head_dim,
           KV = (size_t)a->n_head_kv * a->head_dim, F = a->n_ff, N = (size_t)n_tok;
    struct {
        float **p;
        size_t bytes;
    } want[] = {
        {&s->s.x, N * E * f},
        {&s->s.h, N * E * f},
        {&s->s.q, N * Q * f},
        {&s->s.k, N * KV * f},
        {&s->s.v, N * KV * f},
        {&s->s.att, N * Q * f},
        {&s->s.g, N * F * f},
        {&s->s.u, needs_up(s->be->vt) ? N * F * f : 0},
        {&s->s.logits, (size_t)n_rows * a->n_vocab * f},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (!want[i].bytes) continue;
        st = s->be->vt->alloc(s->be, want[i].bytes, (void **)want[i].p);
        if (st) {
            scratch_free(s);
            return st;
        }
    }
    s->s.n_tok = n_tok;
    s->s.n_logit_rows = n_rows;
    return BONSAI_OK;
}

/* s->dm: the placed weights in the layout of a backend's fused decode step. */
static bonsai_status decode_model_init(bonsai_session *s)
{
    const bsi_model_arch *a = s->a;
    bsi_weight *const *W = s->w->matrix;
    float *const *V = s->w->vector;
    s->dl = bsi_calloc(a->n_layer, sizeof *s->dl);
    if (!s->dl) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    for (uint32_t l = 0; l < a->n_layer; l++) {
        const bsi_layer *L = &a->layers[l];
        s->dl[l] = (bsi_decode_layer){
            .wq = W[L->wq],
            .wk = W[L->wk],
            .wv = W[L->wv],
            .wo = W[L->wo],
            .w_gate = W[L->w_gate],
            .w_up = W[L->w_up],
            .w_down = W[L->w_down],
            .attn_norm = V[L->attn_norm],
            .ffn_norm = V[L->ffn_norm],
            .q_norm = L->q_norm >= 0 ? V[L->q_norm] : NULL,
            .k_norm = L->k_norm >= 0 ? V[L->k_norm] : NULL,
        };
    }
    s->dm = (bsi_decode_model){
        .n_layer = a->n_layer,
        .n_embd = a->n_embd,
        .n_ff = a->n_ff,
        .n_head = a->n_head,
        .n_head_kv = a->n_head_kv,
        .head_dim = a->head_dim,
        .n_vocab = a->n_vocab,
        .eps = a->eps,
        .rope = a->rope,
        .tok_embd = W[a->tok_embd],
        .output = W[a->output],
        .output_norm = V[a->output_norm],
        .layers = s->dl,
    };
    return BONSAI_OK;
}

bonsai_status bonsai_session_create(bonsai_model *model, const bonsai_session_params *params,
                                    bonsai_session **out)
{
    if (!out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_session_create: out is NULL");
    *out = NULL;
    if (!model)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_session_create: model is NULL");
    bonsai_session_params defaults;
    bonsai_session_params_init(&defaults);
    if (!params) params = &defaults;
    if (!BSI_STRUCT_SIZE_OK(params, offsetof(bonsai_session_params, max_memory)))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "bonsai_session_create: params->struct_size is %u; use "
                        "bonsai_session_params_init()",
                        params->struct_size);
    /* fields a caller's older struct lacks keep their defaults */
    bonsai_session_params given;
    bonsai_session_params_init(&given);
    memcpy(&given, params, params->struct_size);
    params = &given;
    if (model->a.arch == BSI_ARCH_NONE)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "%s: architecture '%s' cannot be run (supported: qwen3, llama)",
                        model->path, model->arch[0] ? model->arch : "(none)");
    if (params->kv_type != BONSAI_TENSOR_F16 && params->kv_type != BONSAI_TENSOR_Q8_0)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED, "KV cache type %u is not supported (F16 or Q8_0)",
                        params->kv_type);
    if (params->kv_type == BONSAI_TENSOR_Q8_0 && model->a.head_dim % 32)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "a Q8_0 KV cache needs heads of a multiple of 32 values, not %u",
                        model->a.head_dim);
    if (params->n_threads < 0 || params->n_threads > 1024)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "n_threads %d", params->n_threads);
    const bsi_model_arch *a = &model->a;
    uint32_t n_ctx = params->n_ctx;
    if (!n_ctx) n_ctx = a->n_ctx_train < DEFAULT_MAX_CTX ? a->n_ctx_train : DEFAULT_MAX_CTX;
    if (n_ctx > 1u << 20)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "n_ctx %u is too large", n_ctx);

    bsi_kv_shape kv = {params->kv_type, n_ctx, a->n_head_kv, a->head_dim};
    uint64_t fixed =
        2 * (uint64_t)a->n_layer * bsi_kv_bytes(&kv) + (uint64_t)n_ctx * sizeof(int32_t);
    if (params->max_memory && fixed + scratch_bytes(a, NULL, 1, 1) > params->max_memory)
        return bsi_fail(BONSAI_ERR_NO_MEMORY,
                        "a context of %u tokens needs %" PRIu64 " bytes of KV cache (and %" PRIu64
                        " for one token's activations), over the session's memory cap of %" PRIu64
                        " bytes; use a smaller n_ctx or kv_type Q8_0",
                        n_ctx, fixed, scratch_bytes(a, NULL, 1, 1), params->max_memory);

    bonsai_session *s = bsi_calloc(1, sizeof *s);
    if (!s) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    s->magic = BSI_MAGIC_SESSION;
    s->model = model;
    s->mem_cap = params->max_memory;
    s->mem_fixed = fixed;
    s->a = a;
    s->n_ctx = n_ctx;
    s->kv = kv;
    bsi_model_retain(model);
    bsi_backend_config cfg = {.n_threads = params->n_threads};
    bonsai_status st = bsi_backend_create(params->backend, &cfg, &s->be);
    if (!st) st = bsi_model_placement(model, s->be, &cfg, &s->w);
    if (!st) {
        s->k_cache = bsi_calloc(a->n_layer, sizeof *s->k_cache);
        s->v_cache = bsi_calloc(a->n_layer, sizeof *s->v_cache);
        s->history = bsi_malloc((size_t)n_ctx * sizeof *s->history);
        if (!s->k_cache || !s->v_cache || !s->history)
            st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    }
    size_t kv_bytes = bsi_kv_bytes(&kv);
    for (uint32_t l = 0; l < a->n_layer && !st; l++) {
        st = s->be->vt->alloc(s->be, kv_bytes, &s->k_cache[l]);
        if (!st) st = s->be->vt->alloc(s->be, kv_bytes, &s->v_cache[l]);
    }
    if (!st && s->be->vt->decode) st = decode_model_init(s);
    if (st) {
        bonsai_session_free(s);
        return st;
    }
    *out = s;
    return BONSAI_OK;
}

void bonsai_session_free(bonsai_session *s)
{
    if (!s || !bsi_handle_alive(&s->magic, BSI_MAGIC_SESSION, "bonsai_session_free")) return;
    if (s->be) {
        for (uint32_t l = 0; s->k_cache && l < s->a->n_layer; l++) {
            if (s->k_cache[l]) s->be->vt->free(s->be, s->k_cache[l]);
            if (s->v_cache && s->v_cache[l]) s->be->vt->free(s->be, s->v_cache[l]);
        }
        scratch_free(s);
        s->be->vt->destroy(s->be);
    }
    free(s->k_cache);
    free(s->v_cache);
    free(s->logits_host);
    free(s->pos);
    free(s->history);
    free(s->dl);
    free(s->seqs);
    bsi_model_release(s->model);
    bsi_handle_retire(s, &s->magic);
}

/* A run of the batch's tokens that belongs to one session: tokens [first, first + n) go to the
 * cache of `s` at positions s->n_past onwards. One run for a session's own evaluation; one per
 * session (of one token each) for bonsai_batch_eval. */
typedef struct fwd_run {
    bonsai_session *s;
    int64_t first, n;
} fwd_run;

/* Products of several matrices with the same input: fused when the backend can. */
static bonsai_status matmul_n(bonsai_session *s, int n, const bsi_weight *const *w, const float *x,
                              float *const *y, int64_t n_tok)
{
    const bsi_backend_vtable *vt = s->be->vt;
    if (vt->matmul_multi) return vt->matmul_multi(s->be, n, w, x, y, n_tok);
    for (int i = 0; i < n; i++) {
        bonsai_status st = vt->matmul(s->be, w[i], x, y[i], n_tok);
        if (st) return st;
    }
    return BONSAI_OK;
}

/* x += W in, the residual stream of s (fused when the backend can). */
static bonsai_status residual(bonsai_session *s, const bsi_weight *w, const float *in, int64_t n)
{
    const bsi_backend_vtable *vt = s->be->vt;
    if (vt->matmul_add) return vt->matmul_add(s->be, w, in, s->s.x, n);
    bonsai_status st = vt->matmul(s->be, w, in, s->s.h, n);
    return st ? st : vt->add(s->be, s->s.x, s->s.h, s->s.x, n * s->a->n_embd);
}

/* One token for each run's session, by the backend's fused decode step. */
static bonsai_status decode_step(bonsai_session *s, const int32_t *tokens, const fwd_run *runs,
                                 size_t n_runs, float *logits)
{
    if (n_runs > s->seqs_cap) {
        bsi_decode_seq *p = bsi_realloc(s->seqs, n_runs * sizeof *p);
        if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        s->seqs = p;
        s->seqs_cap = (uint32_t)n_runs;
    }
    for (size_t r = 0; r < n_runs; r++) {
        const bonsai_session *rs = runs[r].s;
        s->seqs[r] = (bsi_decode_seq){
            .token = tokens[runs[r].first],
            .pos = (int32_t)rs->n_past,
            .kv = rs->kv,
            .k_cache = rs->k_cache,
            .v_cache = rs->v_cache,
        };
    }
    return s->be->vt->decode(s->be, &s->dm, s->seqs, (uint32_t)n_runs, logits);
}

/* One token for each run's session by the backend's fused decode step: the whole batch at once,
 * or in steps of the most sequences the backend takes (DECODE_CHUNK, or a power of two below it).
 * False, with nothing done, when it takes neither or the sessions' caches differ in type; else
 * *st is the result. */
static bool fused_decode(bonsai_session *s, const int32_t *tokens, const fwd_run *runs,
                         size_t n_runs, bonsai_status *st)
{
    const bsi_backend_vtable *vt = s->be->vt;
    uint32_t kv_type = runs[0].s->kv.type;
    for (size_t r = 1; r < n_runs; r++)
        if (runs[r].s->kv.type != kv_type) return false;
    size_t chunk = n_runs;
    if (!vt->decode_ok(s->be, &s->dm, (uint32_t)n_runs, kv_type)) {
        for (chunk = DECODE_CHUNK; chunk > 1; chunk /= 2) {
            size_t rest = n_runs % chunk;
            if (chunk < n_runs && vt->decode_ok(s->be, &s->dm, (uint32_t)chunk, kv_type) &&
                (!rest || vt->decode_ok(s->be, &s->dm, (uint32_t)rest, kv_type)))
                break;
        }
        if (chunk <= 1) return false;
    }
    *st = BONSAI_OK;
    for (size_t r = 0; r < n_runs && !*st; r += chunk) {
        size_t k = n_runs - r < chunk ? n_runs - r : chunk;
        *st = decode_step(s, tokens, runs + r, k, s->s.logits + r * s->a->n_vocab);
    }
    return true;
}

/* The forward pass of the n tokens of `runs` (computed on `s`'s backend, with its scratch and
 * the positions in s->pos); logits of the last `n_rows` tokens into s->s.logits, or
 * (hidden != NULL) their final normalised hidden states into hidden [n_rows][n_embd] in host
 * memory instead. */
static bonsai_status forward_runs(bonsai_session *s, const int32_t *tokens, int64_t n,
                                  const fwd_run *runs, size_t n_runs, int64_t n_rows, float *hidden)
{
    const bsi_model_arch *a = s->a;
    const bsi_backend_vtable *vt = s->be->vt;
    bsi_backend *be = s->be;
    bsi_weight *const *W = s->w->matrix;
    float *const *V = s->w->vector;
    scratch *b = &s->s;
    int64_t E = a->n_embd, hd = a->head_dim, KV = a->n_head_kv * hd, Q = a->n_head * hd;
    float scale = 1.0f / sqrtf((float)hd);
    bonsai_status st;
    /* a decode step (one token per run), by the backend's fused step when it takes it */
    if (n == (int64_t)n_runs && n_rows == n && !hidden && s->dl &&
        fused_decode(s, tokens, runs, n_runs, &st))
        return st;
#define TRY(call)                                                                                  \
    if ((st = (call))) return st
    TRY(vt->get_rows(be, W[a->tok_embd], tokens, b->x, n));
    for (uint32_t l = 0; l < a->n_layer; l++) {
        if (s->stop_on_cancel && atomic_load_explicit(&s->cancel, memory_order_relaxed))
            return bsi_fail(BONSAI_ERR_ABORTED, "cancelled");
        const bsi_layer *L = &a->layers[l];
        TRY(vt->rmsnorm(be, b->x, V[L->attn_norm], b->h, E, n, a->eps));
        {
            const bsi_weight *qkv[3] = {W[L->wq], W[L->wk], W[L->wv]};
            float *out[3] = {b->q, b->k, b->v};
            TRY(matmul_n(s, 3, qkv, b->h, out, n));
        }
        /* qwen3: per-head RMS norm of q and k; RoPE; k and v into the caches */
        bool stored = false;
        const float *qn = L->q_norm >= 0 ? V[L->q_norm] : NULL;
        const float *kn = L->q_norm >= 0 ? V[L->k_norm] : NULL;
        if (vt->attn_prep) {
            /* one run (a prompt): its caches take k and v in the same go */
            stored = n_runs == 1;
            bonsai_session *rs = runs[0].s;
            bsi_attn_prep p = {.q = b->q,
                               .k = b->k,
                               .v = b->v,
                               .q_norm = qn,
                               .k_norm = kn,
                               .eps = a->eps,
                               .pos = s->pos,
                               .n_tok = n,
                               .n_head = a->n_head,
                               .n_head_kv = a->n_head_kv,
                               .head_dim = hd,
                               .rope = &a->rope,
                               .k_cache = stored ? rs->k_cache[l] : NULL,
                               .v_cache = stored ? rs->v_cache[l] : NULL,
                               .kv = &rs->kv};
            TRY(vt->attn_prep(be, &p));
        } else {
            if (qn) {
                TRY(vt->rmsnorm(be, b->q, qn, b->q, hd, n * a->n_head, a->eps));
                TRY(vt->rmsnorm(be, b->k, kn, b->k, hd, n * a->n_head_kv, a->eps));
            }
            TRY(vt->rope(be, b->q, s->pos, n, a->n_head, hd, &a->rope));
            TRY(vt->rope(be, b->k, s->pos, n, a->n_head_kv, hd, &a->rope));
        }
        for (size_t r = 0; r < n_runs; r++) {
            const fwd_run *run = &runs[r];
            bonsai_session *rs = run->s;
            if (!stored)
                TRY(vt->kv_store(be, &rs->kv, rs->k_cache[l], rs->v_cache[l],
                                 b->k + run->first * KV, b->v + run->first * KV, run->n,
                                 rs->n_past));
            TRY(vt->attention(be, &rs->kv, b->q + run->first * Q, rs->k_cache[l], rs->v_cache[l],
                              b->att + run->first * Q, run->n, rs->n_past, a->n_head, scale));
        }
        TRY(residual(s, W[L->wo], b->att, n));
        TRY(vt->rmsnorm(be, b->x, V[L->ffn_norm], b->h, E, n, a->eps));
        if (vt->matmul_swiglu) {
            TRY(vt->matmul_swiglu(be, W[L->w_gate], W[L->w_up], b->h, b->g, n));
        } else {
            const bsi_weight *gu[2] = {W[L->w_gate], W[L->w_up]};
            float *out[2] = {b->g, b->u};
            TRY(matmul_n(s, 2, gu, b->h, out, n));
            TRY(vt->silu_mul(be, b->g, b->u, b->g, n * a->n_ff));
        }
        TRY(residual(s, W[L->w_down], b->g, n));
    }
    const float *last = b->x + (n - n_rows) * E;
    TRY(vt->rmsnorm(be, last, V[a->output_norm], b->h, E, n_rows, a->eps));
    if (hidden) return vt->download(be, hidden, b->h, (size_t)(n_rows * E) * sizeof(float));
    TRY(vt->matmul(be, W[a->output], b->h, b->logits, n_rows));
#undef TRY
    return BONSAI_OK;
}

/* The forward pass of n tokens of one session at positions n_past .. n_past + n - 1. */
static bonsai_status forward(bonsai_session *s, const int32_t *tokens, int64_t n, int64_t n_rows,
                             float *hidden)
{
    fwd_run run = {s, 0, n};
    return forward_runs(s, tokens, n, &run, 1, n_rows, hidden);
}

/* Room for n_rows rows of logits in host memory. */
static bonsai_status logits_host_reserve(bonsai_session *s, int64_t n_rows)
{
    size_t bytes = (size_t)n_rows * s->a->n_vocab * sizeof(float);
    if (bytes <= s->logits_host_cap) return BONSAI_OK;
    float *p = bsi_realloc(s->logits_host, bytes);
    if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "cannot allocate %zu bytes", bytes);
    s->logits_host = p;
    s->logits_host_cap = bytes;
    return BONSAI_OK;
}

/* Checks a batch and makes room for it (activations, n_rows rows of logits, positions). With
 * own_tokens the tokens go to this session's cache, whose room is checked; else (a batch of
 * several sessions) the caller checks each session. */
static bonsai_status prepare_batch(bonsai_session *s, const int32_t *tokens, uint32_t n_tokens,
                                   int64_t n_rows, bool own_tokens)
{
    if (own_tokens && (uint64_t)s->n_past + n_tokens > s->n_ctx)
        return bsi_fail(BONSAI_ERR_CONTEXT_FULL,
                        "the context holds %u tokens: %u in the cache, %u more do not fit",
                        s->n_ctx, s->n_past, n_tokens);
    for (uint32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= s->a->n_vocab)
            return bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                            "token %" PRId32 " (at %u) is outside the vocabulary of %u", tokens[i],
                            i, s->a->n_vocab);
    bonsai_status st = scratch_reserve(s, n_tokens, n_rows);
    if (st) return st;
    st = logits_host_reserve(s, n_rows);
    if (st) return st;
    if (n_tokens > s->pos_cap) {
        int32_t *p = bsi_realloc(s->pos, n_tokens * sizeof *p);
        if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        s->pos = p;
        s->pos_cap = n_tokens;
    }
    for (uint32_t i = 0; i < n_tokens; i++) s->pos[i] = (int32_t)(s->n_past + i);
    return BONSAI_OK;
}

bonsai_status bonsai_session_eval(bonsai_session *s, const int32_t *tokens, uint32_t n_tokens,
                                  uint32_t flags)
{
    if (!s || (!tokens && n_tokens))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_session_eval: NULL argument");
    if (!bsi_handle_alive(&s->magic, BSI_MAGIC_SESSION, "bonsai_session_eval"))
        return BONSAI_ERR_INVALID_ARGUMENT;
    if (n_tokens == 0) return BONSAI_OK;
    int64_t n_rows = flags & BONSAI_EVAL_ALL_LOGITS ? n_tokens : 1;
    bonsai_status st = prepare_batch(s, tokens, n_tokens, n_rows, true);
    if (st) return st;
    s->n_logits = 0;
    s->logits_pending = false;
    st = forward(s, tokens, n_tokens, n_rows, NULL);
    /* the logits stay where they are until asked for (bonsai_session_logits), or are sampled
     * there (bonsai_session_sample); errors of the step are reported now */
    if (!st && s->be->vt->sync) st = s->be->vt->sync(s->be);
    if (st) return st; /* the cache beyond n_past may hold partial rows: they are not used */
    memcpy(s->history + s->n_past, tokens, n_tokens * sizeof *tokens);
    s->n_past += n_tokens;
    s->n_logits = (uint32_t)n_rows;
    s->logits_pending = true;
    return BONSAI_OK;
}

bonsai_status bonsai_embed(bonsai_session *s, const int32_t *tokens, uint32_t n_tokens, float *out,
                           uint32_t out_dim)
{
    if (!s || !tokens || !out || !n_tokens)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_embed: NULL argument or no tokens");
    if (!bsi_handle_alive(&s->magic, BSI_MAGIC_SESSION, "bonsai_embed"))
        return BONSAI_ERR_INVALID_ARGUMENT;
    uint32_t E = s->a->n_embd;
    if (out_dim != E)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "bonsai_embed: out_dim is %u, the model's embedding length is %u", out_dim,
                        E);
    bonsai_session_clear(s);
    /* hidden states only: no rows of logits */
    bonsai_status st = prepare_batch(s, tokens, n_tokens, 1, true);
    if (st) return st;
    float *hidden = bsi_malloc((size_t)n_tokens * E * sizeof *hidden);
    if (!hidden) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    st = forward(s, tokens, n_tokens, n_tokens, hidden);
    if (!st) {
        /* mean over tokens in double, then unit length */
        double norm = 0;
        for (uint32_t i = 0; i < E; i++) {
            double sum = 0;
            for (uint32_t t = 0; t < n_tokens; t++) sum += hidden[(size_t)t * E + i];
            out[i] = (float)(sum / n_tokens);
            norm += (double)out[i] * out[i];
        }
        float k = norm > 0 ? (float)(1.0 / sqrt(norm)) : 0.0f;
        for (uint32_t i = 0; i < E; i++) out[i] *= k;
    }
    free(hidden);
    bonsai_session_clear(s);
    return st;
}

/* The logits in host memory, downloaded on first use after an evaluation. */
static bonsai_status logits_to_host(bonsai_session *s)
{
    if (!s->logits_pending) return BONSAI_OK;
    bonsai_status st = s->be->vt->download(s->be, s->logits_host, s->s.logits,
                                           (size_t)s->n_logits * s->a->n_vocab * sizeof(float));
    if (st) return st;
    s->logits_pending = false;
    return BONSAI_OK;
}

const float *bonsai_session_logits(const bonsai_session *s, uint32_t *n_rows)
{
    if (n_rows) *n_rows = 0;
    if (!s || !s->n_logits) return NULL;
    /* the session is const to the caller: what changes is only where the same logits are */
    if (logits_to_host((bonsai_session *)s)) return NULL;
    if (n_rows) *n_rows = s->n_logits;
    return s->logits_host;
}

/* Samples validated items whose tokens are -1: the rows the backend can take go to it in one call
 * (one launch on a GPU), the others and those it leaves are sampled here from downloaded logits,
 * in order. An item's token is set only once its sampler has accepted it. want_logprob false:
 * the host path may skip the log-probability. */
static bonsai_status sample_items(const char *fn, bonsai_batch_sample_item *items, uint32_t n,
                                  bool want_logprob)
{
    bonsai_session *lead = items[0].session;
    const bsi_backend_vtable *vt = lead->be->vt;
    uint32_t V = lead->a->n_vocab;
    bonsai_status st = BONSAI_OK;
    uint32_t m = 0, *idx = NULL;
    bsi_sample_params *p = NULL;
    const float **rows = NULL;
    int32_t *tok = NULL;
    float *lp = NULL;
    if (vt->sample) {
        idx = bsi_malloc(n * sizeof *idx);
        p = bsi_malloc(n * sizeof *p);
        rows = bsi_malloc(n * sizeof *rows);
        tok = bsi_malloc(n * sizeof *tok);
        lp = bsi_malloc(n * sizeof *lp);
        if (!idx || !p || !rows || !tok || !lp) st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        for (uint32_t i = 0; i < n && !st; i++) {
            bonsai_session *s = items[i].session;
            if (!s->logits_pending || !bsi_sampler_plan(items[i].sampler, &p[m])) continue;
            rows[m] = s->s.logits + (size_t)(s->n_logits - 1) * V;
            idx[m++] = i;
        }
        if (!st && m) st = vt->sample(lead->be, m, rows, V, p, tok, lp);
    }
    for (uint32_t i = 0, j = 0; i < n && !st; i++) {
        bonsai_batch_sample_item *it = &items[i];
        if (j < m && idx[j] == i && tok[j] >= 0) {
            if ((uint32_t)tok[j] >= V) {
                st = bsi_fail(BONSAI_ERR_BACKEND, "%s: the backend chose token %d of %u", fn,
                              (int)tok[j], V);
                break;
            }
            st = bsi_sampler_took(it->sampler, tok[j]);
            if (!st) {
                it->token = tok[j];
                it->logprob = lp[j];
            }
            j++;
            continue;
        }
        if (j < m && idx[j] == i) j++; /* left to the host */
        bonsai_session *s = it->session;
        st = logits_to_host(s);
        int32_t t;
        float l = 0.0f;
        if (!st)
            st = bonsai_sampler_sample(it->sampler, s->logits_host + (size_t)(s->n_logits - 1) * V,
                                       V, &t, want_logprob ? &l : NULL);
        if (!st) {
            it->token = t;
            it->logprob = l;
        }
    }
    free(idx), free(p), free(rows), free(tok), free(lp);
    return st;
}

bonsai_status bonsai_batch_sample(bonsai_batch_sample_item *items, uint32_t n_items,
                                  uint32_t flags)
{
    static const char fn[] = "bonsai_batch_sample";
    if (!items || !n_items) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: no items", fn);
    for (uint32_t i = 0; i < n_items; i++) { /* nothing sampled yet, whatever happens next */
        items[i].token = -1;
        items[i].logprob = 0.0f;
    }
    if (flags) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: unknown flags %#x", fn, flags);
    bonsai_session *lead = items[0].session;
    for (uint32_t i = 0; i < n_items; i++) {
        bonsai_session *s = items[i].session;
        if (!s || !items[i].sampler)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: item %u has no %s", fn, i,
                            s ? "sampler" : "session");
        if (!bsi_handle_alive(&s->magic, BSI_MAGIC_SESSION, fn) ||
            !bsi_sampler_alive(items[i].sampler, fn))
            return BONSAI_ERR_INVALID_ARGUMENT;
        if (s->model != lead->model || s->w != lead->w)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                            "%s: item %u: every session must run the same model on the same "
                            "backend and device",
                            fn, i);
        if (!s->n_logits)
            return bsi_fail(BONSAI_ERR_INVALID_STATE,
                            "%s: item %u: no logits: evaluate a token first", fn, i);
        for (uint32_t j = 0; j < i; j++)
            if (items[j].sampler == items[i].sampler)
                return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                                "%s: items %u and %u share a sampler", fn, j, i);
    }
    return sample_items(fn, items, n_items, true);
}

bonsai_status bonsai_session_sample(bonsai_session *s, bonsai_sampler *sampler, int32_t *token,
                                    float *logprob)
{
    static const char fn[] = "bonsai_session_sample";
    if (!s || !sampler || !token)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: NULL argument", fn);
    if (!bsi_handle_alive(&s->magic, BSI_MAGIC_SESSION, fn) || !bsi_sampler_alive(sampler, fn))
        return BONSAI_ERR_INVALID_ARGUMENT;
    if (!s->n_logits)
        return bsi_fail(BONSAI_ERR_INVALID_STATE, "%s: no logits: evaluate a token first", fn);
    bonsai_batch_sample_item it = {s, sampler, -1, 0.0f};
    bonsai_status st = sample_items(fn, &it, 1, logprob != NULL);
    if (st) return st;
    *token = it.token;
    if (logprob) *logprob = it.logprob;
    return BONSAI_OK;
}

uint32_t bonsai_session_n_past(const bonsai_session *s)
{
    return s ? s->n_past : 0;
}

uint32_t bonsai_session_n_ctx(const bonsai_session *s)
{
    return s ? s->n_ctx : 0;
}

bonsai_status bonsai_session_truncate(bonsai_session *s, uint32_t n_keep)
{
    if (!s) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_session_truncate: NULL");
    if (n_keep > s->n_past)
        return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "cannot keep %u tokens of %u", n_keep, s->n_past);
    s->n_past = n_keep;
    s->n_logits = 0;
    s->logits_pending = false;
    return BONSAI_OK;
}

void bonsai_session_clear(bonsai_session *s)
{
    if (!s) return;
    s->n_past = 0;
    s->n_logits = 0;
    s->logits_pending = false;
}

const char *bonsai_session_backend(const bonsai_session *s)
{
    return s ? s->be->vt->describe(s->be) : "";
}

const int32_t *bonsai_session_tokens(const bonsai_session *s, uint32_t *n)
{
    if (n) *n = s ? s->n_past : 0;
    return s ? s->history : NULL;
}

void bonsai_session_cancel(bonsai_session *s)
{
    if (s) atomic_store(&s->cancel, true);
}

bool bsi_session_take_cancel(bonsai_session *s)
{
    return atomic_exchange(&s->cancel, false);
}

void bsi_session_stop_on_cancel(bonsai_session *s, bool on)
{
    s->stop_on_cancel = on;
}

bool bsi_session_alive(const bonsai_session *s, const char *fn)
{
    return bsi_handle_alive(&s->magic, BSI_MAGIC_SESSION, fn);
}

const bonsai_model *bsi_session_model(const bonsai_session *s)
{
    return s->model;
}

bonsai_status bonsai_batch_eval(const bonsai_batch_item *items, uint32_t n_items, uint32_t flags)
{
    static const char fn[] = "bonsai_batch_eval";
    if (!items || !n_items) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: no items", fn);
    if (flags) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: unknown flags %#x", fn, flags);
    bonsai_session *lead = items[0].session;
    if (!lead) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: item 0 has no session", fn);
    /* every session: the lead's model and backend, once, with room for its token */
    for (uint32_t i = 0; i < n_items; i++) {
        bonsai_session *s = items[i].session;
        if (!s) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: item %u has no session", fn, i);
        if (!bsi_handle_alive(&s->magic, BSI_MAGIC_SESSION, fn)) return BONSAI_ERR_INVALID_ARGUMENT;
        if (s->model != lead->model || s->w != lead->w)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                            "%s: item %u: every session of a batch must run the same model on the "
                            "same backend and device",
                            fn, i);
        for (uint32_t j = 0; j < i; j++)
            if (items[j].session == s)
                return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                                "%s: items %u and %u are the same session", fn, j, i);
        if (s->n_past >= s->n_ctx)
            return bsi_fail(BONSAI_ERR_CONTEXT_FULL,
                            "%s: item %u: the session's context of %u tokens is full", fn, i,
                            s->n_ctx);
        if (items[i].token < 0 || (uint32_t)items[i].token >= lead->a->n_vocab)
            return bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                            "%s: item %u: token %" PRId32 " is outside the vocabulary of %u", fn, i,
                            items[i].token, lead->a->n_vocab);
    }
    int32_t *tokens = bsi_malloc(n_items * sizeof *tokens);
    fwd_run *runs = bsi_malloc(n_items * sizeof *runs);
    bonsai_status st = tokens && runs ? BONSAI_OK : bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    for (uint32_t i = 0; i < n_items && !st; i++) {
        tokens[i] = items[i].token;
        runs[i] = (fwd_run){items[i].session, i, 1};
    }
    /* on the lead's backend instance: its scratch, one row of logits per item; and in each
     * other session's scratch, room for its own row, copied there after the step so that the
     * session's next call leaves the others' rows alone */
    if (!st) st = prepare_batch(lead, tokens, n_items, n_items, false);
    for (uint32_t i = 1; i < n_items && !st; i++) {
        bonsai_session *s = items[i].session;
        st = scratch_reserve(s, 1, 1);
        if (!st) st = logits_host_reserve(s, 1);
    }
    const bsi_backend_vtable *vt = lead->be->vt;
    if (!st) {
        /* from here a failure leaves every session at its position without logits, as
         * bonsai_session_eval does (keeping them would cost a download of each one per step) */
        for (uint32_t i = 0; i < n_items; i++) {
            bonsai_session *s = items[i].session;
            lead->pos[i] = (int32_t)s->n_past;
            s->n_logits = 0;
            s->logits_pending = false;
        }
        st = forward_runs(lead, tokens, n_items, runs, n_items, n_items, NULL);
    }
    size_t V = lead->a->n_vocab;
    for (uint32_t i = 1; i < n_items && !st; i++)
        st = vt->copy(lead->be, items[i].session->s.logits, lead->s.logits + i * V,
                      V * sizeof(float));
    if (!st && vt->sync) st = vt->sync(lead->be);
    for (uint32_t i = 0; i < n_items && !st; i++) {
        bonsai_session *s = items[i].session;
        s->history[s->n_past++] = items[i].token;
        s->n_logits = 1;
        s->logits_pending = true; /* downloaded or sampled when asked for */
    }
    free(tokens);
    free(runs);
    return st;
}
