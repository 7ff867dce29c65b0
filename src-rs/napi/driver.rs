//! The driver: moves readiness from a wake-up backend into the core and the core's events
//! out to JavaScript. It decides nothing about the protocol: the core says what to wait
//! for ([`shmlink::Endpoint::interest`]) and what happened ([`shmlink::Endpoint::poll_event`]);
//! the driver converts each event into typed JavaScript values and calls the handler.
//!
//! A backend (libuv poll handles on Node and Electron, `uv.rs`; a thread on runtimes
//! without libuv, `thread.rs`) only watches a descriptor and calls [`Core::on_ready`] on
//! the JavaScript thread. Handlers are held weakly unless the application waits for
//! something ([`Core::hold`]), so an endpoint nothing can reach and nothing waits on is
//! collected, closing its socket.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;

use napi::bindgen_prelude::{BufferSlice, Either, Either3, FromNapiValue, ToNapiValue};
use napi::{Env, sys};
use napi_derive::napi;
use shmlink::{Endpoint, Event, Interest, Listener, Message, Payload, Region, Settle};

use crate::buffer::{Handover, Staging};
use crate::error::{ErrorInfo, after_teardown, check};

/// What a wake-up backend does for a driver. Every method is called on the JavaScript
/// thread.
pub trait Backend {
    /// Watch for `interest` from now on (nothing when empty).
    fn watch(&self, interest: Interest) -> shmlink::Result<()>;
    /// Whether waiting keeps the event loop (and the process) alive.
    fn set_ref(&self, referenced: bool);
    /// Stop watching for good; the backend calls [`Core::backend_closed`] once it has.
    fn close(&self);
    /// Whether the driver must close the backend itself when the environment is torn
    /// down (libuv handles must be closed before their loop ends); a backend the runtime
    /// finalizes on its own answers false.
    fn closes_on_teardown(&self) -> bool;
}

/// A region that arrived with a message, as `index.ts` sees it before it asks for the
/// region itself (`takeRegion`): a region it already holds costs no new object.
#[napi(object)]
pub struct IncomingRegion {
    /// The id the peer gave it on this connection.
    pub id: u32,
    /// Identifies the region within this JavaScript environment.
    pub serial: f64,
    /// Its descriptor came with this message.
    pub new: bool,
    pub frozen: bool,
    /// The peer gave up access to it.
    pub transferred: bool,
}

/// A received message.
#[napi(object)]
pub struct ReceivedMessage<'env> {
    pub payload: BufferSlice<'env>,
    /// The attached regions, in order.
    pub regions: Vec<IncomingRegion>,
}

/// A received message as JavaScript gets it. Where there is staging memory ([`Staging`]),
/// it describes the message's regions (none, for most messages), and the value is the
/// length of the payload waiting there, or the payload itself when it is too long for
/// that: no object to build. Otherwise (a memory cage) the payload alone when no region
/// came with it, else the payload and the regions.
pub type Received<'env> = Either3<u32, BufferSlice<'env>, ReceivedMessage<'env>>;

/// `message` as JavaScript receives it; the region handles go to `arrived`, for
/// `takeRegion`, until the next message. A short payload is copied into the staging memory
/// and stays in `message`; any other payload moves into a JavaScript Buffer as `handover`
/// says, and `message` keeps the rest.
pub fn received<'env>(
    env: &'env Env,
    message: &mut Message,
    arrived: &Arrived,
    handover: Handover,
) -> napi::Result<Received<'env>> {
    let staging = arrived.staging.borrow();
    let staged = staging
        .as_ref()
        .filter(|staging| staging.put_regions(&message.regions));
    keep_regions(message, arrived);
    if let Some(staging) = staged
        && staging.put(&message.payload)
    {
        // Shorter than the staging memory, so it fits in 32 bits.
        return Ok(Either3::A(message.payload.len() as u32));
    }
    let payload = std::mem::take(&mut message.payload);
    let value = crate::buffer::payload_buffer(env.raw(), payload, handover).map_err(|refused| {
        let (e, payload) = *refused;
        message.payload = payload;
        crate::error::throw(env, e)
    })?;
    // SAFETY: `value` is the Buffer just created in `env`, in the current scope.
    let payload = unsafe { <BufferSlice as FromNapiValue>::from_napi_value(env.raw(), value) }?;
    if staged.is_some() || message.regions.is_empty() {
        return Ok(Either3::B(payload));
    }
    Ok(Either3::C(ReceivedMessage {
        payload,
        regions: descriptions(message),
    }))
}

