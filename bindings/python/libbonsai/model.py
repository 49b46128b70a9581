"""Models: loading, metadata, tensors, the tokenizer, and shortcuts to sessions."""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _lib
from ._handle import NativeHandle
from .errors import BonsaiError, check, make_error

__all__ = ["Model", "Metadata", "TensorInfo", "HParams", "Detokenizer", "tensor_type_name",
           "value_type_name"]

_VALUE_CTYPES = {
    _lib.BONSAI_VALUE_U8: (ctypes.c_uint8, "bonsai_value_get_u8"),
    _lib.BONSAI_VALUE_I8: (ctypes.c_int8, "bonsai_value_get_i8"),
    _lib.BONSAI_VALUE_U16: (ctypes.c_uint16, "bonsai_value_get_u16"),
    _lib.BONSAI_VALUE_I16: (ctypes.c_int16, "bonsai_value_get_i16"),
    _lib.BONSAI_VALUE_U32: (ctypes.c_uint32, "bonsai_value_get_u32"),
    _lib.BONSAI_VALUE_I32: (ctypes.c_int32, "bonsai_value_get_i32"),
    _lib.BONSAI_VALUE_U64: (ctypes.c_uint64, "bonsai_value_get_u64"),
    _lib.BONSAI_VALUE_I64: (ctypes.c_int64, "bonsai_value_get_i64"),
    _lib.BONSAI_VALUE_F32: (ctypes.c_float, "bonsai_value_get_f32"),
    _lib.BONSAI_VALUE_F64: (ctypes.c_double, "bonsai_value_get_f64"),
    _lib.BONSAI_VALUE_BOOL: (ctypes.c_bool, "bonsai_value_get_bool"),
}

_SPECIAL = {"bos": _lib.BONSAI_TOKEN_BOS, "eos": _lib.BONSAI_TOKEN_EOS,
            "eot": _lib.BONSAI_TOKEN_EOT, "pad": _lib.BONSAI_TOKEN_PAD}


def tensor_type_name(type_id: int) -> Optional[str]:
    """Name of a tensor type ("F32", "Q1_0"...), None for a type the library does not know."""
    name = _lib.lib.bonsai_tensor_type_name(type_id)
    return name.decode() if name is not None else None


def value_type_name(type_id: int) -> str:
    """Name of a metadata value type ("u32", "string", "array"...; "?" for an unknown number)."""
    return _lib.lib.bonsai_value_type_name(type_id).decode()


def _text_bytes(text: Union[str, bytes]) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError("text must be str or bytes, not %s" % type(text).__name__)


# ---------------------------------------------------------------------------------------------
# The tokenizer, on a raw model pointer (sessions keep using it after Model.close(): the C model
# lives as long as its sessions).


def _grow_tokens(call, n_max: int) -> List[int]:
    """Run call(buf, n_max, byref(count)), a C function filling up to n_max token ids; when the
    buffer was too small (OUT_OF_RANGE with the count needed), once more with a large enough one."""
    for _ in range(2):
        buf = (ctypes.c_int32 * n_max)()
        count = ctypes.c_uint32(0)
        st = call(buf, n_max, ctypes.byref(count))
        if st == _lib.BONSAI_OK:
            return buf[:count.value]
        if st != _lib.BONSAI_ERR_OUT_OF_RANGE or count.value <= n_max:
            raise make_error(st)
        n_max = count.value
    raise make_error(st)


def _grow_bytes(call, size: int) -> bytes:
    """Run call(buf, size, byref(length)), a C function writing a NUL-terminated text of length
    bytes; when the buffer was too small (OUT_OF_RANGE with the length), once more with one that
    fits."""
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        length = ctypes.c_size_t(0)
        st = call(buf, size, ctypes.byref(length))
        if st == _lib.BONSAI_OK:
            return buf.raw[:length.value]
        if st != _lib.BONSAI_ERR_OUT_OF_RANGE or length.value < size:
            raise make_error(st)
        size = length.value + 1
    raise make_error(st)


def _tokenize(ptr, text, add_bos=True, special=False) -> List[int]:
    data = _text_bytes(text)
    flags = (_lib.BONSAI_TOKENIZE_ADD_BOS if add_bos else 0) | \
        (_lib.BONSAI_TOKENIZE_PARSE_SPECIAL if special else 0)
    return _grow_tokens(lambda buf, n_max, n: _lib.lib.bonsai_tokenize(ptr, data, len(data), flags,
                                                                       buf, n_max, n),
                        len(data) + 8)


