"""Samplers: chains of stages that pick the next token from the logits."""
from __future__ import annotations

import array
import ctypes
import json as _json
import os
import threading
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from . import _lib
from ._handle import NativeHandle
from .errors import InvalidStateError, check

__all__ = ["Sampler", "Candidates", "SAMPLER_DEFAULTS", "sampler_from_settings"]


def _defaults() -> Dict[str, float]:
    p = _lib.bonsai_sampler_params()
    _lib.lib.bonsai_sampler_params_init(ctypes.byref(p))
    return {name: getattr(p, name) for name, _ in p._fields_ if name != "struct_size"}


#: The library's default sampler settings (bonsai_sampler_params_init): seed, temperature,
#: top_k, top_p, min_p, penalty_last_n, repeat_penalty, frequency_penalty, presence_penalty.
SAMPLER_DEFAULTS = _defaults()

#: The keyword arguments sampler_from_settings() understands.
SETTINGS = ("temperature", "top_k", "top_p", "min_p", "penalty_last_n", "repeat_penalty",
            "frequency_penalty", "presence_penalty", "seed", "logit_bias", "json", "schema")


class Candidates:
    """The candidates a custom stage works on (a view of bonsai_candidates, valid only during
    the call).

    ``len(c)``, ``c[i]`` (a bonsai_token_data with writable ``id``, ``logit``, ``p``),
    ``c.data`` (a ctypes array of the ``size`` entries), ``c.size`` (may be lowered, never
    raised), ``c.sorted`` (entries sorted by logit, highest first) and ``c.selected`` (index
    of the chosen entry, -1 until a stage selects one; set it to select).
    """

    __slots__ = ("_c",)

    def __init__(self, ptr):
        self._c = ptr.contents

    def __len__(self) -> int:
        return int(self._c.size)

    def __getitem__(self, i: int):
        n = self._c.size
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("candidate index out of range")
        return self._c.data[i]

    @property
    def data(self):
        """The entries as a ctypes array (bonsai_token_data * size), writable in place."""
        n = self._c.size
        return ctypes.cast(self._c.data, ctypes.POINTER(_lib.bonsai_token_data * n)).contents

    @property
    def size(self) -> int:
        """Number of candidates; assign a smaller number to drop the last ones."""
        return int(self._c.size)

    @size.setter
    def size(self, n: int) -> None:
        if not 0 <= n <= self._c.size:
            raise ValueError("candidates can only shrink")
        self._c.size = n

    @property
    def sorted(self) -> bool:
        """True when the entries are sorted by logit, highest first."""
        return bool(self._c.sorted)

    @sorted.setter
    def sorted(self, value: bool) -> None:
        self._c.sorted = bool(value)

    @property
    def selected(self) -> int:
        """Index of the chosen entry, -1 when none is chosen yet."""
        return int(self._c.selected)

    @selected.setter
    def selected(self, index: int) -> None:
        self._c.selected = index

    def ids(self) -> List[int]:
        """Token ids of the candidates, in order."""
        return [d.id for d in self.data]

    def logits(self) -> List[float]:
        """Logits of the candidates, in order."""
        return [d.logit for d in self.data]


