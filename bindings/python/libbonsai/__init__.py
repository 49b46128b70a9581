"""libbonsai: run PrismML Bonsai 1-bit language models (and other llama / qwen3 GGUF models).

A ctypes binding of the libbonsai C library; standard library only. Start with Model::

    import libbonsai

    with libbonsai.Model("model.gguf") as model:
        for piece in model.generate("Once upon a time", max_tokens=40, temperature=0):
            print(piece, end="", flush=True)

Classes: Model (loading, metadata, tensors, tokenizer), Session (a model running: eval,
logits, generate, embed), Generation (the streaming iterator), Chat (a conversation in a
session), Sampler (sampler chains), Detokenizer. Errors are BonsaiError and its subclasses.
The C API itself is in libbonsai._lib. See docs/PYTHON.md.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, List, Optional

from . import _lib
from .chat import Chat, parse_reply, render_chat, tokenize_chat
from .errors import (AbortedError, BackendError, BadMagicError, BonsaiError, ContextFullError,
                     CorruptError, DuplicateError, FileError, InvalidArgumentError,
                     InvalidFileError, InvalidStateError, NotFoundError, OutOfMemoryError,
                     OutOfRangeError, TruncatedError, TypeMismatchError, UnsupportedError,
                     UnsupportedTypeError, UnsupportedVersionError, check, error_class)
from .model import (Detokenizer, HParams, Metadata, Model, TensorInfo, tensor_type_name,
                    value_type_name)
from .sampler import SAMPLER_DEFAULTS, Candidates, Sampler, sampler_from_settings
from .session import (KV_TYPES, Generation, GenerationStats, Session, StopReason, batch_eval,
                      batch_sample)

__version__ = "0.1.0"

#: The ABI version this binding was written for (checked against the library at import).
ABI_VERSION = _lib.ABI_VERSION

LOG_ERROR = _lib.BONSAI_LOG_ERROR
LOG_WARN = _lib.BONSAI_LOG_WARN
LOG_INFO = _lib.BONSAI_LOG_INFO
LOG_DEBUG = _lib.BONSAI_LOG_DEBUG

__all__ = [
    "Model", "Session", "Generation", "GenerationStats", "StopReason", "Chat", "Sampler",
    "Candidates", "Detokenizer", "Metadata", "TensorInfo", "HParams", "BackendInfo",
    "batch_eval", "batch_sample", "parse_reply", "render_chat", "tokenize_chat",
    "sampler_from_settings", "tensor_type_name",
    "value_type_name",
    "library_version", "library_version_number", "abi_version", "library_path", "backends",
    "set_log", "SAMPLER_DEFAULTS", "KV_TYPES", "ABI_VERSION",
    "LOG_ERROR", "LOG_WARN", "LOG_INFO", "LOG_DEBUG",
    "BonsaiError", "InvalidArgumentError", "OutOfMemoryError", "FileError", "InvalidFileError",
    "BadMagicError", "UnsupportedVersionError", "TruncatedError", "CorruptError",
    "UnsupportedTypeError", "DuplicateError", "NotFoundError", "TypeMismatchError",
    "OutOfRangeError", "AbortedError", "UnsupportedError", "ContextFullError", "BackendError",
    "InvalidStateError", "check", "error_class",
]


def library_version() -> str:
    """Version of the loaded library, "MAJOR.MINOR.PATCH"."""
    return _lib.lib.bonsai_version_string().decode()


def library_version_number() -> int:
    """Version of the loaded library as MAJOR*10000 + MINOR*100 + PATCH."""
    return int(_lib.lib.bonsai_version_number())


def abi_version() -> int:
    """ABI version of the loaded library (equal to ABI_VERSION, or the import would fail)."""
    return int(_lib.lib.bonsai_abi_version())


def library_path() -> str:
    """Path or name the shared library was loaded from."""
    return _lib.path


@dataclass(frozen=True)
class BackendInfo:
    """A compute backend the library knows of (bonsai_backend_info)."""

    name: str  #: "cpu", "cuda"
    usable: bool  #: sessions can use it
    score: int  #: preference of "auto": the usable backend with the highest wins
    reason: str  #: why it is not usable ("" when it is)
    path: str  #: the module's file for loaded backends, "" for built-in ones


def backends() -> List[BackendInfo]:
    """The backends this library knows of, usable or not (bonsai_backend_get)."""
    import ctypes
    out = []
    for i in range(_lib.lib.bonsai_backend_count()):
        info = _lib.bonsai_backend_info()
        info.struct_size = ctypes.sizeof(info)
        check(_lib.lib.bonsai_backend_get(i, ctypes.byref(info)))

        def s(b):
            return (b or b"").decode("utf-8", "replace")

        out.append(BackendInfo(s(info.name), bool(info.usable), int(info.score), s(info.reason),
                               s(info.path)))
    return out


_log_lock = threading.Lock()
_log_callbacks = []  # every callback ever set stays alive: C may still be delivering to one


def set_log(fn: Optional[Callable[[int, str], None]], level: int = LOG_WARN) -> None:
    """Send the library's log messages to ``fn(level, message)`` (None: silent, the default),
    those of `level` (LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG) and more severe. Process-wide.

    `fn` may be called from any thread that calls into the library (generation workers
    included) and must not call libbonsai. Exceptions it raises are printed and ignored.
    """
    with _log_lock:
        if fn is None:
            _lib.lib.bonsai_log_set(_lib.bonsai_log_fn(), level, None)
            return

        def on_log(lvl, message, _user_data):
            try:
                fn(int(lvl), (message or b"").decode("utf-8", "replace"))
            except Exception:  # never let an exception cross into C
                import traceback
                traceback.print_exc()

        callback = _lib.bonsai_log_fn(on_log)
        _log_callbacks.append(callback)
        _lib.lib.bonsai_log_set(callback, level, None)
