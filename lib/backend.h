/*
 * The internal backend interface. A backend supplies memory, weight placement and the operations
 * of the forward pass; the forward pass itself is written once, in lib/, against this table.
 * Backends are found by the registry (registry.c): built-in ones (CPU) are linked in, others
 * (CUDA) are shared modules loaded at run time that export one entry point returning their table.
 *
 * Conventions: activations are f32, row-major, one row of `n` values per token: a batch is
 * [n_tok][n]. Pointers to activations are in the backend's memory (host memory for the CPU, device
 * memory for CUDA) and come from its alloc(); lib/ never dereferences them. Weight matrices are
 * stored as GGUF lays them out: `rows` rows of `cols` values (ne0 = cols), y = W x.
 *
 * Weights created through one instance may be used by every instance of the same backend and
 * device (sessions share a model's weights) and freed through any of them.
 */
#ifndef BONSAI_BACKEND_H
#define BONSAI_BACKEND_H

#include "internal.h"

#include <stdio.h>

#define BSI_BACKEND_ABI 9 /* bumped whenever this table changes; modules must match */

typedef struct bsi_backend bsi_backend; /* an instance: a device, a thread pool... */
typedef struct bsi_weight bsi_weight;   /* a weight matrix placed on a backend */

/* RoPE for one model: angles per pair, YaRN folded in (FORMAT.md section 3). */
typedef struct bsi_rope {
    uint32_t n_rot; /* dimensions rotated per head (pairs = n_rot / 2) */
    uint32_t neox;  /* 1: pairs (i, i + n_rot/2) (qwen3); 0: adjacent pairs (llama) */
    float freq_base;
    float yarn_factor; /* 0 or 1: no scaling */
    uint32_t yarn_orig_ctx;
    float yarn_beta_fast; /* 32 */
    float yarn_beta_slow; /* 1 */
} bsi_rope;

/* One layer's KV cache as lib/ hands it to a backend: a k and a v buffer of bsi_kv_bytes() each,
 * from the backend's alloc, written only by its kv_store, attn_prep and decode and read only by
 * its attention and decode. How the values lie in them is the backend's own (the CPU: each kv
 * head's positions together; CUDA: each position's heads together); lib/ never looks inside. */
typedef struct bsi_kv_shape {
    uint32_t type;     /* BONSAI_TENSOR_F16, or BONSAI_TENSOR_Q8_0 (head_dim a multiple of 32) */
    int64_t n_ctx;     /* positions the buffers hold */
    int64_t n_head_kv; /* heads a position */
    int64_t head_dim;  /* values a head */
} bsi_kv_shape;

/* Bytes of one head at one position: head_dim fp16 values, or Q8_0 blocks of 32 (34 bytes). */
static inline size_t bsi_kv_head_bytes(const bsi_kv_shape *kv)
{
    return kv->type == BONSAI_TENSOR_Q8_0 ? (size_t)(kv->head_dim / 32) * 34
                                          : (size_t)kv->head_dim * 2;
}

/* Bytes of one buffer (k or v) of a cache of this shape. */
static inline size_t bsi_kv_bytes(const bsi_kv_shape *kv)
{
    return (size_t)kv->n_ctx * (size_t)kv->n_head_kv * bsi_kv_head_bytes(kv);
}

/* NULL when positions [pos, pos + n) lie in a cache of shape kv and its type is one a cache may
 * have (F16; Q8_0 with heads of a multiple of 32 values); else why not, written to why. kv_store,
 * attention and attn_prep refuse (BONSAI_ERR_INVALID_ARGUMENT) what this refuses. */
static inline const char *bsi_kv_check(const bsi_kv_shape *kv, int64_t pos, int64_t n, char *why,
                                       size_t size)
{
    if (kv->type != BONSAI_TENSOR_F16 && kv->type != BONSAI_TENSOR_Q8_0)
        snprintf(why, size, "a KV cache of type %u (F16 or Q8_0)", (unsigned)kv->type);
    else if (kv->n_head_kv < 1 || kv->head_dim < 1 ||
             (kv->type == BONSAI_TENSOR_Q8_0 && kv->head_dim % 32))
        snprintf(why, size, "a %s KV cache of %lld heads of %lld values",
                 kv->type == BONSAI_TENSOR_F16 ? "F16" : "Q8_0", (long long)kv->n_head_kv,
                 (long long)kv->head_dim);
    else if (pos < 0 || n < 0 || pos + n > kv->n_ctx)
        snprintf(why, size, "positions %lld..%lld of a %lld-position KV cache", (long long)pos,
                 (long long)(pos + n - 1), (long long)kv->n_ctx);
    else
        return NULL;
    return why;
}

