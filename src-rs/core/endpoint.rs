//! Endpoints: one side of a `SOCK_SEQPACKET` connection, readiness-driven.
//!
//! An endpoint owns its socket, the [`Session`] that holds the protocol state, one
//! ordered output queue for every send (asynchronous and blocking alike), and a bounded
//! queue of received messages. An event loop drives it: it asks for the endpoint's
//! [`Endpoint::interest`], reports readiness with [`Endpoint::on_ready`] and takes
//! [`Event`]s with [`Endpoint::poll_event`] until there are none. Programs without an
//! event loop use the blocking calls ([`Endpoint::send_blocking`],
//! [`Endpoint::recv_timeout`]), which drive the same state with `poll(2)`.
//!
//! Sending is a release and receiving an acquire (`docs/MEMORY-MODEL.md`).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use crate::bytes::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::limits::Limits;
use crate::payload::{KEEP_BUFFER_AT, Payload, Spares};
use crate::region::{Binder, Realm, Region};
use crate::session::{Attach, Control, Inbound, Message, Record, Session};
use crate::socket::Socket;
use crate::sync::{AtomicBool, AtomicU64, Ordering, fence};
use crate::sys::{self, Credentials, Interest, Io};
use crate::wire::Announced;

mod rings;

/// Received messages an endpoint holds for its application before it stops reading
/// (the peer's sends then wait for room in the socket).
const INBOX_MESSAGES: usize = 256;
/// Payload bytes an endpoint holds for its application before it stops reading.
const INBOX_BYTES: usize = 4 << 20;
/// How long a blocking call waits between checks that its caller still wants it.
const INTERRUPT_SLICE: Duration = Duration::from_millis(25);
/// The busy-poll window of an endpoint with a ring, unless its options say otherwise:
/// long enough for a peer's reply over the ring to come back while spinning (a few
/// microseconds here), short enough that one wait costs little CPU.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Which peers a listener accepts, or which server a client connects to, judged by the
/// credentials the kernel recorded for the socket (`SO_PEERCRED`) before anything is
/// read from it or mapped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PeerFilter {
    /// This process's effective user, or root (which can reach this process anyway).
    #[default]
    SameUser,
    /// Any local user.
    AnyUser,
    /// Only these user ids (root is not implied).
    Users(Vec<u32>),
}

impl PeerFilter {
    /// Whether `peer` passes.
    pub fn admits(&self, peer: &Credentials) -> bool {
        match self {
            PeerFilter::SameUser => peer.uid == 0 || peer.uid == nix::unistd::geteuid().as_raw(),
            PeerFilter::AnyUser => true,
            PeerFilter::Users(uids) => uids.contains(&peer.uid),
        }
    }

    pub(crate) fn check(&self, fd: BorrowedFd<'_>, op: &'static str) -> Result<Credentials> {
        let peer = sys::peer_credentials(fd)?;
        if self.admits(&peer) {
            Ok(peer)
        } else {
            Err(Error::new(
                ErrorKind::PeerRejected,
                op,
                format!(
                    "the peer runs as uid {} (pid {}), which this side's filter does not allow \
                     ({self:?}); the connection was closed",
                    peer.uid, peer.pid
                ),
            ))
        }
    }
}

/// How an endpoint treats its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// What the peer may send and make this side hold.
    pub limits: Limits,
    /// Whether the peer may send regions it can still write (not frozen). Code this
    /// process started is trusted with that by default (`pair`, `from_fd`); a peer
    /// reached by name is not (`connect`, a listener's connections), because memory
    /// another process can change at any time is unsafe to parse.
    pub accept_writable: bool,
    /// Sends that go out at once between two turns of the driving event loop; the next
    /// one waits for the loop to turn, so a loop of awaited sends lets other work run.
    /// 0: never wait (programs without an event loop).
    pub yield_every: u32,
    /// The realm received regions resolve in (see [`Realm`]).
    pub realm: Realm,
    /// Offer a shared-memory ring per direction in HELLO (`docs/PROTOCOL.md` §9): when the
    /// peer offers one too, small messages travel without a system call. Off by default:
    /// it pays only with [`Options::busy_poll`], which costs CPU time while waiting.
    pub ring: bool,
    /// With a ring: how long a waiting receive spins (adaptively, up to this, and never
    /// longer than its timeout) before it sleeps, and how long an event loop keeps polling
    /// the ring after delivering messages before it goes back to sleep. `Duration::ZERO`
    /// never spins.
    pub busy_poll: Duration,
}

impl Options {
    /// For a peer this process started: writable regions accepted.
    pub fn trusted() -> Options {
        Options {
            limits: Limits::default(),
            accept_writable: true,
            yield_every: 0,
            realm: Realm::default(),
            ring: false,
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }

    /// For a peer reached by name: frozen regions only.
    pub fn untrusted() -> Options {
        Options {
            accept_writable: false,
            ..Options::trusted()
        }
    }
}

/// A send's place in an endpoint's output queue.
pub type Ticket = u64;

/// What became of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The message is in the socket.
    Sent,
    /// The message waits in the output queue; an [`Event::Sent`] or [`Event::SendFailed`]
    /// reports it.
    Queued(Ticket),
}

/// What a driving event loop has to tell the application.
#[derive(Debug)]
pub enum Event {
    /// A message arrived (only while the application wants messages).
    Message(Message),
    /// Every queued send up to and including this ticket left, except those reported by
    /// [`Event::SendFailed`].
    Sent {
        /// The last ticket that left.
        through: Ticket,
    },
    /// A queued send could not go out; nothing of it was sent and its regions are usable
    /// again.
    SendFailed {
        /// The send.
        ticket: Ticket,
        /// Why.
        error: Error,
    },
    /// The peer's HELLO arrived: sends go out.
    Handshake,
    /// The connection ended: the peer closed it ([`ErrorKind::PeerClosed`]), this side
    /// closed it ([`ErrorKind::Closed`]), or a failure did (any other kind). Messages
    /// received before are still delivered.
    Closed(Error),
}

