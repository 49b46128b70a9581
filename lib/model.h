/* The model object: a validated GGUF file plus what the library derives from it. */
#ifndef BONSAI_MODEL_H
#define BONSAI_MODEL_H

#include "arch.h"
#include "file.h"
#include "gguf.h"

#include <pthread.h>
#include <stdatomic.h>

#define BSI_MAX_PLACEMENTS 4

/* The model's weights placed on one backend, shared by every session on that backend. */
typedef struct bsi_placement {
    const bsi_backend_vtable *vt;
    int device;          /* of the backend (GPU index) */
    uint64_t charged;    /* bytes counted against the model's memory cap */
    bsi_backend *owner;  /* the instance that created the weights and frees them */
    bsi_weight **matrix; /* [n_tensors]: placed matrices (NULL for others) */
    float **vector;      /* [n_tensors]: 1-D F32 tensors copied to backend memory */
} bsi_placement;

struct bonsai_model {
    uint32_t magic; /* BSI_MAGIC_MODEL (handle.h) */
    bool caller_released; /* bonsai_model_free() was called (debug builds check it) */
    char *path;
    bsi_file file;
    bsi_gguf *gguf;
    const char *arch; /* general.architecture or "" */
    const char *name; /* general.name or "" */
    uint64_t n_params;
    bonsai_model_hparams hparams;
    bsi_model_arch a;
    _Atomic int refs;     /* the caller's reference plus one per session */
    pthread_mutex_t lock; /* guards placements */
    bsi_placement placed[BSI_MAX_PLACEMENTS];
    int n_placed;
    /* the tokenizer's vocabulary, built on first use (vocab.c) */
    pthread_mutex_t vocab_lock;
    _Atomic int vocab_done; /* vocab or vocab_status is final */
    struct bsi_vocab *vocab;
    bonsai_status vocab_status;
    char *vocab_error; /* the message of vocab_status */
    uint64_t mem_cap;  /* bonsai_model_params.max_memory (0: none) */
    _Atomic uint64_t mem_used;
};

/* Counts `bytes` of `what` against the model's memory cap (BONSAI_ERR_NO_MEMORY past it). */
bonsai_status bsi_model_charge(bonsai_model *m, uint64_t bytes, const char *what);
void bsi_model_uncharge(bonsai_model *m, uint64_t bytes);

/* The model's weights on the backend of `be` (placing them on first use). */
bonsai_status bsi_model_placement(bonsai_model *m, bsi_backend *be, const bsi_backend_config *cfg,
                                  const bsi_placement **out);
void bsi_model_retain(bonsai_model *m);
void bsi_model_release(bonsai_model *m);

#endif