class Sampler(NativeHandle):
    """A sampler chain (bonsai_sampler). Stages apply in the order added; the last one picks
    the token (greedy, or dist: a seeded random draw). Methods return the sampler, so chains
    read as one expression::

        s = Sampler(seed=42).add_json(model).add_top_k(40).add_temperature(0.7).add_dist()

    Most programs never build one: generate() and Chat.send() take the settings (temperature,
    top_k, ..., json, schema) and build the usual chain with sampler_from_settings(). Pass a
    Sampler as ``sampler=`` to use your own; its history is not reset between generations
    (call reset()). A sampler is used by one generation at a time.
    """

    _what = "sampler"

    def __init__(self, seed: int = 0):
        self._ptr = None
        self._keep = []  # callbacks and models the C stages use
        self._lock = threading.Lock()
        self._errors = []  # exceptions raised by custom stages, raised again by the caller
        out = ctypes.POINTER(_lib.bonsai_sampler)()
        check(_lib.lib.bonsai_sampler_create(int(seed) & 0xFFFFFFFFFFFFFFFF, ctypes.byref(out)))
        self._ptr = out

    @classmethod
    def default(cls, **params) -> "Sampler":
        """The library's default chain (bonsai_sampler_create_default): penalties, top-k,
        top-p, min-p, temperature, dist (greedy when temperature <= 0). `params` are fields
        of bonsai_sampler_params (seed, temperature, top_k, ...); the others keep the
        defaults of SAMPLER_DEFAULTS."""
        p = _lib.bonsai_sampler_params()
        _lib.lib.bonsai_sampler_params_init(ctypes.byref(p))
        for key, value in params.items():
            if key == "struct_size" or key not in SAMPLER_DEFAULTS:
                raise TypeError("unknown sampler parameter %r" % key)
            setattr(p, key, value)
        out = ctypes.POINTER(_lib.bonsai_sampler)()
        check(_lib.lib.bonsai_sampler_create_default(ctypes.byref(p), ctypes.byref(out)))
        self = cls.__new__(cls)
        self._ptr = out
        self._keep = []
        self._lock = threading.Lock()
        self._errors = []
        return self

    # -- stages -------------------------------------------------------------------------------

    def add_greedy(self) -> "Sampler":
        """Select the highest logit (ties: the lowest id)."""
        check(_lib.lib.bonsai_sampler_add_greedy(self._handle()))
        return self

    def add_dist(self) -> "Sampler":
        """Select at random from softmax(logits), with the sampler's seed."""
        check(_lib.lib.bonsai_sampler_add_dist(self._handle()))
        return self

    def add_temperature(self, t: float) -> "Sampler":
        """Divide the logits by t (t <= 0 keeps only the highest logit)."""
        check(_lib.lib.bonsai_sampler_add_temperature(self._handle(), t))
        return self

    def add_top_k(self, k: int) -> "Sampler":
        """Keep the k highest logits (k <= 0: no-op)."""
        check(_lib.lib.bonsai_sampler_add_top_k(self._handle(), k))
        return self

    def add_top_p(self, p: float, min_keep: int = 1) -> "Sampler":
        """Keep the smallest set of most likely tokens whose probability sums to >= p."""
        check(_lib.lib.bonsai_sampler_add_top_p(self._handle(), p, min_keep))
        return self

    def add_min_p(self, p: float, min_keep: int = 1) -> "Sampler":
        """Keep tokens at least p times as likely as the most likely one."""
        check(_lib.lib.bonsai_sampler_add_min_p(self._handle(), p, min_keep))
        return self

    def add_penalties(self, last_n: int = 64, repeat: float = 1.0, frequency: float = 0.0,
                      presence: float = 0.0) -> "Sampler":
        """Repetition, frequency and presence penalties over the last `last_n` accepted
        tokens (-1: all)."""
        check(_lib.lib.bonsai_sampler_add_penalties(self._handle(), last_n, repeat, frequency,
                                                    presence))
        return self

    def add_logit_bias(self, bias: Union[Mapping[int, float],
                                         Iterable[Tuple[int, float]]]) -> "Sampler":
        """Add fixed biases to tokens' logits: {token: bias} or (token, bias) pairs;
        float("-inf") bans a token."""
        items = list(bias.items()) if isinstance(bias, Mapping) else list(bias)
        arr = (_lib.bonsai_logit_bias * max(len(items), 1))()
        for i, (token, b) in enumerate(items):
            arr[i].token = int(token)
            arr[i].bias = float(b)
        check(_lib.lib.bonsai_sampler_add_logit_bias(self._handle(), arr, len(items)))
        return self

    def add_custom(self, fn: Callable[[Candidates, List[int]], Optional[bool]]) -> "Sampler":
        """A stage of your own: ``fn(candidates, history)`` edits the Candidates in place
        (logits, size, selected); `history` lists the accepted tokens, oldest first. Returning
        False aborts sampling. An exception it raises aborts sampling too and is raised again
        by the call that was sampling (generate, sample). The sampler keeps `fn` alive."""
        errors = self._errors

        def stage(candidates, history, n_history, _user_data):
            try:
                hist = history[:n_history] if n_history else []
                return fn(Candidates(candidates), hist) is not False
            except BaseException as e:  # noqa: B902 - raised again by the sampling call
                errors.append(e)
                return False

        callback = _lib.bonsai_sampler_fn(stage)
        check(_lib.lib.bonsai_sampler_add_custom(self._handle(), callback, None))
        self._keep.append(callback)
        return self

    def add_json(self, model, schema: Union[None, str, bytes, dict] = None) -> "Sampler":
        """Constrain the output to JSON: any JSON object (schema None), or a document of a JSON
        Schema (a dict, or JSON text) of the subset the library supports (UnsupportedError names
        a keyword outside it). Add it first in the chain."""
        data = _schema_bytes(schema)
        check(_lib.lib.bonsai_sampler_add_json(self._handle(), model._handle(), data,
                                               len(data) if data is not None else 0))
        self._keep.append(model)
        return self

    # -- use ----------------------------------------------------------------------------------

    def sample(self, logits) -> Tuple[int, float]:
        """Run the chain on a row of logits (array('f'), a list of floats, or a Session: its
        last row, without a copy) and return (token, logprob); the token is accepted."""
        from .session import Session
        token = ctypes.c_int32()
        logprob = ctypes.c_float()
        if isinstance(logits, Session):  # bonsai_session_sample: on the GPU when it can
            with self.using():
                st = _lib.lib.bonsai_session_sample(logits._handle(), self._handle(),
                                                    ctypes.byref(token), ctypes.byref(logprob))
                self.check_status(st)
            return int(token.value), float(logprob.value)
        keep = None
        if isinstance(logits, array.array) and logits.typecode == "f":
            n_vocab = len(logits)
            keep = (ctypes.c_float * n_vocab).from_buffer(logits)
            ptr = keep
        else:
            n_vocab = len(logits)
            keep = (ctypes.c_float * n_vocab)(*logits)
            ptr = keep
        with self.using():
            st = _lib.lib.bonsai_sampler_sample(self._handle(), ptr, n_vocab,
                                                ctypes.byref(token), ctypes.byref(logprob))
            self.check_status(st)
        return int(token.value), float(logprob.value)

    def accept(self, token: int) -> None:
        """Add a token to the history without sampling it (e.g. the prompt, for penalties)."""
        check(_lib.lib.bonsai_sampler_accept(self._handle(), int(token)))

    def reset(self) -> None:
        """Forget the history and constraint state; the random stream restarts from the seed."""
        _lib.lib.bonsai_sampler_reset(self._handle())

    @property
    def done(self) -> bool:
        """True when a constraint of the chain has seen a complete document."""
        return bool(_lib.lib.bonsai_sampler_done(self._handle()))

    def close(self) -> None:
        """Release the sampler. Idempotent."""
        ptr, self._ptr = self._ptr, None
        if ptr:
            _lib.lib.bonsai_sampler_free(ptr)
        self._keep = []

    # -- for the package ----------------------------------------------------------------------

    def using(self):
        """Context manager held while C uses the sampler (one user at a time)."""
        return _Using(self)

    def check_status(self, st: int) -> None:
        """Raise for a failed sampling call: the exception of a custom stage if one raised,
        else the library's error. Call on the thread that made the call."""
        errors, self._errors[:] = list(self._errors), []
        if errors:
            if st != _lib.BONSAI_OK:
                from .errors import make_error
                raise errors[0] from make_error(st)
            raise errors[0]
        check(st)

    def take_errors(self) -> list:
        """Exceptions custom stages raised since the last call (and forget them)."""
        errors, self._errors[:] = list(self._errors), []
        return errors


