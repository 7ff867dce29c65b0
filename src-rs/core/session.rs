//! The protocol state of one connection, without I/O (as rustls's `ConnectionCommon` and
//! quinn-proto's `Connection` are): records and descriptors go in, frames to send and
//! received messages come out. The endpoint moves the bytes; everything the protocol
//! decides — the handshake, what a record means and whether it is allowed, which ids
//! are bound, the limits — is decided here, once, and unit-tested without sockets.

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};

use crate::error::{Error, ErrorKind, Result};
use crate::limits::{Charge, Limits, exceeded};
use crate::payload::Payload;
use crate::region::{Binder, Fate, Realm, Region, WeakRegion};
use crate::ring::{self, Consumer, Mapped};
use crate::table::{PeerBinding, RegionTable};
use crate::wire::{self, Announced, Descriptor, Hello, Refusal};

/// A region attached to an outgoing message.
#[derive(Debug, Clone, Copy)]
pub struct Attach<'a> {
    /// The region.
    pub region: &'a Region,
    /// Hand ownership to the peer: this side may not touch the region until it comes back.
    pub transfer: bool,
}

impl<'a> Attach<'a> {
    /// Both sides keep access; they agree between themselves who writes when.
    pub fn share(region: &'a Region) -> Self {
        Attach {
            region,
            transfer: false,
        }
    }

    /// Ownership moves to the peer until it sends the region back.
    pub fn transfer(region: &'a Region) -> Self {
        Attach {
            region,
            transfer: true,
        }
    }
}

/// A region that arrived with a message.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The region; the same region each time the peer sends the same memory file.
    pub region: Region,
    /// The id the peer gave it (the peer's namespace, `docs/PROTOCOL.md` §5.2).
    pub id: u32,
    /// Whether its file descriptor came with this message (the `NEW` flag).
    pub new: bool,
    /// Whether the region is frozen.
    pub frozen: bool,
    /// The peer gave up access to it (see [`Attach::transfer`]).
    pub transferred: bool,
}

/// A received message.
#[derive(Debug)]
pub struct Message {
    /// The inline payload.
    pub payload: Payload,
    /// The regions, in the order the sender attached them.
    pub regions: Vec<Incoming>,
}

/// One record as the socket delivered it.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) fds: Vec<OwnedFd>,
    /// `MSG_TRUNC`: longer than the largest frame this side accepts.
    pub(crate) data_truncated: bool,
    /// `MSG_CTRUNC`: the kernel dropped descriptors.
    pub(crate) control_truncated: bool,
}

/// A socket record read ahead of the ring entries that come before it (§9.4), kept
/// unjudged until its turn.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) data_truncated: bool,
    pub(crate) control_truncated: bool,
}

impl Held {
    pub(crate) fn record(&mut self) -> Record<'_> {
        Record {
            bytes: &self.bytes,
            fds: std::mem::take(&mut self.fds),
            data_truncated: self.data_truncated,
            control_truncated: self.control_truncated,
        }
    }
}

/// What a record meant.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// The peer's HELLO: the connection is established.
    Handshake,
    /// A RELEASE, applied.
    Released,
    /// A message for the application; its payload is at `payload` in the record.
    Message {
        regions: Vec<Incoming>,
        payload: Range<usize>,
    },
    /// End-of-file: the peer closed the connection. With a ring from the peer, the
    /// session ends only when the caller has taken what the ring still holds and calls
    /// [`Session::end_of_file`].
    EndOfFile,
    /// The peer's RING, checked and mapped: its messages come through it from now on.
    Ring(Consumer<Arc<Mapped>>),
    /// A WAKE: the peer published into its ring while this side's event loop waited.
    Wake,
}

/// A frame the session itself needs sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Hello,
    /// This side's RING (its memory file travels with it).
    Ring,
    /// RELEASE of the first `count` queued ids.
    Release {
        count: usize,
    },
}

/// How a MESSAGE was encoded: the files to pass, and the ids that bind once it is sent.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) files: Vec<Arc<OwnedFd>>,
    new_ids: Vec<(u32, usize)>,
}

#[derive(Debug)]
pub(crate) struct Session {
    limits: Limits,
    /// Whether the peer may send regions it can still write (not frozen).
    accept_writable: bool,
    realm: Realm,
    /// The `wire::CAP_*` bits this side offers in its HELLO.
    capabilities: u32,
    peer: Option<Hello>,
    hello_sent: bool,
    ended: bool,
    table: RegionTable,
    releases: Vec<Descriptor>,
    /// How the connection ended; shared with regions transferred over it.
    fate: Arc<Fate>,
    /// Regions that came over this connection with a transfer: this side gives them up if
    /// it ends the connection while they are still here (`docs/MEMORY-MODEL.md` §5.1).
    transferred_in: Vec<WeakRegion>,
    /// This side's ring: its capacity once created, and whether its RING has left (from
    /// then on its frames are counted, §9.4).
    ring_out: Option<u32>,
    ring_out_sent: bool,
    /// Whether the peer's RING arrived.
    ring_in: bool,
    /// The peer's socket frames taken since its last ring entry, and those its entry
    /// peeked last says still come first (§9.4).
    since_entry: u32,
    owed: u32,
}

const OP_RECV: &str = "recv";