/// A received message whose payload `recvSync` copied into the caller's buffer, where
/// there is no staging memory to describe its regions in.
#[napi(object)]
pub struct ReceivedInto {
    /// Bytes of payload at the start of the caller's buffer.
    pub length: u32,
    pub regions: Vec<IncomingRegion>,
}

/// Describes the regions of `message`, whose payload was copied into the caller's buffer:
/// in the staging memory (then the value is the payload's length), or in an object where
/// there is none.
pub fn received_into(message: &Message, arrived: &Arrived) -> Either<u32, ReceivedInto> {
    // At most the endpoint's `maxPayload`, a u32.
    let length = message.payload.len() as u32;
    let staging = arrived.staging.borrow();
    let staged = staging
        .as_ref()
        .is_some_and(|staging| staging.put_regions(&message.regions));
    keep_regions(message, arrived);
    if staged {
        Either::A(length)
    } else {
        Either::B(ReceivedInto {
            length,
            regions: descriptions(message),
        })
    }
}

/// Keeps `message`'s regions for `takeRegion`, in place of the last message's.
fn keep_regions(message: &Message, arrived: &Arrived) {
    let mut regions = arrived.regions.borrow_mut();
    regions.clear();
    regions.extend(
        message
            .regions
            .iter()
            .map(|incoming| Some(incoming.region.clone())),
    );
}

fn descriptions(message: &Message) -> Vec<IncomingRegion> {
    message
        .regions
        .iter()
        .map(|incoming| IncomingRegion {
            id: incoming.id,
            serial: incoming.region.serial() as f64,
            new: incoming.new,
            frozen: incoming.frozen,
            transferred: incoming.transferred,
        })
        .collect()
}

/// What happened on a connection, besides messages.
#[napi(discriminant = "type", discriminant_case = "camelCase")]
pub enum EndpointEvent {
    /// Queued sends up to this ticket left (except those reported as failed).
    Sent { through: f64 },
    /// A queued send failed; nothing of it was sent.
    SendFailed { ticket: f64, error: ErrorInfo },
    /// The peer's HELLO arrived.
    Handshake,
    /// The connection ended.
    Closed { error: ErrorInfo },
}

/// What a driver pumps.
pub enum Target {
    Endpoint(Arc<Endpoint>),
    Listener(Arc<Listener>),
}

impl Target {
    fn raw_fd(&self) -> Option<i32> {
        match self {
            Target::Endpoint(endpoint) => endpoint.raw_fd(),
            Target::Listener(listener) => listener.raw_fd(),
        }
    }

    fn interest(&self) -> Interest {
        match self {
            Target::Endpoint(endpoint) => endpoint.interest(),
            Target::Listener(listener) => listener.interest(),
        }
    }

    fn awaited(&self) -> bool {
        match self {
            Target::Endpoint(endpoint) => endpoint.is_awaited(),
            Target::Listener(_) => false,
        }
    }
}

/// The JavaScript functions a driver calls: for an endpoint, `onMessage(payload,
/// regions?) => taken` and `onEvent(event)`; for a listener, `onConnection()`.
const ON_MESSAGE: usize = 0;
const ON_EVENT: usize = 1;
const ON_CONNECTION: usize = 0;

pub struct Core {
    env: sys::napi_env,
    target: Target,
    handlers: Vec<sys::napi_ref>,
    context: sys::napi_async_context,
    hook: Cell<sys::napi_async_cleanup_hook_handle>,
    backend: RefCell<Option<Box<dyn Backend>>>,
    closing: Cell<bool>,
    /// A readiness callback is delivering: calls its handlers make leave re-arming to it,
    /// so an endpoint that busy-polls next does not first tell the peer that its loop
    /// sleeps (which would make the peer ring WAKE for every message).
    pumping: Cell<bool>,
    /// JavaScript waits for something the core does not know about (a handshake, an
    /// accept, a listener for `'close'`).
    js_hold: Cell<bool>,
    /// The application did not `unref()` it.
    user_ref: Cell<bool>,
    strong: Cell<bool>,
    referenced: Cell<bool>,
    /// The regions of the message being delivered, until the next one: `takeRegion`
    /// hands out handles to them.
    arrived: Arrived,
}

