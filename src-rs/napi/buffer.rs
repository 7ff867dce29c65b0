//! Region memory as JavaScript `ArrayBuffer`s, without copying, and JavaScript memory
//! as raw bytes, without forming Rust references over it.
//!
//! Each lent view is an external `ArrayBuffer` whose finalizer owns an `Arc<Mapping>`:
//! the address range stays mapped until V8 has let the buffer go, even after the region
//! was closed (whose memory is then private zero pages). The view is registered with the
//! core region as a [`Lease`], so transferring or closing the region detaches it,
//! whichever `Region` object lent it.
//!
//! Runtimes with V8's memory cage (Electron ≥ 21) refuse external buffers with
//! `napi_no_external_buffers_allowed`; that status is reported, never papered over with a
//! silent copy, because writes to a copy would not reach the peer.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::ThreadId;

use napi::sys;
use shmlink::{ErrorKind, Incoming, Lease, Mapping, Payload, Region};

use crate::error::{check, fail};

/// A view lent to JavaScript: a weak reference to its `ArrayBuffer`.
struct JsView {
    env: sys::napi_env,
    buffer: sys::napi_ref,
    thread: ThreadId,
}

// SAFETY: `env` and `buffer` are used only on the thread that created them (`revoke`
// checks `thread`; the finalizer runs on that thread). Revoking happens where a region is
// transferred or closed, which the binding does only on its JavaScript thread.
unsafe impl Send for JsView {}
// SAFETY: as for `Send`; no method touches the fields from another thread.
unsafe impl Sync for JsView {}

impl JsView {
    /// The `ArrayBuffer` of this view, if `env` on this thread made it and it is still
    /// alive and attached.
    fn attached_buffer(&self, env: sys::napi_env) -> Option<sys::napi_value> {
        if env != self.env || std::thread::current().id() != self.thread {
            return None;
        }
        let mut value = ptr::null_mut();
        // SAFETY: `buffer` is a live reference of `env`, used on its thread (checked
        // above); it is deleted only in the finalizer, after which the lease that leads
        // here can no longer be upgraded.
        let status = unsafe { sys::napi_get_reference_value(self.env, self.buffer, &mut value) };
        if status != sys::Status::napi_ok || value.is_null() {
            return None;
        }
        let mut detached = true;
        // SAFETY: `value` is the ArrayBuffer this view was made for, an object of `env`.
        let status = unsafe { sys::napi_is_detached_arraybuffer(self.env, value, &mut detached) };
        (status == sys::Status::napi_ok && !detached).then_some(value)
    }
}

impl Lease for JsView {
    fn revoke(&self) {
        if std::thread::current().id() != self.thread {
            return;
        }
        let mut value = ptr::null_mut();
        // SAFETY: `buffer` is a live reference of `env` (deleted only in the finalizer,
        // after which no lease can be upgraded to call this).
        let status = unsafe { sys::napi_get_reference_value(self.env, self.buffer, &mut value) };
        if status == sys::Status::napi_ok && !value.is_null() {
            // SAFETY: `value` is the ArrayBuffer this lease was made for. Detaching an
            // already detached buffer does nothing.
            let status = unsafe { sys::napi_detach_arraybuffer(self.env, value) };
            // Detaching an ArrayBuffer of ours cannot fail unless the environment is
            // going away, which takes the buffer with it.
            crate::error::after_teardown(status);
        }
    }
}

/// What a lent `ArrayBuffer` holds until the object itself is collected: the mapping
/// (unmapped when the last holder lets go) and the lease (whose end tells the region the
/// view is gone).
///
/// It is tied to the JavaScript object, not to V8's backing store: detaching the buffer
/// (transfer, close) frees the backing store at once, while a thread-pool job that was
/// handed the buffer (`crypto.randomFill(region.bytes, cb)`, `fs.read`) may still write
/// through the raw pointer. Such a job keeps the object alive, so the memory stays
/// mapped until it is done.
struct Lent {
    _mapping: Arc<Mapping>,
    view: Arc<JsView>,
}