fn violation(text: impl Into<String>) -> Error {
    Error::protocol(OP_RECV, text)
}

impl Session {
    pub(crate) fn new(limits: Limits, accept_writable: bool, realm: Realm) -> Session {
        Session {
            limits,
            accept_writable,
            realm,
            capabilities: 0,
            peer: None,
            hello_sent: false,
            ended: false,
            table: RegionTable::default(),
            releases: Vec::new(),
            fate: Arc::new(Fate::default()),
            transferred_in: Vec::new(),
            ring_out: None,
            ring_out_sent: false,
            ring_in: false,
            since_entry: 0,
            owed: 0,
        }
    }

    /// Offers rings in this side's HELLO when `offer` (before it is sent).
    pub(crate) fn offering_ring(mut self, offer: bool) -> Session {
        if offer {
            self.capabilities |= wire::CAP_RING;
        }
        self
    }

    /// Whether both HELLOs offered rings.
    pub(crate) fn rings_agreed(&self) -> bool {
        self.capabilities & wire::CAP_RING != 0
            && self.peer.is_some_and(|hello| hello.offers(wire::CAP_RING))
    }

    /// This side created its ring: its RING goes out next.
    pub(crate) fn ring_created(&mut self, capacity: u32) {
        if self.rings_agreed() && self.ring_out.is_none() {
            self.ring_out = Some(capacity);
        }
    }

    /// Whether this side's RING has left: frames of this direction may use the ring.
    pub(crate) fn ring_out_active(&self) -> bool {
        self.ring_out_sent && !self.ended
    }

    /// Whether the peer's RING arrived.
    pub(crate) fn ring_in(&self) -> bool {
        self.ring_in
    }

    /// Whether socket frames are due before the ring entry peeked last.
    pub(crate) fn owes_socket_frames(&self) -> bool {
        self.owed > 0
    }

    /// The next ring entry says `socket_before` socket frames come before it: true when it
    /// may be taken now, false when socket frames are due first (§9.4).
    pub(crate) fn entry_turn(&mut self, socket_before: u32) -> Result<bool> {
        if socket_before < self.since_entry {
            let error = violation(format!(
                "a ring entry says {socket_before} socket frames come before it, but {} did",
                self.since_entry
            ));
            self.end(false);
            return Err(error);
        }
        self.owed = socket_before - self.since_entry;
        Ok(self.owed == 0)
    }

    /// Whether a socket frame read while nothing was due comes now (true) or after the
    /// next ring entry, `next`, published meanwhile (false: hold it) (§9.4).
    pub(crate) fn socket_turn(&mut self, next: Option<u32>) -> Result<bool> {
        match next {
            Some(before) if before < self.since_entry => self.entry_turn(before),
            Some(before) => Ok(before > self.since_entry),
            None => Ok(true),
        }
    }

    /// Judges a frame the peer's ring delivered: a MESSAGE without new regions or a
    /// RELEASE (§9.3), judged as the same record on the socket would be.
    pub(crate) fn handle_entry(&mut self, frame: &[u8]) -> Result<Inbound> {
        let kind = frame.first().copied().unwrap_or_default();
        if kind != wire::KIND_MESSAGE && kind != wire::KIND_RELEASE {
            self.end(false);
            return Err(violation(format!("a frame of kind {kind} in the ring")));
        }
        let inbound = self.handle_record(Record {
            bytes: frame,
            fds: Vec::new(),
            data_truncated: false,
            control_truncated: false,
        })?;
        self.since_entry = 0;
        Ok(inbound)
    }

    /// Judges a socket record of a connection on which the peer's ring arrived: its
    /// MESSAGE and RELEASE frames count towards the next entry's `socket_before` (§9.4).
    pub(crate) fn handle_socket_frame(&mut self, record: Record<'_>) -> Result<Inbound> {
        let inbound = self.handle_record(record)?;
        if matches!(inbound, Inbound::Message { .. } | Inbound::Released) {
            self.since_entry = self.since_entry.saturating_add(1);
            self.owed = self.owed.saturating_sub(1);
        }
        Ok(inbound)
    }

