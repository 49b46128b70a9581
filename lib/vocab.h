/* The model's tokenizer vocabulary (internal): built once from tokenizer.ggml.* metadata. */
#ifndef BONSAI_VOCAB_H
#define BONSAI_VOCAB_H

#include "internal.h"

#include <stdbool.h>

typedef struct bsi_vocab bsi_vocab;

/* The model's vocabulary, built on first use (thread-safe, once per model; the result or the
 * error is cached) and freed with the model. BONSAI_ERR_UNSUPPORTED when the model has no
 * tokenizer (no tokenizer.ggml.model / tokens) or an unknown tokenizer model/pre-tokenizer. */
bonsai_status bsi_vocab_get(const bonsai_model *m, const bsi_vocab **out);
void bsi_vocab_free(bsi_vocab *v);
uint32_t bsi_vocab_n(const bsi_vocab *v);
/* The bytes token `id` stands for when detokenized (gpt2: byte-unicode map reversed; llama/SPM:
 * U+2581 -> space, <0xNN> -> that byte); control tokens give their text only if `special`.
 * NULL (and *len 0) for an id outside the vocabulary. */
const uint8_t *bsi_vocab_bytes(const bsi_vocab *v, int32_t id, bool special, size_t *len);
bool bsi_vocab_is_eog(const bsi_vocab *v, int32_t id);
bool bsi_vocab_is_control(const bsi_vocab *v, int32_t id);

/* Tokenizes text with control tokens parsed (BONSAI_TOKENIZE_PARSE_SPECIAL) except inside the
 * n_plain spans [plain[2k], plain[2k + 1]) (sorted, disjoint): a rendered chat whose message
 * contents must stay text. *tokens is allocated (free()), also when empty. */
bonsai_status bsi_tokenize_markup(const bonsai_model *model, const char *text, size_t len,
                                  uint32_t flags, const size_t *plain, size_t n_plain,
                                  int32_t **tokens, uint32_t *n_tokens);

#endif
