/* The model object: a validated GGUF file plus what the library derives from it. */
#ifndef BONSAI_MODEL_H
#define BONSAI_MODEL_H

#include "file.h"
#include "gguf.h"

struct bonsai_model {
    char *path;
    bsi_file file;
    bsi_gguf *gguf;
    const char *arch; /* general.architecture or "" */
    const char *name; /* general.name or "" */
    uint64_t n_params;
    bonsai_model_hparams hparams;
};

#endif
