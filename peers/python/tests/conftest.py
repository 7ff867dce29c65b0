"""Shared fixtures: a descriptor count around every test, and raw peers that send anything."""

from __future__ import annotations

import fcntl
import gc
import os
import socket
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import shmlink
from shmlink import Endpoint, wire

PEERS = Path(__file__).resolve().parent.parent.parent  # peers/, in a checkout
REPO = PEERS.parent


def pytest_report_header() -> str:
    return f"shmlink {shmlink.__version__} from {shmlink.__file__}"


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    """Fails a test that leaves more descriptors open than it found."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    if leaked:  # perhaps garbage not collected yet (a traceback's frames hold objects)
        gc.collect()
        leaked = open_fds() - before
    # The listing is read through a descriptor of its own, which may be a new number.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in leaked]
    assert not leaked, f"descriptors leaked: {targets}"


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def read_record(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, list[int]]:
    """One raw record and the descriptors that came with it (the caller closes them)."""
    sock.settimeout(timeout)
    data, ancdata, _, _ = sock.recvmsg(1 << 17, socket.CMSG_SPACE(253 * 4))
    fds = array("i")
    for _, _, fd_bytes in ancdata:
        fds.frombytes(fd_bytes[:len(fd_bytes) - len(fd_bytes) % fds.itemsize])
    return data, fds.tolist()


def read_until_eof(sock: socket.socket, timeout: float = 5.0) -> list[bytes]:
    """Every record until end-of-file (descriptors closed); fails if none comes in time."""
    records = []
    while True:
        try:
            data, fds = read_record(sock, timeout)
        except ConnectionResetError:
            return records
        for fd in fds:
            os.close(fd)
        if not data:
            return records
        records.append(data)


_SEALS = {"shrink": fcntl.F_SEAL_SHRINK, "grow": fcntl.F_SEAL_GROW,
          "write": fcntl.F_SEAL_WRITE, "seal": fcntl.F_SEAL_SEAL}


def memfd(size: int, seals: tuple[str, ...] = ("shrink", "grow"), flags: int = 0) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | flags)
    os.ftruncate(fd, size)
    bits = 0
    for seal in seals:
        bits |= _SEALS[seal]
    if bits:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, bits)
    return fd


def message(descriptors: list[tuple[int, int, int]], payload: bytes = b"",
            kind: int = wire.KIND_MESSAGE) -> bytes:
    return wire.encode_header(kind, len(descriptors), len(payload)) + b"".join(
        wire.encode_descriptor(*d) for d in descriptors) + payload


class RawPeer:
    """The far end of an endpoint, as a plain socket: it sends whatever a test wants."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes, fds: Optional[list[int]] = None) -> None:
        ancdata: list[Any] = []
        if fds:
            ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))]
        self.sock.sendmsg([data], ancdata, socket.MSG_NOSIGNAL)

    def hello(self, max_regions: int = 32, max_payload: int = 65536) -> None:
        self.send(wire.hello_frame(max_regions, max_payload))

    def send_fds(self, data: bytes, fds: list[int]) -> None:
        """Sends, then closes this side's copies of ``fds``."""
        try:
            self.send(data, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def records_until_eof(self) -> list[bytes]:
        return read_until_eof(self.sock)


@pytest.fixture
def raw_pair() -> Iterator[Callable[..., tuple[Endpoint, RawPeer]]]:
    """Makes (endpoint, raw peer) pairs on socketpairs; closes them all afterwards."""
    made: list[tuple[Endpoint, socket.socket]] = []

    def make(**options: Any) -> tuple[Endpoint, RawPeer]:
        ours, theirs = seqpacket_pair()
        endpoint = Endpoint.from_fd(ours, **options)
        made.append((endpoint, theirs))
        return endpoint, RawPeer(theirs)

    yield make
    for endpoint, sock in made:
        endpoint.close()
        sock.close()
