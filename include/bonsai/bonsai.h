/*
 * libbonsai — run PrismML Bonsai 1-bit language models.
 *
 * This header is the whole stable C API and its documentation. Rules that hold everywhere:
 *
 *  - Every fallible function returns a bonsai_status: BONSAI_OK (0) or a negative error whose value
 *    never changes. On failure, bonsai_last_error() (thread-local) says what went wrong in words,
 *    with the file offset, key or tensor name where one applies. Pointers returned through
 *    out-parameters (handles, strings, values) are set to NULL on failure; numbers returned
 *    through out-parameters are left unchanged.
 *  - Parameter structs begin with `uint32_t struct_size`, are filled by their *_init() function,
 *    are passed by pointer, and only ever grow at the end: a program built against an older header
 *    keeps working with a newer library.
 *  - The library never aborts, exits or prints. Messages go to the log callback, silent by default.
 *  - A model is immutable after loading and may be shared by any number of threads. Strings and
 *    arrays returned by model accessors stay valid until bonsai_model_free(). Destructors accept
 *    NULL.
 *
 * See docs/API.md for a guided tour and docs/ABI.md for the compatibility promise.
 */
#ifndef BONSAI_BONSAI_H
#define BONSAI_BONSAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bonsai_version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && !defined(BONSAI_STATIC)
#ifdef BONSAI_BUILDING
#define BONSAI_API __declspec(dllexport)
#else
#define BONSAI_API __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define BONSAI_API __attribute__((visibility("default")))
#else
#define BONSAI_API
#endif

/* ------------------------------------------------------------------------------------------ */
/** @name Versions */

/** Library version as "MAJOR.MINOR.PATCH" (of the library actually loaded, not of this header). */
BONSAI_API const char *bonsai_version_string(void);
/** Library version as MAJOR*10000 + MINOR*100 + PATCH; compare with BONSAI_VERSION_NUMBER. */
BONSAI_API uint32_t bonsai_version_number(void);
/** ABI version of the loaded library; equals the soname suffix. Compare with BONSAI_ABI_VERSION. */
BONSAI_API uint32_t bonsai_abi_version(void);

/* ------------------------------------------------------------------------------------------ */
/** @name Status codes and errors
 * Values are pinned: they never change and are never reused. */

typedef enum bonsai_status {
    BONSAI_OK = 0,
    BONSAI_ERR_INVALID_ARGUMENT = -1, /**< NULL where a pointer is required, bad struct_size... */
    BONSAI_ERR_NO_MEMORY = -2,        /**< an allocation failed */
    BONSAI_ERR_IO = -3,               /**< the file could not be opened, mapped or read */
    BONSAI_ERR_BAD_MAGIC = -4,        /**< not a GGUF file */
    BONSAI_ERR_UNSUPPORTED_VERSION = -5, /**< GGUF version other than 2 or 3 */
    BONSAI_ERR_TRUNCATED = -6,           /**< the file ends before the data it declares */
    BONSAI_ERR_CORRUPT = -7,             /**< inconsistent structure: counts, sizes, offsets... */
    BONSAI_ERR_UNSUPPORTED_TYPE = -8,    /**< a tensor type this library cannot compute with */
    BONSAI_ERR_DUPLICATE = -9,           /**< a metadata key or tensor name appears twice */
    BONSAI_ERR_NOT_FOUND = -10,          /**< no metadata key / tensor of that name */
    BONSAI_ERR_TYPE_MISMATCH = -11,      /**< a typed getter was used on a value of another type */
    BONSAI_ERR_OUT_OF_RANGE = -12,       /**< an index or value outside its valid range */
    BONSAI_ERR_ABORTED = -13,            /**< a progress/abort callback asked to stop */
    BONSAI_ERR_UNSUPPORTED = -14,        /**< a feature, architecture or backend not available */
    BONSAI_ERR_CONTEXT_FULL = -15,       /**< the session's context has no room left */
    BONSAI_ERR_BACKEND = -16,            /**< a compute backend (e.g. the GPU) reported an error */
    BONSAI_ERR_INVALID_STATE = -17,      /**< the object is not in a state that allows the call */
} bonsai_status;

/** A short constant English description of a status ("corrupt file", ...). Never NULL. */
BONSAI_API const char *bonsai_status_string(bonsai_status status);

/**
 * Detail of the most recent failure on the calling thread (successful calls leave it as it was;
 * at most 1023 bytes), e.g.
 * "stories.gguf: tensor 'blk.0.attn_q.weight': offset 123 is not a multiple of the alignment 32".
 * Never NULL ("" when nothing failed yet). Valid until the next libbonsai call on this thread.
 */
BONSAI_API const char *bonsai_last_error(void);

/* ------------------------------------------------------------------------------------------ */
/** @name Logging
 * The library is silent unless a callback is set. The callback may be called from any thread that
 * calls into the library, and must not call back into libbonsai. */

typedef enum bonsai_log_level {
    BONSAI_LOG_ERROR = 0,
    BONSAI_LOG_WARN = 1,
    BONSAI_LOG_INFO = 2,
    BONSAI_LOG_DEBUG = 3,
} bonsai_log_level;

typedef void (*bonsai_log_fn)(bonsai_log_level level, const char *message, void *user_data);

/**
 * Set the process-wide log callback (NULL: silent, the default) and the most verbose level it
 * receives. Thread-safe.
 */
BONSAI_API void bonsai_log_set(bonsai_log_fn fn, bonsai_log_level max_level, void *user_data);

/* ------------------------------------------------------------------------------------------ */
/** @name Tensor and metadata value types (numbers as in GGUF) */

