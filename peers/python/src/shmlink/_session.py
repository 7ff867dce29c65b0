"""The protocol state of one connection, without I/O.

Records and descriptors go in, frames to send and received messages come out; the
endpoint moves the bytes. Everything the protocol decides (the handshake, what a record
means and whether it is allowed, which ids are bound, the limits, the trust policy) is
decided here, in the order PROTOCOL.md §7 and §5.3 give.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Any, Optional, Union

from . import _sys, wire
from .errors import (
    CLOSED,
    FDS_TRUNCATED,
    INVALID_ARG,
    PAYLOAD_TOO_LARGE,
    PROTOCOL_VIOLATION,
    REGION_NOT_MEMFD,
    REGION_NOT_SHMEM,
    REGION_SIZE_MISMATCH,
    REGION_UNSEALED,
    REGION_WRITABLE,
    TOO_MANY_REGIONS,
    ShmlinkError,
)
from .limits import Charge, Limits, exceeded
from .message import Descriptor, Message
from .region import EndFlag, Identity, Region, _File, existing

OP_RECV = "recv"

#: A region attached to an outgoing message, and whether it is transferred.
Attachment = tuple[Region, bool]


class Inbound:
    """What a record meant, when it was not a message."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


HANDSHAKE = Inbound("handshake")
RELEASED = Inbound("released")
END_OF_FILE = Inbound("end-of-file")


def _violation(text: str) -> ShmlinkError:
    return ShmlinkError(PROTOCOL_VIOLATION, f"{text}; the connection was closed")


def inspect(fd: int, size: int, frozen: bool) -> Identity:
    """The checks of PROTOCOL.md §5.3 steps 1 to 5, before anything maps ``fd``."""
    info = _sys.file_info(fd)
    if not info.is_regular:
        raise ShmlinkError(REGION_NOT_MEMFD,
                           "the peer sent a descriptor that is not a memory file (a pipe, socket "
                           "or device); the connection was closed")
    seals = _sys.seals(fd)
    if seals is None:
        raise ShmlinkError(REGION_NOT_MEMFD,
                           "the peer sent a file that cannot be sealed (not a memfd); regions "
                           "must come from memfd_create; the connection was closed")
    if _sys.filesystem_type(fd) != _sys.TMPFS_MAGIC:
        raise ShmlinkError(REGION_NOT_SHMEM,
                           "the peer sent a memory file that is not on shmem (a hugetlbfs memfd, "
                           "whose owner could take its pages away and crash this process with "
                           "SIGBUS); the connection was closed")
    if seals & (_sys.F_SEAL_SHRINK | _sys.F_SEAL_GROW) != _sys.F_SEAL_SHRINK | _sys.F_SEAL_GROW:
        raise ShmlinkError(REGION_UNSEALED,
                           "the peer sent a memfd without F_SEAL_SHRINK and F_SEAL_GROW; it could "
                           "shrink it and crash this process; the connection was closed")
    if frozen and not seals & _sys.F_SEAL_WRITE:
        raise ShmlinkError(REGION_UNSEALED,
                           "the peer marked a region frozen but did not add F_SEAL_WRITE; the "
                           "connection was closed")
    if not frozen and seals & (_sys.F_SEAL_WRITE | _sys.F_SEAL_FUTURE_WRITE):
        raise _violation("the peer sent a write-sealed region without the frozen flag")
    if info.size != size:
        raise ShmlinkError(REGION_SIZE_MISMATCH,
                           f"the descriptor says {size} bytes but the file has {info.size} "
                           "bytes; the connection was closed")
    return info.identity


class _PeerBinding:
    """A region bound in the peer's namespace, with its own hold on the memory file."""

    __slots__ = ("region", "file")

    def __init__(self, region: Region, file: _File) -> None:
        self.region = region
        self.file = file


