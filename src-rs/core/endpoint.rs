//! Endpoints: one side of a `SOCK_SEQPACKET` connection that speaks `docs/PROTOCOL.md`.
//!
//! Sending is a release and receiving an acquire (`docs/MEMORY-MODEL.md`). Every call
//! is non-blocking; `*_timeout` and `send_blocking` wait with `poll(2)` for callers
//! without an event loop.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::region::Region;
use crate::sync::{AtomicBool, Ordering, fence};
use crate::sys::{self, Credentials, Readiness};
use crate::wire::{self, Descriptor, Limits, Refusal};

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
    /// The region; the same region object each time the peer sends it again.
    pub region: Region,
    /// The peer gave up access to it (see [`Attach::transfer`]).
    pub transferred: bool,
    /// The id the peer gave it (the peer's namespace, `docs/PROTOCOL.md` §5.2).
    pub id: u32,
    /// Whether its file descriptor came with this message (the `NEW` flag).
    pub new: bool,
}

/// A received message.
#[derive(Debug)]
pub struct Message {
    /// The inline payload.
    pub payload: Vec<u8>,
    /// The regions, in the order the sender attached them.
    pub regions: Vec<Incoming>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Open,
    /// The peer's end-of-file was read.
    PeerClosed,
    /// Closed by `close()` or after a protocol violation.
    Closed,
}

/// A region the peer knows, with how many of this connection's bindings use it.
#[derive(Debug)]
struct Known {
    region: Region,
    bindings: u32,
}

#[derive(Debug)]
struct Connection {
    status: Status,
    own_limits: Limits,
    peer_limits: Option<Limits>,
    /// Ids of this side's namespace, by region serial, for regions the peer has mapped.
    sent_ids: HashMap<u64, u32>,
    sent: HashMap<u32, Region>,
    next_id: u32,
    /// The peer's ids, resolved.
    received: HashMap<u32, Region>,
    /// Every region bound on this connection, by file identity: a descriptor for one
    /// of them resolves to the same region object.
    by_identity: HashMap<(u64, u64), Known>,
    /// Ids this side forgot whose RELEASE is not sent yet.
    pending_release: Vec<Descriptor>,
    recv_buf: Vec<u8>,
    control: Vec<u64>,
    fds: Vec<OwnedFd>,
    frame: Vec<u8>,
    out_fds: Vec<RawFd>,
    new_bindings: Vec<(u32, usize)>,
}

/// One side of a connection.
///
/// An endpoint is `Send + Sync`: one thread may block in [`Endpoint::recv_timeout`]
/// while another sends.
#[derive(Debug)]
pub struct Endpoint {
    fd: OwnedFd,
    conn: Mutex<Connection>,
    /// Whether the last blocking receive had to wait (see [`Endpoint::recv_timeout`]).
    receive_found_nothing: AtomicBool,
}

fn validate_limits(limits: Limits, op: &'static str) -> Result<()> {
    if limits.is_valid() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            op,
            format!(
                "limits must allow 1 to {} regions and at most {} payload bytes",
                wire::MAX_REGIONS_CEILING,
                wire::MAX_PAYLOAD_CEILING
            ),
        ))
    }
}

impl Endpoint {
    /// A connected pair of endpoints (`socketpair(2)`), for a child process or a thread.
    pub fn pair() -> Result<(Endpoint, Endpoint)> {
        Self::pair_with_limits(Limits::default())
    }

    /// [`Endpoint::pair`] where both ends accept at most `limits` per message.
    pub fn pair_with_limits(limits: Limits) -> Result<(Endpoint, Endpoint)> {
        validate_limits(limits, "Endpoint::pair")?;
        let (a, b) = sys::seqpacket_pair()?;
        Ok((Endpoint::start(a, limits)?, Endpoint::start(b, limits)?))
    }

    /// An endpoint and the raw socket of its peer, for a child process: pass the
    /// descriptor down (clearing close-on-exec in the child) and let the child call
    /// [`Endpoint::from_fd`], which sends the child's HELLO. Close this process's copy of
    /// the descriptor once the child has started.
    pub fn pair_for_child() -> Result<(Endpoint, OwnedFd)> {
        let (mine, theirs) = sys::seqpacket_pair()?;
        Ok((Endpoint::start(mine, Limits::default())?, theirs))
    }

