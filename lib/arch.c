/* Architecture checks for llama and qwen3 (FORMAT.md section 3): keys, tensor names and shapes. */
#include "arch.h"

#include "model.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Index of tensor `name` with exactly the given dims (d1 = 0: a 1-D tensor), or an error. */
static bonsai_status need_tensor(const bonsai_model *m, const char *name, uint64_t d0, uint64_t d1,
                                 bool matrix_type, int64_t *out)
{
    int64_t i = bsi_gguf_find_tensor(m->gguf, name);
    if (i < 0) return bsi_fail(BONSAI_ERR_CORRUPT, "%s: tensor '%s' is missing", m->path, name);
    const bsi_gguf_tensor *t = &m->gguf->tensors[i];
    uint32_t dims = d1 ? 2 : 1;
    if (t->n_dims != dims || t->ne[0] != d0 || (d1 && t->ne[1] != d1))
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: tensor '%s' has shape [%" PRIu64 ", %" PRIu64
                        "] (%u dims), expected [%" PRIu64 ", %" PRIu64 "]",
                        m->path, name, t->ne[0], t->ne[1], t->n_dims, d0, d1 ? d1 : 1);
    if (!matrix_type && t->type != BONSAI_TENSOR_F32)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED_TYPE, "%s: norm tensor '%s' must be F32, not %s",
                        m->path, name, bonsai_tensor_type_name(t->type));
    *out = i;
    return BONSAI_OK;
}

static bonsai_status need_key(const bonsai_model *m, const char *what, uint32_t v)
{
    if (v) return BONSAI_OK;
    return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s.%s is missing or zero", m->path, m->arch, what);
}

static bonsai_status check_hparams(const bonsai_model *m, bsi_model_arch *a)
{
    const bonsai_model_hparams *h = &m->hparams;
    bonsai_status st;
    if ((st = need_key(m, "block_count", h->n_layer)) ||
        (st = need_key(m, "embedding_length", h->n_embd)) ||
        (st = need_key(m, "feed_forward_length", h->n_ff)) ||
        (st = need_key(m, "attention.head_count", h->n_head)))
        return st;
    /* bounds that keep every size computed from them far from overflow */
    if (h->n_layer > 1024 || h->n_embd > 65536 || h->n_ff > 262144 || h->n_head > 1024 ||
        h->n_head_kv == 0 || h->n_head % h->n_head_kv || h->head_dim_k == 0 ||
        h->head_dim_k > 1024 || h->head_dim_k % 2 || h->head_dim_v != h->head_dim_k ||
        h->n_rot > h->head_dim_k || h->n_rot % 2 || h->n_rot == 0)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: unsupported hyper-parameters: %u layers, width %u, ffn %u, %u heads "
                        "(%u kv) of %u (v %u), %u rotated",
                        m->path, h->n_layer, h->n_embd, h->n_ff, h->n_head, h->n_head_kv,
                        h->head_dim_k, h->head_dim_v, h->n_rot);
    if (!(h->rms_eps > 0 && h->rms_eps < 1))
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %s.attention.layer_norm_rms_epsilon is %g",
                        m->path, m->arch, (double)h->rms_eps);
    a->n_layer = h->n_layer;
    a->n_embd = h->n_embd;
    a->n_ff = h->n_ff;
    a->n_head = h->n_head;
    a->n_head_kv = h->n_head_kv;
    a->head_dim = h->head_dim_k;
    a->n_ctx_train = h->n_ctx_train ? h->n_ctx_train : 2048;
    a->eps = h->rms_eps;
    a->rope.n_rot = h->n_rot;
    a->rope.freq_base = h->rope_freq_base > 0 ? h->rope_freq_base : 10000.0f;
    a->rope.yarn_beta_fast = 32.0f;
    a->rope.yarn_beta_slow = 1.0f;
    if (h->rope_scaling_yarn && h->rope_scaling_factor > 1) {
        if (!h->rope_scaling_orig_ctx)
            return bsi_fail(BONSAI_ERR_CORRUPT,
                            "%s: YaRN scaling without %s.rope.scaling.original_context_length",
                            m->path, m->arch);
        a->rope.yarn_factor = h->rope_scaling_factor;
        a->rope.yarn_orig_ctx = h->rope_scaling_orig_ctx;
    }
    return BONSAI_OK;
}

