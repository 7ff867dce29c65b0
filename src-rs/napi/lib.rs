//! The Node-API binding: it converts arguments, calls the `shmlink` core and maps its
//! errors. `index.ts` builds the public API (promises, iteration, `AbortSignal`) on these
//! classes; nothing here is meant to be used directly.
#![deny(unsafe_code)]

mod buffer;
mod error;
mod fd;
mod poll;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::{BufferSlice, ClassInstance, JsValue, Object, ToNapiValue, Unknown};
use napi::{Env, sys};
use napi_derive::napi;
use shmlink::{Attach, Endpoint, Listener, Region};

use crate::poll::{Deliver, Event, Poller, Source};

/// Event kinds passed as the first argument of a `watch` callback.
const EVENT_MESSAGE: u32 = 0;
const EVENT_WRITABLE: u32 = 1;
const EVENT_FAILURE: u32 = 2;
const EVENT_CONNECTION: u32 = 3;
const EVENT_HANDSHAKE: u32 = 4;

fn invalid(env: &Env, message: &str) -> napi::Error {
    error::throw_code(env, error::INVALID_ARG, message)
}

/// A non-negative integer argument that JavaScript passed as a number.
fn to_usize(env: &Env, value: f64, what: &str) -> napi::Result<usize> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= 9_007_199_254_740_991.0
    {
        Ok(value as usize)
    } else {
        Err(invalid(
            env,
            &format!("{what} must be a non-negative safe integer, not {value}"),
        ))
    }
}

/// A timeout in milliseconds; negative means "wait forever".
fn to_timeout(env: &Env, millis: f64) -> napi::Result<Option<Duration>> {
    if millis.is_nan() {
        return Err(invalid(env, "timeoutMs must be a number"));
    }
    Ok((millis >= 0.0).then(|| Duration::from_secs_f64(millis.min(1e12) / 1000.0)))
}

/// A region handle (one JavaScript `Region`).
#[napi]
pub struct NativeRegion {
    region: Option<Region>,
    /// Whether an attached `ArrayBuffer` lends the region's own mapping.
    primary_attached: std::cell::Cell<bool>,
}

impl NativeRegion {
    fn wrap(region: Region) -> Self {
        NativeRegion {
            region: Some(region),
            primary_attached: std::cell::Cell::new(false),
        }
    }

    fn get(&self, env: &Env) -> napi::Result<&Region> {
        self.region.as_ref().ok_or_else(|| {
            error::throw_code(
                env,
                error::REGION_CLOSED,
                "the region is closed; create a new one with Region.create()",
            )
        })
    }
}

#[napi]
impl NativeRegion {
    /// A new sealed region of `size` bytes.
    #[napi(factory)]
    pub fn create(env: Env, size: f64) -> napi::Result<Self> {
        let size = to_usize(&env, size, "size")?;
        Region::create(size)
            .map(NativeRegion::wrap)
            .map_err(|e| error::throw(&env, e))
    }

    #[napi(getter)]
    pub fn size(&self) -> f64 {
        self.region.as_ref().map_or(0.0, |r| r.size() as f64)
    }

    #[napi(getter)]
    pub fn frozen(&self) -> bool {
        self.region.as_ref().is_some_and(Region::is_frozen)
    }

