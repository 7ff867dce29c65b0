//! The receive path on Node's event loop: one libuv poll handle per socket.
//!
//! libuv tells us when a socket is readable or writable; we read on the JavaScript
//! thread itself and call back into JavaScript through `napi_make_callback`, so the
//! microtasks that code awaiting `recv()` queued run before the callback returns. No
//! thread and no threadpool task is involved. Node exports the libuv symbols to addons
//! (`doc/api/addons.md`), so they are declared here and resolved when the addon loads.
//!
//! Every handle is closed by whichever comes first: `close()`, the owner being
//! garbage-collected, or the environment's async cleanup hook (a worker thread that
//! terminates), so no environment ends with an open handle.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::os::fd::{AsFd, AsRawFd};
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;

use napi::sys;

/// `UV_POLL` in `uv_handle_type`.
const UV_POLL: c_int = 8;
/// `uv_poll_event` bits.
pub const READABLE: c_int = 1;
pub const WRITABLE: c_int = 2;
pub const DISCONNECT: c_int = 4;
/// The most messages one readiness callback delivers before yielding to the loop.
const BATCH: usize = 64;

unsafe extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_poll_init(event_loop: *mut sys::uv_loop_s, handle: *mut c_void, fd: c_int) -> c_int;
    fn uv_poll_start(
        handle: *mut c_void,
        events: c_int,
        callback: unsafe extern "C" fn(*mut c_void, c_int, c_int),
    ) -> c_int;
    fn uv_poll_stop(handle: *mut c_void) -> c_int;
    fn uv_close(handle: *mut c_void, callback: unsafe extern "C" fn(*mut c_void));
    fn uv_ref(handle: *mut c_void);
    fn uv_unref(handle: *mut c_void);
}

/// What a poll handle watches, and what it does when the socket is ready.
pub enum Source {
    /// An endpoint: readable means messages (or end-of-file), writable means room.
    Endpoint(Arc<shmlink::Endpoint>),
    /// A listener: readable means connections to accept.
    Listener(Arc<shmlink::Listener>),
}

/// What a poll handle has to tell JavaScript.
pub enum Event {
    /// A message arrived.
    Message(shmlink::Message),
    /// A listener accepted a connection.
    Connection(Box<shmlink::Endpoint>),
    /// The connection ended: end-of-file, a protocol violation or an OS error.
    Failure(shmlink::Error),
    /// The socket has room again.
    Writable,
    /// The peer's HELLO arrived: sends can proceed.
    Handshake,
}

/// Turns events into the JavaScript callback's arguments. Implemented by the binding,
/// which owns the conversions; called on the loop thread with a handle scope open.
pub trait Deliver {
    /// The arguments for `event`.
    fn arguments(&self, env: &napi::Env, event: Event) -> napi::Result<Vec<sys::napi_value>>;
}

struct Shared {
    env: sys::napi_env,
    handle: *mut c_void,
    source: Source,
    deliver: Box<dyn Deliver>,
    callback: sys::napi_ref,
    context: sys::napi_async_context,
    hook: Cell<sys::napi_async_cleanup_hook_handle>,
    events: Cell<c_int>,
    referenced: Cell<bool>,
    closing: Cell<bool>,
    handshake_reported: Cell<bool>,
}

/// A poll handle, owned by the JavaScript object whose socket it watches.
pub struct Poller {
    shared: Rc<Shared>,
}

/// Memory for one `uv_poll_t`, aligned for any of its fields.
fn allocate_handle() -> *mut c_void {
    // SAFETY: uv_handle_size only reads its argument; UV_POLL is a valid handle type.
    let bytes = unsafe { uv_handle_size(UV_POLL) };
    let words = bytes.div_ceil(std::mem::size_of::<u64>());
    Box::into_raw(vec![0u64; words].into_boxed_slice()).cast::<c_void>()
}

