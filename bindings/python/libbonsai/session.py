"""Sessions (a model running with its KV cache) and streamed generation."""
from __future__ import annotations

import array
import atexit
import codecs
import ctypes
import enum
import queue
import threading
import weakref
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from . import _lib
from ._handle import Closeable, NativeHandle
from .errors import InvalidArgumentError, InvalidStateError, check, make_error
from .model import Model, _int32_array, _text_bytes, _tokenize
from .sampler import SETTINGS, Sampler, sampler_from_settings

__all__ = ["Session", "Generation", "GenerationStats", "StopReason", "KV_TYPES", "batch_eval",
           "batch_sample"]

#: KV cache types by name (kv_type= of Session).
KV_TYPES = {"f16": _lib.BONSAI_TENSOR_F16, "q8_0": _lib.BONSAI_TENSOR_Q8_0}


class StopReason(enum.IntEnum):
    """Why a generation stopped (bonsai_stop_reason)."""

    NONE = _lib.BONSAI_STOP_NONE
    EOG = _lib.BONSAI_STOP_EOG  #: the model produced an end-of-generation token
    MAX_TOKENS = _lib.BONSAI_STOP_MAX_TOKENS  #: max_tokens reached
    STRING = _lib.BONSAI_STOP_STRING  #: a stop string appeared (it is not emitted)
    CANCELLED = _lib.BONSAI_STOP_CANCELLED  #: cancel(), or the iterator closed early
    CONTEXT_FULL = _lib.BONSAI_STOP_CONTEXT_FULL  #: no room for another token
    CONSTRAINT = _lib.BONSAI_STOP_CONSTRAINT  #: the JSON constraint completed its document


@dataclass(frozen=True)
class GenerationStats:
    """Statistics of one generation (bonsai_generate_stats)."""

    n_prompt: int  #: prompt tokens
    n_prompt_reused: int  #: of which were already in the cache
    n_generated: int  #: tokens generated (the end-of-generation token included)
    prompt_ms: float  #: time evaluating the prompt tokens not reused
    generate_ms: float  #: time generating, sampling included
    sample_ms: float  #: of which in the sampler
    prompt_tps: float  #: evaluated prompt tokens per second
    generate_tps: float  #: generated tokens per second
    stop_reason: StopReason

    @property
    def n_prompt_evaluated(self) -> int:
        """Prompt tokens actually evaluated (not reused from the cache)."""
        return self.n_prompt - self.n_prompt_reused

    @classmethod
    def _from_c(cls, st: "_lib.bonsai_generate_stats") -> "GenerationStats":
        try:
            reason = StopReason(st.stop_reason)
        except ValueError:  # a reason newer than this binding
            reason = st.stop_reason
        return cls(st.n_prompt, st.n_prompt_reused, st.n_generated, st.prompt_ms,
                   st.generate_ms, st.sample_ms, st.prompt_tps, st.generate_tps, reason)


def _kv_type(kv_type) -> int:
    if isinstance(kv_type, str):
        try:
            return KV_TYPES[kv_type.lower()]
        except KeyError:
            raise ValueError("kv_type must be one of %s" % ", ".join(KV_TYPES)) from None
    return int(kv_type)


class _Busy:
    """Held while a thread uses the C session: one user at a time, never two threads."""

    __slots__ = ("session", "owner")

    def __init__(self, session, owner=None):
        self.session = session
        self.owner = owner

    def __enter__(self):
        self.session._acquire(self.owner)
        return self.session._handle()

    def __exit__(self, *exc):
        self.session._lock.release()