    #[napi(getter)]
    pub fn transferred(&self) -> bool {
        self.region.as_ref().is_some_and(Region::is_transferred)
    }

    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.region.is_none()
    }

    /// Identifies the underlying region within this process.
    #[napi(getter)]
    pub fn serial(&self) -> f64 {
        self.region.as_ref().map_or(0.0, |r| r.serial() as f64)
    }

    #[napi]
    pub fn freeze(&self, env: Env) -> napi::Result<()> {
        self.get(&env)?.freeze().map_err(|e| error::throw(&env, e))
    }

    /// Copies `length` bytes at `offset` into a new Buffer.
    #[napi]
    pub fn read<'env>(
        &self,
        env: &'env Env,
        offset: f64,
        length: f64,
    ) -> napi::Result<BufferSlice<'env>> {
        let offset = to_usize(env, offset, "offset")?;
        let length = to_usize(env, length, "length")?;
        let region = self.get(env)?;
        if offset
            .checked_add(length)
            .is_none_or(|end| end > region.size())
        {
            return Err(invalid(
                env,
                &format!(
                    "{offset}+{length} lies outside the region's {} bytes",
                    region.size()
                ),
            ));
        }
        let mut bytes = vec![0u8; length];
        region
            .read(offset, &mut bytes)
            .map_err(|e| error::throw(env, e))?;
        BufferSlice::copy_from(env, bytes)
    }

    /// Copies `data` into the region at `offset`.
    #[napi]
    pub fn write(&self, env: Env, offset: f64, data: BufferSlice) -> napi::Result<()> {
        let offset = to_usize(&env, offset, "offset")?;
        self.get(&env)?
            .write(offset, &data)
            .map_err(|e| error::throw(&env, e))
    }

    /// A zero-copy `ArrayBuffer` over the region (one per mapping).
    #[napi]
    pub fn expose<'env>(&self, env: &'env Env) -> napi::Result<Unknown<'env>> {
        let region = self.get(env)?;
        if region.is_transferred() {
            return Err(error::throw(
                env,
                shmlink::Error::new(
                    shmlink::ErrorKind::RegionTransferred,
                    "Region.bytes",
                    "the region was transferred to a peer; wait until the peer sends it back",
                ),
            ));
        }
        // Each mapping backs one attached ArrayBuffer at a time: the region's own mapping
        // unless a buffer over it is still attached, a fresh mapping otherwise. A detached
        // buffer no longer reaches the memory, so the mapping can back a new one at once;
        // it stays mapped until V8 finalizes every buffer over it.
        let mapping = if self.primary_attached.get() {
            region.map_again().map_err(|e| error::throw(env, e))?
        } else {
            region.mapping()
        };
        let is_primary = mapping.as_ptr() == region.mapping().as_ptr();
        match buffer::expose(env, mapping) {
            Ok(value) => {
                self.primary_attached
                    .set(self.primary_attached.get() || is_primary);
                Ok(value)
            }
            Err(buffer::ExposeError::NotAllowed) => Err(error::throw_code(
                env,
                error::ZERO_COPY_UNAVAILABLE,
                "this runtime refuses external buffers (Electron's V8 memory cage); use region.read() and region.write()",
            )),
            Err(buffer::ExposeError::Failed(status)) => Err(napi::Error::from_reason(format!(
                "napi_create_external_arraybuffer failed (status {status})"
            ))),
        }
    }

    /// Detaches an `ArrayBuffer` made by `expose`.
    #[napi]
    pub fn detach(&self, env: Env, buffer: Unknown) -> napi::Result<()> {
        let data = buffer::detach(env.raw(), buffer.raw()).map_err(|status| {
            napi::Error::from_reason(format!("napi_detach_arraybuffer failed (status {status})"))
        })?;
        if self
            .region
            .as_ref()
            .is_some_and(|r| r.mapping().as_ptr().cast() == data)
        {
            self.primary_attached.set(false);
        }
        Ok(())
    }

    /// Drops this handle. The memory is unmapped once no buffer, endpoint or other
    /// handle uses it.
    #[napi]
    pub fn close(&mut self) {
        self.region = None;
    }
}

/// Whether this runtime lets native code lend memory to `ArrayBuffer`s.
#[napi]
pub fn external_buffers_allowed(env: Env) -> bool {
    buffer::external_buffers_allowed(env.raw())
}

/// The regions of the message being delivered, until the next one arrives: JavaScript
/// takes a handle (`takeRegion`) only for a region it does not hold already, so a
/// region sent again costs no new JavaScript object.
type Arrived = Rc<RefCell<Vec<Region>>>;

fn kind(env: &Env, kind: u32) -> napi::Result<sys::napi_value> {
    kind.into_unknown(env).map(|v| v.raw())
}

/// Converts endpoint events into `callback(kind, ...)` arguments.
struct EndpointEvents {
    arrived: Arrived,
}

impl Deliver for EndpointEvents {
    fn arguments(&self, env: &Env, event: Event) -> napi::Result<Vec<sys::napi_value>> {
        match event {
            Event::Message(message) if message.regions.is_empty() => {
                let payload = BufferSlice::copy_from(env, &message.payload)?.raw();
                Ok(vec![kind(env, EVENT_MESSAGE)?, payload])
            }
            Event::Message(message) => {
                let [payload, descriptors] = message_values(env, message, &self.arrived)?;
                Ok(vec![
                    kind(env, EVENT_MESSAGE)?,
                    payload.raw(),
                    descriptors.raw(),
                ])
            }
            Event::Writable => Ok(vec![kind(env, EVENT_WRITABLE)?]),
            Event::Handshake => Ok(vec![kind(env, EVENT_HANDSHAKE)?]),
            Event::Failure(e) => Ok(vec![
                kind(env, EVENT_FAILURE)?,
                error::to_js(env, &e)?.raw(),
            ]),
            Event::Connection(_) => Err(napi::Error::from_reason(
                "an endpoint does not accept connections",
            )),
        }
    }
}

