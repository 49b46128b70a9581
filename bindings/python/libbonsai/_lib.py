"""Low-level ctypes declarations of the libbonsai C API (include/bonsai/bonsai.h).

This module loads the shared library and declares, for every function the library exports
(lib/bonsai.map), its argument and result types; it mirrors every public struct as a
ctypes.Structure and every callback typedef as a ctypes.CFUNCTYPE. Nothing here is Pythonic:
the classes in the package (Model, Session, Chat...) are built on it. Use it directly only for
what those classes do not offer, and follow the C rules (statuses, struct_size, lifetimes).

Library lookup, first match wins:

1. the environment variable LIBBONSAI_LIBRARY: the path of the shared library;
2. the package's own directory (a libbonsai.so* copied next to this file);
3. the system loader: libbonsai.so.1 (the soname of ABI 1), then ctypes.util.find_library;
4. the library directory recorded when Meson installed the package, if any.

At import the ABI version of the loaded library must equal ABI_VERSION; otherwise ImportError.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char, c_char_p, c_double, c_float,
                    c_int, c_int8, c_int16, c_int32, c_int64, c_size_t, c_uint8, c_uint16,
                    c_uint32, c_uint64, c_void_p)

#: The ABI version this binding was written for (the soname suffix of libbonsai).
ABI_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Constants (values pinned by the header)

BONSAI_OK = 0
BONSAI_ERR_INVALID_ARGUMENT = -1
BONSAI_ERR_NO_MEMORY = -2
BONSAI_ERR_IO = -3
BONSAI_ERR_BAD_MAGIC = -4
BONSAI_ERR_UNSUPPORTED_VERSION = -5
BONSAI_ERR_TRUNCATED = -6
BONSAI_ERR_CORRUPT = -7
BONSAI_ERR_UNSUPPORTED_TYPE = -8
BONSAI_ERR_DUPLICATE = -9
BONSAI_ERR_NOT_FOUND = -10
BONSAI_ERR_TYPE_MISMATCH = -11
BONSAI_ERR_OUT_OF_RANGE = -12
BONSAI_ERR_ABORTED = -13
BONSAI_ERR_UNSUPPORTED = -14
BONSAI_ERR_CONTEXT_FULL = -15
BONSAI_ERR_BACKEND = -16
BONSAI_ERR_INVALID_STATE = -17

BONSAI_LOG_ERROR = 0
BONSAI_LOG_WARN = 1
BONSAI_LOG_INFO = 2
BONSAI_LOG_DEBUG = 3

BONSAI_VALUE_U8 = 0
BONSAI_VALUE_I8 = 1
BONSAI_VALUE_U16 = 2
BONSAI_VALUE_I16 = 3
BONSAI_VALUE_U32 = 4
BONSAI_VALUE_I32 = 5
BONSAI_VALUE_F32 = 6
BONSAI_VALUE_BOOL = 7
BONSAI_VALUE_STRING = 8
BONSAI_VALUE_ARRAY = 9
BONSAI_VALUE_U64 = 10
BONSAI_VALUE_I64 = 11
BONSAI_VALUE_F64 = 12

BONSAI_TENSOR_F32 = 0
BONSAI_TENSOR_F16 = 1
BONSAI_TENSOR_Q8_0 = 8
BONSAI_TENSOR_BF16 = 30
BONSAI_TENSOR_Q1_0 = 41

BONSAI_EVAL_ALL_LOGITS = 1

BONSAI_TOKENIZE_ADD_BOS = 1
BONSAI_TOKENIZE_PARSE_SPECIAL = 2

BONSAI_DETOKENIZE_SPECIAL = 1
BONSAI_DETOKENIZE_CONTINUATION = 2

BONSAI_TOKEN_BOS = 0
BONSAI_TOKEN_EOS = 1
BONSAI_TOKEN_EOT = 2
BONSAI_TOKEN_PAD = 3

BONSAI_STOP_NONE = 0
BONSAI_STOP_EOG = 1
BONSAI_STOP_MAX_TOKENS = 2
BONSAI_STOP_STRING = 3
BONSAI_STOP_CANCELLED = 4
BONSAI_STOP_CONTEXT_FULL = 5
BONSAI_STOP_CONSTRAINT = 6

BONSAI_CHAT_ADD_GENERATION_PROMPT = 1
BONSAI_CHAT_ENABLE_THINKING = 2

# C enums are passed and returned as int.
c_enum = c_int

# ---------------------------------------------------------------------------------------------
# Opaque handles (only ever used through pointers)


class bonsai_model(Structure):
    """Opaque: a loaded model."""


class bonsai_value(Structure):
    """Opaque: a metadata value owned by its model."""


class bonsai_session(Structure):
    """Opaque: a session (KV cache, backend, logits)."""


class bonsai_detokenizer(Structure):
    """Opaque: a streaming detokenizer."""


class bonsai_sampler(Structure):
    """Opaque: a sampler chain."""


class bonsai_chat(Structure):
    """Opaque: a conversation kept in a session's cache."""