/* What attn_prep works on: a prompt's q [n_tok][n_head][head_dim], k and v
 * [n_tok][n_head_kv][head_dim] (backend memory) as the products left them. */
typedef struct bsi_attn_prep {
    float *q, *k;
    const float *v;
    const float *q_norm, *k_norm; /* [head_dim] each (qwen3), or both NULL (llama) */
    float eps;
    const int32_t *pos; /* [n_tok], host memory: each token's position */
    int64_t n_tok, n_head, n_head_kv, head_dim;
    const bsi_rope *rope;
    /* NULL: k and v are not stored; else they are stored as kv_store stores them, token t at
     * position pos[t] (pos[t] = pos[0] + t then), in caches of shape kv (n_head_kv and
     * head_dim as above) */
    void *k_cache, *v_cache;
    const bsi_kv_shape *kv;
} bsi_attn_prep;

typedef struct bsi_matrix_desc {
    const char *name; /* for messages */
    uint32_t type;    /* bonsai_tensor_type */
    int64_t rows, cols;
    const void *data; /* host bytes in the GGUF layout; stays valid while the model lives */
    bool mapped;      /* data is a read-only file mapping: pages may be dropped and re-read */
} bsi_matrix_desc;

typedef struct bsi_backend_config {
    int n_threads;       /* CPU: threads of the pool (0: physical cores) */
    const char *cpu_isa; /* CPU: "scalar", "avx2"...; NULL: BONSAI_CPU_ISA or the best */
    int device;          /* GPU index ("cuda:N"; for "cuda" and "auto", the probe's device) */
} bsi_backend_config;

/* A model as a backend's fused decode step sees it: built once per session by lib/ from the
 * placed weights (backend memory). q_norm and k_norm are NULL for llama. */
typedef struct bsi_decode_layer {
    const bsi_weight *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
    const float *attn_norm, *ffn_norm, *q_norm, *k_norm;
} bsi_decode_layer;

typedef struct bsi_decode_model {
    uint32_t n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab;
    float eps;
    bsi_rope rope;
    const bsi_weight *tok_embd, *output;
    const float *output_norm;
    const bsi_decode_layer *layers; /* [n_layer] */
} bsi_decode_model;

/* One sequence of a decode step: `token` at position `pos`, attending to cache positions
 * 0 .. pos of its own KV cache (one k and one v buffer per layer of shape kv, as kv_store). */
typedef struct bsi_decode_seq {
    int32_t token, pos;
    bsi_kv_shape kv;
    void *const *k_cache, *const *v_cache; /* [n_layer] */
} bsi_decode_seq;

/* A sampler chain a backend may run where the logits are (lib/sampler.c, bsi_sampler_plan): the
 * built-in stages [top-k] [top-p] [min-p] [temperature] then dist, or greedy. */
typedef struct bsi_sample_params {
    bool greedy;   /* the result is the highest logit (final greedy, or temperature <= 0) */
    int32_t top_k; /* 0: no top-k stage */
    bool has_top_p;
    float top_p;
    uint32_t top_p_keep;
    bool has_min_p;
    float min_p_log; /* log(min_p) */
    uint32_t min_p_keep;
    float temp; /* > 0; 1 when there is no temperature stage */
    double u;   /* the uniform draw in [0, 1) the final dist stage would make */
} bsi_sample_params;