    /// The peer's end-of-file, once its ring has been emptied: frames the ring said come
    /// first never will.
    pub(crate) fn end_of_file(&mut self) -> Result<()> {
        if self.owed > 0 {
            let error = violation(format!(
                "the peer closed the connection before the {} socket frames its ring said come first",
                self.owed
            ));
            self.end(false);
            return Err(error);
        }
        self.end(true);
        Ok(())
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// The limits the peer announced, once its HELLO has arrived.
    pub(crate) fn peer_limits(&self) -> Option<Announced> {
        self.peer.map(|hello| hello.limits)
    }

    pub(crate) fn is_established(&self) -> bool {
        self.peer.is_some() && !self.ended
    }

    /// How the connection ended, for regions transferred over it.
    pub(crate) fn fate(&self) -> &Arc<Fate> {
        &self.fate
    }

    /// Regions of the peer's namespace bound now, and the bytes they hold.
    pub(crate) fn peer_held(&self) -> (usize, u64) {
        (self.table.peer_bound(), self.table.held_bytes())
    }

    /// This side's regions the peer has bound now.
    pub(crate) fn own_bound(&self) -> usize {
        self.table.own_bound()
    }

    /// This side's id for `region` on this connection, if the peer has it bound.
    pub(crate) fn own_id(&self, region: &Region) -> Option<u32> {
        self.table.own_id(region)
    }

    /// Whether the session has a frame of its own to send.
    pub(crate) fn has_control(&self) -> bool {
        !self.ended
            && (!self.hello_sent
                || (self.peer.is_some()
                    && (!self.releases.is_empty()
                        || (self.ring_out.is_some() && !self.ring_out_sent))))
    }

    /// The next frame the session needs sent, written into `frame`.
    pub(crate) fn poll_control(&self, frame: &mut Vec<u8>) -> Option<Control> {
        frame.clear();
        if self.ended {
            return None;
        }
        if !self.hello_sent {
            wire::put_hello(
                frame,
                Hello {
                    limits: self.limits.announced(),
                    capabilities: self.capabilities,
                },
            );
            return Some(Control::Hello);
        }
        let peer = self.peer?.limits;
        if let Some(capacity) = self.ring_out
            && !self.ring_out_sent
        {
            wire::put_header(frame, wire::KIND_RING, 0, wire::RING_PAYLOAD_LEN as u32);
            frame.extend_from_slice(&capacity.to_le_bytes());
            frame.extend_from_slice(&0u32.to_le_bytes());
            return Some(Control::Ring);
        }
        if self.releases.is_empty() {
            return None;
        }
        let count = self.releases.len().min(usize::from(peer.max_regions));
        wire::put_header(frame, wire::KIND_RELEASE, count as u16, 0);
        for d in &self.releases[..count] {
            wire::put_descriptor(frame, *d);
        }
        Some(Control::Release { count })
    }

    /// A frame from [`Session::poll_control`] left (or, for a HELLO, the peer was already
    /// gone, which the first receive reports after what the peer sent).
    pub(crate) fn control_sent(&mut self, control: Control) {
        match control {
            Control::Hello => self.hello_sent = true,
            Control::Ring => self.ring_out_sent = true,
            Control::Release { count } => {
                self.releases.drain(..count);
            }
        }
    }

    /// Checks what can be checked before sending: the peer's limits (once known, the
    /// protocol's ceilings before) and the regions' state. Nothing changes on failure.
    pub(crate) fn check_message(
        &self,
        op: &'static str,
        payload_len: usize,
        attachments: &[Attach<'_>],
    ) -> Result<()> {
        let bounds = self.peer_limits().unwrap_or(Announced {
            max_regions: wire::MAX_REGIONS_CEILING,
            max_payload: wire::MAX_PAYLOAD_CEILING,
        });
        if payload_len > bounds.max_payload as usize {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                op,
                format!(
                    "the payload has {payload_len} bytes but the peer accepts at most {}; put large data in a region",
                    bounds.max_payload
                ),
            ));
        }
        if attachments.len() > usize::from(bounds.max_regions) {
            return Err(Error::new(
                ErrorKind::TooManyRegions,
                op,
                format!(
                    "{} regions attached but the peer accepts at most {} per message; send several messages",
                    attachments.len(),
                    bounds.max_regions
                ),
            ));
        }
        for (i, attach) in attachments.iter().enumerate() {
            attach.region.check_usable(op)?;
            let repeated = attachments[..i]
                .iter()
                .any(|earlier| earlier.region.same_as(attach.region));
            let transferred_twice = repeated
                && attachments
                    .iter()
                    .filter(|a| a.region.same_as(attach.region))
                    .any(|a| a.transfer);
            if transferred_twice {
                return Err(Error::invalid(
                    op,
                    "a transferred region can be attached to a message only once",
                ));
            }
        }
        Ok(())
    }