# ---------------------------------------------------------------------------------------------
# Callback types

#: bool (*)(float progress, void *user_data)
bonsai_progress_fn = CFUNCTYPE(c_bool, c_float, c_void_p)
#: void (*)(bonsai_log_level level, const char *message, void *user_data)
bonsai_log_fn = CFUNCTYPE(None, c_enum, c_char_p, c_void_p)
#: bool (*)(int32_t token, const char *text, size_t len, float logprob, void *user_data);
#: `text` is not NUL-terminated at `len`, hence POINTER(c_char) rather than c_char_p.
bonsai_token_fn = CFUNCTYPE(c_bool, c_int32, POINTER(c_char), c_size_t, c_float, c_void_p)

# ---------------------------------------------------------------------------------------------
# Structs (field for field as in the header)


class bonsai_model_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("use_mmap", c_bool),
        ("progress", bonsai_progress_fn),
        ("progress_user_data", c_void_p),
        ("max_memory", c_uint64),
    ]


class bonsai_model_hparams(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_vocab", c_uint32),
        ("n_ctx_train", c_uint32),
        ("n_embd", c_uint32),
        ("n_layer", c_uint32),
        ("n_ff", c_uint32),
        ("n_head", c_uint32),
        ("n_head_kv", c_uint32),
        ("head_dim_k", c_uint32),
        ("head_dim_v", c_uint32),
        ("n_rot", c_uint32),
        ("rms_eps", c_float),
        ("rope_freq_base", c_float),
        ("rope_scaling_factor", c_float),
        ("rope_scaling_orig_ctx", c_uint32),
        ("rope_scaling_yarn", c_uint32),
    ]


class bonsai_tensor_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("name", c_char_p),
        ("type", c_uint32),
        ("n_dims", c_uint32),
        ("dims", c_uint64 * 4),
        ("n_elements", c_uint64),
        ("n_bytes", c_uint64),
        ("file_offset", c_uint64),
    ]


class bonsai_backend_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("name", c_char_p),
        ("usable", c_bool),
        ("score", c_int32),
        ("reason", c_char_p),
        ("path", c_char_p),
    ]


class bonsai_session_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_ctx", c_uint32),
        ("n_threads", c_int32),
        ("backend", c_char_p),
        ("kv_type", c_uint32),
        ("max_memory", c_uint64),
    ]


class bonsai_batch_item(Structure):
    _fields_ = [
        ("session", POINTER(bonsai_session)),
        ("token", c_int32),
    ]


class bonsai_batch_sample_item(Structure):
    _fields_ = [
        ("session", POINTER(bonsai_session)),
        ("sampler", POINTER(bonsai_sampler)),
        ("token", c_int32),
        ("logprob", c_float),
    ]


class bonsai_token_data(Structure):
    _fields_ = [
        ("id", c_int32),
        ("logit", c_float),
        ("p", c_float),
    ]


class bonsai_candidates(Structure):
    _fields_ = [
        ("data", POINTER(bonsai_token_data)),
        ("size", c_size_t),
        ("sorted", c_bool),
        ("selected", c_int32),
    ]


#: bool (*)(bonsai_candidates *candidates, const int32_t *history, size_t n_history, void *ud)
bonsai_sampler_fn = CFUNCTYPE(c_bool, POINTER(bonsai_candidates), POINTER(c_int32), c_size_t,
                              c_void_p)


class bonsai_logit_bias(Structure):
    _fields_ = [
        ("token", c_int32),
        ("bias", c_float),
    ]


