"""Regions: sealed anonymous memory files, mapped into this process.

A :class:`Region` is a memory file created with ``memfd_create(2)``, sized once and
sealed against shrinking and growing before anyone else can see it, and mapped shared
and writable. It exports its memory through the buffer protocol, so
``memoryview(region)``, ``numpy.frombuffer(region, dtype=...)`` and ``hashlib.sha256(region)``
work on the mapping itself, without a copy.

How the mapping is kept (and why closing never fails):
:class:`Region` is an :class:`mmap.mmap` that owns an address range. The range is first
reserved (an anonymous mapping that costs nothing), then the memory file is mapped over
it in place with ``MAP_FIXED``. Freezing and closing change what the range shows the
same way, without moving or unmapping it: ``freeze()`` makes it a private copy-on-write
mapping of the file, ``close()`` private zero pages. So a ``memoryview`` or numpy array
taken earlier stays valid memory after ``close()`` and reads zeros; the address range
itself is unmapped when the last view and the region are gone. This is what the Node
package's core does (``docs/SECURITY.md``), and why ``close()`` never raises
``BufferError`` as :meth:`mmap.mmap.close` would.

What Python cannot do is detach a view: a ``memoryview`` taken before a transfer still
reaches the memory while the peer owns it. The region's own methods refuse
(``ERR_SHMLINK_REGION_TRANSFERRED``), and on Python 3.12 and later so does taking a new
view; views taken before must not be used until the region is back.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, NoReturn, Optional, Union

from . import _sys
from .errors import (
    INVALID_ARG,
    OS,
    REGION_BUSY,
    REGION_CLOSED,
    REGION_FROZEN,
    REGION_TRANSFERRED,
    InvalidTypeError,
    InvalidValueError,
    ShmlinkError,
    os_error,
)
from .limits import Charge

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self
else:  # pragma: no cover
    Buffer = Any

__all__ = ["Region"]

Identity = tuple[int, int]

# -- memory files shared between a region and the bindings that name it -------------------

_files_lock = threading.Lock()


class _File:
    """A memory file's descriptor; closed when its last holder lets go.

    A region holds its file, and so does every binding of the peer's namespace that names
    it (PROTOCOL.md §6): a region closed here can be mapped again if the peer refers to it
    once more. A send holds the file while the kernel copies the descriptor.
    """

    __slots__ = ("fd", "_holders")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._holders = 1

    def retain(self) -> _File:
        with _files_lock:
            self._holders += 1
        return self

    def release(self) -> None:
        with _files_lock:
            self._holders -= 1
            if self._holders:
                return
            fd, self.fd = self.fd, -1
        os.close(fd)


def _let_go(file: _File, charge: Optional[Charge]) -> None:
    """What a region holds, given back when it is garbage-collected without close()."""
    file.release()
    if charge is not None:
        charge.release()


class EndFlag:
    """Turns true when a connection ends; shared with the regions transferred over it."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False


# -- the regions of each realm, by file identity ------------------------------------------

_registry_lock = threading.Lock()
_registry: dict[tuple[int, int, int], weakref.ref[Region]] = {}
_realms = itertools.count(1)


def new_realm() -> int:
    """A realm no other call returned: a set of endpoints that see one region per file.

    The process is realm 0. ``Endpoint.pair()`` gives its second end a realm of its own, so
    that a region sent from one end to the other is a separate region there, as it would
    be in another process.
    """
    return next(_realms)


def existing(identity: Identity, realm: int, frozen: bool) -> Optional[Region]:
    """The live region this realm has for the memory file ``identity``, if any."""
    with _registry_lock:
        ref = _registry.get((realm, *identity))
    region = ref() if ref is not None else None
    if region is None or region._closed or region._frozen != frozen:
        return None
    return region


def _forget(key: tuple[int, int, int], ref: weakref.ref[Region]) -> None:
    with _registry_lock:
        if _registry.get(key) is ref:
            del _registry[key]


# -- argument checks ----------------------------------------------------------------------