    /// Encodes a MESSAGE header and descriptors into `frame`. A region's descriptor
    /// travels only the first time this connection sees it; later frames carry its id.
    pub(crate) fn encode_message(
        &self,
        op: &'static str,
        payload_len: usize,
        attachments: &[Attach<'_>],
        frame: &mut Vec<u8>,
    ) -> Result<Plan> {
        let peer = self.peer_limits().ok_or_else(|| Error::would_block(op))?;
        if payload_len > peer.max_payload as usize
            || attachments.len() > usize::from(peer.max_regions)
        {
            self.check_message(op, payload_len, attachments)?;
        }
        frame.clear();
        wire::put_header(
            frame,
            wire::KIND_MESSAGE,
            attachments.len() as u16,
            payload_len as u32,
        );
        let mut plan = Plan::default();
        let mut planned: Vec<u32> = Vec::new();
        for (index, attach) in attachments.iter().enumerate() {
            let region = attach.region;
            let earlier = plan
                .new_ids
                .iter()
                .find(|(_, i)| attachments[*i].region.same_as(region))
                .map(|(id, _)| *id);
            let (id, new) = match (self.table.own_id(region), earlier) {
                (Some(id), _) | (None, Some(id)) => (id, false),
                (None, None) => {
                    let file = region.file().ok_or_else(|| {
                        Error::new(
                            ErrorKind::RegionClosed,
                            op,
                            "a region was closed before it could be sent",
                        )
                    })?;
                    let id = self.table.next_free_id(&planned);
                    planned.push(id);
                    plan.new_ids.push((id, index));
                    plan.files.push(file);
                    (id, true)
                }
            };
            let mut flags = 0;
            if new {
                flags |= wire::FLAG_NEW;
            }
            if region.is_frozen() {
                flags |= wire::FLAG_FROZEN;
            }
            if attach.transfer {
                flags |= wire::FLAG_TRANSFER;
            }
            wire::put_descriptor(
                frame,
                Descriptor {
                    id,
                    flags,
                    size: region.size() as u64,
                },
            );
        }
        Ok(plan)
    }

    /// The message encoded with `plan` left: its new ids are bound. `binder` is told when
    /// one of those regions closes; a region that closed meanwhile is released at once.
    pub(crate) fn message_sent(
        &mut self,
        attachments: &[Attach<'_>],
        plan: Plan,
        binder: &Weak<dyn Binder>,
    ) {
        for (id, index) in plan.new_ids {
            let region = attachments[index].region;
            self.table.bind_own(id, region);
            if !region.add_binder(Weak::clone(binder)) {
                self.release(region);
            }
        }
    }

    /// Forgets this side's id for `region` and queues its RELEASE. False when the peer
    /// had nothing of it bound.
    pub(crate) fn release(&mut self, region: &Region) -> bool {
        self.release_dropped(region.serial(), region.size())
    }

    /// [`Session::release`] for a region that no longer exists here: its serial and size.
    pub(crate) fn release_dropped(&mut self, serial: u64, size: usize) -> bool {
        let Some(id) = self.table.unbind_own(serial) else {
            return false;
        };
        if !self.ended {
            self.releases.push(Descriptor {
                id,
                flags: 0,
                size: size as u64,
            });
        }
        true
    }

    /// Ends the session: by the peer (end-of-file) or by this side (closed here, or a
    /// failure this side detected). The tables are dropped. When the peer ended it, the
    /// regions this side transferred over it become reclaimable; when this side did, the
    /// regions transferred to it over the connection go back to the peer
    /// (`docs/PROTOCOL.md` §6).
    pub(crate) fn end(&mut self, by_peer: bool) {
        self.ended = true;
        self.releases.clear();
        self.table.clear();
        self.fate.end(by_peer);
        if !by_peer {
            for region in self
                .transferred_in
                .drain(..)
                .filter_map(|weak| weak.upgrade())
            {
                region.give_up_if_from(&self.fate);
            }
        }
        self.transferred_in.clear();
    }

    /// Judges one record in the order `docs/PROTOCOL.md` §7 gives and applies it. On an
    /// error the session has ended; the caller shuts the socket down.
    pub(crate) fn handle_record(&mut self, record: Record<'_>) -> Result<Inbound> {
        if self.ended {
            return Err(Error::closed(OP_RECV));
        }
        let outcome = self.judge(record);
        match outcome {
            // With a ring, the caller first takes what the ring still holds.
            Ok(Inbound::EndOfFile) if !self.ring_in => self.end(true),
            Err(_) => self.end(false),
            Ok(_) => {}
        }
        outcome
    }

    fn judge(&mut self, record: Record<'_>) -> Result<Inbound> {
        let Record {
            bytes,
            fds,
            data_truncated,
            control_truncated,
        } = record;
        if bytes.is_empty() && fds.is_empty() && !control_truncated {
            return Ok(Inbound::EndOfFile);
        }
        if control_truncated {
            let max_fds = self.limits.max_regions;
            return Err(Error::new(
                ErrorKind::FdsTruncated,
                OP_RECV,
                format!(
                    "the kernel dropped descriptors from a message ({} arrived and were closed): \
                     the peer sent more than the {max_fds} this side accepts, or this process is at \
                     its open-file limit (ulimit -n); the connection was closed",
                    fds.len()
                ),
            ));
        }
        if data_truncated {
            return Err(violation(format!(
                "the peer sent a record longer than the {} bytes this side's limits allow",
                self.limits.announced().max_frame_len()
            )));
        }
        if self.peer.is_none() {
            let announced = wire::parse_first(bytes).map_err(refusal)?;
            if !fds.is_empty() {
                return Err(violation("descriptors arrived with the HELLO"));
            }
            self.peer = Some(announced);
            return Ok(Inbound::Handshake);
        }
        let frame = wire::parse(bytes).map_err(refusal)?;
        match frame.header.kind {
            wire::KIND_RING => return self.judge_ring(frame.payload, fds),
            wire::KIND_WAKE if self.ring_in && fds.is_empty() => return Ok(Inbound::Wake),
            _ => {}
        }
        let new_count = frame.descriptors().filter(Descriptor::is_new).count();
        if new_count != fds.len() {
            return Err(violation(format!(
                "{new_count} descriptors are marked new but {} file descriptors arrived",
                fds.len()
            )));
        }
        let announced = self.limits.announced();
        if frame.header.region_count > announced.max_regions {
            return Err(violation(format!(
                "{} regions in one message; this side announced at most {}",
                frame.header.region_count, announced.max_regions
            )));
        }
        if frame.header.payload_len > announced.max_payload {
            return Err(violation(format!(
                "{} payload bytes; this side announced at most {}",
                frame.header.payload_len, announced.max_payload
            )));
        }
        match frame.header.kind {
            wire::KIND_HELLO => Err(violation("a second HELLO")),
            wire::KIND_WAKE => Err(violation(
                "a WAKE frame, but the peer has sent no RING (or it carried descriptors)",
            )),
            wire::KIND_RELEASE => {
                for d in frame.descriptors() {
                    let size = self
                        .table
                        .peer(d.id)
                        .map(|binding| binding.region.size() as u64)
                        .ok_or_else(|| {
                            violation(format!("RELEASE of region id {}, which is not bound", d.id))
                        })?;
                    if size != d.size {
                        return Err(violation(format!(
                            "RELEASE of region {} with the wrong size",
                            d.id
                        )));
                    }
                    self.table.unbind_peer(d.id);
                }
                Ok(Inbound::Released)
            }
            _ => {
                let mut fds = fds.into_iter();
                let mut regions = Vec::with_capacity(frame.descriptors().len());
                for d in frame.descriptors() {
                    let region = if d.is_new() {
                        let fd = fds
                            .next()
                            .ok_or_else(|| violation("a descriptor went missing"))?;
                        self.bind_new(d, fd)?
                    } else {
                        self.resolve_known(d)?
                    };
                    regions.push(Incoming {
                        region,
                        id: d.id,
                        new: d.is_new(),
                        frozen: d.is_frozen(),
                        transferred: d.is_transfer(),
                    });
                }
                for incoming in &regions {
                    incoming.region.arrive(&self.fate, incoming.transferred);
                    if incoming.transferred {
                        self.transferred_in.retain(|weak| weak.upgrade().is_some());
                        self.transferred_in.push(incoming.region.downgrade());
                    }
                }
                Ok(Inbound::Message {
                    regions,
                    payload: bytes.len() - frame.payload.len()..bytes.len(),
                })
            }
        }
    }

    /// §9.2: the peer's ring, checked like any region (§5.3) and mapped.
    fn judge_ring(&mut self, payload: &[u8], mut fds: Vec<OwnedFd>) -> Result<Inbound> {
        if !self.rings_agreed() {
            return Err(violation(
                "a RING frame, but the HELLOs did not agree on rings",
            ));
        }
        if self.ring_in {
            return Err(violation("a second RING frame"));
        }
        if fds.len() != 1 {
            return Err(violation(format!(
                "a RING frame must carry one file descriptor, not {}",
                fds.len()
            )));
        }
        let capacity = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let flags = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if !ring::valid_capacity(capacity) || flags != 0 {
            return Err(violation(format!(
                "a RING of capacity {capacity} with flags {flags:#x}; the capacity must be a power \
                 of two from {} to {} and the flags 0",
                ring::MIN_CAPACITY,
                ring::MAX_CAPACITY
            )));
        }
        let fd = fds
            .pop()
            .ok_or_else(|| violation("a descriptor went missing"))?;
        let mapped = Mapped::adopt(&fd, capacity)?;
        self.ring_in = true;
        let max_frame = self.limits.announced().max_frame_len();
        Ok(Inbound::Ring(Consumer::new(
            Arc::new(mapped),
            capacity,
            max_frame,
        )))
    }

    /// §5.2 rule 1 and §5.3, with this side's limits and trust policy checked before
    /// anything is mapped.
    fn bind_new(&mut self, d: Descriptor, fd: OwnedFd) -> Result<Region> {
        if self.table.is_peer_bound(d.id) {
            return Err(violation(format!(
                "region id {} is already bound; RELEASE it before reusing it",
                d.id
            )));
        }
        let inspected = Region::inspect(fd.as_fd(), d.size, d.is_frozen())?;
        if !d.is_frozen() && !self.accept_writable {
            return Err(Error::new(
                ErrorKind::RegionWritable,
                OP_RECV,
                "the peer sent a region it can still write, and this endpoint accepts only frozen \
                 regions from peers it did not start (opt in with acceptWritable for trusted \
                 peers); the connection was closed",
            ));
        }
        if d.size > self.limits.max_region_size {
            return Err(exceeded(
                OP_RECV,
                format!(
                    "the peer sent a {}-byte region; this side accepts at most {} (maxRegionSize)",
                    d.size, self.limits.max_region_size
                ),
            ));
        }
        if self.table.peer_bound() >= self.limits.max_bound_regions as usize {
            return Err(exceeded(
                OP_RECV,
                format!(
                    "the peer has {} regions bound, the most this side accepts (maxBoundRegions); \
                     it must RELEASE regions before sending new ones",
                    self.table.peer_bound()
                ),
            ));
        }
        let held = self.table.held_bytes_with(inspected.identity(), d.size);
        if held > self.limits.max_mapped_bytes {
            return Err(exceeded(
                OP_RECV,
                format!(
                    "the peer's regions would hold {held} bytes mapped; this side accepts at most {} \
                     (maxMappedBytes)",
                    self.limits.max_mapped_bytes
                ),
            ));
        }
        let (region, file) = match Region::existing(&inspected, self.realm) {
            Some(region) => {
                let file = region.file().unwrap_or_else(|| Arc::new(fd));
                (region, file)
            }
            None => {
                let charge = Charge::reserve(d.size, OP_RECV)?;
                let file = Arc::new(fd);
                (
                    Region::adopt(Arc::clone(&file), inspected, self.realm, charge)?,
                    file,
                )
            }
        };
        self.table.bind_peer(
            d.id,
            PeerBinding {
                region: region.clone(),
                file,
            },
        );
        Ok(region)
    }

    fn resolve_known(&mut self, d: Descriptor) -> Result<Region> {
        let binding = self.table.peer(d.id).ok_or_else(|| {
            violation(format!(
                "unknown region id {} (never sent with its descriptor)",
                d.id
            ))
        })?;
        let region = &binding.region;
        if region.size() as u64 != d.size {
            return Err(violation(format!(
                "region {} was bound with {} bytes but the descriptor says {}",
                d.id,
                region.size(),
                d.size
            )));
        }
        if region.is_frozen() != d.is_frozen() {
            return Err(violation(format!("region {}'s frozen flag changed", d.id)));
        }
        if !region.is_closed() {
            return Ok(region.clone());
        }
        // This side closed the region while the peer kept it bound; map the file again.
        let file = Arc::clone(&binding.file);
        let inspected = Region::inspect(file.as_fd(), d.size, d.is_frozen())?;
        let region = match Region::existing(&inspected, self.realm) {
            Some(region) => region,
            None => Region::adopt(
                file,
                inspected,
                self.realm,
                Charge::reserve(d.size, OP_RECV)?,
            )?,
        };
        self.table.rebind_peer(d.id, region.clone());
        Ok(region)
    }
}

fn refusal(refusal: Refusal) -> Error {
    match refusal {
        Refusal::Incompatible(text) => Error::new(
            ErrorKind::Incompatible,
            OP_RECV,
            format!("{text}; the connection was closed"),
        ),
        Refusal::Violation(text) => violation(text),
    }
}

#[cfg(test)]
mod tests {
    //! The session alone: records in, frames and messages out, no socket anywhere.
    use std::os::fd::OwnedFd;
    use std::sync::Weak;

    use super::*;
    use crate::wire::{FLAG_FROZEN, FLAG_NEW, FLAG_TRANSFER};

    struct NoBinder;
    impl Binder for NoBinder {
        fn region_closed(&self, _region: &Region) {}
        fn region_dropped(&self, _serial: u64, _size: usize) {}
    }

    fn binder() -> Weak<dyn Binder> {
        let weak: Weak<NoBinder> = Weak::new();
        weak
    }

    fn session() -> Session {
        Session::new(Limits::default(), true, Realm::unique())
    }

    fn record(bytes: &[u8], fds: Vec<OwnedFd>) -> Record<'_> {
        Record {
            bytes,
            fds,
            data_truncated: false,
            control_truncated: false,
        }
    }

    /// A session that has sent its HELLO and received the peer's.
    fn established() -> Session {
        let mut s = session();
        let mut frame = Vec::new();
        assert_eq!(s.poll_control(&mut frame), Some(Control::Hello));
        s.control_sent(Control::Hello);
        let hello = wire::hello_frame(Announced::default());
        assert!(matches!(
            s.handle_record(record(&hello, vec![])),
            Ok(Inbound::Handshake)
        ));
        s
    }

    fn message(descriptors: &[Descriptor], payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::put_header(
            &mut out,
            wire::KIND_MESSAGE,
            descriptors.len() as u16,
            payload.len() as u32,
        );
        for d in descriptors {
            wire::put_descriptor(&mut out, *d);
        }
        out.extend_from_slice(payload);
        out
    }

    /// A memory file as another process would send it.
    fn foreign(size: usize) -> OwnedFd {
        let region = Region::create_in(size, Realm::unique()).unwrap();
        region.file().unwrap().try_clone().unwrap()
    }

    #[test]
    fn the_first_frame_out_is_hello_and_nothing_is_sent_before_the_peers_hello() {
        let mut s = session();
        let mut frame = Vec::new();
        assert_eq!(s.poll_control(&mut frame), Some(Control::Hello));
        assert_eq!(frame, wire::hello_frame(Announced::default()));
        s.control_sent(Control::Hello);
        assert_eq!(s.poll_control(&mut frame), None);
        let region = Region::create(64).unwrap();
        let e = s
            .encode_message("send", 1, &[Attach::share(&region)], &mut frame)
            .unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::WouldBlock,
            "no frame before the peer's HELLO"
        );
    }

