//! An endpoint's hot calls as plain functions bound to its state.
//!
//! A method call on a napi-rs class instance unwraps the receiver (`napi_unwrap`), checks
//! its type tag (two private-symbol lookups) and registers a native borrow (a global
//! mutex and map) before the method runs. A ring round trip makes four such calls on each
//! side, and a profile of one (`perf record` of `sendSync` + `recvSync` over a ring
//! between two endpoints of one thread) put a third of its time there. A function made
//! with `napi_create_function` carries its endpoint as the callback's `data` instead: no
//! lookup, and nothing JavaScript can forge, since the function is bound to that
//! endpoint when it is made. Each function owns a reference to the endpoint's state,
//! which its finalizer drops, so the state lives as long as the handle or any of them.
//!
//! Attachments come as an array of regions and an optional parallel array of transfer
//! flags: reading them costs an element lookup each, where an object per attachment,
//! converted by napi-rs, cost a property lookup by name each (a string internalized per
//! call) and made a message with a region cost several times one without.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_void};
use std::ptr;
use std::rc::Rc;

use napi::bindgen_prelude::{ClassInstance, FromNapiValue, ToNapiValue};
use napi::{Env, JsError, sys};
use shmlink::{Attach, Bytes};

use crate::error::{check, throw};
use crate::{EndpointState, NativeRegion};

type Body = fn(&Env, &EndpointState, &Args) -> napi::Result<sys::napi_value>;

/// A call's arguments: up to four, missing ones `undefined`, and how many were passed
/// (an attachment list left out costs no type check).
struct Args {
    values: [sys::napi_value; 4],
    count: usize,
}

impl Args {
    /// Argument `i` (`undefined` when missing).
    fn get(&self, i: usize) -> sys::napi_value {
        self.values[i]
    }

    /// Argument `i`, unless the call left it out.
    fn optional(&self, i: usize) -> Option<sys::napi_value> {
        (i < self.count).then(|| self.values[i])
    }
}

/// The `napi_callback` that runs `body` (a [`Body`]) through [`run`].
macro_rules! callback {
    ($body:path) => {{
        unsafe extern "C" fn callback(
            env: sys::napi_env,
            info: sys::napi_callback_info,
        ) -> sys::napi_value {
            // SAFETY: napi calls this only as the callback of a function `create` made.
            unsafe { run(env, info, $body) }
        }
        Some(callback as unsafe extern "C" fn(_, _) -> _)
    }};
}

/// An object holding the endpoint's bound `send`, `sendSync`, `recv` and `recvSync`.
pub fn create(env: sys::napi_env, state: &Rc<EndpointState>) -> shmlink::Result<sys::napi_value> {
    const OP: &str = "Endpoint";
    let mut object = ptr::null_mut();
    // SAFETY: called on the JavaScript thread of `env`, inside a binding call.
    check(OP, "napi_create_object", unsafe {
        sys::napi_create_object(env, &mut object)
    })?;
    let calls: [(&CStr, sys::napi_callback); 4] = [
        (c"send", callback!(send)),
        (c"sendSync", callback!(send_sync)),
        (c"recv", callback!(recv)),
        (c"recvSync", callback!(recv_sync)),
    ];
    for (name, callback) in calls {
        let data = Rc::into_raw(Rc::clone(state)).cast_mut().cast::<c_void>();
        let mut function = ptr::null_mut();
        // SAFETY: `name` is a NUL-terminated ASCII string; `data` is a strong reference
        // handed to the function, dropped by the finalizer attached below (or here, if
        // attaching fails).
        let made = check(OP, "napi_create_function", unsafe {
            sys::napi_create_function(
                env,
                name.as_ptr(),
                name.count_bytes() as isize,
                callback,
                data,
                &mut function,
            )
        })
        .and_then(|()| {
            // SAFETY: `function` was just made in `env`; its finalizer runs once, when it
            // is collected, and only then drops `data`.
            check(OP, "napi_add_finalizer", unsafe {
                sys::napi_add_finalizer(
                    env,
                    function,
                    data,
                    Some(release_state),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            })
        });
        if let Err(error) = made {
            // SAFETY: no finalizer took `data`, so the reference is still ours.
            drop(unsafe { Rc::from_raw(data.cast_const().cast::<EndpointState>()) });
            return Err(error);
        }
        // SAFETY: `object` and `function` are values of `env` in the current scope; `name`
        // is a NUL-terminated string.
        check(OP, "napi_set_named_property", unsafe {
            sys::napi_set_named_property(env, object, name.as_ptr(), function)
        })?;
    }
    Ok(object)
}

unsafe extern "C" fn release_state(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the reference `create` leaked for this function, whose finalizer
    // runs once.
    drop(unsafe { Rc::from_raw(data.cast_const().cast::<EndpointState>()) });
}

/// Runs `body` with the callback's endpoint and arguments, throwing what it fails with.
///
/// # Safety
/// `env` and `info` are the arguments of a callback made by [`create`].
unsafe fn run(env: sys::napi_env, info: sys::napi_callback_info, body: Body) -> sys::napi_value {
    let mut values = [ptr::null_mut(); 4];
    let mut count = values.len();
    let mut data = ptr::null_mut();
    // SAFETY: `values` has room for `count` values; `info` is this callback's.
    let status = unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut count,
            values.as_mut_ptr(),
            ptr::null_mut(),
            &mut data,
        )
    };
    if status != sys::Status::napi_ok || data.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: `data` is the strong reference `create` gave this function, dropped only by
    // its finalizer, which cannot run while the function is being called.
    let state = unsafe { &*data.cast_const().cast::<EndpointState>() };
    let wrapped = Env::from_raw(env);
    match body(&wrapped, state, &Args { values, count }) {
        Ok(value) => value,
        Err(error) => {
            // SAFETY: on the JavaScript thread of `env`, with no exception pending (the
            // body returned instead of throwing).
            unsafe { JsError::from(error).throw_into(env) };
            ptr::null_mut()
        }
    }
}