def _index(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise InvalidValueError(f"{name} must be >= 0, not {value}")
    return value


def _byte_view(data: object, name: str, writable: bool = False) -> memoryview:
    """A flat byte view of ``data`` (any C-contiguous buffer), without copying."""
    if isinstance(data, str) and not writable:
        return memoryview(data.encode("utf-8"))
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        kind = "a writable buffer (bytearray, memoryview, numpy array)" if writable else (
            "bytes, a str or a buffer (bytearray, memoryview, numpy array, Region)")
        raise InvalidTypeError(f"{name} must be {kind}, not {type(data).__name__}") from None
    if writable and view.readonly:
        raise InvalidTypeError(f"{name} is read-only; pass a writable buffer")
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise InvalidValueError(f"{name} must be C-contiguous")
        view = view.cast("B")
    return view


_RESERVE_FLAGS = _sys.MAP_PRIVATE | _sys.MAP_ANONYMOUS | _sys.MAP_NORESERVE
_READ_WRITE = _sys.PROT_READ | _sys.PROT_WRITE


class Region(mmap.mmap):
    """A block of shared memory that can be handed to other processes.

    Create one with :meth:`Region.create`; regions that arrive in a message are Region
    objects too (the same object each time the same memory file arrives). Use it as a
    buffer (``memoryview(region)``, ``numpy.frombuffer(region, dtype=numpy.uint8)``) or
    copy with :meth:`read`, :meth:`read_into` and :meth:`write`.
    """

    __slots__ = ("_size", "_file", "_identity", "_realm", "_frozen", "_readonly", "_closed",
                 "_away", "_binders", "_address", "_charge", "_lock", "_finalizer")

    _size: int
    _file: Optional[_File]
    _identity: Identity
    _realm: int
    _frozen: bool
    _readonly: bool
    _closed: bool
    _away: Optional[EndFlag]
    _binders: list[weakref.ref[Any]]
    _address: int
    _charge: Optional[Charge]
    _lock: threading.RLock
    _finalizer: weakref.finalize[Any, Any]

    def __new__(cls, *args: object, **kwargs: object) -> Region:
        raise InvalidTypeError("create regions with Region.create(size); regions that arrive "
                               "come with their messages")

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def create(cls, size: int) -> Region:
        """A new, zero-filled region of ``size`` bytes, shared-mapped and writable.

        Backed by ``memfd_create(2)`` (close-on-exec, sealable, and ``MFD_NOEXEC_SEAL`` where
        the kernel has it), sized once with ``ftruncate(2)`` and sealed with
        ``F_SEAL_SHRINK | F_SEAL_GROW``. Nothing appears in ``/dev/shm``, so a crash leaves
        nothing behind.
        """
        if not isinstance(size, int) or isinstance(size, bool):
            raise InvalidTypeError(f"size must be an int, not {type(size).__name__}")
        if not 1 <= size <= sys.maxsize:
            raise InvalidValueError(f"size must be between 1 and {sys.maxsize} bytes, not {size}")
        file = _File(_sys.create_memory_file(size, "Region.create"))
        try:
            info = _sys.file_info(file.fd)
            return cls._map(file, size, info.identity, 0, frozen=False, charge=None,
                            op="Region.create")
        except BaseException:
            file.release()
            raise

    @classmethod
    def _map(cls, file: _File, size: int, identity: Identity, realm: int, *, frozen: bool,
             charge: Optional[Charge], op: str) -> Region:
        """Maps ``file`` (already checked) and registers the region; takes over ``file``'s
        and ``charge``'s reference only when it succeeds.

        A frozen region that arrived is mapped read-only and private: its buffer is
        read-only, and nothing this process does can reach the file.
        """
        prot = _sys.PROT_READ if frozen else _READ_WRITE
        try:
            self = mmap.mmap.__new__(cls, -1, size, flags=_RESERVE_FLAGS, prot=prot)
        except OSError as error:
            raise os_error(op, "mmap", error,
                           "address space or vm.max_map_count is exhausted") from None
        except (OverflowError, ValueError):
            raise ShmlinkError(OS, f"{op}: a {size}-byte region does not fit in this "
                                   "process's address space") from None
        # The state first: on Python 3.12 and later, taking the buffer runs __buffer__.
        self._size = size
        self._file = file
        self._identity = identity
        self._realm = realm
        self._frozen = frozen
        self._readonly = frozen
        self._closed = False
        self._away = None
        self._binders = []
        self._charge = charge
        try:
            self._address = address = _sys.buffer_address(self)
            sharing = _sys.MAP_PRIVATE if frozen else _sys.MAP_SHARED
            _sys.map_fixed(address, size, prot, sharing, file.fd, op)
        except BaseException:
            mmap.mmap.close(self)
            raise
        self._lock = threading.RLock()
        self._finalizer = weakref.finalize(self, _let_go, file, charge)
        key = (realm, *identity)
        ref = weakref.ref(self, lambda ref: _forget(key, ref))
        with _registry_lock:
            _registry[key] = ref
        return self

    # -- state --------------------------------------------------------------------------

    @property
    def size(self) -> int:  # type: ignore[override]  # mmap.size() is a method
        """Size in bytes (0 once closed)."""
        return 0 if self._closed else self._size

    def __len__(self) -> int:
        return 0 if self._closed else self._size

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` made the contents immutable for every process."""
        return self._frozen

    @property
    def closed(self) -> bool:  # type: ignore[override]  # read-only, as mmap.closed is
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def transferred(self) -> bool:
        """Whether the region was transferred to a peer and has not come back (nor been
        reclaimed)."""
        return self._away is not None

    def __repr__(self) -> str:
        state = "".join(f", {word}" for word, on in (
            ("frozen", self._frozen), ("transferred", self._away is not None),
            ("closed", self._closed)) if on)
        return f"<shmlink.Region {self._size} bytes{state}>"

    def _check_usable(self, op: str) -> None:
        if self._closed:
            raise ShmlinkError(REGION_CLOSED, f"{op}: the region is closed; create a new one")
        if self._away is not None:
            raise ShmlinkError(
                REGION_TRANSFERRED,
                f"{op}: the region was transferred to a peer; it is usable again when the peer "
                "sends it back, or after reclaim() once that connection has ended")

    def _check_writable(self, op: str) -> None:
        self._check_usable(op)
        if self._frozen:
            raise ShmlinkError(REGION_FROZEN, f"{op}: the region is frozen and cannot be "
                                              "written; copy the data into a new region")

    def _check_range(self, op: str, offset: int, length: int) -> None:
        if offset + length > self._size:
            raise InvalidValueError(
                f"{op}: bytes {offset}..{offset}+{length} lie outside the region's "
                f"{self._size} bytes")

    # -- copies -------------------------------------------------------------------------

    def read(self, offset: int = 0, length: Optional[int] = None) -> bytes:  # type: ignore[override]
        """Copies ``length`` bytes at ``offset`` (by default, to the end) into new bytes.

        For a frozen region this is the frozen contents as every peer sees them, read
        from the memory file, whatever a stray write through a view changed here.
        """
        op = "Region.read"
        offset = _index(offset, "offset")
        length = max(0, self._size - offset) if length is None else _index(length, "length")
        self._check_range(op, offset, length)
        with self._lock:
            self._check_usable(op)
            if self._frozen:
                assert self._file is not None
                out = bytearray(length)
                _sys.read_file_at(self._file.fd, offset, memoryview(out), op)
                return bytes(out)
            return mmap.mmap.__getitem__(self, slice(offset, offset + length))

    def read_into(self, offset: int, target: Buffer) -> int:
        """Copies bytes at ``offset`` into ``target`` (a writable buffer), as many as fit in
        it and in the region; returns how many."""
        op = "Region.read_into"
        offset = _index(offset, "offset")
        view = _byte_view(target, "target", writable=True)
        count = min(len(view), max(0, self._size - offset))
        self._check_range(op, offset, count)
        with self._lock:
            self._check_usable(op)
            if self._frozen:
                assert self._file is not None
                _sys.read_file_at(self._file.fd, offset, view[:count], op)
            else:
                with memoryview(self) as mine:
                    view[:count] = mine[offset:offset + count]
        return count

    def write(self, offset: int, data: Union[Buffer, str]) -> None:  # type: ignore[override]
        """Copies ``data`` (bytes, a str as UTF-8, or any buffer, even a view of this very
        region) into the region at ``offset``."""
        op = "Region.write"
        offset = _index(offset, "offset")
        view = _byte_view(data, "data")
        self._check_range(op, offset, len(view))
        with self._lock:
            self._check_writable(op)
            with memoryview(self) as mine:
                mine[offset:offset + len(view)] = view

    # -- life cycle ---------------------------------------------------------------------

    def freeze(self) -> Region:
        """Makes the contents immutable for every process (``F_SEAL_WRITE | F_SEAL_SEAL``).

        This process's mapping first becomes a private copy-on-write one at the same
        address, so views stay valid (a stray write through one changes only a private
        copy of a page). Freeze before sharing: the kernel refuses while a peer maps the
        region writable (``ERR_SHMLINK_REGION_BUSY``), and the region is left as it was.
        Do not freeze while another thread writes through a view.
        """
        op = "Region.freeze"
        with self._lock:
            self._check_usable(op)
            if self._frozen:
                return self
            assert self._file is not None
            fd = self._file.fd
            current = _sys.seals(fd) or 0
            if current & (_sys.F_SEAL_WRITE | _sys.F_SEAL_FUTURE_WRITE):
                raise ShmlinkError(REGION_BUSY, f"{op}: a peer added F_SEAL_FUTURE_WRITE to the "
                                                "region while mapping it writable; it cannot be "
                                                "frozen")
            _sys.map_fixed(self._address, self._size, _READ_WRITE, _sys.MAP_PRIVATE, fd, op)
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _sys.F_SEAL_WRITE | _sys.F_SEAL_SEAL)
            except OSError as error:
                failure = error
            else:
                self._frozen = True
                return self
            try:
                _sys.map_fixed(self._address, self._size, _READ_WRITE, _sys.MAP_SHARED, fd, op)
                restored = True
            except ShmlinkError:
                restored = False
        if not restored:
            # The shared mapping cannot come back, and a private one would let local writes
            # silently miss the peer: close instead (outside the lock, as close() tells
            # the endpoints that bound the region).
            self.close()
            raise ShmlinkError(REGION_BUSY, f"{op}: the region could not be frozen nor mapped "
                                            "shared again; it was closed rather than left "
                                            "diverging from the peer's copy")
        if failure.errno == 16:  # EBUSY
            raise os_error(op, "fcntl(F_ADD_SEALS)", failure,
                           "the region is still mapped writable by a peer; freeze regions "
                           "before sharing them", REGION_BUSY)
        raise os_error(op, "fcntl(F_ADD_SEALS)", failure, "the region cannot be frozen")

    def reclaim(self) -> Region:
        """Takes back a region transferred over a connection that has since ended (the
        peer closed, died or broke the protocol), so a pipeline can reuse its buffers.

        A peer that passed the region on may still reach its memory; taking it back is
        your decision, which is why it is explicit. Raises ``ERR_SHMLINK_REGION_TRANSFERRED``
        while that connection is open.
        """
        with self._lock:
            if self._closed:
                raise ShmlinkError(REGION_CLOSED, "Region.reclaim: the region is closed")
            away = self._away
            if away is not None:
                if not away.ended:
                    raise ShmlinkError(
                        REGION_TRANSFERRED,
                        "Region.reclaim: the connection the region was transferred over is "
                        "still open; wait until the peer sends it back")
                self._away = None
            return self

    def close(self) -> None:
        """Lets go of the region now: peers it was sent to are told they may unmap it
        (RELEASE), the memory file is closed, and the mapping shows private zero pages from
        now on, so views taken earlier stay valid and read zeros. The address range is
        unmapped once no view is left. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            binders, self._binders = self._binders, []
            prot = _sys.PROT_READ if self._readonly else _READ_WRITE
            try:
                _sys.map_fixed(self._address, self._size, prot,
                               _sys.MAP_PRIVATE | _sys.MAP_ANONYMOUS | _sys.MAP_NORESERVE, -1,
                               "Region.close")
            except ShmlinkError:
                pass  # the memory stays mapped until the range is unmapped below or later
            self._finalizer.detach()
            file, self._file = self._file, None
            if file is not None:
                file.release()
            if self._charge is not None:
                self._charge.release()
            key = (self._realm, *self._identity)
            with _registry_lock:
                ref = _registry.get(key)
                if ref is not None and ref() is self:
                    del _registry[key]
            try:
                mmap.mmap.close(self)
            except BufferError:
                pass  # views are alive: the zero pages go when they do
        for binder in binders:
            endpoint = binder()
            if endpoint is not None:
                endpoint._region_closed(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- for the endpoint -----------------------------------------------------------------

    def _retain_file(self, op: str) -> _File:
        with self._lock:
            if self._file is None:
                raise ShmlinkError(REGION_CLOSED, f"{op}: a region was closed before it could "
                                                  "be sent")
            return self._file.retain()

    def _send_away(self, flag: EndFlag) -> None:
        with self._lock:
            self._away = flag

    def _come_back(self) -> None:
        with self._lock:
            self._away = None

    def _add_binder(self, binder: weakref.ref[Any]) -> bool:
        """Remembers an endpoint that bound the region; False when it is closed already."""
        with self._lock:
            if self._closed:
                return False
            self._binders = [b for b in self._binders if b() is not None]
            self._binders.append(binder)
            return True

    # -- the mmap methods a region keeps, guarded ----------------------------------------

    def __getitem__(self, key: Any) -> Any:
        self._check_usable("Region[]")
        return mmap.mmap.__getitem__(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._lock:
            self._check_writable("Region[]")
            mmap.mmap.__setitem__(self, key, value)

    def resize(self, newsize: int) -> NoReturn:
        raise ShmlinkError(INVALID_ARG, "Region.resize: a region's size is sealed; create a "
                                        "new region")

    if sys.version_info >= (3, 12):

        def __buffer__(self, flags: int) -> memoryview:
            """A view of the mapping; refused while the region is transferred or closed."""
            self._check_usable("memoryview(region)")
            return super().__buffer__(flags)


def _guard(name: str, writes: bool) -> None:
    method = getattr(mmap.mmap, name)

    def guarded(self: Region, *args: Any, **kwargs: Any) -> Any:
        if writes:
            with self._lock:
                self._check_writable(f"Region.{name}")
                return method(self, *args, **kwargs)
        self._check_usable(f"Region.{name}")
        return method(self, *args, **kwargs)

    guarded.__name__ = name
    guarded.__qualname__ = f"Region.{name}"
    guarded.__doc__ = method.__doc__
    setattr(Region, name, guarded)


for _name in ("find", "rfind", "readline", "read_byte", "flush", "madvise"):
    if hasattr(mmap.mmap, _name):
        _guard(_name, writes=False)
for _name in ("write_byte", "move"):
    _guard(_name, writes=True)
del _name
