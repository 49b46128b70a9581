"""Chat: a conversation kept in a session's KV cache (Qwen3 ChatML)."""
from __future__ import annotations

import ctypes
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import _lib
from ._handle import NativeHandle
from .errors import check
from .model import _grow_bytes, _grow_tokens
from .session import Generation, GenerationStats, Session

__all__ = ["Chat", "parse_reply", "render_chat", "tokenize_chat"]

Message = Union[Mapping[str, str], Tuple[str, str]]


def _message_pairs(messages: Iterable[Message]) -> List[Tuple[str, str]]:
    out = []
    for m in messages:
        if isinstance(m, Mapping):
            out.append((m["role"], m["content"]))
        else:
            role, content = m
            out.append((role, content))
    return out


def _c_messages(messages: Iterable[Message]):
    """(ctypes array of bonsai_chat_message, count, the bytes it points to)."""
    pairs = _message_pairs(messages)
    keep = []
    arr = (_lib.bonsai_chat_message * max(len(pairs), 1))()
    for i, (role, content) in enumerate(pairs):
        r, c = role.encode("utf-8"), content.encode("utf-8")
        keep += [r, c]
        arr[i].role = r
        arr[i].content = c
    return arr, len(pairs), keep


def _chat_flags(add_generation_prompt: bool, thinking: bool) -> int:
    return (_lib.BONSAI_CHAT_ADD_GENERATION_PROMPT if add_generation_prompt else 0) | \
        (_lib.BONSAI_CHAT_ENABLE_THINKING if thinking else 0)


def tokenize_chat(model, messages: Iterable[Message], add_generation_prompt: bool = True,
                  thinking: bool = False) -> List[int]:
    """Render a conversation as render_chat() does and tokenize it for `model`
    (bonsai_chat_tokenize): the template's markup becomes control tokens while message contents
    stay text, so a message containing "<|im_end|>" cannot forge a turn. BOS is added when the
    model's tokenizer adds one. The tokens are ready for Session.generate()."""
    arr, n, keep = _c_messages(messages)
    flags = _chat_flags(add_generation_prompt, thinking)
    ptr = model._handle()
    return _grow_tokens(lambda buf, n_max, count: _lib.lib.bonsai_chat_tokenize(
        ptr, arr, n, flags, buf, n_max, count), sum(len(x) for x in keep) + 16 * n + 16)


def render_chat(messages: Iterable[Message], add_generation_prompt: bool = True,
                thinking: bool = False) -> str:
    """Render a conversation as the model's chat template does (bonsai_chat_render).

    `messages` are dicts {"role": ..., "content": ...} or (role, content) pairs; roles are
    "system", "user", "assistant" and "tool". With add_generation_prompt the text ends with the
    assistant's opening (and an empty think block unless `thinking`).
    """
    arr, count, keep = _c_messages(messages)
    flags = _chat_flags(add_generation_prompt, thinking)
    text = _grow_bytes(lambda buf, size, n: _lib.lib.bonsai_chat_render(arr, count, flags, buf,
                                                                       size, n),
                       sum(len(x) for x in keep) + 64 * count + 128)
    return text.decode("utf-8", "replace")


def parse_reply(text: str) -> Tuple[str, str]:
    """Split an assistant's output into (reasoning, answer) with bonsai_chat_parse: reasoning is
    what is inside <think>...</think> ("" when none), both trimmed of surrounding whitespace."""
    data = text.encode("utf-8", "surrogatepass")
    buf = ctypes.create_string_buffer(data, len(data) + 1)
    base = ctypes.addressof(buf)
    r = ctypes.POINTER(ctypes.c_char)()
    rn = ctypes.c_size_t()
    c = ctypes.POINTER(ctypes.c_char)()
    cn = ctypes.c_size_t()
    _lib.lib.bonsai_chat_parse(buf, len(data), ctypes.byref(r), ctypes.byref(rn), ctypes.byref(c),
                               ctypes.byref(cn))

    def part(ptr, n):
        if not n:
            return ""
        at = ctypes.cast(ptr, ctypes.c_void_p).value - base
        return data[at:at + n].decode("utf-8", "replace")

    return part(r, rn.value), part(c, cn.value)