class Session(NativeHandle):
    """A model running: a compute backend, a KV cache of `n_ctx` tokens and the logits of the
    last evaluation (bonsai_session).

    A session is used by one thread at a time. The binding enforces it: a call made while a
    generation runs on the session (or while a Chat holds it) raises InvalidStateError instead
    of racing. Any number of sessions may run on one model from different threads.

    Example::

        with Session(model, n_ctx=512) as s:
            s.eval(model.tokenize("Once upon a time"))
            row = s.logits                      # array('f') of n_vocab floats
            for piece in s.generate("Once upon a time", max_tokens=20, temperature=0):
                print(piece, end="", flush=True)
            print(s.last_stats.generate_tps)

    Args:
        model: the Model (kept alive by the session).
        n_ctx: context length in tokens (0: the model's, at most 4096).
        n_threads: CPU threads (0: the number of physical cores).
        backend: "auto", "cpu", "cuda", "cuda:N" (see the C API).
        kv_type: "f16" (default) or "q8_0" (half the memory).
        max_memory: most bytes the session may take (0: no cap): a cache that does not fit
            fails the creation, a batch that does not fit fails with OutOfMemoryError.
    """

    _what = "session"

    def __init__(self, model: Model, n_ctx: int = 0, n_threads: int = 0, backend: str = "auto",
                 kv_type: Union[str, int] = "f16", max_memory: int = 0):
        self._ptr = None
        self._lock = threading.Lock()
        self._owner_ref = None  # weak reference to a Chat holding the session
        self._job = None  # the running generation's job
        self.last_stats: Optional[GenerationStats] = None
        self.model = model
        params = _lib.bonsai_session_params()
        _lib.lib.bonsai_session_params_init(ctypes.byref(params))
        if not 0 <= n_ctx < 2 ** 32:
            raise ValueError("n_ctx must be >= 0 (0: the model's context, at most 4096)")
        params.n_ctx = n_ctx
        params.n_threads = n_threads
        params.backend = backend.encode("utf-8")
        params.kv_type = _kv_type(kv_type)
        _lib.set_field(params, "max_memory", int(max_memory))
        out = ctypes.POINTER(_lib.bonsai_session)()
        check(_lib.lib.bonsai_session_create(model._handle(), ctypes.byref(params),
                                             ctypes.byref(out)))
        self._ptr = out
        # the C session keeps the C model alive: tokenize through it even after model.close()
        self._model_ptr = model._handle()
        self._n_vocab = model.n_vocab
        self._n_embd = model.hparams.n_embd

    # -- lifetime and guards ------------------------------------------------------------------

    @property
    def _owner(self):
        """The Chat holding the session, or None (held weakly: a dropped chat frees it)."""
        ref = self._owner_ref
        return ref() if ref is not None else None

    @_owner.setter
    def _owner(self, chat):
        self._owner_ref = weakref.ref(chat) if chat is not None else None

    def _acquire(self, owner=None):
        self._handle()
        if self._owner is not None and self._owner is not owner:
            raise InvalidStateError(_lib.BONSAI_ERR_INVALID_STATE,
                                    "the session is held by a Chat; close the chat first")
        if not self._lock.acquire(blocking=False):
            raise InvalidStateError(_lib.BONSAI_ERR_INVALID_STATE,
                                    "the session is in use by a running generation (finish or "
                                    "close the iterator first) or by another thread")

    def _check_free(self, owner=None) -> None:
        """Raise InvalidStateError now if the session could not be acquired."""
        self._acquire(owner)
        self._lock.release()

    def _use(self, reading: bool = False) -> _Busy:
        # reading (tokens, logits) is allowed while a Chat holds the session; changing it is not
        return _Busy(self, self._owner if reading else None)

    def close(self) -> None:
        """Stop a running generation (if any), wait for a call another thread is making, then
        release the session (and the model, if it held the last reference). Idempotent."""
        job = self._job
        if job is not None:
            job.cancel()
            job.join()
        owner = self._owner
        if owner is not None:
            owner.close()
        if not self._ptr:
            return
        with self._lock:  # waits for a call another thread is making on the session
            ptr, self._ptr = self._ptr, None
            if ptr:
                _lib.lib.bonsai_session_free(ptr)

    def __repr__(self):
        if self.closed:
            return "<libbonsai.Session (closed)>"
        return "<libbonsai.Session n_ctx=%d n_past=%d %s>" % (self.n_ctx, self.n_past,
                                                              self.backend)

    # -- state --------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """Context length in tokens."""
        return int(_lib.lib.bonsai_session_n_ctx(self._handle()))

    @property
    def n_past(self) -> int:
        """Tokens in the KV cache (the position of the next token)."""
        return int(_lib.lib.bonsai_session_n_past(self._handle()))

    @property
    def backend(self) -> str:
        """Description of the session's backend, e.g. "cpu avx2, 2 threads"."""
        return _lib.lib.bonsai_session_backend(self._handle()).decode("utf-8", "replace")

    @property
    def tokens(self) -> List[int]:
        """The tokens in the KV cache, in order."""
        with self._use(reading=True) as ptr:
            n = ctypes.c_uint32()
            p = _lib.lib.bonsai_session_tokens(ptr, ctypes.byref(n))
            return p[:n.value] if n.value else []

    def _rows(self, last_only: bool):
        with self._use(reading=True) as ptr:
            rows = ctypes.c_uint32()
            p = _lib.lib.bonsai_session_logits(ptr, ctypes.byref(rows))
            if not p or rows.value == 0:
                return None
            row_bytes = self._n_vocab * 4
            first = rows.value - 1 if last_only else 0
            data = ctypes.string_at(ctypes.addressof(p.contents) + first * row_bytes,
                                    (rows.value - first) * row_bytes)
        out = []
        for r in range(rows.value - first):
            a = array.array("f")
            a.frombytes(data[r * row_bytes:(r + 1) * row_bytes])
            out.append(a)
        return out

    @property
    def logits(self) -> Optional[array.array]:
        """The logits of the last evaluated token: array('f') of n_vocab floats (a copy), None
        before the first evaluation or after truncate()/clear()."""
        rows = self._rows(True)
        return rows[0] if rows else None

    @property
    def all_logits(self) -> List[array.array]:
        """Every row of logits of the last evaluation: one array('f') per token of the batch
        with eval(..., all_logits=True), else one; [] when there are none."""
        return self._rows(False) or []

    # -- operations ---------------------------------------------------------------------------

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> None:
        """Evaluate `tokens` at the next positions in one batch; keep the logits of the last
        token (of every token with all_logits=True). ContextFullError when they do not fit
        (nothing changes); OutOfRangeError for a token outside the vocabulary."""
        arr, n = _int32_array(tokens)
        flags = _lib.BONSAI_EVAL_ALL_LOGITS if all_logits else 0
        with self._use() as ptr:
            check(_lib.lib.bonsai_session_eval(ptr, arr, n, flags))

    def truncate(self, n_keep: int) -> None:
        """Keep only the first n_keep tokens of the cache (rewind, or reuse a prefix)."""
        with self._use() as ptr:
            check(_lib.lib.bonsai_session_truncate(ptr, n_keep))

    def clear(self) -> None:
        """Empty the cache and forget the logits."""
        with self._use() as ptr:
            _lib.lib.bonsai_session_clear(ptr)

    def sample(self, sampler: Sampler):
        """Pick a token from the last row of logits with `sampler`: (token, logprob)."""
        with self._use():
            return sampler.sample(self)

    def tokenize(self, text, add_bos: bool = True, special: bool = False) -> List[int]:
        """Model.tokenize() through the session's model (works after model.close())."""
        self._handle()
        return _tokenize(self._model_ptr, text, add_bos, special)

    def embed(self, text: Union[str, bytes, Sequence[int]]) -> List[float]:
        """Embedding of a text (tokenized with BOS as the model wants) or of token ids: the
        final hidden states mean-pooled and L2-normalised, n_embd floats. Clears the cache
        (it is empty afterwards). The tokens must fit the context (ContextFullError)."""
        if isinstance(text, (str, bytes, bytearray)):
            tokens = self.tokenize(text)
        else:
            tokens = list(text)
        arr, n = _int32_array(tokens)
        out = (ctypes.c_float * self._n_embd)()
        with self._use() as ptr:
            check(_lib.lib.bonsai_embed(ptr, arr, n, out, self._n_embd))
        return list(out)

    def cancel(self) -> None:
        """Ask the running generation on this session to stop after the current token (from
        any thread). Its iterator then ends normally, with StopReason.CANCELLED. Does nothing
        when no generation runs (a request never carries over to a later one)."""
        job = self._job
        if job is not None:
            job.cancel()

    # -- generation ---------------------------------------------------------------------------

    def generate(self, prompt: Union[str, bytes, Sequence[int]], *, max_tokens: int = 256,
                 stop: Union[None, str, Sequence[str]] = None, sampler: Optional[Sampler] = None,
                 add_bos: bool = True, parse_special: bool = False, special: bool = False,
                 **settings) -> "Generation":
        """Generate a continuation of `prompt`; returns an iterator of text pieces.

        The prompt is compared with the cache and only what follows the common prefix is
        evaluated. Generation runs on a worker thread (the GIL is released while the library
        computes) and streams pieces through a queue; iterate to receive them. Closing the
        iterator early (break and drop it, .close(), garbage collection) cancels the
        generation and waits for the worker, leaving the session usable. The statistics are in
        ``.stats`` of the iterator and in ``session.last_stats`` once it ends.

        Args:
            prompt: text (tokenized with `add_bos` and `parse_special`) or token ids.
            max_tokens: tokens to generate at most (0: until the end or a full context).
            stop: stop strings (not emitted); a str is one stop string.
            sampler: a Sampler of your own; otherwise one is built from `settings`.
            special: render control tokens in the output ("<|im_end|>").
            settings: sampler settings: temperature, top_k, top_p, min_p, penalty_last_n,
                repeat_penalty, frequency_penalty, presence_penalty, seed, logit_bias
                ({token: bias}), json (True: any JSON object), schema (a JSON Schema as a
                dict or JSON text). Defaults are the library's (temperature 0.8; 0 is greedy).
        """
        self._check_free()
        if isinstance(prompt, (str, bytes, bytearray)):
            tokens = _tokenize(self._model_ptr, _text_bytes(prompt), add_bos, parse_special)
        else:
            tokens = [int(t) for t in prompt]
        arr, n = _int32_array(tokens)

        def call(ptr, params, stats):
            return _lib.lib.bonsai_generate_tokens(ptr, arr, n, params, stats)

        return Generation(self, call, max_tokens=max_tokens, stop=stop, sampler=sampler,
                          special=special, settings=settings, keep=(arr,))

    def complete(self, prompt, **options) -> str:
        """The whole text of generate(prompt, **options)."""
        gen = self.generate(prompt, **options)
        try:
            return "".join(gen)
        finally:
            gen.close()


