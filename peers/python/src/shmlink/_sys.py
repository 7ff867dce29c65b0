"""The operating system: every call the standard library does not offer, in one place.

shmlink needs Linux (sealable memory files and ``SOCK_SEQPACKET`` Unix sockets). Three
calls come from the C library through :mod:`ctypes`, because the standard library has
no wrapper for them: ``mmap`` with ``MAP_FIXED`` (to change what an existing mapping
shows without moving it), ``fstatfs`` (to tell tmpfs from hugetlbfs) and
``PyObject_GetBuffer`` (to learn a mapping's address). Everything else is :mod:`os`,
:mod:`fcntl` and :mod:`socket`.
"""

from __future__ import annotations

import ctypes
import fcntl
import math
import mmap
import os
import platform
import select
import socket
import stat
import struct
import sys
import time
from typing import NamedTuple, Optional

from .errors import UNSUPPORTED, ShmlinkError, os_error

if not sys.platform.startswith("linux"):  # pragma: no cover - checked on import
    raise ShmlinkError(
        UNSUPPORTED,
        f"shmlink needs Linux (sealable memfds and SOCK_SEQPACKET sockets); this is "
        f"{sys.platform}")

# -- constants that the standard library does not export ---------------------------------

#: ``MFD_NOEXEC_SEAL`` (Linux 6.3): the memory file can never be made executable.
MFD_NOEXEC_SEAL = 0x0008
#: ``F_SEAL_FUTURE_WRITE`` (Linux 5.1), from ``<linux/fcntl.h>``.
F_SEAL_FUTURE_WRITE = 0x0010
#: ``TMPFS_MAGIC`` from ``<linux/magic.h>``: shmem, where every memfd lives except hugetlb ones.
TMPFS_MAGIC = 0x01021994

F_SEAL_SHRINK = fcntl.F_SEAL_SHRINK
F_SEAL_GROW = fcntl.F_SEAL_GROW
F_SEAL_WRITE = fcntl.F_SEAL_WRITE
F_SEAL_SEAL = fcntl.F_SEAL_SEAL

PROT_READ = mmap.PROT_READ
PROT_WRITE = mmap.PROT_WRITE
MAP_SHARED = mmap.MAP_SHARED
MAP_PRIVATE = mmap.MAP_PRIVATE
MAP_ANONYMOUS = mmap.MAP_ANONYMOUS
#: ``MAP_FIXED`` is 0x10 on every Linux architecture except alpha (0x100), which
#: shmlink does not support.
MAP_FIXED = 0x10
# MAP_NORESERVE differs between architectures; the mmap module exports it from 3.12 on.
_NORESERVE_BY_MACHINE = {"ppc64": 0x40, "ppc64le": 0x40, "ppc": 0x40, "sparc64": 0x40,
                         "mips": 0x400, "mips64": 0x400}
MAP_NORESERVE: int = getattr(mmap, "MAP_NORESERVE",
                             _NORESERVE_BY_MACHINE.get(platform.machine(), 0x4000))

_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
MSG_NOSIGNAL = int(socket.MSG_NOSIGNAL)
_INT_SIZE = struct.calcsize("i")

# -- the C library -----------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long]
_MAP_FAILED = ctypes.c_void_p(-1).value
_fstatfs = _libc.fstatfs
_fstatfs.restype = ctypes.c_int
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
# struct statfs is 120 bytes on 64-bit Linux; f_type (a long, or an unsigned long on
# musl) is its first field everywhere.
_STATFS_SIZE = 256


