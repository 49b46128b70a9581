"""Exceptions: one class per libbonsai status, all subclasses of BonsaiError."""
from __future__ import annotations

from . import _lib


class BonsaiError(Exception):
    """A libbonsai call failed.

    Attributes:
        status: the bonsai_status (a negative int, e.g. -15 for BONSAI_ERR_CONTEXT_FULL).
        message: the library's explanation (bonsai_last_error() of the failing thread), or the
            status phrase when the library gave none.
        status_name: the short constant phrase of the status ("context full").
    """

    def __init__(self, status: int, message: str = ""):
        self.status = int(status)
        self.status_name = _lib.status_string(self.status)
        self.message = message or self.status_name
        super().__init__(self.message)

    def __str__(self):
        if self.message == self.status_name:
            return self.message
        return "%s (%s)" % (self.message, self.status_name)

    def __reduce__(self):
        return (type(self), (self.status, self.message))


class InvalidArgumentError(BonsaiError, ValueError):
    """BONSAI_ERR_INVALID_ARGUMENT: a bad argument (also a ValueError)."""


class OutOfMemoryError(BonsaiError, MemoryError):
    """BONSAI_ERR_NO_MEMORY: an allocation failed."""


class FileError(BonsaiError, OSError):
    """BONSAI_ERR_IO: the file could not be opened, mapped or read (also an OSError)."""


class InvalidFileError(BonsaiError):
    """Base of the errors that say a file is not a valid GGUF file."""


class BadMagicError(InvalidFileError):
    """BONSAI_ERR_BAD_MAGIC: not a GGUF file."""


class UnsupportedVersionError(InvalidFileError):
    """BONSAI_ERR_UNSUPPORTED_VERSION: a GGUF version other than 2 or 3."""


class TruncatedError(InvalidFileError):
    """BONSAI_ERR_TRUNCATED: the file ends before the data it declares."""


class CorruptError(InvalidFileError):
    """BONSAI_ERR_CORRUPT: inconsistent structure (counts, sizes, offsets...)."""


class UnsupportedTypeError(InvalidFileError):
    """BONSAI_ERR_UNSUPPORTED_TYPE: a tensor type the library cannot compute with."""


class DuplicateError(InvalidFileError):
    """BONSAI_ERR_DUPLICATE: a metadata key or tensor name appears twice."""


class NotFoundError(BonsaiError, LookupError):
    """BONSAI_ERR_NOT_FOUND: no metadata key or tensor of that name (also a LookupError)."""


class TypeMismatchError(BonsaiError, TypeError):
    """BONSAI_ERR_TYPE_MISMATCH: a typed getter on a value of another type."""


class OutOfRangeError(BonsaiError, IndexError):
    """BONSAI_ERR_OUT_OF_RANGE: an index or value outside its valid range."""


class AbortedError(BonsaiError):
    """BONSAI_ERR_ABORTED: a progress/abort callback asked to stop."""


class UnsupportedError(BonsaiError):
    """BONSAI_ERR_UNSUPPORTED: a feature, architecture or backend that is not available."""


class ContextFullError(BonsaiError):
    """BONSAI_ERR_CONTEXT_FULL: the session's context has no room left."""


class BackendError(BonsaiError):
    """BONSAI_ERR_BACKEND: a compute backend (e.g. the GPU) reported an error."""


class InvalidStateError(BonsaiError):
    """BONSAI_ERR_INVALID_STATE: the object is not in a state that allows the call.

    The binding raises it too when a session is used while a generation or a Chat holds it, or
    after close().
    """


_BY_STATUS = {
    _lib.BONSAI_ERR_INVALID_ARGUMENT: InvalidArgumentError,
    _lib.BONSAI_ERR_NO_MEMORY: OutOfMemoryError,
    _lib.BONSAI_ERR_IO: FileError,
    _lib.BONSAI_ERR_BAD_MAGIC: BadMagicError,
    _lib.BONSAI_ERR_UNSUPPORTED_VERSION: UnsupportedVersionError,
    _lib.BONSAI_ERR_TRUNCATED: TruncatedError,
    _lib.BONSAI_ERR_CORRUPT: CorruptError,
    _lib.BONSAI_ERR_UNSUPPORTED_TYPE: UnsupportedTypeError,
    _lib.BONSAI_ERR_DUPLICATE: DuplicateError,
    _lib.BONSAI_ERR_NOT_FOUND: NotFoundError,
    _lib.BONSAI_ERR_TYPE_MISMATCH: TypeMismatchError,
    _lib.BONSAI_ERR_OUT_OF_RANGE: OutOfRangeError,
    _lib.BONSAI_ERR_ABORTED: AbortedError,
    _lib.BONSAI_ERR_UNSUPPORTED: UnsupportedError,
    _lib.BONSAI_ERR_CONTEXT_FULL: ContextFullError,
    _lib.BONSAI_ERR_BACKEND: BackendError,
    _lib.BONSAI_ERR_INVALID_STATE: InvalidStateError,
}


def error_class(status: int) -> type:
    """The exception class for a status (BonsaiError for a status this binding does not know)."""
    return _BY_STATUS.get(int(status), BonsaiError)


def make_error(status: int, message: str | None = None) -> BonsaiError:
    """An exception for a failed call. Without `message`, bonsai_last_error() is read: call it on
    the thread that made the failing call, right after it."""
    if message is None:
        message = _lib.last_error()
    return error_class(status)(status, message)


def check(status: int) -> None:
    """Raise the matching BonsaiError when `status` is not BONSAI_OK."""
    if status != _lib.BONSAI_OK:
        raise make_error(status)
