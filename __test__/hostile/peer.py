"""Hostile and careless peers for __test__/trust.spec.ts, on raw sockets and memfds
(the standard library only; no shmlink code).

    python3 peer.py <case> <socket> [args...]

The socket is a path, or an abstract name written with a leading '@'. Every case connects,
sends the protocol's HELLO, does what its name says, then reads until end-of-file (so the
test can see that the receiver ended the connection) and prints one line of JSON.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
import time

KIND_HELLO, KIND_MESSAGE, KIND_RELEASE = 1, 2, 3
NEW, FROZEN, TRANSFER = 1, 2, 4
# A version-2 HELLO (PROTOCOL.md §3): 32 regions, 65536 payload bytes, no capabilities.
HELLO = struct.pack("<BBHI", KIND_HELLO, 0, 0, 20) + b"SHMLINK\0" + struct.pack("<HHII", 2, 32, 65536, 0)


def address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


def connect(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for _ in range(300):
        try:
            sock.connect(address(name))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.01)
    try:
        sock.sendall(HELLO)
    except BrokenPipeError:
        pass  # refused at once: the receiver already shut the connection down
    return sock


def memfd(size: int, *, seal: bool = True, frozen: bool = False, flags: int = 0) -> int:
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | flags)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    if frozen:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    return fd


def message(descriptors: list[tuple[int, int, int]], payload: bytes = b"") -> bytes:
    out = struct.pack("<BBHI", KIND_MESSAGE, 0, len(descriptors), len(payload))
    for region_id, flags, size in descriptors:
        out += struct.pack("<IIQ", region_id, flags, size)
    return out + payload


def send(sock: socket.socket, frame: bytes, fds: list[int] = ()) -> None:
    if fds:
        socket.send_fds(sock, [frame], list(fds))
    else:
        sock.sendall(frame)


def until_eof(sock: socket.socket, timeout: float = 20) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(70000)
            if not data:
                return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def writable(sock: socket.socket) -> dict:
    fd = memfd(4096)
    send(sock, message([(1, NEW, 4096)], b"writable"), [fd])
    return {"eof": until_eof(sock)}


def frozen_then_writable(sock: socket.socket) -> dict:
    fd = memfd(4096, frozen=True)
    send(sock, message([(1, NEW | FROZEN, 4096)], b"frozen"), [fd])
    time.sleep(0.2)
    send(sock, message([(2, NEW, 4096)], b"writable"), [memfd(4096)])
    return {"eof": until_eof(sock)}


def hugetlb(sock: socket.socket) -> dict:
    fd = memfd(2 << 20, flags=os.MFD_HUGETLB)
    send(sock, message([(1, NEW, 2 << 20)], b"huge"), [fd])
    return {"eof": until_eof(sock)}


def sparse(sock: socket.socket, size: str) -> dict:
    size = int(size)
    fd = memfd(size, frozen=True)
    send(sock, message([(1, NEW | FROZEN, size)], b"sparse"), [fd])
    return {"eof": until_eof(sock)}


def flood(sock: socket.socket, count: str) -> dict:
    """New regions, one per message, never released."""
    sent = 0
    try:
        for i in range(int(count)):
            fd = memfd(4096, frozen=True)
            send(sock, message([(i + 1, NEW | FROZEN, 4096)], b""), [fd])
            os.close(fd)
            sent += 1
    except OSError:
        pass
    return {"sent": sent, "eof": until_eof(sock)}


def rewrite(sock: socket.socket, seconds: str) -> dict:
    """Shares a writable region and keeps rewriting it with bytes that are valid UTF-8 one
    moment and not the next, while the receiver decodes what it reads."""
    size = 1 << 16
    fd = memfd(size)
    import mmap

    view = mmap.mmap(fd, size)
    view[:] = ("é" * (size // 2)).encode()
    send(sock, message([(1, NEW, size)], b"race"), [fd])
    stop = time.monotonic() + float(seconds)
    rounds = 0
    patterns = [b"\xc3\xa9" * (size // 2), b"\xff" * size, b"a" * size, b"\xe2\x82" * (size // 2)]
    while time.monotonic() < stop:
        view[:] = patterns[rounds % len(patterns)]
        rounds += 1
    send(sock, message([], b"done"))
    return {"rounds": rounds, "eof": until_eof(sock)}


def serve(name: str, count: str = "1") -> None:
    """A listener that sends HELLO to each of `count` clients, then waits for end-of-file."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(address(name))
    listener.listen(8)
    print(json.dumps({"listening": True}), flush=True)
    for _ in range(int(count)):
        conn, _ = listener.accept()
        try:
            conn.sendall(HELLO)
        except BrokenPipeError:
            pass
        print(json.dumps({"eof": until_eof(conn)}), flush=True)


def connect_and_send(sock: socket.socket) -> dict:
    fd = memfd(8192, frozen=True)
    try:
        send(sock, message([(1, NEW | FROZEN, 8192)], b"early"), [fd])
    except OSError:
        pass  # refused before it could send: what the receiver's filter is for
    return {"eof": until_eof(sock, timeout=60)}


def many(name: str, count: str) -> None:
    """Opens `count` connections and keeps them open until stdin closes."""
    socks = []
    refused = 0
    for _ in range(int(count)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            sock.connect(address(name))
            socks.append(sock)
        except (BlockingIOError, ConnectionRefusedError):
            refused += 1
    print(json.dumps({"connected": len(socks), "refused": refused}), flush=True)
    sys.stdin.read()


CASES = {
    "writable": writable,
    "frozen_then_writable": frozen_then_writable,
    "hugetlb": hugetlb,
    "sparse": sparse,
    "flood": flood,
    "rewrite": rewrite,
    "connect_and_send": connect_and_send,
}


def main() -> None:
    case, name, *args = sys.argv[1:]
    if case == "serve":
        serve(name, *args)
    elif case == "many":
        many(name, *args)
    else:
        print(json.dumps(CASES[case](connect(name), *args)), flush=True)


if __name__ == "__main__":
    main()
