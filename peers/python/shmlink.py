"""shmlink wire protocol, version 1, in plain Python (docs/PROTOCOL.md).

A connection is an AF_UNIX SOCK_SEQPACKET socket; each record is one frame, and memory
travels as sealed memfd regions whose descriptors ride along in SCM_RIGHTS. This module
implements one endpoint of such a connection with the standard library only:

* `Region`: a sealed memory file mapped into this process (PROTOCOL.md §5.1).
* `Endpoint`: the HELLO handshake, sending MESSAGE and RELEASE frames with the id
  bookkeeping of §5.2, and receiving with every receiver check of §5.3 and §7.
* `ShmlinkError`: every protocol failure, with `code` set to the ERR_SHMLINK_* name of §7.

Endpoints are not thread-safe: one thread uses an endpoint at a time.

Run as a script, this module is the interop peer of peers/SCENARIO.md (see peer.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import socket
import stat
import struct
import time
import weakref
from array import array
from collections.abc import Iterator, Sequence
from typing import NamedTuple

__all__ = [
    "CLOSED", "FDS_TRUNCATED", "PEER_CLOSED", "PEER_INCOMPATIBLE", "PROTOCOL_VIOLATION",
    "REGION_NOT_MEMFD", "REGION_SIZE_MISMATCH", "REGION_UNSEALED", "TIMEOUT",
    "FROZEN", "NEW", "TRANSFER", "MAX_PAYLOAD", "MAX_REGIONS", "HELLO_FRAME",
    "DEFAULT_TIMEOUT", "Attached", "Endpoint", "Message", "Region", "ShmlinkError",
    "connect_socket",
]

# Failure codes of PROTOCOL.md §7 (and SCENARIO.md for end-of-file).
PROTOCOL_VIOLATION = "ERR_SHMLINK_PROTOCOL_VIOLATION"
PEER_INCOMPATIBLE = "ERR_SHMLINK_PEER_INCOMPATIBLE"
REGION_NOT_MEMFD = "ERR_SHMLINK_REGION_NOT_MEMFD"
REGION_UNSEALED = "ERR_SHMLINK_REGION_UNSEALED"
REGION_SIZE_MISMATCH = "ERR_SHMLINK_REGION_SIZE_MISMATCH"
FDS_TRUNCATED = "ERR_SHMLINK_FDS_TRUNCATED"
PEER_CLOSED = "ERR_SHMLINK_PEER_CLOSED"
# Local conditions the documents give no code for: an operation on a connection that has
# already failed or been closed, and a peer that stayed silent past the timeout.
CLOSED = "ERR_SHMLINK_CLOSED"
TIMEOUT = "ERR_SHMLINK_TIMEOUT"

KIND_HELLO, KIND_MESSAGE, KIND_RELEASE = 1, 2, 3
NEW, FROZEN, TRANSFER = 1, 2, 4
_KNOWN_FLAGS = NEW | FROZEN | TRANSFER

MAGIC = b"SHMLINK\0"
VERSION = 1
# What this side announces (SCENARIO.md: every peer announces 32 and 65536).
MAX_REGIONS = 32
MAX_PAYLOAD = 65536
# Bounds on what a peer may announce (§3.2); 253 is the kernel's SCM_MAX_FD.
_REGIONS_LIMIT = 253
_PAYLOAD_LIMIT = 65536

_HEADER = struct.Struct("<BBHI")        # kind, flags, region_count, payload_len
_DESCRIPTOR = struct.Struct("<IIQ")     # id, flags, size
_HELLO_BODY = struct.Struct("<8sHHI")   # magic, version, max_regions, max_payload
_MAGIC_VERSION = struct.Struct("<8sH")

HELLO_FRAME = _HEADER.pack(KIND_HELLO, 0, 0, _HELLO_BODY.size) + _HELLO_BODY.pack(
    MAGIC, VERSION, MAX_REGIONS, MAX_PAYLOAD)

# The largest record our limits allow; one byte more and the kernel reports MSG_TRUNC.
_MAX_FRAME = _HEADER.size + _DESCRIPTOR.size * MAX_REGIONS + MAX_PAYLOAD
# Room for exactly MAX_REGIONS descriptors (§5.4.3), so excess ones raise MSG_CTRUNC.
_ANCBUFSIZE = socket.CMSG_SPACE(MAX_REGIONS * array("i").itemsize)

_SEALS_RESIZE = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
# Not exported by Python's fcntl module; value from <linux/fcntl.h>. It forbids new
# writable shared mappings just as F_SEAL_WRITE does, so it cannot go with a writable region.
_F_SEAL_FUTURE_WRITE = 0x0010

# The socket module's flags are IntFlag members, whose `&` runs Python code; plain ints
# keep the per-record path in C.
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
_SEND_FLAGS = int(socket.MSG_NOSIGNAL)

DEFAULT_TIMEOUT = 60.0


class ShmlinkError(Exception):
    """A failure of a shmlink connection; `code` is its ERR_SHMLINK_* name."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class _Refused(Exception):
    """Raised inside frame processing; turned into ShmlinkError after the cleanup of §7."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# Every live Region by (st_dev, st_ino), so that a file that comes back over any
# connection resolves to the object this process already has (§5.2.5). Weak, so that
# the registry never keeps a region (and its descriptor) alive.
_live_regions: weakref.WeakValueDictionary[tuple[int, int], Region] = (
    weakref.WeakValueDictionary())


def _map(fd: int, size: int, frozen: bool) -> mmap.mmap:
    """Map a region: read-only when frozen, so a stray write raises instead of faulting."""
    prot = mmap.PROT_READ if frozen else mmap.PROT_READ | mmap.PROT_WRITE
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot)


class Region:
    """A sealed memfd region mapped into this process.

    `data` is the mapping (an `mmap`): index, slice, assign to it, or hash it in place
    (`hashlib.sha256(region.data)` copies nothing). The region keeps its descriptor open
    because sending it over a connection the first time needs one (and Python's mmap keeps
    a duplicate of its own, so count two descriptors per region against RLIMIT_NOFILE).
    """

    __slots__ = ("data", "fd", "size", "key", "frozen", "_finalizer", "__weakref__")

    data: mmap.mmap
    fd: int
    size: int
    key: tuple[int, int]
    frozen: bool

    def __init__(self, fd: int, size: int, key: tuple[int, int], frozen: bool) -> None:
        """Take ownership of `fd`, an already-checked sealed memfd; use `create` instead.

        If mapping fails, `fd` stays the caller's to close.
        """
        self.data = _map(fd, size, frozen)
        self.fd = fd
        self.size = size
        self.key = key
        self.frozen = frozen
        # Close the descriptor even if the owner just drops the region.
        self._finalizer = weakref.finalize(self, os.close, fd)
        _live_regions[key] = self

    @classmethod
    def create(cls, size: int, name: str = "shmlink") -> Region:
        """Create a region of `size` bytes, sealed against resizing before it is ever sent."""
        if size <= 0:
            raise ValueError("a region's size is never 0")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS_RESIZE)
            st = os.fstat(fd)
            return cls(fd, size, (st.st_dev, st.st_ino), frozen=False)
        except BaseException:
            os.close(fd)
            raise

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def freeze(self) -> None:
        """Seal the contents forever (F_SEAL_WRITE | F_SEAL_SEAL) and remap read-only.

        The kernel refuses F_SEAL_WRITE while any writable shared mapping exists, so our
        own mapping goes first; a peer that maps the region writable makes this fail (EBUSY),
        which is why a region is frozen before it is first sent.
        """
        if self.frozen:
            return
        self.data.close()  # BufferError while views of it exist; nothing has changed then
        try:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        except OSError:
            self.data = _map(self.fd, self.size, frozen=False)
            raise
        self.frozen = True
        self.data = _map(self.fd, self.size, frozen=True)

    def close(self) -> None:
        """Unmap the region and close its descriptor. Peers that map it keep their copy."""
        if self.closed:
            return
        self.data.close()
        self._finalizer()
        if _live_regions.get(self.key) is self:
            del _live_regions[self.key]

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Attached(NamedTuple):
    """One region descriptor of a received MESSAGE, resolved to its Region."""

    region: Region
    id: int       # in the sender's namespace
    flags: int

    @property
    def new(self) -> bool:
        return bool(self.flags & NEW)

    @property
    def frozen(self) -> bool:
        return bool(self.flags & FROZEN)

    @property
    def transfer(self) -> bool:
        return bool(self.flags & TRANSFER)


class Message(NamedTuple):
    """A received MESSAGE.

    `payload` is a view into the endpoint's receive buffer, so receiving costs no copy; it
    is only valid until the next `receive`. Copy it (`bytes(message.payload)`) to keep it.
    """

    payload: memoryview
    regions: list[Attached]


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Every descriptor the kernel installed, including those of a truncated cmsg."""
    fds = array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return fds.tolist()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _socket_address(address: str) -> str:
    """SCENARIO.md: a leading '@' names a Linux abstract socket (a leading NUL byte)."""
    return "\0" + address[1:] if address.startswith("@") else address


