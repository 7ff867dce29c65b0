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

/// A check a blocking call makes while it waits: whether the JavaScript environment is
/// being torn down (a worker thread was terminated), so the call must give up.
pub fn interrupt_check(env: sys::napi_env) -> impl FnMut() -> bool {
    let _ = env;
    || false
}