    #[test]
    fn a_region_travels_new_once_then_by_id_and_twice_in_one_frame_once() {
        let mut s = established();
        let region = Region::create(4096).unwrap();
        let attach = [Attach::share(&region), Attach::transfer(&region)];
        let mut frame = Vec::new();
        let plan = s.encode_message("send", 2, &attach, &mut frame).unwrap();
        assert_eq!(
            plan.files.len(),
            1,
            "one descriptor for two attachments of one region"
        );
        let parsed = wire::parse(&[frame.as_slice(), b"hi"].concat())
            .unwrap()
            .descriptors()
            .collect::<Vec<_>>();
        assert_eq!(parsed[0].flags, FLAG_NEW);
        assert_eq!(
            (parsed[1].id, parsed[1].flags),
            (parsed[0].id, FLAG_TRANSFER)
        );
        s.message_sent(&attach, plan, &binder());
        assert_eq!(s.own_id(&region), Some(parsed[0].id));
        let plan = s
            .encode_message("send", 0, &[Attach::share(&region)], &mut frame)
            .unwrap();
        assert!(plan.files.is_empty(), "a bound region travels by id");
        assert_eq!(
            wire::parse(&frame)
                .unwrap()
                .descriptors()
                .next()
                .unwrap()
                .flags,
            0
        );
    }