def connect_socket(address: str, timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    """Connect a SOCK_SEQPACKET socket to a path or '@abstract' name.

    Retries while nothing listens there yet (up to `timeout` seconds), so that a peer may
    be started at the same time as the side that listens.
    """
    target = _socket_address(address)
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(target)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() >= deadline:
                raise
        except BaseException:
            sock.close()
            raise
        time.sleep(0.01)


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


class Endpoint:
    """One side of a shmlink connection.

    The constructor sends this side's HELLO at once (§3.1); the peer's HELLO is read by
    the first `send`, `release` or `receive`, so two endpoints on a socketpair can be
    driven from one thread.

    A protocol failure closes every descriptor of the offending record, shuts the socket
    down in both directions and drops both binding tables (§7); it is raised once as a
    ShmlinkError with the failure's code, and later calls raise code CLOSED.
    """

    def __init__(self, sock: socket.socket, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Adopt a connected SOCK_SEQPACKET socket and send the HELLO.

        `timeout` bounds every wait for the peer, enforced by the kernel (SO_RCVTIMEO,
        SO_SNDTIMEO) so that the blocking fast path costs one system call per record.
        """
        sock.settimeout(None)
        if timeout is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
        self._sock = sock
        self._timeout = timeout
        self._open = True
        self._peer_limits: tuple[int, int] | None = None
        self._rx = bytearray(_MAX_FRAME)
        self._rx_view = memoryview(self._rx)
        self._rx_buffers = [self._rx_view]
        # Our namespace: region key -> (id, region). Holding the region keeps its file,
        # and so its (st_dev, st_ino), from being reused while the id is bound.
        self._own: dict[tuple[int, int], tuple[int, Region]] = {}
        self._next_id = 1
        # The peer's namespace: id -> region.
        self._peer: dict[int, Region] = {}
        # If the peer is already gone, what it sent before leaving is still queued, and
        # the first receive reports the precise reason (e.g. an incompatible HELLO).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendmsg([HELLO_FRAME], [], _SEND_FLAGS)

    @classmethod
    def connect(cls, address: str, timeout: float | None = DEFAULT_TIMEOUT) -> Endpoint:
        """Connect to a socket path or '@abstract' name and send the HELLO."""
        sock = connect_socket(address, DEFAULT_TIMEOUT if timeout is None else timeout)
        try:
            return cls(sock, timeout)
        except BaseException:
            sock.close()
            raise

    @property
    def peer_limits(self) -> tuple[int, int]:
        """The peer's (max_regions, max_payload), reading its HELLO if not yet done."""
        self._ensure_hello()
        assert self._peer_limits is not None
        return self._peer_limits

    def fileno(self) -> int:
        return self._sock.fileno()

    # -- sending --------------------------------------------------------------------

    def send(self, payload: bytes | bytearray | memoryview = b"",
             regions: Sequence[Region] = (), transfer: Sequence[bool] = ()) -> None:
        """Send one MESSAGE with `regions` attached in order.

        `transfer`, if not empty, has one flag per region: TRANSFER gives up access until
        the region comes back (§5.2.7). A region not bound in this side's namespace gets the
        next id and travels with its descriptor (NEW); later occurrences refer to the id.
        """
        max_regions, max_payload = self.peer_limits
        count = len(regions)
        if count > max_regions:
            raise ValueError(f"{count} regions exceed the peer's max_regions {max_regions}")
        if len(payload) > max_payload:
            raise ValueError(f"{len(payload)} payload bytes exceed the peer's max_payload"
                             f" {max_payload}; larger data belongs in a region")
        if transfer and len(transfer) != count:
            raise ValueError("transfer needs exactly one flag per region")
        if any(region.closed for region in regions):
            raise ValueError("cannot send a closed region")
        header = _HEADER.pack(KIND_MESSAGE, 0, count, len(payload))
        if not count:  # the common case, kept short
            self._send_record([header, payload] if len(payload) else [header], [])
            return
        frame = bytearray(header)
        fds = []
        # Bindings take effect only once the frame is sent: a send that times out has
        # sent nothing, and must leave nothing bound.
        binding: tuple[int, Region] | None
        new_bindings: dict[tuple[int, int], tuple[int, Region]] = {}
        next_id = self._next_id
        for index, region in enumerate(regions):
            flags = FROZEN if region.frozen else 0
            if transfer and transfer[index]:
                flags |= TRANSFER
            binding = self._own.get(region.key) or new_bindings.get(region.key)
            if binding is None:
                binding = new_bindings[region.key] = (next_id, region)
                next_id += 1
                flags |= NEW
                fds.append(region.fd)
            frame += _DESCRIPTOR.pack(binding[0], flags, region.size)
        self._send_record([frame, payload] if len(payload) else [frame], fds)
        self._own.update(new_bindings)
        self._next_id = next_id

    def release(self, region: Region) -> None:
        """Send RELEASE for `region`'s id in this side's namespace and forget the binding.

        Sending the region again later binds it under a fresh id (ids are never reused).
        """
        self._ensure_hello()
        binding = self._own.get(region.key)
        if binding is None:
            raise ValueError("the region is not bound on this connection")
        frame = _HEADER.pack(KIND_RELEASE, 0, 1, 0) + _DESCRIPTOR.pack(binding[0], 0, region.size)
        self._send_record([frame], [])
        del self._own[region.key]

    def _send_record(self, buffers: list[bytes | bytearray | memoryview], fds: list[int]) -> None:
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
        try:
            self._sock.sendmsg(buffers, ancdata, _SEND_FLAGS)
        except BlockingIOError:
            raise ShmlinkError(TIMEOUT,
                               f"the peer accepted nothing for {self._timeout} s") from None
        except (BrokenPipeError, ConnectionResetError):
            self._fail()
            raise ShmlinkError(PEER_CLOSED, "the peer closed the connection") from None

    # -- receiving ------------------------------------------------------------------

    def receive(self) -> Message:
        """Return the next MESSAGE, applying any RELEASE frames that precede it.

        Raises ShmlinkError with code PEER_CLOSED at end-of-file, or the code of §7 when the
        peer breaks a rule.
        """
        while True:
            message = self._receive_frame()
            if message is not None:
                return message

    def __iter__(self) -> Iterator[Message]:
        """Yield MESSAGEs until end-of-file."""
        while True:
            try:
                message = self.receive()
            except ShmlinkError as error:
                if error.code == PEER_CLOSED:
                    return
                raise
            yield message

    def _ensure_hello(self) -> None:
        # §3.4: nothing but a HELLO may be sent before the peer's HELLO is known. The
        # first frame must be that HELLO, so reading it here cannot skip a message.
        if not self._open:
            raise ShmlinkError(CLOSED, "the connection is closed")
        if self._peer_limits is None:
            self._receive_frame()

    def _receive_frame(self) -> Message | None:
        """Receive and apply one frame; a MESSAGE is returned, HELLO/RELEASE give None."""
        if not self._open:
            raise ShmlinkError(CLOSED, "the connection is closed")
        nbytes, ancdata, msg_flags = self._recvmsg()
        fds = _fds_from(ancdata) if ancdata else []
        if nbytes == 0:
            _close_all(fds)
            self._end()
            raise ShmlinkError(PEER_CLOSED, "the peer closed the connection")
        created: list[Region] = []
        try:
            return self._apply(nbytes, msg_flags, fds, created)
        except BaseException as error:
            # §7 order: close the record's descriptors, then shut down, then drop tables.
            _close_all(fds)
            for region in created:
                region.close()
            self._fail()
            if isinstance(error, _Refused):
                raise ShmlinkError(error.code, error.detail) from None
            raise

    def _recvmsg(self) -> tuple[int, list[tuple[int, int, bytes]], int]:
        """One recvmsg into the receive buffer; (0, [], 0) at end-of-file."""
        for _ in range(2):
            try:
                nbytes, ancdata, msg_flags, _ = self._sock.recvmsg_into(
                    self._rx_buffers, _ANCBUFSIZE, _RECV_FLAGS)
                return nbytes, ancdata, msg_flags
            except BlockingIOError:
                raise ShmlinkError(TIMEOUT, f"nothing received for {self._timeout} s") from None
            except ConnectionResetError:
                # A peer that closes with our data unread makes Linux report ECONNRESET
                # once, ahead of the records the peer sent before closing (its HELLO, say).
                # Reporting clears the error, so read on: those records come first.
                continue
        return 0, [], 0

    def _apply(self, nbytes: int, msg_flags: int, fds: list[int],
               created: list[Region]) -> Message | None:
        """Check one record against sections 2 to 7 and apply it.

        Takes descriptors out of `fds` (setting -1) as it takes ownership of them; whatever
        is left there when it raises is the caller's to close, as are regions in `created`.
        """
        if msg_flags & _MSG_CTRUNC:
            raise _Refused(FDS_TRUNCATED, "more descriptors than the control buffer holds")
        if msg_flags & _MSG_TRUNC:
            raise _Refused(PROTOCOL_VIOLATION, "record longer than the largest frame allowed")
        if nbytes < _HEADER.size:
            raise _Refused(PROTOCOL_VIOLATION, f"record of {nbytes} bytes is shorter than a header")
        kind, header_flags, count, payload_len = _HEADER.unpack_from(self._rx)
        if header_flags:
            raise _Refused(PROTOCOL_VIOLATION, "reserved header flags are set")
        body = _HEADER.size + _DESCRIPTOR.size * count
        if nbytes != body + payload_len:
            raise _Refused(PROTOCOL_VIOLATION,
                           f"record of {nbytes} bytes, header says {body + payload_len}")
        if self._peer_limits is None:
            self._accept_hello(kind, count, payload_len, fds)
            return None
        if kind == KIND_HELLO:
            raise _Refused(PROTOCOL_VIOLATION, "second HELLO")
        if kind not in (KIND_MESSAGE, KIND_RELEASE):
            raise _Refused(PROTOCOL_VIOLATION, f"unknown frame kind {kind}")
        if count > MAX_REGIONS:
            raise _Refused(PROTOCOL_VIOLATION, f"{count} regions exceed our max_regions")
        if payload_len > MAX_PAYLOAD:
            raise _Refused(PROTOCOL_VIOLATION, f"{payload_len} bytes exceed our max_payload")
        if not count and not fds and kind == KIND_MESSAGE:
            return Message(self._rx_view[body:nbytes], [])  # the common case, kept short

        descriptors = list(_DESCRIPTOR.iter_unpack(self._rx_view[_HEADER.size:body]))
        new_count = 0
        for region_id, flags, size in descriptors:
            if flags & ~_KNOWN_FLAGS:
                raise _Refused(PROTOCOL_VIOLATION, f"unknown descriptor flags {flags:#x}")
            if region_id == 0 or size == 0:
                raise _Refused(PROTOCOL_VIOLATION, "region id 0 or size 0")
            new_count += flags & NEW
        if len(fds) != new_count:
            raise _Refused(PROTOCOL_VIOLATION,
                           f"{len(fds)} descriptors for {new_count} NEW regions")
        if kind == KIND_RELEASE:
            self._apply_release(descriptors, payload_len)
            return None
        return Message(self._rx_view[body:nbytes], self._resolve(descriptors, fds, created))

    def _resolve(self, descriptors: list[tuple[int, int, int]], fds: list[int],
                 created: list[Region]) -> list[Attached]:
        """Bind NEW descriptors and look up the others, in frame order (§5.2.4, §5.3)."""
        peer = self._peer
        attached = []
        next_fd = 0
        for region_id, flags, size in descriptors:
            if flags & NEW:
                if region_id in peer:
                    raise _Refused(PROTOCOL_VIOLATION, f"NEW for bound id {region_id}")
                fd = fds[next_fd]
                fds[next_fd] = -1
                next_fd += 1
                region = self._adopt(fd, flags, size, created)
                peer[region_id] = region
            else:
                bound = peer.get(region_id)
                if bound is None:
                    raise _Refused(PROTOCOL_VIOLATION, f"unknown region id {region_id}")
                region = bound
                if region.size != size or region.frozen != bool(flags & FROZEN):
                    raise _Refused(PROTOCOL_VIOLATION,
                                   f"size or FROZEN of id {region_id} differ from its binding")
            attached.append(Attached(region, region_id, flags))
        return attached

    def _accept_hello(self, kind: int, count: int, payload_len: int, fds: list[int]) -> None:
        if kind != KIND_HELLO:
            raise _Refused(PROTOCOL_VIOLATION, f"first frame is of kind {kind}, not HELLO")
        if count or payload_len < _MAGIC_VERSION.size:
            raise _Refused(PROTOCOL_VIOLATION, "malformed HELLO")
        magic, version = _MAGIC_VERSION.unpack_from(self._rx, _HEADER.size)
        if magic != MAGIC:
            raise _Refused(PEER_INCOMPATIBLE, f"wrong magic {magic!r}")
        if version != VERSION:
            raise _Refused(PEER_INCOMPATIBLE, f"unsupported protocol version {version}")
        if payload_len != _HELLO_BODY.size:
            raise _Refused(PROTOCOL_VIOLATION, f"HELLO payload of {payload_len} bytes")
        if fds:
            raise _Refused(PROTOCOL_VIOLATION, "descriptors attached to a HELLO")
        _, _, max_regions, max_payload = _HELLO_BODY.unpack_from(self._rx, _HEADER.size)
        if not 1 <= max_regions <= _REGIONS_LIMIT or max_payload > _PAYLOAD_LIMIT:
            raise _Refused(PROTOCOL_VIOLATION,
                           f"HELLO limits out of range: {max_regions} regions, {max_payload} bytes")
        self._peer_limits = (max_regions, max_payload)

    def _apply_release(self, descriptors: list[tuple[int, int, int]], payload_len: int) -> None:
        if payload_len:
            raise _Refused(PROTOCOL_VIOLATION, "RELEASE with payload")
        for region_id, flags, size in descriptors:
            if flags:
                raise _Refused(PROTOCOL_VIOLATION, "RELEASE descriptor with flags")
            region = self._peer.get(region_id)
            if region is None:
                raise _Refused(PROTOCOL_VIOLATION, f"RELEASE of unbound id {region_id}")
            if region.size != size:
                raise _Refused(PROTOCOL_VIOLATION, f"RELEASE of id {region_id} with wrong size")
            # Dropping the binding unmaps the region unless the user still holds it.
            del self._peer[region_id]

    @staticmethod
    def _adopt(fd: int, flags: int, size: int, created: list[Region]) -> Region:
        """Check a NEW descriptor in the order of §5.3 and map it; always consumes `fd`.

        A file this process already has (same st_dev, st_ino) resolves to its Region, and
        the duplicate descriptor is closed.
        """
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(REGION_NOT_MEMFD, "descriptor is not a regular file")
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError:
                raise _Refused(REGION_NOT_MEMFD, "file cannot carry seals") from None
            if seals & _SEALS_RESIZE != _SEALS_RESIZE:
                raise _Refused(REGION_UNSEALED, "region can shrink or grow")
            frozen = bool(flags & FROZEN)
            if frozen and not seals & fcntl.F_SEAL_WRITE:
                raise _Refused(REGION_UNSEALED, "FROZEN region without F_SEAL_WRITE")
            if not frozen and seals & (fcntl.F_SEAL_WRITE | _F_SEAL_FUTURE_WRITE):
                raise _Refused(PROTOCOL_VIOLATION, "write seal on a region not marked FROZEN")
            if st.st_size != size:
                raise _Refused(REGION_SIZE_MISMATCH,
                               f"descriptor says {size} bytes, file has {st.st_size}")
            key = (st.st_dev, st.st_ino)
            known = _live_regions.get(key)
            if known is not None and not known.closed:
                os.close(fd)
                return known
            region = Region(fd, size, key, frozen)
        except BaseException:
            os.close(fd)
            raise
        created.append(region)
        return region

    # -- ending ---------------------------------------------------------------------

    def _fail(self) -> None:
        """Shut the connection down so the peer reads end-of-file, and forget bindings."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._end()

    def _end(self) -> None:
        self._open = False
        self._own.clear()
        self._peer.clear()

    def close(self) -> None:
        """Shut down and close the connection. Regions the caller holds stay valid (§6)."""
        self._end()
        with contextlib.suppress(OSError):  # already shut down, or never connected
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":
    import sys

    from peer import main

    sys.exit(main(sys.argv))