class Session:
    """One connection's protocol state (see the module's docstring)."""

    def __init__(self, limits: Limits, accept_writable: bool, realm: int) -> None:
        self.limits = limits
        self.accept_writable = accept_writable
        self.realm = realm
        self.peer: Optional[wire.Announced] = None
        self.ended = False
        self.end_flag = EndFlag()
        self._own_ids: dict[Region, int] = {}
        self._own_regions: dict[int, Region] = {}
        self._next_id = 1
        self._peer: dict[int, _PeerBinding] = {}
        self._held: dict[Identity, list[int]] = {}
        self._held_bytes = 0
        self._releases: list[tuple[int, int]] = []
        self.messages_out = 0
        self.bytes_out = 0
        self.messages_in = 0
        self.bytes_in = 0

    # -- what the session holds -------------------------------------------------------

    def own_id(self, region: Region) -> Optional[int]:
        return self._own_ids.get(region)

    @property
    def own_bound(self) -> int:
        return len(self._own_regions)

    @property
    def peer_bound(self) -> int:
        return len(self._peer)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    @property
    def queued_releases(self) -> int:
        return len(self._releases)

    # -- sending ------------------------------------------------------------------------

    def check_message(self, op: str, payload_len: int, attachments: list[Attachment]) -> None:
        """What can be checked before sending: the peer's limits (the protocol's ceilings
        before its HELLO) and the regions' state. Nothing changes on failure."""
        bounds = self.peer or wire.Announced(wire.MAX_REGIONS_CEILING, wire.MAX_PAYLOAD_CEILING)
        if payload_len > bounds.max_payload:
            raise ShmlinkError(PAYLOAD_TOO_LARGE,
                               f"{op}: the payload has {payload_len} bytes but the peer accepts "
                               f"at most {bounds.max_payload}; put large data in a region")
        if len(attachments) > bounds.max_regions:
            raise ShmlinkError(TOO_MANY_REGIONS,
                               f"{op}: {len(attachments)} regions attached but the peer accepts "
                               f"at most {bounds.max_regions} per message; send several messages")
        counts: dict[Region, int] = {}
        for region, _ in attachments:
            region._check_usable(op)
            counts[region] = counts.get(region, 0) + 1
        for region, transfer in attachments:
            if transfer and counts[region] > 1:
                raise ShmlinkError(INVALID_ARG, f"{op}: a transferred region can be attached to "
                                                "a message only once")

    def _next_free_id(self, taken: dict[Region, int]) -> int:
        planned = set(taken.values())
        candidate = self._next_id
        while candidate == 0 or candidate in self._own_regions or candidate in planned:
            candidate = (candidate + 1) & 0xFFFFFFFF
        return candidate

    def encode_message(self, op: str, payload_len: int, attachments: list[Attachment]
                       ) -> tuple[bytes, list[_File], dict[Region, int]]:
        """The MESSAGE header and descriptors, the files to pass (retained: the caller
        releases them), and the ids that bind once the frame is sent."""
        planned: dict[Region, int] = {}
        files: list[_File] = []
        parts = [wire.encode_header(wire.KIND_MESSAGE, len(attachments), payload_len)]
        try:
            for region, transfer in attachments:
                region_id = self._own_ids.get(region) or planned.get(region)
                flags = 0
                if region_id is None:
                    files.append(region._retain_file(op))
                    region_id = planned[region] = self._next_free_id(planned)
                    flags = wire.FLAG_NEW
                if region.frozen:
                    flags |= wire.FLAG_FROZEN
                if transfer:
                    flags |= wire.FLAG_TRANSFER
                parts.append(wire.encode_descriptor(region_id, flags, region._size))
        except BaseException:
            for file in files:
                file.release()
            raise
        return b"".join(parts), files, planned

    def message_sent(self, payload_len: int, attachments: list[Attachment],
                     planned: dict[Region, int], binder: weakref.ref[Any]) -> None:
        """The message encoded with ``planned`` left: its new ids are bound, and regions
        it transferred are the peer's until they come back."""
        for region, region_id in planned.items():
            self._own_ids[region] = region_id
            self._own_regions[region_id] = region
            self._next_id = (region_id + 1) & 0xFFFFFFFF
            if not region._add_binder(binder):
                self.release(region)
        for region, transfer in attachments:
            if transfer:
                region._send_away(self.end_flag)
        self.messages_out += 1
        self.bytes_out += payload_len

    def release(self, region: Region) -> bool:
        """Forgets this side's id for ``region`` and queues its RELEASE; False when the peer
        had nothing of it bound."""
        region_id = self._own_ids.pop(region, None)
        if region_id is None:
            return False
        del self._own_regions[region_id]
        if not self.ended:
            self._releases.append((region_id, region._size))
        return True

    def release_frame(self) -> Optional[tuple[bytes, int]]:
        """The next RELEASE frame to send and how many ids it carries, if any is due."""
        if self.ended or self.peer is None or not self._releases:
            return None
        batch = self._releases[:self.peer.max_regions]
        frame = wire.encode_header(wire.KIND_RELEASE, len(batch), 0) + b"".join(
            wire.encode_descriptor(region_id, 0, size) for region_id, size in batch)
        return frame, len(batch)

    def release_sent(self, count: int) -> None:
        del self._releases[:count]

    def drop_releases(self) -> None:
        self._releases.clear()

    # -- receiving ----------------------------------------------------------------------

    def handle_record(self, record: memoryview, fds: list[int], data_truncated: bool,
                      control_truncated: bool) -> Union[Message, Inbound]:
        """Judges one record in the order of PROTOCOL.md §7 and applies it.

        Takes ownership of ``fds``: each is kept by a region or binding, or closed. On a
        refusal every descriptor of the record is closed, regions mapped for it are
        closed, the session has ended, and the error is raised; the caller shuts the
        socket down.
        """
        if self.ended:
            _sys.close_fds(fds)
            raise ShmlinkError(CLOSED, f"{OP_RECV}: the connection is closed")
        created: list[Region] = []
        try:
            outcome = self._judge(record, fds, data_truncated, control_truncated, created)
        except BaseException:
            _sys.close_fds([fd for fd in fds if fd >= 0])
            for region in created:
                region.close()
            self.end()
            raise
        if outcome is END_OF_FILE:
            self.end()
        return outcome

    def _judge(self, record: memoryview, fds: list[int], data_truncated: bool,
               control_truncated: bool, created: list[Region]) -> Union[Message, Inbound]:
        if not len(record) and not fds and not control_truncated:
            return END_OF_FILE
        if control_truncated:
            raise ShmlinkError(
                FDS_TRUNCATED,
                f"the kernel dropped descriptors from a message ({len(fds)} arrived and were "
                f"closed): the peer sent more than the {self.limits.max_regions} this side "
                "accepts, or this process is at its open-file limit (ulimit -n); the connection "
                "was closed")
        if data_truncated:
            raise _violation(f"the peer sent a record longer than the "
                             f"{wire.max_frame_len(self.limits.announced)} bytes this side's "
                             "limits allow")
        if self.peer is None:
            announced = wire.parse_first(record)
            if fds:
                raise _violation("descriptors arrived with the HELLO")
            self.peer = announced
            return HANDSHAKE
        frame = wire.parse(record)
        header = frame.header
        new_count = sum(1 for d in frame.descriptors if d.new)
        if new_count != len(fds):
            raise _violation(f"{new_count} descriptors are marked new but {len(fds)} file "
                             "descriptors arrived")
        if header.region_count > self.limits.max_regions:
            raise _violation(f"{header.region_count} regions in one message; this side "
                             f"announced at most {self.limits.max_regions}")
        if header.payload_len > self.limits.max_payload:
            raise _violation(f"{header.payload_len} payload bytes; this side announced at most "
                             f"{self.limits.max_payload}")
        if header.kind == wire.KIND_HELLO:
            raise _violation("a second HELLO")
        if header.kind == wire.KIND_RELEASE:
            for d in frame.descriptors:
                binding = self._peer.get(d.id)
                if binding is None:
                    raise _violation(f"RELEASE of region id {d.id}, which is not bound")
                if binding.region._size != d.size:
                    raise _violation(f"RELEASE of region {d.id} with the wrong size")
                self._unbind_peer(d.id)
            return RELEASED
        regions: list[Region] = []
        next_fd = 0
        for d in frame.descriptors:
            if d.new:
                fd, fds[next_fd] = fds[next_fd], -1
                next_fd += 1
                region = self._bind_new(d, fd, created)
            else:
                region = self._resolve_known(d, created)
            regions.append(region)
        for region in regions:
            region._come_back()
        payload = bytes(frame.payload)
        self.messages_in += 1
        self.bytes_in += len(payload)
        return Message(payload, regions, [
            Descriptor(d.id, d.new, d.frozen, d.transfer) for d in frame.descriptors])

    def _bind_new(self, d: wire.Descriptor, fd: int, created: list[Region]) -> Region:
        """PROTOCOL.md §5.2 rule 1 and §5.3, with this side's limits and trust policy
        checked before anything is mapped. Always consumes ``fd``."""
        owned: Optional[_File] = None
        try:
            if d.id in self._peer:
                raise _violation(f"region id {d.id} is already bound; RELEASE it before "
                                 "reusing it")
            identity = inspect(fd, d.size, d.frozen)
            if not d.frozen and not self.accept_writable:
                raise ShmlinkError(
                    REGION_WRITABLE,
                    "the peer sent a region it can still write, and this endpoint accepts only "
                    "frozen regions from peers it did not start (opt in with accept_writable=True "
                    "for trusted peers); the connection was closed")
            limits = self.limits
            if d.size > limits.max_region_size:
                raise exceeded(f"the peer sent a {d.size}-byte region; this side accepts at "
                               f"most {limits.max_region_size} (max_region_size)")
            if len(self._peer) >= limits.max_bound_regions:
                raise exceeded(f"the peer has {len(self._peer)} regions bound, the most this "
                               "side accepts (max_bound_regions); it must RELEASE regions before "
                               "sending new ones")
            held = self._held_bytes + (0 if identity in self._held else d.size)
            if held > limits.max_mapped_bytes:
                raise exceeded(f"the peer's regions would hold {held} bytes mapped; this side "
                               f"accepts at most {limits.max_mapped_bytes} (max_mapped_bytes)")
            if d.size > sys.maxsize:
                raise exceeded("the region is larger than this process's address space")
            region = existing(identity, self.realm, d.frozen)
            if region is not None and region._file is not None:
                file = region._file.retain()
                os.close(fd)
            else:
                charge = Charge(d.size)
                owned = _File(fd)
                try:
                    region = Region._map(owned, d.size, identity, self.realm, frozen=d.frozen,
                                         charge=charge, op=OP_RECV)
                except BaseException:
                    charge.release()
                    raise
                created.append(region)
                file = owned.retain()
                owned = None
        except BaseException:
            if owned is not None:
                owned.release()
            else:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        self._bind_peer(d.id, _PeerBinding(region, file))
        return region

    def _resolve_known(self, d: wire.Descriptor, created: list[Region]) -> Region:
        binding = self._peer.get(d.id)
        if binding is None:
            raise _violation(f"unknown region id {d.id} (never sent with its descriptor)")
        region = binding.region
        if region._size != d.size:
            raise _violation(f"region {d.id} was bound with {region._size} bytes but the "
                             f"descriptor says {d.size}")
        if region._frozen != d.frozen:
            raise _violation(f"region {d.id}'s frozen flag changed")
        if not region._closed:
            return region
        # This side closed the region while the peer kept it bound: map the file again.
        identity = inspect(binding.file.fd, d.size, d.frozen)
        again = existing(identity, self.realm, d.frozen)
        if again is None:
            charge = Charge(d.size)
            file = binding.file.retain()
            try:
                again = Region._map(file, d.size, identity, self.realm, frozen=d.frozen,
                                    charge=charge, op=OP_RECV)
            except BaseException:
                file.release()
                charge.release()
                raise
            created.append(again)
        binding.region = again
        return again

    def _bind_peer(self, region_id: int, binding: _PeerBinding) -> None:
        identity = binding.region._identity
        held = self._held.get(identity)
        if held is None:
            held = self._held[identity] = [0, binding.region._size]
            self._held_bytes += binding.region._size
        held[0] += 1
        self._peer[region_id] = binding

    def _unbind_peer(self, region_id: int) -> None:
        binding = self._peer.pop(region_id)
        identity = binding.region._identity
        held = self._held[identity]
        held[0] -= 1
        if not held[0]:
            self._held_bytes -= held[1]
            del self._held[identity]
        binding.file.release()

    def end(self) -> None:
        """The connection ended (end-of-file, a failure, or closed here): both tables are
        dropped, and regions transferred over it become reclaimable."""
        if self.ended:
            return
        self.ended = True
        self.end_flag.ended = True
        self._releases.clear()
        self._own_ids.clear()
        self._own_regions.clear()
        for binding in self._peer.values():
            binding.file.release()
        self._peer.clear()
        self._held.clear()
        self._held_bytes = 0
