//! Core errors as JavaScript `Error`s with a stable `code` (`docs/ERRORS.md`).

use napi::Env;
use napi::bindgen_prelude::{JsValue, Object, Unknown};
use shmlink::ErrorKind;

/// The stable code of a core error kind.
pub fn code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Closed => "ERR_SHMLINK_CLOSED",
        ErrorKind::PeerClosed => "ERR_SHMLINK_PEER_CLOSED",
        ErrorKind::WouldBlock => "ERR_SHMLINK_WOULD_BLOCK",
        ErrorKind::TimedOut => "ERR_SHMLINK_TIMED_OUT",
        ErrorKind::Protocol => "ERR_SHMLINK_PROTOCOL_VIOLATION",
        ErrorKind::Incompatible => "ERR_SHMLINK_PEER_INCOMPATIBLE",
        ErrorKind::RegionUnsealed => "ERR_SHMLINK_REGION_UNSEALED",
        ErrorKind::RegionSizeMismatch => "ERR_SHMLINK_REGION_SIZE_MISMATCH",
        ErrorKind::RegionNotMemfd => "ERR_SHMLINK_REGION_NOT_MEMFD",
        ErrorKind::RegionTransferred => "ERR_SHMLINK_REGION_TRANSFERRED",
        ErrorKind::RegionFrozen => "ERR_SHMLINK_REGION_FROZEN",
        ErrorKind::RegionBusy => "ERR_SHMLINK_REGION_BUSY",
        ErrorKind::TooManyRegions => "ERR_SHMLINK_TOO_MANY_REGIONS",
        ErrorKind::PayloadTooLarge => "ERR_SHMLINK_PAYLOAD_TOO_LARGE",
        ErrorKind::FdsTruncated => "ERR_SHMLINK_FDS_TRUNCATED",
        ErrorKind::InvalidArgument => "ERR_SHMLINK_INVALID_ARG",
        ErrorKind::Unsupported => "ERR_SHMLINK_UNSUPPORTED",
        _ => "ERR_SHMLINK_OS",
    }
}

/// A region handle used after `close()`.
pub const REGION_CLOSED: &str = "ERR_SHMLINK_REGION_CLOSED";
/// `bytes` asked for in a runtime that refuses external buffers.
pub const ZERO_COPY_UNAVAILABLE: &str = "ERR_SHMLINK_ZERO_COPY_UNAVAILABLE";
/// An argument the binding itself refuses.
pub const INVALID_ARG: &str = "ERR_SHMLINK_INVALID_ARG";

/// An `Error` object with `code`, and `syscall`/`errno` when a system call failed.
pub fn object<'env>(
    env: &'env Env,
    code: &str,
    message: &str,
    syscall: Option<&str>,
    errno: Option<i32>,
) -> napi::Result<Object<'env>> {
    let mut error = env.create_error(napi::Error::from_reason(message))?;
    error.set("code", code)?;
    if let Some(syscall) = syscall {
        error.set("syscall", syscall)?;
    }
    if let Some(errno) = errno {
        error.set("errno", errno)?;
    }
    Ok(error)
}

/// The JavaScript form of a core error.
pub fn to_js<'env>(env: &'env Env, error: &shmlink::Error) -> napi::Result<Unknown<'env>> {
    let errno = error.errno();
    let syscall = errno.map(|_| error.op());
    Ok(object(env, code(error.kind()), &error.to_string(), syscall, errno)?.to_unknown())
}

/// A core error, thrown from a binding method.
pub fn throw(env: &Env, error: shmlink::Error) -> napi::Error {
    match to_js(env, &error) {
        Ok(value) => napi::Error::from(value),
        Err(e) => e,
    }
}

/// An error with one of the binding's own codes, thrown from a binding method.
pub fn throw_code(env: &Env, code: &str, message: &str) -> napi::Error {
    match object(env, code, message, None, None) {
        Ok(value) => napi::Error::from(value.to_unknown()),
        Err(e) => e,
    }
}
