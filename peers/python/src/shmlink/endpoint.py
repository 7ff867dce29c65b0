"""Endpoints: one side of a connection, over a ``SOCK_SEQPACKET`` Unix socket.

Calls block until they are done, or until their ``timeout`` (in seconds) passes; there is
no timeout unless you ask for one. An endpoint may be shared by threads: one thread can
wait in :meth:`Endpoint.recv` while another sends, and :meth:`Endpoint.close` from any
thread wakes them (they raise ``ERR_SHMLINK_CLOSED``).
"""

from __future__ import annotations

import math
import os
import select
import socket
import threading
import time
import weakref
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _sys, wire
from ._session import END_OF_FILE, Attachment, Session
from .errors import (
    CLOSED,
    PEER_CLOSED,
    PEER_REJECTED,
    TIMED_OUT,
    WOULD_BLOCK,
    InvalidTypeError,
    InvalidValueError,
    ShmlinkError,
    os_error,
)
from .limits import LimitsArg, to_limits
from .message import EndpointStats, Message, PeerCredentials, PeerLimits
from .region import Region, new_realm

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self

    from .server import Server

__all__ = [
    "ANY_USER",
    "SAME_USER",
    "Endpoint",
    "PeerFilter",
    "inherited",
]

#: Peers of this process's effective user, or root (which can reach this process anyway).
SAME_USER = "same-user"
#: Any local user. Say so explicitly: see SECURITY.md.
ANY_USER = "any-user"

#: ``SAME_USER``, ``ANY_USER``, or the uids to accept (root is not implied).
PeerFilter = Union[str, Iterable[int]]

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT

_WRAPPERS = (
    "the usual cause is a wrapper program (a shell script, npx, tsx, `uv run`, `poetry run`) "
    "between the parent and this process, which started this process with descriptors of "
    "its own: spawn the interpreter itself (for example spawnWithEndpoint("
    "'/path/to/venv/bin/python', ['worker.py']))")


# -- arguments --------------------------------------------------------------------------


class _Filter:
    """A checked peer filter: who may connect, or who must be serving."""

    __slots__ = ("uids", "description")

    def __init__(self, value: object, name: str) -> None:
        #: None: this user or root; an empty set: anyone; otherwise exactly these uids.
        self.uids: Optional[frozenset[int]]
        if value == SAME_USER:
            self.uids = None
            self.description = "'same-user' (this user or root)"
        elif value == ANY_USER:
            self.uids = frozenset()
            self.description = "'any-user'"
        elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
            uids = list(value)
            if not all(isinstance(u, int) and not isinstance(u, bool) for u in uids):
                raise InvalidTypeError(f"{name} must list uids as ints")
            if not uids:
                raise InvalidValueError(f"{name} lists no uid; nobody would pass")
            self.uids = frozenset(uids)
            self.description = f"uids {sorted(uids)}"
        else:
            raise InvalidTypeError(f"{name} is 'same-user', 'any-user' or a collection of uids, "
                                   f"not {value!r}")

    def admits(self, uid: int) -> bool:
        if self.uids is None:
            return uid == 0 or uid == os.geteuid()
        return not self.uids or uid in self.uids


