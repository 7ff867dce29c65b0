"""In-process tests of shmlink.py and the peer roles, over socketpairs.

Run from this directory: python3 -m unittest -v test_shmlink

The hostile cases of peers/hostile-frames.json are replayed against a receiving Endpoint
while counting /proc/self/fd, because a receiver that refuses correctly but keeps one of
the descriptors it was sent would pass every interop test and still leak in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import unittest
from array import array
from pathlib import Path
from typing import Any
from unittest import mock

import peer
import shmlink
from shmlink import Endpoint, Region, ShmlinkError

PEERS = Path(__file__).resolve().parent.parent
CASES = json.loads((PEERS / "hostile-frames.json").read_text())["cases"]
STEPS = json.loads((PEERS / "scenario.json").read_text())["steps"]


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def slow_pattern(seed: int, length: int) -> bytes:
    """SCENARIO.md's formula, literally."""
    return bytes((seed * 131 + (k % 4096) * 7 + (k // 4096) * 13) % 256 for k in range(length))


def read_record(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One raw record and the descriptors that came with it (caller closes them)."""
    data, ancdata, _, _ = sock.recvmsg(1 << 17, socket.CMSG_SPACE(64 * 4))
    fds = array("i")
    for _, _, fd_bytes in ancdata:
        fds.frombytes(fd_bytes)
    return data, fds.tolist()


class FdCountingTest(unittest.TestCase):
    """Fails a test that leaves more (or fewer) descriptors open than it found."""

    def setUp(self) -> None:
        self.fds_before = peer.open_fd_count()

    def tearDown(self) -> None:
        self.assertEqual(peer.open_fd_count(), self.fds_before, "file descriptors leaked")


class PatternTest(unittest.TestCase):
    def test_matches_formula(self) -> None:
        for seed in (0, 1, 255, 256, 1000, 5039, 2**32 - 1):
            with self.subTest(seed=seed):
                self.assertEqual(bytes(peer.pattern(seed, 70000)), slow_pattern(seed, 70000))

    def test_fill_beyond_one_period(self) -> None:
        size = 3 * (1 << 20) + 12345
        with Region.create(size) as region:
            peer.fill(region, 77)
            expected = slow_pattern(77, size)
            self.assertEqual(region.data[:], expected)


class WireFormatTest(FdCountingTest):
    """The byte-exact examples of PROTOCOL.md §8."""

    def test_hello(self) -> None:
        self.assertEqual(shmlink.HELLO_FRAME.hex(),
                         "010000001000000053484d4c494e4b000100200000000100")

    def test_message_and_release(self) -> None:
        ours, theirs = seqpacket_pair()
        with ours, theirs, Endpoint(ours) as endpoint, \
                Region.create(4096) as one, Region.create(65536) as two:
            theirs.sendmsg([shmlink.HELLO_FRAME])
            two.freeze()
            endpoint.send(b"hello", [one, two], [True, False])
            endpoint.release(one)
            hello, _ = read_record(theirs)
            message, fds = read_record(theirs)
            release, _ = read_record(theirs)
            self.assertEqual(hello, shmlink.HELLO_FRAME)
            self.assertEqual(message, bytes.fromhex(
                "02 00 02 00 05 00 00 00 01 00 00 00 05 00 00 00"
                "00 10 00 00 00 00 00 00 02 00 00 00 03 00 00 00"
                "00 00 01 00 00 00 00 00 68 65 6c 6c 6f"))
            self.assertEqual(release, bytes.fromhex(
                "03 00 01 00 00 00 00 00 01 00 00 00 00 00 00 00"
                "00 10 00 00 00 00 00 00"))
            self.assertEqual([os.fstat(fd).st_ino for fd in fds], [one.key[1], two.key[1]])
            for fd in fds:
                os.close(fd)


class EndpointTest(FdCountingTest):
    def test_bindings_flags_and_return(self) -> None:
        a_sock, b_sock = seqpacket_pair()
        with Endpoint(a_sock) as a, Endpoint(b_sock) as b, \
                Region.create(8192) as mine, Region.create(4096) as frozen:
            frozen.freeze()
            a.send(b"x", [mine, frozen, mine], [True, False, False])
            got = b.receive()
            self.assertEqual(bytes(got.payload), b"x")
            self.assertEqual([(x.id, x.new, x.frozen, x.transfer) for x in got.regions],
                             [(1, True, False, True), (2, True, True, False),
                              (1, False, False, False)])
            theirs, theirs_frozen = got.regions[0].region, got.regions[1].region
            # Both sides are one process here, so the dedupe of §5.2.5 already applies.
            self.assertIs(theirs, mine)
            self.assertIs(theirs_frozen, frozen)

            a.send(b"again", [mine])
            self.assertEqual([(x.id, x.new) for x in b.receive().regions], [(1, False)])
            # Sent back by b: NEW in b's namespace, resolved to a's own object.
            b.send(b"back", [mine], [True])
            back = a.receive().regions[0]
            self.assertEqual((back.id, back.new, back.transfer), (1, True, True))
            self.assertIs(back.region, mine)

            a.release(mine)
            a.send(b"rebind", [mine])
            self.assertEqual([(x.id, x.new) for x in b.receive().regions], [(3, True)])

    def test_received_frozen_region_is_read_only(self) -> None:
        ours, theirs = seqpacket_pair()
        with Endpoint(ours) as endpoint:
            with theirs, Region.create(4096) as region:
                region.data[:4] = b"data"
                region.freeze()
                theirs.sendmsg([shmlink.HELLO_FRAME])
                frozen_message = bytes.fromhex(  # id 1, NEW|FROZEN, 4096 bytes
                    "02 00 01 00 00 00 00 00 01 00 00 00 03 00 00 00 00 10 00 00 00 00 00 00")
                theirs.sendmsg([frozen_message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                   array("i", [region.fd]))])
            # The sender's object is gone, so the receiver maps the file itself.
            received = endpoint.receive().regions[0].region
            self.assertTrue(received.frozen)
            self.assertEqual(received.data[:4], b"data")
            with self.assertRaises(TypeError):
                received.data[:4] = b"evil"

    def test_sender_limits(self) -> None:
        a_sock, b_sock = seqpacket_pair()
        with Endpoint(a_sock) as a, Endpoint(b_sock):
            with self.assertRaises(ValueError):
                a.send(bytes(65537))
            with Region.create(4096) as region, self.assertRaises(ValueError):
                a.send(b"", [region] * 33)

    def test_release_frees_the_peer_binding(self) -> None:
        a_sock, b_sock = seqpacket_pair()
        with Endpoint(a_sock) as a, Endpoint(b_sock) as b, Region.create(4096) as region:
            a.send(b"", [region])
            b.receive()
            a.release(region)
            # Re-using the released id is a violation the receiver must catch.
            a_sock.sendmsg([bytes.fromhex("020001000000000001000000000000000010000000000000")])
            with self.assertRaises(ShmlinkError) as caught:
                b.receive()
            self.assertEqual(caught.exception.code, shmlink.PROTOCOL_VIOLATION)

    def test_reset_does_not_hide_queued_records(self) -> None:
        # The peer closes with our HELLO unread: Linux reports ECONNRESET first, then
        # still delivers the peer's (incompatible) HELLO, which is the failure to report.
        ours, theirs = seqpacket_pair()
        with Endpoint(ours) as endpoint:
            with theirs:
                theirs.sendmsg([bytes.fromhex(
                    "01000000100000004e4f5453484d4c4b0100200000000100")])
            with self.assertRaises(ShmlinkError) as caught:
                endpoint.receive()
            self.assertEqual(caught.exception.code, shmlink.PEER_INCOMPATIBLE)

    def test_timeout_leaves_the_connection_usable(self) -> None:
        a_sock, b_sock = seqpacket_pair()
        with Endpoint(a_sock, timeout=0.1) as a, Endpoint(b_sock) as b:
            with self.assertRaises(ShmlinkError) as caught:
                a.receive()
            self.assertEqual(caught.exception.code, shmlink.TIMEOUT)
            b.send(b"late")
            self.assertEqual(bytes(a.receive().payload), b"late")

    def test_failure_is_reported_once_then_closed(self) -> None:
        ours, theirs = seqpacket_pair()
        with theirs, Endpoint(ours) as endpoint:
            theirs.sendmsg([shmlink.HELLO_FRAME])
            theirs.sendmsg([bytes(70000)])  # longer than any frame our limits allow
            with self.assertRaises(ShmlinkError) as caught:
                endpoint.receive()
            self.assertEqual(caught.exception.code, shmlink.PROTOCOL_VIOLATION)
            with self.assertRaises(ShmlinkError) as caught:
                endpoint.receive()
            self.assertEqual(caught.exception.code, shmlink.CLOSED)
            self.assertEqual(read_record(theirs)[0], shmlink.HELLO_FRAME)
            self.assertEqual(read_record(theirs)[0], b"")  # shut down: end-of-file


class HostileTest(FdCountingTest):
    """Every case of hostile-frames.json against a receiving Endpoint, counting fds."""

    def setUp(self) -> None:
        super().setUp()
        # The disk-file case needs a real disk: a tmpfs file can carry seals, and would be
        # refused as unsealed rather than as not a memfd. Next to this file is a safe default.
        tmpdir = tempfile.TemporaryDirectory(
            dir=os.environ.get("SHMLINK_PEER_TMPDIR", Path(__file__).resolve().parent))
        self.addCleanup(tmpdir.cleanup)
        environ = mock.patch.dict(os.environ, {"SHMLINK_PEER_TMPDIR": tmpdir.name})
        environ.start()
        self.addCleanup(environ.stop)

    def test_cases(self) -> None:
        for case in CASES:
            with self.subTest(case=case["name"]):
                self.play(case)

    def play(self, case: dict[str, Any]) -> None:
        before = peer.open_fd_count()
        hostile, receiver = seqpacket_pair()
        with contextlib.closing(hostile):
            if not peer.send_hostile(hostile, case):
                hostile.close()
            with Endpoint(receiver) as endpoint:
                peer.expect_refusal(endpoint, case["expect"])
        self.assertEqual(peer.open_fd_count(), before, "file descriptors leaked")


class RolesTest(FdCountingTest):
    """The SCENARIO.md roles against each other, in threads."""

    def run_pair(self, left: Any, right: Any) -> tuple[Any, Any]:
        a_sock, b_sock = seqpacket_pair()
        results: dict[str, Any] = {}

        def run_right() -> None:
            try:
                with Endpoint(b_sock) as endpoint:
                    results["right"] = right(endpoint)
            except BaseException as error:  # reported by the main thread
                results["error"] = error

        thread = threading.Thread(target=run_right)
        thread.start()
        try:
            with Endpoint(a_sock) as endpoint:
                left_result = left(endpoint)
        finally:
            thread.join(120)
        if "error" in results:
            raise results["error"]
        return left_result, results["right"]

    def test_driver_and_responder(self) -> None:
        driven, responded = self.run_pair(lambda e: peer.drive(e, STEPS), peer.respond)
        sends = [step for step in STEPS if step["op"] == "send"]
        self.assertEqual(len(driven), len(sends))
        self.assertEqual(len(responded), len(sends))
        self.assertEqual([line["payload_len"] for line in responded],
                         [step["payload"]["len"] for step in sends])

    def test_echo(self) -> None:
        def ping(endpoint: Endpoint) -> None:
            with Region.create(1 << 20) as region:
                for seed in range(3):
                    peer.fill(region, seed)
                    endpoint.send(peer.pattern(seed, 100), [region])
                    reply = endpoint.receive()
                    self.assertEqual(bytes(reply.payload), bytes(peer.pattern(seed, 100)))
                    self.assertIs(reply.regions[0].region, region)
                    self.assertEqual(reply.regions[0].new, seed == 0)
                    self.assertFalse(reply.regions[0].transfer)

        self.run_pair(ping, peer.echo)


if __name__ == "__main__":
    unittest.main()