def _detok_flags(special, continuation=False):
    return (_lib.BONSAI_DETOKENIZE_SPECIAL if special else 0) | \
        (_lib.BONSAI_DETOKENIZE_CONTINUATION if continuation else 0)


def _int32_array(tokens: Sequence[int]):
    tokens = list(tokens)
    return (ctypes.c_int32 * max(len(tokens), 1))(*tokens), len(tokens)


def _detokenize_bytes(ptr, tokens, special=False, continuation=False) -> bytes:
    arr, n = _int32_array(tokens)
    flags = _detok_flags(special, continuation)
    return _grow_bytes(lambda buf, size, length: _lib.lib.bonsai_detokenize(ptr, arr, n, flags, buf,
                                                                           size, length),
                       16 * n + 64)


def _token_to_piece(ptr, token, special=False) -> bytes:
    flags = _detok_flags(special)
    return _grow_bytes(lambda buf, size, length: _lib.lib.bonsai_token_to_piece(
        ptr, int(token), flags, buf, size, length), 64)


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: name, type, dimensions (fastest first), sizes and offset."""

    name: str
    type: int  #: a BONSAI_TENSOR_* number
    type_name: Optional[str]  #: "F32", "Q1_0"...
    dims: Tuple[int, ...]  #: n_dims entries, dims[0] varies fastest
    n_elements: int
    n_bytes: int
    file_offset: int  #: absolute offset of the data in the file


@dataclass(frozen=True)
class HParams:
    """Hyper-parameters read from the `<arch>.*` metadata (bonsai_model_hparams); a field whose
    key is absent is 0."""

    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_rot: int
    rms_eps: float
    rope_freq_base: float
    rope_scaling_factor: float
    rope_scaling_orig_ctx: int
    rope_scaling_yarn: int

    def as_dict(self) -> dict:
        """The fields as a dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Metadata(Mapping):
    """The model's metadata as a read-only mapping, keys in file order.

    Values come back as Python values: int, float, bool, str, and lists for arrays (nested lists
    for arrays of arrays). Strings are decoded as UTF-8 (invalid bytes replaced).
    ``type_of(key)`` gives the GGUF type name ("u32", "string", "array"...).
    """

    def __init__(self, model: "Model"):
        self._model = model
        self._keys = None
        self._cache = {}

    def _ptr(self):
        return self._model._handle()

    def keys_list(self) -> List[str]:
        """All keys, in file order."""
        if self._keys is None:
            ptr = self._ptr()
            keys = []
            for i in range(_lib.lib.bonsai_model_meta_count(ptr)):
                key = ctypes.c_char_p()
                check(_lib.lib.bonsai_model_meta_at(ptr, i, ctypes.byref(key), None))
                keys.append(key.value.decode("utf-8", "replace"))
            self._keys = keys
        return list(self._keys)

    def _value(self, key: str):
        ptr = self._ptr()
        value = ctypes.POINTER(_lib.bonsai_value)()
        st = _lib.lib.bonsai_model_meta_get(ptr, key.encode("utf-8"), ctypes.byref(value))
        if st == _lib.BONSAI_ERR_NOT_FOUND:
            raise KeyError(key)
        check(st)
        return value

    def __getitem__(self, key: str):
        if not isinstance(key, str):
            raise KeyError(key)
        if key not in self._cache:
            self._cache[key] = _freeze(_convert(self._value(key)))
        return _thaw(self._cache[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_list())

    def __len__(self) -> int:
        return int(_lib.lib.bonsai_model_meta_count(self._ptr()))

    def __contains__(self, key) -> bool:
        if not isinstance(key, str):
            return False
        ptr = self._ptr()
        value = ctypes.POINTER(_lib.bonsai_value)()
        return _lib.lib.bonsai_model_meta_get(ptr, key.encode("utf-8"),
                                              ctypes.byref(value)) == _lib.BONSAI_OK

    def type_of(self, key: str) -> str:
        """GGUF type name of a value: "u32", "string", "array"... For an array, the element type
        follows in brackets: "array[string]"."""
        value = self._value(key)
        t = _lib.lib.bonsai_value_type_of(value)
        if t != _lib.BONSAI_VALUE_ARRAY:
            return value_type_name(t)
        elem = ctypes.c_int()
        check(_lib.lib.bonsai_value_array_info(value, ctypes.byref(elem), None))
        return "array[%s]" % value_type_name(elem.value)

    def __repr__(self):
        return "<Metadata of %r: %d keys>" % (self._model.path, len(self))


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _thaw(v):
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


def _string(ptr, n) -> str:
    return _lib.string_at(ptr, n).decode("utf-8", "replace")


def _convert(value):
    """A bonsai_value as a Python value."""
    t = _lib.lib.bonsai_value_type_of(value)
    if t in _VALUE_CTYPES:
        ctype, getter = _VALUE_CTYPES[t]
        out = ctype()
        check(getattr(_lib.lib, getter)(value, ctypes.byref(out)))
        return out.value
    if t == _lib.BONSAI_VALUE_STRING:
        s = ctypes.POINTER(ctypes.c_char)()
        n = ctypes.c_uint64()
        check(_lib.lib.bonsai_value_get_string(value, ctypes.byref(s), ctypes.byref(n)))
        return _string(s, n.value)
    if t == _lib.BONSAI_VALUE_ARRAY:
        elem = ctypes.c_int()
        count = ctypes.c_uint64()
        check(_lib.lib.bonsai_value_array_info(value, ctypes.byref(elem), ctypes.byref(count)))
        n = count.value
        if elem.value in _VALUE_CTYPES:
            ctype = _VALUE_CTYPES[elem.value][0]
            buf = (ctype * max(n, 1))()
            check(_lib.lib.bonsai_value_array_copy(value, elem.value, 0, n, buf,
                                                   ctypes.sizeof(buf)))
            return buf[:n]
        if elem.value == _lib.BONSAI_VALUE_STRING:
            out = []
            s = ctypes.POINTER(ctypes.c_char)()
            length = ctypes.c_uint64()
            get = _lib.lib.bonsai_value_array_string
            for i in range(n):
                check(get(value, i, ctypes.byref(s), ctypes.byref(length)))
                out.append(_string(s, length.value))
            return out
        if elem.value == _lib.BONSAI_VALUE_ARRAY:
            out = []
            sub = ctypes.POINTER(_lib.bonsai_value)()
            for i in range(n):
                check(_lib.lib.bonsai_value_array_array(value, i, ctypes.byref(sub)))
                out.append(_convert(sub))
            return out
        raise BonsaiError(_lib.BONSAI_ERR_UNSUPPORTED,
                          "arrays of element type %d are not supported" % elem.value)
    raise BonsaiError(_lib.BONSAI_ERR_UNSUPPORTED, "value type %d is not supported" % t)


# ---------------------------------------------------------------------------------------------
# Progress


class _ProgressBar:
    """A one-line progress bar on standard error."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.last = -1

    def __call__(self, progress: float) -> bool:
        pct = int(progress * 100 + 0.5)
        if pct != self.last:
            self.last = pct
            width = 30
            done = int(width * progress + 0.5)
            self.stream.write("\r%s [%s%s] %3d%%" % (self.label, "#" * done, " " * (width - done),
                                                     pct))
            if progress >= 1:
                self.stream.write("\n")
            self.stream.flush()
        return True


def _stream_is_tty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------


class Model(NativeHandle):
    """A GGUF model loaded with libbonsai (immutable; may be shared by threads).

    Example::

        with Model("stories260K.gguf") as m:
            print(m.architecture, m.n_params, m.hparams.n_layer)
            print("".join(m.generate("Once upon a time", max_tokens=32, temperature=0)))

    Args:
        path: the GGUF file.
        use_mmap: map the file (default) rather than read it into memory.
        progress: None (default) shows a progress bar on standard error when it is a terminal;
            False shows nothing; a callable receives the progress (0 to 1) and may return
            False to abort the load (AbortedError). An exception it raises aborts the load and
            is raised again by the constructor.
        max_memory: most bytes the model may take besides the file's mapping (0: no cap);
            exceeding it is an OutOfMemoryError.

    Raises:
        BonsaiError (FileError, BadMagicError, CorruptError...) with the library's message.
    """

    _what = "model"

    def __init__(self, path: Union[str, bytes, os.PathLike], *, use_mmap: bool = True,
                 progress: Union[None, bool, Callable[[float], Optional[bool]]] = None,
                 max_memory: int = 0):
        self._ptr = None
        self._lock = threading.Lock()
        self._embed_session = None
        self.path = os.fsdecode(path)
        if progress is None:
            progress = _ProgressBar("loading %s" % os.path.basename(self.path)) \
                if _stream_is_tty(sys.stderr) else False
        params = _lib.bonsai_model_params()
        _lib.lib.bonsai_model_params_init(ctypes.byref(params))
        params.use_mmap = bool(use_mmap)
        _lib.set_field(params, "max_memory", int(max_memory))
        raised = []
        if progress:
            if not callable(progress):
                raise TypeError("progress must be None, False or a callable")

            def on_progress(value, _user_data):
                try:
                    return progress(value) is not False
                except BaseException as e:  # noqa: B902 - re-raised below, in the caller
                    raised.append(e)
                    return False

            callback = _lib.bonsai_progress_fn(on_progress)
            params.progress = callback  # `callback` stays referenced until the call returns
        out = ctypes.POINTER(_lib.bonsai_model)()
        st = _lib.lib.bonsai_model_load(os.fsencode(path), ctypes.byref(params),
                                        ctypes.byref(out))
        if st != _lib.BONSAI_OK:
            err = make_error(st)
            if raised:
                raise raised[0] from err
            raise err
        self._ptr = out
        self.metadata = Metadata(self)
        self._tensors = None

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the model (bonsai_model_free). Sessions made from it keep working: the
        library keeps the model alive until its last session is freed. Idempotent."""
        ptr, self._ptr = self._ptr, None
        session, self._embed_session = self._embed_session, None
        if session is not None:
            session.close()
        if ptr:
            _lib.lib.bonsai_model_free(ptr)

    def __repr__(self):
        if self.closed:
            return "<libbonsai.Model %r (closed)>" % self.path
        return "<libbonsai.Model %r: %s, %d parameters>" % (self.path, self.architecture,
                                                             self.n_params)

    # -- description --------------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        """`general.architecture` ("qwen3", "llama"...), "" when absent."""
        return _lib.lib.bonsai_model_architecture(self._handle()).decode("utf-8", "replace")

    @property
    def name(self) -> str:
        """`general.name`, "" when absent."""
        return _lib.lib.bonsai_model_name(self._handle()).decode("utf-8", "replace")

    @property
    def n_vocab(self) -> int:
        """Number of tokens of the vocabulary (0 when the file has none)."""
        return int(_lib.lib.bonsai_model_n_vocab(self._handle()))

    @property
    def n_params(self) -> int:
        """Total number of tensor elements in the file."""
        return int(_lib.lib.bonsai_model_n_params(self._handle()))

    @property
    def file_size(self) -> int:
        """Size of the file in bytes."""
        return int(_lib.lib.bonsai_model_file_size(self._handle()))

    @property
    def gguf_version(self) -> int:
        """GGUF version of the file (2 or 3)."""
        return int(_lib.lib.bonsai_model_gguf_version(self._handle()))

    @property
    def hparams(self) -> HParams:
        """The hyper-parameters (an HParams dataclass; ``.as_dict()`` for a dict)."""
        hp = _lib.bonsai_model_hparams()
        hp.struct_size = ctypes.sizeof(hp)
        check(_lib.lib.bonsai_model_hparams_get(self._handle(), ctypes.byref(hp)))
        return HParams(**{f.name: getattr(hp, f.name) for f in fields(HParams)})

    @property
    def n_embd(self) -> int:
        """Embedding length (the length of the vectors embed() returns)."""
        return self.hparams.n_embd

    @property
    def tensors(self) -> List[TensorInfo]:
        """Every tensor, in file order."""
        if self._tensors is None:
            ptr = self._handle()
            out = []
            for i in range(_lib.lib.bonsai_model_tensor_count(ptr)):
                out.append(self._tensor_at(ptr, i))
            self._tensors = out
        return list(self._tensors)

    @staticmethod
    def _tensor_at(ptr, index) -> TensorInfo:
        info = _lib.bonsai_tensor_info()
        info.struct_size = ctypes.sizeof(info)
        check(_lib.lib.bonsai_model_tensor_at(ptr, index, ctypes.byref(info)))
        return TensorInfo(name=info.name.decode("utf-8", "replace"), type=info.type,
                          type_name=tensor_type_name(info.type),
                          dims=tuple(info.dims[:info.n_dims]), n_elements=info.n_elements,
                          n_bytes=info.n_bytes, file_offset=info.file_offset)

    def tensor(self, name: str) -> TensorInfo:
        """The tensor named `name` (NotFoundError, also a LookupError, when absent)."""
        ptr = self._handle()
        index = ctypes.c_uint64()
        check(_lib.lib.bonsai_model_tensor_find(ptr, name.encode("utf-8"), ctypes.byref(index)))
        return self._tensor_at(ptr, index.value)

    # -- tokenizer ----------------------------------------------------------------------------

    def tokenize(self, text: Union[str, bytes], add_bos: bool = True,
                 special: bool = False) -> List[int]:
        """Token ids of `text`.

        Args:
            add_bos: prepend BOS if the model's tokenizer adds one.
            special: match control tokens written in the text ("<|im_start|>"); leave False
                for text from users.
        """
        return _tokenize(self._handle(), text, add_bos, special)

    def detokenize(self, tokens: Sequence[int], special: bool = False, *,
                   continuation: bool = False, errors: str = "replace") -> str:
        """Text of a token sequence (detokenize(tokenize(x)) == x).

        Args:
            special: render control tokens as their text ("<|im_end|>").
            continuation: the tokens continue a text: keep the leading space SentencePiece
                otherwise drops.
            errors: how to decode bytes that are not UTF-8 (see bytes.decode).
        """
        return self.detokenize_bytes(tokens, special, continuation=continuation).decode(
            "utf-8", errors)

    def detokenize_bytes(self, tokens: Sequence[int], special: bool = False, *,
                         continuation: bool = False) -> bytes:
        """As detokenize(), without decoding: the exact bytes."""
        return _detokenize_bytes(self._handle(), tokens, special, continuation)

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes token `token` stands for: bytes, since a piece may be part of a UTF-8
        character. Control tokens give b"" unless `special`."""
        return _token_to_piece(self._handle(), token, special)

    def _special(self, which: str) -> Optional[int]:
        t = _lib.lib.bonsai_model_token(self._handle(), _SPECIAL[which])
        return None if t < 0 else int(t)

    @property
    def bos(self) -> Optional[int]:
        """Id of the beginning-of-sequence token, None when the model has none."""
        return self._special("bos")

    @property
    def eos(self) -> Optional[int]:
        """Id of the end-of-sequence token, None when the model has none."""
        return self._special("eos")

    @property
    def eot(self) -> Optional[int]:
        """Id of the end-of-turn token ("<|im_end|>" in ChatML models), None when absent."""
        return self._special("eot")

    @property
    def pad(self) -> Optional[int]:
        """Id of the padding token, None when the model has none."""
        return self._special("pad")

    def is_eog(self, token: int) -> bool:
        """True for tokens that end generation (EOS, EOT and the model's other ones)."""
        return bool(_lib.lib.bonsai_token_is_eog(self._handle(), int(token)))

    def is_control(self, token: int) -> bool:
        """True for control tokens, which detokenize to nothing unless special=True."""
        return bool(_lib.lib.bonsai_token_is_control(self._handle(), int(token)))

    def tokenize_chat(self, messages, add_generation_prompt: bool = True,
                      thinking: bool = False) -> List[int]:
        """A conversation rendered with the chat template and tokenized, markup as control
        tokens and contents as text (see libbonsai.tokenize_chat)."""
        from .chat import tokenize_chat
        return tokenize_chat(self, messages, add_generation_prompt, thinking)

    def detokenizer(self, special: bool = False) -> "Detokenizer":
        """A streaming Detokenizer on this model."""
        return Detokenizer(self, special)

    # -- running ------------------------------------------------------------------------------

    def session(self, **params) -> "Session":
        """A new Session on this model; `params` as for Session (n_ctx, n_threads, backend,
        kv_type)."""
        from .session import Session
        return Session(self, **params)

    def generate(self, prompt, *, n_ctx: int = 0, n_threads: int = 0, backend: str = "auto",
                 kv_type="f16", max_memory: int = 0, **options):
        """Generate a continuation of `prompt` (text or token ids) in a session of its own.

        Returns an iterator of text pieces (a Generation); the session is released when it is
        exhausted or closed. Generation options and sampler settings (max_tokens, stop,
        temperature, top_k, top_p, min_p, penalties, seed, logit_bias, json, schema...) are
        those of Session.generate(); n_ctx, n_threads, backend, kv_type and max_memory
        configure the session.

        Example::

            text = "".join(model.generate("Once upon a time", max_tokens=40, temperature=0))
        """
        from .session import Session
        session = Session(self, n_ctx=n_ctx, n_threads=n_threads, backend=backend,
                          kv_type=kv_type, max_memory=max_memory)
        try:
            gen = session.generate(prompt, **options)
        except BaseException:
            session.close()
            raise
        gen._owned_session = session
        return gen

    def complete(self, prompt, **options) -> str:
        """The whole text of Model.generate(prompt, **options)."""
        gen = self.generate(prompt, **options)
        try:
            return "".join(gen)
        finally:
            gen.close()

    def chat(self, system: Optional[str] = None, thinking: bool = False, *, n_ctx: int = 0,
             n_threads: int = 0, backend: str = "auto", kv_type="f16",
             max_memory: int = 0) -> "Chat":
        """A Chat in a session of its own (closed with the chat); the keyword arguments
        configure the session as for Session."""
        from .chat import Chat
        from .session import Session
        session = Session(self, n_ctx=n_ctx, n_threads=n_threads, backend=backend,
                          kv_type=kv_type, max_memory=max_memory)
        try:
            chat = Chat(session, system=system, thinking=thinking)
        except BaseException:
            session.close()
            raise
        chat._owned_session = session
        return chat

    def embed(self, text: Union[str, bytes, Sequence[int]]) -> List[float]:
        """Embedding of `text` (tokenized with BOS as the model wants) or of token ids:
        mean-pooled final hidden states, unit length, n_embd floats.

        Runs in a session the model keeps for this, created on first use with a context just
        large enough (at least 512 tokens, grown for longer texts) and released by close();
        calls from several threads take turns."""
        from .session import Session
        if isinstance(text, (str, bytes, bytearray)):
            tokens = self.tokenize(text)
        else:
            tokens = [int(t) for t in text]
        with self._lock:
            session = self._embed_session
            if session is None or session.n_ctx < len(tokens):
                n_ctx = 512
                while n_ctx < len(tokens):
                    n_ctx *= 2
                if session is not None:
                    session.close()
                    self._embed_session = None
                self._embed_session = session = Session(self, n_ctx=n_ctx)
            return session.embed(tokens)


class Detokenizer(NativeHandle):
    """Streaming detokenizer: feed tokens one by one, get text that is always whole UTF-8
    characters (a character split across tokens comes with its last token).

    Example::

        d = model.detokenizer()
        text = "".join(d.push(t) for t in tokens) + d.flush()
    """

    _what = "detokenizer"

    def __init__(self, model: Model, special: bool = False):
        self._ptr = None
        self._model = model  # the C detokenizer keeps its own reference to the C model
        out = ctypes.POINTER(_lib.bonsai_detokenizer)()
        check(_lib.lib.bonsai_detokenizer_create(model._handle(), _detok_flags(special),
                                                 ctypes.byref(out)))
        self._ptr = out

    def push(self, token: int) -> str:
        """Add a token; returns the newly complete text (maybe "")."""
        text = ctypes.POINTER(ctypes.c_char)()
        n = ctypes.c_size_t()
        check(_lib.lib.bonsai_detokenizer_push(self._handle(), int(token), ctypes.byref(text),
                                               ctypes.byref(n)))
        return _lib.string_at(text, n.value).decode("utf-8", "replace")

    def flush(self) -> str:
        """Whatever is still held (incomplete sequences as U+FFFD); starts over."""
        text = ctypes.POINTER(ctypes.c_char)()
        n = ctypes.c_size_t()
        _lib.lib.bonsai_detokenizer_flush(self._handle(), ctypes.byref(text), ctypes.byref(n))
        return _lib.string_at(text, n.value).decode("utf-8", "replace")

    def close(self) -> None:
        """Release the detokenizer. Idempotent."""
        ptr, self._ptr = self._ptr, None
        if ptr:
            _lib.lib.bonsai_detokenizer_free(ptr)