/// What the message last delivered to JavaScript (by the driver or a receive call) left
/// for it to pick up, until the next one: its regions (`takeRegion` hands each out once;
/// one JavaScript already holds is not asked for), and in the staging memory, once
/// JavaScript has asked for one, a short payload and the regions' descriptions. Kept no
/// longer than that: a region held here outlives every handle the application let go of
/// (and with it this side's ids for it, which the peer would keep mapped).
#[derive(Default)]
pub struct Arrivals {
    pub regions: RefCell<Vec<Option<Region>>>,
    pub staging: RefCell<Option<Rc<Staging>>>,
}

pub type Arrived = Rc<Arrivals>;

/// A driver, owned by the JavaScript object whose socket it watches; dropping it (the
/// object was closed or collected) closes the backend, and the core goes with it.
pub struct Driver {
    core: Rc<Core>,
}

/// The name async hooks and diagnostics show for shmlink's callbacks and threadsafe
/// functions.
pub(crate) fn resource_name(
    env: sys::napi_env,
    op: &'static str,
) -> shmlink::Result<sys::napi_value> {
    let mut name = ptr::null_mut();
    let label = "shmlink";
    // SAFETY: `label` points at `label.len()` bytes of UTF-8.
    check(op, "napi_create_string_utf8", unsafe {
        sys::napi_create_string_utf8(env, label.as_ptr().cast(), label.len() as isize, &mut name)
    })?;
    Ok(name)
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.core.close();
    }
}

fn js_function(
    env: sys::napi_env,
    value: sys::napi_value,
    op: &'static str,
) -> shmlink::Result<sys::napi_ref> {
    let mut reference = ptr::null_mut();
    // SAFETY: `value` is a live value of `env`; a reference of count 0 is weak.
    check(op, "napi_create_reference", unsafe {
        sys::napi_create_reference(env, value, 0, &mut reference)
    })?;
    Ok(reference)
}

impl Driver {
    /// Starts driving `target` on the JavaScript thread of `env`, calling `handlers`
    /// (see the constants above), through the backend `make_backend` builds.
    pub fn start(
        env: sys::napi_env,
        target: Target,
        handlers: &[sys::napi_value],
        arrived: Arrived,
        make_backend: impl FnOnce(sys::napi_env, i32, &Rc<Core>) -> shmlink::Result<Box<dyn Backend>>,
    ) -> shmlink::Result<Driver> {
        const OP: &str = "watch";
        let handlers = handlers
            .iter()
            .map(|&value| js_function(env, value, OP))
            .collect::<shmlink::Result<Vec<_>>>()?;
        let name = resource_name(env, OP)?;
        let mut context = ptr::null_mut();
        // SAFETY: `name` is a live value of `env`; a null resource lets the runtime make one.
        check(OP, "napi_async_init", unsafe {
            sys::napi_async_init(env, ptr::null_mut(), name, &mut context)
        })?;
        let fd = target.raw_fd().ok_or_else(|| {
            shmlink::Error::new(shmlink::ErrorKind::Closed, OP, "the connection has ended")
        })?;
        if let Target::Endpoint(endpoint) = &target {
            endpoint.attach_driver();
        }
        let core = Rc::new(Core {
            env,
            target,
            handlers,
            context,
            hook: Cell::new(ptr::null_mut()),
            backend: RefCell::new(None),
            closing: Cell::new(false),
            pumping: Cell::new(false),
            js_hold: Cell::new(false),
            user_ref: Cell::new(true),
            strong: Cell::new(false),
            referenced: Cell::new(true),
            arrived,
        });
        let driver = Driver {
            core: Rc::clone(&core),
        };
        let backend = make_backend(env, fd, &core)?;
        let needs_hook = backend.closes_on_teardown();
        *core.backend.borrow_mut() = Some(backend);
        if needs_hook {
            let mut hook = ptr::null_mut();
            // SAFETY: the data is this core, kept alive by the backend until it is closed,
            // which removes the hook first (`backend_closed`).
            check(OP, "napi_add_async_cleanup_hook", unsafe {
                sys::napi_add_async_cleanup_hook(
                    env,
                    Some(on_env_teardown),
                    Rc::as_ptr(&core) as *mut c_void,
                    &mut hook,
                )
            })?;
            core.hook.set(hook);
        }
        core.set_ref(false);
        core.update();
        Ok(driver)
    }

    /// The core, to use without keeping the driver borrowed while JavaScript runs.
    pub fn core(&self) -> Rc<Core> {
        Rc::clone(&self.core)
    }
}

