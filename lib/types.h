/* Tensor and metadata value types: sizes and names. */
#ifndef BONSAI_TYPES_H
#define BONSAI_TYPES_H

#include "internal.h"

typedef struct bsi_type_traits {
    const char *name;
    uint32_t block_size; /* elements per block */
    uint32_t type_size;  /* bytes per block */
} bsi_type_traits;

/* Traits of a tensor type libbonsai computes with, or NULL. */
const bsi_type_traits *bsi_type_traits_of(uint32_t type);

/* ggml's name for a type id this library does not support ("Q4_K", ...), or NULL. Used to make
 * refusals precise. */
const char *bsi_foreign_type_name(uint32_t type);

/* Bytes of one scalar metadata value of `type` (0 for string, array and unknown types). */
uint32_t bsi_value_type_size(uint32_t type);

#endif
