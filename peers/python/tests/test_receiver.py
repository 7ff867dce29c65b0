"""The receiver's checks against a hostile peer (PROTOCOL.md §5.3, §7, SECURITY.md).

A raw socket plays the peer and sends bad records. Each must fail with the documented
code, close every descriptor it carried (the autouse fixture counts /proc/self/fd around
every test, and each case also counts right after the refusal), shut the socket down so
the peer reads end-of-file, and leave the endpoint closed.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from contextlib import ExitStack
from typing import Any, Callable, Optional

import pytest

import shmlink
from shmlink import Endpoint, Region, ShmlinkError, _sys, wire

from conftest import PEERS, RawPeer, memfd, message, open_fds

MakePair = Callable[..., tuple[Endpoint, RawPeer]]
NEW, FROZEN, TRANSFER = wire.FLAG_NEW, wire.FLAG_FROZEN, wire.FLAG_TRANSFER
MFD_HUGETLB = 0x0004


def refuse(endpoint: Endpoint, peer: RawPeer, expect: str,
           before: Optional[set[int]] = None) -> ShmlinkError:
    """The next receive fails with ``expect``; nothing the record carried stays open; the
    peer reads end-of-file; the endpoint is over."""
    with pytest.raises(ShmlinkError) as caught:
        endpoint.recv(timeout=5)
    assert caught.value.code == expect, caught.value
    if before is not None:
        assert open_fds() - before == set(), "the refused record's descriptors were closed"
    peer.records_until_eof()  # end-of-file arrives: the socket was shut down
    assert endpoint.closed
    with pytest.raises(ShmlinkError) as later:
        endpoint.recv(timeout=5)
    # After end-of-file, calls keep reporting it; after a refusal, the endpoint is closed.
    assert later.value.code == (shmlink.PEER_CLOSED if expect == shmlink.PEER_CLOSED
                                else shmlink.CLOSED)
    return caught.value


def send_with(peer: RawPeer, frame: bytes, fds: list[int]) -> set[int]:
    """Sends ``frame`` with ``fds`` (closing our copies); the descriptors open now, for
    comparing after the refusal."""
    peer.send_fds(frame, fds)
    return open_fds()


# -- every case of peers/hostile-frames.json --------------------------------------------

def _cases() -> list[dict[str, Any]]:
    path = PEERS / "hostile-frames.json"
    if not path.exists():
        return []
    cases: list[dict[str, Any]] = json.loads(path.read_text())["cases"]
    return cases


def _disk_directory() -> str:
    """A directory whose files are not on tmpfs (a tmpfs file can carry seals)."""
    candidates = [os.environ.get("SHMLINK_PEER_TMPDIR"), "/var/tmp", str(PEERS), os.getcwd()]
    for directory in filter(None, candidates):
        try:
            with tempfile.TemporaryFile(dir=directory) as probe:
                if _sys.filesystem_type(probe.fileno()) != _sys.TMPFS_MAGIC:
                    return directory
        except OSError:
            continue
    pytest.skip("no directory off tmpfs for the disk-file case")


def _descriptor(spec: dict[str, Any], stack: ExitStack) -> int:
    kind = spec["type"]
    if kind == "memfd":
        return memfd(spec["size"], tuple(spec["seals"]))
    if kind == "pipe":
        read_end, write_end = os.pipe()
        stack.callback(os.close, write_end)
        return read_end
    if kind == "socket":
        one, other = socket.socketpair()
        stack.enter_context(other)
        return one.detach()
    if kind == "file":
        file = tempfile.TemporaryFile(dir=_disk_directory())
        os.ftruncate(file.fileno(), spec["size"])
        fd = os.dup(file.fileno())
        file.close()
        return fd
    raise AssertionError(kind)


@pytest.mark.skipif(not _cases(), reason="peers/hostile-frames.json is not here (not a checkout)")
@pytest.mark.parametrize("case", _cases(), ids=lambda case: case["name"])
def test_hostile_frames_of_the_interop_suite(raw_pair: MakePair, case: dict[str, Any]) -> None:
    endpoint, peer = raw_pair(accept_writable=True)
    before = open_fds()
    if case["hello"] == "valid":
        peer.hello()
    elif case["hello"] != "none":
        peer.send(bytes.fromhex(case["hello"]))
    frame = bytes.fromhex(case["frame"]) + bytes(case.get("pad", 0))
    if frame:
        with ExitStack() as stack:
            fds = [_descriptor(spec, stack) for spec in case["fds"]]
            peer.send_fds(frame, fds)
    else:
        peer.sock.shutdown(socket.SHUT_WR)
    refuse(endpoint, peer, case["expect"], before)


# -- §7 judging order: the two cases the first Python peer got wrong ----------------------

def test_an_empty_record_with_descriptors_is_a_violation_not_end_of_file(
        raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair()
    peer.hello()
    before = send_with(peer, b"", [memfd(4096)])
    refuse(endpoint, peer, shmlink.PROTOCOL_VIOLATION, before)


def test_the_first_frame_is_judged_by_magic_and_version_before_its_flags(
        raw_pair: MakePair) -> None:
    hello = bytearray(wire.hello_frame())
    hello[1] = 0x01           # reserved header flags set...
    hello[8:16] = b"HTTP/1.1"  # ...and not a shmlink HELLO at all: incompatible
    endpoint, peer = raw_pair()
    peer.send(bytes(hello))
    refuse(endpoint, peer, shmlink.PEER_INCOMPATIBLE)
    flags_only = bytearray(wire.hello_frame())
    flags_only[1] = 0x01
    endpoint, peer = raw_pair()
    peer.send(bytes(flags_only))
    refuse(endpoint, peer, shmlink.PROTOCOL_VIOLATION)


def test_descriptors_with_the_hello_are_a_violation(raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair()
    before = send_with(peer, wire.hello_frame(), [memfd(4096)])
    refuse(endpoint, peer, shmlink.PROTOCOL_VIOLATION, before)


# -- §5.3: what a descriptor must be ---------------------------------------------------------

def test_a_hugetlbfs_memfd_is_not_shmem(raw_pair: MakePair) -> None:
    try:
        fd = os.memfd_create("huge", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | MFD_HUGETLB)
    except OSError as error:
        pytest.skip(f"no hugetlbfs memfd here: {error}")
    try:
        size = 2 << 20
        os.ftruncate(fd, size)
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    except OSError as error:
        os.close(fd)
        pytest.skip(f"hugetlbfs memfd cannot be sized or sealed here: {error}")
    endpoint, peer = raw_pair()
    peer.hello()
    before = send_with(peer, message([(1, NEW, size)]), [fd])
    refuse(endpoint, peer, shmlink.REGION_NOT_SHMEM, before)


def test_a_tmpfs_file_that_is_not_a_memfd_is_unsealed(raw_pair: MakePair) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    endpoint, peer = raw_pair()
    peer.hello()
    before = send_with(peer, message([(1, NEW, 4096)]), [fd])
    refuse(endpoint, peer, shmlink.REGION_UNSEALED, before)


def test_a_region_refused_midway_closes_what_was_mapped_for_the_record(
        raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair()
    peer.hello()
    mapped_before = _memfd_mappings()
    before = send_with(peer, message([(1, NEW, 4096), (2, NEW, 4096)]),
                       [memfd(4096), memfd(4096, ("grow",))])
    refuse(endpoint, peer, shmlink.REGION_UNSEALED, before)
    assert _memfd_mappings() == mapped_before


def _memfd_mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("/memfd:test" in line for line in maps)


def test_later_descriptors_are_checked_against_the_binding(raw_pair: MakePair) -> None:
    for second, expect in ((message([(1, FROZEN, 4096)]), shmlink.PROTOCOL_VIOLATION),
                           (message([(1, 0, 8192)]), shmlink.PROTOCOL_VIOLATION),
                           (message([(1, NEW, 4096)]), shmlink.PROTOCOL_VIOLATION),
                           (message([(1, 0, 8192)], kind=wire.KIND_RELEASE),
                            shmlink.PROTOCOL_VIOLATION)):
        endpoint, peer = raw_pair()
        peer.hello()
        peer.send_fds(message([(1, NEW, 4096)]), [memfd(4096)])
        first = endpoint.recv(timeout=5)
        fds = [memfd(4096)] if second[12] & NEW else []
        before = send_with(peer, second, fds)
        refuse(endpoint, peer, expect, before)
        first.regions[0].close()


def test_release_frees_the_peers_binding(raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair()
    peer.hello()
    peer.send_fds(message([(1, NEW, 4096)]), [memfd(4096)])
    received = endpoint.recv(timeout=5).regions[0]
    peer.send(message([(1, 0, 4096)], kind=wire.KIND_RELEASE))
    peer.send(message([], b"after"))
    assert endpoint.recv(timeout=5).payload == b"after"
    assert endpoint.stats().peer_regions == 0
    received.close()
    # The id is free again, so NEW for it is allowed.
    peer.send_fds(message([(1, NEW, 8192)]), [memfd(8192)])
    again = endpoint.recv(timeout=5).regions[0]
    assert again.size == 8192
    again.close()


def test_a_closed_region_the_peer_refers_to_again_is_mapped_again(raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair()
    peer.hello()
    fd = memfd(4096)
    os.pwrite(fd, b"kept", 0)
    peer.send(message([(1, NEW, 4096)]), [fd])
    first = endpoint.recv(timeout=5).regions[0]
    first.close()
    peer.send(message([(1, 0, 4096)]))
    second = endpoint.recv(timeout=5).regions[0]
    assert second is not first and second.read(0, 4) == b"kept"
    second.close()
    os.close(fd)


def test_a_memory_file_that_arrives_again_is_the_same_region(raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair()
    peer.hello()
    fd = memfd(4096)
    peer.send(message([(1, NEW, 4096)]), [fd])
    peer.send(message([(2, NEW, 4096)]), [fd])
    first = endpoint.recv(timeout=5).regions[0]
    second = endpoint.recv(timeout=5).regions[0]
    assert first is second
    assert endpoint.stats().peer_regions == 2
    assert endpoint.stats().peer_mapped_bytes == 4096, "one file counted once"
    first.close()
    os.close(fd)


# -- local policy: trust and limits ----------------------------------------------------------

def test_writable_regions_from_an_untrusted_peer_are_refused_after_the_seal_checks(
        raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair(accept_writable=False)
    peer.hello()
    before = send_with(peer, message([(1, NEW, 4096)]), [memfd(4096)])
    refuse(endpoint, peer, shmlink.REGION_WRITABLE, before)
    # An unsealed writable region is refused as unsealed first (§5.3 before §7.1).
    endpoint, peer = raw_pair(accept_writable=False)
    peer.hello()
    before = send_with(peer, message([(1, NEW, 4096)]), [memfd(4096, ())])
    refuse(endpoint, peer, shmlink.REGION_UNSEALED, before)
    # Frozen regions are welcome.
    endpoint, peer = raw_pair(accept_writable=False)
    peer.hello()
    peer.send_fds(message([(1, NEW | FROZEN, 4096)]),
                  [memfd(4096, ("shrink", "grow", "write", "seal"))])
    received = endpoint.recv(timeout=5).regions[0]
    assert received.frozen
    received.close()


def frozen_memfd(size: int) -> int:
    return memfd(size, ("shrink", "grow", "write", "seal"))


@pytest.mark.parametrize("limits, records, refused_at", [
    ({"max_region_size": 4096}, [[(1, 8192)]], 0),
    ({"max_bound_regions": 2}, [[(1, 4096), (2, 4096)], [(3, 4096)]], 1),
    ({"max_mapped_bytes": 12288}, [[(1, 8192)], [(2, 8192)]], 1),
])
def test_connection_limits(raw_pair: MakePair, limits: dict[str, int],
                           records: list[list[tuple[int, int]]], refused_at: int) -> None:
    endpoint, peer = raw_pair(limits=limits, accept_writable=False)
    peer.hello()
    kept: list[Region] = []
    for index, regions in enumerate(records):
        frame = message([(region_id, NEW | FROZEN, size) for region_id, size in regions])
        fds = [frozen_memfd(size) for _, size in regions]
        if index < refused_at:
            peer.send_fds(frame, fds)
            kept.extend(endpoint.recv(timeout=5).regions)
        else:
            before = send_with(peer, frame, fds)
            refuse(endpoint, peer, shmlink.LIMIT_EXCEEDED, before)
    for region in kept:
        region.close()


def test_process_limits(raw_pair: MakePair) -> None:
    original = shmlink.process_stats()
    assert (original.max_mapped_bytes, original.max_regions) == (64 << 30, 16384)
    try:
        shmlink.set_process_limits(max_regions=original.regions + 1)
        first, peer_one = raw_pair()
        peer_one.hello()
        peer_one.send_fds(message([(1, NEW, 4096)]), [memfd(4096)])
        held = first.recv(timeout=5).regions[0]
        assert shmlink.process_stats().regions == original.regions + 1
        assert shmlink.process_stats().mapped_bytes == original.mapped_bytes + 4096
        # Another connection, inside its own limits, still cannot go over the process's.
        second, peer_two = raw_pair()
        peer_two.hello()
        before = send_with(peer_two, message([(1, NEW, 4096)]), [memfd(4096)])
        refuse(second, peer_two, shmlink.LIMIT_EXCEEDED, before)
        held.close()
        assert shmlink.process_stats().regions == original.regions
        shmlink.set_process_limits(max_mapped_bytes=original.mapped_bytes + 4095,
                                   max_regions=original.max_regions)
        third, peer_three = raw_pair()
        peer_three.hello()
        before = send_with(peer_three, message([(1, NEW, 4096)]), [memfd(4096)])
        refuse(third, peer_three, shmlink.LIMIT_EXCEEDED, before)
    finally:
        shmlink.set_process_limits(max_mapped_bytes=original.max_mapped_bytes,
                                   max_regions=original.max_regions)
    for bad in ({"max_regions": 0}, {"max_mapped_bytes": -1}, {"max_regions": 1.5}):
        with pytest.raises(ShmlinkError) as caught:
            shmlink.set_process_limits(**bad)  # type: ignore[arg-type]
        assert caught.value.code == shmlink.INVALID_ARG


def test_more_descriptors_than_announced_are_truncated(raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair(limits={"max_regions": 3})
    peer.hello()
    frame = message([(i, NEW, 4096) for i in range(1, 5)])
    before = send_with(peer, frame, [memfd(4096) for _ in range(4)])
    refuse(endpoint, peer, shmlink.FDS_TRUNCATED, before)


def test_a_record_longer_than_the_limits_allow_is_a_violation(raw_pair: MakePair) -> None:
    endpoint, peer = raw_pair(limits={"max_payload": 100})
    peer.hello()
    peer.send(message([], b"x" * 101))
    refuse(endpoint, peer, shmlink.PROTOCOL_VIOLATION)