/// What a driving event loop does after a call that did not come from it
/// ([`Endpoint::settle`]).
#[derive(Debug)]
pub enum Settle {
    /// Deliver this notice, then ask again.
    Notice(Event),
    /// Nothing to deliver: wait for `interest`, and keep the endpoint (and the loop)
    /// alive while `awaited`.
    Wait {
        /// What to wait for ([`Endpoint::interest`]).
        interest: Interest,
        /// Whether the application waits for something ([`Endpoint::is_awaited`]).
        awaited: bool,
    },
}

/// Traffic counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent.
    pub messages_out: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Messages received.
    pub messages_in: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// This side's regions the peer has bound now.
    pub own_regions: u64,
    /// The peer's regions bound on this connection now.
    pub peer_regions: u64,
    /// Bytes of distinct regions the peer's bindings hold mapped now.
    pub peer_mapped_bytes: u64,
    /// Sends waiting in the output queue.
    pub queued: u64,
    /// Received messages waiting for the application.
    pub inbox: u64,
    /// Messages sent through this side's ring (the others went over the socket).
    pub ring_messages_out: u64,
    /// Messages received through the peer's ring.
    pub ring_messages_in: u64,
    /// WAKE records sent because the peer's event loop slept when this side put a message
    /// in its ring; with busy-polling peers, a small fraction of `ring_messages_out`.
    pub ring_wakes_out: u64,
}

#[derive(Debug, Clone)]
enum Status {
    Open,
    Ended(Error),
}

#[derive(Debug)]
struct Queued {
    ticket: Ticket,
    payload: Vec<u8>,
    attachments: Vec<(Region, bool)>,
    /// A blocking caller waits for this one: its failure is returned to it, not reported
    /// as an event.
    blocking: bool,
}

impl Queued {
    fn attachments(&self) -> Vec<Attach<'_>> {
        self.attachments
            .iter()
            .map(|(region, transfer)| Attach {
                region,
                transfer: *transfer,
            })
            .collect()
    }

    /// The send will never leave: regions it transferred are usable here again.
    fn abandon(self) {
        for (region, transfer) in self.attachments {
            if transfer {
                region.keep();
            }
        }
    }
}

/// When a blocking call gives up: its timeout, counted from the first time the call has
/// to wait (for a spin, from its first clock read). A call that finds its message or its
/// room at once never reads the clock.
struct Deadline {
    timeout: Option<Duration>,
    at: Option<Option<Instant>>,
}

impl Deadline {
    fn after(timeout: Option<Duration>) -> Deadline {
        Deadline { timeout, at: None }
    }

    /// The instant to give up at (`None`: never), fixed now unless it is already.
    fn get(&mut self) -> Option<Instant> {
        if self.at.is_none() {
            self.start_at(Instant::now());
        }
        self.at.flatten()
    }

    /// Fixes the deadline at `timeout` after `started`, unless it is fixed already.
    fn start_at(&mut self, started: Instant) {
        let timeout = self.timeout;
        self.at.get_or_insert_with(|| timeout.map(|t| started + t));
    }

    /// How long is left (`None`: no limit), without fixing the deadline.
    fn left(&self) -> Option<Duration> {
        match self.at {
            None => self.timeout,
            Some(at) => at.map(|at| at.saturating_duration_since(Instant::now())),
        }
    }
}

/// Calls `wait_slice` with slices of at most [`INTERRUPT_SLICE`] until it reports
/// readiness, `deadline` passes (`TimedOut`) or, between slices, `interrupted` says the
/// calling thread is being stopped (`Closed`).
fn in_slices(
    deadline: Option<Instant>,
    op: &'static str,
    interrupted: &mut dyn FnMut() -> bool,
    mut wait_slice: impl FnMut(Duration) -> Result<bool>,
) -> Result<()> {
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            return Err(Error::timed_out(op));
        }
        if wait_slice(remaining.map_or(INTERRUPT_SLICE, |r| r.min(INTERRUPT_SLICE)))? {
            return Ok(());
        }
        if interrupted() {
            return Err(Error::new(
                ErrorKind::Closed,
                op,
                "the calling thread is being stopped (a worker thread was terminated)",
            ));
        }
    }
}

/// What one receive from the socket brought.
enum Received {
    Empty,
    Disconnected,
    Record(RawFrame),
}

/// A record's length in the receive buffer, and what came with it.
struct RawFrame {
    len: usize,
    fds: Vec<OwnedFd>,
    data_truncated: bool,
    control_truncated: bool,
}

impl RawFrame {
    /// The record, as the session judges it, with its bytes in `buffer`.
    fn record(self, buffer: &[u8]) -> Record<'_> {
        Record {
            bytes: &buffer[..self.len],
            fds: self.fds,
            data_truncated: self.data_truncated,
            control_truncated: self.control_truncated,
        }
    }
}

/// Buffers reused for every record, passed explicitly to what fills them.
#[derive(Debug)]
struct Scratch {
    frame: Vec<u8>,
    /// The receive buffer; a large payload keeps it and `spares` gives the next one.
    record: Vec<u8>,
    spares: Spares,
    control: Vec<u64>,
}

/// What one record brought, as the endpoint files it.
enum Arrival {
    Handshake,
    Released,
    Message(Message),
    EndOfFile,
    Ring(crate::ring::Consumer<Arc<crate::ring::Mapped>>),
    Wake,
}

/// Where a record the session judged lies, for its payload to be taken from.
enum Source {
    /// The receive buffer (`Scratch::record`).
    Receive,
    /// A socket record read ahead of its turn and kept (`docs/PROTOCOL.md` §9.4).
    Held(Vec<u8>),
    /// The ring entry peeked last.
    Entry,
}

#[derive(Debug)]
struct Conn {
    session: Session,
    status: Status,
    outbox: VecDeque<Queued>,
    inbox: VecDeque<Message>,
    inbox_bytes: usize,
    notices: VecDeque<Event>,
    /// An event loop drives this endpoint (it takes notices).
    driven: bool,
    /// Receives the application waits on: each takes one message delivered as an event.
    demand: u32,
    /// The application takes every message as an event (an event listener).
    listening: bool,
    /// The socket was reported readable and no receive has found it empty since.
    readable: bool,
    delivered_this_turn: bool,
    sends_this_turn: u32,
    yield_every: u32,
    /// The last blocking receive had to wait: the next waits before trying.
    last_receive_waited: bool,
    next_ticket: Ticket,
    sent_through: Ticket,
    reported_through: Ticket,
    blocking_failure: Option<(Ticket, Error)>,
    stats: Stats,
    scratch: Scratch,
    binder: Weak<dyn Binder>,
    socket: Socket,
    rings: rings::Rings,
}

