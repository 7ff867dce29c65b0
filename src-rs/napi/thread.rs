//! The thread wake-up backend, for runtimes that implement Node-API but not libuv's poll
//! handles (Bun panics in `uv_poll_init`; Deno's never fire). One background thread per
//! process waits on every watched socket (`shmlink::Watcher`, epoll) and hands readiness to
//! each JavaScript environment through a Node-API threadsafe function; the driver then
//! runs on the JavaScript thread exactly as it does with libuv.
//!
//! A socket is reported once per arming: the thread never spins while JavaScript handles
//! what it reported, and the driver re-arms after every turn (`Backend::watch`).
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::BorrowedFd;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use napi::sys;
use shmlink::{Interest, Watcher};

use crate::driver::{Backend, Core, resource_name};
use crate::error::after_teardown;

/// A threadsafe function, which Node-API lets any thread call.
#[derive(Clone, Copy)]
struct Tsfn(sys::napi_threadsafe_function);

// SAFETY: Node-API documents threadsafe functions as callable from any thread; the handle
// is only used while registered (see `Shared::registrations`), and released on the thread
// that created it.
unsafe impl Send for Tsfn {}

struct Shared {
    watcher: Watcher,
    /// The threadsafe function of each watched socket, by key. The watching thread calls
    /// one only while holding this lock, and a registration is removed under it before its
    /// function is released, so no call can reach a released function.
    registrations: Mutex<HashMap<u64, Tsfn>>,
    next_key: AtomicU64,
}

fn registrations(shared: &Shared) -> MutexGuard<'_, HashMap<u64, Tsfn>> {
    shared
        .registrations
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The process's watching thread, started on first use.
fn shared() -> shmlink::Result<&'static Shared> {
    static SHARED: OnceLock<Result<&'static Shared, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        let watcher = Watcher::new().map_err(|e| e.to_string())?;
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            watcher,
            registrations: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
        }));
        std::thread::Builder::new()
            .name("shmlink-watch".into())
            .spawn(move || watch_forever(shared))
            .map_err(|e| e.to_string())?;
        Ok(shared)
    });
    started.as_ref().copied().map_err(|reason| {
        shmlink::Error::new(
            shmlink::ErrorKind::Runtime,
            "watch",
            format!("the watching thread could not start: {reason}"),
        )
    })
}

fn watch_forever(shared: &'static Shared) {
    let mut ready = Vec::new();
    loop {
        if shared.watcher.wait(&mut ready).is_err() {
            // epoll_wait fails only for a broken epoll descriptor; nothing can be watched
            // any more, and every endpoint's sends and receives report it as they block.
            return;
        }
        let registrations = registrations(shared);
        for &(key, interest) in &ready {
            if let Some(tsfn) = registrations.get(&key) {
                let bits = usize::from(interest.readable) | usize::from(interest.writable) << 1;
                // SAFETY: the function is registered, hence not released (see
                // `registrations`); a non-blocking call only queues `bits`. A full queue
                // or a closing function drops the report: the socket is re-armed by the
                // JavaScript side after its next turn, or is going away.
                let status = unsafe {
                    sys::napi_call_threadsafe_function(
                        tsfn.0,
                        bits as *mut c_void,
                        sys::ThreadsafeFunctionCallMode::nonblocking,
                    )
                };
                let _ = status;
            }
        }
    }
}

/// What a threadsafe function's finalizer lets go of.
struct Finalize {
    key: u64,
    core: Rc<Core>,
}

/// One socket watched by the watching thread for a driver.
pub struct ThreadWatch {
    env: sys::napi_env,
    key: u64,
    fd: i32,
    tsfn: sys::napi_threadsafe_function,
    shared: &'static Shared,
}