    #[test]
    fn release_queues_a_release_frame_and_unbinds() {
        let mut s = established();
        let region = Region::create(4096).unwrap();
        let mut frame = Vec::new();
        let plan = s
            .encode_message("send", 0, &[Attach::share(&region)], &mut frame)
            .unwrap();
        s.message_sent(&[Attach::share(&region)], plan, &binder());
        assert!(s.release(&region));
        assert!(
            !s.release(&region),
            "a second release has nothing to release"
        );
        assert_eq!(
            s.poll_control(&mut frame),
            Some(Control::Release { count: 1 })
        );
        let parsed = wire::parse(&frame).unwrap();
        assert_eq!(parsed.header.kind, wire::KIND_RELEASE);
        s.control_sent(Control::Release { count: 1 });
        assert_eq!(s.poll_control(&mut frame), None);
        assert_eq!(s.own_id(&region), None);
    }

    #[test]
    fn a_received_region_is_bound_resolved_by_id_and_released() {
        let mut s = established();
        let d = Descriptor {
            id: 5,
            flags: FLAG_NEW,
            size: 4096,
        };
        let bytes = message(&[d], b"one");
        let Inbound::Message {
            regions: first,
            payload,
        } = s
            .handle_record(record(&bytes, vec![foreign(4096)]))
            .unwrap()
        else {
            panic!("not a message")
        };
        assert_eq!(
            (&bytes[payload], first[0].id, first[0].new),
            (&b"one"[..], 5, true)
        );
        assert_eq!(s.peer_held(), (1, 4096));
        let again = Descriptor { flags: 0, ..d };
        let Inbound::Message {
            regions: second, ..
        } = s
            .handle_record(record(&message(&[again], b""), vec![]))
            .unwrap()
        else {
            panic!("not a message")
        };
        assert!(second[0].region.same_as(&first[0].region));
        let mut release = Vec::new();
        wire::put_header(&mut release, wire::KIND_RELEASE, 1, 0);
        wire::put_descriptor(&mut release, again);
        assert!(matches!(
            s.handle_record(record(&release, vec![])),
            Ok(Inbound::Released)
        ));
        assert_eq!(s.peer_held(), (0, 0));
    }