/// Converts listener events into `callback(kind, ...)` arguments.
struct ListenerEvents;

impl Deliver for ListenerEvents {
    fn arguments(&self, env: &Env, event: Event) -> napi::Result<Vec<sys::napi_value>> {
        match event {
            Event::Connection(endpoint) => {
                let endpoint = NativeEndpoint::wrap(*endpoint).into_unknown(env)?;
                Ok(vec![kind(env, EVENT_CONNECTION)?, endpoint.raw()])
            }
            Event::Failure(e) => Ok(vec![
                kind(env, EVENT_FAILURE)?,
                error::to_js(env, &e)?.raw(),
            ]),
            _ => Err(napi::Error::from_reason(
                "a listener only accepts connections",
            )),
        }
    }
}

/// `payload` (a Buffer) and `descriptors` (`[id, flags, serial, ...]`: the wire's id and
/// flag bits and the region's serial, per region); the regions themselves go to `arrived`.
fn message_values<'env>(
    env: &'env Env,
    message: shmlink::Message,
    arrived: &RefCell<Vec<Region>>,
) -> napi::Result<[Unknown<'env>; 2]> {
    let payload = BufferSlice::copy_from(env, &message.payload)?.to_unknown();
    let mut descriptors = Vec::with_capacity(message.regions.len() * 3);
    let mut regions = arrived.borrow_mut();
    regions.clear();
    for incoming in message.regions {
        let mut flags = 0u32;
        if incoming.new {
            flags |= shmlink::wire::FLAG_NEW;
        }
        if incoming.region.is_frozen() {
            flags |= shmlink::wire::FLAG_FROZEN;
        }
        if incoming.transferred {
            flags |= shmlink::wire::FLAG_TRANSFER;
        }
        descriptors.push(f64::from(incoming.id));
        descriptors.push(f64::from(flags));
        descriptors.push(incoming.region.serial() as f64);
        regions.push(incoming.region);
    }
    Ok([payload, descriptors.into_unknown(env)?])
}

/// An endpoint handle (one JavaScript `Endpoint`). `close()` lets go of the socket,
/// which is closed as soon as the event loop has stopped watching it.
#[napi]
pub struct NativeEndpoint {
    endpoint: Option<Arc<Endpoint>>,
    poller: Option<Poller>,
    arrived: Arrived,
}

impl NativeEndpoint {
    fn wrap(endpoint: Endpoint) -> Self {
        NativeEndpoint {
            endpoint: Some(Arc::new(endpoint)),
            poller: None,
            arrived: Arrived::default(),
        }
    }

    fn get(&self, env: &Env) -> napi::Result<&Arc<Endpoint>> {
        self.endpoint
            .as_ref()
            .ok_or_else(|| error::throw(env, closed_endpoint()))
    }
}

fn closed_endpoint() -> shmlink::Error {
    shmlink::Error::new(
        shmlink::ErrorKind::Closed,
        "Endpoint",
        "the endpoint is closed; create or accept a new one",
    )
}

/// Regions and their transfer flags as the core wants them.
fn attachments<'a>(
    env: &Env,
    regions: &'a [ClassInstance<'_, NativeRegion>],
    transfer: &[bool],
) -> napi::Result<Vec<Attach<'a>>> {
    if regions.is_empty() && transfer.is_empty() {
        return Ok(Vec::new());
    }
    if regions.len() != transfer.len() {
        return Err(invalid(env, "regions and transfer flags differ in length"));
    }
    regions
        .iter()
        .zip(transfer)
        .map(|(native, &transfer)| {
            Ok(Attach {
                region: native.get(env)?,
                transfer,
            })
        })
        .collect()
}

#[napi]
impl NativeEndpoint {
    /// A connected pair.
    #[napi]
    pub fn pair(env: Env) -> napi::Result<Vec<NativeEndpoint>> {
        let (a, b) = Endpoint::pair().map_err(|e| error::throw(&env, e))?;
        Ok(vec![NativeEndpoint::wrap(a), NativeEndpoint::wrap(b)])
    }