unsafe extern "C" fn on_env_teardown(
    _hook: sys::napi_async_cleanup_hook_handle,
    data: *mut c_void,
) {
    // SAFETY: `data` is the core, alive until `backend_closed` removes this hook.
    let core = unsafe { &*(data as *const Core) };
    core.close();
}

impl Core {
    /// The backend saw readiness; `restart` when it stopped watching on its own (an
    /// error on the socket), so the next interest must be set afresh.
    pub fn on_ready(&self, ready: Interest, restart: bool) {
        if self.closing.get() {
            return;
        }
        if restart && let Some(backend) = self.backend.borrow().as_ref() {
            // Watching nothing only resets what the backend remembers; the interest
            // computed after this callback is what matters, and its failure is reported.
            let _ = backend.watch(Interest::default());
        }
        let mut scope = ptr::null_mut();
        // SAFETY: we are on the JavaScript thread of `env`, in a backend callback.
        if unsafe { sys::napi_open_handle_scope(self.env, &mut scope) } != sys::Status::napi_ok {
            return;
        }
        match &self.target {
            Target::Endpoint(endpoint) => {
                self.pumping.set(true);
                endpoint.on_ready(ready);
                self.pump_endpoint(endpoint);
                // With a ring, the core may busy-poll briefly for what comes next.
                while !self.closing.get() && endpoint.linger() {
                    self.pump_endpoint(endpoint);
                }
                self.pumping.set(false);
            }
            Target::Listener(listener) => {
                match listener.on_ready() {
                    Ok(0) => {}
                    Ok(_) => {
                        self.call(ON_CONNECTION, &[]);
                    }
                    // Accepting failed (the open-file limit): try again on the next
                    // readiness report; connections wait in the backlog meanwhile.
                    Err(_) => {}
                }
            }
        }
        self.update();
        // SAFETY: `scope` was opened above in this function.
        unsafe { sys::napi_close_handle_scope(self.env, scope) };
    }

    /// Delivers the events other than messages that a call produced without new
    /// readiness (a blocking send, `close`), from inside that JavaScript call, and
    /// re-arms the backend (unless a readiness callback delivering now will).
    pub fn settle(&self) {
        let endpoint = match &self.target {
            Target::Endpoint(endpoint) => endpoint,
            Target::Listener(_) => {
                if !self.pumping.get() {
                    self.update();
                }
                return;
            }
        };
        while !self.closing.get() {
            // While a readiness callback delivers, it re-arms the backend when it is done.
            let settled = if self.pumping.get() {
                match endpoint.poll_notice() {
                    Some(event) => Settle::Notice(event),
                    None => return,
                }
            } else {
                endpoint.settle()
            };
            match settled {
                Settle::Notice(event) => self.dispatch(endpoint, event),
                Settle::Wait { interest, awaited } => return self.watch(interest, awaited),
            }
        }
    }

    fn pump_endpoint(&self, endpoint: &Endpoint) {
        while !self.closing.get() {
            match endpoint.poll_event() {
                Some(event) => self.dispatch(endpoint, event),
                None => break,
            }
        }
    }

    fn dispatch(&self, endpoint: &Endpoint, event: Event) {
        {
            match event {
                Event::Message(message) => {
                    if let Some(message) = self.deliver(message) {
                        endpoint.unreceive(message);
                    }
                }
                Event::Sent { through } => self.event(EndpointEvent::Sent {
                    through: through as f64,
                }),
                Event::SendFailed { ticket, error } => self.event(EndpointEvent::SendFailed {
                    ticket: ticket as f64,
                    error: ErrorInfo::from(&error),
                }),
                Event::Handshake => self.event(EndpointEvent::Handshake),
                Event::Closed(error) => {
                    self.event(EndpointEvent::Closed {
                        error: ErrorInfo::from(&error),
                    });
                    // Nothing more can happen on the socket: stop watching it and close
                    // it now; received messages stay available.
                    self.close();
                    endpoint.release_socket();
                }
            }
        }
    }

    fn event(&self, event: EndpointEvent) {
        // SAFETY: `env` is the current environment; the value is used at once.
        match unsafe { EndpointEvent::to_napi_value(self.env, event) } {
            Ok(value) => {
                self.call(ON_EVENT, &[value]);
            }
            Err(error) => self.throw(error),
        }
    }

