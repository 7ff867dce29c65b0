//! The Node-API binding: it converts arguments and results between JavaScript and the
//! `shmlink` core, and drives endpoints from the event loop (`driver.rs`). It holds no
//! protocol state and makes no protocol decision; `index.ts` builds the public API
//! (promises, iteration, `AbortSignal`) on these classes.
#![deny(unsafe_code)]

mod backend;
mod bound;
mod buffer;
mod driver;
mod error;
mod thread;
mod uv;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use napi::Env;
use napi::bindgen_prelude::{
    BufferSlice, Either, FnArgs, Function, JsValue, Object, Uint8ArraySlice,
};
use napi_derive::napi;
use shmlink::{
    Attach, Bytes, Endpoint, ErrorKind, Limits, ListenOptions, Listener, Options, PeerFilter, Pool,
    Realm, Region, Submitted,
};

use crate::buffer::Handover;
use crate::driver::{Arrived, Driver, EndpointEvent, Received, ReceivedInto, Target};
use crate::error::throw;

thread_local! {
    /// Each JavaScript environment (the main thread, each worker) is its own realm: it
    /// never shares a region object, or its views, with another.
    static REALM: Realm = Realm::unique();
}

fn realm() -> Realm {
    REALM.with(|realm| *realm)
}

fn invalid(env: &Env, op: &'static str, message: String) -> napi::Error {
    throw(
        env,
        shmlink::Error::new(ErrorKind::InvalidArgument, op, message),
    )
}

/// A non-negative integer argument that JavaScript passed as a number.
fn to_count(env: &Env, op: &'static str, value: f64, what: &str) -> napi::Result<u64> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= 9_007_199_254_740_991.0
    {
        Ok(value as u64)
    } else {
        Err(invalid(
            env,
            op,
            format!("{what} must be a non-negative safe integer, not {value}"),
        ))
    }
}

fn to_usize(env: &Env, op: &'static str, value: f64, what: &str) -> napi::Result<usize> {
    let count = to_count(env, op, value, what)?;
    usize::try_from(count).map_err(|_| invalid(env, op, format!("{what} is too large")))
}

/// A timeout in milliseconds; negative means "wait forever".
fn to_timeout(env: &Env, op: &'static str, millis: f64) -> napi::Result<Option<Duration>> {
    if millis.is_nan() {
        return Err(invalid(env, op, "timeoutMs must be a number".into()));
    }
    Ok((millis >= 0.0).then(|| Duration::from_secs_f64(millis.min(1e12) / 1000.0)))
}

/// Limits as JavaScript passes them; absent fields keep their defaults (`docs/SECURITY.md`).
#[napi(object)]
pub struct LimitsInit {
    pub max_regions: Option<u32>,
    pub max_payload: Option<u32>,
    pub max_region_size: Option<f64>,
    pub max_bound_regions: Option<u32>,
    pub max_mapped_bytes: Option<f64>,
}

/// Which peers are allowed; nothing set means this user (or root).
#[napi(object)]
pub struct PeerFilterInit {
    /// Any local user.
    pub any_user: Option<bool>,
    /// Only these user ids.
    pub uids: Option<Vec<u32>>,
}

/// How an endpoint treats its peer.
#[napi(object)]
pub struct EndpointOptions {
    /// Accept regions the peer can still write (not frozen).
    pub accept_writable: Option<bool>,
    pub limits: Option<LimitsInit>,
    /// For `connect`: who must be serving.
    pub server: Option<PeerFilterInit>,
    /// Offer a shared-memory ring (docs/PROTOCOL.md §9).
    pub ring: Option<bool>,
    /// With a ring: the busy-poll window in microseconds (0: never spin).
    pub busy_poll_us: Option<f64>,
}

/// How a listener admits connections.
#[napi(object)]
pub struct ListenerOptions {
    /// Who may connect.
    pub allow: Option<PeerFilterInit>,
    /// Whether accepted peers may send regions they can still write.
    pub accept_writable: Option<bool>,
    pub limits: Option<LimitsInit>,
    /// Accepted connections not yet taken, at most.
    pub max_pending: Option<u32>,
    pub backlog: Option<u32>,
    /// Offer clients a shared-memory ring (docs/PROTOCOL.md §9).
    pub ring: Option<bool>,
    /// With a ring: the busy-poll window in microseconds (0: never spin).
    pub busy_poll_us: Option<f64>,
}