impl ThreadWatch {
    /// Starts watching `fd` for the driver `core`; readiness reaches `core` on the
    /// JavaScript thread of `env`.
    pub fn start(env: sys::napi_env, fd: i32, core: &Rc<Core>) -> shmlink::Result<ThreadWatch> {
        const OP: &str = "watch";
        let shared = shared()?;
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        let name = resource_name(env, OP)?;
        let finalize = Box::into_raw(Box::new(Finalize {
            key,
            core: Rc::clone(core),
        }));
        let mut tsfn = ptr::null_mut();
        // SAFETY: no JavaScript function: `deliver` does the work with the context, the
        // driver's core, which `finalize` keeps alive until the function is finalized.
        let status = unsafe {
            sys::napi_create_threadsafe_function(
                env,
                ptr::null_mut(),
                ptr::null_mut(),
                name,
                0,
                1,
                finalize.cast(),
                Some(on_finalize),
                Rc::as_ptr(core) as *mut c_void,
                Some(deliver),
                &mut tsfn,
            )
        };
        if status != sys::Status::napi_ok {
            // SAFETY: the function was not created, so its finalizer never takes the box.
            drop(unsafe { Box::from_raw(finalize) });
            return Err(crate::error::fail(
                OP,
                "napi_create_threadsafe_function",
                status,
            ));
        }
        registrations(shared).insert(key, Tsfn(tsfn));
        let watch = ThreadWatch {
            env,
            key,
            fd,
            tsfn,
            shared,
        };
        // SAFETY: `fd` is the driver's socket, open while the driver watches it (it is
        // removed from the watcher before the driver lets the socket go).
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Err(error) = shared.watcher.add(socket, key) {
            watch.close();
            return Err(error);
        }
        Ok(watch)
    }
}

impl Backend for ThreadWatch {
    fn watch(&self, interest: Interest) -> shmlink::Result<()> {
        // SAFETY: as in `start`: the socket stays open while it is watched.
        let socket = unsafe { BorrowedFd::borrow_raw(self.fd) };
        self.shared.watcher.arm(socket, self.key, interest)
    }

    fn closes_on_teardown(&self) -> bool {
        false
    }

    fn set_ref(&self, referenced: bool) {
        let status = if referenced {
            // SAFETY: the function is live until `close`, and this is its environment's thread.
            unsafe { sys::napi_ref_threadsafe_function(self.env, self.tsfn) }
        } else {
            // SAFETY: as above.
            unsafe { sys::napi_unref_threadsafe_function(self.env, self.tsfn) }
        };
        after_teardown(status);
    }

    fn close(&self) {
        if registrations(self.shared).remove(&self.key).is_some() {
            // SAFETY: as in `start`; removing it before the socket is closed keeps epoll
            // from watching a reused descriptor number.
            self.shared
                .watcher
                .remove(unsafe { BorrowedFd::borrow_raw(self.fd) });
            // SAFETY: no longer registered, so the watching thread cannot call it; this is
            // the only release of the one thread count it was created with.
            after_teardown(unsafe {
                sys::napi_release_threadsafe_function(
                    self.tsfn,
                    sys::ThreadsafeFunctionReleaseMode::release,
                )
            });
        }
    }
}

/// Readiness a threadsafe function carried to the JavaScript thread.
unsafe extern "C" fn deliver(
    env: sys::napi_env,
    _js: sys::napi_value,
    context: *mut c_void,
    data: *mut c_void,
) {
    if env.is_null() {
        // The environment is being torn down; nothing runs any more.
        return;
    }
    // SAFETY: `context` is the driver's core, kept alive by the function's finalizer data.
    let core = unsafe { &*(context as *const Core) };
    let bits = data as usize;
    core.on_ready(
        Interest {
            readable: bits & 1 != 0,
            writable: bits & 2 != 0,
        },
        false,
    );
}

/// A threadsafe function is finalized: released by `close`, or by the runtime when its
/// environment is torn down.
unsafe extern "C" fn on_finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the `Finalize` box made in `start`, finalized once.
    let finalize = unsafe { Box::from_raw(data.cast::<Finalize>()) };
    if let Ok(shared) = shared() {
        registrations(shared).remove(&finalize.key);
    }
    finalize.core.backend_closed();
}
