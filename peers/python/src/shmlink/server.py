"""Servers: a listening socket that hands out endpoints, after a credential check."""

from __future__ import annotations

import os
import select
import socket
import stat
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Optional, Union

from . import _sys
from .endpoint import SAME_USER, Endpoint, PeerFilter, _deadline, _Filter, _seqpacket_socket
from .endpoint import _socket_address
from .errors import CLOSED, TIMED_OUT, InvalidTypeError, InvalidValueError, ShmlinkError, os_error
from .limits import LimitsArg, to_limits

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Server", "listen"]


def _is_stale(address: Union[str, bytes]) -> bool:
    """A socket file nobody listens on any more: connecting to it is refused."""
    try:
        if not stat.S_ISSOCK(os.lstat(address).st_mode):
            return False
    except OSError:
        return False
    # Non-blocking: a live listener with a full queue answers EAGAIN instead of making
    # this wait.
    probe = socket.socket(socket.AF_UNIX,
                          socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        probe.connect(address)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def listen(path: Union[str, bytes, os.PathLike[str]], *, allow: PeerFilter = SAME_USER,
           accept_writable: bool = False, limits: LimitsArg = None,
           max_pending: int = 64) -> Server:
    """Listens at ``path`` (a path starting with a NUL byte is a Linux abstract name).

    The socket file is created with mode 0600 before anyone can connect; a file left by a
    listener that died is replaced, a live one is an error (``EADDRINUSE``). Clients are
    checked against ``allow`` with ``SO_PEERCRED`` before anything is read from them; a
    refused one is shut down unread and counted in :attr:`Server.rejected`. Connections
    are taken from the kernel only when you call :meth:`Server.accept`, so nothing is read
    or mapped before you have the endpoint; ``max_pending`` bounds how many wait in the
    kernel's queue meanwhile (clients beyond it fail to connect with
    ``ERR_SHMLINK_WOULD_BLOCK``). Only frozen regions are accepted from clients unless
    ``accept_writable`` is set.
    """
    op = "listen"
    address = _socket_address(path, op)
    checked_allow = _Filter(allow, "allow")
    checked_limits = to_limits(limits)
    if not isinstance(accept_writable, bool):
        raise InvalidTypeError("accept_writable must be a bool")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int):
        raise InvalidTypeError(f"max_pending must be an int, not {type(max_pending).__name__}")
    if max_pending < 1:
        raise InvalidValueError(f"max_pending must be at least 1, not {max_pending}")
    abstract = (address[:1] in ("\0", b"\0"))
    sock = _seqpacket_socket(op)
    try:
        # Linux creates the socket file with the socket inode's mode, so setting it before
        # bind() leaves no moment in which other users could connect.
        try:
            os.fchmod(sock.fileno(), 0o600)
        except OSError as error:
            raise os_error(op, "fchmod", error, "the socket's mode could not be set") from None
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno == 98 and not abstract and _is_stale(address):  # EADDRINUSE
                try:
                    os.unlink(address)
                except OSError as gone:
                    raise os_error(op, "unlink", gone, "a stale socket file could not be "
                                   "removed") from None
                try:
                    sock.bind(address)
                except OSError as again:
                    raise os_error(op, "bind", again, "another listener owns this path, or its "
                                   "directory is not writable") from None
            else:
                raise os_error(op, "bind", error, "another listener owns this path, or its "
                               "directory is not writable") from None
        try:
            sock.listen(max_pending)
        except OSError as error:
            raise os_error(op, "listen", error, "the socket could not listen") from None
        identity: Optional[tuple[int, int]] = None
        if not abstract:
            try:
                st = os.stat(address)
                identity = (st.st_dev, st.st_ino)
            except OSError:
                identity = None  # removed already; close() then leaves the path alone
    except BaseException:
        sock.close()
        raise
    return Server._start(sock, address, identity, checked_allow, accept_writable,
                         checked_limits)