#[derive(Debug)]
struct Shared {
    id: u64,
    conn: Mutex<Conn>,
    /// Regions sent over this connection whose last handle was dropped while the
    /// connection was locked (serial and size), released by the next lock.
    dropped: Mutex<Vec<(u64, usize)>>,
    any_dropped: AtomicBool,
}

impl Binder for Shared {
    fn region_closed(&self, region: &Region) {
        let mut conn = self.lock();
        if conn.session.release(region) && conn.is_open() {
            // The RELEASE waits in the session if the socket is full; it leaves with the
            // next send or when the loop next finds the socket writable.
            let _ = conn.send_control();
        }
    }

    fn region_dropped(&self, serial: u64, size: usize) {
        lock_ignoring_poison(&self.dropped).push((serial, size));
        self.any_dropped.store(true, Ordering::Release);
        // Dropping a binding under the lock can drop a region's last handle: then that
        // thread (or another holding the lock) is busy here, and the next lock releases it.
        let conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        drop(self.release_dropped(conn));
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Conn> {
        // Every critical section leaves the state consistent before anything can panic.
        let conn = lock_ignoring_poison(&self.conn);
        if self.any_dropped.load(Ordering::Acquire) {
            return self.release_dropped(conn);
        }
        conn
    }

    /// Releases the regions dropped since the last time, and sends the RELEASE.
    fn release_dropped<'a>(&self, mut conn: MutexGuard<'a, Conn>) -> MutexGuard<'a, Conn> {
        self.any_dropped.store(false, Ordering::Release);
        let dropped = std::mem::take(&mut *lock_ignoring_poison(&self.dropped));
        let mut released = false;
        for (serial, size) in dropped {
            released |= conn.session.release_dropped(serial, size);
        }
        if released && conn.is_open() {
            // As in `region_closed`: a full socket keeps it for later.
            let _ = conn.send_control();
        }
        conn
    }
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent before anything can panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One side of a connection.
///
/// An endpoint is `Send + Sync`: one thread may block in [`Endpoint::recv_timeout`]
/// while another sends. Dropping it closes the connection.
#[derive(Debug)]
pub struct Endpoint {
    shared: Arc<Shared>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.close();
    }
}

impl Endpoint {
    /// A connected pair of endpoints (`socketpair(2)`), for a thread this program
    /// starts; both accept writable regions.
    pub fn pair() -> Result<(Endpoint, Endpoint)> {
        Self::pair_with(Options::trusted())
    }

    /// [`Endpoint::pair`] with both ends using `options`, except that the second end
    /// resolves regions in a [`Realm`] of its own, as another process would: a region
    /// sent from one end to the other is a separate region there, with its own custody.
    pub fn pair_with(options: Options) -> Result<(Endpoint, Endpoint)> {
        options.limits.validate("Endpoint.pair")?;
        let (a, b) = sys::seqpacket_pair()?;
        let second = Options {
            realm: Realm::unique(),
            ..options.clone()
        };
        Ok((Endpoint::start(a, options)?, Endpoint::start(b, second)?))
    }

    /// An endpoint and the raw socket of its peer, for a child process: pass the
    /// descriptor down (clearing close-on-exec in the child) and let the child call
    /// [`Endpoint::from_fd`], which sends the child's HELLO. Close this process's copy of
    /// the descriptor once the child has started.
    pub fn pair_for_child(options: Options) -> Result<(Endpoint, OwnedFd)> {
        options.limits.validate("spawnWithEndpoint")?;
        let (mine, theirs) = sys::seqpacket_pair()?;
        Ok((Endpoint::start(mine, options)?, theirs))
    }

    /// Connects to a [`crate::Listener`] at `path` (a leading NUL byte names a Linux
    /// abstract socket) whose owner passes `server` (checked with `SO_PEERCRED` before
    /// anything is sent or read). The handshake completes on the first send or receive,
    /// or explicitly with [`Endpoint::handshake`].
    pub fn connect(
        path: impl AsRef<Path>,
        server: &PeerFilter,
        options: Options,
    ) -> Result<Endpoint> {
        const OP: &str = "Endpoint.connect";
        options.limits.validate(OP)?;
        let fd = sys::connect_to(path.as_ref())?;
        server.check(fd.as_fd(), OP)?;
        Endpoint::start(fd, options)
    }

    /// Takes over a connected `SOCK_SEQPACKET` socket, such as one a parent process
    /// passed down. It is made non-blocking.
    pub fn from_fd(fd: OwnedFd, options: Options) -> Result<Endpoint> {
        const OP: &str = "Endpoint.fromFd";
        options.limits.validate(OP)?;
        sys::adopt_socket(fd.as_fd(), OP)?;
        Endpoint::start(fd, options)
    }

    /// [`Endpoint::from_fd`] for a descriptor number this process owns but holds no
    /// [`OwnedFd`] for (one a parent passed down, or one a binding received as a number).
    /// The number is refused unless it is open and not a standard stream.
    pub fn from_raw_fd(raw: std::os::fd::RawFd, options: Options) -> Result<Endpoint> {
        const OP: &str = "Endpoint.fromFd";
        options.limits.validate(OP)?;
        Endpoint::start(sys::claim_socket(raw, OP)?, options)
    }