typedef enum bonsai_value_type {
    BONSAI_VALUE_U8 = 0,
    BONSAI_VALUE_I8 = 1,
    BONSAI_VALUE_U16 = 2,
    BONSAI_VALUE_I16 = 3,
    BONSAI_VALUE_U32 = 4,
    BONSAI_VALUE_I32 = 5,
    BONSAI_VALUE_F32 = 6,
    BONSAI_VALUE_BOOL = 7,
    BONSAI_VALUE_STRING = 8,
    BONSAI_VALUE_ARRAY = 9,
    BONSAI_VALUE_U64 = 10,
    BONSAI_VALUE_I64 = 11,
    BONSAI_VALUE_F64 = 12,
} bonsai_value_type;

/** "u8", "string", "array"... ; "?" for a number that is not a value type. */
BONSAI_API const char *bonsai_value_type_name(bonsai_value_type type);

typedef enum bonsai_tensor_type {
    BONSAI_TENSOR_F32 = 0,
    BONSAI_TENSOR_F16 = 1,
    BONSAI_TENSOR_Q8_0 = 8,
    BONSAI_TENSOR_BF16 = 30,
    BONSAI_TENSOR_Q1_0 = 41, /**< Bonsai: 128 sign bits + one fp16 scale per block, 18 bytes */
} bonsai_tensor_type;

/** "F32", "Q1_0"...; NULL for a type this library does not know. */
BONSAI_API const char *bonsai_tensor_type_name(uint32_t type);

/* ------------------------------------------------------------------------------------------ */
/** @name Models */

typedef struct bonsai_model bonsai_model;

/**
 * Progress callback of long operations: `progress` goes from 0 to 1. Return false to abort; the
 * operation then fails with BONSAI_ERR_ABORTED and releases everything it took.
 */
typedef bool (*bonsai_progress_fn)(float progress, void *user_data);

typedef struct bonsai_model_params {
    uint32_t struct_size;        /**< sizeof(bonsai_model_params); set by the init function */
    bool use_mmap;               /**< map the file (default true); false reads it into memory */
    bonsai_progress_fn progress; /**< optional */
    void *progress_user_data;
    /** Most bytes the model may take besides the file's mapping (0, the default: no cap): the
     * file itself when read (use_mmap false), the weights each backend copies or repacks (host
     * or GPU memory), the tokenizer's tables. Exceeding it fails with BONSAI_ERR_NO_MEMORY. */
    uint64_t max_memory;
} bonsai_model_params;

/** Fill `params` with the defaults (does nothing when `params` is NULL). */
BONSAI_API void bonsai_model_params_init(bonsai_model_params *params);

/**
 * Open a GGUF file, validate every structure in it, and return a model. Weights are mapped (or read
 * when use_mmap is false), never converted. `params` may be NULL for the defaults. On failure
 * `*out` is NULL and bonsai_last_error() names the file, offset, key or tensor at fault.
 */
BONSAI_API bonsai_status bonsai_model_load(const char *path, const bonsai_model_params *params,
                                           bonsai_model **out);

/** Release a model and everything it owns. NULL is allowed. */
BONSAI_API void bonsai_model_free(bonsai_model *model);

/** Value of `general.architecture` ("qwen3", "llama"...), or "" when the file has none. */
BONSAI_API const char *bonsai_model_architecture(const bonsai_model *model);
/** Value of `general.name`, or "" when absent. */
BONSAI_API const char *bonsai_model_name(const bonsai_model *model);
/** Size of the file in bytes. */
BONSAI_API uint64_t bonsai_model_file_size(const bonsai_model *model);
/** GGUF version of the file (2 or 3). */
BONSAI_API uint32_t bonsai_model_gguf_version(const bonsai_model *model);
/** Total number of tensor elements (weights) in the file. */
BONSAI_API uint64_t bonsai_model_n_params(const bonsai_model *model);
/** Number of tokens of the vocabulary (entries of tokenizer.ggml.tokens), 0 when none. */
BONSAI_API uint32_t bonsai_model_n_vocab(const bonsai_model *model);

/**
 * Hyper-parameters read from `<arch>.*` metadata. A field whose key is absent is 0 (rope_freq_base
 * and rope_scaling_factor: 0 as well; the runtime applies the architecture's defaults).
 */
typedef struct bonsai_model_hparams {
    uint32_t struct_size;      /**< set by the caller to sizeof(bonsai_model_hparams) */
    uint32_t n_vocab;          /**< tokens in the vocabulary */
    uint32_t n_ctx_train;      /**< <arch>.context_length */
    uint32_t n_embd;           /**< <arch>.embedding_length */
    uint32_t n_layer;          /**< <arch>.block_count */
    uint32_t n_ff;             /**< <arch>.feed_forward_length */
    uint32_t n_head;           /**< <arch>.attention.head_count */
    uint32_t n_head_kv;        /**< <arch>.attention.head_count_kv (n_head when absent) */
    uint32_t head_dim_k;       /**< <arch>.attention.key_length (n_embd / n_head when absent) */
    uint32_t head_dim_v;       /**< <arch>.attention.value_length (head_dim_k when absent) */
    uint32_t n_rot;            /**< <arch>.rope.dimension_count (head_dim_k when absent) */
    float rms_eps;             /**< <arch>.attention.layer_norm_rms_epsilon */
    float rope_freq_base;      /**< <arch>.rope.freq_base */
    float rope_scaling_factor; /**< <arch>.rope.scaling.factor (0: none) */
    uint32_t rope_scaling_orig_ctx; /**< <arch>.rope.scaling.original_context_length */
    uint32_t rope_scaling_yarn;     /**< 1 when <arch>.rope.scaling.type is "yarn" */
} bonsai_model_hparams;

/**
 * Fill `out` with the model's hyper-parameters. The caller sets out->struct_size; fields beyond it
 * are not written, so programs built against an older header keep working.
 */
BONSAI_API bonsai_status bonsai_model_hparams_get(const bonsai_model *model,
                                                  bonsai_model_hparams *out);