    #[test]
    fn records_are_judged_in_the_documented_order_and_a_failure_ends_the_session() {
        let mut s = established();
        let d = Descriptor {
            id: 1,
            flags: FLAG_NEW,
            size: 4096,
        };
        // Two new descriptors announced, one descriptor arrived: a violation, and the
        // descriptor that did arrive is dropped with the record.
        let two = message(&[d, Descriptor { id: 2, ..d }], b"");
        let e = s
            .handle_record(record(&two, vec![foreign(4096)]))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(!s.is_established());
        assert_eq!(
            s.handle_record(record(&two, vec![])).unwrap_err().kind(),
            ErrorKind::Closed
        );
    }

    #[test]
    fn control_truncation_beats_everything_and_eof_is_an_empty_record() {
        let mut s = established();
        let truncated = Record {
            control_truncated: true,
            ..record(b"garbage", vec![])
        };
        assert_eq!(
            s.handle_record(truncated).unwrap_err().kind(),
            ErrorKind::FdsTruncated
        );
        let mut s = established();
        assert!(matches!(
            s.handle_record(record(b"", vec![])),
            Ok(Inbound::EndOfFile)
        ));
    }

    #[test]
    fn a_writable_region_from_an_untrusted_peer_is_refused_a_frozen_one_accepted() {
        let mut s = Session::new(Limits::default(), false, Realm::unique());
        let mut frame = Vec::new();
        s.poll_control(&mut frame);
        s.control_sent(Control::Hello);
        s.handle_record(record(&wire::hello_frame(Announced::default()), vec![]))
            .unwrap();
        let frozen = Region::create_in(4096, Realm::unique()).unwrap();
        frozen.freeze().unwrap();
        let d = Descriptor {
            id: 1,
            flags: FLAG_NEW | FLAG_FROZEN,
            size: 4096,
        };
        let fd = frozen.file().unwrap().try_clone().unwrap();
        assert!(matches!(
            s.handle_record(record(&message(&[d], b""), vec![fd])),
            Ok(Inbound::Message { .. })
        ));
        let d = Descriptor {
            id: 2,
            flags: FLAG_NEW,
            size: 4096,
        };
        let e = s
            .handle_record(record(&message(&[d], b""), vec![foreign(4096)]))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RegionWritable);
    }

    #[test]
    fn local_limits_end_the_session_before_anything_is_mapped() {
        let limits = Limits {
            max_bound_regions: 1,
            max_region_size: 8192,
            ..Limits::default()
        };
        let mut s = Session::new(limits, true, Realm::unique());
        let mut frame = Vec::new();
        s.poll_control(&mut frame);
        s.control_sent(Control::Hello);
        s.handle_record(record(&wire::hello_frame(Announced::default()), vec![]))
            .unwrap();
        let big = Descriptor {
            id: 1,
            flags: FLAG_NEW,
            size: 16384,
        };
        let e = s
            .handle_record(record(&message(&[big], b""), vec![foreign(16384)]))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);

        let mut s = Session::new(limits, true, Realm::unique());
        s.poll_control(&mut frame);
        s.control_sent(Control::Hello);
        s.handle_record(record(&wire::hello_frame(Announced::default()), vec![]))
            .unwrap();
        let one = Descriptor {
            id: 1,
            flags: FLAG_NEW,
            size: 4096,
        };
        s.handle_record(record(&message(&[one], b""), vec![foreign(4096)]))
            .unwrap();
        let two = Descriptor { id: 2, ..one };
        let e = s
            .handle_record(record(&message(&[two], b""), vec![foreign(4096)]))
            .unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::LimitExceeded,
            "a second bound region is over maxBoundRegions"
        );
    }

    /// A session whose peer's RING arrived (rings agreed in both HELLOs).
    fn with_peer_ring() -> Session {
        let mut s = session().offering_ring(true);
        let mut frame = Vec::new();
        s.poll_control(&mut frame);
        s.control_sent(Control::Hello);
        let mut hello = Vec::new();
        wire::put_hello(
            &mut hello,
            Hello {
                limits: Announced::default(),
                capabilities: wire::CAP_RING,
            },
        );
        s.handle_record(record(&hello, vec![])).unwrap();
        assert!(s.rings_agreed());
        let mut ring = Vec::new();
        wire::put_header(&mut ring, wire::KIND_RING, 0, 8);
        ring.extend_from_slice(&4096u32.to_le_bytes());
        ring.extend_from_slice(&0u32.to_le_bytes());
        let fd = foreign(256 + 4096);
        assert!(matches!(
            s.handle_record(record(&ring, vec![fd])),
            Ok(Inbound::Ring(_))
        ));
        s
    }

    #[test]
    fn socket_frames_and_ring_entries_take_their_turns() {
        let mut s = with_peer_ring();
        // A socket frame read while the next entry says nothing came before it: the entry
        // goes first, the frame is held.
        assert!(!s.socket_turn(Some(0)).unwrap());
        // ...and while the next entry says one frame comes first: this is it.
        assert!(s.socket_turn(Some(1)).unwrap());
        // With no entry published, a socket frame comes now.
        assert!(s.socket_turn(None).unwrap());
        let m = message(&[], b"on the socket");
        assert!(matches!(
            s.handle_socket_frame(record(&m, vec![])),
            Ok(Inbound::Message { .. })
        ));
        // One socket frame taken: an entry saying two came first owes one more...
        assert!(!s.entry_turn(2).unwrap());
        assert!(s.owes_socket_frames());
        s.handle_socket_frame(record(&m, vec![])).unwrap();
        assert!(!s.owes_socket_frames());
        assert!(s.entry_turn(2).unwrap());
        s.handle_entry(&message(&[], b"in the ring")).unwrap();
        // ...and after the entry, the count starts again: an entry saying none came
        // before it, after one did, is a lie.
        s.handle_socket_frame(record(&m, vec![])).unwrap();
        assert_eq!(s.entry_turn(0).unwrap_err().kind(), ErrorKind::Protocol);
        assert!(!s.is_established());
    }

    #[test]
    fn the_end_of_file_cannot_come_before_frames_a_ring_entry_promised() {
        let mut s = with_peer_ring();
        assert!(matches!(
            s.handle_record(record(b"", vec![])),
            Ok(Inbound::EndOfFile)
        ));
        assert!(s.is_established(), "the ring may still hold messages");
        assert!(!s.entry_turn(1).unwrap());
        assert_eq!(s.end_of_file().unwrap_err().kind(), ErrorKind::Protocol);
        let mut s = with_peer_ring();
        s.end_of_file().unwrap();
        assert!(!s.is_established());
    }

    #[test]
    fn the_ring_carries_messages_without_new_regions_and_releases_only() {
        let new = Descriptor {
            id: 1,
            flags: FLAG_NEW,
            size: 4096,
        };
        let mut hello = wire::hello_frame(Announced::default());
        hello[0] = wire::KIND_HELLO;
        for frame in [message(&[new], b""), hello] {
            let mut s = with_peer_ring();
            assert_eq!(
                s.handle_entry(&frame).unwrap_err().kind(),
                ErrorKind::Protocol
            );
        }
        let mut s = with_peer_ring();
        assert!(matches!(
            s.handle_entry(&message(&[], b"x")),
            Ok(Inbound::Message { .. })
        ));
    }

    #[test]
    fn a_message_over_the_peers_announced_limits_is_refused_before_encoding() {
        let s = established();
        let e = s.check_message("send", 65537, &[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
        let regions: Vec<Region> = (0..33).map(|_| Region::create(64).unwrap()).collect();
        let attach: Vec<Attach> = regions.iter().map(Attach::share).collect();
        assert_eq!(
            s.check_message("send", 0, &attach).unwrap_err().kind(),
            ErrorKind::TooManyRegions
        );
    }
}
