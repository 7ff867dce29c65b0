"""A recording relay for the interop matrix: sits between two shmlink peers and logs
every record that passes, so that a test can compare what went over the wire.

    python3 wiretap.py <upstream-socket> <listen-socket> <log-out>

Connects to <upstream-socket> (where the harness or a `listen` peer waits), then binds
<listen-socket> and accepts one connection (the other peer connects there). `@name` is a
Linux abstract name. Every record is forwarded unchanged with its SCM_RIGHTS descriptors.
When one side reaches end-of-file the relay shuts the other side's writing down, and it
exits once both directions are done, writing one JSON line per record to <log-out>:

    {"dir": "up" | "down", "kind": K, "flags": F, "regions": [[id, flags, size], ...],
     "payload_len": N, "payload_sha256": "...", "fds": n}

"up" is from the listen-socket side to upstream. Exits 1 with one line on stderr on any
error (including a record too long for the relay or with truncated descriptors) and gives
up after 60 seconds without traffic.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import select
import socket
import struct
import sys

MAX_RECORD = 8 + 16 * 253 + 65536
MAX_FDS = 253
IDLE_SECONDS = 60


def address(arg: str) -> str | bytes:
    return b"\0" + arg[1:].encode() if arg.startswith("@") else arg


def describe(direction: str, record: bytes, fds: int) -> dict:
    entry: dict = {"dir": direction, "len": len(record), "fds": fds}
    if len(record) < 8:
        return entry
    kind, flags, count, payload_len = struct.unpack_from("<BBHI", record, 0)
    regions = []
    for i in range(count):
        if 8 + 16 * (i + 1) > len(record):
            break
        regions.append(list(struct.unpack_from("<IIQ", record, 8 + 16 * i)))
    payload = record[8 + 16 * count:]
    entry.update(kind=kind, flags=flags, regions=regions, payload_len=payload_len,
                 payload_sha256=hashlib.sha256(payload).hexdigest())
    return entry


def relay(source: socket.socket, sink: socket.socket) -> tuple[bytes, int] | None:
    """Moves one record; None at end-of-file (the sink's writing is shut down)."""
    fds = array.array("i")
    record, ancillary, flags, _ = source.recvmsg(
        MAX_RECORD + 1, socket.CMSG_SPACE(MAX_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise RuntimeError(f"record truncated by the relay (flags {flags:#x})")
        if not record:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:  # the sink's peer is gone already
                pass
            return None
        if fds:
            sink.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_NOSIGNAL)
        else:
            sink.sendmsg([record], [], socket.MSG_NOSIGNAL)
        return record, len(fds)
    finally:
        for fd in fds:
            os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: wiretap.py <upstream-socket> <listen-socket> <log-out>", file=sys.stderr)
        return 2
    upstream_addr, listen_addr, log_path = argv
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    upstream.connect(address(upstream_addr))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    listener.bind(address(listen_addr))
    listener.listen(1)
    listener.settimeout(IDLE_SECONDS)
    downstream, _ = listener.accept()
    downstream.settimeout(None)
    listener.close()
    if not listen_addr.startswith("@"):
        os.unlink(listen_addr)
    log = []
    # "up": downstream -> upstream; "down": upstream -> downstream.
    routes = {upstream.fileno(): ("down", upstream, downstream),
              downstream.fileno(): ("up", downstream, upstream)}
    while routes:
        ready, _, _ = select.select(list(routes), [], [], IDLE_SECONDS)
        if not ready:
            raise RuntimeError(f"no traffic for {IDLE_SECONDS} s")
        for fd in ready:
            direction, source, sink = routes[fd]
            moved = relay(source, sink)
            if moved is None:
                del routes[fd]
            else:
                log.append(describe(direction, *moved))
    with open(log_path, "w") as out:
        for entry in log:
            out.write(json.dumps(entry) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as error:  # one line, as the peers do
        print(f"wiretap: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
