"""The Python interop peer: plays the roles of peers/SCENARIO.md on the installed shmlink.

    python peer.py driver    <socket-path> <scenario.json> <transcript-out>
    python peer.py responder <socket-path> <transcript-out>
    python peer.py echo      <socket-path>
    python peer.py hostile   <socket-path> <hostile-frames.json> <case-name>
    python peer.py expect-hostile <socket-path> <hostile-frames.json> <case-name>

It uses only the public API of the ``shmlink`` package as installed (peers/build.sh
builds the wheel and installs it into peers/python/build/venv; run this file with that
venv's python). The ``hostile`` role writes its bad frames on a raw socket, since the
library never sends them. Exits 0 when the role completed and every check passed;
otherwise prints one line to stderr and exits 1. The role functions take an Endpoint, so
tests can run them in-process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from array import array
from typing import Any, Callable, Optional

try:
    import shmlink
    from shmlink import Endpoint, Message, Region, ShmlinkError
except ImportError as missing:  # the contract is one line on stderr, never a traceback
    sys.exit(f"python peer: the shmlink package is not installed in {sys.executable} "
             f"({missing}); run bash peers/build.sh and use peers/python/build/venv/bin/python")

PAGE = 4096
#: SCENARIO.md: a peer never waits more than 60 seconds for anything.
WAIT = 60.0
#: SCENARIO.md: a peer may retry ENOENT/ECONNREFUSED for up to 10 seconds.
CONNECT_RETRY = 10.0


class PeerFailure(Exception):
    """A scenario check failed; the message is the one line the peer prints."""


# -- the fill pattern ------------------------------------------------------------------
#
# Byte k of pattern(seed, n) is (seed*131 + (k % 4096)*7 + (k // 4096)*13) mod 256. Page p
# is the ramp c, c+7, c+14, ... starting at c = seed*131 + 13p; since 13 is odd, c runs
# through all 256 values as p goes from 0 to 255, so the pattern repeats every 256 pages
# (1 MiB), and the pattern of any seed is the seed-0 pattern shifted by a whole number of
# pages: c = 13 * (p + q) with q = seed * 131 * 13^-1 = seed * 207 (mod 256). One 2 MiB
# table of the seed-0 pattern therefore holds every pattern of up to 1 MiB as a slice.

_PERIOD = 256 * PAGE


def _seed0_table() -> memoryview:
    # The page starting at c is ramp[183c mod 256:], because 7 * 183 = 1 (mod 256).
    ramp = bytes((7 * j) & 0xFF for j in range(PAGE + 256))
    period = b"".join(ramp[(183 * 13 * p) & 0xFF:][:PAGE] for p in range(256))
    return memoryview(period * 2)


_TABLE = _seed0_table()


def pattern(seed: int, length: int) -> memoryview:
    """pattern(seed, length) for length up to 1 MiB, as a view of a shared table (no copy)."""
    if length > _PERIOD:
        raise ValueError("use fill() for patterns longer than 1 MiB")
    start = (seed * 207 & 0xFF) * PAGE
    return _TABLE[start:start + length]


def fill(region: Region, seed: int) -> None:
    """Fills a whole region with pattern(seed, size): one table copy, then doublings."""
    size = region.size
    done = min(size, _PERIOD)
    region.write(0, pattern(seed, done))
    # The pattern's period divides `done` whenever more remains, so copying the filled
    # prefix onto the rest continues it exactly.
    with memoryview(region) as view:
        while done < size:
            step = min(done, size - done)
            region.write(done, view[:step])
            done += step


def sha256(data: Any) -> bytes:
    return hashlib.sha256(data).digest()


def transcript_line(n: int, message: Message, region_digests: list[bytes]) -> dict[str, Any]:
    """The SCENARIO.md transcript record of one received MESSAGE."""
    return {
        "n": n,
        "payload_len": len(message.payload),
        "payload_sha256": hashlib.sha256(message.payload).hexdigest(),
        "regions": [
            {"id": d.id, "size": region.size, "new": d.new, "frozen": d.frozen,
             "transferred": d.transferred, "sha256": digest.hex()}
            for region, d, digest in zip(message.regions, message.descriptors, region_digests)
        ],
    }


def write_transcript(path: str, lines: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(line) + "\n" for line in lines)


# -- driver ----------------------------------------------------------------------------

def drive(endpoint: Endpoint, steps: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                    list[Region]]:
    """Performs the scenario steps; returns the transcript of the acks, and the regions
    still named at the end (the caller closes them after the connection, so that no
    RELEASE goes out that the scenario does not ask for)."""
    named: dict[str, Region] = {}
    transcript: list[dict[str, Any]] = []
    for index, step in enumerate(steps):
        try:
            if step["op"] == "send":
                _drive_send(endpoint, step, named, transcript)
            elif step["op"] == "release":
                region = named.pop(step["name"])
                if not endpoint.release(region):
                    raise PeerFailure(f"region {step['name']!r} was not bound")
                region.close()
            else:
                raise PeerFailure(f"unknown op {step['op']!r}")
        except (PeerFailure, ShmlinkError) as failure:
            raise PeerFailure(f"step {index}: {failure}") from None
    return transcript, list(named.values())


def _drive_send(endpoint: Endpoint, step: dict[str, Any], named: dict[str, Region],
                transcript: list[dict[str, Any]]) -> None:
    attached: list[Region] = []
    moved: list[Region] = []
    for spec in step["regions"]:
        region = named.get(spec["name"])
        if region is None:
            region = named[spec["name"]] = Region.create(spec["size"])
        elif region.size != spec["size"]:
            raise PeerFailure(f"region {spec['name']!r} has size {region.size}, not {spec['size']}")
        if spec["seed"] is not None:
            fill(region, spec["seed"])
        if spec["freeze"]:
            region.freeze()
        attached.append(region)
        if spec["transfer"]:
            moved.append(region)
    payload = pattern(step["payload"]["seed"], step["payload"]["len"])
    # Digest before sending: a transferred region is not ours to read until it returns.
    expected = sha256(payload) + b"".join(sha256(region) for region in attached)
    endpoint.send(payload, regions=attached, transfer=moved, timeout=WAIT)

    ack = endpoint.recv(timeout=WAIT)
    transcript.append(transcript_line(len(transcript), ack, [sha256(r) for r in ack.regions]))
    if ack.payload != expected:
        raise PeerFailure("the ack's digests differ from what was sent")
    # Our own files come back resolved to the very Region objects we sent (the library
    # compares (st_dev, st_ino)), so the names keep referring to them.
    if len(ack.regions) != len(moved) or any(a is not b for a, b in zip(ack.regions, moved)):
        raise PeerFailure("the ack does not carry back exactly the transferred regions")


# -- responder -------------------------------------------------------------------------

def respond(endpoint: Endpoint) -> list[dict[str, Any]]:
    """Acks every MESSAGE until end-of-file; returns the transcript."""
    transcript: list[dict[str, Any]] = []
    n = 0
    while True:
        try:
            message = endpoint.recv(timeout=WAIT)
        except ShmlinkError as error:
            if error.code == shmlink.PEER_CLOSED:
                return transcript
            raise
        digests = [sha256(region) for region in message.regions]
        transcript.append(transcript_line(n, message, digests))
        n += 1
        back = []
        for region, d, digest in zip(message.regions, message.descriptors, digests):
            if d.transferred:
                if not d.frozen:
                    region.write(0, digest[:min(32, region.size)])
                back.append(region)
        endpoint.send(sha256(message.payload) + b"".join(digests), transfer=back, timeout=WAIT)


# -- echo ------------------------------------------------------------------------------

def echo(endpoint: Endpoint) -> None:
    """Returns every MESSAGE as it came (payload and regions, no TRANSFER) until end-of-file,
    after reading one byte of every page (a strided slice, copied in C)."""
    for message in endpoint:
        for region in message.regions:
            _ = region[::PAGE]
        endpoint.send(message.payload, regions=message.regions, timeout=WAIT)


# -- hostile ---------------------------------------------------------------------------

def load_case(cases_path: str, name: str) -> dict[str, Any]:
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    for case in cases:
        if case["name"] == name:
            found: dict[str, Any] = case
            return found
    raise PeerFailure(f"no case named {name!r} in {cases_path}")


_SEALS = {"shrink": fcntl.F_SEAL_SHRINK, "grow": fcntl.F_SEAL_GROW,
          "write": fcntl.F_SEAL_WRITE, "seal": fcntl.F_SEAL_SEAL}


def make_fd(spec: dict[str, Any], stack: contextlib.ExitStack) -> int:
    """Creates one descriptor of a hostile case; ``stack`` closes it (and its partners)."""
    kind = spec["type"]
    if kind == "memfd":
        fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        stack.callback(os.close, fd)
        os.ftruncate(fd, spec["size"])
        seals = 0
        for seal in spec["seals"]:
            seals |= _SEALS[seal]
        if seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        return fd
    if kind == "pipe":
        read_end, write_end = os.pipe()
        stack.callback(os.close, read_end)
        stack.callback(os.close, write_end)
        return read_end
    if kind == "socket":
        one, other = socket.socketpair()
        stack.enter_context(one)
        stack.enter_context(other)
        return one.fileno()
    if kind == "file":
        directory = os.environ.get("SHMLINK_PEER_TMPDIR") or "/var/tmp"
        file = stack.enter_context(tempfile.TemporaryFile(dir=directory))
        os.ftruncate(file.fileno(), spec["size"])
        return file.fileno()
    raise PeerFailure(f"unknown descriptor type {kind!r}")


def send_hostile(sock: socket.socket, case: dict[str, Any]) -> bool:
    """Sends the case's HELLO and frame; False if the frame is empty (shut down instead)."""
    hello = case["hello"]
    if hello == "valid":
        sock.sendmsg([shmlink.wire.hello_frame()], [], socket.MSG_NOSIGNAL)
    elif hello != "none":
        sock.sendmsg([bytes.fromhex(hello)], [], socket.MSG_NOSIGNAL)
    frame = bytes.fromhex(case["frame"]) + bytes(case.get("pad", 0))
    if not frame:
        return False
    with contextlib.ExitStack() as stack:
        fds = [make_fd(spec, stack) for spec in case["fds"]]
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
        sock.sendmsg([frame], ancdata, socket.MSG_NOSIGNAL)
    return True