unsafe extern "C" fn release_lent(env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the `Box<Lent>` leaked in `lend`, attached to exactly one object
    // whose finalizer runs once.
    let lent = unsafe { Box::from_raw(data.cast::<Lent>()) };
    // SAFETY: the reference belongs to `env`, on whose thread finalizers run; it is
    // deleted exactly once, here.
    crate::error::after_teardown(unsafe { sys::napi_delete_reference(env, lent.view.buffer) });
}

/// An `ArrayBuffer` over `region`'s memory, registered with the region so that a
/// transfer or close detaches it.
///
/// A view of the region that is still alive on this thread is handed out again (as a new
/// `Uint8Array` over the same `ArrayBuffer`): one external buffer per address range, and
/// no second mapping to fault in for a receiver whose `Region` objects come and go.
pub fn lend(env: sys::napi_env, region: &Region) -> shmlink::Result<sys::napi_value> {
    const OP: &str = "Region.bytes";
    if let Some(buffer) = region.lent(|view: &JsView| view.attached_buffer(env)) {
        return uint8_array(env, buffer, region.size());
    }
    let mut created = ptr::null_mut();
    region.lend(|mapping| {
        let data = mapping.as_ptr().cast::<c_void>();
        let len = mapping.len();
        let mut buffer = ptr::null_mut();
        // SAFETY: `data..data + len` is a live mapping; the `Lent` attached to the buffer
        // object below keeps it mapped until the object is collected, and the region's
        // size never changes (sealed), so every byte V8 may touch stays mapped. No
        // backing-store finalizer: the object's finalizer does the work (see `Lent`).
        let status = unsafe {
            sys::napi_create_external_arraybuffer(
                env,
                data,
                len,
                None,
                ptr::null_mut(),
                &mut buffer,
            )
        };
        match status {
            sys::Status::napi_ok => {}
            sys::Status::napi_no_external_buffers_allowed => {
                return Err(shmlink::Error::new(
                    ErrorKind::ZeroCopyUnavailable,
                    OP,
                    "this runtime refuses external buffers (Electron's V8 memory cage); use \
                     region.read() and region.write()",
                ));
            }
            // A length over what one ArrayBuffer may hold makes Node throw
            // (ERR_BUFFER_TOO_LARGE on Node 20); that exception is replaced by the coded
            // error.
            other => {
                if crate::error::take_exception(env).is_some() {
                    return Err(too_large_error(len));
                }
                return Err(fail(OP, "napi_create_external_arraybuffer", other));
            }
        }
        let mut reference = ptr::null_mut();
        // SAFETY: `buffer` was just created in `env`; a reference of count 0 is weak.
        let status = unsafe { sys::napi_create_reference(env, buffer, 0, &mut reference) };
        if status != sys::Status::napi_ok {
            forget_buffer(env, buffer);
            return Err(fail(OP, "napi_create_reference", status));
        }
        let view = Arc::new(JsView {
            env,
            buffer: reference,
            thread: std::thread::current().id(),
        });
        let lent = Box::into_raw(Box::new(Lent {
            _mapping: mapping,
            view: Arc::clone(&view),
        }));
        // SAFETY: `buffer` is an object of `env`; `lent` is handed to its finalizer, which
        // runs once, when the object is collected.
        let status = unsafe {
            sys::napi_add_finalizer(
                env,
                buffer,
                lent.cast(),
                Some(release_lent),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if status != sys::Status::napi_ok {
            forget_buffer(env, buffer);
            // SAFETY: the finalizer was not attached, so the box is still ours; the buffer
            // is detached, so nothing reaches the mapping through it any more.
            let lent = unsafe { Box::from_raw(lent) };
            // SAFETY: the reference is ours and deleted once, here.
            crate::error::after_teardown(unsafe {
                sys::napi_delete_reference(env, lent.view.buffer)
            });
            return Err(fail(OP, "napi_add_finalizer", status));
        }
        match uint8_array(env, buffer, len) {
            Ok(array) => created = array,
            Err(error) => {
                forget_buffer(env, buffer);
                return Err(error);
            }
        }
        Ok(view)
    })?;
    Ok(created)
}

/// A `Uint8Array` over all `len` bytes of `buffer`, an ArrayBuffer of `env`.
fn uint8_array(
    env: sys::napi_env,
    buffer: sys::napi_value,
    len: usize,
) -> shmlink::Result<sys::napi_value> {
    let mut array = ptr::null_mut();
    // SAFETY: `buffer` is an ArrayBuffer of `env` of at least `len` bytes.
    let status = unsafe {
        sys::napi_create_typedarray(
            env,
            sys::TypedarrayType::uint8_array,
            len,
            buffer,
            0,
            &mut array,
        )
    };
    if status != sys::Status::napi_ok {
        clear_exception(env);
        return Err(too_large_error(len));
    }
    Ok(array)
}

/// Detaches a buffer `lend` gave up on, so nothing reaches its memory through it.
fn forget_buffer(env: sys::napi_env, buffer: sys::napi_value) {
    // SAFETY: `buffer` is an external ArrayBuffer of `env` no script has seen.
    crate::error::after_teardown(unsafe { sys::napi_detach_arraybuffer(env, buffer) });
}

fn too_large_error(len: usize) -> shmlink::Error {
    shmlink::Error::new(
        ErrorKind::RegionTooLarge,
        "Region.bytes",
        format!(
            "a {len}-byte region is larger than one Uint8Array can be here; use \
             region.read(offset, length) or readInto(offset, target) in pieces"
        ),
    )
}

/// Clears the exception a refused allocation left pending: the caller reports a coded
/// error instead.
fn clear_exception(env: sys::napi_env) {
    let _replaced_by_coded_error = crate::error::take_exception(env);
}

/// The bytes of a JavaScript `ArrayBufferView` (a `Buffer`, any `TypedArray`, a
/// `DataView`), as a raw pointer and length: a view may alias region memory another
/// process writes, so no `&[u8]` is formed over it.
pub fn view_bytes(
    env: sys::napi_env,
    value: sys::napi_value,
    op: &'static str,
) -> shmlink::Result<(*mut u8, usize)> {
    let mut is_typed = false;
    // SAFETY: `value` is a live value of `env` passed in by the current call.
    check(op, "napi_is_typedarray", unsafe {
        sys::napi_is_typedarray(env, value, &mut is_typed)
    })?;
    let mut data = ptr::null_mut();
    let mut len = 0usize;
    if is_typed {
        let mut kind = 0;
        let mut elements = 0usize;
        let mut buffer = ptr::null_mut();
        let mut offset = 0usize;
        // SAFETY: `value` is a TypedArray (checked); the out pointers are valid.
        check(op, "napi_get_typedarray_info", unsafe {
            sys::napi_get_typedarray_info(
                env,
                value,
                &mut kind,
                &mut elements,
                &mut data,
                &mut buffer,
                &mut offset,
            )
        })?;
        len = elements * element_size(kind);
    } else {
        let mut is_view = false;
        // SAFETY: as above.
        check(op, "napi_is_dataview", unsafe {
            sys::napi_is_dataview(env, value, &mut is_view)
        })?;
        if !is_view {
            return Err(shmlink::Error::new(
                ErrorKind::InvalidArgument,
                op,
                "expected a Buffer, TypedArray or DataView",
            ));
        }
        let mut buffer = ptr::null_mut();
        let mut offset = 0usize;
        // SAFETY: `value` is a DataView (checked); the out pointers are valid.
        check(op, "napi_get_dataview_info", unsafe {
            sys::napi_get_dataview_info(env, value, &mut len, &mut data, &mut buffer, &mut offset)
        })?;
    }
    Ok((data.cast(), if data.is_null() { 0 } else { len }))
}

/// The memory of a view JavaScript passed to the current call, to copy bytes into. It
/// may alias memory another thread or process writes (a `SharedArrayBuffer`, a region's
/// `bytes`), so it is written through its raw pointer only, never through a `&mut [u8]`.
pub struct Destination<'call> {
    data: *mut u8,
    len: usize,
    _call: std::marker::PhantomData<&'call ()>,
}

impl Destination<'_> {
    /// # Safety
    /// `data` is valid for writes of `len` bytes for as long as the value is used: the
    /// memory of a view passed to the current call, used only before any JavaScript can
    /// run again (which could detach it).
    pub unsafe fn from_raw(data: *mut u8, len: usize) -> Self {
        Destination {
            data,
            len,
            _call: std::marker::PhantomData,
        }
    }

    /// Copies `bytes` to the start; false, copying nothing, when they do not fit.
    pub fn put(&self, bytes: &[u8]) -> bool {
        if bytes.len() > self.len {
            return false;
        }
        // SAFETY: `data` is valid for `len` writes (`from_raw`'s contract) and `bytes` is
        // not longer. A copy that tolerates overlap, though `bytes` is a message's own
        // buffer and the destination JavaScript memory.
        unsafe { ptr::copy(bytes.as_ptr(), self.data, bytes.len()) };
        true
    }
}

