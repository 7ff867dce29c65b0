"""Endpoints over socket pairs: sending, receiving, bindings, releases, the life cycle."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import shmlink
from shmlink import Endpoint, Limits, Region, ShmlinkError

from conftest import RawPeer, message, read_record, seqpacket_pair


@pytest.fixture
def pair() -> Iterator[tuple[Endpoint, Endpoint]]:
    a, b = Endpoint.pair()
    yield a, b
    a.close()
    b.close()


def code_of(call: object) -> str:
    with pytest.raises(ShmlinkError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


def test_payloads_of_every_kind(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    numpy = None
    try:
        import numpy
    except ImportError:
        pass
    payloads: list[object] = [b"bytes", "strïng", bytearray(b"ba"), memoryview(b"xmvx")[1:3], b""]
    if numpy is not None:
        payloads.append(numpy.arange(4, dtype=numpy.uint16))
    for payload in payloads:
        a.send(payload)  # type: ignore[arg-type]
        got = b.recv(timeout=5)
        expected = payload.encode() if isinstance(payload, str) else bytes(payload)  # type: ignore[call-overload]
        assert got.payload == expected and got.regions == [] and got.descriptors == []
    assert code_of(lambda: a.send(12)) == shmlink.INVALID_ARG
    assert code_of(lambda: a.send(b"", regions=[b"x"])) == shmlink.INVALID_ARG
    assert code_of(lambda: a.send(b"", transfer=Region)) == shmlink.INVALID_ARG


def test_ids_new_flags_and_identity(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    with Region.create(8192) as mine, Region.create(4096) as frozen:
        frozen.write(0, b"ice")
        frozen.freeze()
        a.send(b"x", regions=[mine, frozen, mine])
        got = b.recv(timeout=5)
        assert got.descriptors == [(1, True, False, False), (2, True, True, False),
                                   (1, False, False, False)]
        theirs, theirs_frozen, again = got.regions
        assert again is theirs and theirs is not mine
        assert theirs_frozen.frozen and theirs_frozen.read(0, 3) == b"ice"
        with memoryview(theirs_frozen) as view:
            assert view.readonly, "a received frozen region is mapped read-only"
        assert a.region_id(mine) == 1 and a.region_id(frozen) == 2
        assert b.region_id(theirs) is None

        mine.write(0, b"shared")
        a.send(b"again", regions=[mine])
        got = b.recv(timeout=5)
        assert got.descriptors == [(1, False, False, False)] and got.regions[0] is theirs
        assert theirs.read(0, 6) == b"shared"

        # Sent back: NEW in b's namespace, and the very object a has.
        b.send(b"back", transfer=[theirs])
        back = a.recv(timeout=5)
        assert back.descriptors == [(1, True, False, True)] and back.regions[0] is mine

        assert a.stats().own_regions == 2 and b.stats().peer_regions == 2
        assert b.stats().peer_mapped_bytes == 8192 + 4096
        theirs_frozen.close()
        theirs.close()


def test_attachment_rule_of_regions_and_transfer(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    r1, r2, r3 = (Region.create(4096 * (i + 1)) for i in range(3))
    try:
        # r1 in both: transferred in its place; r3 only in transfer: after the regions.
        a.send(b"", regions=[r1, r2], transfer=[r3, r1])
        got = b.recv(timeout=5)
        assert [r.size for r in got.regions] == [4096, 8192, 12288]
        assert [d.transferred for d in got.descriptors] == [True, False, True]
        assert r1.transferred and not r2.transferred and r3.transferred
        b.send(b"", transfer=[got.regions[0], got.regions[2]])
        assert a.recv(timeout=5).regions == [r1, r3]
        assert not r1.transferred and not r3.transferred
        before = a.stats()
        # A transferred region attached twice is refused, and nothing changes.
        for regions, transfer in (([r1, r1], [r1]), ([], [r2, r2]), ([r1, r2, r1], [r1])):
            assert code_of(lambda r=regions, t=transfer: a.send(b"", regions=r, transfer=t)) == (
                shmlink.INVALID_ARG)
        assert not r1.transferred and not r2.transferred
        assert a.stats() == before
        assert code_of(lambda: b.recv(timeout=0)) == shmlink.TIMED_OUT
        for region in got.regions:
            region.close()
    finally:
        for region in (r1, r2, r3):
            region.close()


def test_release_and_region_close_tell_the_peer(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    one, two = Region.create(4096), Region.create(4096)
    a.send(b"", regions=[one, two])
    received = b.recv(timeout=5).regions
    assert b.stats().peer_regions == 2
    assert a.release(one) is True
    assert a.release(one) is False
    assert a.region_id(one) is None
    two.close()  # a RELEASE for id 2 goes out too
    assert a.stats().own_regions == 0
    a.send(b"rebind", regions=[one])
    got = b.recv(timeout=5)
    assert got.descriptors == [(3, True, False, False)], "ids are not reused"
    assert b.stats().peer_regions == 1
    one.close()
    for region in received + got.regions:
        region.close()


def test_limits_of_the_peer_are_checked_before_sending(raw_pair: object) -> None:
    endpoint, peer = raw_pair()  # type: ignore[operator]
    peer.hello(max_regions=2, max_payload=10)
    regions = [Region.create(4096) for _ in range(3)]
    try:
        assert code_of(lambda: endpoint.send(b"x" * 11)) == shmlink.PAYLOAD_TOO_LARGE
        assert code_of(lambda: endpoint.send(b"", regions=regions)) == shmlink.TOO_MANY_REGIONS
        assert code_of(lambda: endpoint.send(b"x" * 65537)) == shmlink.PAYLOAD_TOO_LARGE
        endpoint.send(b"x" * 10, regions=regions[:2])
        assert endpoint.stats().messages_out == 1
        read_record(peer.sock)  # our HELLO
        data, fds = read_record(peer.sock)
        assert len(data) == 8 + 32 + 10 and len(fds) == 2
        for fd in fds:
            os.close(fd)
    finally:
        for region in regions:
            region.close()


def test_announced_limits_follow_the_limits_option() -> None:
    a, b = Endpoint.pair(limits={"max_regions": 3, "max_payload": 100})
    with a, b:
        assert a.handshake(timeout=5) == (3, 100)
        assert a.peer_limits == (3, 100)
        assert code_of(lambda: b.send(b"x" * 101)) == shmlink.PAYLOAD_TOO_LARGE
        assert a.stats().limits == Limits(max_regions=3, max_payload=100)
    for bad in ({"max_regions": 0}, {"max_regions": 254}, {"max_payload": 65537},
                {"max_mapped_bytes": 0}, {"nonsense": 1}):
        assert code_of(lambda bad=bad: Endpoint.pair(limits=bad)) == shmlink.INVALID_ARG


def test_no_receive_timeout_unless_asked(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    assert code_of(lambda: b.recv(timeout=0.05)) == shmlink.TIMED_OUT
    assert code_of(lambda: b.recv(timeout=-1)) == shmlink.INVALID_ARG
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(b.recv()))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not got, "an idle recv() waits"
    a.send(b"late")
    waiter.join(5)
    assert got[0].payload == b"late"  # type: ignore[attr-defined]


def test_close_from_another_thread_wakes_a_waiting_recv(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    outcome: list[object] = []

    def receive() -> None:
        try:
            b.recv()
        except ShmlinkError as error:
            outcome.append(error.code)

    waiter = threading.Thread(target=receive)
    waiter.start()
    time.sleep(0.1)
    b.close()
    waiter.join(5)
    assert outcome == [shmlink.CLOSED]
    assert b.closed and b.fileno() == -1


def test_iteration_ends_quietly_when_the_peer_closes(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    for n in range(3):
        a.send(str(n))
    a.close()  # messages sent before closing are still delivered first
    assert [m.payload for m in b] == [b"0", b"1", b"2"]
    assert code_of(lambda: b.recv()) == shmlink.PEER_CLOSED
    assert code_of(lambda: b.send(b"x")) == shmlink.PEER_CLOSED
    assert code_of(lambda: a.recv()) == shmlink.CLOSED
    assert code_of(lambda: a.send(b"x")) == shmlink.CLOSED
    assert code_of(lambda: a.peer) == shmlink.CLOSED


def test_iteration_ends_quietly_when_closed_here(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    seen: list[bytes] = []

    def loop() -> None:
        for m in b:
            seen.append(m.payload)

    worker = threading.Thread(target=loop)
    worker.start()
    a.send(b"one")
    time.sleep(0.1)
    b.close()
    worker.join(5)
    assert not worker.is_alive() and seen == [b"one"]


def test_peer_credentials_and_stats(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    assert a.peer == (os.getpid(), os.getuid(), os.getgid())
    a.send(b"12345")
    b.recv(timeout=5)
    assert (a.stats().messages_out, a.stats().bytes_out) == (1, 5)
    assert (b.stats().messages_in, b.stats().bytes_in) == (1, 5)
    assert isinstance(b.fileno(), int) and b.fileno() > 2


def test_a_send_that_times_out_sends_nothing() -> None:
    a, b = Endpoint.pair()
    with a, b:
        a.handshake(timeout=5)
        sent = 0
        with pytest.raises(ShmlinkError) as caught:
            while True:
                a.send(b"x" * 60000, timeout=0.05)
                sent += 1
        assert caught.value.code == shmlink.TIMED_OUT
        assert a.stats().messages_out == sent
        received = 0
        while True:
            try:
                b.recv(timeout=0)
            except ShmlinkError as error:
                assert error.code == shmlink.TIMED_OUT
                break
            received += 1
        assert received == sent


def test_a_failure_is_reported_once_then_closed(raw_pair: object) -> None:
    endpoint, peer = raw_pair()  # type: ignore[operator]
    peer.hello()
    peer.send(message([], b"") + b"junk")  # lengths do not add up
    assert code_of(lambda: endpoint.recv(timeout=5)) == shmlink.PROTOCOL_VIOLATION
    assert endpoint.closed
    assert code_of(lambda: endpoint.recv(timeout=5)) == shmlink.CLOSED
    assert code_of(lambda: endpoint.send(b"")) == shmlink.CLOSED
    assert peer.records_until_eof() == [shmlink.wire.hello_frame()]


def test_records_sent_before_a_reset_are_still_read() -> None:
    # The peer sends HELLO and a message, then closes with our HELLO unread: Linux reports
    # ECONNRESET once, before what the peer sent (PROTOCOL.md §1 rule 6).
    ours, theirs = seqpacket_pair()
    theirs.sendmsg([shmlink.wire.hello_frame()])
    theirs.sendmsg([message([], b"last words")])
    endpoint = Endpoint.from_fd(ours)
    theirs.close()
    with endpoint:
        assert endpoint.recv(timeout=5).payload == b"last words"
        assert code_of(lambda: endpoint.recv(timeout=5)) == shmlink.PEER_CLOSED


def test_from_fd_takes_sockets_and_refuses_anything_else() -> None:
    ours, theirs = seqpacket_pair()
    with theirs:
        with Endpoint.from_fd(ours.detach()) as endpoint:
            theirs.sendmsg([shmlink.wire.hello_frame()])
            assert endpoint.handshake(timeout=5) == (32, 65536)
    read_end, write_end = os.pipe()
    stream_a, stream_b = socket.socketpair()
    try:
        for fd in (read_end, stream_a.fileno(), 1):
            assert code_of(lambda fd=fd: Endpoint.from_fd(fd)) == shmlink.INVALID_ARG
            if fd > 2:
                os.fstat(fd)  # left open: it belongs to the caller
        closed_number = os.dup(read_end)
        os.close(closed_number)
        assert code_of(lambda: Endpoint.from_fd(closed_number)) == shmlink.INVALID_ARG
        assert code_of(lambda: Endpoint.from_fd("3")) == shmlink.INVALID_ARG
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as unconnected:
            assert code_of(lambda: Endpoint.from_fd(unconnected.fileno())) == shmlink.INVALID_ARG
            os.fstat(unconnected.fileno())  # left open
    finally:
        os.close(read_end)
        os.close(write_end)
        stream_a.close()
        stream_b.close()


def test_endpoints_are_not_constructed_directly() -> None:
    assert code_of(lambda: Endpoint()) == shmlink.INVALID_ARG
    assert code_of(lambda: shmlink.Server()) == shmlink.INVALID_ARG


def test_raw_peer_fixture_sees_our_hello(raw_pair: object) -> None:
    endpoint, peer = raw_pair()  # type: ignore[operator]
    assert isinstance(peer, RawPeer)
    data, fds = read_record(peer.sock)
    assert data == shmlink.wire.hello_frame() and fds == []


def test_threads_may_send_and_receive_at_once(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    count = 500
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(
        b.recv(timeout=30).payload for _ in range(2 * count)))
    reader.start()
    senders = [threading.Thread(target=lambda tag=tag: [
        a.send(b"%c%d" % (tag, n), timeout=30) for n in range(count)]) for tag in b"xy"]
    for sender in senders:
        sender.start()
    for thread in senders + [reader]:
        thread.join(60)
    assert len(received) == 2 * count
    for tag in b"xy":
        mine = [int(p[1:]) for p in received if p[0] == tag]
        assert mine == list(range(count)), "each sender's messages arrive in its order"