/* ------------------------------------------------------------------------------------------ */
/** @name Metadata
 * Lookup by key, typed getters, and arrays (of any element type, arrays of arrays included).
 * A bonsai_value belongs to its model. Strings are NUL-terminated copies; a string's `len` is
 * its length in bytes and also counts NUL bytes embedded in it. */

typedef struct bonsai_value bonsai_value;

/** Number of metadata entries. */
BONSAI_API uint64_t bonsai_model_meta_count(const bonsai_model *model);
/** Key and value of entry `index` (file order). Either out-pointer may be NULL. */
BONSAI_API bonsai_status bonsai_model_meta_at(const bonsai_model *model, uint64_t index,
                                              const char **key, const bonsai_value **value);
/** Value of `key`; BONSAI_ERR_NOT_FOUND when the file has no such key. */
BONSAI_API bonsai_status bonsai_model_meta_get(const bonsai_model *model, const char *key,
                                               const bonsai_value **value);

/** Type of a value (BONSAI_VALUE_ARRAY for arrays); (bonsai_value_type)-1 for NULL. */
BONSAI_API bonsai_value_type bonsai_value_type_of(const bonsai_value *value);

/* Exact getters: BONSAI_ERR_TYPE_MISMATCH unless the value has exactly this type. */
BONSAI_API bonsai_status bonsai_value_get_u8(const bonsai_value *value, uint8_t *out);
BONSAI_API bonsai_status bonsai_value_get_i8(const bonsai_value *value, int8_t *out);
BONSAI_API bonsai_status bonsai_value_get_u16(const bonsai_value *value, uint16_t *out);
BONSAI_API bonsai_status bonsai_value_get_i16(const bonsai_value *value, int16_t *out);
BONSAI_API bonsai_status bonsai_value_get_u32(const bonsai_value *value, uint32_t *out);
BONSAI_API bonsai_status bonsai_value_get_i32(const bonsai_value *value, int32_t *out);
BONSAI_API bonsai_status bonsai_value_get_u64(const bonsai_value *value, uint64_t *out);
BONSAI_API bonsai_status bonsai_value_get_i64(const bonsai_value *value, int64_t *out);
BONSAI_API bonsai_status bonsai_value_get_f32(const bonsai_value *value, float *out);
BONSAI_API bonsai_status bonsai_value_get_f64(const bonsai_value *value, double *out);
BONSAI_API bonsai_status bonsai_value_get_bool(const bonsai_value *value, bool *out);
BONSAI_API bonsai_status bonsai_value_get_string(const bonsai_value *value, const char **str,
                                                 uint64_t *len);

/**
 * Converting getters for programs that do not care how a writer typed a number: any integer type
 * whose value fits (else BONSAI_ERR_OUT_OF_RANGE); to_f64 also takes f32/f64.
 */
BONSAI_API bonsai_status bonsai_value_to_i64(const bonsai_value *value, int64_t *out);
BONSAI_API bonsai_status bonsai_value_to_u64(const bonsai_value *value, uint64_t *out);
BONSAI_API bonsai_status bonsai_value_to_f64(const bonsai_value *value, double *out);

/** Element type and element count of an array (BONSAI_ERR_TYPE_MISMATCH if not an array). */
BONSAI_API bonsai_status bonsai_value_array_info(const bonsai_value *value,
                                                 bonsai_value_type *elem_type, uint64_t *count);
/**
 * Copy `count` numeric or bool elements starting at `first` into `dst` as their own type
 * (e.g. int32_t for BONSAI_VALUE_I32, 1-byte 0/1 for bool). `dst_size` is the size of `dst` in
 * bytes and must hold them all. `elem_type` must equal the array's element type.
 */
BONSAI_API bonsai_status bonsai_value_array_copy(const bonsai_value *value,
                                                 bonsai_value_type elem_type, uint64_t first,
                                                 uint64_t count, void *dst, size_t dst_size);
/** String element `index` of an array of strings. */
BONSAI_API bonsai_status bonsai_value_array_string(const bonsai_value *value, uint64_t index,
                                                   const char **str, uint64_t *len);
/** Element `index` of an array of arrays, itself an array value. */
BONSAI_API bonsai_status bonsai_value_array_array(const bonsai_value *value, uint64_t index,
                                                  const bonsai_value **elem);

/* ------------------------------------------------------------------------------------------ */
/** @name Tensors */

typedef struct bonsai_tensor_info {
    uint32_t struct_size; /**< set by the caller to sizeof(bonsai_tensor_info) */
    const char *name;     /**< owned by the model */
    uint32_t type;        /**< a bonsai_tensor_type */
    uint32_t n_dims;      /**< 1..4 */
    uint64_t dims[4];     /**< dims[0] varies fastest; unused dims are 1 */
    uint64_t n_elements;
    uint64_t n_bytes;
    uint64_t file_offset; /**< absolute offset of the data in the file */
} bonsai_tensor_info;

/** Number of tensors. */
BONSAI_API uint64_t bonsai_model_tensor_count(const bonsai_model *model);
/** Describe tensor `index` (file order). The caller sets out->struct_size. */
BONSAI_API bonsai_status bonsai_model_tensor_at(const bonsai_model *model, uint64_t index,
                                                bonsai_tensor_info *out);
/** Index of the tensor named `name`; BONSAI_ERR_NOT_FOUND when absent. */
BONSAI_API bonsai_status bonsai_model_tensor_find(const bonsai_model *model, const char *name,
                                                  uint64_t *index);

/* ------------------------------------------------------------------------------------------ */
/** @name Backends
 * Where sessions compute: "cpu" (built in, always usable) and "cuda" (a module loaded at run
 * time, usable when it was built and an NVIDIA driver and GPU are present). The list is made
 * once per process, on first use. */