fn limits(env: &Env, op: &'static str, init: Option<&LimitsInit>) -> napi::Result<Limits> {
    let mut limits = Limits::default();
    let Some(init) = init else {
        return Ok(limits);
    };
    if let Some(value) = init.max_regions {
        limits.max_regions = u16::try_from(value)
            .map_err(|_| invalid(env, op, format!("maxRegions {value} is out of range")))?;
    }
    if let Some(value) = init.max_payload {
        limits.max_payload = value;
    }
    if let Some(value) = init.max_region_size {
        limits.max_region_size = to_count(env, op, value, "maxRegionSize")?;
    }
    if let Some(value) = init.max_bound_regions {
        limits.max_bound_regions = value;
    }
    if let Some(value) = init.max_mapped_bytes {
        limits.max_mapped_bytes = to_count(env, op, value, "maxMappedBytes")?;
    }
    Ok(limits)
}

fn peer_filter(init: Option<&PeerFilterInit>) -> PeerFilter {
    match init {
        Some(PeerFilterInit {
            any_user: Some(true),
            ..
        }) => PeerFilter::AnyUser,
        Some(PeerFilterInit {
            uids: Some(uids), ..
        }) => PeerFilter::Users(uids.clone()),
        _ => PeerFilter::SameUser,
    }
}

/// Sends that go out at once between two turns of the event loop (`Options::yield_every`).
const SENDS_PER_TURN: u32 = 64;

/// The ring options: whether to offer one, and the busy-poll window.
fn ring_options(
    env: &Env,
    op: &'static str,
    ring: Option<bool>,
    busy_poll_us: Option<f64>,
) -> napi::Result<(bool, Duration)> {
    let busy_poll = match busy_poll_us {
        None => shmlink::DEFAULT_BUSY_POLL,
        Some(us) => Duration::from_micros(to_count(env, op, us, "busyPollUs")?),
    };
    Ok((ring.unwrap_or(false), busy_poll))
}

fn endpoint_options(
    env: &Env,
    op: &'static str,
    init: Option<&EndpointOptions>,
    trusted: bool,
) -> napi::Result<Options> {
    let (ring, busy_poll) = ring_options(
        env,
        op,
        init.and_then(|o| o.ring),
        init.and_then(|o| o.busy_poll_us),
    )?;
    Ok(Options {
        limits: limits(env, op, init.and_then(|o| o.limits.as_ref()))?,
        accept_writable: init.and_then(|o| o.accept_writable).unwrap_or(trusted),
        yield_every: SENDS_PER_TURN,
        realm: realm(),
        ring,
        busy_poll,
    })
}

/// A region handle (one JavaScript `Region`).
#[napi]
pub struct NativeRegion {
    region: Region,
}

#[napi]
impl NativeRegion {
    /// A new sealed region of `size` bytes.
    #[napi(factory)]
    pub fn create(env: Env, size: f64) -> napi::Result<Self> {
        let size = to_usize(&env, "Region.create", size, "size")?;
        Region::create_in(size, realm())
            .map(|region| NativeRegion { region })
            .map_err(|e| throw(&env, e))
    }

    #[napi(getter)]
    pub fn size(&self) -> f64 {
        if self.region.is_closed() {
            0.0
        } else {
            self.region.size() as f64
        }
    }

    #[napi(getter)]
    pub fn frozen(&self) -> bool {
        self.region.is_frozen()
    }