class _PyBuffer(ctypes.Structure):
    # Only `buf` (the first field of Py_buffer) is read; the rest is room for the struct.
    _fields_ = [("buf", ctypes.c_void_p), ("_rest", ctypes.c_char * 128)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def buffer_address(obj: object) -> int:
    """The address of the first byte of ``obj``'s buffer (an ``mmap``)."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), 0) != 0:  # pragma: no cover - raises instead
        raise RuntimeError("PyObject_GetBuffer failed")
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))


def map_fixed(address: int, length: int, prot: int, flags: int, fd: int, op: str) -> None:
    """``mmap(address, length, prot, flags | MAP_FIXED, fd, 0)``.

    Replaces whatever ``address..address + length`` shows, in one step and without
    unmapping the range, so every pointer and view into it stays valid. The caller
    guarantees that the range is one mapping it owns (a region's own mapping).
    """
    result = _mmap(address, length, prot, flags | MAP_FIXED, fd, 0)
    if result == _MAP_FAILED or result != address:
        number = ctypes.get_errno()
        raise os_error(op, "mmap(MAP_FIXED)", OSError(number, os.strerror(number)),
                       "the region could not be mapped: address space, vm.max_map_count or "
                       "memory that may be committed is exhausted")


def filesystem_type(fd: int) -> int:
    """``fstatfs(fd).f_type``, as an unsigned 32-bit magic number."""
    buffer = ctypes.create_string_buffer(_STATFS_SIZE)
    if _fstatfs(fd, buffer) != 0:
        number = ctypes.get_errno()
        raise os_error("inspect region", "fstatfs", OSError(number, os.strerror(number)),
                       "the descriptor cannot be inspected")
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


# -- memory files ------------------------------------------------------------------------

_noexec_known = True


def create_memory_file(size: int, op: str) -> int:
    """A memfd of ``size`` bytes sealed against shrinking and growing, close-on-exec.

    Created with ``MFD_NOEXEC_SEAL`` where the kernel knows the flag (6.3 and later,
    needed under ``vm.memfd_noexec=2``); older kernels refuse it with ``EINVAL`` and get
    a plain sealable memfd.
    """
    global _noexec_known
    base = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    fd = -1
    if _noexec_known:
        try:
            fd = os.memfd_create("shmlink", base | MFD_NOEXEC_SEAL)
        except OSError as error:
            if error.errno != 22:  # EINVAL: an older kernel
                raise os_error(op, "memfd_create", error,
                               "raise the open-file limit (ulimit -n) or close unused regions"
                               ) from None
            _noexec_known = False
    if fd < 0:
        try:
            fd = os.memfd_create("shmlink", base)
        except OSError as error:
            raise os_error(op, "memfd_create", error,
                           "raise the open-file limit (ulimit -n) or close unused regions"
                           ) from None
    try:
        try:
            os.ftruncate(fd, size)
        except OSError as error:
            raise os_error(op, "ftruncate", error,
                           "the region is larger than the memory this process may use") from None
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)
        except OSError as error:
            raise os_error(op, "fcntl(F_ADD_SEALS)", error,
                           "this kernel cannot seal memfds") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def seals(fd: int) -> Optional[int]:
    """The seals of ``fd``, or None when the file cannot carry seals (not a memfd)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as error:
        if error.errno == 22:  # EINVAL
            return None
        raise os_error("inspect region", "fcntl(F_GET_SEALS)", error,
                       "the descriptor cannot be inspected") from None


class FileInfo(NamedTuple):
    is_regular: bool
    size: int
    identity: tuple[int, int]


def file_info(fd: int) -> FileInfo:
    try:
        st = os.fstat(fd)
    except OSError as error:
        raise os_error("inspect region", "fstat", error,
                       "the descriptor cannot be inspected") from None
    return FileInfo(stat.S_ISREG(st.st_mode), st.st_size, (st.st_dev, st.st_ino))


def read_file_at(fd: int, offset: int, target: memoryview, op: str) -> None:
    """Fills ``target`` with the file's bytes at ``offset`` (``pread``), as the file holds them."""
    done = 0
    total = len(target)
    while done < total:
        try:
            count = os.preadv(fd, [target[done:]], offset + done)
        except OSError as error:
            raise os_error(op, "pread", error, "the region could not be read") from None
        if count == 0:
            raise ShmlinkError("ERR_SHMLINK_OS",
                               f"{op}: the region's file ended early; it cannot have shrunk "
                               "(it is sealed), so report this")
        done += count


# -- sockets -----------------------------------------------------------------------------


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer, as the kernel recorded them (``SO_PEERCRED``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def describe_fd(fd: int) -> str:
    """What kind of file ``fd`` is, in words, for error messages."""
    try:
        st = os.fstat(fd)
    except OSError:
        return "not an open descriptor"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind = "a regular file"
    elif stat.S_ISFIFO(mode):
        kind = "a pipe"
    elif stat.S_ISCHR(mode):
        kind = "a character device (a terminal or /dev/null)"
    elif stat.S_ISDIR(mode):
        kind = "a directory"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "a file of another kind"
    try:
        return f"{kind}, {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return kind


def wait_ready(fd: int, events: int, deadline: Optional[float]) -> bool:
    """Waits until ``fd`` is ready for ``events`` (``select.POLL*``); False once
    ``deadline`` (a :func:`time.monotonic` time, ``None`` for never) has passed."""
    if deadline is None:
        milliseconds = -1
    else:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        milliseconds = max(1, math.ceil(remaining * 1000))
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(milliseconds))


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Every descriptor the kernel installed, in order, including those of a truncated message."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _INT_SIZE
            fds.extend(struct.unpack(f"{usable // _INT_SIZE}i", data[:usable]))
    return fds


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def control_buffer_size(max_fds: int) -> int:
    """Room for exactly ``max_fds`` descriptors: ``CMSG_LEN``, not ``CMSG_SPACE``, which
    would admit one more when the count is odd (PROTOCOL.md §5.4)."""
    return socket.CMSG_LEN(max_fds * _INT_SIZE)


def truncated(msg_flags: int) -> tuple[bool, bool]:
    """``(MSG_TRUNC, MSG_CTRUNC)`` of a ``recvmsg`` result."""
    return bool(msg_flags & _MSG_TRUNC), bool(msg_flags & _MSG_CTRUNC)
