//! Core errors as JavaScript values. Every error that reaches JavaScript is a core
//! [`shmlink::Error`], so it carries one of the codes `docs/ERRORS.md` lists; the code
//! and the wording come from the core.
#![allow(unsafe_code)]

use napi::bindgen_prelude::{JsValue, Object};
use napi::{Env, sys};
use napi_derive::napi;
use shmlink::ErrorKind;

/// An error as plain data, for events: `index.ts` turns it into an `Error`.
#[napi(object)]
pub struct ErrorInfo {
    /// One of the `ERR_SHMLINK_*` codes.
    pub code: String,
    pub message: String,
    /// The system call that failed, when one did.
    pub syscall: Option<String>,
    /// Its error number.
    pub errno: Option<i32>,
}

impl From<&shmlink::Error> for ErrorInfo {
    fn from(error: &shmlink::Error) -> Self {
        ErrorInfo {
            code: error.code().to_owned(),
            message: error.to_string(),
            syscall: error.syscall().map(str::to_owned),
            errno: error.errno(),
        }
    }
}

/// An `Error` object with `code`, and `syscall`/`errno` when a system call failed.
fn to_js<'env>(env: &'env Env, error: &shmlink::Error) -> napi::Result<Object<'env>> {
    let mut object = env.create_error(napi::Error::from_reason(error.to_string()))?;
    object.set("code", error.code())?;
    if let Some(syscall) = error.syscall() {
        object.set("syscall", syscall)?;
    }
    if let Some(errno) = error.errno() {
        object.set("errno", errno)?;
    }
    Ok(object)
}

/// A core error, thrown from a binding method.
pub fn throw(env: &Env, error: shmlink::Error) -> napi::Error {
    match to_js(env, &error) {
        Ok(value) => napi::Error::from(value.to_unknown()),
        Err(e) => e,
    }
}

/// A Node-API call that did not succeed, as a core error of kind `Runtime`.
pub fn fail(op: &'static str, call: &'static str, status: sys::napi_status) -> shmlink::Error {
    shmlink::Error::new(
        ErrorKind::Runtime,
        op,
        format!("{call} failed (napi status {status}); the runtime refused the call"),
    )
}

/// The status of a Node-API call made while letting something go, where no caller is
/// left to tell: such a call fails only when the environment itself is going away, which
/// releases the resource anyway. Debug builds check that assumption.
pub fn after_teardown(status: sys::napi_status) {
    debug_assert!(
        matches!(
            status,
            sys::Status::napi_ok | sys::Status::napi_closing | sys::Status::napi_pending_exception
        ),
        "Node-API teardown call failed with status {status}"
    );
}

/// `Ok` when a Node-API call succeeded.
pub fn check(
    op: &'static str,
    call: &'static str,
    status: sys::napi_status,
) -> shmlink::Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(fail(op, call, status))
    }
}

/// The pending exception of `env`, cleared; `None` when none is pending.
pub fn take_exception(env: sys::napi_env) -> Option<sys::napi_value> {
    let mut pending = false;
    // SAFETY: `env` is live (we are on its thread); the out pointer is valid.
    let status = unsafe { sys::napi_is_exception_pending(env, &mut pending) };
    if status != sys::Status::napi_ok || !pending {
        return None;
    }
    let mut error = std::ptr::null_mut();
    // SAFETY: an exception is pending; taking it clears it.
    let status = unsafe { sys::napi_get_and_clear_last_exception(env, &mut error) };
    (status == sys::Status::napi_ok).then_some(error)
}