    #[napi(getter)]
    pub fn transferred(&self) -> bool {
        self.region.is_transferred()
    }

    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.region.is_closed()
    }

    /// Identifies the region within this JavaScript environment.
    #[napi(getter)]
    pub fn serial(&self) -> f64 {
        self.region.serial() as f64
    }

    #[napi]
    pub fn freeze(&self, env: Env) -> napi::Result<()> {
        self.region.freeze().map_err(|e| throw(&env, e))
    }

    #[napi]
    pub fn reclaim(&self, env: Env) -> napi::Result<()> {
        self.region.reclaim().map_err(|e| throw(&env, e))
    }

    /// Copies `length` bytes at `offset` into a new Buffer, allocated by the runtime
    /// (one copy; a length no Buffer can hold is refused, never an abort).
    #[napi]
    pub fn read<'env>(
        &self,
        env: &'env Env,
        offset: f64,
        length: f64,
    ) -> napi::Result<BufferSlice<'env>> {
        const OP: &str = "Region.read";
        let offset = to_usize(env, OP, offset, "offset")?;
        let length = to_usize(env, OP, length, "length")?;
        buffer::read_new(env, &self.region, offset, length)
    }

    /// Copies bytes at `offset` into `target` (any view), as many as fit; returns how many.
    #[napi]
    pub fn read_into(&self, env: Env, offset: f64, target: Uint8ArraySlice) -> napi::Result<f64> {
        const OP: &str = "Region.read";
        let offset = to_usize(&env, OP, offset, "offset")?;
        buffer::read_into(env.raw(), &self.region, offset, target.raw())
            .map(|count| count as f64)
            .map_err(|e| throw(&env, e))
    }

    /// Copies the bytes of `data` (any view) into the region at `offset`.
    #[napi]
    pub fn write(&self, env: Env, offset: f64, data: Uint8ArraySlice) -> napi::Result<()> {
        const OP: &str = "Region.write";
        let offset = to_usize(&env, OP, offset, "offset")?;
        buffer::write_from(env.raw(), &self.region, offset, data.raw()).map_err(|e| throw(&env, e))
    }

    /// A zero-copy `Uint8Array` over the region, detached when the region is transferred
    /// or closed (whichever handle does it).
    #[napi(ts_return_type = "Uint8Array")]
    pub fn lend(&self, env: Env) -> napi::Result<Object<'_>> {
        buffer::lend(env.raw(), &self.region)
            .map(|value| Object::from_raw(env.raw(), value))
            .map_err(|e| throw(&env, e))
    }

    /// Lets go of the region now (`Region::close`).
    #[napi]
    pub fn close(&self) {
        self.region.close();
    }
}

/// What a region pool holds and has done.
#[napi(object)]
pub struct PoolStats {
    pub size: f64,
    pub capacity: f64,
    pub regions: f64,
    pub free: f64,
    pub created: f64,
    pub reused: f64,
}

/// A region pool (one JavaScript `RegionPool`); `index.ts` keeps the `Region` objects and
/// the waiting acquires.
#[napi]
pub struct NativePool {
    pool: Pool,
}

#[napi]
impl NativePool {
    #[napi(constructor)]
    pub fn new(env: Env, size: f64, capacity: f64) -> napi::Result<Self> {
        const OP: &str = "RegionPool";
        let size = to_usize(&env, OP, size, "size")?;
        let capacity = to_usize(&env, OP, capacity, "capacity")?;
        Pool::new_in(size, capacity, realm())
            .map(|pool| NativePool { pool })
            .map_err(|e| throw(&env, e))
    }

    /// A free or new region, or `null` when all are handed out.
    #[napi]
    pub fn try_acquire(&self, env: Env) -> napi::Result<Option<NativeRegion>> {
        self.pool
            .try_acquire()
            .map(|region| region.map(|region| NativeRegion { region }))
            .map_err(|e| throw(&env, e))
    }

    #[napi]
    pub fn release(&self, env: Env, region: &NativeRegion) -> napi::Result<()> {
        self.pool
            .release(&region.region)
            .map_err(|e| throw(&env, e))
    }

    #[napi]
    pub fn contains(&self, region: &NativeRegion) -> bool {
        self.pool.contains(&region.region)
    }

    #[napi]
    pub fn close(&self) {
        self.pool.close();
    }

    #[napi]
    pub fn stats(&self) -> PoolStats {
        let stats = self.pool.stats();
        PoolStats {
            size: stats.size as f64,
            capacity: stats.capacity as f64,
            regions: stats.regions as f64,
            free: stats.free as f64,
            created: stats.created as f64,
            reused: stats.reused as f64,
        }
    }
}

/// Every error code, in the order `docs/ERRORS.md` lists them (a test compares them
/// with `index.ts`'s `ErrorCode` and with the document).
#[napi]
pub fn error_codes() -> Vec<&'static str> {
    ErrorKind::ALL.iter().map(|kind| kind.code()).collect()
}

/// Which wake-up backend this environment uses: `"uv"` (libuv poll handles) or
/// `"thread"` (a watching thread, for runtimes without libuv).
#[napi]
pub fn wakeup_backend(env: Env) -> &'static str {
    backend::name(env.raw())
}

/// Whether this runtime lets native code lend memory to `ArrayBuffer`s.
#[napi]
pub fn external_buffers_allowed(env: Env) -> bool {
    buffer::external_buffers_allowed(env.raw())
}

