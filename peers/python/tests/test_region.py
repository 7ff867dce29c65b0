"""Regions: creation, copies, the buffer protocol, freeze, close with live views, reclaim."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import os
import sys

import pytest

import shmlink
from shmlink import Endpoint, Region, ShmlinkError

from conftest import read_record, seqpacket_pair

F_SEAL_EXEC = 0x0020


def memfd_mappings() -> int:
    """Mappings of shmlink memory files in this process."""
    with open("/proc/self/maps") as maps:
        return sum("/memfd:shmlink" in line for line in maps)


def region_fd_of(region: Region) -> int:
    """A descriptor of the region's memory file, as a peer receives it (the caller closes it)."""
    ours, theirs = seqpacket_pair()
    with ours, theirs, Endpoint.from_fd(ours) as endpoint:
        theirs.sendmsg([shmlink.wire.hello_frame()])
        endpoint.send(b"", regions=[region], timeout=5)
        read_record(theirs)  # our HELLO
        _, fds = read_record(theirs)
    return fds[0]


def test_create_gives_a_sealed_zeroed_writable_region() -> None:
    with Region.create(10000) as region:
        assert (region.size, len(region), region.frozen, region.closed, region.transferred) == (
            10000, 10000, False, False, False)
        assert region.read() == bytes(10000)
        fd = region_fd_of(region)
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) == (
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            assert not seals & (fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            if os.uname().release.split(".")[:2] >= ["6", "3"]:  # MFD_NOEXEC_SEAL known
                assert seals & F_SEAL_EXEC, "created with MFD_NOEXEC_SEAL"
            assert os.fstat(fd).st_size == 10000
        finally:
            os.close(fd)


def test_the_memory_file_is_close_on_exec() -> None:
    with Region.create(4096):
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:shmlink"):
                    found.append(int(name))
            except OSError:
                pass
        assert found
        assert all(not os.get_inheritable(fd) for fd in found)


@pytest.mark.parametrize("size, kind", [(0, ValueError), (-1, ValueError), (2**70, ValueError),
                                        ("8", TypeError), (4096.0, TypeError), (True, TypeError)])
def test_create_refuses_bad_sizes(size: object, kind: type) -> None:
    with pytest.raises(kind) as caught:
        Region.create(size)  # type: ignore[arg-type]
    assert caught.value.code == shmlink.INVALID_ARG  # type: ignore[attr-defined]


def test_regions_are_not_constructed_directly() -> None:
    with pytest.raises(TypeError) as caught:
        Region(4096)
    assert caught.value.code == shmlink.INVALID_ARG  # type: ignore[attr-defined]


def test_read_write_and_read_into() -> None:
    with Region.create(100) as region:
        region.write(10, b"hello")
        region.write(20, "héllo")
        region.write(30, bytearray(b"abc"))
        region.write(40, memoryview(b"0123456789")[2:5])
        assert region.read(10, 5) == b"hello"
        assert region.read(20, 6) == "héllo".encode()
        assert region.read(30, 3) == b"abc" and region.read(40, 3) == b"234"
        assert region.read(95) == bytes(5)
        assert region.read(100) == b"" and region.read(0, 0) == b""
        target = bytearray(8)
        assert region.read_into(10, target) == 8 and target[:5] == b"hello"
        assert region.read_into(96, target) == 4 and target[:4] == bytes(4)
        assert region.read_into(100, target) == 0
        # A view of the region itself as the source: a memmove, so overlapping is fine.
        region.write(11, memoryview(region)[10:15])
        assert region.read(10, 6) == b"hhello"
        assert region[10:12] == b"hh" and region[10] == ord("h")
        region[0:2] = b"ok"
        assert region.read(0, 2) == b"ok"


@pytest.mark.parametrize("call", [
    lambda r: r.read(101),
    lambda r: r.read(90, 11),
    lambda r: r.write(98, b"abc"),
    lambda r: r.read_into(101, bytearray(1)),
    lambda r: r.read(-1),
])
def test_copies_outside_the_region_are_refused(call: object) -> None:
    with Region.create(100) as region:
        with pytest.raises(ValueError) as caught:
            call(region)  # type: ignore[operator]
        assert caught.value.code == shmlink.INVALID_ARG  # type: ignore[attr-defined]


def test_copy_arguments_are_checked() -> None:
    with Region.create(100) as region:
        for call in (lambda: region.write(0, 5), lambda: region.read_into(0, b"read-only"),
                     lambda: region.read("0"), lambda: region.write(0, [1, 2])):
            with pytest.raises(TypeError) as caught:
                call()
            assert caught.value.code == shmlink.INVALID_ARG  # type: ignore[attr-defined]
        with pytest.raises(ShmlinkError) as resize:
            region.resize(200)
        assert resize.value.code == shmlink.INVALID_ARG


def test_buffer_protocol_is_zero_copy() -> None:
    with Region.create(4096) as region:
        with memoryview(region) as view:
            assert (view.nbytes, view.readonly, view.format) == (4096, False, "B")
            view[100:103] = b"abc"
            assert region.read(100, 3) == b"abc"
            region.write(200, b"xyz")
            assert bytes(view[200:203]) == b"xyz"
        assert hashlib.sha256(region).digest() == hashlib.sha256(region.read()).digest()


def test_numpy_frombuffer_shares_the_memory() -> None:
    numpy = pytest.importorskip("numpy")
    with Region.create(1920 * 1080 * 4) as region:
        frame = numpy.frombuffer(region, dtype=numpy.uint8).reshape(1080, 1920, 4)
        assert frame.flags.writeable
        frame[..., 0] = 200
        assert region.read(0, 4) == bytes([200, 0, 0, 0])
        region.write(4, bytes([1, 2, 3, 4]))
        assert list(frame[0, 1]) == [1, 2, 3, 4]
        words = numpy.frombuffer(region, dtype=numpy.uint32, count=2, offset=4)
        assert words[0] == int.from_bytes(bytes([1, 2, 3, 4]), sys.byteorder)
        del frame, words


def test_close_with_a_live_memoryview_reads_zeros_and_lets_go_of_the_memory() -> None:
    region = Region.create(8192)
    region.write(0, b"secret")
    view = memoryview(region)
    mapped = memfd_mappings()
    region.close()  # no BufferError
    assert region.closed and region.size == 0 and len(region) == 0
    assert bytes(view[:6]) == bytes(6), "the view shows private zero pages now"
    view[0:4] = b"safe"  # harmless: private memory nobody else sees
    assert bytes(view[:4]) == b"safe"
    assert memfd_mappings() == mapped - 1, "the memory file is no longer mapped"
    for call in (lambda: region.read(), lambda: region.write(0, b"x"), lambda: region[0],
                 lambda: region.freeze(), lambda: region.reclaim()):
        with pytest.raises(ShmlinkError) as caught:
            call()
        assert caught.value.code == shmlink.REGION_CLOSED
    region.close()  # idempotent
    view.release()


def test_close_with_a_live_numpy_array() -> None:
    numpy = pytest.importorskip("numpy")
    region = Region.create(4096)
    array = numpy.frombuffer(region, dtype=numpy.uint8)
    array[:] = 7
    region.close()
    assert int(array.sum()) == 0
    array[0] = 1
    assert array[0] == 1
    del array
    gc.collect()


def test_close_without_views_unmaps_and_new_views_are_refused() -> None:
    region = Region.create(4096)
    region.close()
    with pytest.raises((ValueError, ShmlinkError)):
        memoryview(region)


def test_a_dropped_region_closes_its_memory_file() -> None:
    # The autouse fixture checks that no descriptor stays open.
    region = Region.create(4096)
    region.write(0, b"x")
    del region
    gc.collect()


def test_freeze_seals_and_keeps_views_valid() -> None:
    with Region.create(4096) as region:
        region.write(0, b"before")
        view = memoryview(region)
        assert region.freeze() is region
        assert region.frozen
        region.freeze()  # idempotent
        fd = region_fd_of(region)
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
            assert os.pread(fd, 6, 0) == b"before"
        finally:
            os.close(fd)
        for call in (lambda: region.write(0, b"x"), lambda: region.__setitem__(0, 1),
                     lambda: region.move(0, 1, 1), lambda: region.write_byte(1)):
            with pytest.raises(ShmlinkError) as caught:
                call()
            assert caught.value.code == shmlink.REGION_FROZEN
        assert bytes(view[:6]) == b"before"
        view[0:6] = b"stray!"  # a private copy of the page; the file is sealed
        assert bytes(view[:6]) == b"stray!"
        assert region.read(0, 6) == b"before", "read() returns the frozen contents"
        view.release()


def test_freeze_while_a_peer_maps_it_writable_is_busy_and_changes_nothing() -> None:
    a, b = Endpoint.pair()
    with a, b, Region.create(4096) as region:
        a.send(b"", regions=[region])
        theirs = b.recv(timeout=5).regions[0]
        assert theirs is not region  # another realm, as another process would map it
        with pytest.raises(ShmlinkError) as caught:
            region.freeze()
        assert caught.value.code == shmlink.REGION_BUSY
        assert (caught.value.syscall, caught.value.errno) == ("fcntl(F_ADD_SEALS)", 16)
        assert not region.frozen
        region.write(0, b"still shared")
        assert theirs.read(0, 12) == b"still shared"
        theirs.close()


def test_transferred_regions_refuse_access_until_reclaimed() -> None:
    a, b = Endpoint.pair()
    region = Region.create(4096)
    try:
        a.send(b"", transfer=[region])
        assert region.transferred
        for call in (lambda: region.read(), lambda: region.write(0, b"x"), lambda: region[0],
                     lambda: region.freeze(), lambda: a.send(b"", regions=[region])):
            with pytest.raises(ShmlinkError) as caught:
                call()
            assert caught.value.code == shmlink.REGION_TRANSFERRED
        if sys.version_info >= (3, 12):
            with pytest.raises(ShmlinkError) as view:
                memoryview(region)
            assert view.value.code == shmlink.REGION_TRANSFERRED
        with pytest.raises(ShmlinkError) as early:
            region.reclaim()
        assert early.value.code == shmlink.REGION_TRANSFERRED
        b.recv(timeout=5).regions[0].close()
        b.close()
        with pytest.raises(ShmlinkError):
            region.reclaim()  # the connection is still open on this side
        a.close()
        assert region.reclaim() is region
        assert not region.transferred
        region.write(0, b"mine again")
    finally:
        a.close()
        b.close()
        region.close()


def test_read_into_a_frozen_region_reads_the_file() -> None:
    with Region.create(4096) as region:
        region.write(0, b"frozen")
        view = memoryview(region)
        region.freeze()
        view[0:6] = b"stray!"
        target = bytearray(6)
        assert region.read_into(0, target) == 6 and target == b"frozen"
        numpy = pytest.importorskip("numpy")
        words = numpy.zeros(2, dtype=numpy.uint16)
        assert region.read_into(2, words) == 4 and words.tobytes() == b"ozen"
        view.release()


def test_the_mmap_methods_a_region_keeps_are_guarded() -> None:
    region = Region.create(4096)
    region.write(0, b"line one\nline two\n")
    assert region.find(b"two") == 14 and region.rfind(b"line") == 9
    assert region.readline() == b"line one\n" and region.read_byte() == ord("l")
    region.move(0, 9, 9)
    assert region.read(0, 9) == b"line two\n"
    region.flush()
    assert repr(region) == "<shmlink.Region 4096 bytes>"
    region.close()
    assert repr(region) == "<shmlink.Region 4096 bytes, closed>"
    for call in (lambda: region.find(b"x"), lambda: region.readline(), lambda: region.move(0, 1, 1),
                 lambda: region.write_byte(1), lambda: region.flush()):
        with pytest.raises(ShmlinkError) as caught:
            call()
        assert caught.value.code == shmlink.REGION_CLOSED