def _deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidTypeError(f"timeout must be a number of seconds or None, not "
                               f"{type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidValueError(f"timeout must be >= 0 seconds, not {timeout}")
    return time.monotonic() + timeout


def _payload_view(payload: object) -> Union[bytes, memoryview]:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    try:
        view = memoryview(payload)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidTypeError(f"payload must be bytes, a str or a buffer, not "
                               f"{type(payload).__name__}") from None
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise InvalidValueError("payload must be C-contiguous")
        view = view.cast("B")
    return view


def _region_list(value: object, name: str) -> list[Region]:
    if isinstance(value, Region) or not isinstance(value, Iterable) or isinstance(
            value, (str, bytes)):
        raise InvalidTypeError(f"{name} must be a sequence of Regions, not "
                               f"{type(value).__name__}")
    regions = list(value)
    for region in regions:
        if not isinstance(region, Region):
            raise InvalidTypeError(f"{name} holds Regions only, not {type(region).__name__}")
    return regions


def _attachments(regions: object, transfer: object) -> list[Attachment]:
    """``regions`` in order, then the regions of ``transfer`` that are not among them; a
    region in both is transferred in its place in ``regions``."""
    shared = _region_list(regions, "regions")
    moved = _region_list(transfer, "transfer")
    moved_ids = {id(region) for region in moved}
    shared_ids = {id(region) for region in shared}
    everything = shared + [region for region in moved if id(region) not in shared_ids]
    return [(region, id(region) in moved_ids) for region in everything]


def _socket_address(path: object, op: str) -> Union[str, bytes]:
    """A path, or a Linux abstract name when it starts with a NUL byte."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, (str, bytes)):
        raise InvalidTypeError(f"{op}: path must be a str, bytes or a path, not "
                               f"{type(path).__name__}")
    encoded = path.encode() if isinstance(path, str) else path
    if not encoded:
        raise InvalidValueError(f"{op}: path is empty")
    if len(encoded) > 107:
        raise InvalidValueError(f"{op}: socket paths hold at most 107 bytes, this one has "
                                f"{len(encoded)}; use a shorter path or an abstract name")
    return path


def _seqpacket_socket(op: str) -> socket.socket:
    try:
        return socket.socket(socket.AF_UNIX,
                             socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    except OSError as error:
        raise os_error(op, "socket", error, "raise the open-file limit (ulimit -n)") from None


def _claim_socket(fd: int, op: str) -> socket.socket:
    """Takes over descriptor ``fd`` once it is known to be a ``SOCK_SEQPACKET`` socket;
    anything else is refused (``ERR_SHMLINK_INVALID_ARG``) and left open."""
    if fd <= 2:
        raise InvalidValueError(f"{op}: descriptor {fd} is stdin, stdout or stderr, not a socket")
    try:
        os.get_inheritable(fd)
    except OSError as error:
        raise InvalidValueError(f"{op}: descriptor {fd} is not open in this process",
                                syscall="fcntl(F_GETFD)", errno=error.errno) from None
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise InvalidValueError(f"{op}: descriptor {fd} is not a socket (it is "
                                f"{_sys.describe_fd(fd)})", syscall="getsockopt(SO_TYPE)",
                                errno=error.errno) from None
    kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if sock.family != socket.AF_UNIX or kind != socket.SOCK_SEQPACKET:
        sock.detach()
        family = getattr(sock.family, "name", sock.family)
        names = {int(socket.SOCK_STREAM): "SOCK_STREAM", int(socket.SOCK_DGRAM): "SOCK_DGRAM"}
        name = names.get(kind, f"type {kind}")
        raise InvalidValueError(f"{op}: descriptor {fd} is a {family} {name} socket, not an "
                                "AF_UNIX SOCK_SEQPACKET one; create it with Endpoint.pair()")
    os.set_inheritable(fd, False)
    return sock


def _abandon(flag: Any, sock: socket.socket) -> None:
    """An endpoint garbage-collected without close(): the connection ends."""
    flag.ended = True
    sock.close()


class Endpoint:
    """One end of a connection.

    Get one with :meth:`pair`, :meth:`connect`, :func:`~shmlink.listen` (a server's
    :meth:`~shmlink.Server.accept`), :func:`inherited` or :meth:`from_fd`. Each side sends
    its HELLO at once; the peer's HELLO is read by the first send or receive (or by
    :meth:`handshake`).
    """

    _sock: Optional[socket.socket]
    _fd: int
    _lock: threading.RLock
    _session: Session
    #: Why the connection ended, once it has.
    _ended: Optional[ShmlinkError]
    #: Calls in progress; the socket is closed when the last one leaves after close().
    _users: int
    _release_pending: bool
    _rx: bytearray
    _rx_view: memoryview
    _ancillary: int
    _self_ref: weakref.ref[Endpoint]
    _finalizer: weakref.finalize[Any, Any]

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise InvalidTypeError("create endpoints with Endpoint.pair(), Endpoint.connect(), "
                               "shmlink.listen(), shmlink.inherited() or Endpoint.from_fd()")

    @classmethod
    def _start(cls, sock: socket.socket, limits: LimitsArg, accept_writable: bool,
               realm: int = 0) -> Endpoint:
        """Wraps a connected socket (taking it over) and sends this side's HELLO."""
        checked = to_limits(limits)
        if not isinstance(accept_writable, bool):
            raise InvalidTypeError("accept_writable must be a bool")
        self = object.__new__(cls)
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._lock = threading.RLock()
        self._session = Session(checked, accept_writable, realm)
        self._ended = None
        self._users = 0
        self._release_pending = False
        self._rx = bytearray(wire.max_frame_len(checked.announced))
        self._rx_view = memoryview(self._rx)
        self._ancillary = _sys.control_buffer_size(checked.max_regions)
        self._self_ref = weakref.ref(self)
        self._finalizer = weakref.finalize(self, _abandon, self._session.end_flag, sock)
        hello = wire.hello_frame(checked.max_regions, checked.max_payload)
        while True:
            try:
                sock.sendmsg([hello], [], _sys.MSG_NOSIGNAL)
                break
            except (BrokenPipeError, ConnectionResetError):
                # The peer is already gone; the first receive reports what it sent before
                # leaving, then its end-of-file (PROTOCOL.md §3 rule 4).
                break
            except BlockingIOError:
                self._wait(_POLLOUT, None)
            except OSError as error:
                self._finalizer.detach()  # the socket stays the caller's
                if error.errno == 107:  # ENOTCONN
                    raise InvalidValueError("the socket is not connected", syscall="sendmsg",
                                            errno=error.errno) from None
                raise os_error("Endpoint", "sendmsg", error,
                               "the HELLO could not be sent") from None
        return self

    # -- ways to get one ------------------------------------------------------------------

    @classmethod
    def pair(cls, *, accept_writable: bool = True, limits: LimitsArg = None
             ) -> tuple[Endpoint, Endpoint]:
        """A connected pair of endpoints, for a thread, or for a child process you start
        yourself (pass one end's :meth:`fileno` down and close it here).

        The second end resolves regions as another process would: a region sent from
        one end to the other is a separate :class:`Region` object there.
        """
        try:
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        except OSError as error:
            raise os_error("Endpoint.pair", "socketpair", error,
                           "raise the open-file limit (ulimit -n)") from None
        try:
            first = cls._start(a, limits, accept_writable)
        except BaseException:
            a.close()
            b.close()
            raise
        try:
            second = cls._start(b, limits, accept_writable, new_realm())
        except BaseException:
            first.close()
            b.close()
            raise
        return first, second

    @classmethod
    def connect(cls, path: Union[str, bytes, os.PathLike[str]], *, server: PeerFilter = SAME_USER,
                accept_writable: bool = False, limits: LimitsArg = None) -> Endpoint:
        """Connects to a :func:`~shmlink.listen` server at ``path`` (a path starting with a
        NUL byte is a Linux abstract name).

        ``server`` says who must be serving, checked with ``SO_PEERCRED`` before anything
        is sent (``ERR_SHMLINK_PEER_REJECTED``). Only frozen regions are accepted from the
        server unless ``accept_writable`` is set. Connecting does not wait for the server's
        HELLO; the first send or receive (or :meth:`handshake`) does.
        """
        op = "Endpoint.connect"
        address = _socket_address(path, op)
        wanted = _Filter(server, "server")
        limits = to_limits(limits)
        sock = _seqpacket_socket(op)
        try:
            try:
                sock.connect(address)
            except BlockingIOError as error:
                raise ShmlinkError(WOULD_BLOCK, f"{op}: connect failed: the listener's backlog "
                                                "is full; retry after it accepts",
                                   syscall="connect", errno=error.errno) from None
            except OSError as error:
                raise os_error(op, "connect", error,
                               "is a shmlink listener running at this path?") from None
            try:
                pid, uid, _ = _sys.peer_credentials(sock)
            except OSError as error:
                raise os_error(op, "getsockopt(SO_PEERCRED)", error,
                               "the server's credentials could not be read") from None
            if not wanted.admits(uid):
                raise ShmlinkError(
                    PEER_REJECTED,
                    f"{op}: the server runs as uid {uid} (pid {pid}), which the server filter "
                    f"does not allow ({wanted.description}); the connection was closed")
            return cls._start(sock, limits, accept_writable)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def from_fd(cls, fd: Union[int, socket.socket], *, accept_writable: bool = True,
                limits: LimitsArg = None) -> Endpoint:
        """Takes over a connected ``SOCK_SEQPACKET`` socket (a descriptor number or a
        :class:`socket.socket`), such as one a parent process passed down; it is closed
        with the endpoint. Anything else is refused with ``ERR_SHMLINK_INVALID_ARG`` and
        left open."""
        op = "Endpoint.from_fd"
        limits = to_limits(limits)
        if isinstance(fd, socket.socket):
            fd = fd.detach()
        elif not isinstance(fd, int) or isinstance(fd, bool):
            raise InvalidTypeError(f"{op}: fd must be an int or a socket, not "
                                   f"{type(fd).__name__}")
        sock = _claim_socket(fd, op)
        try:
            return cls._start(sock, limits, accept_writable)
        except BaseException:
            sock.detach()  # refused: the descriptor stays open, as it came
            raise

    @classmethod
    def inherited(cls, *, accept_writable: bool = True, limits: LimitsArg = None) -> Endpoint:
        """The endpoint a parent passed down: see :func:`shmlink.inherited`."""
        return inherited(accept_writable=accept_writable, limits=limits)

    @staticmethod
    def listen(path: Union[str, bytes, os.PathLike[str]], *, allow: PeerFilter = SAME_USER,
               accept_writable: bool = False, limits: LimitsArg = None,
               max_pending: int = 64) -> Server:
        """Listens at ``path``: see :func:`shmlink.listen`."""
        from .server import listen

        return listen(path, allow=allow, accept_writable=accept_writable, limits=limits,
                      max_pending=max_pending)

    # -- state ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection is over (closed here, by the peer, or after an error)."""
        return self._ended is not None

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed), for ``select``/``poll``/``selectors``."""
        return self._fd if self._sock is not None and self._ended is None else -1

    @property
    def peer(self) -> PeerCredentials:
        """The peer's process, user and group ids (for a socket pair: those of its creator)."""
        with self._lock:
            self._check_open("Endpoint.peer")
            assert self._sock is not None
            try:
                return PeerCredentials(*_sys.peer_credentials(self._sock))
            except OSError as error:
                raise os_error("Endpoint.peer", "getsockopt(SO_PEERCRED)", error,
                               "the peer's credentials could not be read") from None

    @property
    def peer_limits(self) -> Optional[PeerLimits]:
        """What the peer announced in its HELLO, once it has been read."""
        peer = self._session.peer
        return None if peer is None else PeerLimits(*peer)

    def region_id(self, region: Region) -> Optional[int]:
        """This side's id for ``region`` on this connection while the peer has it bound
        (the id the peer sees)."""
        if not isinstance(region, Region):
            raise InvalidTypeError(f"region must be a Region, not {type(region).__name__}")
        with self._lock:
            return self._session.own_id(region)

    def stats(self) -> EndpointStats:
        """Traffic and binding counters, and the limits in force."""
        with self._lock:
            s = self._session
            return EndpointStats(s.messages_out, s.bytes_out, s.messages_in, s.bytes_in,
                                 s.own_bound, s.peer_bound, s.held_bytes, s.queued_releases,
                                 s.limits)

    def __repr__(self) -> str:
        state = "closed" if self._ended is not None else f"fd {self._fd}"
        return f"<shmlink.Endpoint {state}>"

    # -- sending --------------------------------------------------------------------------

    def send(self, payload: Union[Buffer, str] = b"", *, regions: Sequence[Region] = (),
             transfer: Sequence[Region] = (), timeout: Optional[float] = None) -> None:
        """Sends ``payload`` (bytes, a str as UTF-8, or any buffer) with regions attached.

        ``regions`` are attached in order, and both sides keep access. Regions in
        ``transfer`` are handed over: unusable here until the peer sends them back; one
        also in ``regions`` keeps its place there, the others follow. A transferred region
        may be attached once only. Waits for room in the socket (and for the peer's HELLO)
        up to ``timeout`` seconds (forever by default); a send that fails or times out has
        sent nothing and changed nothing.
        """
        op = "send"
        data = _payload_view(payload)
        attachments = _attachments(regions, transfer)
        deadline = _deadline(timeout)
        self._enter(op)
        try:
            with self._lock:
                self._check_open(op)
                self._session.check_message(op, len(data), attachments)
            self._await_handshake(op, deadline, timeout)
            while True:
                with self._lock:
                    self._check_open(op)
                    if self._flush_releases(op):
                        session = self._session
                        session.check_message(op, len(data), attachments)
                        frame, files, planned = session.encode_message(op, len(data), attachments)
                        try:
                            sent = self._send_record(op, [frame, data] if len(data) else [frame],
                                                     [file.fd for file in files])
                        finally:
                            for file in files:
                                file.release()
                        if sent:
                            session.message_sent(len(data), attachments, planned, self._self_ref)
                            return
                if not self._wait(_POLLOUT, deadline):
                    raise ShmlinkError(TIMED_OUT, f"{op}: the peer accepted nothing within "
                                                  f"{timeout} s; the message was not sent")
        finally:
            self._leave()

    def release(self, region: Region) -> bool:
        """Tells the peer this side will not refer to ``region`` again (it may unmap it);
        the next send passes it anew, under a new id. False when the peer did not have
        it bound on this connection."""
        if not isinstance(region, Region):
            raise InvalidTypeError(f"region must be a Region, not {type(region).__name__}")
        with self._lock:
            if self._ended is not None or not self._session.release(region):
                return False
            self._flush_releases("release")
            return True

    def _region_closed(self, region: Region) -> None:
        """A region this endpoint bound was closed: release it (the peer may unmap it)."""
        with self._lock:
            if self._ended is None and self._session.release(region):
                self._flush_releases("Region.close")

    def _flush_releases(self, op: str) -> bool:
        """Sends the RELEASE frames due, without waiting; False while some must wait for room."""
        session = self._session
        while True:
            due = session.release_frame()
            if due is None:
                return True
            frame, count = due
            try:
                if not self._send_record(op, [frame], [], end_on_failure=False):
                    return False
            except ShmlinkError:
                # The peer is gone, so nothing is left to release; what it sent before
                # leaving is still read, then its end-of-file (PROTOCOL.md §1 rule 6).
                session.drop_releases()
                return True
            session.release_sent(count)

    def _send_record(self, op: str, buffers: list[Any], fds: list[int],
                     end_on_failure: bool = True) -> bool:
        """Puts one record in the socket; False when there is no room. A failure ends the
        connection (unless told not to) and raises."""
        assert self._sock is not None
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
        try:
            self._sock.sendmsg(buffers, ancillary, _sys.MSG_NOSIGNAL)
            return True
        except BlockingIOError:
            return False
        except (BrokenPipeError, ConnectionResetError, OSError) as error:
            if isinstance(error, (BrokenPipeError, ConnectionResetError)) or error.errno == 107:
                failure = ShmlinkError(PEER_CLOSED, f"{op}: the peer closed the connection")
            elif error.errno == 109:  # ETOOMANYREFS
                failure = os_error(op, "sendmsg", error, "too many descriptors are in flight; "
                                   "wait until the peer has received earlier messages")
            else:
                failure = os_error(op, "sendmsg", error,
                                   "the message could not be sent; the connection was closed")
            if end_on_failure:
                self._end(failure)
            raise failure from None

    # -- receiving ------------------------------------------------------------------------

    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message, waiting up to ``timeout`` seconds (forever by default;
        ``ERR_SHMLINK_TIMED_OUT`` when it passes, 0 takes only what is there already).

        Raises ``ERR_SHMLINK_PEER_CLOSED`` at end-of-file, after every message the peer
        sent before closing, or the code of the rule a peer broke (the connection is then
        closed, and later calls raise ``ERR_SHMLINK_CLOSED``).
        """
        op = "recv"
        deadline = _deadline(timeout)
        self._enter(op)
        try:
            while True:
                with self._lock:
                    self._check_open(op)
                    self._flush_releases(op)
                    received = self._read_record(op)
                    if isinstance(received, Message):
                        return received
                    if received is not None:
                        continue
                if not self._wait(_POLLIN, deadline):
                    raise ShmlinkError(TIMED_OUT, f"{op}: nothing arrived within {timeout} s")
        finally:
            self._leave()

    def __iter__(self) -> Iterator[Message]:
        """Messages until the connection ends; ends quietly when either side closes it
        (``ERR_SHMLINK_PEER_CLOSED``, ``ERR_SHMLINK_CLOSED``). Leaving the loop leaves the
        endpoint open."""
        while True:
            try:
                message = self.recv()
            except ShmlinkError as error:
                if error.code in (PEER_CLOSED, CLOSED):
                    return
                raise
            yield message

    def handshake(self, timeout: Optional[float] = None) -> PeerLimits:
        """Waits for the peer's HELLO (if not read yet) and returns the limits it announced."""
        op = "handshake"
        deadline = _deadline(timeout)
        self._enter(op)
        try:
            self._await_handshake(op, deadline, timeout)
        finally:
            self._leave()
        peer = self._session.peer
        assert peer is not None
        return PeerLimits(*peer)

    def _await_handshake(self, op: str, deadline: Optional[float],
                         timeout: Optional[float]) -> None:
        # Nothing but a HELLO may be sent before the peer's HELLO is known (PROTOCOL.md §3
        # rule 4). The first record must be that HELLO, so reading it here skips no message.
        while True:
            with self._lock:
                self._check_open(op)
                if self._session.peer is not None:
                    return
                if self._read_record(op) is not None:
                    continue
            if not self._wait(_POLLIN, deadline):
                raise ShmlinkError(TIMED_OUT, f"{op}: the peer's HELLO did not arrive within "
                                              f"{timeout} s")

    def _read_record(self, op: str) -> Any:
        """Receives and judges one record: a Message, another Inbound, or None when there
        is none. Failures and end-of-file end the connection and raise."""
        assert self._sock is not None
        reset_seen = False
        while True:
            try:
                nbytes, ancillary, flags, _ = self._sock.recvmsg_into(
                    [self._rx_view], self._ancillary, _sys.MSG_CMSG_CLOEXEC)
                break
            except BlockingIOError:
                return None
            except ConnectionResetError as error:
                # A peer that closes with records of ours unread makes Linux report
                # ECONNRESET once, ahead of what it sent before (PROTOCOL.md §1 rule 6).
                if not reset_seen:
                    reset_seen = True
                    continue
                failure = os_error(op, "recvmsg", error,
                                   "the socket failed; the connection was closed")
                self._end(failure)
                raise failure from None
            except OSError as error:
                failure = os_error(op, "recvmsg", error,
                                   "the socket failed; the connection was closed")
                self._end(failure)
                raise failure from None
        fds = _sys.fds_from_ancillary(ancillary) if ancillary else []
        data_truncated, control_truncated = _sys.truncated(flags)
        try:
            received = self._session.handle_record(self._rx_view[:nbytes], fds, data_truncated,
                                                   control_truncated)
        except ShmlinkError as error:
            if error.code != CLOSED:
                error.message = f"{op}: {error.message}"
            self._end(error)
            raise
        if received is END_OF_FILE:
            failure = ShmlinkError(PEER_CLOSED, f"{op}: the peer closed the connection")
            self._end(failure)
            raise failure
        return received

    # -- waiting, ending ----------------------------------------------------------------

    def _wait(self, events: int, deadline: Optional[float]) -> bool:
        """Waits until the socket is ready for ``events``; False when ``deadline`` passed."""
        return _sys.wait_ready(self._fd, events, deadline)

    def _enter(self, op: str) -> None:
        with self._lock:
            self._check_open(op)
            self._users += 1

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if not self._users and self._release_pending:
                self._release_socket()

    def _check_open(self, op: str) -> None:
        ended = self._ended
        if ended is None:
            return
        if ended.code == PEER_CLOSED:
            raise ShmlinkError(PEER_CLOSED, f"{op}: the peer closed the connection")
        if ended.code == CLOSED:
            raise ShmlinkError(CLOSED, f"{op}: the endpoint was closed")
        raise ShmlinkError(CLOSED, f"{op}: the connection was closed after an earlier error "
                                   f"({ended.code}); create or accept a new endpoint")

    def _end(self, reason: ShmlinkError) -> None:
        """The connection is over: the peer reads end-of-file, both tables are dropped."""
        with self._lock:
            if self._ended is None:
                self._ended = reason
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._session.end()

    def _release_socket(self) -> None:
        self._release_pending = False
        sock, self._sock = self._sock, None
        if sock is not None:
            self._finalizer.detach()
            sock.close()

    def close(self) -> None:
        """Closes the connection: the peer sees it end, and calls waiting in other threads
        raise ``ERR_SHMLINK_CLOSED``. Regions received earlier stay valid; regions
        transferred to the peer can be taken back with :meth:`Region.reclaim`."""
        with self._lock:
            if self._sock is None:
                return
            self._end(ShmlinkError(CLOSED, "the endpoint was closed"))
            if self._users:
                self._release_pending = True  # the last waiting call closes the socket
            else:
                self._release_socket()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def inherited(*, accept_writable: bool = True, limits: LimitsArg = None) -> Endpoint:
    """In a process started by Node's ``spawnWithEndpoint()`` (or any parent that passes a
    socket the same way): the endpoint its parent passed down.

    The environment variable ``SHMLINK_FD`` names the descriptor; it is removed once the
    endpoint is made, so that processes this one starts do not look for it. A peer this
    process's parent started is trusted with writable regions unless ``accept_writable``
    is False. Raises ``ERR_SHMLINK_INVALID_ARG`` when ``SHMLINK_FD`` is unset, not a
    number, or names anything but the socket the parent passed down.
    """
    op = "shmlink.inherited"
    value = os.environ.get("SHMLINK_FD")
    if value is None:
        raise InvalidValueError(
            f"{op}: SHMLINK_FD is not set: this process was not started by spawnWithEndpoint() "
            "(or a parent that passes a socket the same way)")
    try:
        fd = int(value.strip())
    except ValueError:
        fd = -1
    if fd <= 2:
        raise InvalidValueError(
            f"{op}: SHMLINK_FD is {value!r}, which is not a descriptor number above 2; the "
            "parent must set it to the number of the socket it passed down")
    limits = to_limits(limits)
    try:
        sock = _claim_socket(fd, op)
    except ShmlinkError as error:
        detail = error.message.split(": ", 1)[-1]
        raise InvalidValueError(
            f"{op}: SHMLINK_FD={fd} does not name the socket the parent passed down: {detail}; "
            f"{_WRAPPERS}", syscall=error.syscall, errno=error.errno) from None
    try:
        endpoint = Endpoint._start(sock, limits, accept_writable)
    except BaseException:
        sock.close()
        raise
    os.environ.pop("SHMLINK_FD", None)
    return endpoint