    /// The endpoint a parent passed down to this process: the descriptor number in the
    /// environment variable `SHMLINK_FD` (set by Node's `spawnWithEndpoint`, or by any
    /// parent that follows `docs/LANGUAGES.md`). The variable is read, not removed.
    pub fn inherited(options: Options) -> Result<Endpoint> {
        const OP: &str = "Endpoint.inherited";
        const WRAPPERS: &str = "the usual cause is a wrapper program (tsx, ts-node, npx, a shell \
             script) between the parent and this process, which started this process with its \
             own descriptors: spawn the runtime itself (process.execPath with --import tsx, or \
             execArgv) instead";
        let value = std::env::var("SHMLINK_FD").map_err(|_| {
            Error::invalid(
                OP,
                "SHMLINK_FD is not set: this process was not started by spawnWithEndpoint() (or a \
                 parent that passes a socket the same way, docs/LANGUAGES.md)",
            )
        })?;
        let raw: std::os::fd::RawFd = value.trim().parse().ok().filter(|fd| *fd > 2).ok_or_else(|| {
            Error::invalid(
                OP,
                format!(
                    "SHMLINK_FD is {value:?}, which is not a descriptor number above 2; the parent \
                     must set it to the number of the socket it passed down"
                ),
            )
        })?;
        match sys::claim_socket(raw, OP) {
            Ok(fd) => {
                options.limits.validate(OP)?;
                Endpoint::start(fd, options)
            }
            Err(e) if e.kind() == ErrorKind::InvalidArgument => Err(Error::invalid(
                OP,
                format!(
                    "SHMLINK_FD={raw} does not name the socket the parent passed down: {}; {WRAPPERS}",
                    e.cause()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// Wraps a connected socket and sends this side's HELLO.
    pub(crate) fn start(fd: OwnedFd, options: Options) -> Result<Endpoint> {
        let limits = options.limits;
        let max_fds = usize::from(limits.max_regions);
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let binder: Weak<dyn Binder> = weak.clone();
            Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                conn: Mutex::new(Conn {
                    session: Session::new(limits, options.accept_writable, options.realm)
                        .offering_ring(options.ring),
                    status: Status::Open,
                    outbox: VecDeque::new(),
                    inbox: VecDeque::new(),
                    inbox_bytes: 0,
                    notices: VecDeque::new(),
                    driven: false,
                    demand: 0,
                    listening: false,
                    readable: true,
                    delivered_this_turn: false,
                    sends_this_turn: 0,
                    yield_every: options.yield_every,
                    last_receive_waited: false,
                    next_ticket: 1,
                    sent_through: 0,
                    reported_through: 0,
                    blocking_failure: None,
                    stats: Stats::default(),
                    scratch: {
                        let spares = Spares::new(limits.announced().max_frame_len() + 1);
                        Scratch {
                            frame: Vec::new(),
                            record: spares.take(),
                            spares,
                            control: sys::control_buffer(max_fds),
                        }
                    },
                    binder,
                    socket: Socket::new(fd),
                    rings: rings::Rings::new(options.busy_poll),
                }),
                dropped: Mutex::new(Vec::new()),
                any_dropped: AtomicBool::new(false),
            }
        });
        let endpoint = Endpoint { shared };
        endpoint.conn().send_control()?;
        Ok(endpoint)
    }

    fn conn(&self) -> MutexGuard<'_, Conn> {
        self.shared.lock()
    }

    /// The socket's descriptor number, for an event loop to watch; `None` once
    /// [`Endpoint::release_socket`] closed it. Do not read or write it directly.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.conn().socket.raw()
    }

    /// Closes the socket of a connection that has ended (by either side, or a failure)
    /// now, instead of when the endpoint is dropped; received messages stay available.
    /// The event loop must have stopped watching it. Does nothing while it is open.
    pub fn release_socket(&self) {
        let conn = self.conn();
        if !conn.is_open() {
            conn.socket.release();
        }
    }

    /// A number that identifies this connection within the process, for logs.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The limits this side applies.
    pub fn limits(&self) -> Limits {
        self.conn().session.limits()
    }

    /// The limits the peer announced, once its HELLO has arrived.
    pub fn peer_limits(&self) -> Option<Announced> {
        self.conn().session.peer_limits()
    }

    /// Whether the peer's HELLO has been received.
    pub fn is_handshake_complete(&self) -> bool {
        self.conn().session.peer_limits().is_some()
    }

    /// Whether the connection can still carry messages: neither side closed it and no
    /// failure ended it.
    pub fn is_open(&self) -> bool {
        self.conn().is_open()
    }

    /// Who is at the other end (`SO_PEERCRED`): for a socketpair, its creator.
    pub fn peer_credentials(&self) -> Result<Credentials> {
        let conn = self.conn();
        let fd = conn.socket("Endpoint.peer")?;
        sys::peer_credentials(fd)
    }

    /// This side's id for `region` on this connection, while the peer has it bound (the
    /// id the peer sees in its descriptors).
    pub fn region_id(&self, region: &Region) -> Option<u32> {
        self.conn().session.own_id(region)
    }

    /// Traffic and binding counters.
    pub fn stats(&self) -> Stats {
        let conn = self.conn();
        let (peer_regions, peer_mapped_bytes) = conn.session.peer_held();
        Stats {
            own_regions: conn.session.own_bound() as u64,
            peer_regions: peer_regions as u64,
            peer_mapped_bytes,
            queued: conn.outbox.len() as u64,
            inbox: conn.inbox.len() as u64,
            ring_wakes_out: conn.rings.wakes_out(),
            ..conn.stats
        }
    }

    /// Sends `payload` with `regions` attached, without blocking: at once when the
    /// socket has room, otherwise after the messages queued before it.
    ///
    /// A region's descriptor travels only the first time this connection sees it; after
    /// that the frame carries its id. A transferred region is unusable here from this
    /// call on, until it comes back (or the send fails). Errors about the message itself
    /// (too large, a closed or transferred region) leave everything as it was.
    pub fn send<'p>(
        &self,
        payload: impl Into<Bytes<'p>>,
        regions: &[Attach<'_>],
    ) -> Result<Submitted> {
        self.conn().submit("send", payload.into(), regions, false)
    }

    /// Sends, waiting up to `timeout` (`None`: forever) for the messages queued before
    /// it and for room. On timeout the message is withdrawn, unsent.
    pub fn send_blocking<'p>(
        &self,
        payload: impl Into<Bytes<'p>>,
        regions: &[Attach<'_>],
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.send_blocking_interruptible(payload.into(), regions, timeout, &mut || false)
    }