    /// Connects to a [`crate::Listener`] at `path` (a leading NUL byte names a Linux
    /// abstract socket). The handshake completes on the first send or receive, or
    /// explicitly with [`Endpoint::handshake`].
    pub fn connect(path: impl AsRef<Path>) -> Result<Endpoint> {
        Self::connect_with_limits(path, Limits::default())
    }

    /// [`Endpoint::connect`] accepting at most `limits` per message.
    pub fn connect_with_limits(path: impl AsRef<Path>, limits: Limits) -> Result<Endpoint> {
        validate_limits(limits, "Endpoint::connect")?;
        Endpoint::start(sys::connect_to(path.as_ref())?, limits)
    }

    /// Takes over a connected `SOCK_SEQPACKET` socket, such as one a parent process
    /// passed down. It is made non-blocking.
    pub fn from_fd(fd: OwnedFd) -> Result<Endpoint> {
        Self::from_fd_with_limits(fd, Limits::default())
    }

    /// [`Endpoint::from_fd`] accepting at most `limits` per message.
    pub fn from_fd_with_limits(fd: OwnedFd, limits: Limits) -> Result<Endpoint> {
        validate_limits(limits, "Endpoint::from_fd")?;
        sys::adopt_socket(fd.as_fd())?;
        Endpoint::start(fd, limits)
    }

    /// Wraps a connected socket and sends this side's HELLO.
    pub(crate) fn start(fd: OwnedFd, limits: Limits) -> Result<Endpoint> {
        let hello = wire::hello_frame(limits);
        match sys::send_frame(fd.as_fd(), &[IoSlice::new(&hello)], &[]) {
            // A peer that is already gone is reported by the first receive, after
            // whatever it sent before leaving.
            Ok(_) | Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {}
            Err(e) => return Err(Error::os("sendmsg", e, "the socket cannot send its HELLO")),
        }
        let conn = Connection {
            status: Status::Open,
            own_limits: limits,
            peer_limits: None,
            sent_ids: HashMap::new(),
            sent: HashMap::new(),
            next_id: 1,
            received: HashMap::new(),
            by_identity: HashMap::new(),
            pending_release: Vec::new(),
            recv_buf: vec![0; limits.max_frame_len() + 1],
            control: sys::control_buffer(usize::from(limits.max_regions)),
            fds: Vec::new(),
            frame: Vec::new(),
            out_fds: Vec::new(),
            new_bindings: Vec::new(),
        };
        Ok(Endpoint {
            fd,
            conn: Mutex::new(conn),
            receive_found_nothing: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the tables consistent or the connection
        // closed: every mutation either completes or is followed by `fail`.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The limits this side announced.
    pub fn limits(&self) -> Limits {
        self.lock().own_limits
    }

    /// The limits the peer announced, once its HELLO has arrived.
    pub fn peer_limits(&self) -> Option<Limits> {
        self.lock().peer_limits
    }

    /// Whether the peer's HELLO has been received. Until then a send that cannot proceed
    /// waits for the socket to become readable, not writable.
    pub fn is_handshake_complete(&self) -> bool {
        self.lock().peer_limits.is_some()
    }

    /// Who is at the other end (`SO_PEERCRED`): for a socketpair, its creator.
    pub fn peer_credentials(&self) -> Result<Credentials> {
        sys::peer_credentials(self.fd.as_fd())
    }

    /// Waits until the peer's HELLO has arrived and returns its limits.
    pub fn handshake(&self, timeout: Option<Duration>) -> Result<Limits> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.lock().peer_limits(self.fd.as_fd()) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => return other,
            }
            self.wait(Readiness::Readable, deadline, "handshake")?;
        }
    }