/// Who is at the other end of a connection (`SO_PEERCRED`).
#[napi(object)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Traffic and binding counters of a connection.
#[napi(object)]
pub struct EndpointStats {
    pub messages_out: f64,
    pub bytes_out: f64,
    pub messages_in: f64,
    pub bytes_in: f64,
    /// This side's regions the peer has bound now.
    pub own_regions: f64,
    /// The peer's regions bound on this connection now.
    pub peer_regions: f64,
    /// Bytes of distinct regions the peer's bindings hold mapped.
    pub peer_mapped_bytes: f64,
    /// Sends waiting in the output queue.
    pub queued: f64,
    /// Received messages not yet taken.
    pub inbox: f64,
    /// Messages sent through this side's ring, and received through the peer's.
    pub ring_messages_out: f64,
    pub ring_messages_in: f64,
    /// Doorbells (WAKE records) sent because the peer's event loop slept when this side
    /// put a message in its ring.
    pub ring_wakes_out: f64,
    pub limits: LimitsInit,
}

fn limits_object(limits: Limits) -> LimitsInit {
    LimitsInit {
        max_regions: Some(u32::from(limits.max_regions)),
        max_payload: Some(limits.max_payload),
        max_region_size: Some(limits.max_region_size as f64),
        max_bound_regions: Some(limits.max_bound_regions),
        max_mapped_bytes: Some(limits.max_mapped_bytes as f64),
    }
}

/// An endpoint handle (one JavaScript `Endpoint`). Closing or collecting it (and the
/// functions [`NativeEndpoint::bound_calls`] made) closes the connection.
#[napi]
pub struct NativeEndpoint {
    shared: Rc<EndpointState>,
}

/// What an endpoint handle shares with its bound functions (`bound.rs`).
pub struct EndpointState {
    endpoint: Arc<Endpoint>,
    driver: RefCell<Option<Driver>>,
    arrived: Arrived,
}

impl std::ops::Deref for NativeEndpoint {
    type Target = EndpointState;

    fn deref(&self) -> &EndpointState {
        &self.shared
    }
}

impl NativeEndpoint {
    fn wrap(endpoint: Endpoint) -> Self {
        NativeEndpoint {
            shared: Rc::new(EndpointState {
                endpoint: Arc::new(endpoint),
                driver: RefCell::new(None),
                arrived: Rc::default(),
            }),
        }
    }
}

impl EndpointState {
    /// The driver's core, once watching; no borrow is held while JavaScript runs.
    fn driver(&self) -> Option<Rc<driver::Core>> {
        self.driver.borrow().as_ref().map(Driver::core)
    }

    /// Delivers events a call produced (a blocking call, `close`) to the handlers.
    fn settle(&self) {
        if let Some(core) = self.driver() {
            core.settle();
        }
    }