def discard_record(sock: socket.socket, deadline: float) -> bool:
    """Reads and drops one record, closing any descriptors; False at end-of-file."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PeerFailure("the peer neither sent nor closed in time")
    sock.settimeout(remaining)
    try:
        data, ancdata, _, _ = sock.recvmsg(1 << 17, socket.CMSG_SPACE(253 * 4),
                                           socket.MSG_CMSG_CLOEXEC)
    except socket.timeout:
        raise PeerFailure("the peer neither sent nor closed in time") from None
    except ConnectionResetError:
        return False
    for level, kind, fd_bytes in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array("i")
            fds.frombytes(fd_bytes[:len(fd_bytes) - len(fd_bytes) % fds.itemsize])
            for fd in fds:
                os.close(fd)
    return bool(data)


def wait_for_eof(sock: socket.socket, timeout: float = WAIT) -> None:
    """Discards records until the peer shuts the connection down."""
    deadline = time.monotonic() + timeout
    while discard_record(sock, deadline):
        pass


def expect_refusal(endpoint: Endpoint, expect: str) -> None:
    """The first receive must fail with ``expect``; any other outcome is a PeerFailure."""
    try:
        endpoint.recv(timeout=WAIT)
    except ShmlinkError as error:
        if error.code != expect:
            raise PeerFailure(f"refused with {error}, expected {expect}") from None
    else:
        raise PeerFailure(f"the frame was accepted, expected {expect}")


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- command line ----------------------------------------------------------------------

def socket_address(address: str) -> str:
    """SCENARIO.md: a leading '@' names a Linux abstract socket (a leading NUL byte)."""
    return "\0" + address[1:] if address.startswith("@") else address


def connect(address: str, retry: float = CONNECT_RETRY) -> Endpoint:
    """Connects, retrying while nothing listens there yet. The scenario shares writable
    regions between peers the test started, so they are accepted."""
    deadline = time.monotonic() + retry
    while True:
        try:
            return Endpoint.connect(socket_address(address), accept_writable=True)
        except ShmlinkError as error:
            if error.errno not in (errno.ENOENT, errno.ECONNREFUSED) or (
                    time.monotonic() >= deadline):
                raise
        time.sleep(0.01)


def connect_raw(address: str, retry: float = CONNECT_RETRY) -> socket.socket:
    """A plain SOCK_SEQPACKET connection, for the hostile role."""
    deadline = time.monotonic() + retry
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(socket_address(address))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() >= deadline:
                raise
        except BaseException:
            sock.close()
            raise
        time.sleep(0.01)


def run_driver(address: str, scenario_path: str, transcript_path: str) -> None:
    with open(scenario_path, encoding="utf-8") as f:
        scenario = json.load(f)
    if scenario.get("version") != 1:
        raise PeerFailure(f"unsupported scenario version {scenario.get('version')!r}")
    leftovers: list[Region] = []
    try:
        with connect(address) as endpoint:
            transcript, leftovers = drive(endpoint, scenario["steps"])
    finally:
        # After the connection: closing a region still bound would send RELEASE.
        for region in leftovers:
            region.close()
    write_transcript(transcript_path, transcript)


def run_responder(address: str, transcript_path: str) -> None:
    with connect(address) as endpoint:
        transcript = respond(endpoint)
    write_transcript(transcript_path, transcript)


def run_echo(address: str) -> None:
    with connect(address) as endpoint:
        echo(endpoint)


def run_hostile(address: str, cases_path: str, name: str) -> None:
    case = load_case(cases_path, name)
    with connect_raw(address) as sock:
        if send_hostile(sock, case):
            wait_for_eof(sock)
        else:
            # SCENARIO.md: an empty frame means shutdown(SHUT_WR), so the other side reads
            # our HELLO (if any) and then end-of-file; then wait for its end-of-file.
            sock.shutdown(socket.SHUT_WR)
            wait_for_eof(sock)


def run_expect_hostile(address: str, cases_path: str, name: str) -> None:
    expect = load_case(cases_path, name)["expect"]
    before = open_fd_count()
    with connect(address) as endpoint:  # closing shuts the socket down
        expect_refusal(endpoint, expect)
    leaked = open_fd_count() - before
    if leaked:
        raise PeerFailure(f"{leaked} file descriptors leaked")


ROLES: dict[str, tuple[Callable[..., None], str]] = {
    "driver": (run_driver, "<socket-path> <scenario.json> <transcript-out>"),
    "responder": (run_responder, "<socket-path> <transcript-out>"),
    "echo": (run_echo, "<socket-path>"),
    "hostile": (run_hostile, "<socket-path> <hostile-frames.json> <case-name>"),
    "expect-hostile": (run_expect_hostile, "<socket-path> <hostile-frames.json> <case-name>"),
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv if argv is None else argv
    role = argv[1] if len(argv) > 1 else ""
    if role not in ROLES:
        print(f"usage: {argv[0]} {'|'.join(ROLES)} ... (peers/SCENARIO.md)", file=sys.stderr)
        return 1
    run, usage = ROLES[role]
    args = argv[2:]
    if len(args) != usage.count("<"):
        print(f"usage: {argv[0]} {role} {usage}", file=sys.stderr)
        return 1
    try:
        run(*args)
    except Exception as error:  # the contract is one line on stderr, never a traceback
        print(f"python peer {role}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
