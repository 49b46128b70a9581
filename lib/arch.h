/* The architectures the runtime runs: which tensors and keys a model must have, checked at load. */
#ifndef BONSAI_ARCH_H
#define BONSAI_ARCH_H

#include "backend.h"

typedef enum bsi_arch {
    BSI_ARCH_NONE = 0, /* a GGUF the runtime cannot run (vocab-only, unknown architecture) */
    BSI_ARCH_LLAMA,
    BSI_ARCH_QWEN3,
} bsi_arch;

/* Tensor indices into the model's GGUF (-1: absent). */
typedef struct bsi_layer {
    int64_t attn_norm, wq, wk, wv, wo, q_norm, k_norm, ffn_norm, w_gate, w_up, w_down;
} bsi_layer;

typedef struct bsi_model_arch {
    bsi_arch arch;
    uint32_t n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, n_ctx_train;
    float eps;
    bsi_rope rope;
    int64_t tok_embd, output_norm, output; /* output == tok_embd when the head is tied */
    bsi_layer *layers;                     /* [n_layer] */
} bsi_model_arch;

struct bonsai_model;

/* Fills m->arch for a known architecture, checking every key and tensor (a clear error naming
 * what is missing or mis-shaped); leaves BSI_ARCH_NONE for others. */
bonsai_status bsi_arch_load(struct bonsai_model *m);
void bsi_arch_free(bsi_model_arch *a);

#endif