    /// An endpoint and the raw socket of its peer, to hand to a child process.
    #[napi]
    pub fn pair_for_child(env: Env) -> napi::Result<(NativeEndpoint, NativeSocket)> {
        let (mine, theirs) = Endpoint::pair_for_child().map_err(|e| error::throw(&env, e))?;
        Ok((
            NativeEndpoint::wrap(mine),
            NativeSocket { fd: Some(theirs) },
        ))
    }

    /// Connects to a listener at `path` (a leading NUL byte: Linux abstract name).
    #[napi]
    pub fn connect(env: Env, path: String) -> napi::Result<NativeEndpoint> {
        Endpoint::connect(path)
            .map(NativeEndpoint::wrap)
            .map_err(|e| error::throw(&env, e))
    }

    /// Takes over the connected `SOCK_SEQPACKET` socket `fd`.
    #[napi]
    pub fn from_fd(env: Env, fd: i32) -> napi::Result<NativeEndpoint> {
        let owned = fd::claim(fd).map_err(|why| invalid(&env, why))?;
        Endpoint::from_fd(owned)
            .map(NativeEndpoint::wrap)
            .map_err(|e| error::throw(&env, e))
    }

    /// The socket's descriptor, or -1 once closed.
    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        use std::os::fd::{AsFd, AsRawFd};
        self.endpoint.as_ref().map_or(-1, |e| e.as_fd().as_raw_fd())
    }

    /// Whether the connection can still carry messages (false after end-of-file, a
    /// protocol violation or `close()`).
    #[napi(getter)]
    pub fn open(&self) -> bool {
        self.endpoint.as_ref().is_some_and(|e| e.is_open())
    }

    #[napi(getter)]
    pub fn handshake_complete(&self) -> bool {
        self.endpoint
            .as_ref()
            .is_some_and(|e| e.is_handshake_complete())
    }

    /// `{ pid, uid, gid }` of the peer (`SO_PEERCRED`).
    #[napi]
    pub fn peer<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let creds = self
            .get(env)?
            .peer_credentials()
            .map_err(|e| error::throw(env, e))?;
        let mut peer = Object::new(env)?;
        peer.set("pid", creds.pid)?;
        peer.set("uid", creds.uid)?;
        peer.set("gid", creds.gid)?;
        Ok(peer)
    }

    /// Sends now if the socket has room: `true` when sent, `false` when the caller must
    /// wait (the socket is full, or the peer's HELLO has not arrived).
    #[napi]
    pub fn send(
        &self,
        env: Env,
        payload: BufferSlice,
        regions: Option<Vec<ClassInstance<NativeRegion>>>,
        transfer: Option<Vec<bool>>,
    ) -> napi::Result<bool> {
        let endpoint = self.get(&env)?;
        let (regions, transfer) = (regions.unwrap_or_default(), transfer.unwrap_or_default());
        let attach = attachments(&env, &regions, &transfer)?;
        match endpoint.send(&payload, &attach) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == shmlink::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(error::throw(&env, e)),
        }
    }

    /// Sends, blocking up to `timeoutMs` (negative: forever) for room.
    #[napi]
    pub fn send_sync(
        &self,
        env: Env,
        payload: BufferSlice,
        timeout_ms: f64,
        regions: Option<Vec<ClassInstance<NativeRegion>>>,
        transfer: Option<Vec<bool>>,
    ) -> napi::Result<()> {
        let endpoint = self.get(&env)?;
        let (regions, transfer) = (regions.unwrap_or_default(), transfer.unwrap_or_default());
        let attach = attachments(&env, &regions, &transfer)?;
        let timeout = to_timeout(&env, timeout_ms)?;
        endpoint
            .send_blocking(&payload, &attach, timeout)
            .map_err(|e| error::throw(&env, e))
    }

    /// Receives one message, blocking up to `timeoutMs` (negative: forever; 0: only
    /// what is there). Returns the payload Buffer when no regions came with it, else
    /// `[payload, regions, descriptors]`.
    #[napi]
    pub fn recv_sync<'env>(&self, env: &'env Env, timeout_ms: f64) -> napi::Result<Unknown<'env>> {
        let timeout = to_timeout(env, timeout_ms)?;
        let message = self
            .get(env)?
            .recv_timeout(timeout)
            .map_err(|e| error::throw(env, e))?;
        if message.regions.is_empty() {
            return Ok(BufferSlice::copy_from(env, &message.payload)?.to_unknown());
        }
        Vec::from(message_values(env, message, &self.arrived)?).into_unknown(env)
    }

    /// A handle to region `index` of the message just delivered.
    #[napi]
    pub fn take_region(&self, env: Env, index: u32) -> napi::Result<NativeRegion> {
        let arrived = self.arrived.borrow();
        let region = arrived
            .get(index as usize)
            .ok_or_else(|| invalid(&env, "no such region in the last message"))?;
        Ok(NativeRegion::wrap(region.clone()))
    }

    /// Tells the peer this side no longer refers to `region` (RELEASE).
    #[napi]
    pub fn release(&self, env: Env, region: &NativeRegion) -> napi::Result<()> {
        match (&self.endpoint, &region.region) {
            (Some(endpoint), Some(r)) => endpoint.release(r).map_err(|e| error::throw(&env, e)),
            _ => Ok(()),
        }
    }

    /// Sends queued RELEASE frames; `false` while some still wait for room.
    #[napi]
    pub fn flush(&self, env: Env) -> napi::Result<bool> {
        match self.get(&env)?.flush() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == shmlink::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(error::throw(&env, e)),
        }
    }

    #[napi(getter)]
    pub fn has_pending_output(&self) -> bool {
        self.endpoint
            .as_ref()
            .is_some_and(|e| e.has_pending_output())
    }

    /// Starts delivering events to `callback(kind, ...)` from the event loop.
    #[napi]
    pub fn watch(&mut self, env: Env, callback: Unknown, resource: Unknown) -> napi::Result<()> {
        let endpoint = self.get(&env)?;
        if self.poller.is_none() {
            let source = Source::Endpoint(Arc::clone(endpoint));
            let events = Box::new(EndpointEvents {
                arrived: Rc::clone(&self.arrived),
            });
            self.poller = Some(Poller::start(
                env.raw(),
                source,
                events,
                callback.raw(),
                resource.raw(),
            )?);
        }
        Ok(())
    }

    /// Which readiness to wait for.
    #[napi]
    pub fn set_interest(&self, readable: bool, writable: bool) {
        if let Some(poller) = &self.poller {
            let mut events = 0;
            if readable {
                events |= poll::READABLE | poll::DISCONNECT;
            }
            if writable {
                events |= poll::WRITABLE;
            }
            poller.watch(events);
        }
    }

    /// Whether waiting keeps the process alive.
    #[napi]
    pub fn set_ref(&self, referenced: bool) {
        if let Some(poller) = &self.poller {
            poller.set_ref(referenced);
        }
    }

    /// Closes the connection and stops watching it.
    #[napi]
    pub fn close(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.close();
        }
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.close();
        }
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
    listener: Option<Arc<Listener>>,
    poller: Option<Poller>,
}