/// Frees what `allocate_handle` returned.
///
/// # Safety
/// - `handle` came from `allocate_handle` and libuv no longer uses it (its close
///   callback has run, or it was never initialized).
unsafe fn free_handle(handle: *mut c_void) {
    // SAFETY: uv_handle_size is a pure query.
    let words = unsafe { uv_handle_size(UV_POLL) }.div_ceil(std::mem::size_of::<u64>());
    let slice = ptr::slice_from_raw_parts_mut(handle.cast::<u64>(), words);
    // SAFETY: `slice` is exactly the boxed slice `allocate_handle` leaked (the caller
    // guarantees it), and nothing references it any more.
    drop(unsafe { Box::from_raw(slice) });
}

fn check(status: sys::napi_status, what: &str) -> napi::Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(napi::Error::from_reason(format!(
            "{what} failed (napi status {status})"
        )))
    }
}

impl Poller {
    /// Starts watching `source` on the loop of `env`, calling `callback(...)` with the
    /// arguments `deliver` builds. The handle starts unreferenced: it keeps the process
    /// alive only while `set_ref(true)`.
    pub fn start(
        env: sys::napi_env,
        source: Source,
        deliver: Box<dyn Deliver>,
        callback: sys::napi_value,
        resource: sys::napi_value,
    ) -> napi::Result<Poller> {
        let raw_fd = match &source {
            Source::Endpoint(e) => e.as_fd().as_raw_fd(),
            Source::Listener(l) => l.as_fd().as_raw_fd(),
        };
        let mut event_loop = ptr::null_mut();
        // SAFETY: `env` is the environment of the current call; the out pointer is valid.
        check(
            unsafe { sys::napi_get_uv_event_loop(env, &mut event_loop) },
            "napi_get_uv_event_loop",
        )?;
        let mut callback_ref = ptr::null_mut();
        // SAFETY: `callback` is a live value of `env`; one strong reference keeps it.
        check(
            unsafe { sys::napi_create_reference(env, callback, 1, &mut callback_ref) },
            "napi_create_reference",
        )?;
        let mut name = ptr::null_mut();
        let label = "shmlink";
        // SAFETY: `label` points at `label.len()` bytes of UTF-8.
        check(
            unsafe {
                sys::napi_create_string_utf8(
                    env,
                    label.as_ptr().cast(),
                    label.len() as isize,
                    &mut name,
                )
            },
            "napi_create_string_utf8",
        )?;
        let mut context = ptr::null_mut();
        // SAFETY: `resource` and `name` are live values of `env`.
        check(
            unsafe { sys::napi_async_init(env, resource, name, &mut context) },
            "napi_async_init",
        )?;
        let handle = allocate_handle();
        // SAFETY: `handle` is zeroed memory of uv_handle_size(UV_POLL) bytes; `event_loop`
        // is this environment's loop; `raw_fd` is the socket `source` owns, which outlives
        // the handle because `Shared` holds `source` until the close callback.
        let status = unsafe { uv_poll_init(event_loop, handle, raw_fd) };
        if status != 0 {
            // SAFETY: the handle was never initialized, so libuv does not know it.
            unsafe { free_handle(handle) };
            return Err(napi::Error::from_reason(format!(
                "uv_poll_init failed ({status})"
            )));
        }
        let shared = Rc::new(Shared {
            env,
            handle,
            source,
            deliver,
            callback: callback_ref,
            context,
            hook: Cell::new(ptr::null_mut()),
            events: Cell::new(0),
            referenced: Cell::new(true),
            closing: Cell::new(false),
            handshake_reported: Cell::new(false),
        });
        // The handle's `data` (the first field of every uv handle) holds one strong
        // reference, given back in `on_close`.
        let data = Rc::into_raw(Rc::clone(&shared)) as *mut c_void;
        // SAFETY: `data` is the first, pointer-sized field of uv_handle_t.
        unsafe { handle.cast::<*mut c_void>().write(data) };
        let mut hook = ptr::null_mut();
        // SAFETY: `data` stays valid until on_close, which removes the hook first.
        let status = unsafe {
            sys::napi_add_async_cleanup_hook(env, Some(on_env_teardown), data, &mut hook)
        };
        shared.hook.set(hook);
        let poller = Poller { shared };
        check(status, "napi_add_async_cleanup_hook").inspect_err(|_| poller.close())?;
        poller.set_ref(false);
        Ok(poller)
    }

