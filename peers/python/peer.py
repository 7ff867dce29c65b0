"""The Python interop peer: plays the roles of peers/SCENARIO.md over shmlink.py.

    python3 peer.py driver    <socket-path> <scenario.json> <transcript-out>
    python3 peer.py responder <socket-path> <transcript-out>
    python3 peer.py echo      <socket-path>
    python3 peer.py hostile   <socket-path> <hostile-frames.json> <case-name>
    python3 peer.py expect-hostile <socket-path> <hostile-frames.json> <case-name>

Exits 0 when the role completed and every check passed; otherwise prints one line to
stderr and exits 1. The role functions take an Endpoint, so tests can run them in-process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from typing import Any

from shmlink import (DEFAULT_TIMEOUT, HELLO_FRAME, Endpoint, Message, Region,
                     ShmlinkError, connect_socket)

PAGE = 4096


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
    """Fill a whole region with pattern(seed, size): one table copy, then doublings."""
    data = region.data
    done = min(region.size, _PERIOD)
    data[:done] = pattern(seed, done)
    # The pattern's period divides `done` whenever more remains, so copying the filled
    # prefix onto the rest continues it exactly.
    while done < region.size:
        step = min(done, region.size - done)
        data.move(done, 0, step)
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
            {"id": a.id, "size": a.region.size, "new": a.new, "frozen": a.frozen,
             "transferred": a.transfer, "sha256": digest.hex()}
            for a, digest in zip(message.regions, region_digests, strict=True)
        ],
    }


def write_transcript(path: str, lines: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(line) + "\n" for line in lines)


# -- driver ----------------------------------------------------------------------------

def drive(endpoint: Endpoint, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Perform the scenario steps; return the transcript of the acks."""
    named: dict[str, Region] = {}
    transcript: list[dict[str, Any]] = []
    for index, step in enumerate(steps):
        try:
            if step["op"] == "send":
                _drive_send(endpoint, step, named, transcript)
            elif step["op"] == "release":
                region = named.pop(step["name"])
                endpoint.release(region)
                region.close()
            else:
                raise PeerFailure(f"unknown op {step['op']!r}")
        except (PeerFailure, ShmlinkError) as failure:
            raise PeerFailure(f"step {index}: {failure}") from None
    return transcript


def _drive_send(endpoint: Endpoint, step: dict[str, Any], named: dict[str, Region],
                transcript: list[dict[str, Any]]) -> None:
    regions: list[Region] = []
    transfer: list[bool] = []
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
        regions.append(region)
        transfer.append(spec["transfer"])
    payload = pattern(step["payload"]["seed"], step["payload"]["len"])
    # Digest before sending: a transferred region is not ours to read until it returns.
    expected = sha256(payload) + b"".join(sha256(region.data) for region in regions)
    endpoint.send(payload, regions, transfer)

    ack = endpoint.receive()
    transcript.append(transcript_line(
        len(transcript), ack, [sha256(a.region.data) for a in ack.regions]))
    if ack.payload != expected:
        raise PeerFailure("the ack's digests differ from what was sent")
    # Our own files come back resolved to the very Region objects we sent (by st_dev,
    # st_ino), so the names keep referring to them.
    returned = [a.region.key for a in ack.regions]
    wanted = [region.key for region, t in zip(regions, transfer, strict=True) if t]
    if returned != wanted:
        raise PeerFailure("the ack does not carry back exactly the transferred regions")


# -- responder -------------------------------------------------------------------------

def respond(endpoint: Endpoint) -> list[dict[str, Any]]:
    """Ack every MESSAGE until end-of-file; return the transcript."""
    transcript: list[dict[str, Any]] = []
    for n, message in enumerate(endpoint):
        digests = [sha256(a.region.data) for a in message.regions]
        transcript.append(transcript_line(n, message, digests))
        back = []
        for attached, digest in zip(message.regions, digests, strict=True):
            if attached.transfer:
                if not attached.frozen:
                    stamp = min(32, attached.region.size)
                    attached.region.data[:stamp] = digest[:stamp]
                back.append(attached.region)
        endpoint.send(sha256(message.payload) + b"".join(digests), back, [True] * len(back))
    return transcript