fn element_size(kind: sys::napi_typedarray_type) -> usize {
    match kind {
        sys::TypedarrayType::int16_array | sys::TypedarrayType::uint16_array => 2,
        sys::TypedarrayType::int32_array
        | sys::TypedarrayType::uint32_array
        | sys::TypedarrayType::float32_array => 4,
        sys::TypedarrayType::float64_array
        | sys::TypedarrayType::bigint64_array
        | sys::TypedarrayType::biguint64_array => 8,
        _ => 1,
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
        // SAFETY: `buffer` is the ArrayBuffer just created; no script can reach it, so
        // whether detaching it succeeds changes nothing anyone sees.
        crate::error::after_teardown(unsafe { sys::napi_detach_arraybuffer(env, buffer) });
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

/// Payloads at least this long become JavaScript Buffers without a copy: below it, a copy
/// costs less than an external buffer does (a backing store and a finalizer).
const LEND_PAYLOAD_AT: usize = 32 * 1024;

/// Memory one endpoint copies what it receives into for JavaScript to read at once: the
/// payload of a message when it is shorter than [`Staging::LEN`], and a description of the
/// regions of every message (how many, and for each its serial, id and flags). JavaScript
/// sees both through one `ArrayBuffer` made once, copies a payload out into a `Buffer` it
/// allocates itself, and reads the descriptions as numbers. Made from native code per
/// message, a `Buffer` (`napi_create_buffer_copy`: a new backing store, a typed array and
/// its prototype set through the API) cost several times that copy, and was the largest
/// single item of a ring round trip's profile; an object per region, built property by
/// property through the API, made a message with a known region cost seven times one
/// without.
///
/// JavaScript reads it only between the native call that filled it and its own copy, with
/// no native call in between, on the one thread both run on, so no copy in here can change
/// bytes JavaScript is still reading.
pub struct Staging {
    data: *mut StagingMemory,
}

/// What the staging `ArrayBuffer` holds.
#[repr(C)]
struct StagingMemory {
    payload: [u8; Staging::LEN],
    /// The count, then a serial and `id * 8 + flags` per region.
    regions: [f64; Staging::REGION_SLOTS],
}

/// The flags of a staged region description (`index.ts` reads the same bits).
const STAGED_NEW: u32 = 1;
const STAGED_FROZEN: u32 = 2;
const STAGED_TRANSFERRED: u32 = 4;

impl Staging {
    /// Bytes of staging memory for a payload: every payload shorter than a lent one fits.
    pub const LEN: usize = LEND_PAYLOAD_AT;
    /// Regions described in the staging memory at most: as many as one message may carry.
    const MAX_REGIONS: usize = shmlink::Limits::MOST_REGIONS as usize;
    const REGION_SLOTS: usize = 1 + 2 * Self::MAX_REGIONS;

    /// Staging memory and an object holding two views of it, `payload` (a `Uint8Array`)
    /// and `regions` (a `Float64Array`), or `None` where the runtime refuses external
    /// buffers (Electron's memory cage: messages then arrive as objects made from native
    /// code).
    pub fn create(env: sys::napi_env) -> Option<(Rc<Staging>, sys::napi_value)> {
        let data = Box::into_raw(Box::new(StagingMemory {
            payload: [0; Self::LEN],
            regions: [0.0; Self::REGION_SLOTS],
        }));
        let staging = Rc::new(Staging { data });
        let owner = Rc::into_raw(Rc::clone(&staging)).cast_mut();
        let mut buffer = ptr::null_mut();
        // SAFETY: `data` is this staging's heap memory, which the `Rc` handed to the
        // finalizer keeps allocated until V8 has let the buffer go.
        let status = unsafe {
            sys::napi_create_external_arraybuffer(
                env,
                data.cast(),
                size_of::<StagingMemory>(),
                Some(release_staging),
                owner.cast(),
                &mut buffer,
            )
        };
        if status != sys::Status::napi_ok {
            clear_exception(env);
            // SAFETY: the runtime refused the buffer, so the finalizer's `Rc` is still ours.
            drop(unsafe { Rc::from_raw(owner) });
            return None;
        }
        let payload = uint8_array(env, buffer, Self::LEN).ok()?;
        let mut regions = ptr::null_mut();
        // SAFETY: `buffer` holds `REGION_SLOTS` numbers at the offset of `regions`, a
        // multiple of 8 (the alignment of f64) as a Float64Array's offset must be.
        let status = unsafe {
            sys::napi_create_typedarray(
                env,
                sys::TypedarrayType::float64_array,
                Self::REGION_SLOTS,
                buffer,
                std::mem::offset_of!(StagingMemory, regions),
                &mut regions,
            )
        };
        if status != sys::Status::napi_ok {
            return None;
        }
        let mut views = ptr::null_mut();
        // SAFETY: called on the JavaScript thread of `env`, inside a binding call.
        let mut made = unsafe { sys::napi_create_object(env, &mut views) } == sys::Status::napi_ok;
        for (name, view) in [(c"payload", payload), (c"regions", regions)] {
            // SAFETY: `views` and `view` are values of `env` in the current scope; `name` is
            // a NUL-terminated string.
            made = made
                && unsafe { sys::napi_set_named_property(env, views, name.as_ptr(), view) }
                    == sys::Status::napi_ok;
        }
        made.then_some((staging, views))
    }

    /// Copies `bytes` to the start of the staging memory; false when they do not fit.
    pub fn put(&self, bytes: &[u8]) -> bool {
        if bytes.len() >= Self::LEN {
            return false;
        }
        // SAFETY: `data` is valid for `LEN` bytes of writes and `bytes` is shorter; it is
        // this process's own memory, distinct from `bytes`. No Rust reference to it exists
        // (JavaScript reads it through its view only while no native code runs).
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.cast::<u8>(), bytes.len()) };
        true
    }

    /// Describes `regions` after the payload bytes (a count of 0 when there are none);
    /// false, describing nothing, when there are more than one message may carry.
    pub fn put_regions(&self, regions: &[Incoming]) -> bool {
        if regions.len() > Self::MAX_REGIONS {
            return false;
        }
        // SAFETY: `data` is this staging's live allocation. Nothing else reaches its
        // region slots while this borrow lives: JavaScript reads them only while no native
        // code runs, on this same thread.
        let slots = unsafe { &mut (*self.data).regions };
        slots[0] = regions.len() as f64;
        for (incoming, pair) in regions.iter().zip(slots[1..].chunks_exact_mut(2)) {
            let flags = if incoming.new { STAGED_NEW } else { 0 }
                | if incoming.frozen { STAGED_FROZEN } else { 0 }
                | if incoming.transferred {
                    STAGED_TRANSFERRED
                } else {
                    0
                };
            pair[0] = incoming.region.serial() as f64;
            pair[1] = f64::from(incoming.id) * 8.0 + f64::from(flags);
        }
        true
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: `data` came from `Box::into_raw` in `create`, and is freed once, here,
        // when the last holder lets go.
        drop(unsafe { Box::from_raw(self.data) });
    }
}