typedef struct bonsai_backend_info {
    uint32_t struct_size; /**< set by the caller to sizeof(bonsai_backend_info) */
    const char *name;     /**< "cpu", "cuda" */
    bool usable;          /**< sessions can use it */
    int32_t score;        /**< preference of "auto": the usable backend with the highest wins */
    const char *reason;   /**< why it is not usable ("" when it is) */
    const char *path;     /**< the module's file for loaded backends, "" for built-in ones */
} bonsai_backend_info;

/** Number of backends this library knows of (usable or not). */
BONSAI_API uint32_t bonsai_backend_count(void);
/** Describe backend `index` (0 .. bonsai_backend_count() - 1); strings stay valid for the life
 * of the process. The caller sets out->struct_size. */
BONSAI_API bonsai_status bonsai_backend_get(uint32_t index, bonsai_backend_info *out);

/* ------------------------------------------------------------------------------------------ */
/** @name Sessions
 * A session runs a model: it owns a compute backend instance (threads, or a GPU stream), a KV
 * cache sized for its context, and the logits of its last evaluation. A session is used by one
 * thread at a time; any number of sessions may run on one model from different threads. A
 * session keeps its model alive: bonsai_model_free() on a model with sessions only drops the
 * caller's reference, and the model goes when its last session does. */

typedef struct bonsai_session bonsai_session;

typedef struct bonsai_session_params {
    uint32_t struct_size; /**< sizeof(bonsai_session_params); set by the init function */
    uint32_t n_ctx;       /**< context length in tokens (0: the model's, at most 4096) */
    int32_t n_threads;    /**< CPU threads (0: the number of physical cores) */
    const char *backend;  /**< "auto" (default: the best usable), "cpu", "cuda" (the first
                               usable GPU), "cuda:N" (GPU N); a named backend that cannot be
                               used fails; copied */
    uint32_t kv_type;     /**< KV cache: BONSAI_TENSOR_F16 (default) or BONSAI_TENSOR_Q8_0
                               (half the memory; heads of a multiple of 32 values) */
    /** Most bytes the session may take (0, the default: no cap): its KV cache, and activations
     * and logits for its largest batch. A cache that does not fit fails the creation; a batch
     * that does not fit fails with BONSAI_ERR_NO_MEMORY and the session stays usable. */
    uint64_t max_memory;
} bonsai_session_params;

/** Fill `params` with the defaults (does nothing when `params` is NULL). */
BONSAI_API void bonsai_session_params_init(bonsai_session_params *params);

/**
 * Create a session on `model` (any architecture the runtime supports: "qwen3", "llama"; others
 * give BONSAI_ERR_UNSUPPORTED). The first session of a backend places the model's weights on it;
 * later sessions share them. `params` may be NULL for the defaults.
 */
BONSAI_API bonsai_status bonsai_session_create(bonsai_model *model,
                                               const bonsai_session_params *params,
                                               bonsai_session **out);

/** Release a session (and its model, if it held the last reference). NULL is allowed. */
BONSAI_API void bonsai_session_free(bonsai_session *session);

/** Flags of bonsai_session_eval(). */
#define BONSAI_EVAL_ALL_LOGITS 1u /**< keep the logits of every token, not only the last */

/**
 * Evaluate n_tokens tokens at the next positions (bonsai_session_n_past() onwards) in one batch
 * and keep the logits of the last token (or of every token with BONSAI_EVAL_ALL_LOGITS).
 * BONSAI_ERR_CONTEXT_FULL when they do not fit: nothing is evaluated and the session stays as it
 * was. BONSAI_ERR_OUT_OF_RANGE for a token id outside the vocabulary. When the computation itself
 * fails (BONSAI_ERR_BACKEND: the GPU reported an error; BONSAI_ERR_NO_MEMORY), the session stays
 * at its position with no logits, and the call may be repeated.
 */
BONSAI_API bonsai_status bonsai_session_eval(bonsai_session *session, const int32_t *tokens,
                                             uint32_t n_tokens, uint32_t flags);

/**
 * Logits of the last evaluation: `*n_rows` rows (1, or the batch size with
 * BONSAI_EVAL_ALL_LOGITS) of bonsai_model_n_vocab() floats. Valid until the next call that
 * changes the session; NULL (and *n_rows 0) before the first evaluation.
 */
BONSAI_API const float *bonsai_session_logits(const bonsai_session *session, uint32_t *n_rows);

/** Tokens in the KV cache (the position of the next token). */
BONSAI_API uint32_t bonsai_session_n_past(const bonsai_session *session);
/** Context length of the session. */
BONSAI_API uint32_t bonsai_session_n_ctx(const bonsai_session *session);

/** Keep only the first n_keep tokens of the cache (for prefix reuse and rewinding). */
BONSAI_API bonsai_status bonsai_session_truncate(bonsai_session *session, uint32_t n_keep);

/** Empty the cache and forget the logits. */
BONSAI_API void bonsai_session_clear(bonsai_session *session);

/**
 * Embedding of a sequence for retrieval: the model's final hidden state (after the output norm)
 * of every token, mean-pooled over the tokens and L2-normalised, written to out[0 .. n_embd).
 * `out_dim` must be the model's embedding length (bonsai_model_hparams_get: n_embd). The
 * session's cache is cleared first and is empty afterwards. n_tokens must fit the context.
 */
BONSAI_API bonsai_status bonsai_embed(bonsai_session *session, const int32_t *tokens,
                                      uint32_t n_tokens, float *out, uint32_t out_dim);

/** One session's next token in a batch (bonsai_batch_eval()). */
typedef struct bonsai_batch_item {
    bonsai_session *session;
    int32_t token;
} bonsai_batch_item;