# -- echo ------------------------------------------------------------------------------

def touch(region: Region) -> bytes:
    """Read one byte of every page, so the data really crosses into this process.

    A strided slice of the mmap is copied in C: one small allocation, no Python loop.
    """
    return region.data[::PAGE]


def echo(endpoint: Endpoint) -> None:
    """Return every MESSAGE as it came (payload and regions, no TRANSFER) until end-of-file."""
    for message in endpoint:
        regions = [attached.region for attached in message.regions]
        for region in regions:
            touch(region)
        endpoint.send(message.payload, regions)


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
    """Create one descriptor of a hostile case; `stack` closes it (and its partners)."""
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
        directory = os.environ.get("SHMLINK_PEER_TMPDIR")
        if not directory:
            raise PeerFailure("SHMLINK_PEER_TMPDIR must name a directory for the disk file")
        file = stack.enter_context(tempfile.TemporaryFile(dir=directory))
        os.ftruncate(file.fileno(), spec["size"])
        return file.fileno()
    raise PeerFailure(f"unknown descriptor type {kind!r}")


def send_hostile(sock: socket.socket, case: dict[str, Any]) -> bool:
    """Send the case's HELLO and frame; False if the frame is empty (close at once)."""
    hello = case["hello"]
    if hello == "valid":
        sock.sendmsg([HELLO_FRAME], [], socket.MSG_NOSIGNAL)
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
    """Read and drop one record, closing any descriptors; False at end-of-file."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PeerFailure("the peer neither sent nor closed in time")
    sock.settimeout(remaining)
    try:
        data, ancdata, _, _ = sock.recvmsg(1 << 17, socket.CMSG_SPACE(253 * 4),
                                           socket.MSG_CMSG_CLOEXEC)
    except TimeoutError:
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


def wait_for_eof(sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Discard records until the peer shuts the connection down."""
    deadline = time.monotonic() + timeout
    while discard_record(sock, deadline):
        pass


def expect_refusal(endpoint: Endpoint, expect: str) -> None:
    """The first receive must fail with `expect`; any other outcome is a PeerFailure."""
    try:
        endpoint.receive()
    except ShmlinkError as error:
        if error.code != expect:
            raise PeerFailure(f"refused with {error}, expected {expect}") from None
    else:
        raise PeerFailure(f"the frame was accepted, expected {expect}")


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- command line ----------------------------------------------------------------------

def run_driver(address: str, scenario_path: str, transcript_path: str) -> None:
    with open(scenario_path, encoding="utf-8") as f:
        scenario = json.load(f)
    if scenario.get("version") != 1:
        raise PeerFailure(f"unsupported scenario version {scenario.get('version')!r}")
    with Endpoint.connect(address) as endpoint:
        transcript = drive(endpoint, scenario["steps"])
    write_transcript(transcript_path, transcript)


def run_responder(address: str, transcript_path: str) -> None:
    with Endpoint.connect(address) as endpoint:
        transcript = respond(endpoint)
    write_transcript(transcript_path, transcript)


def run_echo(address: str) -> None:
    with Endpoint.connect(address) as endpoint:
        echo(endpoint)


def run_hostile(address: str, cases_path: str, name: str) -> None:
    case = load_case(cases_path, name)
    with connect_socket(address) as sock:
        if send_hostile(sock, case):
            wait_for_eof(sock)
        else:
            # "Close at once", but not before the peer's HELLO is read: closing with it
            # unread makes Linux hand the peer ECONNRESET ahead of what we sent, and a
            # receiver that takes that for end-of-file would never see our bad HELLO.
            discard_record(sock, time.monotonic() + DEFAULT_TIMEOUT)


def run_expect_hostile(address: str, cases_path: str, name: str) -> None:
    expect = load_case(cases_path, name)["expect"]
    before = open_fd_count()
    with Endpoint.connect(address) as endpoint:  # closing shuts the socket down
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


def main(argv: list[str]) -> int:
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
    sys.exit(main(sys.argv))
