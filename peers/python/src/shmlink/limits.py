"""Limits: what one peer may make this process hold, and what all peers together may.

Two of a connection's limits are announced to the peer in HELLO (regions and payload
bytes per message); the others are local policy, which the peer learns only by being
disconnected with ``ERR_SHMLINK_LIMIT_EXCEEDED`` on this side. The process-wide limits
bound what every peer together can make this process map, so that many connections,
each inside its own limits, cannot exhaust the address space.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from . import wire
from .errors import LIMIT_EXCEEDED, InvalidTypeError, InvalidValueError, ShmlinkError

__all__ = [
    "Limits",
    "ProcessStats",
    "process_stats",
    "set_process_limits",
]

GIB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """What this side of a connection accepts from its peer (the defaults are shmlink's)."""

    #: The most regions in one message (1 to 253). Announced in HELLO.
    max_regions: int = wire.DEFAULT_MAX_REGIONS
    #: The largest inline payload in bytes (at most 65536). Announced in HELLO.
    max_payload: int = wire.MAX_PAYLOAD_CEILING
    #: The largest region the peer may send.
    max_region_size: int = 16 * GIB
    #: The most of the peer's regions bound at once (each holds a descriptor and a mapping).
    max_bound_regions: int = 1024
    #: The most bytes of the peer's regions mapped at once.
    max_mapped_bytes: int = 16 * GIB

    def __post_init__(self) -> None:
        for name in ("max_regions", "max_payload", "max_region_size", "max_bound_regions",
                     "max_mapped_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidTypeError(f"limits.{name} must be an int, not {type(value).__name__}")
        if not self.announced.is_valid():
            raise InvalidValueError(
                f"limits must allow 1 to {wire.MAX_REGIONS_CEILING} regions and at most "
                f"{wire.MAX_PAYLOAD_CEILING} payload bytes per message, not "
                f"{self.max_regions} and {self.max_payload}")
        if self.max_region_size <= 0 or self.max_bound_regions <= 0 or self.max_mapped_bytes <= 0:
            raise InvalidValueError(
                "limits.max_region_size, max_bound_regions and max_mapped_bytes must be positive")

    @property
    def announced(self) -> wire.Announced:
        """What HELLO announces."""
        return wire.Announced(self.max_regions, self.max_payload)


LimitsArg = Union[Limits, Mapping[str, Any], None]


def to_limits(limits: LimitsArg) -> Limits:
    """``Limits`` from a ``Limits``, a mapping of some of its fields, or None (the defaults)."""
    if limits is None:
        return Limits()
    if isinstance(limits, Limits):
        return limits
    if isinstance(limits, Mapping):
        unknown = set(limits) - set(Limits.__dataclass_fields__)
        if unknown:
            raise InvalidValueError(f"unknown limits: {', '.join(sorted(map(str, unknown)))}")
        return Limits(**limits)
    raise InvalidTypeError(f"limits must be a shmlink.Limits or a mapping, not "
                           f"{type(limits).__name__}")


@dataclass(frozen=True)
class ProcessStats:
    """The process-wide limits on regions received from peers, and their use now."""

    max_mapped_bytes: int
    max_regions: int
    mapped_bytes: int
    regions: int


_lock = threading.Lock()
_max_mapped_bytes = 64 * GIB
_max_regions = 16_384
_mapped_bytes = 0
_regions = 0


def set_process_limits(*, max_mapped_bytes: Optional[int] = None,
                       max_regions: Optional[int] = None) -> None:
    """Sets the process-wide limits (defaults: 64 GiB and 16 384 regions).

    Regions already mapped stay; new ones are refused while the use is over the new limits.
    A limit left out keeps its value.
    """
    global _max_mapped_bytes, _max_regions
    for name, value in (("max_mapped_bytes", max_mapped_bytes), ("max_regions", max_regions)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidTypeError(f"{name} must be an int, not {type(value).__name__}")
        if value <= 0:
            raise InvalidValueError(f"{name} must be positive, not {value}")
    with _lock:
        if max_mapped_bytes is not None:
            _max_mapped_bytes = max_mapped_bytes
        if max_regions is not None:
            _max_regions = max_regions


def process_stats() -> ProcessStats:
    """The process-wide limits and what regions received from peers use of them now."""
    with _lock:
        return ProcessStats(_max_mapped_bytes, _max_regions, _mapped_bytes, _regions)


def exceeded(detail: str) -> ShmlinkError:
    return ShmlinkError(
        LIMIT_EXCEEDED,
        f"{detail}; the connection was closed (raise the limit if the peer is trusted)")


class Charge:
    """A received region's share of the process-wide limits, given back once."""

    __slots__ = ("size", "_held")

    def __init__(self, size: int) -> None:
        global _mapped_bytes, _regions
        with _lock:
            if _regions + 1 > _max_regions:
                raise exceeded(
                    f"this process already holds {_max_regions} regions from peers (process "
                    "limit max_regions, set_process_limits)")
            if _mapped_bytes + size > _max_mapped_bytes:
                raise exceeded(
                    f"a {size}-byte region would take this process over {_max_mapped_bytes} "
                    "bytes mapped from peers (process limit max_mapped_bytes, "
                    "set_process_limits)")
            _regions += 1
            _mapped_bytes += size
        self.size = size
        self._held = True

    def release(self) -> None:
        global _mapped_bytes, _regions
        with _lock:
            if self._held:
                self._held = False
                _regions -= 1
                _mapped_bytes -= self.size