def batch_eval(items: Sequence[Tuple[Session, int]]) -> None:
    """Continuous batching (bonsai_batch_eval): evaluate one token for each of several sessions
    in a single forward pass, so the weights are read once for all of them. Each token goes to
    its session's cache at the session's next position, and each session's logits become that
    token's, as ``session.eval([token])`` would give.

    `items` are (session, token) pairs; every session must run the same model on the same
    backend, appear once and have room for its token, or nothing is evaluated
    (InvalidArgumentError, ContextFullError, OutOfRangeError). Every session must be free (no
    generation running, no Chat holding it): InvalidStateError otherwise. If the computation
    itself fails (BackendError, OutOfMemoryError), every session stays at its position without
    logits, and the call may be repeated.
    """
    items = list(items)
    arr = (_lib.bonsai_batch_item * max(len(items), 1))()
    held = []
    try:
        for i, (session, token) in enumerate(items):
            if any(s is session for s in held):
                raise InvalidArgumentError(_lib.BONSAI_ERR_INVALID_ARGUMENT,
                                           "batch_eval: item %d repeats a session" % i)
            session._acquire()
            held.append(session)
            arr[i].session = session._ptr
            arr[i].token = int(token)
        check(_lib.lib.bonsai_batch_eval(arr, len(items), 0))
    finally:
        for session in held:
            session._lock.release()