/**
 * Continuous batching: evaluate one token for each of several sessions in a single forward pass,
 * so the weights are read once for all of them (a server stepping many conversations together).
 * Each item's token goes to its session's cache at the session's next position, and each
 * session's logits become that token's (as bonsai_session_eval() of the one token would give).
 * Every session must run the same model on the same backend and device, appear once, and have
 * room for its token; otherwise nothing is evaluated (BONSAI_ERR_INVALID_ARGUMENT,
 * BONSAI_ERR_CONTEXT_FULL, BONSAI_ERR_OUT_OF_RANGE). When the computation itself fails, every
 * session stays at its position with no logits, as with bonsai_session_eval(), and the call may be
 * repeated. The computation runs on the first item's
 * session; no session of the batch may be in use by another thread during the call. `flags`
 * must be 0.
 */
BONSAI_API bonsai_status bonsai_batch_eval(const bonsai_batch_item *items, uint32_t n_items,
                                           uint32_t flags);

/** Description of the session's backend, e.g. "cpu avx2, 2 threads". */
BONSAI_API const char *bonsai_session_backend(const bonsai_session *session);

/** Tokens evaluated into the cache so far, in order (`*n` = bonsai_session_n_past()); valid until
 * the next call that changes the session. */
BONSAI_API const int32_t *bonsai_session_tokens(const bonsai_session *session, uint32_t *n);

/**
 * Stop the generation running on this session: after the current token, or between layers while
 * it evaluates its prompt (the stop reason is then BONSAI_STOP_CANCELLED). When none is running,
 * the next bonsai_generate*() on the session stops at once; a generation clears the request as it
 * ends. The only session function that may be called from another thread while the session is
 * in use.
 */
BONSAI_API void bonsai_session_cancel(bonsai_session *session);

/* ------------------------------------------------------------------------------------------ */
/** @name Tokenizer
 * The model's own tokenizer, read from its tokenizer.ggml.* metadata: byte-level BPE ("gpt2",
 * pre-tokenizers "qwen2" and "gpt-2", NFC-normalised input) or SentencePiece ("llama", scores and
 * byte fallback). Built on first use (thread-safe) and kept with the model. Models without a
 * tokenizer give BONSAI_ERR_UNSUPPORTED. */

/** Flags of bonsai_tokenize(). */
#define BONSAI_TOKENIZE_ADD_BOS       1u /**< prepend BOS if the model's tokenizer adds one */
#define BONSAI_TOKENIZE_PARSE_SPECIAL 2u /**< match special tokens ("<|im_start|>") as text */

/**
 * Tokenize `len` bytes of UTF-8 `text` into tokens[0 .. n_max). On success *n_tokens is the count.
 * When n_max is too small the call fails with BONSAI_ERR_OUT_OF_RANGE and, as an exception to
 * the general rule, sets *n_tokens to the count needed (tokens may be NULL with n_max 0 to ask).
 * Invalid UTF-8 bytes are tokenized as bytes (never an error).
 */
BONSAI_API bonsai_status bonsai_tokenize(const bonsai_model *model, const char *text, size_t len,
                                         uint32_t flags, int32_t *tokens, uint32_t n_max,
                                         uint32_t *n_tokens);

/** Flags of bonsai_detokenize() and bonsai_token_to_piece(). */
#define BONSAI_DETOKENIZE_SPECIAL 1u /**< render control tokens as their text ("<|im_end|>") */
/** The tokens continue a text (e.g. generated after a prompt): keep the leading space of the
 * first piece, which is otherwise dropped for SentencePiece models (see bonsai_detokenize()). */
#define BONSAI_DETOKENIZE_CONTINUATION 2u

/**
 * The bytes token `token` stands for (possibly an incomplete UTF-8 sequence); control tokens are
 * empty unless BONSAI_DETOKENIZE_SPECIAL. Writes at most buf_size bytes and a NUL terminator when
 * there is room; *len is the piece's length. BONSAI_ERR_OUT_OF_RANGE when it does not fit (then
 * *len is the size needed) or the token is outside the vocabulary.
 */
BONSAI_API bonsai_status bonsai_token_to_piece(const bonsai_model *model, int32_t token,
                                               uint32_t flags, char *buf, size_t buf_size,
                                               size_t *len);

/**
 * Text of a token sequence: the pieces concatenated, without the space a SentencePiece tokenizer
 * adds at the start of the text, so that detokenize(tokenize(x)) == x. Same buffer rules as
 * bonsai_token_to_piece() (NUL-terminated when there is room; *len needed on OUT_OF_RANGE).
 */
BONSAI_API bonsai_status bonsai_detokenize(const bonsai_model *model, const int32_t *tokens,
                                           uint32_t n_tokens, uint32_t flags, char *buf,
                                           size_t buf_size, size_t *len);

/** Special tokens; bonsai_model_token() gives -1 where the model has none. */
typedef enum bonsai_special_token {
    BONSAI_TOKEN_BOS = 0,
    BONSAI_TOKEN_EOS = 1,
    BONSAI_TOKEN_EOT = 2, /**< end of turn ("<|im_end|>" in ChatML models) */
    BONSAI_TOKEN_PAD = 3,
} bonsai_special_token;

BONSAI_API int32_t bonsai_model_token(const bonsai_model *model, bonsai_special_token which);
/** True for tokens that end generation (EOS, EOT and the model's other end-of-generation ids). */
BONSAI_API bool bonsai_token_is_eog(const bonsai_model *model, int32_t token);
/** True for control tokens (token_type 3), which detokenize to nothing by default. */
BONSAI_API bool bonsai_token_is_control(const bonsai_model *model, int32_t token);

/**
 * Streaming detokenizer: feed tokens one by one and receive text that is always whole UTF-8. A
 * character whose bytes span several tokens is held until complete; bytes that can never complete
 * a character come out as U+FFFD. Concatenating every piece and the final flush gives the same
 * text as bonsai_detokenize() (with invalid bytes replaced).
 */
typedef struct bonsai_detokenizer bonsai_detokenizer;

BONSAI_API bonsai_status bonsai_detokenizer_create(const bonsai_model *model, uint32_t flags,
                                                   bonsai_detokenizer **out);
/** Add a token; *text / *len are the newly complete text (maybe empty), valid until the next call.
 */