typedef struct bsi_backend_vtable {
    uint32_t abi;     /* BSI_BACKEND_ABI */
    const char *name; /* "cpu", "cuda" */

    /* 0 = unusable (reason written), higher = preferred by "auto". When usable, *device is the
     * device "auto" and the bare name ("cuda") take: the first one this build can use (0 for the
     * CPU). */
    int (*probe)(int *device, char *reason, size_t reason_size);
    bonsai_status (*create)(const bsi_backend_config *cfg, bsi_backend **out);
    void (*destroy)(bsi_backend *be);
    /* A human-readable description of an instance ("cpu avx2, 2 threads"). */
    const char *(*describe)(const bsi_backend *be);

    /* Memory for activations and caches. */
    bonsai_status (*alloc)(bsi_backend *be, size_t bytes, void **out);
    void (*free)(bsi_backend *be, void *ptr);
    bonsai_status (*upload)(bsi_backend *be, void *dst, const void *src, size_t bytes);
    bonsai_status (*download)(bsi_backend *be, void *dst, const void *src, size_t bytes);
    /* Within the backend's memory (possibly between instances of one device). */
    bonsai_status (*copy)(bsi_backend *be, void *dst, const void *src, size_t bytes);

    /* Weights: placed once (and repacked if the backend wants), freed with the model. */
    bonsai_status (*weight_create)(bsi_backend *be, const bsi_matrix_desc *desc, bsi_weight **out);
    void (*weight_free)(bsi_backend *be, bsi_weight *w);
    /* Optional: bytes weight_create would allocate for `desc` (for memory caps); NULL means the
     * tensor's size. */
    uint64_t (*weight_bytes)(bsi_backend *be, const bsi_matrix_desc *desc);

    /* y[t][0..rows) = W x[t][0..cols) for t < n_tok. n_tok = 1 is decode, more is a prompt. */
    bonsai_status (*matmul)(bsi_backend *be, const bsi_weight *w, const float *x, float *y,
                            int64_t n_tok);
    /* Optional: y_i = W_i x for n matrices of the same width (q, k, v; gate, up) in one go, so
     * the input is prepared once and one parallel loop covers them all. NULL: lib/ calls matmul
     * for each. */
    bonsai_status (*matmul_multi)(bsi_backend *be, int n, const bsi_weight *const *w,
                                  const float *x, float *const *y, int64_t n_tok);
    /* y[t] = row ids[t] of W, dequantized (embedding lookup); ids in host memory. */
    bonsai_status (*get_rows)(bsi_backend *be, const bsi_weight *w, const int32_t *ids, float *y,
                              int64_t n_tok);
    /* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, rows of n; weight in backend memory. */
    bonsai_status (*rmsnorm)(bsi_backend *be, const float *x, const float *weight, float *y,
                             int64_t n, int64_t n_rows, float eps);
    /* Rotates x [n_tok][n_heads][head_dim] in place; pos (host memory) gives each token's position.
     */
    bonsai_status (*rope)(bsi_backend *be, float *x, const int32_t *pos, int64_t n_tok,
                          int64_t n_heads, int64_t head_dim, const bsi_rope *rope);
    /* In-place softmax over rows of n. */
    bonsai_status (*softmax)(bsi_backend *be, float *x, int64_t n, int64_t n_rows);
    /* y = silu(gate) * up, n values. */
    bonsai_status (*silu_mul)(bsi_backend *be, const float *gate, const float *up, float *y,
                              int64_t n);
    /* y = a + b, n values (y may alias a or b). */
    bonsai_status (*add)(bsi_backend *be, const float *a, const float *b, float *y, int64_t n);
    /* Optional (NULL: lib/ runs matmul then add): y += W x, y [n_tok][rows] (a residual); y
     * and x do not overlap (nor in matmul_swiglu). */
    bonsai_status (*matmul_add)(bsi_backend *be, const bsi_weight *w, const float *x, float *y,
                                int64_t n_tok);
    /* Optional (NULL: lib/ runs matmul_multi then silu_mul): y = silu(W_gate x) * (W_up x), y
     * [n_tok][rows]; gate and up have the same shape. */
    bonsai_status (*matmul_swiglu)(bsi_backend *be, const bsi_weight *gate, const bsi_weight *up,
                                   const float *x, float *y, int64_t n_tok);

    /* Stores k and v of n_tok tokens ([n_tok][n_head_kv][head_dim] f32) at positions pos ..
     * pos + n_tok - 1 of one layer's caches (bsi_kv_shape), as fp16 or Q8_0 blocks of 32. */
    bonsai_status (*kv_store)(bsi_backend *be, const bsi_kv_shape *kv, void *k_cache, void *v_cache,
                              const float *k, const float *v, int64_t n_tok, int64_t pos);
    /* Optional (NULL: lib/ runs rmsnorm, rope and kv_store): what lies between a prompt's q/k/v
     * products and attention, in one go (bsi_attn_prep): each head of q and k RMS-normed with
     * q_norm and k_norm when given, then rotated by rope at its token's position, in place; then
     * k and v stored in the caches when k_cache is given. The results equal those operations'
     * up to rounding (of the norm's sum; of cos and sin times YaRN's scale). */
    bonsai_status (*attn_prep)(bsi_backend *be, const bsi_attn_prep *a);
    /* Causal attention with grouped heads over caches of shape kv: q [n_tok][n_head][head_dim];
     * token t sits at position pos + t and attends to cache positions 0 .. pos + t; query head h
     * reads kv head h / (n_head / n_head_kv). out [n_tok][n_head][head_dim] =
     * softmax(q.K^T * scale) V. */
    bonsai_status (*attention)(bsi_backend *be, const bsi_kv_shape *kv, const float *q,
                               const void *k_cache, const void *v_cache, float *out, int64_t n_tok,
                               int64_t pos, int64_t n_head, float scale);

    /* Optional (NULL for both or neither): a whole decode step of n_seq sequences, one token each,
     * in the backend's own fused way (the CUDA backend: fused kernels replayed from a graph).
     * logits [n_seq][n_vocab] in backend memory. decode_ok says, without side effects, whether
     * decode takes this model and batch (every sequence has kv_type); when it does not, lib/ runs
     * the step operation by operation. */
    bool (*decode_ok)(bsi_backend *be, const bsi_decode_model *m, uint32_t n_seq, uint32_t kv_type);
    bonsai_status (*decode)(bsi_backend *be, const bsi_decode_model *m, const bsi_decode_seq *seqs,
                            uint32_t n_seq, float *logits);
    /* Optional: waits for the instance's queued work and reports its errors (NULL: the backend
     * works synchronously). */
    bonsai_status (*sync)(bsi_backend *be);
    /* Optional: samples n rows of n_vocab logits, rows[i] in memory of this instance's device,
     * each as its chain p[i] would on the host, all in one go: tokens[i], and logprobs[i] (log
     * softmax of the row at the token); tokens[i] = -1 when the backend leaves that row to the
     * host (which then downloads it). */
    bonsai_status (*sample)(bsi_backend *be, uint32_t n, const float *const *rows,
                            uint32_t n_vocab, const bsi_sample_params *p, int32_t *tokens,
                            float *logprobs);
} bsi_backend_vtable;