def batch_sample(items: Sequence[Tuple[Session, Sampler]]) -> List[Tuple[int, float]]:
    """The next token of several sessions at once (bonsai_batch_sample), e.g. after
    batch_eval(): for each (session, sampler) pair, the (token, logprob) that
    ``sampler.sample(session)`` would give, but on a GPU every row whose chain runs there is
    sampled in one launch. Each session must have logits and run the same model on the same
    backend, and no sampler may appear twice (InvalidStateError, InvalidArgumentError; nothing
    is sampled then). Sessions and samplers must be free (no generation running).

    Items are finished in order: when the call fails part way (a custom stage raises, a device
    error), the exception's ``results`` attribute lists (token, logprob) for the items whose
    sampler accepted a token and None for the others (those after the failing item are
    untouched)."""
    items = list(items)
    arr = (_lib.bonsai_batch_sample_item * max(len(items), 1))()
    held, using = [], []
    try:
        for i, (session, sampler) in enumerate(items):
            if any(u.sampler is sampler for u in using):
                raise InvalidArgumentError(_lib.BONSAI_ERR_INVALID_ARGUMENT,
                                           "batch_sample: item %d repeats a sampler" % i)
            if not any(s is session for s in held):
                session._acquire()
                held.append(session)
            u = sampler.using()
            u.__enter__()
            using.append(u)
            arr[i].session = session._ptr
            arr[i].sampler = sampler._handle()
        st = _lib.lib.bonsai_batch_sample(arr, len(items), 0)  # sets every token to -1 first
        results = [(int(arr[i].token), float(arr[i].logprob)) if arr[i].token >= 0 else None
                   for i in range(len(items))]
        try:
            for u in using:  # a custom stage's exception first, then the library's error
                if u.sampler._errors:
                    u.sampler.check_status(st)
            check(st)
        except Exception as e:
            e.results = results
            raise
        return results
    finally:
        for u in using:
            u.__exit__(None, None, None)
        for session in held:
            session._lock.release()