class bonsai_sampler_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("seed", c_uint64),
        ("temperature", c_float),
        ("top_k", c_int32),
        ("top_p", c_float),
        ("min_p", c_float),
        ("penalty_last_n", c_int32),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
    ]


class bonsai_generate_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("max_tokens", c_uint32),
        ("sampler", POINTER(bonsai_sampler)),
        ("stop", POINTER(c_char_p)),
        ("n_stop", c_uint32),
        ("on_token", bonsai_token_fn),
        ("user_data", c_void_p),
        ("tokenize_flags", c_uint32),
        ("detokenize_flags", c_uint32),
    ]


class bonsai_generate_stats(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_prompt", c_uint32),
        ("n_prompt_reused", c_uint32),
        ("n_generated", c_uint32),
        ("prompt_ms", c_double),
        ("generate_ms", c_double),
        ("sample_ms", c_double),
        ("prompt_tps", c_double),
        ("generate_tps", c_double),
        ("stop_reason", c_enum),
    ]


class bonsai_chat_message(Structure):
    _fields_ = [
        ("role", c_char_p),
        ("content", c_char_p),
    ]


#: Every public struct of the header, by its C name.
STRUCTS = {cls.__name__: cls for cls in (
    bonsai_model_params, bonsai_model_hparams, bonsai_tensor_info, bonsai_backend_info,
    bonsai_session_params, bonsai_batch_item, bonsai_batch_sample_item,
    bonsai_token_data, bonsai_candidates, bonsai_logit_bias, bonsai_sampler_params,
    bonsai_generate_params, bonsai_generate_stats, bonsai_chat_message)}

#: Every callback typedef of the header, by its C name.
CALLBACKS = {
    "bonsai_progress_fn": bonsai_progress_fn,
    "bonsai_log_fn": bonsai_log_fn,
    "bonsai_token_fn": bonsai_token_fn,
    "bonsai_sampler_fn": bonsai_sampler_fn,
}

# ---------------------------------------------------------------------------------------------
# Function signatures: name -> (restype, argtypes)

_model_p = POINTER(bonsai_model)
_value_p = POINTER(bonsai_value)
_session_p = POINTER(bonsai_session)
_detok_p = POINTER(bonsai_detokenizer)
_sampler_p = POINTER(bonsai_sampler)
_chat_p = POINTER(bonsai_chat)
_str_p = POINTER(c_char)  # a char * that need not be NUL-terminated (or a buffer)
_status = c_enum