class Chat(NativeHandle):
    """A conversation kept in a session's KV cache (bonsai_chat): each turn evaluates only its
    new tokens.

    Example::

        with model.chat(system="You are terse.") as chat:
            for piece in chat.send("Name three rivers.", temperature=0.7, max_tokens=200):
                print(piece, end="", flush=True)
            print(chat.ask("Which is longest?"))      # the whole reply at once
            print(chat.last_stats.n_prompt_reused)

    The chat holds its session exclusively until close(): other calls that change the session
    raise InvalidStateError meanwhile (reading tokens or logits is fine).

    Args:
        session: the Session to keep the conversation in.
        system: the system prompt, or None.
        thinking: let the model think (<think>...</think>); off by default (the prompt then
            ends with an empty think block, as the template renders it).
    """

    _what = "chat"

    def __init__(self, session: Session, system: Optional[str] = None, thinking: bool = False):
        self._ptr = None
        self._owned_session = None
        session._check_free()
        out = ctypes.POINTER(_lib.bonsai_chat)()
        flags = _lib.BONSAI_CHAT_ENABLE_THINKING if thinking else 0
        check(_lib.lib.bonsai_chat_create(session._handle(), _opt_bytes(system), flags,
                                          ctypes.byref(out)))
        self._ptr = out
        self.session = session
        self.thinking = bool(thinking)
        self.system = system
        self.messages: List[Tuple[str, str]] = [("system", system)] if system else []
        self.last_stats: Optional[GenerationStats] = None
        session._owner = self

    def send(self, message: str, *, max_tokens: int = 256,
             stop: Union[None, str, Sequence[str]] = None, sampler=None, special: bool = False,
             **settings) -> Generation:
        """Add a user message and generate the reply; returns an iterator of text pieces (a
        Generation, with the same early-close, stats and error behaviour as
        Session.generate()). Sampler settings as for Session.generate(). ContextFullError
        when the message does not fit (the conversation stays as it was)."""
        ptr = self._handle()
        self.session._check_free(self)
        data = message.encode("utf-8")

        def call(_session_ptr, params, stats):
            return _lib.lib.bonsai_chat_send(ptr, data, params, stats)

        def on_finish(gen):
            if gen._job.error is None and gen._job.stats is not None:
                self.messages.append(("user", message))
                self.messages.append(("assistant", self.last_reply))
                self.last_stats = gen._job.stats

        return Generation(self.session, call, max_tokens=max_tokens, stop=stop, sampler=sampler,
                          special=special, settings=settings, keep=(data, self), owner=self,
                          on_finish=on_finish)

    def ask(self, message: str, **options) -> str:
        """send() and wait: the whole reply, as generated (reasoning included when thinking;
        see last_answer for the answer alone)."""
        gen = self.send(message, **options)
        try:
            gen.result()
        finally:
            gen.close()
        return self.last_reply

    @property
    def last_reply(self) -> str:
        """Text of the last reply, as generated ("" before the first)."""
        n = ctypes.c_size_t()
        p = _lib.lib.bonsai_chat_last_reply(self._handle(), ctypes.byref(n))
        return _lib.string_at(p, n.value).decode("utf-8", "replace")

    @property
    def last_answer(self) -> str:
        """The last reply without its reasoning, trimmed (parse_reply)."""
        return parse_reply(self.last_reply)[1]

    @property
    def last_reasoning(self) -> str:
        """The reasoning (inside <think>...</think>) of the last reply, "" when none."""
        return parse_reply(self.last_reply)[0]

    def reset(self, system: Optional[str] = None) -> None:
        """Forget the conversation and set a new system prompt (None: none)."""
        ptr = self._handle()
        self.session._check_free(self)
        check(_lib.lib.bonsai_chat_reset(ptr, _opt_bytes(system)))
        self.system = system
        self.messages = [("system", system)] if system else []
        self.last_stats = None

    def close(self) -> None:
        """Release the chat and the session it holds (and close that session when the chat
        made it, as Model.chat() does). A running reply is cancelled first. Idempotent."""
        ptr, self._ptr = self._ptr, None
        if not ptr:
            return
        session = self.session
        job = session._job
        if job is not None and job.owner is self:
            job.cancel()
            job.join()
        if session._owner is self:
            session._owner = None
        _lib.lib.bonsai_chat_free(ptr)
        owned, self._owned_session = self._owned_session, None
        if owned is not None:
            owned.close()


def _opt_bytes(s: Optional[str]):
    return None if s is None else s.encode("utf-8")