_END = object()

# Generations whose worker may still be running: at exit they are cancelled and joined, so that
# no worker is inside the library while the interpreter finalizes.
_live_jobs = weakref.WeakSet()


@atexit.register
def _stop_all_jobs():
    for job in list(_live_jobs):
        job.cancel()
        job.join(timeout=10)


class _Job:
    """The worker side of a Generation. It holds no reference to the Generation, so dropping
    the iterator collects it (and its __del__ cancels the job)."""

    def __init__(self, session: Session, owner, call, params, sampler, keep):
        self.session = session
        self.owner = owner
        self.call = call
        self.params = params
        self.sampler = sampler
        self.keep = keep
        self.queue = queue.Queue()
        self.cancelled = threading.Event()
        # bonsai_session_cancel() only while the C call runs (under this lock), so that a late
        # request can never reach the session's next generation
        self.cancel_lock = threading.Lock()
        self.running = False
        self.thread = None
        self.stats = None
        self.error = None
        self.callback = _lib.bonsai_token_fn(self._on_token)
        params.on_token = self.callback

    def _on_token(self, token, text, length, logprob, _user_data):
        if self.cancelled.is_set():
            return False
        try:
            self.queue.put((token, _lib.string_at(text, length), logprob))
        except BaseException as e:  # noqa: B902 - surfaced in the consumer
            self.error = e
            return False
        return not self.cancelled.is_set()

    def start(self):
        session = self.session
        session._acquire(self.owner)  # released by the worker when C is done with the session
        have_sampler = False
        try:
            if self.sampler is not None:
                if not self.sampler._lock.acquire(blocking=False):
                    raise InvalidStateError(_lib.BONSAI_ERR_INVALID_STATE,
                                            "the sampler is in use by another generation")
                have_sampler = True
                self.sampler._errors[:] = []
            session._job = self
            self.thread = threading.Thread(target=self._run, name="libbonsai-generate",
                                           daemon=True)
            _live_jobs.add(self)
            self.running = True
            self.thread.start()
        except BaseException:
            self.running = False
            session._job = None
            if have_sampler:
                self.sampler._lock.release()
            session._lock.release()
            raise

    def _run(self):
        stats = _lib.bonsai_generate_stats()
        stats.struct_size = ctypes.sizeof(stats)
        try:
            try:
                st = self.call(self.session._ptr, ctypes.byref(self.params), ctypes.byref(stats))
            finally:
                with self.cancel_lock:
                    self.running = False
            # bonsai_last_error() is per thread: read it here, on the thread that failed
            error = make_error(st) if st != _lib.BONSAI_OK else None
            if self.sampler is not None:
                stage_errors = self.sampler.take_errors()
                if stage_errors:
                    stage_errors[0].__cause__ = error
                    error = stage_errors[0]
            if self.error is None:
                self.error = error
            self.stats = GenerationStats._from_c(stats)
        except BaseException as e:  # noqa: B902 - surfaced in the consumer
            if self.error is None:
                self.error = e
        finally:
            if self.stats is not None:
                self.session.last_stats = self.stats
            self.session._job = None
            if self.sampler is not None:
                self.sampler._lock.release()
            self.session._lock.release()
            self.queue.put(_END)

    def cancel(self):
        self.cancelled.set()  # seen by the token callback, even before the C call starts
        with self.cancel_lock:
            if self.running:
                _lib.lib.bonsai_session_cancel(self.session._ptr)

    def join(self, timeout=None):
        t = self.thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)