class Server:
    """A listening socket; :meth:`accept` (or iterate) to get endpoints."""

    _sock: Optional[socket.socket]
    _fd: int
    _address: Union[str, bytes]
    #: (st_dev, st_ino) of the socket file, so that close() removes only its own.
    _identity: Optional[tuple[int, int]]
    _allow: _Filter
    _accept_writable: bool
    _limits: LimitsArg
    _lock: threading.Lock
    _closed: bool
    #: Calls waiting in accept(); the socket is closed when the last one leaves after close().
    _users: int
    _rejected: int

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise InvalidTypeError("create servers with shmlink.listen(path)")

    @classmethod
    def _start(cls, sock: socket.socket, address: Union[str, bytes],
               identity: Optional[tuple[int, int]], allow: _Filter, accept_writable: bool,
               limits: LimitsArg) -> Server:
        self = object.__new__(cls)
        self._sock = sock
        self._fd = sock.fileno()
        self._address = address
        self._identity = identity
        self._allow = allow
        self._accept_writable = accept_writable
        self._limits = limits
        self._lock = threading.Lock()
        self._closed = False
        self._users = 0
        self._rejected = 0
        return self

    @property
    def path(self) -> Union[str, bytes]:
        """The path (or abstract name) it listens at."""
        return self._address

    @property
    def rejected(self) -> int:
        """Connections refused by the ``allow`` filter so far."""
        return self._rejected

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """The listening socket's descriptor (-1 once closed), for ``select``/``selectors``."""
        return -1 if self._closed else self._fd

    def __repr__(self) -> str:
        return f"<shmlink.Server {self._address!r}{' closed' if self._closed else ''}>"

    def accept(self, timeout: Optional[float] = None) -> Endpoint:
        """The next client that passes the ``allow`` filter, waiting up to ``timeout``
        seconds (forever by default; ``ERR_SHMLINK_TIMED_OUT`` when it passes).
        ``ERR_SHMLINK_CLOSED`` once the server is closed, also for a call waiting then."""
        op = "accept"
        deadline = _deadline(timeout)
        with self._lock:
            self._check_open(op)
            self._users += 1
        try:
            while True:
                with self._lock:
                    self._check_open(op)
                    assert self._sock is not None
                    try:
                        client, _ = self._sock.accept()
                    except BlockingIOError:
                        client = None
                    except (InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError as error:
                        raise os_error(op, "accept4", error,
                                       "raise the open-file limit (ulimit -n)") from None
                if client is not None:
                    endpoint = self._admit(client)
                    if endpoint is not None:
                        return endpoint
                    continue
                if not _sys.wait_ready(self._fd, select.POLLIN, deadline):
                    raise ShmlinkError(TIMED_OUT, f"{op}: no client connected within {timeout} s")
        finally:
            with self._lock:
                self._users -= 1
                if not self._users and self._closed:
                    self._release_socket()

    def _admit(self, client: socket.socket) -> Optional[Endpoint]:
        client.set_inheritable(False)
        try:
            _, uid, _ = _sys.peer_credentials(client)
        except OSError:
            uid = -1
        if uid < 0 or not self._allow.admits(uid):
            with self._lock:
                self._rejected += 1
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()
            return None
        try:
            return Endpoint._start(client, self._limits, self._accept_writable)
        except BaseException:
            client.close()
            raise

    def _check_open(self, op: str) -> None:
        if self._closed:
            raise ShmlinkError(CLOSED, f"{op}: the server is closed; listen again to accept "
                                       "connections")

    def __iter__(self) -> Iterator[Endpoint]:
        """Accepted endpoints until the server is closed."""
        while True:
            try:
                yield self.accept()
            except ShmlinkError as error:
                if error.code == CLOSED:
                    return
                raise

    def close(self) -> None:
        """Stops listening and removes the socket file (if it is still this server's).
        Endpoints already accepted stay open; a call waiting in :meth:`accept` raises
        ``ERR_SHMLINK_CLOSED``. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._identity is not None:
                try:
                    st = os.stat(self._address)
                    if (st.st_dev, st.st_ino) == self._identity:
                        os.unlink(self._address)
                except OSError:
                    pass
            if not self._users:
                self._release_socket()

    def _release_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            self.close()