    fn received<'env>(
        &self,
        env: &'env Env,
        mut message: shmlink::Message,
        handover: Handover,
    ) -> napi::Result<Received<'env>> {
        driver::received(env, &mut message, &self.arrived, handover)
    }

    /// Sends now if it can, else queues: 0 when the message left, otherwise its ticket.
    pub(crate) fn send(&self, env: &Env, bytes: Bytes, attached: &[Attach]) -> napi::Result<f64> {
        match self.endpoint.send(bytes, attached) {
            Ok(Submitted::Sent) => Ok(0.0),
            Ok(Submitted::Queued(ticket)) => {
                self.settle();
                Ok(ticket as f64)
            }
            Err(e) => {
                self.settle();
                Err(throw(env, e))
            }
        }
    }

    /// Sends behind whatever is queued, blocking up to `timeoutMs` (negative: forever).
    pub(crate) fn send_sync(
        &self,
        env: &Env,
        bytes: Bytes,
        attached: &[Attach],
        timeout_ms: f64,
    ) -> napi::Result<()> {
        const OP: &str = "sendSync";
        let timeout = to_timeout(env, OP, timeout_ms)?;
        let mut stop = backend::interrupt_check(env.raw());
        let sent = self
            .endpoint
            .send_blocking_interruptible(bytes, attached, timeout, &mut stop);
        self.settle();
        sent.map_err(|e| throw(env, e))
    }

    /// A message if one is there; otherwise `None`, and the next one is delivered to
    /// `onMessage` (once per such call, until `unwant`).
    pub(crate) fn recv<'env>(&self, env: &'env Env) -> napi::Result<Option<Received<'env>>> {
        let received = self.endpoint.recv_or_want();
        self.settle();
        match received.map_err(|e| throw(env, e))? {
            Some(message) => self.received(env, message, Handover::Lend).map(Some),
            None => Ok(None),
        }
    }

    /// Receives one message, blocking up to `timeoutMs` (negative: forever; 0: only what
    /// is there).
    pub(crate) fn recv_sync<'env>(
        &self,
        env: &'env Env,
        timeout_ms: f64,
    ) -> napi::Result<Received<'env>> {
        let message = self.recv_blocking(env, timeout_ms, Ok)?;
        self.received(env, message, Handover::Copy)
    }

    /// [`EndpointState::recv_sync`] that copies the payload into `into`. A longer payload
    /// is not received: its message stays first in line and the call fails with
    /// `ERR_SHMLINK_PAYLOAD_TOO_LARGE`.
    pub(crate) fn recv_sync_into(
        &self,
        env: &Env,
        timeout_ms: f64,
        into: &buffer::Destination,
    ) -> napi::Result<Either<u32, ReceivedInto>> {
        let message = self.recv_blocking(env, timeout_ms, |message| {
            if into.put(&message.payload) {
                return Ok(message);
            }
            let length = match message.payload.len() {
                1 => "1 byte".to_owned(),
                n => format!("{n} bytes"),
            };
            self.endpoint.put_back(message);
            Err(shmlink::Error::new(
                ErrorKind::PayloadTooLarge,
                "recvSync",
                format!(
                    "the next message's payload is {length}, more than `into` holds; it \
                     stays queued: receive it into a buffer of at least {length} (one of \
                     the endpoint's maxPayload bytes holds any payload), or without `into`"
                ),
            ))
        })?;
        Ok(driver::received_into(&message, &self.arrived))
    }

    /// The next message, waiting up to `timeoutMs`, once `take` has had it: `take` runs
    /// before events are settled, which may run JavaScript handlers.
    fn recv_blocking(
        &self,
        env: &Env,
        timeout_ms: f64,
        take: impl FnOnce(shmlink::Message) -> shmlink::Result<shmlink::Message>,
    ) -> napi::Result<shmlink::Message> {
        let timeout = to_timeout(env, "recvSync", timeout_ms)?;
        let mut stop = backend::interrupt_check(env.raw());
        let taken = self
            .endpoint
            .recv_interruptible(timeout, &mut stop)
            .and_then(take);
        self.settle();
        taken.map_err(|e| throw(env, e))
    }
}

#[napi]
impl NativeEndpoint {
    /// A connected pair; both ends accept writable regions.
    #[napi]
    pub fn pair(env: Env, options: Option<EndpointOptions>) -> napi::Result<Vec<NativeEndpoint>> {
        let options = endpoint_options(&env, "Endpoint.pair", options.as_ref(), true)?;
        let (a, b) = Endpoint::pair_with(options).map_err(|e| throw(&env, e))?;
        Ok(vec![NativeEndpoint::wrap(a), NativeEndpoint::wrap(b)])
    }

    /// An endpoint and the raw socket of its peer, to hand to a child process.
    #[napi]
    pub fn pair_for_child(
        env: Env,
        options: Option<EndpointOptions>,
    ) -> napi::Result<(NativeEndpoint, NativeSocket)> {
        let options = endpoint_options(&env, "spawnWithEndpoint", options.as_ref(), true)?;
        let (mine, theirs) = Endpoint::pair_for_child(options).map_err(|e| throw(&env, e))?;
        Ok((
            NativeEndpoint::wrap(mine),
            NativeSocket { fd: Some(theirs) },
        ))
    }

    /// Connects to a listener at `path` (a leading NUL byte: Linux abstract name) whose
    /// owner passes `options.server`.
    #[napi]
    pub fn connect(
        env: Env,
        path: String,
        options: Option<EndpointOptions>,
    ) -> napi::Result<NativeEndpoint> {
        const OP: &str = "Endpoint.connect";
        let server = peer_filter(options.as_ref().and_then(|o| o.server.as_ref()));
        let options = endpoint_options(&env, OP, options.as_ref(), false)?;
        Endpoint::connect(path, &server, options)
            .map(NativeEndpoint::wrap)
            .map_err(|e| throw(&env, e))
    }

    /// Takes over the connected `SOCK_SEQPACKET` socket `fd`.
    #[napi]
    pub fn from_fd(
        env: Env,
        fd: i32,
        options: Option<EndpointOptions>,
    ) -> napi::Result<NativeEndpoint> {
        const OP: &str = "Endpoint.fromFd";
        let options = endpoint_options(&env, OP, options.as_ref(), true)?;
        Endpoint::from_raw_fd(fd, options)
            .map(NativeEndpoint::wrap)
            .map_err(|e| throw(&env, e))
    }