    /// Calls `onMessage`; gives the message back when JavaScript did not take it.
    fn deliver(&self, mut message: Message) -> Option<Message> {
        let env = Env::from_raw(self.env);
        let mut payload_bytes: &[u8] = &[];
        let value = received(&env, &mut message, &self.arrived, Handover::Lend).and_then(|m| {
            if let Either3::B(payload) | Either3::C(ReceivedMessage { payload, .. }) = &m {
                // SAFETY: the Buffer's memory stays valid while its value lives, which is
                // until this scope ends; it is read below only within it.
                payload_bytes =
                    unsafe { std::slice::from_raw_parts(payload.as_ptr(), payload.len()) };
            }
            // SAFETY: converting a value of `env` in the current scope.
            unsafe { Received::to_napi_value(self.env, m) }
        });
        let taken = match value {
            Ok(value) => self
                .call(ON_MESSAGE, &[value])
                .is_some_and(|taken| self.boolean(taken)),
            Err(error) => {
                self.throw(error);
                false
            }
        };
        if taken {
            return None;
        }
        if message.payload.is_empty() && !payload_bytes.is_empty() {
            message.payload = Payload::from(payload_bytes.to_vec());
        }
        Some(message)
    }

    fn boolean(&self, value: sys::napi_value) -> bool {
        let mut result = false;
        // SAFETY: `value` is the handler's return value in the current scope.
        let status = unsafe { sys::napi_get_value_bool(self.env, value, &mut result) };
        status == sys::Status::napi_ok && result
    }

    /// Calls handler `index` with `args`; its result, unless it threw or is gone.
    fn call(&self, index: usize, args: &[sys::napi_value]) -> Option<sys::napi_value> {
        if self.closing.get() {
            return None;
        }
        let env = self.env;
        let mut function = ptr::null_mut();
        // SAFETY: the reference is live until `close`, which has not run (checked above).
        let status =
            unsafe { sys::napi_get_reference_value(env, self.handlers[index], &mut function) };
        if status != sys::Status::napi_ok || function.is_null() {
            // The object that handled events was collected: nobody can take them.
            self.close();
            return None;
        }
        let mut receiver = ptr::null_mut();
        // SAFETY: on the JavaScript thread inside a handle scope; the out pointer is valid.
        if unsafe { sys::napi_get_global(env, &mut receiver) } != sys::Status::napi_ok {
            report_exception(env);
            return None;
        }
        let mut result = ptr::null_mut();
        // SAFETY: as above; `context` is live until `close`. napi_make_callback runs queued
        // microtasks after the call when it is the outermost callback, so code awaiting a
        // receive runs before the next event.
        let status = unsafe {
            sys::napi_make_callback(
                env,
                self.context,
                receiver,
                function,
                args.len(),
                args.as_ptr(),
                &mut result,
            )
        };
        if status == sys::Status::napi_ok {
            Some(result)
        } else {
            report_exception(env);
            None
        }
    }

    fn throw(&self, error: napi::Error) {
        // SAFETY: `env` is live; throwing then reporting makes the failure an uncaught
        // exception instead of an event lost without a trace.
        unsafe { napi::JsError::from(error).throw_into(self.env) };
        report_exception(self.env);
    }

    /// Re-arms the backend for what the core waits for now.
    fn update(&self) {
        if self.closing.get() {
            return;
        }
        self.watch(self.target.interest(), self.target.awaited());
    }

    /// Has the backend wait for `interest` and holds the endpoint while `awaited`.
    fn watch(&self, interest: Interest, awaited: bool) {
        let watched = match self.backend.borrow().as_ref() {
            Some(backend) => backend.watch(interest),
            None => Ok(()),
        };
        if let Err(error) = watched {
            if let Target::Endpoint(_) = &self.target {
                self.event(EndpointEvent::Closed {
                    error: ErrorInfo::from(&error),
                });
            }
            self.close();
            return;
        }
        self.hold_while(awaited);
    }

    /// Something JavaScript waits for that the core does not know about.
    pub fn hold(&self, waiting: bool) {
        self.js_hold.set(waiting);
        self.refresh_hold();
    }

    /// Whether waiting keeps the event loop alive (`ref()`/`unref()`).
    pub fn set_user_ref(&self, referenced: bool) {
        self.user_ref.set(referenced);
        self.refresh_hold();
    }

    /// While the application waits for something, handlers are held strongly (the object
    /// cannot be collected) and, unless unref'ed, the loop stays alive.
    fn refresh_hold(&self) {
        self.hold_while(self.target.awaited());
    }

