//! The wake-up backend, chosen once for the process: libuv poll handles where the
//! runtime has libuv (Node, Electron). Every backend passes the same driver tests.

use std::rc::Rc;

use napi::sys;

use crate::driver::{Backend, Core};
use crate::uv::UvPoll;

/// Starts the backend for descriptor `fd` of a driver.
pub fn start(env: sys::napi_env, fd: i32, core: &Rc<Core>) -> shmlink::Result<Box<dyn Backend>> {
    Ok(Box::new(UvPoll::start(env, fd, core)?))
}

/// A check a blocking call makes every few milliseconds while it waits: whether the
/// JavaScript environment is being torn down (`worker.terminate()` was called), so the
/// call must give up and let the thread unwind. Termination cannot reach a thread blocked
/// in a system call; calling into JavaScript tells, because V8 refuses to run script once
/// termination is requested.
pub fn interrupt_check(env: sys::napi_env) -> impl FnMut() -> bool {
    let probe = crate::driver::noop_function(env);
    move || match probe {
        Some(function) => !crate::driver::runs_javascript(env, function),
        None => false,
    }
}