    /// The endpoint a parent passed down (`SHMLINK_FD`).
    #[napi]
    pub fn inherited(env: Env, options: Option<EndpointOptions>) -> napi::Result<NativeEndpoint> {
        let options = endpoint_options(&env, "Endpoint.inherited", options.as_ref(), true)?;
        Endpoint::inherited(options)
            .map(NativeEndpoint::wrap)
            .map_err(|e| throw(&env, e))
    }

    /// Identifies the connection within the process, for logs.
    #[napi(getter)]
    pub fn id(&self) -> f64 {
        self.endpoint.id() as f64
    }

    /// The socket's descriptor, or -1 once the connection ended and it was closed.
    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        self.endpoint.raw_fd().unwrap_or(-1)
    }

    /// Whether the connection can still carry messages.
    #[napi(getter)]
    pub fn open(&self) -> bool {
        self.endpoint.is_open()
    }

    #[napi(getter)]
    pub fn handshake_complete(&self) -> bool {
        self.endpoint.is_handshake_complete()
    }

    #[napi]
    pub fn peer(&self, env: Env) -> napi::Result<PeerCredentials> {
        let creds = self
            .endpoint
            .peer_credentials()
            .map_err(|e| throw(&env, e))?;
        Ok(PeerCredentials {
            pid: creds.pid,
            uid: creds.uid,
            gid: creds.gid,
        })
    }

    #[napi]
    pub fn stats(&self) -> EndpointStats {
        let stats = self.endpoint.stats();
        EndpointStats {
            messages_out: stats.messages_out as f64,
            bytes_out: stats.bytes_out as f64,
            messages_in: stats.messages_in as f64,
            bytes_in: stats.bytes_in as f64,
            own_regions: stats.own_regions as f64,
            peer_regions: stats.peer_regions as f64,
            peer_mapped_bytes: stats.peer_mapped_bytes as f64,
            queued: stats.queued as f64,
            inbox: stats.inbox as f64,
            ring_messages_out: stats.ring_messages_out as f64,
            ring_messages_in: stats.ring_messages_in as f64,
            ring_wakes_out: stats.ring_wakes_out as f64,
            limits: limits_object(self.endpoint.limits()),
        }
    }

    /// This side's id for `region` on this connection, while the peer has it bound.
    #[napi]
    pub fn region_id(&self, region: &NativeRegion) -> Option<u32> {
        self.endpoint.region_id(&region.region)
    }

    /// Withdraws a queued send; false when it already left or failed.
    #[napi]
    pub fn cancel(&self, env: Env, ticket: f64) -> napi::Result<bool> {
        let ticket = to_count(&env, "send", ticket, "ticket")?;
        let cancelled = self.endpoint.cancel(ticket);
        self.settle();
        Ok(cancelled)
    }

    /// Withdraws one `recv` that is waiting (it was aborted).
    #[napi]
    pub fn unwant(&self) {
        self.endpoint.unwant();
        self.settle();
    }

    /// Whether every message goes to `onMessage` (a `'message'` listener is attached).
    #[napi]
    pub fn set_listening(&self, listening: bool) {
        self.endpoint.set_listening(listening);
        self.settle();
    }

    /// `send`, `sendSync`, `recv` and `recvSync` as functions bound to this endpoint: a
    /// call skips the checks and bookkeeping a method call on a class instance costs,
    /// which were a third of a ring round trip's time (see `bound.rs`). `send` answers 0
    /// when the message left, otherwise its ticket, which a `sent` or `sendFailed` event
    /// settles; `sendSync` waits behind whatever is queued, up to `timeoutMs` (negative:
    /// forever). Attached regions come in order, and `transfers[i]` hands region `i`
    /// over (unusable here until the peer sends it back). `recvSync` given `into` (a view)
    /// copies the payload there and answers its length (or, without staging memory, a
    /// `ReceivedInto`).
    #[napi(
        ts_return_type = "{ send(payload: Uint8Array, regions?: NativeRegion[], transfers?: boolean[]): number; sendSync(payload: Uint8Array, timeoutMs: number, regions?: NativeRegion[], transfers?: boolean[]): void; recv(): number | Buffer | ReceivedMessage | null; recvSync(timeoutMs: number): number | Buffer | ReceivedMessage; recvSync(timeoutMs: number, into: ArrayBufferView): number | ReceivedInto }"
    )]
    pub fn bound_calls(&self, env: Env) -> napi::Result<Object<'_>> {
        bound::create(env.raw(), &self.shared)
            .map(|value| Object::from_raw(env.raw(), value))
            .map_err(|e| throw(&env, e))
    }

    /// The memory received messages are staged in (made on the first call; null where the
    /// runtime refuses external buffers, and messages then come as Buffers or objects):
    /// `payload` holds a short payload when `recv`, `recvSync` or `onMessage` give a
    /// length instead of a Buffer; `regions` describes the regions of every message
    /// given as a length or a Buffer: their count, then per region its serial and
    /// `id * 8 + flags` (1 new, 2 frozen, 4 transferred). Both must be read before the
    /// next call into this endpoint.
    #[napi(ts_return_type = "{ payload: Uint8Array; regions: Float64Array } | null")]
    pub fn staging(&self, env: Env) -> Option<Object<'_>> {
        let (staging, views) = buffer::Staging::create(env.raw())?;
        *self.arrived.staging.borrow_mut() = Some(staging);
        Some(Object::from_raw(env.raw(), views))
    }

    /// A handle to region `index` of the message last received (once).
    #[napi]
    pub fn take_region(&self, env: Env, index: u32) -> napi::Result<NativeRegion> {
        let region = self
            .arrived
            .regions
            .borrow_mut()
            .get_mut(index as usize)
            .and_then(Option::take);
        region.map(|region| NativeRegion { region }).ok_or_else(|| {
            invalid(
                &env,
                "recv",
                format!("no region {index} left in the last message"),
            )
        })
    }

    /// Tells the peer this side no longer refers to `region` (RELEASE).
    #[napi]
    pub fn release(&self, region: &NativeRegion) {
        self.endpoint.release(&region.region);
    }

    /// Starts delivering messages to `onMessage` (returning whether it took the message)
    /// and other events to `onEvent`, from the event loop.
    #[napi(
        ts_args_type = "onMessage: (received: number | Buffer | ReceivedMessage) => boolean, onEvent: (event: EndpointEvent) => void"
    )]
    pub fn watch(
        &self,
        env: Env,
        on_message: Function<FnArgs<(Received,)>, bool>,
        on_event: Function<EndpointEvent, ()>,
    ) -> napi::Result<()> {
        if self.driver.borrow().is_some() {
            return Ok(());
        }
        let driver = Driver::start(
            env.raw(),
            Target::Endpoint(Arc::clone(&self.endpoint)),
            &[on_message.raw(), on_event.raw()],
            Rc::clone(&self.arrived),
            backend::start,
        )
        .map_err(|e| throw(&env, e))?;
        *self.driver.borrow_mut() = Some(driver);
        Ok(())
    }

    /// Whether JavaScript waits for something the core does not track (a handshake, a
    /// `'close'` listener): the endpoint is then kept from collection.
    #[napi]
    pub fn hold(&self, waiting: bool) {
        if let Some(core) = self.driver() {
            core.hold(waiting);
        }
    }

    /// Whether waiting keeps the event loop alive.
    #[napi]
    pub fn set_ref(&self, referenced: bool) {
        if let Some(core) = self.driver() {
            core.set_user_ref(referenced);
        }
    }

    /// Closes the connection; queued sends and waiting receives learn it from the events
    /// this delivers.
    #[napi]
    pub fn close(&self) {
        self.endpoint.close();
        self.settle();
        let driver = self.driver.borrow_mut().take();
        drop(driver);
        self.endpoint.release_socket();
    }
}