FUNCTIONS = {
    # versions
    "bonsai_version_string": (c_char_p, []),
    "bonsai_version_number": (c_uint32, []),
    "bonsai_abi_version": (c_uint32, []),
    # status and errors
    "bonsai_status_string": (c_char_p, [_status]),
    "bonsai_last_error": (c_char_p, []),
    # logging
    "bonsai_log_set": (None, [bonsai_log_fn, c_enum, c_void_p]),
    # types
    "bonsai_value_type_name": (c_char_p, [c_enum]),
    "bonsai_tensor_type_name": (c_char_p, [c_uint32]),
    # models
    "bonsai_model_params_init": (None, [POINTER(bonsai_model_params)]),
    "bonsai_model_load": (_status, [c_char_p, POINTER(bonsai_model_params), POINTER(_model_p)]),
    "bonsai_model_free": (None, [_model_p]),
    "bonsai_model_architecture": (c_char_p, [_model_p]),
    "bonsai_model_name": (c_char_p, [_model_p]),
    "bonsai_model_file_size": (c_uint64, [_model_p]),
    "bonsai_model_gguf_version": (c_uint32, [_model_p]),
    "bonsai_model_n_params": (c_uint64, [_model_p]),
    "bonsai_model_n_vocab": (c_uint32, [_model_p]),
    "bonsai_model_hparams_get": (_status, [_model_p, POINTER(bonsai_model_hparams)]),
    # metadata
    "bonsai_model_meta_count": (c_uint64, [_model_p]),
    "bonsai_model_meta_at": (_status, [_model_p, c_uint64, POINTER(c_char_p),
                                       POINTER(_value_p)]),
    "bonsai_model_meta_get": (_status, [_model_p, c_char_p, POINTER(_value_p)]),
    "bonsai_value_type_of": (c_enum, [_value_p]),
    "bonsai_value_get_u8": (_status, [_value_p, POINTER(c_uint8)]),
    "bonsai_value_get_i8": (_status, [_value_p, POINTER(c_int8)]),
    "bonsai_value_get_u16": (_status, [_value_p, POINTER(c_uint16)]),
    "bonsai_value_get_i16": (_status, [_value_p, POINTER(c_int16)]),
    "bonsai_value_get_u32": (_status, [_value_p, POINTER(c_uint32)]),
    "bonsai_value_get_i32": (_status, [_value_p, POINTER(c_int32)]),
    "bonsai_value_get_u64": (_status, [_value_p, POINTER(c_uint64)]),
    "bonsai_value_get_i64": (_status, [_value_p, POINTER(c_int64)]),
    "bonsai_value_get_f32": (_status, [_value_p, POINTER(c_float)]),
    "bonsai_value_get_f64": (_status, [_value_p, POINTER(c_double)]),
    "bonsai_value_get_bool": (_status, [_value_p, POINTER(c_bool)]),
    "bonsai_value_get_string": (_status, [_value_p, POINTER(_str_p), POINTER(c_uint64)]),
    "bonsai_value_to_i64": (_status, [_value_p, POINTER(c_int64)]),
    "bonsai_value_to_u64": (_status, [_value_p, POINTER(c_uint64)]),
    "bonsai_value_to_f64": (_status, [_value_p, POINTER(c_double)]),
    "bonsai_value_array_info": (_status, [_value_p, POINTER(c_enum), POINTER(c_uint64)]),
    "bonsai_value_array_copy": (_status, [_value_p, c_enum, c_uint64, c_uint64, c_void_p,
                                          c_size_t]),
    "bonsai_value_array_string": (_status, [_value_p, c_uint64, POINTER(_str_p),
                                            POINTER(c_uint64)]),
    "bonsai_value_array_array": (_status, [_value_p, c_uint64, POINTER(_value_p)]),
    # tensors
    "bonsai_model_tensor_count": (c_uint64, [_model_p]),
    "bonsai_model_tensor_at": (_status, [_model_p, c_uint64, POINTER(bonsai_tensor_info)]),
    "bonsai_model_tensor_find": (_status, [_model_p, c_char_p, POINTER(c_uint64)]),
    # backends
    "bonsai_backend_count": (c_uint32, []),
    "bonsai_backend_get": (_status, [c_uint32, POINTER(bonsai_backend_info)]),
    # sessions
    "bonsai_session_params_init": (None, [POINTER(bonsai_session_params)]),
    "bonsai_session_create": (_status, [_model_p, POINTER(bonsai_session_params),
                                        POINTER(_session_p)]),
    "bonsai_session_free": (None, [_session_p]),
    "bonsai_session_eval": (_status, [_session_p, POINTER(c_int32), c_uint32, c_uint32]),
    "bonsai_session_logits": (POINTER(c_float), [_session_p, POINTER(c_uint32)]),
    "bonsai_session_n_past": (c_uint32, [_session_p]),
    "bonsai_session_n_ctx": (c_uint32, [_session_p]),
    "bonsai_session_truncate": (_status, [_session_p, c_uint32]),
    "bonsai_session_clear": (None, [_session_p]),
    "bonsai_embed": (_status, [_session_p, POINTER(c_int32), c_uint32, POINTER(c_float),
                               c_uint32]),
    "bonsai_session_backend": (c_char_p, [_session_p]),
    "bonsai_session_tokens": (POINTER(c_int32), [_session_p, POINTER(c_uint32)]),
    "bonsai_session_cancel": (None, [_session_p]),
    "bonsai_batch_eval": (_status, [POINTER(bonsai_batch_item), c_uint32, c_uint32]),
    "bonsai_batch_sample": (_status, [POINTER(bonsai_batch_sample_item), c_uint32, c_uint32]),
    # tokenizer
    "bonsai_tokenize": (_status, [_model_p, c_char_p, c_size_t, c_uint32, POINTER(c_int32),
                                  c_uint32, POINTER(c_uint32)]),
    "bonsai_token_to_piece": (_status, [_model_p, c_int32, c_uint32, _str_p, c_size_t,
                                        POINTER(c_size_t)]),
    "bonsai_detokenize": (_status, [_model_p, POINTER(c_int32), c_uint32, c_uint32, _str_p,
                                    c_size_t, POINTER(c_size_t)]),
    "bonsai_model_token": (c_int32, [_model_p, c_enum]),
    "bonsai_token_is_eog": (c_bool, [_model_p, c_int32]),
    "bonsai_token_is_control": (c_bool, [_model_p, c_int32]),
    "bonsai_detokenizer_create": (_status, [_model_p, c_uint32, POINTER(_detok_p)]),
    "bonsai_detokenizer_push": (_status, [_detok_p, c_int32, POINTER(_str_p),
                                          POINTER(c_size_t)]),
    "bonsai_detokenizer_flush": (None, [_detok_p, POINTER(_str_p), POINTER(c_size_t)]),
    "bonsai_detokenizer_free": (None, [_detok_p]),
    # sampling
    "bonsai_sampler_create": (_status, [c_uint64, POINTER(_sampler_p)]),
    "bonsai_sampler_free": (None, [_sampler_p]),
    "bonsai_sampler_add_greedy": (_status, [_sampler_p]),
    "bonsai_sampler_add_dist": (_status, [_sampler_p]),
    "bonsai_sampler_add_temperature": (_status, [_sampler_p, c_float]),
    "bonsai_sampler_add_top_k": (_status, [_sampler_p, c_int32]),
    "bonsai_sampler_add_top_p": (_status, [_sampler_p, c_float, c_size_t]),
    "bonsai_sampler_add_min_p": (_status, [_sampler_p, c_float, c_size_t]),
    "bonsai_sampler_add_penalties": (_status, [_sampler_p, c_int32, c_float, c_float, c_float]),
    "bonsai_sampler_add_logit_bias": (_status, [_sampler_p, POINTER(bonsai_logit_bias),
                                                c_size_t]),
    "bonsai_sampler_add_custom": (_status, [_sampler_p, bonsai_sampler_fn, c_void_p]),
    "bonsai_sampler_add_json": (_status, [_sampler_p, _model_p, c_char_p, c_size_t]),
    "bonsai_sampler_params_init": (None, [POINTER(bonsai_sampler_params)]),
    "bonsai_sampler_create_default": (_status, [POINTER(bonsai_sampler_params),
                                                POINTER(_sampler_p)]),
    "bonsai_sampler_sample": (_status, [_sampler_p, POINTER(c_float), c_uint32,
                                        POINTER(c_int32), POINTER(c_float)]),
    "bonsai_session_sample": (_status, [_session_p, _sampler_p, POINTER(c_int32),
                                        POINTER(c_float)]),
    "bonsai_sampler_accept": (_status, [_sampler_p, c_int32]),
    "bonsai_sampler_reset": (None, [_sampler_p]),
    "bonsai_sampler_done": (c_bool, [_sampler_p]),
    # generation
    "bonsai_generate_params_init": (None, [POINTER(bonsai_generate_params)]),
    "bonsai_generate_tokens": (_status, [_session_p, POINTER(c_int32), c_uint32,
                                         POINTER(bonsai_generate_params),
                                         POINTER(bonsai_generate_stats)]),
    "bonsai_generate": (_status, [_session_p, c_char_p, POINTER(bonsai_generate_params),
                                  POINTER(bonsai_generate_stats)]),
    # chat
    "bonsai_chat_render": (_status, [POINTER(bonsai_chat_message), c_size_t, c_uint32, _str_p,
                                     c_size_t, POINTER(c_size_t)]),
    "bonsai_chat_tokenize": (_status, [_model_p, POINTER(bonsai_chat_message), c_size_t,
                                       c_uint32, POINTER(c_int32), c_uint32, POINTER(c_uint32)]),
    "bonsai_chat_parse": (None, [_str_p, c_size_t, POINTER(_str_p), POINTER(c_size_t),
                                 POINTER(_str_p), POINTER(c_size_t)]),
    "bonsai_chat_create": (_status, [_session_p, c_char_p, c_uint32, POINTER(_chat_p)]),
    "bonsai_chat_free": (None, [_chat_p]),
    "bonsai_chat_reset": (_status, [_chat_p, c_char_p]),
    "bonsai_chat_send": (_status, [_chat_p, c_char_p, POINTER(bonsai_generate_params),
                                   POINTER(bonsai_generate_stats)]),
    "bonsai_chat_last_reply": (_str_p, [_chat_p, POINTER(c_size_t)]),
}