BONSAI_API bonsai_status bonsai_detokenizer_push(bonsai_detokenizer *d, int32_t token,
                                                 const char **text, size_t *len);
/** Whatever is still held (incomplete sequences as U+FFFD), and start over. */
BONSAI_API void bonsai_detokenizer_flush(bonsai_detokenizer *d, const char **text, size_t *len);
BONSAI_API void bonsai_detokenizer_free(bonsai_detokenizer *d);

/* ------------------------------------------------------------------------------------------ */
/** @name Sampling
 * A sampler is a chain of stages applied in order to the candidates (every token with its logit),
 * ending in a stage that selects a token: greedy, or a seeded random draw ("dist"). The same seed,
 * chain and logits always give the same tokens. Typical chain (bonsai_sampler_create_default):
 * penalties, logit bias, top-k, top-p, min-p, temperature, dist. A sampler is used by one thread
 * at a time. */

typedef struct bonsai_sampler bonsai_sampler;

typedef struct bonsai_token_data {
    int32_t id;
    float logit;
    float p; /**< probability; valid after a stage that computes it (top-p, min-p, dist) */
} bonsai_token_data;

/** The candidates a stage works on. Stages may reorder, shrink (size) and rewrite logits. */
typedef struct bonsai_candidates {
    bonsai_token_data *data;
    size_t size;
    bool sorted;      /**< data is sorted by logit, highest first */
    int32_t selected; /**< index into data of the chosen token, -1 until a stage selects one */
} bonsai_candidates;

/**
 * A user stage: edit the candidates (and optionally select one). `history` holds the tokens
 * accepted so far (prompt and generated), oldest first. Return false to abort sampling
 * (bonsai_sampler_sample then fails with BONSAI_ERR_ABORTED).
 */
typedef bool (*bonsai_sampler_fn)(bonsai_candidates *candidates, const int32_t *history,
                                  size_t n_history, void *user_data);

typedef struct bonsai_logit_bias {
    int32_t token;
    float bias; /**< added to the logit; -INFINITY bans the token */
} bonsai_logit_bias;

/** An empty chain; `seed` drives its random stages. */
BONSAI_API bonsai_status bonsai_sampler_create(uint64_t seed, bonsai_sampler **out);
BONSAI_API void bonsai_sampler_free(bonsai_sampler *sampler);

/* Stages, applied in the order added. Arguments out of range give BONSAI_ERR_INVALID_ARGUMENT. */
/** Select the highest logit (ties: lowest id). */
BONSAI_API bonsai_status bonsai_sampler_add_greedy(bonsai_sampler *s);
/** Select at random from softmax(logits). */
BONSAI_API bonsai_status bonsai_sampler_add_dist(bonsai_sampler *s);
/** Divide logits by t (t <= 0: keep only the highest logit, i.e. greedy). */
BONSAI_API bonsai_status bonsai_sampler_add_temperature(bonsai_sampler *s, float t);
/** Keep the k highest logits (k <= 0: no-op). */
BONSAI_API bonsai_status bonsai_sampler_add_top_k(bonsai_sampler *s, int32_t k);
/** Keep the smallest set of most likely tokens whose probability sums to >= p (at least
 * min_keep). p >= 1: no-op. */
BONSAI_API bonsai_status bonsai_sampler_add_top_p(bonsai_sampler *s, float p, size_t min_keep);
/** Keep tokens whose probability is >= p times the most likely one's (p <= 0: no-op). */
BONSAI_API bonsai_status bonsai_sampler_add_min_p(bonsai_sampler *s, float p, size_t min_keep);
/**
 * Penalties over the last `last_n` accepted tokens (-1: all of them): for a token seen c > 0
 * times, logit = logit / repeat (if positive) or * repeat (if negative), then
 * logit -= c * frequency + presence. repeat 1, frequency 0, presence 0 disable them.
 */
BONSAI_API bonsai_status bonsai_sampler_add_penalties(bonsai_sampler *s, int32_t last_n,
                                                      float repeat, float frequency,
                                                      float presence);
/** Add fixed biases to some tokens' logits (the array is copied). */
BONSAI_API bonsai_status bonsai_sampler_add_logit_bias(bonsai_sampler *s,
                                                       const bonsai_logit_bias *bias, size_t n);
/** A user stage (see bonsai_sampler_fn). */
BONSAI_API bonsai_status bonsai_sampler_add_custom(bonsai_sampler *s, bonsai_sampler_fn fn,
                                                   void *user_data);
/**
 * Constrain output to JSON: only tokens whose bytes can continue a valid document keep their
 * logits (others become -INFINITY), and end-of-generation tokens only once it is complete.
 * `schema` (JSON text, `schema_len` bytes) is a JSON Schema subset: type object (properties,
 * required, additionalProperties false implied), string, number, integer, boolean, null, array
 * (items), enum, nested. NULL asks for any JSON object ("JSON mode"). Add it first in the chain.
 * Under bonsai_generate*() the document is finished within max_tokens and the context: near the
 * limit only tokens that leave room for the shortest valid ending are allowed (so max_tokens
 * must leave room for the shortest document the schema allows, counted in tokens).
 * BONSAI_ERR_UNSUPPORTED for schema keywords outside the subset, with the keyword named.
 */
BONSAI_API bonsai_status bonsai_sampler_add_json(bonsai_sampler *s, const bonsai_model *model,
                                                 const char *schema, size_t schema_len);

/** Sampler settings in one struct, for bonsai_sampler_create_default(). */
typedef struct bonsai_sampler_params {
    uint32_t struct_size;    /**< sizeof(bonsai_sampler_params); set by the init function */
    uint64_t seed;           /**< default 0 */
    float temperature;       /**< default 0.8; <= 0: greedy */
    int32_t top_k;           /**< default 40; <= 0: off */
    float top_p;             /**< default 0.95; 1: off */
    float min_p;             /**< default 0.05; 0: off */
    int32_t penalty_last_n;  /**< default 64; -1: the whole history */
    float repeat_penalty;    /**< default 1 (off) */
    float frequency_penalty; /**< default 0 */
    float presence_penalty;  /**< default 0 */
} bonsai_sampler_params;

