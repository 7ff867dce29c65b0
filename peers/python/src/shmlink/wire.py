"""The wire format of the shmlink protocol, version 2: encoding and structural checks only.

One frame per ``SOCK_SEQPACKET`` record, all integers little-endian::

    header      kind:u8 flags:u8 region_count:u16 payload_len:u32      (8 bytes)
    descriptor  id:u32 flags:u32 size:u64                  (16 bytes, region_count times)
    payload     payload_len bytes

This module does no I/O and keeps no connection state; the rules that need state (bound
ids, limits, descriptors) are applied by the endpoint. It is public so that tools and
tests can build frames, including bad ones.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import PEER_INCOMPATIBLE, PROTOCOL_VIOLATION, ShmlinkError

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_LEN",
    "DESCRIPTOR_LEN",
    "HELLO_LEN",
    "KIND_HELLO",
    "KIND_MESSAGE",
    "KIND_RELEASE",
    "FLAG_NEW",
    "FLAG_FROZEN",
    "FLAG_TRANSFER",
    "MAX_REGIONS_CEILING",
    "MAX_PAYLOAD_CEILING",
    "DEFAULT_MAX_REGIONS",
    "Header",
    "Descriptor",
    "Announced",
    "Frame",
    "encode_header",
    "encode_descriptor",
    "hello_frame",
    "max_frame_len",
    "parse",
    "parse_first",
]

#: The first eight bytes of every HELLO payload.
MAGIC = b"SHMLINK\0"
#: The protocol version this library speaks.
VERSION = 2
HEADER_LEN = 8
DESCRIPTOR_LEN = 16
HELLO_LEN = 20

KIND_HELLO = 1
KIND_MESSAGE = 2
KIND_RELEASE = 3

#: Descriptor flag: the region's file descriptor travels with this frame.
FLAG_NEW = 1
#: Descriptor flag: the region is write-sealed.
FLAG_FROZEN = 2
#: Descriptor flag: the sender gave up access until the region comes back.
FLAG_TRANSFER = 4
_KNOWN_FLAGS = FLAG_NEW | FLAG_FROZEN | FLAG_TRANSFER

#: The most regions any side may announce per message (Linux's ``SCM_MAX_FD``).
MAX_REGIONS_CEILING = 253
#: The largest inline payload any side may announce; larger data belongs in a region.
MAX_PAYLOAD_CEILING = 65536
#: What shmlink announces by default.
DEFAULT_MAX_REGIONS = 32

_HEADER = struct.Struct("<BBHI")
_DESCRIPTOR = struct.Struct("<IIQ")
_HELLO = struct.Struct("<8sHHII")
_MAGIC_VERSION = struct.Struct("<8sH")


class Header(NamedTuple):
    """A decoded frame header (its reserved flags byte is always 0 once parsed)."""

    kind: int
    region_count: int
    payload_len: int


class Descriptor(NamedTuple):
    """A region descriptor as it appears on the wire."""

    id: int
    flags: int
    size: int

    @property
    def new(self) -> bool:
        return bool(self.flags & FLAG_NEW)

    @property
    def frozen(self) -> bool:
        return bool(self.flags & FLAG_FROZEN)

    @property
    def transfer(self) -> bool:
        return bool(self.flags & FLAG_TRANSFER)


class Announced(NamedTuple):
    """The limits a side announces in its HELLO: what it accepts in one message."""

    max_regions: int = DEFAULT_MAX_REGIONS
    max_payload: int = MAX_PAYLOAD_CEILING

    def is_valid(self) -> bool:
        return 1 <= self.max_regions <= MAX_REGIONS_CEILING and (
            0 <= self.max_payload <= MAX_PAYLOAD_CEILING)


class Frame(NamedTuple):
    """A record whose structure has been checked."""

    header: Header
    descriptors: list[Descriptor]
    payload: memoryview


def encode_header(kind: int, region_count: int, payload_len: int) -> bytes:
    return _HEADER.pack(kind, 0, region_count, payload_len)


def encode_descriptor(region_id: int, flags: int, size: int) -> bytes:
    return _DESCRIPTOR.pack(region_id, flags, size)


def hello_frame(max_regions: int = DEFAULT_MAX_REGIONS,
                max_payload: int = MAX_PAYLOAD_CEILING) -> bytes:
    """A whole HELLO frame announcing these limits.

    Its capabilities are 0: this library offers no ring (PROTOCOL.md §9), so its peers keep
    every message on the socket, and a RING or WAKE frame is an unknown kind here.
    """
    return encode_header(KIND_HELLO, 0, HELLO_LEN) + _HELLO.pack(
        MAGIC, VERSION, max_regions, max_payload, 0)


def max_frame_len(limits: Announced) -> int:
    """The largest record a side with these limits accepts."""
    return HEADER_LEN + DESCRIPTOR_LEN * limits.max_regions + limits.max_payload


def _violation(text: str) -> ShmlinkError:
    return ShmlinkError(PROTOCOL_VIOLATION, f"{text}; the connection was closed")


def _incompatible(text: str) -> ShmlinkError:
    return ShmlinkError(PEER_INCOMPATIBLE, f"{text}; the connection was closed")


def parse(record: memoryview) -> Frame:
    """Checks the structure of one record (PROTOCOL.md §2 and §7 rule 6).

    Raises :class:`ShmlinkError` with ``ERR_SHMLINK_PROTOCOL_VIOLATION``.
    """
    length = len(record)
    if length < HEADER_LEN:
        raise _violation(f"a {length}-byte record is shorter than the {HEADER_LEN}-byte header")
    kind, flags, count, payload_len = _HEADER.unpack_from(record)
    if flags:
        raise _violation(f"header flags are {flags:#04x}; they must be 0")
    body = HEADER_LEN + DESCRIPTOR_LEN * count
    if body + payload_len != length:
        raise _violation(
            f"the header announces {count} regions and {payload_len} payload bytes "
            f"({body + payload_len} bytes in all), but the record has {length} bytes")
    descriptors = [Descriptor(*d) for d in _DESCRIPTOR.iter_unpack(record[HEADER_LEN:body])]
    for d in descriptors:
        if d.id == 0:
            raise _violation("region id 0 is reserved")
        if d.flags & ~_KNOWN_FLAGS:
            raise _violation(f"region {d.id} has unknown flags {d.flags:#x}")
        if d.size == 0:
            raise _violation(f"region {d.id} has size 0")
        if kind == KIND_RELEASE and d.flags:
            raise _violation(f"released region {d.id} carries flags")
    if kind == KIND_MESSAGE:
        pass
    elif kind == KIND_RELEASE:
        if payload_len:
            raise _violation("a RELEASE frame carries a payload")
    elif kind == KIND_HELLO:
        if count or payload_len != HELLO_LEN:
            raise _violation(f"a HELLO frame must carry {HELLO_LEN} payload bytes and no regions")
    else:
        raise _violation(f"unknown frame kind {kind}")
    return Frame(Header(kind, count, payload_len), descriptors, record[body:])


def _check_magic_and_version(start: memoryview) -> None:
    magic, version = _MAGIC_VERSION.unpack_from(start)
    if magic != MAGIC:
        raise _incompatible("the peer's first frame is not a shmlink HELLO (wrong magic)")
    if version != VERSION:
        upgrade = "the peer's" if version < VERSION else "this side's"
        raise _incompatible(
            f"the peer speaks shmlink protocol version {version}; this side speaks {VERSION} "
            f"and versions do not mix: upgrade {upgrade} shmlink library")


def parse_first(record: memoryview) -> Announced:
    """Judges the first record of a connection, which must be a HELLO (PROTOCOL.md §3 rule 3).

    Magic and version come first, before the header's other fields, so that a peer of
    another version is reported as incompatible rather than as breaking this version's
    rules. Returns the peer's limits.
    """
    if len(record) >= HEADER_LEN + _MAGIC_VERSION.size and record[0] == KIND_HELLO:
        _check_magic_and_version(record[HEADER_LEN:])
    frame = parse(record)
    if frame.header.kind != KIND_HELLO:
        raise _violation("the peer's first frame is not a HELLO")
    _, _, max_regions, max_payload, _capabilities = _HELLO.unpack_from(frame.payload)
    announced = Announced(max_regions, max_payload)
    if not announced.is_valid():
        raise _violation(
            f"the peer announced limits outside the protocol's bounds: {max_regions} regions, "
            f"{max_payload} bytes")
    return announced