class _Using:
    __slots__ = ("sampler",)

    def __init__(self, sampler):
        self.sampler = sampler

    def __enter__(self):
        if not self.sampler._lock.acquire(blocking=False):
            raise InvalidStateError(_lib.BONSAI_ERR_INVALID_STATE,
                                    "the sampler is in use by another generation")
        self.sampler._errors[:] = []
        return self.sampler

    def __exit__(self, *exc):
        self.sampler._lock.release()


def _schema_bytes(schema) -> Optional[bytes]:
    if schema is None:
        return None
    if isinstance(schema, (dict, list, bool)):
        return _json.dumps(schema).encode("utf-8")
    if isinstance(schema, str):
        return schema.encode("utf-8")
    if isinstance(schema, (bytes, bytearray)):
        return bytes(schema)
    raise TypeError("schema must be a dict or JSON text, not %s" % type(schema).__name__)


def _random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little")


def sampler_from_settings(model, temperature: Optional[float] = None,
                          top_k: Optional[int] = None, top_p: Optional[float] = None,
                          min_p: Optional[float] = None, penalty_last_n: Optional[int] = None,
                          repeat_penalty: Optional[float] = None,
                          frequency_penalty: Optional[float] = None,
                          presence_penalty: Optional[float] = None, seed: Optional[int] = None,
                          logit_bias=None, json: bool = False, schema=None) -> Sampler:
    """The usual chain from settings (None: the library's default, see SAMPLER_DEFAULTS):
    the JSON constraint (json=True: any object; schema: a JSON Schema as dict or text), the
    penalties (when not neutral), the logit biases, then greedy when temperature <= 0, else
    top-k, top-p, min-p, temperature and a draw seeded with `seed` (None: a random seed)."""
    d = SAMPLER_DEFAULTS
    temperature = d["temperature"] if temperature is None else temperature
    top_k = d["top_k"] if top_k is None else top_k
    top_p = d["top_p"] if top_p is None else top_p
    min_p = d["min_p"] if min_p is None else min_p
    penalty_last_n = d["penalty_last_n"] if penalty_last_n is None else penalty_last_n
    repeat_penalty = d["repeat_penalty"] if repeat_penalty is None else repeat_penalty
    frequency_penalty = d["frequency_penalty"] if frequency_penalty is None else frequency_penalty
    presence_penalty = d["presence_penalty"] if presence_penalty is None else presence_penalty
    if seed is None:
        seed = _random_seed()
    s = Sampler(seed)
    try:
        if json or schema is not None:
            s.add_json(model, schema)
        if (repeat_penalty != 1.0 or frequency_penalty != 0.0 or presence_penalty != 0.0 or
                penalty_last_n < -1):
            s.add_penalties(penalty_last_n, repeat_penalty, frequency_penalty, presence_penalty)
        if logit_bias:
            s.add_logit_bias(logit_bias)
        if temperature <= 0:
            s.add_greedy()
        else:
            # neutral values add no stage; others (invalid ones included) go to the library
            if top_k != 0:
                s.add_top_k(top_k)
            if top_p != 1.0:
                s.add_top_p(top_p, 1)
            if min_p != 0.0:
                s.add_min_p(min_p, 1)
            s.add_temperature(temperature)
            s.add_dist()
    except BaseException:
        s.close()
        raise
    return s