BONSAI_API void bonsai_sampler_params_init(bonsai_sampler_params *params);
/** A chain: penalties, top-k, top-p, min-p, temperature, dist (or greedy when temperature <= 0). */
BONSAI_API bonsai_status bonsai_sampler_create_default(const bonsai_sampler_params *params,
                                                       bonsai_sampler **out);

/**
 * Run the chain on `logits` (n_vocab floats) and return the chosen token, which is then accepted
 * (added to the history and to any constraint's state). `logprob` (optional) receives the chosen
 * token's log-probability under the model's unmodified distribution, log softmax(logits)[token].
 * BONSAI_ERR_INVALID_STATE when no token can be chosen (every candidate removed, e.g. a JSON
 * constraint with no valid continuation).
 */
BONSAI_API bonsai_status bonsai_sampler_sample(bonsai_sampler *s, const float *logits,
                                               uint32_t n_vocab, int32_t *token, float *logprob);
/** Add a token to the history without sampling it (e.g. the prompt, for penalties). A
 * constraint refuses a token that cannot continue its document (BONSAI_ERR_INVALID_ARGUMENT). */
BONSAI_API bonsai_status bonsai_sampler_accept(bonsai_sampler *s, int32_t token);
/** Forget the history and constraint state; the random generator restarts from its seed. */
BONSAI_API void bonsai_sampler_reset(bonsai_sampler *s);
/** True when a constraint in the chain has seen a complete document (always false without). */
BONSAI_API bool bonsai_sampler_done(const bonsai_sampler *s);

/**
 * Sample the next token from the session's logits (the last row of its last evaluation) with
 * `sampler`: the same token and log-probability as bonsai_sampler_sample() on
 * bonsai_session_logits(). On a GPU, a chain of the built-in top-k, top-p, min-p and temperature
 * stages (each at most once, in that order) ending in dist or greedy, which is what
 * bonsai_sampler_create_default() makes without penalties, runs on the device and only the token
 * comes back; any other chain, or a case the device leaves to the host, downloads the logits and
 * runs on the host. BONSAI_ERR_INVALID_STATE when the session has no logits.
 */
BONSAI_API bonsai_status bonsai_session_sample(bonsai_session *session, bonsai_sampler *sampler,
                                               int32_t *token, float *logprob);

/** One session to sample in a batch (bonsai_batch_sample()): session and sampler in, token and
 * logprob out. */
typedef struct bonsai_batch_sample_item {
    bonsai_session *session;
    bonsai_sampler *sampler;
    int32_t token;  /**< out: the sampled token */
    float logprob;  /**< out: its log-probability */
} bonsai_batch_sample_item;

/**
 * The next token of several sessions at once (a server's step after bonsai_batch_eval()): each
 * item gets what bonsai_session_sample(session, sampler, ...) would give, but on a GPU the rows
 * whose chains run there are sampled in one launch with one copy back, instead of a round trip
 * per session. Every session must have logits and run the same model on the same backend and
 * device, and no two items may share a sampler (BONSAI_ERR_INVALID_STATE,
 * BONSAI_ERR_INVALID_ARGUMENT; nothing is sampled then). A session may appear more than once.
 * Every item's token is -1 until its sampler has accepted one, and items are finished in order:
 * when the call fails (a custom stage aborts, a device error), the items whose token is not -1
 * were sampled and accepted, and the samplers of the items after the failing one are untouched.
 * `flags` must be 0.
 */
BONSAI_API bonsai_status bonsai_batch_sample(bonsai_batch_sample_item *items, uint32_t n_items,
                                             uint32_t flags);

/* ------------------------------------------------------------------------------------------ */
/** @name Generation */

/**
 * Called with each generated token and its text: whole UTF-8 characters only (a character split
 * across tokens arrives with its last token, so `text` may be empty), with stop strings held back
 * until they can no longer match. `text` is exactly `len` bytes, not NUL-terminated, and valid
 * during the call only. Return false to stop (stop reason BONSAI_STOP_CANCELLED).
 */
typedef bool (*bonsai_token_fn)(int32_t token, const char *text, size_t len, float logprob,
                                void *user_data);

typedef enum bonsai_stop_reason {
    BONSAI_STOP_NONE = 0,
    BONSAI_STOP_EOG = 1,          /**< the model produced an end-of-generation token */
    BONSAI_STOP_MAX_TOKENS = 2,   /**< max_tokens reached */
    BONSAI_STOP_STRING = 3,       /**< a stop string appeared (it is not emitted) */
    BONSAI_STOP_CANCELLED = 4,    /**< the callback returned false, or bonsai_session_cancel() */
    BONSAI_STOP_CONTEXT_FULL = 5, /**< the context has no room for another token */
    BONSAI_STOP_CONSTRAINT = 6,   /**< a constraint (JSON) completed its document */
} bonsai_stop_reason;

typedef struct bonsai_generate_params {
    uint32_t struct_size;    /**< sizeof(bonsai_generate_params); set by the init function */
    uint32_t max_tokens;     /**< tokens to generate at most (default 256; 0: until the end) */
    bonsai_sampler *sampler; /**< NULL: greedy. Not freed; its history is not reset */
    const char *const *stop; /**< stop strings (copied), n_stop of them */
    uint32_t n_stop;
    bonsai_token_fn on_token; /**< optional streaming callback */
    void *user_data;
    uint32_t tokenize_flags;   /**< for a text prompt: BONSAI_TOKENIZE_* (default: ADD_BOS) */
    uint32_t detokenize_flags; /**< for the streamed text: BONSAI_DETOKENIZE_* (default 0) */
} bonsai_generate_params;

