//! The libuv wake-up backend: one poll handle per socket, on the environment's own
//! event loop (Node and Electron). All of the binding's libuv calls are here.
//!
//! libuv tells us when a socket is readable or writable and the driver runs on the
//! JavaScript thread itself; no thread and no threadpool task is involved. Node exports
//! the libuv symbols to addons (`doc/api/addons.md`), so they are declared here and
//! resolved when the addon loads. Runtimes without them (Bun, Deno) never reach this
//! module: the backend is chosen before any libuv call (`backend.rs`).
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::ptr;
use std::rc::Rc;

use napi::sys;
use shmlink::Interest;

use crate::driver::{Backend, Core};
use crate::error::check;

/// `UV_POLL` in `uv_handle_type`.
const UV_POLL: c_int = 8;
/// `uv_poll_event` bits.
const UV_READABLE: c_int = 1;
const UV_WRITABLE: c_int = 2;
const UV_DISCONNECT: c_int = 4;

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

/// A poll handle watching one socket for a driver.
pub struct UvPoll {
    handle: *mut c_void,
    events: std::cell::Cell<c_int>,
}

impl UvPoll {
    /// Starts a handle for `fd` on the loop of `env`. The handle holds a strong reference
    /// to `core` until its close callback, so the socket outlives every callback.
    pub fn start(env: sys::napi_env, fd: c_int, core: &Rc<Core>) -> shmlink::Result<UvPoll> {
        const OP: &str = "watch";
        let mut event_loop = ptr::null_mut();
        // SAFETY: `env` is the environment of the current call; the out pointer is valid.
        check(OP, "napi_get_uv_event_loop", unsafe {
            sys::napi_get_uv_event_loop(env, &mut event_loop)
        })?;
        let handle = allocate_handle();
        // SAFETY: `handle` is zeroed memory of uv_handle_size(UV_POLL) bytes; `event_loop`
        // is this environment's loop; `fd` is the socket `core` owns, which outlives the
        // handle because the handle holds `core` until its close callback.
        let status = unsafe { uv_poll_init(event_loop, handle, fd) };
        if status != 0 {
            // SAFETY: the handle was never initialized, so libuv does not know it.
            unsafe { free_handle(handle) };
            return Err(shmlink::Error::new(
                shmlink::ErrorKind::Runtime,
                OP,
                format!("uv_poll_init failed (libuv error {status})"),
            ));
        }
        let data = Rc::into_raw(Rc::clone(core)) as *mut c_void;
        // SAFETY: `data` is the first, pointer-sized field of uv_handle_t.
        unsafe { handle.cast::<*mut c_void>().write(data) };
        Ok(UvPoll {
            handle,
            events: std::cell::Cell::new(0),
        })
    }
}

impl Backend for UvPoll {
    fn watch(&self, interest: Interest) -> shmlink::Result<()> {
        let mut events = 0;
        if interest.readable {
            events |= UV_READABLE | UV_DISCONNECT;
        }
        if interest.writable {
            events |= UV_WRITABLE;
        }
        if self.events.replace(events) == events {
            return Ok(());
        }
        let status = if events == 0 {
            // SAFETY: the handle is initialized and not closed (the driver stops calling
            // its backend once closing).
            unsafe { uv_poll_stop(self.handle) }
        } else {
            // SAFETY: as above; uv_poll_start replaces the events of an active handle.
            unsafe { uv_poll_start(self.handle, events, on_poll) }
        };
        if status == 0 {
            Ok(())
        } else {
            Err(shmlink::Error::new(
                shmlink::ErrorKind::Runtime,
                "watch",
                format!("the event loop cannot watch the socket (libuv error {status})"),
            ))
        }
    }

    fn closes_on_teardown(&self) -> bool {
        true
    }

    fn set_ref(&self, referenced: bool) {
        if referenced {
            // SAFETY: the handle is initialized and not closed.
            unsafe { uv_ref(self.handle) };
        } else {
            // SAFETY: the handle is initialized and not closed.
            unsafe { uv_unref(self.handle) };
        }
    }

    fn close(&self) {
        // SAFETY: the handle is initialized; stopping a stopped handle does nothing, and
        // uv_poll_stop cannot fail on an initialized handle (it always returns 0).
        unsafe { uv_poll_stop(self.handle) };
        // SAFETY: the handle is initialized and this is its only close (the driver calls
        // `close` once); `on_close` frees it.
        unsafe { uv_close(self.handle, on_close) };
    }
}

unsafe extern "C" fn on_poll(handle: *mut c_void, status: c_int, events: c_int) {
    // SAFETY: `data`, the first field of the handle, holds the pointer `UvPoll::start`
    // wrote there.
    let data = unsafe { handle.cast::<*const Core>().read() };
    // SAFETY: `data` is an `Rc<Core>` the handle owns until `on_close`, which libuv runs
    // after the last poll callback.
    let core = unsafe { &*data };
    // libuv reports a socket error (POLLERR: the peer closed with data of ours unread)
    // as a failed poll and stops the handle. Reading tells what happened and delivers
    // whatever the peer sent first; the driver then watches anew.
    let failed = status < 0;
    let ready = if failed {
        Interest::READABLE
    } else {
        Interest {
            readable: events & (UV_READABLE | UV_DISCONNECT) != 0,
            writable: events & UV_WRITABLE != 0,
        }
    };
    core.on_ready(ready, failed);
}

unsafe extern "C" fn on_close(handle: *mut c_void) {
    // SAFETY: `data`, the first field of the handle, holds the pointer `UvPoll::start`
    // wrote there.
    let data = unsafe { handle.cast::<*const Core>().read() };
    // SAFETY: `data` is the strong reference `UvPoll::start` leaked; this is the last
    // callback libuv makes for the handle, so the reference is taken back once.
    let core = unsafe { Rc::from_raw(data) };
    core.backend_closed();
    drop(core);
    // SAFETY: libuv is done with the handle (this is its close callback).
    unsafe { free_handle(handle) };
}
