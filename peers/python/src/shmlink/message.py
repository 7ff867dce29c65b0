"""What a receive returns and what an endpoint reports: plain, typed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .limits import Limits
from .region import Region

__all__ = ["Descriptor", "Message", "PeerCredentials", "PeerLimits", "EndpointStats"]


class Descriptor(NamedTuple):
    """What the descriptor of a received region said (PROTOCOL.md §2)."""

    #: The id the sender gave the region on this connection.
    id: int
    #: Whether the region's file descriptor came with this message.
    new: bool
    #: Whether the region is frozen.
    frozen: bool
    #: Whether the sender gave up access to it (a transfer).
    transferred: bool


class Message(NamedTuple):
    """A received message."""

    #: The inline payload (at most 64 KiB; larger data travels in regions).
    payload: bytes
    #: The attached regions, in the order the sender attached them. A memory file that
    #: arrives again is the same Region object; a region of yours sent back is yours.
    regions: list[Region]
    #: One descriptor per region, as it arrived.
    descriptors: list[Descriptor]


class PeerCredentials(NamedTuple):
    """Who is at the other end, as the kernel recorded it (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


class PeerLimits(NamedTuple):
    """The limits the peer announced in its HELLO."""

    max_regions: int
    max_payload: int


@dataclass(frozen=True)
class EndpointStats:
    """Traffic and binding counters of one connection, and the limits in force."""

    messages_out: int
    bytes_out: int
    messages_in: int
    bytes_in: int
    #: This side's regions the peer has bound now.
    own_regions: int
    #: The peer's regions bound on this connection now.
    peer_regions: int
    #: Bytes of distinct regions the peer's bindings hold mapped now.
    peer_mapped_bytes: int
    #: RELEASE descriptors waiting for room in the socket (they leave with the next send).
    queued: int
    #: What this side accepts from the peer.
    limits: Limits
