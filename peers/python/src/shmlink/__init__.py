"""shmlink: zero-copy IPC over shared memory on Linux.

Processes hand each other sealed memory-file *regions* with small messages over Unix
``SOCK_SEQPACKET`` sockets; the receiver maps the same memory instead of receiving a
copy. This package speaks the same protocol as the Node package and the other shmlink
libraries (``docs/PROTOCOL.md`` in the repository)::

    import numpy, shmlink

    endpoint = shmlink.inherited()          # in a child started by Node's spawnWithEndpoint()
    for message in endpoint:                # until the parent closes the connection
        frame = numpy.frombuffer(message.regions[0], dtype=numpy.uint8)
        numpy.invert(frame, out=frame)      # in place, in the parent's memory
        endpoint.send(b"done", transfer=message.regions)

Sending is a release and receiving an acquire: what one side wrote to a region before
``send()`` is what the other side reads after ``recv()``.
"""

from __future__ import annotations

from . import wire
from .endpoint import ANY_USER, SAME_USER, Endpoint, PeerFilter, inherited
from .errors import (
    BINARY_NOT_FOUND,
    CLOSED,
    ERROR_CODES,
    FDS_TRUNCATED,
    INVALID_ARG,
    LIMIT_EXCEEDED,
    OS,
    PAYLOAD_TOO_LARGE,
    PEER_CLOSED,
    PEER_INCOMPATIBLE,
    PEER_REJECTED,
    PROTOCOL_VIOLATION,
    REGION_BUSY,
    REGION_CLOSED,
    REGION_FROZEN,
    REGION_NOT_MEMFD,
    REGION_NOT_SHMEM,
    REGION_SIZE_MISMATCH,
    REGION_TOO_LARGE,
    REGION_TRANSFERRED,
    REGION_UNSEALED,
    REGION_WRITABLE,
    RUNTIME,
    TIMED_OUT,
    TOO_MANY_REGIONS,
    UNSUPPORTED,
    WOULD_BLOCK,
    ZERO_COPY_UNAVAILABLE,
    InvalidArgumentError,
    InvalidTypeError,
    InvalidValueError,
    ShmlinkError,
    is_shmlink_error,
)
from .limits import Limits, ProcessStats, process_stats, set_process_limits
from .message import Descriptor, EndpointStats, Message, PeerCredentials, PeerLimits
from .region import Region
from .server import Server, listen

__version__ = "0.1.0"

__all__ = [
    "ANY_USER",
    "BINARY_NOT_FOUND",
    "CLOSED",
    "Descriptor",
    "ERROR_CODES",
    "Endpoint",
    "EndpointStats",
    "FDS_TRUNCATED",
    "INVALID_ARG",
    "InvalidArgumentError",
    "InvalidTypeError",
    "InvalidValueError",
    "LIMIT_EXCEEDED",
    "Limits",
    "Message",
    "OS",
    "PAYLOAD_TOO_LARGE",
    "PEER_CLOSED",
    "PEER_INCOMPATIBLE",
    "PEER_REJECTED",
    "PROTOCOL_VIOLATION",
    "PeerCredentials",
    "PeerFilter",
    "PeerLimits",
    "ProcessStats",
    "REGION_BUSY",
    "REGION_CLOSED",
    "REGION_FROZEN",
    "REGION_NOT_MEMFD",
    "REGION_NOT_SHMEM",
    "REGION_SIZE_MISMATCH",
    "REGION_TOO_LARGE",
    "REGION_TRANSFERRED",
    "REGION_UNSEALED",
    "REGION_WRITABLE",
    "RUNTIME",
    "Region",
    "SAME_USER",
    "Server",
    "ShmlinkError",
    "TIMED_OUT",
    "TOO_MANY_REGIONS",
    "UNSUPPORTED",
    "WOULD_BLOCK",
    "ZERO_COPY_UNAVAILABLE",
    "inherited",
    "is_shmlink_error",
    "listen",
    "process_stats",
    "set_process_limits",
    "wire",
    "__version__",
]