# ---------------------------------------------------------------------------------------------
# Loading


def _shared_names():
    if sys.platform == "darwin":
        return ["libbonsai.%d.dylib" % ABI_VERSION, "libbonsai.dylib"]
    if sys.platform == "win32":
        return ["bonsai-%d.dll" % ABI_VERSION, "bonsai.dll", "libbonsai.dll"]
    return ["libbonsai.so.%d" % ABI_VERSION, "libbonsai.so"]


def _candidates():
    """(description, path or name) in lookup order."""
    env = os.environ.get("LIBBONSAI_LIBRARY")
    if env:
        # an explicit choice: nothing else is tried, so a wrong path is noticed
        yield ("LIBBONSAI_LIBRARY", env)
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _shared_names():
        path = os.path.join(here, name)
        if os.path.exists(path):
            yield ("package directory", path)
    for name in _shared_names()[:1]:
        yield ("system loader", name)
    found = ctypes.util.find_library("bonsai")
    if found:
        yield ("ctypes.util.find_library", found)
    try:
        from . import _build_config  # written by `meson install`
    except ImportError:
        return
    for name in _shared_names():
        yield ("install libdir", os.path.join(_build_config.LIBDIR, name))


def _load():
    tried = []
    for how, name in _candidates():
        try:
            return ctypes.CDLL(name), name
        except OSError as e:
            tried.append("%s (%s): %s" % (name, how, e))
    raise ImportError(
        "libbonsai: cannot load the shared library; tried:\n  " + "\n  ".join(tried) +
        "\nSet LIBBONSAI_LIBRARY to the path of libbonsai.so.%d, or install libbonsai where the "
        "system loader finds it." % ABI_VERSION)