#[napi]
impl NativeListener {
    /// Listens at `path` (a leading NUL byte: Linux abstract name).
    #[napi]
    pub fn bind(env: Env, path: String) -> napi::Result<NativeListener> {
        Listener::bind(path)
            .map(|listener| NativeListener {
                listener: Some(Arc::new(listener)),
                poller: None,
            })
            .map_err(|e| error::throw(&env, e))
    }

    #[napi(getter)]
    pub fn path(&self) -> String {
        self.listener
            .as_ref()
            .map_or_else(String::new, |l| l.path().to_string_lossy().into_owned())
    }

    /// Starts delivering accepted connections to `callback(kind, endpoint)`.
    #[napi]
    pub fn watch(&mut self, env: Env, callback: Unknown, resource: Unknown) -> napi::Result<()> {
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| error::throw(&env, closed_endpoint()))?;
        if self.poller.is_none() {
            let source = Source::Listener(Arc::clone(listener));
            let poller = Poller::start(
                env.raw(),
                source,
                Box::new(ListenerEvents),
                callback.raw(),
                resource.raw(),
            )?;
            poller.watch(poll::READABLE);
            self.poller = Some(poller);
        }
        Ok(())
    }

    #[napi]
    pub fn set_ref(&self, referenced: bool) {
        if let Some(poller) = &self.poller {
            poller.set_ref(referenced);
        }
    }

    /// Stops listening. The socket is closed and its file removed as soon as the event
    /// loop has stopped watching it.
    #[napi]
    pub fn close(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.close();
        }
        if let Some(listener) = self.listener.take() {
            listener.remove_socket_file();
        }
    }
}