    fn wait(
        &self,
        readiness: Readiness,
        deadline: Option<Instant>,
        op: &'static str,
    ) -> Result<()> {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) || !sys::wait(self.fd.as_fd(), readiness, remaining)? {
            return Err(Error::new(
                ErrorKind::TimedOut,
                op,
                "the timeout passed first",
            ));
        }
        Ok(())
    }

    /// Sends `payload` with `regions` attached, without blocking.
    ///
    /// A region's descriptor travels only the first time this connection sees it; after
    /// that the frame carries its id. Fails with [`ErrorKind::WouldBlock`] when the
    /// socket buffer is full or the peer's HELLO has not arrived (see
    /// [`Endpoint::is_handshake_complete`]); nothing is sent then.
    pub fn send(&self, payload: &[u8], regions: &[Attach<'_>]) -> Result<()> {
        self.lock().send(self.fd.as_fd(), payload, regions)
    }

    /// [`Endpoint::send`] that waits up to `timeout` (`None`: forever) for room.
    pub fn send_blocking(
        &self,
        payload: &[u8],
        regions: &[Attach<'_>],
        timeout: Option<Duration>,
    ) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let readiness = {
                let mut conn = self.lock();
                match conn.send(self.fd.as_fd(), payload, regions) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => conn.send_readiness(),
                    other => return other,
                }
            };
            self.wait(readiness, deadline, "send")?;
        }
    }

    /// Receives one message without blocking; [`ErrorKind::WouldBlock`] when none is there.
    pub fn try_recv(&self) -> Result<Message> {
        self.lock().recv(self.fd.as_fd())
    }

    /// Receives one message, waiting up to `timeout` (`None`: forever).
    ///
    /// When the previous receive found nothing waiting (a conversation in lockstep), this
    /// one waits for the socket first instead of trying a receive that would find nothing.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Message> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut wait_first = self.receive_found_nothing.load(Ordering::Relaxed);
        loop {
            if wait_first {
                self.wait(Readiness::Readable, deadline, "recv")?;
            }
            match self.try_recv() {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.receive_found_nothing.store(true, Ordering::Relaxed);
                    wait_first = true;
                }
                other => {
                    if !wait_first {
                        self.receive_found_nothing.store(false, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
    }

    /// Forgets this side's id for `region`: the peer is told (RELEASE) and may unmap it.
    /// Sending the region again later passes its descriptor again. Does nothing for a
    /// region this side never sent.
    pub fn release(&self, region: &Region) -> Result<()> {
        self.lock().release(self.fd.as_fd(), region)
    }

    /// Sends RELEASE frames still queued because the socket was full.
    /// [`ErrorKind::WouldBlock`] means some remain; wait for writability and retry.
    pub fn flush(&self) -> Result<()> {
        self.lock().flush_releases(self.fd.as_fd())
    }

    /// Whether RELEASE frames wait for room in the socket.
    pub fn has_pending_output(&self) -> bool {
        !self.lock().pending_release.is_empty()
    }

    /// How many regions this connection keeps mapped for the peer's ids and its own.
    pub fn bound_regions(&self) -> usize {
        self.lock().by_identity.len()
    }

    /// Closes the connection: the peer sees end-of-file, every region bound to it is
    /// dropped (regions still held elsewhere stay valid). The descriptor itself is closed
    /// when the endpoint is dropped, so an event loop can stop watching it first.
    pub fn close(&self) {
        let mut conn = self.lock();
        if conn.status != Status::Closed {
            sys::shutdown_both(self.fd.as_fd());
            conn.status = Status::Closed;
            conn.forget_all();
        }
    }

    /// Whether the connection can still carry messages: neither side closed it and no
    /// protocol violation ended it.
    pub fn is_open(&self) -> bool {
        self.lock().status == Status::Open
    }
}

impl AsFd for Endpoint {
    /// The socket, for an event loop to wait on. Do not read or write it directly.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Connection {
    fn check_open(&self, op: &'static str) -> Result<()> {
        match self.status {
            Status::Open => Ok(()),
            Status::PeerClosed => Err(Error::peer_closed(op)),
            Status::Closed => Err(Error::closed(op)),
        }
    }

    fn send_readiness(&self) -> Readiness {
        if self.peer_limits.is_some() {
            Readiness::Writable
        } else {
            Readiness::Readable
        }
    }

    /// The peer's limits, reading its HELLO first if it has not been read yet.
    fn peer_limits(&mut self, fd: BorrowedFd<'_>) -> Result<Limits> {
        if let Some(limits) = self.peer_limits {
            return Ok(limits);
        }
        self.check_open("handshake")?;
        // The HELLO is always the peer's first record, so reading one record here can
        // never take a message away from `recv`: the first record is a HELLO or a
        // violation that closes the connection.
        let len = self.read_record(fd, "handshake")?;
        self.handle(fd, len)?;
        self.peer_limits
            .ok_or_else(|| Error::would_block("handshake"))
    }

    fn send(&mut self, fd: BorrowedFd<'_>, payload: &[u8], regions: &[Attach<'_>]) -> Result<()> {
        const OP: &str = "send";
        self.check_open(OP)?;
        let peer = self.peer_limits(fd)?;
        if payload.len() > peer.max_payload as usize {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                OP,
                format!(
                    "the payload has {} bytes but the peer accepts at most {}; put large data in a region",
                    payload.len(),
                    peer.max_payload
                ),
            ));
        }
        if regions.len() > usize::from(peer.max_regions) {
            return Err(Error::new(
                ErrorKind::TooManyRegions,
                OP,
                format!(
                    "{} regions attached but the peer accepts at most {} per message; send several messages",
                    regions.len(),
                    peer.max_regions
                ),
            ));
        }
        for attach in regions {
            if attach.region.is_transferred() {
                return Err(Error::new(
                    ErrorKind::RegionTransferred,
                    OP,
                    "a region was already transferred; only its current owner may send it",
                ));
            }
        }
        self.flush_releases(fd)?;
        self.encode_message(payload.len() as u32, regions);
        // SYNC POINT: release (MEMORY-MODEL.md §3). Every write this thread made to the
        // attached regions happens-before the peer's reads after its receive.
        fence(Ordering::Release);
        let iov = [IoSlice::new(&self.frame), IoSlice::new(payload)];
        let expected = self.frame.len() + payload.len();
        match sys::send_frame(fd, &iov, &self.out_fds) {
            Ok(n) if n == expected => {}
            Ok(n) => {
                return Err(Error::new(
                    ErrorKind::Os,
                    "sendmsg",
                    format!("the kernel took {n} of {expected} bytes of a record"),
                ));
            }
            Err(e) => return Err(send_error(e)),
        }
        self.commit_sent(regions);
        Ok(())
    }

    /// Writes the header and descriptors of a MESSAGE into `self.frame`, the descriptors
    /// to pass into `self.out_fds`, and the ids it assigns into `self.new_bindings`.
    fn encode_message(&mut self, payload_len: u32, regions: &[Attach<'_>]) {
        self.frame.clear();
        self.out_fds.clear();
        self.new_bindings.clear();
        wire::put_header(
            &mut self.frame,
            wire::KIND_MESSAGE,
            regions.len() as u16,
            payload_len,
        );
        let mut next_id = self.next_id;
        for (index, attach) in regions.iter().enumerate() {
            let region = attach.region;
            let earlier = self
                .new_bindings
                .iter()
                .find(|(_, i)| regions[*i].region.same_as(region));
            let (id, new) = match (self.sent_ids.get(&region.serial()), earlier) {
                (Some(&id), _) => (id, false),
                (None, Some(&(id, _))) => (id, false),
                (None, None) => {
                    let id = self.free_id(&mut next_id);
                    self.new_bindings.push((id, index));
                    self.out_fds.push(region.as_fd().as_raw_fd());
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
                &mut self.frame,
                Descriptor {
                    id,
                    flags,
                    size: region.size() as u64,
                },
            );
        }
    }

    /// The next id at or after `*next` that is neither 0 nor bound.
    fn free_id(&self, next: &mut u32) -> u32 {
        loop {
            let id = *next;
            *next = next.wrapping_add(1);
            let taken =
                self.sent.contains_key(&id) || self.new_bindings.iter().any(|(i, _)| *i == id);
            if id != 0 && !taken {
                return id;
            }
        }
    }

    fn commit_sent(&mut self, regions: &[Attach<'_>]) {
        for &(id, index) in &self.new_bindings {
            let region = regions[index].region;
            self.sent_ids.insert(region.serial(), id);
            self.sent.insert(id, region.clone());
            bind(&mut self.by_identity, region);
            self.next_id = id.wrapping_add(1);
        }
        for attach in regions.iter().filter(|a| a.transfer) {
            attach.region.set_transferred(true);
        }
    }

    fn release(&mut self, fd: BorrowedFd<'_>, region: &Region) -> Result<()> {
        let Some(id) = self.sent_ids.remove(&region.serial()) else {
            return Ok(());
        };
        self.sent.remove(&id);
        unbind(&mut self.by_identity, region);
        if self.status != Status::Open {
            return Ok(());
        }
        self.pending_release.push(Descriptor {
            id,
            flags: 0,
            size: region.size() as u64,
        });
        match self.flush_releases(fd) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    fn flush_releases(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        while !self.pending_release.is_empty() {
            let peer = self.peer_limits(fd)?;
            let count = self
                .pending_release
                .len()
                .min(usize::from(peer.max_regions));
            self.frame.clear();
            wire::put_header(&mut self.frame, wire::KIND_RELEASE, count as u16, 0);
            for d in &self.pending_release[..count] {
                wire::put_descriptor(&mut self.frame, *d);
            }
            sys::send_frame(fd, &[IoSlice::new(&self.frame)], &[]).map_err(send_error)?;
            self.pending_release.drain(..count);
        }
        Ok(())
    }

    /// Reads one record into `recv_buf` (and its descriptors into `fds`); returns its length.
    fn read_record(&mut self, fd: BorrowedFd<'_>, op: &'static str) -> Result<usize> {
        self.fds.clear();
        let max_fds = usize::from(self.own_limits.max_regions);
        let mut received = sys::recv_frame(
            fd,
            &mut self.recv_buf,
            &mut self.control,
            max_fds,
            &mut self.fds,
        );
        if received == Err(nix::errno::Errno::ECONNRESET) {
            // The peer closed with records of ours still unread; Linux reports that once,
            // then hands over what the peer sent before closing, then end-of-file.
            received = sys::recv_frame(
                fd,
                &mut self.recv_buf,
                &mut self.control,
                max_fds,
                &mut self.fds,
            );
        }
        // SYNC POINT: acquire (MEMORY-MODEL.md §4). The peer's writes before its send
        // happen-before every read this thread makes after this point.
        fence(Ordering::Acquire);
        let received = match received {
            Ok(r) => r,
            Err(nix::errno::Errno::EAGAIN) => return Err(Error::would_block(op)),
            Err(e) => {
                return Err(Error::os(
                    "recvmsg",
                    e,
                    "the socket failed; close the endpoint",
                ));
            }
        };
        if received.len == 0 && self.fds.is_empty() && !received.control_truncated {
            return Err(self.peer_gone(fd, op));
        }
        if received.control_truncated {
            let installed = self.fds.len();
            return Err(self.fail(fd, Error::new(
                ErrorKind::FdsTruncated,
                op,
                format!(
                    "the kernel dropped descriptors from a message ({installed} arrived and were closed): \
                     the peer sent more than the {max_fds} this side accepts, or this process is at its \
                     open-file limit (ulimit -n); the connection was closed"
                ),
            )));
        }
        if received.data_truncated {
            let limit = self.own_limits.max_frame_len();
            return Err(self.fail(fd, Error::protocol(
                op,
                format!("the peer sent a record longer than the {limit} bytes this side's limits allow"),
            )));
        }
        Ok(received.len)
    }

    /// End-of-file. A zero-length record reads the same; no frame is that short, so the
    /// connection is shut down either way (PROTOCOL.md §6).
    fn peer_gone(&mut self, fd: BorrowedFd<'_>, op: &'static str) -> Error {
        sys::shutdown_both(fd);
        self.status = Status::PeerClosed;
        self.forget_all();
        Error::peer_closed(op)
    }

    /// Closes the connection after a violation (the peer reads end-of-file) and returns
    /// `error` to report it.
    fn fail(&mut self, fd: BorrowedFd<'_>, error: Error) -> Error {
        sys::shutdown_both(fd);
        self.fds.clear();
        self.status = Status::Closed;
        self.forget_all();
        error
    }

    fn forget_all(&mut self) {
        self.sent_ids.clear();
        self.sent.clear();
        self.received.clear();
        self.by_identity.clear();
        self.pending_release.clear();
        self.fds.clear();
    }

    fn recv(&mut self, fd: BorrowedFd<'_>) -> Result<Message> {
        self.check_open("recv")?;
        loop {
            let len = self.read_record(fd, "recv")?;
            if let Some(message) = self.handle(fd, len)? {
                return Ok(message);
            }
        }
    }

    /// Applies one record of `len` bytes; returns the message if it was one.
    fn handle(&mut self, fd: BorrowedFd<'_>, len: usize) -> Result<Option<Message>> {
        const OP: &str = "recv";
        let buf = std::mem::take(&mut self.recv_buf);
        let outcome = self.apply(&buf[..len.min(buf.len())]);
        self.recv_buf = buf;
        outcome.map_err(|e| match e {
            Rejection::Refused(Refusal::Incompatible(text)) => self.fail(
                fd,
                Error::new(
                    ErrorKind::Incompatible,
                    OP,
                    format!("{text}; the connection was closed"),
                ),
            ),
            Rejection::Refused(Refusal::Violation(text)) => {
                self.fail(fd, Error::protocol(OP, text))
            }
            Rejection::Error(e) => self.fail(fd, e),
        })
    }

    /// Judges one record in the order `docs/PROTOCOL.md` §7 gives and applies it.
    fn apply(&mut self, record: &[u8]) -> std::result::Result<Option<Message>, Rejection> {
        let fds_arrived = self.fds.len();
        if self.peer_limits.is_none() {
            let limits = wire::parse_first(record).map_err(Rejection::Refused)?;
            if fds_arrived != 0 {
                return Err(violation("descriptors arrived with the HELLO"));
            }
            self.peer_limits = Some(limits);
            return Ok(None);
        }
        let frame = wire::parse(record).map_err(Rejection::Refused)?;
        let new_count = frame.descriptors().filter(Descriptor::is_new).count();
        if new_count != fds_arrived {
            return Err(violation(format!(
                "{new_count} descriptors are marked new but {fds_arrived} file descriptors arrived"
            )));
        }
        if frame.header.region_count > self.own_limits.max_regions {
            return Err(violation(format!(
                "{} regions in one message; this side announced at most {}",
                frame.header.region_count, self.own_limits.max_regions
            )));
        }
        if frame.header.payload_len > self.own_limits.max_payload {
            return Err(violation(format!(
                "{} payload bytes; this side announced at most {}",
                frame.header.payload_len, self.own_limits.max_payload
            )));
        }
        match frame.header.kind {
            wire::KIND_HELLO => Err(violation("a second HELLO")),
            wire::KIND_RELEASE => {
                for d in frame.descriptors() {
                    let region = self.received.remove(&d.id).ok_or_else(|| {
                        violation(format!("RELEASE of region id {}, which is not bound", d.id))
                    })?;
                    if region.size() as u64 != d.size {
                        return Err(violation(format!(
                            "RELEASE of region {} with the wrong size",
                            d.id
                        )));
                    }
                    unbind(&mut self.by_identity, &region);
                }
                Ok(None)
            }
            _ => {
                let mut fds = std::mem::take(&mut self.fds).into_iter();
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
                    region.set_transferred(false);
                    regions.push(Incoming {
                        region,
                        transferred: d.is_transfer(),
                        id: d.id,
                        new: d.is_new(),
                    });
                }
                Ok(Some(Message {
                    payload: frame.payload.to_vec(),
                    regions,
                }))
            }
        }
    }

    fn bind_new(&mut self, d: Descriptor, fd: OwnedFd) -> std::result::Result<Region, Rejection> {
        let Entry::Vacant(slot) = self.received.entry(d.id) else {
            return Err(violation(format!(
                "region id {} is already bound; RELEASE it before reusing it",
                d.id
            )));
        };
        let info = Region::inspect(fd.as_fd(), d.size, d.is_frozen()).map_err(Rejection::Error)?;
        let region = match self.by_identity.get(&info.identity) {
            Some(known) if known.region.is_frozen() == d.is_frozen() => known.region.clone(),
            _ => Region::adopt(fd, info, d.is_frozen()).map_err(Rejection::Error)?,
        };
        slot.insert(region.clone());
        bind(&mut self.by_identity, &region);
        Ok(region)
    }

    fn resolve_known(&self, d: Descriptor) -> std::result::Result<Region, Rejection> {
        let region = self.received.get(&d.id).ok_or_else(|| {
            violation(format!(
                "unknown region id {} (never sent with its descriptor)",
                d.id
            ))
        })?;
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
        Ok(region.clone())
    }
}

/// Why a record was not applied.
enum Rejection {
    Refused(Refusal),
    Error(Error),
}

fn violation(text: impl Into<String>) -> Rejection {
    Rejection::Refused(Refusal::Violation(text.into()))
}

fn bind(by_identity: &mut HashMap<(u64, u64), Known>, region: &Region) {
    by_identity
        .entry(region.identity())
        .or_insert_with(|| Known {
            region: region.clone(),
            bindings: 0,
        })
        .bindings += 1;
}

fn unbind(by_identity: &mut HashMap<(u64, u64), Known>, region: &Region) {
    if let Entry::Occupied(mut known) = by_identity.entry(region.identity()) {
        known.get_mut().bindings -= 1;
        if known.get().bindings == 0 {
            known.remove();
        }
    }
}

fn send_error(e: nix::errno::Errno) -> Error {
    use nix::errno::Errno;
    match e {
        Errno::EAGAIN => Error::would_block("send"),
        Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN => Error::peer_closed("send"),
        Errno::ETOOMANYREFS => Error::os(
            "sendmsg",
            e,
            "too many descriptors are in flight; wait until the peer has received earlier messages",
        ),
        _ => Error::os(
            "sendmsg",
            e,
            "the message could not be sent; close the endpoint",
        ),
    }
}