    /// [`Endpoint::send_blocking`] that gives up with [`ErrorKind::Closed`] when
    /// `interrupted` says so (checked every few milliseconds while waiting).
    pub fn send_blocking_interruptible(
        &self,
        payload: Bytes<'_>,
        regions: &[Attach<'_>],
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<()> {
        const OP: &str = "sendSync";
        let mut deadline = Deadline::after(timeout);
        let ticket = match self.conn().submit(OP, payload, regions, true)? {
            Submitted::Sent => return Ok(()),
            Submitted::Queued(ticket) => ticket,
        };
        loop {
            let interest = {
                let mut conn = self.conn();
                conn.advance_for_blocking_caller();
                if let Some(result) = conn.outcome(ticket) {
                    return result.map_err(|e| e.during(OP));
                }
                conn.blocking_interest()
            };
            if let Err(e) = self.wait(interest, deadline.get(), OP, interrupted) {
                let mut conn = self.conn();
                if conn.cancel(ticket) {
                    return Err(e);
                }
                return conn.outcome(ticket).unwrap_or(Err(e));
            }
        }
    }

    /// Sends what is queued while the socket has room, for programs without an event
    /// loop; `true` when nothing remains queued.
    pub fn flush(&self) -> Result<bool> {
        let mut conn = self.conn();
        conn.check_open("flush")?;
        if !conn.session.is_established() {
            conn.read_for_handshake("flush")?;
        }
        conn.flush();
        conn.check_open("flush")?;
        Ok(conn.outbox.is_empty() && !conn.session.has_control())
    }

    /// Withdraws a queued send that has not left. False when it already left or failed.
    pub fn cancel(&self, ticket: Ticket) -> bool {
        self.conn().cancel(ticket)
    }

    /// Receives one message without blocking; [`ErrorKind::WouldBlock`] when none is there.
    pub fn try_recv(&self) -> Result<Message> {
        let mut conn = self.conn();
        conn.readable = true;
        conn.take_message("recv")
    }

    /// For an event loop's receive: a message if one is there; otherwise `None`, and
    /// the next message will be delivered as an [`Event::Message`] (one per such call,
    /// until [`Endpoint::unwant`] withdraws one).
    pub fn recv_or_want(&self) -> Result<Option<Message>> {
        let mut conn = self.conn();
        match conn.take_message("recv") {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                conn.demand += 1;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Withdraws one receive [`Endpoint::recv_or_want`] registered (it was aborted).
    pub fn unwant(&self) {
        let mut conn = self.conn();
        conn.demand = conn.demand.saturating_sub(1);
    }

    /// Whether every message is delivered as an [`Event::Message`] (an event listener),
    /// besides the receives registered one by one.
    pub fn set_listening(&self, listening: bool) {
        self.conn().listening = listening;
    }

    /// Puts back a delivered message nobody took: it is received next, and deliveries
    /// stop until the application asks again.
    pub fn unreceive(&self, message: Message) {
        self.put_back(message);
        self.conn().demand = 0;
    }

    /// Puts back a message a receive took but its caller could not hold (a payload longer
    /// than the buffer it offered): it is the next message any receive gets, a wanted
    /// delivery included.
    pub fn put_back(&self, message: Message) {
        let mut conn = self.conn();
        conn.inbox_bytes += message.payload.footprint();
        conn.inbox.push_front(message);
        // The next blocking receive must look before it waits: nothing on the socket
        // announces this message.
        conn.last_receive_waited = false;
    }

    /// Receives one message, waiting up to `timeout` (`None`: forever; zero: only what
    /// is there), counted from when it first has to wait.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Message> {
        self.recv_interruptible(timeout, &mut || false)
    }

    /// [`Endpoint::recv_timeout`] that gives up with [`ErrorKind::Closed`] when
    /// `interrupted` says so (checked every few milliseconds while waiting).
    pub fn recv_interruptible(
        &self,
        timeout: Option<Duration>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Message> {
        const OP: &str = "recvSync";
        let mut deadline = Deadline::after(timeout);
        let mut conn = self.conn();
        let mut wait_first = conn.last_receive_waited;
        loop {
            if wait_first {
                conn = self.wait_inbound(conn, &mut deadline, OP, interrupted)?;
            }
            conn.readable = true;
            match conn.take_message(OP) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    conn.last_receive_waited = true;
                    wait_first = true;
                }
                other => {
                    if !wait_first {
                        conn.last_receive_waited = false;
                    }
                    return other;
                }
            }
        }
    }

    /// Waits until the peer's HELLO has arrived and returns its limits.
    pub fn handshake(&self, timeout: Option<Duration>) -> Result<Announced> {
        const OP: &str = "handshake";
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            {
                let mut conn = self.conn();
                if let Some(limits) = conn.session.peer_limits() {
                    return Ok(limits);
                }
                conn.check_open(OP)?;
                conn.readable = true;
                conn.read_for_handshake(OP)?;
                if let Some(limits) = conn.session.peer_limits() {
                    return Ok(limits);
                }
            }
            self.wait(Interest::READABLE, deadline, OP, &mut || false)?;
        }
    }

    fn wait(
        &self,
        interest: Interest,
        deadline: Option<Instant>,
        op: &'static str,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<()> {
        in_slices(deadline, op, interrupted, |slice| {
            // The descriptor is waited on without the lock, so another thread may close
            // the endpoint meanwhile; the socket is released only after that, so a stale
            // number here at worst wakes the loop, which then finds the connection ended.
            let Some(fd) = self.conn().socket.raw() else {
                return Ok(true);
            };
            // SAFETY: see above: at worst a closed or reused number, which poll(2) merely
            // reports on; nothing reads or writes through it.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            sys::wait(fd, interest, Some(slice))
        })
    }

    /// Forgets this side's id for `region`: the peer is told (RELEASE) and may unmap it.
    /// Sending the region again later passes its descriptor again. Does nothing for a
    /// region the peer does not have bound.
    pub fn release(&self, region: &Region) {
        let mut conn = self.conn();
        if conn.session.release(region) && conn.is_open() {
            let _ = conn.send_control();
        }
    }

    /// Closes the connection: the peer sees end-of-file; queued sends fail (their
    /// regions are usable here again); received messages not yet taken are dropped;
    /// the peer's regions are unbound (regions still held elsewhere stay valid). The
    /// descriptor itself is closed when the endpoint is dropped, so an event loop can
    /// stop watching it first.
    pub fn close(&self) {
        let mut conn = self.conn();
        if conn.is_open() {
            conn.end(Error::closed("close"));
        }
        conn.inbox.clear();
        conn.inbox_bytes = 0;
    }

    /// An event loop drives this endpoint from now on: besides messages, it takes the
    /// events ([`Event::Sent`], [`Event::Closed`], …) that calls from elsewhere produce.
    pub fn attach_driver(&self) {
        self.conn().driven = true;
    }

    /// What the driving event loop should wait for now.
    pub fn interest(&self) -> Interest {
        let mut conn = self.conn();
        conn.arm_loop();
        conn.interest()
    }

    /// The socket is ready: the event loop has turned. Writable readiness sends what is
    /// queued. Then take events with [`Endpoint::poll_event`].
    pub fn on_ready(&self, ready: Interest) {
        let mut conn = self.conn();
        conn.driven = true;
        conn.sends_this_turn = 0;
        conn.delivered_this_turn = false;
        conn.turn_begins();
        if ready.readable {
            conn.readable = true;
        }
        if ready.writable {
            conn.flush();
        }
    }

    /// The next event for the application, reading the socket when that is what comes
    /// next. `None` when there is nothing more until the socket is ready again.
    pub fn poll_event(&self) -> Option<Event> {
        let mut conn = self.conn();
        conn.driven = true;
        conn.next_event()
    }

    /// The next event that is not a message, without reading the socket: what a call
    /// that did not come from the event loop (a blocking send, `close`) produced.
    pub fn poll_notice(&self) -> Option<Event> {
        self.conn().next_notice()
    }

    /// Whether the application waits for something from this endpoint: a receive, every
    /// message (a listener), or a queued send. An event loop keeps such an endpoint, and
    /// itself, alive.
    pub fn is_awaited(&self) -> bool {
        self.conn().is_awaited()
    }

    /// [`Endpoint::poll_notice`], and when there is no notice [`Endpoint::interest`] and
    /// [`Endpoint::is_awaited`], in one step: what a driver asks after every call the
    /// application makes, so a synchronous send or receive takes the endpoint's lock
    /// twice rather than four times.
    pub fn settle(&self) -> Settle {
        let mut conn = self.conn();
        if let Some(notice) = conn.next_notice() {
            return Settle::Notice(notice);
        }
        conn.arm_loop();
        Settle::Wait {
            interest: conn.interest(),
            awaited: conn.is_awaited(),
        }
    }
}

/// Whether `error`, from sending one message, is about that message alone: the
/// connection stays open and nothing was sent.
fn concerns_message_only(error: &Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::PayloadTooLarge
            | ErrorKind::TooManyRegions
            | ErrorKind::RegionClosed
            | ErrorKind::RegionTransferred
            | ErrorKind::InvalidArgument
    )
}

