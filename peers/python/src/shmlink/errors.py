"""Errors: every failure is a :class:`ShmlinkError` whose ``code`` is an ``ERR_SHMLINK_*`` string.

The codes are the ones every shmlink library uses (``docs/ERRORS.md`` in the repository
lists them, in this order, with what to do about each). Test for codes, not messages:
messages may be reworded, codes will not change.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import NoReturn, Optional

__all__ = [
    "CLOSED",
    "PEER_CLOSED",
    "PEER_REJECTED",
    "WOULD_BLOCK",
    "TIMED_OUT",
    "PROTOCOL_VIOLATION",
    "PEER_INCOMPATIBLE",
    "LIMIT_EXCEEDED",
    "REGION_UNSEALED",
    "REGION_SIZE_MISMATCH",
    "REGION_NOT_MEMFD",
    "REGION_NOT_SHMEM",
    "REGION_WRITABLE",
    "REGION_TRANSFERRED",
    "REGION_FROZEN",
    "REGION_BUSY",
    "REGION_CLOSED",
    "REGION_TOO_LARGE",
    "TOO_MANY_REGIONS",
    "PAYLOAD_TOO_LARGE",
    "FDS_TRUNCATED",
    "INVALID_ARG",
    "ZERO_COPY_UNAVAILABLE",
    "UNSUPPORTED",
    "RUNTIME",
    "OS",
    "BINARY_NOT_FOUND",
    "ERROR_CODES",
    "ShmlinkError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "InvalidValueError",
    "is_shmlink_error",
]

#: The endpoint (or server) was closed, or closed itself after a failure it reported.
CLOSED = "ERR_SHMLINK_CLOSED"
#: The peer closed the connection (or its process ended).
PEER_CLOSED = "ERR_SHMLINK_PEER_CLOSED"
#: The peer's credentials (``SO_PEERCRED``) do not pass the filter.
PEER_REJECTED = "ERR_SHMLINK_PEER_REJECTED"
#: A connect found the listener's backlog full.
WOULD_BLOCK = "ERR_SHMLINK_WOULD_BLOCK"
#: A call with a ``timeout`` ran out of time.
TIMED_OUT = "ERR_SHMLINK_TIMED_OUT"
#: The peer broke a rule of the protocol; the connection was closed.
PROTOCOL_VIOLATION = "ERR_SHMLINK_PROTOCOL_VIOLATION"
#: The peer is not a shmlink peer of this protocol version; the connection was closed.
PEER_INCOMPATIBLE = "ERR_SHMLINK_PEER_INCOMPATIBLE"
#: The peer went over a limit this side sets; the connection was closed.
LIMIT_EXCEEDED = "ERR_SHMLINK_LIMIT_EXCEEDED"
#: The peer sent a memory file without the seals the protocol requires.
REGION_UNSEALED = "ERR_SHMLINK_REGION_UNSEALED"
#: A region's file size differs from the size its descriptor states.
REGION_SIZE_MISMATCH = "ERR_SHMLINK_REGION_SIZE_MISMATCH"
#: The peer sent a descriptor that is not a sealable memory file.
REGION_NOT_MEMFD = "ERR_SHMLINK_REGION_NOT_MEMFD"
#: The peer sent a memory file that is not on shmem (a hugetlbfs memfd).
REGION_NOT_SHMEM = "ERR_SHMLINK_REGION_NOT_SHMEM"
#: A peer not trusted with writable memory sent a region that is not frozen.
REGION_WRITABLE = "ERR_SHMLINK_REGION_WRITABLE"
#: The region was transferred to a peer and has not come back.
REGION_TRANSFERRED = "ERR_SHMLINK_REGION_TRANSFERRED"
#: A write to a frozen region.
REGION_FROZEN = "ERR_SHMLINK_REGION_FROZEN"
#: ``freeze()`` while a peer maps the region writable.
REGION_BUSY = "ERR_SHMLINK_REGION_BUSY"
#: The region was closed.
REGION_CLOSED = "ERR_SHMLINK_REGION_CLOSED"
#: A copy larger than one buffer can hold (the Node runtime's limit; unused in Python).
REGION_TOO_LARGE = "ERR_SHMLINK_REGION_TOO_LARGE"
#: More regions attached to one message than the peer accepts.
TOO_MANY_REGIONS = "ERR_SHMLINK_TOO_MANY_REGIONS"
#: An inline payload over the peer's limit.
PAYLOAD_TOO_LARGE = "ERR_SHMLINK_PAYLOAD_TOO_LARGE"
#: The kernel dropped file descriptors from a received message.
FDS_TRUNCATED = "ERR_SHMLINK_FDS_TRUNCATED"
#: An argument of the wrong type or out of range, or a bad ``SHMLINK_FD``.
INVALID_ARG = "ERR_SHMLINK_INVALID_ARG"
#: Zero-copy views refused by the runtime (Electron; unused in Python).
ZERO_COPY_UNAVAILABLE = "ERR_SHMLINK_ZERO_COPY_UNAVAILABLE"
#: The operating system lacks what shmlink needs (anything but Linux).
UNSUPPORTED = "ERR_SHMLINK_UNSUPPORTED"
#: The JavaScript runtime refused a call (Node only; unused in Python).
RUNTIME = "ERR_SHMLINK_RUNTIME"
#: Any other failed system call: ``syscall`` and ``errno`` say which.
OS = "ERR_SHMLINK_OS"
#: The Node package found no native binary (Node only; unused in Python).
BINARY_NOT_FOUND = "ERR_SHMLINK_BINARY_NOT_FOUND"

#: Every code, in the order of ``docs/ERRORS.md``.
ERROR_CODES: tuple[str, ...] = (
    CLOSED,
    PEER_CLOSED,
    PEER_REJECTED,
    WOULD_BLOCK,
    TIMED_OUT,
    PROTOCOL_VIOLATION,
    PEER_INCOMPATIBLE,
    LIMIT_EXCEEDED,
    REGION_UNSEALED,
    REGION_SIZE_MISMATCH,
    REGION_NOT_MEMFD,
    REGION_NOT_SHMEM,
    REGION_WRITABLE,
    REGION_TRANSFERRED,
    REGION_FROZEN,
    REGION_BUSY,
    REGION_CLOSED,
    REGION_TOO_LARGE,
    TOO_MANY_REGIONS,
    PAYLOAD_TOO_LARGE,
    FDS_TRUNCATED,
    INVALID_ARG,
    ZERO_COPY_UNAVAILABLE,
    UNSUPPORTED,
    RUNTIME,
    OS,
    BINARY_NOT_FOUND,
)


class ShmlinkError(Exception):
    """A failed shmlink operation.

    ``code`` is one of the ``ERR_SHMLINK_*`` strings; ``message`` says what happened and
    what to do. When a system call failed, ``syscall`` names it (``"sendmsg"``) and
    ``errno`` is its error number, as in :class:`OSError`.
    """

    code: str
    message: str
    syscall: Optional[str]
    errno: Optional[int]

    def __init__(
        self,
        code: str,
        message: str,
        *,
        syscall: Optional[str] = None,
        errno: Optional[int] = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.syscall = syscall
        self.errno = errno

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        extra = f", syscall={self.syscall!r}, errno={self.errno!r}" if self.syscall else ""
        return f"{type(self).__name__}({self.code!r}, {self.message!r}{extra})"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.code, self.message, self.syscall, self.errno))


def _rebuild(
    cls: type[ShmlinkError],
    code: str,
    message: str,
    syscall: Optional[str],
    errno: Optional[int],
) -> ShmlinkError:
    return cls(code, message, syscall=syscall, errno=errno)


class InvalidArgumentError(ShmlinkError):
    """``ERR_SHMLINK_INVALID_ARG``: an argument was refused before any system call."""

    def __init__(self, message: str, *, syscall: Optional[str] = None,
                 errno: Optional[int] = None) -> None:
        super().__init__(INVALID_ARG, message, syscall=syscall, errno=errno)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message,), {"syscall": self.syscall, "errno": self.errno})


class InvalidTypeError(InvalidArgumentError, TypeError):
    """An argument of the wrong type (``ERR_SHMLINK_INVALID_ARG``, also a :class:`TypeError`)."""


class InvalidValueError(InvalidArgumentError, ValueError):
    """An argument out of range (``ERR_SHMLINK_INVALID_ARG``, also a :class:`ValueError`)."""


def is_shmlink_error(error: object) -> bool:
    """Whether ``error`` came from shmlink (it has an ``ERR_SHMLINK_*`` code)."""
    code = getattr(error, "code", None)
    return isinstance(error, BaseException) and isinstance(code, str) and code.startswith(
        "ERR_SHMLINK_")


def errno_name(number: Optional[int]) -> str:
    """``EMFILE (too many open files)`` for an errno value."""
    if number is None:
        return "an unknown error"
    name = _errno.errorcode.get(number, f"errno {number}")
    return f"{name} ({os.strerror(number).lower()})"


def os_error(
    op: str,
    syscall: str,
    error: OSError,
    hint: str,
    code: str = OS,
) -> ShmlinkError:
    """The error for system call ``syscall`` failing with ``error`` during ``op``."""
    return ShmlinkError(
        code,
        f"{op}: {syscall} failed: {errno_name(error.errno)}; {hint}",
        syscall=syscall,
        errno=error.errno,
    )


def raise_os(op: str, syscall: str, error: OSError, hint: str) -> NoReturn:
    raise os_error(op, syscall, error, hint) from None