bonsai_status bsi_arch_load(bonsai_model *m)
{
    bsi_model_arch *a = &m->a;
    memset(a, 0, sizeof *a);
    if (!strcmp(m->arch, "llama"))
        a->arch = BSI_ARCH_LLAMA;
    else if (!strcmp(m->arch, "qwen3"))
        a->arch = BSI_ARCH_QWEN3;
    else
        return BONSAI_OK;
    if (m->gguf->n_tensors == 0) { /* vocab-only: inspectable, not runnable */
        a->arch = BSI_ARCH_NONE;
        return BONSAI_OK;
    }
    bonsai_status st = check_hparams(m, a);
    if (st) return st;
    a->rope.neox = a->arch == BSI_ARCH_QWEN3;

    int64_t te = bsi_gguf_find_tensor(m->gguf, "token_embd.weight");
    if (te < 0)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: tensor 'token_embd.weight' is missing", m->path);
    const bsi_gguf_tensor *t = &m->gguf->tensors[te];
    if (t->n_dims != 2 || t->ne[0] != a->n_embd || t->ne[1] == 0 || t->ne[1] > INT32_MAX)
        return bsi_fail(BONSAI_ERR_CORRUPT,
                        "%s: tensor 'token_embd.weight' has shape [%" PRIu64 ", %" PRIu64
                        "], expected [%u, n_vocab]",
                        m->path, t->ne[0], t->ne[1], a->n_embd);
    a->n_vocab = (uint32_t)t->ne[1];
    if (m->hparams.n_vocab && m->hparams.n_vocab != a->n_vocab)
        return bsi_fail(BONSAI_ERR_CORRUPT, "%s: %u tokens in the vocabulary but %u embedding rows",
                        m->path, m->hparams.n_vocab, a->n_vocab);
    a->tok_embd = te;
    uint32_t E = a->n_embd, F = a->n_ff, Q = a->n_head * a->head_dim,
             KV = a->n_head_kv * a->head_dim;
    if ((st = need_tensor(m, "output_norm.weight", E, 0, false, &a->output_norm))) return st;
    a->output = te;
    if (bsi_gguf_find_tensor(m->gguf, "output.weight") >= 0 &&
        (st = need_tensor(m, "output.weight", E, a->n_vocab, true, &a->output)))
        return st;
    a->layers = bsi_calloc(a->n_layer, sizeof *a->layers);
    if (!a->layers) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", m->path);
    for (uint32_t l = 0; l < a->n_layer && !st; l++) {
        bsi_layer *L = &a->layers[l];
        char n[64];
#define NEED(field, suffix, d0, d1, mat)                                                           \
    if (!st) {                                                                                     \
        snprintf(n, sizeof n, "blk.%u." suffix ".weight", l);                                      \
        st = need_tensor(m, n, d0, d1, mat, &L->field);                                            \
    }
        NEED(attn_norm, "attn_norm", E, 0, false)
        NEED(wq, "attn_q", E, Q, true)
        NEED(wk, "attn_k", E, KV, true)
        NEED(wv, "attn_v", E, KV, true)
        NEED(wo, "attn_output", Q, E, true)
        NEED(ffn_norm, "ffn_norm", E, 0, false)
        NEED(w_gate, "ffn_gate", E, F, true)
        NEED(w_up, "ffn_up", E, F, true)
        NEED(w_down, "ffn_down", F, E, true)
        L->q_norm = L->k_norm = -1;
        if (a->arch == BSI_ARCH_QWEN3) {
            NEED(q_norm, "attn_q_norm", a->head_dim, 0, false)
            NEED(k_norm, "attn_k_norm", a->head_dim, 0, false)
        }
#undef NEED
    }
    return st;
}

void bsi_arch_free(bsi_model_arch *a)
{
    free(a->layers);
    a->layers = NULL;
}