/* An instance begins with its table, so lib/ can call through any instance. */
struct bsi_backend {
    const bsi_backend_vtable *vt;
};

/* ---- run-time loaded modules ---- */

/*
 * What the library gives a module: the module cannot call the library's internal functions (they
 * are hidden, and the CLI links the core statically), so errors and log messages go through these.
 */
typedef struct bsi_module_host {
    uint32_t abi; /* BSI_BACKEND_ABI of the library */
    /* Records status and message as the calling thread's last error; returns status. */
    bonsai_status (*fail)(bonsai_status status, const char *message);
    void (*log)(bonsai_log_level level, const char *message);
} bsi_module_host;

/* A module (libbonsai-NAME.so) exports one function under this name. It returns its table, whose
 * first two fields (abi, name) keep this layout in every ABI, or NULL when it cannot start. */
#define BSI_MODULE_ENTRY "bonsai_backend_module"
typedef const bsi_backend_vtable *(*bsi_module_entry_fn)(const bsi_module_host *host);

/* ---- registry.c ---- */

typedef struct bsi_backend_entry {
    const bsi_backend_vtable *vt; /* NULL when a module was not found or did not load */
    const char *name;
    int score;
    int device;        /* the probe's device: what "auto" and the bare name take */
    char reason[1024]; /* why the score is 0 */
    char path[512];    /* a module's file, "" for built-in backends */
} bsi_backend_entry;

/* Every backend known to this process (built in, or modules found), probed once. */
size_t bsi_backends(const bsi_backend_entry **out);
/* Creates an instance of backend `name`: "auto" (the highest score), "cpu", "cuda" or "cuda:N"
 * (device N; "auto" and "cuda" take the probe's device; the device is written to cfg->device).
 * Fails with a message saying why when the backend is absent or unusable. */
bonsai_status bsi_backend_create(const char *name, bsi_backend_config *cfg, bsi_backend **out);
/* Splits "cuda:1" into the backend name ("cuda", at most name_size - 1 bytes) and the device (1);
 * "cpu" gives device -1 (none named). BONSAI_ERR_INVALID_ARGUMENT for a malformed name. */
bonsai_status bsi_backend_parse(const char *spec, char *name, size_t name_size, int *device);

/* The CPU backend's table (backends/cpu). */
const bsi_backend_vtable *bsi_cpu_backend(void);

#endif