fn undefined(env: &Env) -> napi::Result<sys::napi_value> {
    let mut value = ptr::null_mut();
    // SAFETY: a value of `env` in the current scope.
    napi::check_status!(unsafe { sys::napi_get_undefined(env.raw(), &mut value) })?;
    Ok(value)
}

fn send(env: &Env, state: &EndpointState, args: &Args) -> napi::Result<sys::napi_value> {
    let payload = args.get(0);
    let bytes = payload_bytes(env, &payload, "send")?;
    let regions = attached_regions(env, args.optional(1))?;
    let transfers = transfer_flags(env, args.optional(2), regions.len())?;
    let ticket = state.send(env, bytes, &attachments(&regions, &transfers))?;
    // SAFETY: converting into a value of `env` in the current scope.
    unsafe { f64::to_napi_value(env.raw(), ticket) }
}

fn send_sync(env: &Env, state: &EndpointState, args: &Args) -> napi::Result<sys::napi_value> {
    let payload = args.get(0);
    let bytes = payload_bytes(env, &payload, "sendSync")?;
    // SAFETY: `args` holds values of `env` in the current callback's scope.
    let timeout_ms = unsafe { f64::from_napi_value(env.raw(), args.get(1)) }?;
    let regions = attached_regions(env, args.optional(2))?;
    let transfers = transfer_flags(env, args.optional(3), regions.len())?;
    state.send_sync(env, bytes, &attachments(&regions, &transfers), timeout_ms)?;
    undefined(env)
}

/// The bytes of `payload`, an `ArrayBufferView` argument of the current call, which keeps
/// its memory alive while `payload` is borrowed.
fn payload_bytes<'a>(
    env: &Env,
    payload: &'a sys::napi_value,
    op: &'static str,
) -> napi::Result<Bytes<'a>> {
    let (data, len) =
        crate::buffer::view_bytes(env.raw(), *payload, op).map_err(|e| throw(env, e))?;
    // SAFETY: the view is an argument of the current call, alive (and its memory valid for
    // `len` reads) for the whole call, which outlives the borrow of `payload`.
    Ok(unsafe { Bytes::from_raw(data, len) })
}

fn attachments<'a>(
    regions: &'a [ClassInstance<'_, NativeRegion>],
    transfers: &[bool],
) -> Vec<Attach<'a>> {
    regions
        .iter()
        .zip(transfers)
        .map(|(region, &transfer)| Attach {
            region: &region.region,
            transfer,
        })
        .collect()
}

/// The regions of `value`, an array of `NativeRegion`s, or none when it is missing.
fn attached_regions<'env>(
    env: &'env Env,
    value: Option<sys::napi_value>,
) -> napi::Result<Vec<ClassInstance<'env, NativeRegion>>> {
    // SAFETY: `value` is a value of `env` in the current scope; converting each element
    // checks that it wraps a `NativeRegion` (its type tag) before using it.
    value.map_or(Ok(Vec::new()), |value| unsafe {
        Vec::<ClassInstance<NativeRegion>>::from_napi_value(env.raw(), value)
    })
}

/// One flag per region from `value`, an array of booleans (all false when it is missing).
fn transfer_flags(
    env: &Env,
    value: Option<sys::napi_value>,
    count: usize,
) -> napi::Result<Vec<bool>> {
    let Some(value) = value else {
        return Ok(vec![false; count]);
    };
    // SAFETY: `value` is a value of `env` in the current scope.
    let flags = unsafe { Vec::<bool>::from_napi_value(env.raw(), value) }?;
    if flags.len() != count {
        return Err(napi::Error::new(
            napi::Status::InvalidArg,
            "one transfer flag per attached region",
        ));
    }
    Ok(flags)
}

fn recv(env: &Env, state: &EndpointState, _args: &Args) -> napi::Result<sys::napi_value> {
    let received = state.recv(env)?;
    // SAFETY: converting into a value of `env` in the current scope.
    unsafe { ToNapiValue::to_napi_value(env.raw(), received) }
}

fn recv_sync(env: &Env, state: &EndpointState, args: &Args) -> napi::Result<sys::napi_value> {
    // SAFETY: `args` holds values of `env` in the current callback's scope.
    let timeout_ms = unsafe { f64::from_napi_value(env.raw(), args.get(0)) }?;
    let Some(into) = args.optional(1) else {
        let received = state.recv_sync(env, timeout_ms)?;
        // SAFETY: converting into a value of `env` in the current scope.
        return unsafe { ToNapiValue::to_napi_value(env.raw(), received) };
    };
    let (data, len) =
        crate::buffer::view_bytes(env.raw(), into, "recvSync").map_err(|e| throw(env, e))?;
    // SAFETY: `into` is an argument of the current call, valid for `len` bytes of writes
    // until JavaScript can run again: `recv_sync_into` copies into it before it settles
    // events (which may call handlers) and not after.
    let into = unsafe { crate::buffer::Destination::from_raw(data, len) };
    let received = state.recv_sync_into(env, timeout_ms, &into)?;
    // SAFETY: converting into a value of `env` in the current scope.
    unsafe { ToNapiValue::to_napi_value(env.raw(), received) }
}