typedef struct bonsai_generate_stats {
    uint32_t struct_size;     /**< set by the caller to sizeof(bonsai_generate_stats) */
    uint32_t n_prompt;        /**< prompt tokens */
    uint32_t n_prompt_reused; /**< of which were already in the cache (common prefix) */
    uint32_t n_generated;     /**< tokens generated (the end-of-generation token included) */
    double prompt_ms;         /**< time evaluating the prompt tokens not reused */
    double generate_ms;       /**< time generating, sampling included */
    double sample_ms;         /**< of which in the sampler (constraints included) */
    double prompt_tps;        /**< evaluated prompt tokens per second */
    double generate_tps;      /**< generated tokens per second */
    bonsai_stop_reason stop_reason;
} bonsai_generate_stats;

BONSAI_API void bonsai_generate_params_init(bonsai_generate_params *params);

/**
 * Generate a continuation of `prompt` (tokens). The prompt is compared with the tokens already in
 * the session's cache and only what follows their common prefix is evaluated, so a growing
 * conversation costs only its new tokens. Generated tokens are evaluated into the cache as they
 * go, except the last one, which no later step needs: the cache holds the prompt and the output
 * but its last token, and a follow-up prompt that repeats prompt + output (as bonsai_chat does)
 * evaluates that token with its new ones. Prompt tokens are not added to the sampler's history
 * (so a constraint only sees generated text); accept them first for penalties over them. Stops at
 * an end-of-generation token, max_tokens, a stop string, a completed constraint, cancellation, or a
 * full context (BONSAI_STOP_CONTEXT_FULL; what was generated is kept). BONSAI_ERR_CONTEXT_FULL
 * when the prompt itself does not fit (the cache is then left as it was). `stats` may be NULL.
 */
BONSAI_API bonsai_status bonsai_generate_tokens(bonsai_session *session, const int32_t *prompt,
                                                uint32_t n_prompt,
                                                const bonsai_generate_params *params,
                                                bonsai_generate_stats *stats);
/** The same with a text prompt, tokenized with params->tokenize_flags. */
BONSAI_API bonsai_status bonsai_generate(bonsai_session *session, const char *prompt,
                                         const bonsai_generate_params *params,
                                         bonsai_generate_stats *stats);

/* ------------------------------------------------------------------------------------------ */
/** @name Chat
 * Qwen3 ChatML: "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message, then the generation prompt
 * "<|im_start|>assistant\n" (followed by "<think>\n\n</think>\n\n" when thinking is off), exactly
 * as the model's chat template renders conversations without tools. */

typedef struct bonsai_chat_message {
    const char *role;    /**< "system", "user", "assistant" or "tool" */
    const char *content; /**< UTF-8, NUL-terminated */
} bonsai_chat_message;

#define BONSAI_CHAT_ADD_GENERATION_PROMPT 1u /**< end with the assistant's turn opening */
#define BONSAI_CHAT_ENABLE_THINKING       2u /**< let the model think (<think>...</think>) */

/**
 * Render a conversation to text. Assistant contents containing "</think>" keep their reasoning
 * only after the last user message, as the template does. Buffer rules as bonsai_detokenize().
 */
BONSAI_API bonsai_status bonsai_chat_render(const bonsai_chat_message *messages, size_t n,
                                            uint32_t flags, char *buf, size_t buf_size,
                                            size_t *len);

/**
 * Render a conversation (as bonsai_chat_render()) and tokenize it for the model, ready for
 * bonsai_generate_tokens(): the template's markup becomes its control tokens, while message
 * contents are always text, so a message containing "<|im_end|>" cannot forge a turn (tokenizing
 * the rendered text with BONSAI_TOKENIZE_PARSE_SPECIAL would let it). BOS is added when the
 * model's tokenizer adds one. Buffer rules as bonsai_tokenize().
 */
BONSAI_API bonsai_status bonsai_chat_tokenize(const bonsai_model *model,
                                              const bonsai_chat_message *messages, size_t n,
                                              uint32_t flags, int32_t *tokens, uint32_t n_max,
                                              uint32_t *n_tokens);

/**
 * Split an assistant's output into reasoning (inside <think>...</think>) and answer, both trimmed
 * of surrounding whitespace. Pointers point into `text`; reasoning is empty when there is none.
 */
BONSAI_API void bonsai_chat_parse(const char *text, size_t len, const char **reasoning,
                                  size_t *reasoning_len, const char **content, size_t *content_len);

/**
 * A conversation kept in a session's KV cache. Each turn evaluates only its new tokens: the user
 * message and the assistant's opening; the reply's tokens are already in the cache. The chat uses
 * the session exclusively until it is freed (do not evaluate on the session meanwhile).
 */
typedef struct bonsai_chat bonsai_chat;

BONSAI_API bonsai_status bonsai_chat_create(bonsai_session *session, const char *system_prompt,
                                            uint32_t flags, bonsai_chat **out);
BONSAI_API void bonsai_chat_free(bonsai_chat *chat);
/** Forget the conversation (and set a new system prompt; NULL for none). */
BONSAI_API bonsai_status bonsai_chat_reset(bonsai_chat *chat, const char *system_prompt);
/**
 * Add a user message and generate the assistant's reply, streamed through params->on_token.
 * params->tokenize_flags is ignored. The reply (reasoning and answer) is then available from
 * bonsai_chat_last_reply() until the next call.
 */
BONSAI_API bonsai_status bonsai_chat_send(bonsai_chat *chat, const char *user_message,
                                          const bonsai_generate_params *params,
                                          bonsai_generate_stats *stats);
/** Text of the last reply, as generated (parse it with bonsai_chat_parse()). */
BONSAI_API const char *bonsai_chat_last_reply(const bonsai_chat *chat, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* BONSAI_BONSAI_H */