/// A socket descriptor on its way to a child process.
#[napi]
pub struct NativeSocket {
    fd: Option<std::os::fd::OwnedFd>,
}

#[napi]
impl NativeSocket {
    /// The descriptor, or -1 once closed.
    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// Closes this process's copy; the child keeps its own.
    #[napi]
    pub fn close(&mut self) {
        self.fd = None;
    }
}

/// A listening socket (one JavaScript `Server`).
#[napi]
pub struct NativeListener {
    listener: Arc<Listener>,
    driver: RefCell<Option<Driver>>,
}

#[napi]
impl NativeListener {
    /// Listens at `path` (a leading NUL byte: Linux abstract name).
    #[napi]
    pub fn bind(
        env: Env,
        path: String,
        options: Option<ListenerOptions>,
    ) -> napi::Result<NativeListener> {
        const OP: &str = "Endpoint.listen";
        let options = options.as_ref();
        let (ring, busy_poll) = ring_options(
            &env,
            OP,
            options.and_then(|o| o.ring),
            options.and_then(|o| o.busy_poll_us),
        )?;
        let endpoint = Options {
            limits: limits(&env, OP, options.and_then(|o| o.limits.as_ref()))?,
            accept_writable: options.and_then(|o| o.accept_writable).unwrap_or(false),
            yield_every: SENDS_PER_TURN,
            realm: realm(),
            ring,
            busy_poll,
        };
        let defaults = ListenOptions::default();
        let listen = ListenOptions {
            allow: peer_filter(options.and_then(|o| o.allow.as_ref())),
            endpoint,
            max_pending: options
                .and_then(|o| o.max_pending)
                .map_or(defaults.max_pending, |n| n as usize),
            backlog: options
                .and_then(|o| o.backlog)
                .map_or(defaults.backlog, |n| n as usize),
        };
        Listener::bind(path, listen)
            .map(|listener| NativeListener {
                listener: Arc::new(listener),
                driver: RefCell::new(None),
            })
            .map_err(|e| throw(&env, e))
    }