class _Missing:
    """Stands for a function the loaded library does not export (an older library of the same
    ABI, which only ever gains functions): calling it raises NotImplementedError."""

    def __init__(self, name):
        self.__name__ = name
        self.restype = None
        self.argtypes = None

    def __call__(self, *args):
        raise NotImplementedError("libbonsai: %s is not in the loaded library %s (it is older "
                                  "than this binding)" % (self.__name__, path))


#: Names of the functions of FUNCTIONS that the loaded library lacks.
MISSING = []


def _declare(dll):
    for name, (restype, argtypes) in FUNCTIONS.items():
        try:
            fn = getattr(dll, name)
        except AttributeError:
            MISSING.append(name)
            setattr(dll, name, _Missing(name))
            continue
        fn.restype = restype
        fn.argtypes = argtypes


lib, path = _load()
_declare(lib)

if "bonsai_abi_version" in MISSING:
    raise ImportError("libbonsai: %s does not export bonsai_abi_version: not libbonsai?" % path)
_abi = lib.bonsai_abi_version()
if _abi != ABI_VERSION:
    raise ImportError(
        "libbonsai: %s has ABI version %d but this binding was written for ABI version %d; "
        "install a matching libbonsai (or a matching binding)" % (path, _abi, ABI_VERSION))
del _abi

# ---------------------------------------------------------------------------------------------
# Small helpers shared by the package


def set_field(params, field: str, value) -> None:
    """Set a field of an input parameter struct filled by its *_init() function. The init
    function wrote the loaded library's struct_size: a field beyond it is unknown to that (older)
    library, so setting it to anything but its default raises NotImplementedError."""
    descr = getattr(type(params), field)
    if value and params.struct_size < descr.offset + descr.size:
        raise NotImplementedError("libbonsai: %s.%s needs a newer library than %s" %
                                  (type(params).__name__, field, path))
    setattr(params, field, value)


def last_error() -> str:
    """bonsai_last_error() of the calling thread, decoded."""
    return (lib.bonsai_last_error() or b"").decode("utf-8", "replace")


def status_string(status: int) -> str:
    """bonsai_status_string(status), decoded."""
    return lib.bonsai_status_string(status).decode("utf-8", "replace")


def string_at(ptr, n) -> bytes:
    """n bytes at a char pointer (b"" for n == 0, whatever the pointer)."""
    return ctypes.string_at(ptr, n) if n else b""