impl Conn {
    /// The socket, for a call made with the lock held; an error once it was released.
    fn socket(&self, op: &'static str) -> Result<BorrowedFd<'static>> {
        self.socket.borrow().ok_or_else(|| Error::closed(op))
    }

    fn is_open(&self) -> bool {
        matches!(self.status, Status::Open)
    }

    fn check_open(&self, op: &'static str) -> Result<()> {
        match &self.status {
            Status::Open => Ok(()),
            Status::Ended(reason) if reason.kind() == ErrorKind::PeerClosed => {
                Err(Error::peer_closed(op))
            }
            Status::Ended(_) => Err(Error::closed(op)),
        }
    }

    fn next_notice(&mut self) -> Option<Event> {
        if let Some(notice) = self.notices.pop_front() {
            return Some(notice);
        }
        if self.sent_through > self.reported_through {
            self.reported_through = self.sent_through;
            return Some(Event::Sent {
                through: self.sent_through,
            });
        }
        None
    }

    fn is_awaited(&self) -> bool {
        self.is_open() && (self.wants_message() || !self.outbox.is_empty())
    }

    fn interest(&self) -> Interest {
        if !self.is_open() {
            return Interest::default();
        }
        let established = self.session.is_established();
        // Writable readiness comes at once: it turns the loop for a kicked ring and for a
        // message that was put back while a receive waits for one.
        Interest {
            readable: !established || self.inbox_has_room(),
            writable: established
                && (!self.outbox.is_empty()
                    || self.session.has_control()
                    || self.rings.kick()
                    || (self.wants_message() && !self.inbox.is_empty())),
        }
    }

    fn blocking_interest(&self) -> Interest {
        if self.session.is_established() {
            Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    fn inbox_has_room(&self) -> bool {
        self.inbox.len() < INBOX_MESSAGES && self.inbox_bytes < INBOX_BYTES
    }

    /// Queues or sends a message (see [`Endpoint::send`]).
    fn submit(
        &mut self,
        op: &'static str,
        payload: Bytes<'_>,
        attachments: &[Attach<'_>],
        blocking: bool,
    ) -> Result<Submitted> {
        self.check_open(op)?;
        if !self.session.is_established() && self.readable {
            self.read_for_handshake(op)?;
        }
        self.session.check_message(op, payload.len(), attachments)?;
        let may_go_now = self.outbox.is_empty()
            && self.session.is_established()
            && (blocking || self.yield_every == 0 || self.sends_this_turn < self.yield_every);
        if may_go_now {
            match self.transmit(op, payload, attachments) {
                Ok(Io::Done(())) => {
                    self.sends_this_turn += 1;
                    return Ok(Submitted::Sent);
                }
                Ok(Io::WouldBlock) => {}
                Ok(Io::Disconnected) => {
                    self.end(Error::peer_closed(op));
                    return Err(Error::peer_closed(op));
                }
                Err(e) if concerns_message_only(&e) => return Err(e),
                Err(e) => {
                    self.end(e.clone());
                    return Err(e);
                }
            }
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let fate = std::sync::Arc::clone(self.session.fate());
        for attach in attachments.iter().filter(|a| a.transfer) {
            attach.region.send_away(&fate);
        }
        self.outbox.push_back(Queued {
            ticket,
            payload: payload.to_vec(),
            attachments: attachments
                .iter()
                .map(|a| (a.region.clone(), a.transfer))
                .collect(),
            blocking,
        });
        Ok(Submitted::Queued(ticket))
    }

    /// Sends control frames the session has pending (HELLO, RELEASE).
    fn send_control(&mut self) -> Result<Io<()>> {
        let fd = self.socket("send")?;
        while let Some(control) = self.session.poll_control(&mut self.scratch.frame) {
            match self.put_control(fd, control)? {
                Io::Done(_) => self.session.control_sent(control),
                // A peer already gone is reported by the first receive, after whatever it
                // sent before leaving (PROTOCOL.md §3 rule 4).
                Io::Disconnected if control == Control::Hello => self.session.control_sent(control),
                Io::Disconnected => return Ok(Io::Disconnected),
                Io::WouldBlock => return Ok(Io::WouldBlock),
            }
        }
        Ok(Io::Done(()))
    }

    /// Puts one message in the socket now, or reports why it cannot go.
    fn transmit(
        &mut self,
        op: &'static str,
        payload: Bytes<'_>,
        attachments: &[Attach<'_>],
    ) -> Result<Io<()>> {
        match self.send_control()? {
            Io::Done(()) => {}
            other => return Ok(other),
        }
        let plan =
            self.session
                .encode_message(op, payload.len(), attachments, &mut self.scratch.frame)?;
        let files: Vec<BorrowedFd<'_>> = plan.files.iter().map(|f| f.as_fd()).collect();
        let parts = [Bytes::from(self.scratch.frame.as_slice()), payload];
        let expected = self.scratch.frame.len() + payload.len();
        // SYNC POINT: release (MEMORY-MODEL.md §3). Every write this thread made to the
        // attached regions happens-before the peer's reads after its receive.
        fence(Ordering::Release);
        let ring_out = self.session.ring_out_active();
        let sent = if files.is_empty() && self.rings.push(ring_out, &parts, &self.socket)? {
            self.stats.ring_messages_out += 1;
            Io::Done(expected)
        } else {
            let sent = sys::send_record(self.socket(op)?, &parts, &files)?;
            if let Io::Done(_) = sent {
                self.rings.sent_on_socket(ring_out);
            }
            sent
        };
        match sent {
            Io::Done(n) if n == expected => {}
            Io::Done(n) => {
                return Err(Error::new(
                    ErrorKind::Os,
                    op,
                    format!(
                        "the kernel took {n} of {expected} bytes of a record; the connection was closed"
                    ),
                ));
            }
            Io::WouldBlock => return Ok(Io::WouldBlock),
            Io::Disconnected => return Ok(Io::Disconnected),
        }
        drop(files);
        self.session.message_sent(attachments, plan, &self.binder);
        for attach in attachments.iter().filter(|a| a.transfer) {
            attach.region.send_away(self.session.fate());
        }
        self.stats.messages_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        Ok(Io::Done(()))
    }

    /// Sends what is queued, in order, while the socket has room.
    fn flush(&mut self) {
        if !self.is_open() || !self.session.is_established() {
            return;
        }
        match self.send_control() {
            Ok(Io::Done(())) => {}
            Ok(Io::WouldBlock) => return,
            Ok(Io::Disconnected) => return self.end(Error::peer_closed("send")),
            Err(e) => return self.end(e),
        }
        while let Some(queued) = self.outbox.pop_front() {
            let attachments = queued.attachments();
            let sent = self.transmit("send", Bytes::from(&queued.payload), &attachments);
            drop(attachments);
            match sent {
                Ok(Io::Done(())) => self.sent_through = queued.ticket,
                Ok(Io::WouldBlock) => {
                    self.outbox.push_front(queued);
                    return;
                }
                Ok(Io::Disconnected) => {
                    self.outbox.push_front(queued);
                    return self.end(Error::peer_closed("send"));
                }
                Err(e) if concerns_message_only(&e) => self.fail_queued(queued, e),
                Err(e) => {
                    self.outbox.push_front(queued);
                    return self.end(e);
                }
            }
        }
    }

    fn fail_queued(&mut self, queued: Queued, error: Error) {
        let ticket = queued.ticket;
        let blocking = queued.blocking;
        queued.abandon();
        if blocking {
            self.blocking_failure = Some((ticket, error));
        } else if self.driven {
            self.notices.push_back(Event::SendFailed { ticket, error });
        }
    }

    fn cancel(&mut self, ticket: Ticket) -> bool {
        match self.outbox.iter().position(|q| q.ticket == ticket) {
            Some(at) => {
                if let Some(queued) = self.outbox.remove(at) {
                    queued.abandon();
                }
                true
            }
            None => false,
        }
    }

    /// What became of a blocking caller's `ticket`, once something did.
    fn outcome(&mut self, ticket: Ticket) -> Option<Result<()>> {
        if let Some((failed, _)) = &self.blocking_failure
            && *failed == ticket
        {
            return self.blocking_failure.take().map(|(_, e)| Err(e));
        }
        if self.outbox.iter().any(|q| q.ticket == ticket) {
            return match &self.status {
                Status::Open => None,
                Status::Ended(reason) => Some(Err(reason.clone())),
            };
        }
        match &self.status {
            Status::Ended(reason) if self.sent_through < ticket => Some(Err(reason.clone())),
            _ => Some(Ok(())),
        }
    }

    /// Moves a blocking send forward: reads the HELLO if it has not come, then sends.
    fn advance_for_blocking_caller(&mut self) {
        if !self.session.is_established() && self.is_open() {
            self.readable = true;
            let _ = self.read_for_handshake("sendSync");
        }
        self.flush();
    }

    /// Reads the peer's HELLO, which is always its first record, so that reading it
    /// can never take a message from the application.
    fn read_for_handshake(&mut self, op: &'static str) -> Result<()> {
        match self.read_record(op)? {
            None | Some(Arrival::Handshake) => Ok(()),
            Some(other) => {
                self.accept_inbound(other);
                Ok(())
            }
        }
    }

    /// Receives one record into the receive buffer, not yet judged. A failure ends the
    /// connection and is returned.
    fn receive(&mut self, op: &'static str) -> Result<Received> {
        let max_fds = usize::from(self.session.limits().max_regions);
        let mut fds = Vec::new();
        let fd = self.socket(op)?;
        let received = sys::recv_record(
            fd,
            &mut self.scratch.record,
            &mut self.scratch.control,
            max_fds,
            &mut fds,
        );
        // SYNC POINT: acquire (MEMORY-MODEL.md §4). The peer's writes before its send
        // happen-before every read this thread makes after this point.
        fence(Ordering::Acquire);
        match received {
            Ok(Io::Done(received)) => Ok(Received::Record(RawFrame {
                len: received.len.min(self.scratch.record.len()),
                fds,
                data_truncated: received.data_truncated,
                control_truncated: received.control_truncated,
            })),
            Ok(Io::WouldBlock) => {
                self.readable = false;
                Ok(Received::Empty)
            }
            Ok(Io::Disconnected) => Ok(Received::Disconnected),
            Err(e) => Err(self.failed(op, e)),
        }
    }

    /// Reads and judges one record; `None` when the socket is empty. A failure ends the
    /// connection and is returned.
    fn read_record(&mut self, op: &'static str) -> Result<Option<Arrival>> {
        let frame = match self.receive(op)? {
            Received::Empty => return Ok(None),
            Received::Disconnected => return Ok(Some(Arrival::EndOfFile)),
            Received::Record(frame) => frame,
        };
        let judged = self
            .session
            .handle_record(frame.record(&self.scratch.record));
        self.judged(op, judged, Source::Receive)
    }

    /// A failure ends the connection; it is returned to report.
    fn failed(&mut self, op: &'static str, error: Error) -> Error {
        let error = error.during(op);
        self.end(error.clone());
        error
    }

    /// What a judged record brings, its payload taken from `source`; a failure ends the
    /// connection and is returned.
    fn judged(
        &mut self,
        op: &'static str,
        judged: Result<Inbound>,
        source: Source,
    ) -> Result<Option<Arrival>> {
        let inbound = judged.map_err(|e| self.failed(op, e))?;
        Ok(Some(match inbound {
            Inbound::Handshake => {
                if self.driven {
                    self.notices.push_back(Event::Handshake);
                }
                self.rings_after_handshake();
                self.flush();
                Arrival::Handshake
            }
            Inbound::Message { regions, payload } => Arrival::Message(Message {
                payload: self.take_payload(payload, source),
                regions,
            }),
            Inbound::Released => Arrival::Released,
            Inbound::EndOfFile => Arrival::EndOfFile,
            Inbound::Ring(consumer) => Arrival::Ring(consumer),
            Inbound::Wake => Arrival::Wake,
        }))
    }

    /// The payload at `range` of the record `source` holds. From the receive buffer: copied
    /// out when small; when large, the receive buffer itself, replaced by a spare one for
    /// the next record. A held record's buffer is the payload's; a ring entry's is copied.
    fn take_payload(&mut self, range: std::ops::Range<usize>, source: Source) -> Payload {
        match source {
            Source::Receive if range.len() >= KEEP_BUFFER_AT => {
                let buffer =
                    std::mem::replace(&mut self.scratch.record, self.scratch.spares.take());
                Payload::within(buffer, range, self.scratch.spares.clone())
            }
            Source::Receive => Payload::from(self.scratch.record[range].to_vec()),
            Source::Held(bytes) => Payload::owned(bytes, range),
            Source::Entry => Payload::from(self.rings.entry_bytes()[range].to_vec()),
        }
    }

    /// Files what a record brought: a message into the inbox, end-of-file as the end.
    fn accept_inbound(&mut self, arrival: Arrival) {
        match arrival {
            Arrival::Message(message) => {
                self.stats.messages_in += 1;
                self.stats.bytes_in += message.payload.len() as u64;
                self.inbox_bytes += message.payload.footprint();
                self.inbox.push_back(message);
            }
            Arrival::EndOfFile => self.end(Error::peer_closed("recv")),
            Arrival::Ring(consumer) => self.rings.arrived(consumer),
            Arrival::Handshake | Arrival::Released | Arrival::Wake => {}
        }
    }

    /// The next message: queued first, then from the socket.
    fn take_message(&mut self, op: &'static str) -> Result<Message> {
        loop {
            if let Some(message) = self.inbox.pop_front() {
                self.inbox_bytes -= message.payload.footprint();
                return Ok(message);
            }
            if let Status::Ended(_) = self.status {
                return Err(self
                    .check_open(op)
                    .err()
                    .unwrap_or_else(|| Error::closed(op)));
            }
            if !self.readable && !self.ring_pending() {
                return Err(Error::would_block(op));
            }
            match self.read_next(op)? {
                None => return Err(Error::would_block(op)),
                Some(inbound) => self.accept_inbound(inbound),
            }
        }
    }

    fn wants_message(&self) -> bool {
        self.listening || self.demand > 0
    }

    fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.wants_message()
                && let Some(message) = self.inbox.pop_front()
            {
                self.inbox_bytes -= message.payload.footprint();
                self.delivered_this_turn = true;
                self.demand = self.demand.saturating_sub(1);
                return Some(Event::Message(message));
            }
            if let Some(notice) = self.next_notice() {
                return Some(notice);
            }
            let may_read = self.is_open()
                && (self.readable || self.ring_pending())
                && (!self.session.is_established()
                    || (self.inbox_has_room()
                        && (self.wants_message() || !self.delivered_this_turn)));
            if !may_read {
                return None;
            }
            match self.read_next("recv") {
                Ok(None) => return None,
                Ok(Some(inbound)) => self.accept_inbound(inbound),
                // The failure ended the connection and queued a Closed event.
                Err(_) => {}
            }
        }
    }

    /// Ends the connection with `reason`: the socket is shut down so the peer reads
    /// end-of-file, queued sends fail, and the tables are dropped.
    fn end(&mut self, reason: Error) {
        if !self.is_open() {
            return;
        }
        if let Some(fd) = self.socket.borrow() {
            sys::shutdown_both(fd);
        }
        self.rings.end();
        self.session.end(reason.kind() == ErrorKind::PeerClosed);
        self.status = Status::Ended(reason.clone());
        for queued in std::mem::take(&mut self.outbox) {
            self.fail_queued(queued, reason.clone());
        }
        if self.driven {
            self.notices.push_back(Event::Closed(reason));
        }
    }
}