    #[napi(getter)]
    pub fn path(&self) -> String {
        self.listener.path().to_string_lossy().into_owned()
    }

    /// Connections refused by the credential filter so far.
    #[napi(getter)]
    pub fn rejected(&self) -> f64 {
        self.listener.rejected() as f64
    }

    /// Starts accepting on the event loop; `onConnection` is called when connections wait.
    #[napi]
    pub fn watch(&self, env: Env, on_connection: Function<(), ()>) -> napi::Result<()> {
        if self.driver.borrow().is_some() {
            return Ok(());
        }
        let driver = Driver::start(
            env.raw(),
            Target::Listener(Arc::clone(&self.listener)),
            &[on_connection.raw()],
            Rc::default(),
            backend::start,
        )
        .map_err(|e| throw(&env, e))?;
        *self.driver.borrow_mut() = Some(driver);
        Ok(())
    }

    fn driver(&self) -> Option<Rc<driver::Core>> {
        self.driver.borrow().as_ref().map(Driver::core)
    }

    /// The oldest accepted connection not yet taken, if any.
    #[napi]
    pub fn take(&self) -> Option<NativeEndpoint> {
        let endpoint = self.listener.take().map(NativeEndpoint::wrap);
        if let Some(core) = self.driver() {
            core.settle();
        }
        endpoint
    }

    /// Whether JavaScript waits for connections: the listener is kept from collection.
    #[napi]
    pub fn hold(&self, waiting: bool) {
        if let Some(core) = self.driver() {
            core.hold(waiting);
        }
    }

    /// Whether waiting keeps the event loop alive.
    #[napi]
    pub fn set_ref(&self, referenced: bool) {
        if let Some(core) = self.driver() {
            core.set_user_ref(referenced);
        }
    }

    /// Stops listening; connections not yet taken are closed.
    #[napi]
    pub fn close(&self) {
        self.listener.close();
        let driver = self.driver.borrow_mut().take();
        drop(driver);
        self.listener.release_socket();
    }
}

/// The process-wide limits, and how much of them received regions use now.
#[napi(object)]
pub struct ProcessStats {
    pub max_mapped_bytes: f64,
    pub max_regions: f64,
    pub mapped_bytes: f64,
    pub regions: f64,
}

#[napi]
pub fn process_stats() -> ProcessStats {
    let limits = shmlink::process_limits();
    let usage = shmlink::process_usage();
    ProcessStats {
        max_mapped_bytes: limits.max_mapped_bytes as f64,
        max_regions: limits.max_regions as f64,
        mapped_bytes: usage.mapped_bytes as f64,
        regions: usage.regions as f64,
    }
}

/// Sets the process-wide limits on what all peers together may make this process map.
#[napi]
pub fn set_process_limits(env: Env, max_mapped_bytes: f64, max_regions: f64) -> napi::Result<()> {
    const OP: &str = "setProcessLimits";
    let limits = shmlink::ProcessLimits {
        max_mapped_bytes: to_count(&env, OP, max_mapped_bytes, "maxMappedBytes")?,
        max_regions: to_count(&env, OP, max_regions, "maxRegions")?,
    };
    shmlink::set_process_limits(limits).map_err(|e| throw(&env, e))
}