unsafe extern "C" fn release_staging(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Rc` leaked in `Staging::create` for this buffer, whose
    // finalizer runs once.
    drop(unsafe { Rc::from_raw(hint.cast_const().cast::<Staging>()) });
}

/// How a received payload becomes a JavaScript `Buffer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// A large payload lends its own memory: the receive buffer it arrived in, which the
    /// Buffer's finalizer recycles. For receives on the event loop, which turns and so
    /// runs that finalizer.
    Lend,
    /// Always copied into memory the runtime allocates and its garbage collector frees.
    /// For blocking receives: Node runs the finalizers of external memory from the event
    /// loop, so a program that only ever receives synchronously would otherwise keep
    /// every large payload's receive buffer until it returns to the loop.
    Copy,
}

/// A received payload as a JavaScript `Buffer`. With [`Handover::Lend`] a large payload
/// lends its own memory, so the kernel's copy out of the socket is the only one. A small
/// payload, or one the runtime refuses to lend (Electron's memory cage), is copied into
/// memory the runtime allocates. Either way the bytes belong to this process alone: no
/// peer can change them under a decoder.
/// On failure the payload comes back with the error, so nothing is lost.
pub fn payload_buffer(
    env: sys::napi_env,
    payload: Payload,
    handover: Handover,
) -> Result<sys::napi_value, Box<(shmlink::Error, Payload)>> {
    const OP: &str = "recv";
    let len = payload.len();
    if handover == Handover::Lend && len >= LEND_PAYLOAD_AT {
        let data = payload.as_ptr();
        let owner = Box::into_raw(Box::new(payload));
        let mut value = ptr::null_mut();
        // SAFETY: `data..data + len` is the payload's heap memory, owned by `owner`, which
        // does not move or change it and is dropped only by `free_payload`, once, when the
        // runtime lets the Buffer go.
        let status = unsafe {
            sys::napi_create_external_buffer(
                env,
                len,
                data.cast_mut().cast(),
                Some(free_payload),
                owner.cast(),
                &mut value,
            )
        };
        if status == sys::Status::napi_ok {
            return Ok(value);
        }
        clear_exception(env);
        // SAFETY: the runtime refused the buffer before taking the finalizer, so `owner`
        // is still ours.
        let payload = *unsafe { Box::from_raw(owner) };
        return copied_payload(env, payload, OP);
    }
    copied_payload(env, payload, OP)
}

