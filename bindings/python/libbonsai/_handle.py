"""The bases of the classes that hold library resources."""
from __future__ import annotations

from . import _lib
from .errors import InvalidStateError


class Closeable:
    """A context manager and finalizer around ``close()``, which each subclass writes
    (idempotent)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class NativeHandle(Closeable):
    """Holds a C handle in ``self._ptr`` (None once closed) and names what it wraps in
    ``_what`` for the error message of a call on a closed one."""

    _ptr = None
    _what = "object"

    def _handle(self):
        if not self._ptr:
            raise InvalidStateError(_lib.BONSAI_ERR_INVALID_STATE, "the %s is closed" % self._what)
        return self._ptr

    @property
    def closed(self) -> bool:
        """True after close()."""
        return not self._ptr
