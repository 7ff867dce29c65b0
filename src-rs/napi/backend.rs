//! The wake-up backend, chosen once per JavaScript environment before any libuv call:
//! libuv poll handles where the runtime has them (Node, Electron), a watching thread where
//! it does not (Bun, whose `uv_poll_init` panics; Deno, whose poll handles never fire).
//! `SHMLINK_WAKEUP=thread` or `=uv` overrides the choice (the tests run the thread backend
//! on Node too, so both pass the same suite).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ptr;
use std::rc::Rc;

use napi::sys;

use crate::driver::{Backend, Core};
use crate::thread::ThreadWatch;
use crate::uv::UvPoll;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uv,
    Thread,
}

thread_local! {
    static CHOSEN: Cell<Option<Kind>> = const { Cell::new(None) };
}

/// Whether the runtime's global object has a property `name` (`Bun`, `Deno`).
fn has_global(env: sys::napi_env, name: &std::ffi::CStr) -> bool {
    let mut global = ptr::null_mut();
    // SAFETY: on the environment's thread, inside a call; the out pointer is valid.
    if unsafe { sys::napi_get_global(env, &mut global) } != sys::Status::napi_ok {
        return false;
    }
    let mut present = false;
    // SAFETY: `global` is a live object of `env`; `name` is NUL-terminated.
    let status = unsafe { sys::napi_has_named_property(env, global, name.as_ptr(), &mut present) };
    status == sys::Status::napi_ok && present
}

fn choose(env: sys::napi_env) -> Kind {
    match std::env::var("SHMLINK_WAKEUP").as_deref() {
        Ok("thread") => return Kind::Thread,
        Ok("uv") => return Kind::Uv,
        _ => {}
    }
    if has_global(env, c"Bun") || has_global(env, c"Deno") {
        Kind::Thread
    } else {
        Kind::Uv
    }
}

/// The name of the backend this environment uses: `"uv"` or `"thread"`.
pub fn name(env: sys::napi_env) -> &'static str {
    match kind(env) {
        Kind::Uv => "uv",
        Kind::Thread => "thread",
    }
}

fn kind(env: sys::napi_env) -> Kind {
    CHOSEN.with(|chosen| {
        let kind = chosen.get().unwrap_or_else(|| choose(env));
        chosen.set(Some(kind));
        kind
    })
}

/// Starts the backend for descriptor `fd` of a driver.
pub fn start(env: sys::napi_env, fd: i32, core: &Rc<Core>) -> shmlink::Result<Box<dyn Backend>> {
    Ok(match kind(env) {
        Kind::Uv => Box::new(UvPoll::start(env, fd, core)?),
        Kind::Thread => Box::new(ThreadWatch::start(env, fd, core)?),
    })
}

/// A check a blocking call makes every few milliseconds while it waits: whether the
/// JavaScript environment is being torn down (`worker.terminate()` was called), so the
/// call must give up and let the thread unwind. Termination cannot reach a thread blocked
/// in a system call; calling into JavaScript tells, because V8 refuses to run script once
/// termination is requested.
///
/// The probe function is made the first time the check runs: a call that is answered
/// within the first slice (the common case) costs nothing for it.
pub fn interrupt_check(env: sys::napi_env) -> impl FnMut() -> bool {
    let mut probe = None;
    move || match *probe.get_or_insert_with(|| crate::driver::noop_function(env)) {
        Some(function) => !crate::driver::runs_javascript(env, function),
        None => false,
    }
}