fn copied_payload(
    env: sys::napi_env,
    payload: Payload,
    op: &'static str,
) -> Result<sys::napi_value, Box<(shmlink::Error, Payload)>> {
    let mut data = ptr::null_mut();
    let mut value = ptr::null_mut();
    // SAFETY: `payload` is live; napi_create_buffer_copy copies it into a new Buffer.
    let status = unsafe {
        sys::napi_create_buffer_copy(
            env,
            payload.len(),
            payload.as_ptr().cast(),
            &mut data,
            &mut value,
        )
    };
    if status != sys::Status::napi_ok {
        clear_exception(env);
        return Err(Box::new((
            fail(op, "napi_create_buffer_copy", status),
            payload,
        )));
    }
    Ok(value)
}

unsafe extern "C" fn free_payload(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Box<Payload>` leaked in `payload_buffer`, finalized once.
    drop(unsafe { Box::from_raw(hint.cast::<Payload>()) });
}

/// A Buffer the runtime allocated, not yet handed to JavaScript.
pub struct Allocated {
    value: sys::napi_value,
    data: *mut u8,
    len: usize,
}

impl Allocated {
    /// Its memory: valid for `len` bytes while the Buffer lives.
    pub fn bytes(&mut self) -> (*mut u8, usize) {
        (self.data, self.len)
    }

    pub fn into_buffer(
        self,
        env: &napi::Env,
    ) -> napi::Result<napi::bindgen_prelude::BufferSlice<'_>> {
        // SAFETY: `value` is the Buffer `allocate` created in `env`, in the current scope.
        unsafe {
            <napi::bindgen_prelude::BufferSlice as napi::bindgen_prelude::FromNapiValue>::from_napi_value(env.raw(), self.value)
        }
    }
}

/// A new Buffer of `len` bytes, allocated by the runtime. A length the runtime cannot
/// hold is refused with `ERR_SHMLINK_REGION_TOO_LARGE` rather than aborting the process
/// (a Rust allocation that fails would).
pub fn allocate(env: sys::napi_env, len: usize, op: &'static str) -> shmlink::Result<Allocated> {
    let mut data = ptr::null_mut();
    let mut value = ptr::null_mut();
    // SAFETY: the out pointers are valid; napi_create_buffer allocates through V8.
    let status = unsafe { sys::napi_create_buffer(env, len, &mut data, &mut value) };
    if status == sys::Status::napi_ok {
        return Ok(Allocated {
            value,
            data: data.cast(),
            len,
        });
    }
    clear_exception(env);
    Err(shmlink::Error::new(
        ErrorKind::RegionTooLarge,
        op,
        format!(
            "{len} bytes do not fit in one Buffer here (buffer.constants.MAX_LENGTH, or memory); \
             copy in pieces with readInto(offset, target)"
        ),
    ))
}

/// Copies `length` bytes at `offset` of `region` into a new Buffer (one copy).
pub fn read_new<'env>(
    env: &'env napi::Env,
    region: &Region,
    offset: usize,
    length: usize,
) -> napi::Result<napi::bindgen_prelude::BufferSlice<'env>> {
    const OP: &str = "Region.read";
    let fail = |e| crate::error::throw(env, e);
    if offset
        .checked_add(length)
        .is_none_or(|end| end > region.size())
    {
        return Err(fail(shmlink::Error::new(
            ErrorKind::InvalidArgument,
            OP,
            format!(
                "bytes {offset}..{offset}+{length} lie outside the region's {} bytes",
                region.size()
            ),
        )));
    }
    let mut target = allocate(env.raw(), length, OP).map_err(fail)?;
    let (ptr, len) = target.bytes();
    // SAFETY: `ptr` is the new Buffer's memory, valid for `len` writes while `target` is
    // alive (it is, until returned); it cannot alias region memory.
    unsafe { region.copy_out(offset, ptr, len) }.map_err(fail)?;
    target.into_buffer(env)
}

/// Copies from `region` at `offset` into the view `target`, as many bytes as fit;
/// returns how many.
pub fn read_into(
    env: sys::napi_env,
    region: &Region,
    offset: usize,
    target: sys::napi_value,
) -> shmlink::Result<usize> {
    const OP: &str = "Region.read";
    let (ptr, len) = view_bytes(env, target, OP)?;
    let count = len.min(region.size().saturating_sub(offset));
    // SAFETY: `ptr` is valid for `len ≥ count` writes for this call (the caller holds
    // the view); `copy_out` is a memmove, so the view may alias a region.
    unsafe { region.copy_out(offset, ptr, count) }?;
    Ok(count)
}

/// Copies the bytes of the view `data` into `region` at `offset`.
pub fn write_from(
    env: sys::napi_env,
    region: &Region,
    offset: usize,
    data: sys::napi_value,
) -> shmlink::Result<()> {
    let (ptr, len) = view_bytes(env, data, "Region.write")?;
    // SAFETY: `ptr` is valid for `len` reads for this call; `copy_in` is a memmove, so
    // `data` may be a view of this very region.
    unsafe { region.copy_in(offset, ptr, len) }
}