    /// [`Core::refresh_hold`] with the core's `awaited` already asked.
    fn hold_while(&self, awaited: bool) {
        if self.closing.get() {
            return;
        }
        let strong = self.js_hold.get() || awaited;
        if self.strong.replace(strong) != strong {
            for &handler in &self.handlers {
                let mut count = 0;
                let status = if strong {
                    // SAFETY: the references are live until `close` (not yet run).
                    unsafe { sys::napi_reference_ref(self.env, handler, &mut count) }
                } else {
                    // SAFETY: as above.
                    unsafe { sys::napi_reference_unref(self.env, handler, &mut count) }
                };
                if status != sys::Status::napi_ok {
                    // A reference that cannot change strength leaves the endpoint either
                    // collectable while awaited or kept alive while idle; neither is
                    // safe to continue with, so stop driving it.
                    self.close();
                    return;
                }
            }
        }
        self.set_ref(strong && self.user_ref.get());
    }

    fn set_ref(&self, referenced: bool) {
        if self.referenced.replace(referenced) != referenced
            && let Some(backend) = self.backend.borrow().as_ref()
        {
            backend.set_ref(referenced);
        }
    }

    /// Stops driving: the handlers are let go and the backend is closed. Idempotent.
    pub fn close(&self) {
        if self.closing.replace(true) {
            return;
        }
        for &handler in &self.handlers {
            // SAFETY: each reference was created in `env` and is deleted exactly once, here.
            after_teardown(unsafe { sys::napi_delete_reference(self.env, handler) });
        }
        // SAFETY: created in `env` by `start`, destroyed exactly once, here.
        after_teardown(unsafe { sys::napi_async_destroy(self.env, self.context) });
        if let Some(backend) = self.backend.borrow().as_ref() {
            backend.close();
        }
    }

    /// The backend has stopped for good: the cleanup hook is no longer needed.
    pub fn backend_closed(&self) {
        let hook = self.hook.replace(ptr::null_mut());
        if !hook.is_null() {
            // SAFETY: `hook` is this core's cleanup hook, removed exactly once (here). If
            // the environment is tearing down, removing it tells Node our cleanup finished.
            after_teardown(unsafe { sys::napi_remove_async_cleanup_hook(hook) });
        }
    }
}

/// Hands a JavaScript exception thrown by a handler to the runtime's
/// `uncaughtException` machinery, as an exception thrown by any other event-loop callback
/// would be.
fn report_exception(env: sys::napi_env) {
    if let Some(error) = crate::error::take_exception(env) {
        // SAFETY: `error` is the exception just taken, a value of `env`; handing it to the
        // runtime's uncaught-exception handling cannot itself be reported further.
        after_teardown(unsafe { sys::napi_fatal_exception(env, error) });
    }
}

unsafe extern "C" fn noop(_env: sys::napi_env, _info: sys::napi_callback_info) -> sys::napi_value {
    ptr::null_mut()
}

/// A JavaScript function that does nothing, to find out whether the environment still
/// runs script ([`runs_javascript`]); `None` if it cannot even be made.
pub fn noop_function(env: sys::napi_env) -> Option<sys::napi_value> {
    let mut function = ptr::null_mut();
    let name = "shmlinkProbe";
    // SAFETY: `name` points at `name.len()` bytes of UTF-8; `noop` ignores its arguments.
    let status = unsafe {
        sys::napi_create_function(
            env,
            name.as_ptr().cast(),
            name.len() as isize,
            Some(noop),
            ptr::null_mut(),
            &mut function,
        )
    };
    (status == sys::Status::napi_ok).then_some(function)
}

/// Whether `env` still runs script: false once the environment is terminating, which
/// leaves the termination pending for V8 to finish unwinding the thread.
pub fn runs_javascript(env: sys::napi_env, function: sys::napi_value) -> bool {
    let mut receiver = ptr::null_mut();
    // SAFETY: on the environment's thread, inside the blocking call's handle scope.
    if unsafe { sys::napi_get_global(env, &mut receiver) } != sys::Status::napi_ok {
        return false;
    }
    let mut result = ptr::null_mut();
    // SAFETY: `function` is a live function of `env` made by `noop_function` in the same
    // call; it runs no user code.
    let status =
        unsafe { sys::napi_call_function(env, receiver, function, 0, ptr::null(), &mut result) };
    status == sys::Status::napi_ok
}
