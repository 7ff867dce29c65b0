//! Region memory as JavaScript `ArrayBuffer`s, without copying.
//!
//! Each mapping is exposed as exactly one external `ArrayBuffer`, whose finalizer owns
//! an `Arc<Mapping>`: the memory stays mapped until V8 has let the buffer go, even after
//! the `Region` was closed. Closing or transferring a region detaches its buffer, so old
//! views read as empty instead of touching memory the peer now owns.
//!
//! Runtimes with V8's memory cage (Electron ≥ 21) refuse external buffers with
//! `napi_no_external_buffers_allowed`; that status is detected, never papered over with a
//! silent copy, because writes to a copy would not reach the peer.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use napi::bindgen_prelude::Unknown;
use napi::sys;
use shmlink::Mapping;

/// Why an external buffer could not be made.
pub enum ExposeError {
    /// The runtime forbids external buffers (V8 sandbox / memory cage).
    NotAllowed,
    /// Any other Node-API failure, with its status.
    Failed(sys::napi_status),
}

unsafe extern "C" fn release_mapping(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Box<Arc<Mapping>>` leaked in `expose`, handed to exactly one
    // buffer whose finalizer runs once; taking the box back ends that buffer's share.
    drop(unsafe { Box::from_raw(hint.cast::<Arc<Mapping>>()) });
}

/// Creates an `ArrayBuffer` over `mapping`'s memory.
pub fn expose<'env>(
    env: &'env napi::Env,
    mapping: Arc<Mapping>,
) -> Result<Unknown<'env>, ExposeError> {
    let env_raw = env.raw();
    let data = mapping.as_ptr().cast::<c_void>();
    let len = mapping.len();
    let hint = Box::into_raw(Box::new(mapping)).cast::<c_void>();
    let mut buffer = ptr::null_mut();
    // SAFETY: `data..data + len` is a live mapping kept alive by `hint` until the
    // finalizer runs; nothing else frees or reuses it meanwhile (the Arc), and the
    // region's size never changes (sealed), so every byte V8 may touch stays mapped.
    let status = unsafe {
        sys::napi_create_external_arraybuffer(
            env_raw,
            data,
            len,
            Some(release_mapping),
            hint,
            &mut buffer,
        )
    };
    match status {
        // SAFETY: `buffer` is the ArrayBuffer Node just created in `env`.
        sys::Status::napi_ok => Ok(unsafe { Unknown::from_raw_unchecked(env_raw, buffer) }),
        sys::Status::napi_no_external_buffers_allowed | sys::Status::napi_invalid_arg => {
            // SAFETY: on these statuses Node returns before taking the finalizer, so the
            // box is still ours and is reclaimed exactly once.
            drop(unsafe { Box::from_raw(hint.cast::<Arc<Mapping>>()) });
            Err(if status == sys::Status::napi_no_external_buffers_allowed {
                ExposeError::NotAllowed
            } else {
                ExposeError::Failed(status)
            })
        }
        // Whether Node registered the finalizer is unknown on other failures; keeping
        // the mapping alive (a leak on a failure path) is the memory-safe choice.
        other => Err(ExposeError::Failed(other)),
    }
}

/// Detaches `buffer`: every view of it reads as length 0 from now on. Returns the
/// memory it pointed at (null if it was detached already).
pub fn detach(
    env: sys::napi_env,
    buffer: sys::napi_value,
) -> Result<*mut c_void, sys::napi_status> {
    let mut is_arraybuffer = false;
    // SAFETY: `buffer` is a value of `env` passed in by the current call.
    unsafe { sys::napi_is_arraybuffer(env, buffer, &mut is_arraybuffer) };
    if !is_arraybuffer {
        return Err(sys::Status::napi_arraybuffer_expected);
    }
    let mut data = ptr::null_mut();
    let mut len = 0;
    // SAFETY: `buffer` is an ArrayBuffer of `env` (checked above); the out pointers are valid.
    unsafe { sys::napi_get_arraybuffer_info(env, buffer, &mut data, &mut len) };
    // SAFETY: as above; detaching an already detached buffer is a no-op in V8.
    match unsafe { sys::napi_detach_arraybuffer(env, buffer) } {
        sys::Status::napi_ok => Ok(if len == 0 { ptr::null_mut() } else { data }),
        other => Err(other),
    }
}

/// Whether this runtime accepts external buffers, found by asking it for one.
pub fn external_buffers_allowed(env: sys::napi_env) -> bool {
    let probe = Box::into_raw(Box::new(0u8));
    let mut buffer = ptr::null_mut();
    // SAFETY: `probe` is one live heap byte, freed by `free_probe` when V8 lets the
    // buffer go; the buffer is detached before any script can see it.
    let status = unsafe {
        sys::napi_create_external_arraybuffer(
            env,
            probe.cast(),
            1,
            Some(free_probe),
            probe.cast(),
            &mut buffer,
        )
    };
    if status == sys::Status::napi_ok {
        // Detaching can only fail for a non-ArrayBuffer, which this is not.
        let _ = detach(env, buffer);
        true
    } else {
        if status == sys::Status::napi_no_external_buffers_allowed {
            // SAFETY: Node refused before taking the finalizer; the byte is still ours.
            drop(unsafe { Box::from_raw(probe) });
        }
        false
    }
}

unsafe extern "C" fn free_probe(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the byte boxed in `external_buffers_allowed`, finalized once.
    drop(unsafe { Box::from_raw(data.cast::<u8>()) });
}