    /// Watches for `events` (`READABLE`, `WRITABLE`, `DISCONNECT` bits) from now on.
    pub fn watch(&self, events: c_int) {
        self.shared.watch(events);
    }

    /// Whether the handle keeps the event loop (and the process) alive.
    pub fn set_ref(&self, referenced: bool) {
        let shared = &self.shared;
        if shared.closing.get() || shared.referenced.get() == referenced {
            return;
        }
        shared.referenced.set(referenced);
        // SAFETY: the handle is initialized and not closing (checked above).
        unsafe {
            if referenced {
                uv_ref(shared.handle)
            } else {
                uv_unref(shared.handle)
            }
        }
    }

    /// Stops watching and closes the handle. Idempotent.
    pub fn close(&self) {
        self.shared.close();
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Shared {
    fn watch(&self, events: c_int) {
        if self.closing.get() || self.events.get() == events {
            return;
        }
        self.events.set(events);
        // SAFETY: the handle is initialized and not closing (checked above); uv_poll_start
        // replaces the watched events of an active handle.
        let status = unsafe {
            if events == 0 {
                uv_poll_stop(self.handle)
            } else {
                uv_poll_start(self.handle, events, on_poll)
            }
        };
        if status != 0 {
            self.fail(shmlink::Error::new(
                shmlink::ErrorKind::Os,
                "uv_poll_start",
                format!("the event loop cannot watch the socket (libuv error {status})"),
            ));
        }
    }

    fn close(&self) {
        if self.closing.replace(true) {
            return;
        }
        // SAFETY: `env` is the environment this handle belongs to; the references and
        // the async context were created in it and are released exactly once, here.
        unsafe {
            sys::napi_delete_reference(self.env, self.callback);
            sys::napi_async_destroy(self.env, self.context);
        }
        // SAFETY: the handle is initialized and this is its only close.
        unsafe {
            uv_poll_stop(self.handle);
            uv_close(self.handle, on_close);
        }
    }

    /// Calls the JavaScript callback with `event`; returns its result as a boolean
    /// (`true` when it wants another message now).
    fn call(&self, event: Event) -> bool {
        if self.closing.get() {
            return false;
        }
        let env = self.env;
        let args = match self.deliver.arguments(&napi::Env::from_raw(env), event) {
            Ok(args) => args,
            Err(error) => {
                // SAFETY: `env` is live; throwing and then reporting makes the failure an
                // uncaught exception instead of a message lost without a trace.
                unsafe { napi::JsError::from(error).throw_into(env) };
                report_exception(env);
                return false;
            }
        };
        let mut function = ptr::null_mut();
        let mut receiver = ptr::null_mut();
        let mut result = ptr::null_mut();
        // SAFETY: `callback` is a live strong reference (not closing); the calls run on
        // the loop thread inside the handle scope `on_poll` opened.
        let status = unsafe {
            sys::napi_get_reference_value(env, self.callback, &mut function);
            sys::napi_get_global(env, &mut receiver);
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
        if status != sys::Status::napi_ok {
            report_exception(env);
            return false;
        }
        let mut wants_more = false;
        // SAFETY: `result` is the callback's return value (a JavaScript boolean by the
        // binding's contract; anything else reads as false).
        unsafe { sys::napi_get_value_bool(env, result, &mut wants_more) };
        wants_more
    }

    fn fail(&self, error: shmlink::Error) {
        self.call(Event::Failure(error));
        self.watch(0);
    }

    fn readable(&self) {
        match &self.source {
            Source::Endpoint(endpoint) => {
                self.receive(endpoint);
                if !self.handshake_reported.get()
                    && !self.closing.get()
                    && endpoint.is_handshake_complete()
                {
                    self.handshake_reported.set(true);
                    self.call(Event::Handshake);
                }
            }
            Source::Listener(listener) => {
                for _ in 0..BATCH {
                    if self.closing.get() {
                        return;
                    }
                    match listener.accept() {
                        Ok(endpoint) => {
                            self.call(Event::Connection(Box::new(endpoint)));
                        }
                        Err(e) if e.kind() == shmlink::ErrorKind::WouldBlock => return,
                        Err(e) => return self.fail(e),
                    }
                }
            }
        }
    }

    fn receive(&self, endpoint: &shmlink::Endpoint) {
        for _ in 0..BATCH {
            if self.closing.get() {
                return;
            }
            match endpoint.try_recv() {
                // The callback answers whether someone is waiting for another message
                // already; if not, the next one waits for the next readiness report
                // instead of costing a receive that finds nothing.
                Ok(message) => {
                    if !self.call(Event::Message(message)) {
                        return;
                    }
                }
                Err(e) if e.kind() == shmlink::ErrorKind::WouldBlock => return,
                Err(e) => return self.fail(e),
            }
        }
    }
}

/// Hands a JavaScript exception thrown by our callback to Node's `uncaughtException`
/// machinery, as an exception thrown by any other event-loop callback would be.
fn report_exception(env: sys::napi_env) {
    let mut pending = false;
    // SAFETY: `env` is live (we are in its loop callback).
    unsafe { sys::napi_is_exception_pending(env, &mut pending) };
    if pending {
        let mut error = ptr::null_mut();
        // SAFETY: an exception is pending; taking it clears it before re-raising it.
        unsafe {
            sys::napi_get_and_clear_last_exception(env, &mut error);
            sys::napi_fatal_exception(env, error);
        }
    }
}

unsafe extern "C" fn on_poll(handle: *mut c_void, status: c_int, events: c_int) {
    // SAFETY: `data` was set to an `Rc<Shared>` raw pointer in `Poller::start` and stays
    // valid until `on_close`, which libuv runs after the last poll callback.
    let shared = unsafe { &*(handle.cast::<*const Shared>().read()) };
    if shared.closing.get() {
        return;
    }
    let mut scope = ptr::null_mut();
    // SAFETY: we are on the loop thread of `env`, outside any other scope of ours.
    if unsafe { sys::napi_open_handle_scope(shared.env, &mut scope) } != sys::Status::napi_ok {
        return;
    }
    if status < 0 {
        // libuv reports a socket error (POLLERR: the peer closed with data of ours
        // unread) as a failed poll and stops the handle. Reading tells what happened
        // and delivers whatever the peer sent first; the handle is then restarted.
        let events = shared.events.replace(0);
        shared.watch(events);
        shared.readable();
    } else {
        if events & (READABLE | DISCONNECT) != 0 {
            shared.readable();
        }
        if events & WRITABLE != 0 && !shared.closing.get() {
            shared.call(Event::Writable);
        }
    }
    // SAFETY: `scope` was opened above in this function.
    unsafe { sys::napi_close_handle_scope(shared.env, scope) };
}

unsafe extern "C" fn on_close(handle: *mut c_void) {
    // SAFETY: `data` holds the strong reference `Poller::start` leaked into it; this is
    // the last callback libuv makes for the handle, so the reference is taken back once.
    let shared = unsafe { Rc::from_raw(handle.cast::<*const Shared>().read()) };
    let hook = shared.hook.replace(ptr::null_mut());
    if !hook.is_null() {
        // SAFETY: `hook` is this handle's cleanup hook, removed exactly once (here). If
        // the environment is tearing down, removing it tells Node our cleanup finished.
        unsafe { sys::napi_remove_async_cleanup_hook(hook) };
    }
    drop(shared);
    // SAFETY: libuv is done with the handle (this is its close callback).
    unsafe { free_handle(handle) };
}

unsafe extern "C" fn on_env_teardown(
    _hook: sys::napi_async_cleanup_hook_handle,
    data: *mut c_void,
) {
    // SAFETY: `data` is the `Rc<Shared>` pointer stored in the handle, still alive: the
    // hook is removed in `on_close` before that reference is dropped.
    let shared = unsafe { &*(data as *const Shared) };
    shared.close();
}