class Generation(Closeable):
    """An iterator of the text pieces of a running generation (from Session.generate,
    Model.generate or Chat.send).

    Pieces are str, always whole characters; empty pieces are not yielded. Besides
    iteration:

    - ``close()`` cancels the generation and waits for its worker (also on garbage collection
      and at the end of a ``with`` block); the session is usable again afterwards;
    - ``text`` is everything yielded so far, ``tokens`` the generated token ids and
      ``logprobs`` their log-probabilities;
    - ``stats`` (GenerationStats) once the generation has ended, else None;
    - ``result()`` consumes the rest and returns the whole text.

    An error of the library (e.g. ContextFullError when the prompt does not fit) or an
    exception raised by a custom sampler stage is raised by the iteration, in the consuming
    thread. The generation starts on the first next().
    """

    def __init__(self, session: Session, call, *, max_tokens=256, stop=None, sampler=None,
                 special=False, settings=None, keep=(), owner=None, on_finish=None):
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise TypeError("unknown generation option(s): %s" % ", ".join(unknown))
        if sampler is not None and settings:
            raise TypeError("pass either sampler= or sampler settings (%s), not both" %
                            ", ".join(sorted(settings)))
        self._session = session
        self._owned_session = None
        self._on_finish = on_finish
        self._finished = False
        self.tokens: List[int] = []
        self.logprobs: List[float] = []
        self._pieces: List[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        own_sampler = None
        if sampler is None:
            own_sampler = sampler = sampler_from_settings(session.model, **settings)
        params = _lib.bonsai_generate_params()
        _lib.lib.bonsai_generate_params_init(ctypes.byref(params))
        max_tokens = int(max_tokens or 0)
        if not 0 <= max_tokens < 2 ** 32:
            raise ValueError("max_tokens must be >= 0 (0: no limit)")
        params.max_tokens = max_tokens
        params.sampler = sampler._handle()
        if isinstance(stop, (str, bytes)):
            stop = [stop]
        stop_list = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in stop or []]
        if any(not s for s in stop_list):
            raise ValueError("stop strings must not be empty")
        stop_arr = (ctypes.c_char_p * max(len(stop_list), 1))(*stop_list)
        params.stop = stop_arr
        params.n_stop = len(stop_list)
        params.detokenize_flags = _lib.BONSAI_DETOKENIZE_SPECIAL if special else 0
        self._job = _Job(session, owner, call, params, sampler,
                         keep=(keep, stop_arr, stop_list, own_sampler))
        self._own_sampler = own_sampler

    # -- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        job = self._job
        if self._finished:
            raise StopIteration
        if job.thread is None:
            job.start()
        while True:
            item = job.queue.get()
            if item is _END:
                tail = self._decoder.decode(b"", final=True)
                self._finish()
                if job.error is not None:
                    raise job.error
                if tail:
                    self._pieces.append(tail)
                    return tail
                raise StopIteration
            token, data, logprob = item
            self.tokens.append(token)
            self.logprobs.append(logprob)
            text = self._decoder.decode(data)
            if text:
                self._pieces.append(text)
                return text

    def _finish(self):
        if self._finished:
            return
        self._finished = True
        job = self._job
        job.join()
        if self._own_sampler is not None:
            self._own_sampler.close()
        if self._on_finish is not None:
            self._on_finish(self)
        if self._owned_session is not None:
            self._owned_session.close()

    def close(self) -> None:
        """Cancel the generation if it still runs, wait for its worker and release what it
        holds. Pieces not yet consumed are dropped. Idempotent."""
        if self._finished:
            return
        job = self._job
        if job.thread is not None:
            job.cancel()
            job.join()
        self._finish()

    def cancel(self) -> None:
        """Ask the generation to stop after the current token (from any thread); the pieces
        already made still come out, then the iteration ends."""
        self._job.cancel()

    def result(self) -> str:
        """Consume the remaining pieces and return the whole text."""
        for _ in self:
            pass
        return self.text

    @property
    def text(self) -> str:
        """The text yielded so far."""
        return "".join(self._pieces)

    @property
    def stats(self) -> Optional[GenerationStats]:
        """Statistics, once the generation has ended (None before, or after a failure)."""
        return self._job.stats

    @property
    def session(self) -> Session:
        """The session generating."""
        return self._session
