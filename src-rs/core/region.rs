//! Regions: sealed anonymous memory files, their mappings, and who may touch them.
//!
//! A [`Region`] is a cheap handle; clones share one region, and the process holds at most
//! one region per memory file ([`Region::adopt`] resolves a file this process already has
//! to the same region, whichever connection it came through). The memory file's size is
//! sealed at creation, so no process can shrink it under a mapping.
//!
//! Mappings are raw ([`memmap2::MmapRaw`]): this crate never forms a `&[u8]` or
//! `&mut [u8]` over shared memory, because another process may write it. Memory lent to
//! a garbage-collected runtime is tracked as a [`Lease`] on the region itself, so that
//! transferring or closing the region revokes every view of it, whichever handle lent it.

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, ErrorKind, Result};
use crate::limits::Charge;
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use crate::sys;

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// One mapping of a region into this process's address space.
///
/// A binding that lends the memory to a garbage-collected runtime keeps an
/// `Arc<Mapping>` until the runtime lets go: the address range stays valid until then,
/// even after [`Region::close`] (which replaces the contents with private zero pages).
#[derive(Debug)]
pub struct Mapping {
    map: MmapRaw,
}

impl Mapping {
    /// The first byte. Valid for [`Mapping::len`] bytes while this `Mapping` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length in bytes (the region's size).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never, for a region).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn start(&self) -> NonNull<u8> {
        NonNull::new(self.as_ptr()).unwrap_or(NonNull::dangling())
    }

    fn new(fd: BorrowedFd<'_>, size: usize, frozen: bool) -> Result<Mapping> {
        if frozen {
            Self::private(fd, size)
        } else {
            MmapOptions::new()
                .len(size)
                .map_raw(&fd)
                .map(|map| Mapping { map })
                .map_err(|e| map_error(e, "mmap(MAP_SHARED)"))
        }
    }

    /// A copy-on-write mapping: reads see the region, writes stay in this process.
    fn private(fd: BorrowedFd<'_>, size: usize) -> Result<Mapping> {
        // SAFETY: memmap2 calls this unsafe because the file could shrink under the
        // mapping; every caller has checked that `fd` is sealed against shrinking and is
        // at least `size` bytes long (Region::create, Region::adopt). The contents are
        // only ever reached through raw pointers, never through a `&[u8]`.
        let map = unsafe { MmapOptions::new().len(size).map_copy(&fd) };
        map.map(|m| Mapping {
            map: MmapRaw::from(m),
        })
        .map_err(|e| map_error(e, "mmap(MAP_PRIVATE)"))
    }
}

fn map_error(e: std::io::Error, syscall: &'static str) -> Error {
    match e.raw_os_error() {
        Some(errno) => Error::os(
            "map region",
            syscall,
            nix::errno::Errno::from_raw(errno),
            "the region could not be mapped: address space, vm.max_map_count or \
             (for a frozen region, mapped copy-on-write) memory that may be committed is exhausted",
        ),
        None => Error::new(ErrorKind::Os, "map region", e.to_string()),
    }
}

/// A view of region memory that a binding lent to a runtime (a JavaScript
/// `ArrayBuffer`). Revoking it makes the view unusable (detached) without unmapping the
/// memory, which stays mapped until the binding drops its `Arc<Mapping>`.
///
/// `Any` lets [`Region::lent`] hand a binding back the views it made itself.
pub trait Lease: Any + Send + Sync {
    /// Detaches the view. Called on the thread that transfers or closes the region.
    fn revoke(&self);
}

/// A lent view, as the region tracks it.
struct Lent {
    lease: Weak<dyn Lease>,
    on_primary: bool,
}

/// Something that bound a region in its own id namespace and must be told when the
/// region closes, or when its last handle is dropped (a connection, which then sends
/// RELEASE).
pub(crate) trait Binder: Send + Sync {
    fn region_closed(&self, region: &Region);
    /// The region with `serial` and `size` is gone: no handle to it is left in this
    /// process. May run while the binder's own lock is held (a binding being dropped), so
    /// it must not wait for that lock.
    fn region_dropped(&self, serial: u64, size: usize);
}

/// How a connection ended, as the regions transferred over it need to know
/// (`docs/MEMORY-MODEL.md` §5.1): the side that ends a connection gives up the regions
/// transferred to it over that connection, and the other side may take back the regions
/// it transferred.
#[derive(Debug, Default)]
pub(crate) struct Fate(std::sync::atomic::AtomicU8);

impl Fate {
    const OPEN: u8 = 0;
    const ENDED_BY_PEER: u8 = 1;
    const ENDED_HERE: u8 = 2;

    /// The connection ended: by the peer (end-of-file) or by this side (`close`, or a
    /// failure this side detected). The first report stands.
    pub(crate) fn end(&self, by_peer: bool) {
        let fate = if by_peer {
            Self::ENDED_BY_PEER
        } else {
            Self::ENDED_HERE
        };
        let _ = self
            .0
            .compare_exchange(Self::OPEN, fate, Ordering::AcqRel, Ordering::Acquire);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

/// Where the region is, as far as this process is concerned.
#[derive(Debug, Clone)]
enum Custody {
    /// This process may use it; `via` is the connection it last came over with a
    /// transfer, whose ending by this side gives it up.
    Here { via: Option<Arc<Fate>> },
    /// Transferred to a peer over a connection; it comes back with any frame that brings
    /// it, or by [`Region::reclaim`] once the peer has ended that connection.
    Away { over: Arc<Fate> },
    /// This side ended the connection the region had been transferred to it over: it is
    /// its sender's again, for good.
    GivenUp,
}

struct State {
    /// The memory file; `None` once closed.
    fd: Option<Arc<OwnedFd>>,
    /// The mapping `as_ptr` hands out; `None` once closed.
    primary: Option<Arc<Mapping>>,
    /// Every other mapping still alive, so `freeze` and `close` reach them all.
    extra: Vec<Weak<Mapping>>,
    lent: Vec<Lent>,
    custody: Custody,
    binders: Vec<Weak<dyn Binder>>,
    /// What this region counts against the process's limits when a peer sent it; given
    /// back on close.
    charge: Option<Charge>,
}

struct Inner {
    serial: u64,
    realm: Realm,
    size: usize,
    identity: (u64, u64),
    frozen: AtomicBool,
    away: AtomicBool,
    closed: AtomicBool,
    state: Mutex<State>,
    /// Copies into the region hold it shared, `freeze` exclusively: a copy is never
    /// half done when the contents are sealed.
    contents: RwLock<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("serial", &self.serial)
            .field("size", &self.size)
            .field("frozen", &self.frozen)
            .field("away", &self.away)
            .field("closed", &self.closed)
            .finish()
    }
}

/// The regions of each realm by file identity, so that a memory file that arrives again —
/// over another connection, or back from a peer — is the region the realm has.
fn registry() -> MutexGuard<'static, HashMap<Key, Weak<Inner>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<Key, Weak<Inner>>>> = OnceLock::new();
    lock(REGISTRY.get_or_init(Mutex::default))
}

/// A realm and a file identity.
type Key = (Realm, (u64, u64));

/// A set of handles that see one region per memory file: a process by default, or one
/// JavaScript environment (a worker thread) within it, or a thread that plays a peer of
/// another thread. A region that arrives in a realm that already holds its memory file
/// resolves to the region the realm has; realms never share a region, so one realm's
/// transfer cannot leave another's views attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Realm(pub u64);

impl Realm {
    /// A realm no other call has returned.
    pub fn unique() -> Realm {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Realm(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything can panic, so a
    // poisoned lock holds valid data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Inner {
    fn drop(&mut self) {
        {
            let mut registry = registry();
            let key = (self.realm, self.identity);
            if registry
                .get(&key)
                .is_some_and(|weak| weak.strong_count() == 0)
            {
                registry.remove(&key);
            }
        }
        // Nothing here can send the region again: the connections that bound it let the
        // peer unmap it (a closed region told them already and left no binders).
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for binder in state.binders.drain(..).filter_map(|b| b.upgrade()) {
            binder.region_dropped(self.serial, self.size);
        }
    }
}

/// A shared-memory region: a sealed anonymous memory file, mapped.
///
/// Cloning gives another handle to the same region. The file is closed and the memory
/// unmapped by [`Region::close`], or when the last handle and the last [`Mapping`] a
/// binding holds are dropped. A connection keeps a region alive only while the peer's id
/// names it; this side's ids do not: once the last handle here is dropped, each
/// connection that sent it releases it (RELEASE), so the peer can unmap it too.
#[derive(Debug, Clone)]
pub struct Region {
    inner: Arc<Inner>,
}

/// A region that does not keep the region alive.
#[derive(Debug, Clone)]
pub(crate) struct WeakRegion(Weak<Inner>);

impl WeakRegion {
    pub(crate) fn upgrade(&self) -> Option<Region> {
        self.0.upgrade().map(|inner| Region { inner })
    }
}

/// What a receiver learned about a descriptor before mapping it ([`Region::inspect`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inspected {
    size: usize,
    identity: (u64, u64),
    frozen: bool,
}

impl Inspected {
    pub(crate) fn identity(&self) -> (u64, u64) {
        self.identity
    }
}

impl Region {
    /// Creates a zero-filled region of `size` bytes, shared-mapped and writable.
    ///
    /// Backed by `memfd_create(2)` (close-on-exec, sealable, and with `MFD_NOEXEC_SEAL`
    /// where the kernel has it), sized once with `ftruncate(2)` and sealed with
    /// `F_SEAL_SHRINK | F_SEAL_GROW`. Nothing appears in `/dev/shm`, so a crash leaves
    /// nothing behind.
    pub fn create(size: usize) -> Result<Region> {
        Self::create_in(size, Realm::default())
    }

    /// [`Region::create`] in `realm` (see [`Realm`]).
    pub fn create_in(size: usize, realm: Realm) -> Result<Region> {
        if size == 0 || isize::try_from(size).is_err() {
            return Err(Error::invalid(
                "Region.create",
                format!(
                    "size must be between 1 and {} bytes, not {size}",
                    isize::MAX
                ),
            ));
        }
        let fd = sys::create_memory_file(size, "Region.create")?;
        let identity = sys::file_identity(fd.as_fd())?;
        let primary = Mapping::new(fd.as_fd(), size, false)?;
        let region =
            Region::from_parts(Arc::new(fd), (realm, identity), size, primary, false, None);
        registry().insert(region.key(), Arc::downgrade(&region.inner));
        Ok(region)
    }

    fn from_parts(
        fd: Arc<OwnedFd>,
        (realm, identity): Key,
        size: usize,
        primary: Mapping,
        frozen: bool,
        charge: Option<Charge>,
    ) -> Region {
        Region {
            inner: Arc::new(Inner {
                serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
                realm,
                size,
                identity,
                frozen: AtomicBool::new(frozen),
                away: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                state: Mutex::new(State {
                    fd: Some(fd),
                    primary: Some(Arc::new(primary)),
                    extra: Vec::new(),
                    lent: Vec::new(),
                    custody: Custody::Here { via: None },
                    binders: Vec::new(),
                    charge,
                }),
                contents: RwLock::new(()),
            }),
        }
    }

    /// Checks a descriptor a peer sent against `docs/PROTOCOL.md` §5.3 (type, filesystem,
    /// seals, size), before anything maps it.
    pub(crate) fn inspect(fd: BorrowedFd<'_>, size: u64, frozen: bool) -> Result<Inspected> {
        const OP: &str = "recv";
        let info = sys::file_info(fd)?;
        if !info.is_regular {
            return Err(Error::new(
                ErrorKind::RegionNotMemfd,
                OP,
                "the peer sent a descriptor that is not a memory file (a pipe, socket or device); \
                 the connection was closed",
            ));
        }
        let Some(seals) = sys::seals(fd)? else {
            return Err(Error::new(
                ErrorKind::RegionNotMemfd,
                OP,
                "the peer sent a file that cannot be sealed (not a memfd); regions must come from \
                 memfd_create; the connection was closed",
            ));
        };
        if !info.on_shmem {
            return Err(Error::new(
                ErrorKind::RegionNotShmem,
                OP,
                "the peer sent a memory file that is not on shmem (a hugetlbfs memfd, whose owner \
                 could take its pages away and crash this process with SIGBUS); the connection \
                 was closed",
            ));
        }
        if !(seals.shrink && seals.grow) {
            return Err(Error::new(
                ErrorKind::RegionUnsealed,
                OP,
                "the peer sent a memfd without F_SEAL_SHRINK and F_SEAL_GROW; it could shrink it \
                 and crash this process; the connection was closed",
            ));
        }
        if frozen && !seals.write {
            return Err(Error::new(
                ErrorKind::RegionUnsealed,
                OP,
                "the peer marked a region frozen but did not add F_SEAL_WRITE; the connection was closed",
            ));
        }
        if !frozen && (seals.write || seals.future_write) {
            return Err(Error::protocol(
                OP,
                "the peer sent a write-sealed region without the frozen flag",
            ));
        }
        if u64::try_from(info.size).ok() != Some(size) {
            return Err(Error::new(
                ErrorKind::RegionSizeMismatch,
                OP,
                format!(
                    "the descriptor says {size} bytes but the file has {} bytes; the connection was closed",
                    info.size
                ),
            ));
        }
        let size = usize::try_from(size).map_err(|_| {
            Error::new(
                ErrorKind::LimitExceeded,
                OP,
                "the region is larger than this process's address space",
            )
        })?;
        Ok(Inspected {
            size,
            identity: info.identity,
            frozen,
        })
    }

    /// The region this process already has for the inspected file, if any (the peer sent
    /// back a region of ours, or the same file came over another connection).
    pub(crate) fn existing(inspected: &Inspected, realm: Realm) -> Option<Region> {
        let inner = registry().get(&(realm, inspected.identity))?.upgrade()?;
        let region = Region { inner };
        (!region.is_closed() && region.is_frozen() == inspected.frozen).then_some(region)
    }

    /// Maps a descriptor that passed [`Region::inspect`]; `charge` is what it counts
    /// against the process's limits for as long as it lives.
    pub(crate) fn adopt(
        fd: Arc<OwnedFd>,
        inspected: Inspected,
        realm: Realm,
        charge: Charge,
    ) -> Result<Region> {
        let primary = Mapping::new(fd.as_fd(), inspected.size, inspected.frozen)?;
        let region = Region::from_parts(
            fd,
            (realm, inspected.identity),
            inspected.size,
            primary,
            inspected.frozen,
            Some(charge),
        );
        registry().insert(region.key(), Arc::downgrade(&region.inner));
        Ok(region)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Whether the region is frozen: write-sealed, its contents fixed for every process.
    pub fn is_frozen(&self) -> bool {
        self.inner.frozen.load(Ordering::Acquire)
    }

    /// Whether the region was transferred to a peer and has not come back.
    pub fn is_transferred(&self) -> bool {
        self.inner.away.load(Ordering::Acquire)
    }

    /// Whether [`Region::close`] was called (on any handle).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// A number that identifies this region within the process (clones share it).
    pub fn serial(&self) -> u64 {
        self.inner.serial
    }

    /// `(st_dev, st_ino)` of the memory file: equal for every descriptor of it.
    pub(crate) fn identity(&self) -> (u64, u64) {
        self.inner.identity
    }

    fn key(&self) -> Key {
        (self.inner.realm, self.inner.identity)
    }

    pub(crate) fn downgrade(&self) -> WeakRegion {
        WeakRegion(Arc::downgrade(&self.inner))
    }

    /// Whether two handles refer to the same region.
    pub fn same_as(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The memory file (to pass to another process by other means, or to inspect).
    /// `None` once closed.
    pub fn file(&self) -> Option<Arc<OwnedFd>> {
        self.state().fd.clone()
    }

    /// Fails unless this process may touch the region now.
    pub(crate) fn check_usable(&self, op: &'static str) -> Result<()> {
        if self.is_closed() {
            return Err(Error::new(
                ErrorKind::RegionClosed,
                op,
                "the region is closed; create a new one",
            ));
        }
        if self.is_transferred() {
            return Err(Error::new(
                ErrorKind::RegionTransferred,
                op,
                "the region was transferred to a peer; it is usable again when the peer sends it \
                 back, or after reclaim() once that connection has ended",
            ));
        }
        Ok(())
    }

    fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.is_frozen() {
            return Err(Error::new(
                ErrorKind::RegionFrozen,
                op,
                "the region is frozen and cannot be written; copy the data into a new region",
            ));
        }
        Ok(())
    }

    fn check_range(&self, op: &'static str, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(Error::invalid(
                op,
                format!(
                    "bytes {offset}..{offset}+{len} lie outside the region's {} bytes",
                    self.size()
                ),
            )),
        }
    }

    fn primary(&self, op: &'static str) -> Result<Arc<Mapping>> {
        self.check_usable(op)?;
        self.state().primary.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::RegionClosed,
                op,
                "the region is closed; create a new one",
            )
        })
    }

    /// The mapping behind [`Region::as_ptr`]: keeping the `Arc` keeps the address range
    /// valid, even after the region is closed.
    pub fn mapping(&self) -> Result<Arc<Mapping>> {
        self.primary("Region.mapping")
    }

    /// The first byte of the region, for reading.
    ///
    /// Reading through it is sound while the peer follows the protocol: it does not write
    /// a region while it is handed to this side (`docs/MEMORY-MODEL.md`). The pointer is
    /// valid while a handle or [`Region::mapping`] lives.
    pub fn as_ptr(&self) -> Result<*const u8> {
        Ok(self.primary("Region.as_ptr")?.as_ptr().cast_const())
    }

    /// The first byte of the region, for writing. Fails once the region is frozen.
    pub fn as_mut_ptr(&self) -> Result<*mut u8> {
        self.check_writable("Region.as_mut_ptr")?;
        Ok(self.primary("Region.as_mut_ptr")?.as_ptr())
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the region.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        // SAFETY: `buf` is a Rust slice, valid for `buf.len()` bytes of writes; a slice
        // cannot alias region memory (P1: no references over it exist).
        unsafe { self.copy_out(offset, buf.as_mut_ptr(), buf.len()) }
    }

    /// Copies `data` into the region starting at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        // SAFETY: `data` is a Rust slice, valid for `data.len()` bytes of reads.
        unsafe { self.copy_in(offset, data.as_ptr(), data.len()) }
    }

    /// Copies `len` bytes at `offset` out of the region to `dst`.
    ///
    /// # Safety
    /// - `dst` must be valid for writes of `len` bytes for the duration of the call.
    /// - `dst` may point into this or any other region's memory: the copy is a
    ///   `memmove`, and no reference is formed over either range.
    ///
    /// A frozen region is read from its memory file, not from this process's mapping:
    /// what it returns is what every peer sees, whatever a stray write through a view
    /// changed in this process's copy-on-write pages.
    pub unsafe fn copy_out(&self, offset: usize, dst: *mut u8, len: usize) -> Result<()> {
        const OP: &str = "Region.read";
        self.check_range(OP, offset, len)?;
        let mapping = self.primary(OP)?;
        if self.is_frozen() {
            let file = self.file().ok_or_else(|| closed_error(OP))?;
            // SAFETY: the caller guarantees `dst` for `len` writes; pread writes through it.
            return unsafe { sys::read_file_at(file.as_fd(), offset, dst, len, OP) };
        }
        let _copying = self.inner.contents.read();
        let src = mapping.as_ptr().wrapping_add(offset);
        // SAFETY: `offset..offset + len` lies inside the mapping (checked), which
        // `mapping` keeps alive; the caller guarantees `dst` for `len` bytes. `ptr::copy`
        // allows the ranges to overlap. No peer writes the range meanwhile (P3).
        unsafe { std::ptr::copy(src, dst, len) };
        Ok(())
    }

    /// Copies `len` bytes from `src` into the region at `offset`.
    ///
    /// # Safety
    /// - `src` must be valid for reads of `len` bytes for the duration of the call.
    /// - `src` may point into this or any other region's memory (a `memmove`).
    pub unsafe fn copy_in(&self, offset: usize, src: *const u8, len: usize) -> Result<()> {
        const OP: &str = "Region.write";
        self.check_range(OP, offset, len)?;
        let mapping = self.primary(OP)?;
        let _copying = self.inner.contents.read();
        // Checked under the lock `freeze` takes exclusively, so no write lands after the seal.
        self.check_writable(OP)?;
        let dst = mapping.as_ptr().wrapping_add(offset);
        // SAFETY: as in `copy_out`, with the roles swapped; the region is not frozen, so
        // the mapping is shared and writable.
        unsafe { std::ptr::copy(src, dst, len) };
        Ok(())
    }

    /// The first view lent earlier and still alive of which `reuse` makes something, so
    /// that a binding can hand it out again rather than map the memory a second time: a
    /// receiver that drops its `Region` objects between messages would otherwise map (and
    /// fault in) the whole region again whenever an old view outlives its object. `None`
    /// while the region is away or closed, whose views are revoked.
    pub fn lent<L: Lease, T>(&self, reuse: impl Fn(&L) -> Option<T>) -> Option<T> {
        if self.check_usable("Region.bytes").is_err() {
            return None;
        }
        let state = self.state();
        state.lent.iter().find_map(|lent| {
            let lease: Arc<dyn Any + Send + Sync> = lent.lease.upgrade()?;
            reuse(&*lease.downcast::<L>().ok()?)
        })
    }

    /// Lends the region's memory to a runtime: `make` turns a mapping into a view and
    /// returns the [`Lease`] that can revoke it. The region's own mapping is lent unless
    /// a live view already uses it; then a second mapping of the same memory is.
    ///
    /// Transferring or closing the region revokes every lease, whichever handle took it.
    pub fn lend<L: Lease + 'static>(
        &self,
        make: impl FnOnce(Arc<Mapping>) -> Result<Arc<L>>,
    ) -> Result<Arc<L>> {
        const OP: &str = "Region.bytes";
        self.check_usable(OP)?;
        let mut state = self.state();
        state.lent.retain(|lent| lent.lease.strong_count() > 0);
        let primary_free = !state.lent.iter().any(|lent| lent.on_primary);
        let mapping = match (&state.primary, primary_free) {
            (Some(primary), true) => Arc::clone(primary),
            (Some(_), false) => {
                let fd = state.fd.clone().ok_or_else(|| closed_error(OP))?;
                let mapping = Arc::new(Mapping::new(fd.as_fd(), self.size(), self.is_frozen())?);
                state.extra.retain(|m| m.strong_count() > 0);
                state.extra.push(Arc::downgrade(&mapping));
                mapping
            }
            (None, _) => return Err(closed_error(OP)),
        };
        let lease = make(mapping)?;
        let weak: Weak<L> = Arc::downgrade(&lease);
        state.lent.push(Lent {
            lease: weak,
            on_primary: primary_free,
        });
        Ok(lease)
    }

    /// Revokes every view lent to a runtime.
    fn revoke_leases(state: &mut State) {
        for lent in state.lent.drain(..) {
            if let Some(lease) = lent.lease.upgrade() {
                lease.revoke();
            }
        }
    }

    /// Hands the region to a peer over the connection whose ending `over` reports: views
    /// are revoked and the region refuses access until it comes back. Mappings are kept,
    /// so a region that returns costs no new mapping.
    pub(crate) fn send_away(&self, over: &Arc<Fate>) {
        let mut state = self.state();
        Self::revoke_leases(&mut state);
        state.custody = Custody::Away {
            over: Arc::clone(over),
        };
        self.inner.away.store(true, Ordering::Release);
    }

    /// A transfer that never left: the region is usable here again, as before.
    pub(crate) fn keep(&self) {
        let mut state = self.state();
        if let Custody::Away { .. } = state.custody {
            state.custody = Custody::Here { via: None };
            self.inner.away.store(false, Ordering::Release);
        }
    }

    /// A frame brought the region to this process over the connection `via`; with
    /// `transferred`, the peer gave it up, and this side gives it up again if it ends
    /// that connection before passing the region on.
    pub(crate) fn arrive(&self, via: &Arc<Fate>, transferred: bool) {
        let mut state = self.state();
        state.custody = Custody::Here {
            via: transferred.then(|| Arc::clone(via)),
        };
        self.inner.away.store(false, Ordering::Release);
    }

    /// This side ended the connection `via`: a region that came over it with a transfer
    /// and is still here goes back to its sender (views revoked, access refused).
    pub(crate) fn give_up_if_from(&self, via: &Arc<Fate>) {
        let mut state = self.state();
        if matches!(&state.custody, Custody::Here { via: Some(from) } if Arc::ptr_eq(from, via)) {
            Self::revoke_leases(&mut state);
            state.custody = Custody::GivenUp;
            self.inner.away.store(true, Ordering::Release);
        }
    }

    /// Takes back a region transferred over a connection the peer has since ended (it
    /// closed, crashed, or broke the protocol), so a pipeline can reuse its buffers.
    ///
    /// By `docs/PROTOCOL.md` §6 the side that ends a connection gives up the regions
    /// transferred to it over that connection; a peer that crashed has lost its mappings
    /// before its end of the socket closed. Why that makes this sound, and what it
    /// assumes (the peer did not pass the region on), is `docs/MEMORY-MODEL.md` §5.1.
    /// Fails with [`ErrorKind::RegionTransferred`] while the connection is open, or when
    /// this side ended it (the peer keeps what it was given).
    pub fn reclaim(&self) -> Result<()> {
        const OP: &str = "Region.reclaim";
        if self.is_closed() {
            return Err(closed_error(OP));
        }
        let mut state = self.state();
        let refusal = match &state.custody {
            Custody::Here { .. } => return Ok(()),
            Custody::Away { over } if over.get() == Fate::ENDED_BY_PEER => {
                state.custody = Custody::Here { via: None };
                self.inner.away.store(false, Ordering::Release);
                return Ok(());
            }
            Custody::Away { over } if over.get() == Fate::OPEN => {
                "the connection the region was transferred over is still open; wait until the \
                 peer sends it back"
            }
            Custody::Away { .. } => {
                "this side ended the connection the region was transferred over, so the peer \
                 keeps it (docs/MEMORY-MODEL.md §5.1)"
            }
            Custody::GivenUp => {
                "the region was transferred to this side over a connection this side ended, so \
                 it went back to its sender"
            }
        };
        Err(Error::new(ErrorKind::RegionTransferred, OP, refusal))
    }

    /// Remembers that `binder` bound the region in its namespace; returns false when the
    /// region is already closed (the binder must release it at once).
    pub(crate) fn add_binder(&self, binder: Weak<dyn Binder>) -> bool {
        let mut state = self.state();
        if self.is_closed() {
            return false;
        }
        state.binders.retain(|b| b.strong_count() > 0);
        state.binders.push(binder);
        true
    }

    /// Makes the contents immutable for every process: adds `F_SEAL_WRITE`.
    ///
    /// Each of this process's mappings is first replaced, at the same address, by a
    /// copy-on-write one, so pointers and views stay valid and readable; a stray write
    /// through them changes only a private copy of that page. Fails with
    /// [`ErrorKind::RegionBusy`] while a peer maps the region writable, and leaves the
    /// region exactly as it was: shared and writable.
    ///
    /// Must not run while a thread writes through a pointer or view (an asynchronous
    /// read into `bytes`): that write could land in the private copy.
    pub fn freeze(&self) -> Result<()> {
        const OP: &str = "Region.freeze";
        self.check_usable(OP)?;
        let _exclusive = self.inner.contents.write();
        let state = self.state();
        if self.is_frozen() {
            return Ok(());
        }
        let fd = state.fd.clone().ok_or_else(|| closed_error(OP))?;
        let seals = sys::seals(fd.as_fd())?.unwrap_or_default();
        if seals.future_write || seals.write {
            return Err(Error::new(
                ErrorKind::RegionBusy,
                OP,
                "a peer added F_SEAL_FUTURE_WRITE to the region while mapping it writable; it \
                 cannot be frozen",
            ));
        }
        let mappings: Vec<Arc<Mapping>> = state
            .primary
            .iter()
            .cloned()
            .chain(state.extra.iter().filter_map(Weak::upgrade))
            .collect();
        drop(state);
        let converted = mappings
            .iter()
            .take_while(|m| self.remap(fd.as_fd(), m, sys::MapKind::Private).is_ok())
            .count();
        let sealed = if converted == mappings.len() {
            sys::seal_contents(fd.as_fd(), OP)
        } else {
            Err(Error::new(
                ErrorKind::Os,
                OP,
                "a mapping could not be made copy-on-write",
            ))
        };
        match sealed {
            Ok(()) => {
                self.inner.frozen.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                let restored = mappings[..converted]
                    .iter()
                    .all(|m| self.remap(fd.as_fd(), m, sys::MapKind::Shared).is_ok());
                if restored {
                    Err(e.during(OP))
                } else {
                    // A peer added a seal between our check and now, so the shared mapping
                    // cannot come back. A private mapping would let local writes silently
                    // miss the peer; close the region instead.
                    self.close();
                    Err(Error::new(
                        ErrorKind::RegionBusy,
                        OP,
                        "a peer sealed the region while it was being frozen; the region was \
                         closed rather than left diverging from the peer's copy",
                    ))
                }
            }
        }
    }

    fn remap(&self, fd: BorrowedFd<'_>, mapping: &Mapping, kind: sys::MapKind) -> Result<()> {
        // SAFETY: `mapping` is a live mapping of this region's file at offset 0 owned by
        // this region (primary or extra), of exactly `len` bytes; the file is sealed
        // against shrinking and has the region's size.
        unsafe { sys::remap_in_place(mapping.start(), mapping.len(), fd, kind) }
    }

    /// Lets go of the region now: views are revoked, the peers it was sent to are told
    /// they may unmap it (RELEASE), the memory file is closed and every mapping's contents
    /// are replaced by private zero pages at the same address, so native code still
    /// holding a pointer (an I/O job on a thread) writes harmlessly. The address range
    /// itself is unmapped when the last [`Mapping`] is dropped. Idempotent.
    pub fn close(&self) {
        let binders = {
            let mut state = self.state();
            if self.inner.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            Self::revoke_leases(&mut state);
            for mapping in state
                .primary
                .iter()
                .cloned()
                .chain(state.extra.iter().filter_map(Weak::upgrade))
            {
                // A mapping nobody else holds (no view, no `mapping()` caller) is
                // unmapped when it drops below anyway: replacing it first would only map
                // zero pages to unmap them at once. Nothing can take a new hold
                // meanwhile: `primary()` clones under the lock held here, and extras are
                // held only by their views.
                let held_here = if state
                    .primary
                    .as_ref()
                    .is_some_and(|primary| Arc::ptr_eq(primary, &mapping))
                {
                    2
                } else {
                    1
                };
                if Arc::strong_count(&mapping) == held_here {
                    continue;
                }
                // Should the kernel refuse the replacement (out of memory for page
                // tables), the shared mapping stays: still valid memory, released when
                // the last Mapping drops instead of now.
                // SAFETY: `mapping` is a live mapping owned by this region (primary or
                // extra) of exactly `len` bytes; replacing it keeps the range mapped.
                let _ = unsafe { sys::discard_in_place(mapping.start(), mapping.len()) };
            }
            state.primary = None;
            state.extra.clear();
            state.fd = None;
            state.charge = None;
            std::mem::take(&mut state.binders)
        };
        {
            let mut registry = registry();
            if registry
                .get(&self.key())
                .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&self.inner)))
            {
                registry.remove(&self.key());
            }
        }
        for binder in binders.iter().filter_map(Weak::upgrade) {
            binder.region_closed(self);
        }
    }
}

/// What [`fuzz_file`] makes.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum FuzzFile {
    /// A memory file sealed against shrinking and growing, and write-sealed when `frozen`.
    Sealed { frozen: bool },
    /// The read end of a pipe (not a memory file).
    Pipe,
}

/// A file for the fuzzing entry points, as a peer could send one. A memory file is made
/// with the same calls as [`Region::create`] but is never mapped here, so that each
/// costs a few system calls.
#[doc(hidden)]
pub(crate) fn fuzz_file(size: usize, kind: FuzzFile) -> Option<OwnedFd> {
    const OP: &str = "fuzz";
    match kind {
        FuzzFile::Sealed { frozen } => {
            let fd = sys::create_memory_file(size, OP).ok()?;
            if frozen {
                sys::seal_contents(fd.as_fd(), OP).ok()?;
            }
            Some(fd)
        }
        FuzzFile::Pipe => std::io::pipe().ok().map(|(reader, _)| reader.into()),
    }
}

fn closed_error(op: &'static str) -> Error {
    Error::new(
        ErrorKind::RegionClosed,
        op,
        "the region is closed; create a new one",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Another process's writable mapping of `region`, made through its memory file.
    fn outside_mapping(region: &Region) -> MmapRaw {
        let file = region.file().unwrap();
        MmapOptions::new()
            .len(region.size())
            .map_raw(&file.as_fd())
            .unwrap()
    }

    struct Counted(Mutex<u32>);
    impl Lease for Counted {
        fn revoke(&self) {
            *self.0.lock().unwrap() += 1;
        }
    }

    #[test]
    fn create_rejects_zero_and_huge_sizes() {
        assert_eq!(
            Region::create(0).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            Region::create(usize::MAX).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn created_region_is_zeroed_sealed_noexec_and_writable() {
        let r = Region::create(8192).unwrap();
        let mut buf = [1u8; 16];
        r.read(8176, &mut buf).unwrap();
        assert_eq!(buf, [0; 16]);
        r.write(8176, b"0123456789abcdef").unwrap();
        r.read(8176, &mut buf).unwrap();
        assert_eq!(&buf, b"0123456789abcdef");
        let file = r.file().unwrap();
        let seals = sys::seals(file.as_fd()).unwrap().unwrap();
        assert!(seals.shrink && seals.grow && !seals.write);
        assert!(nix::unistd::ftruncate(&*file, 4096).is_err());
        let mode = nix::sys::stat::fstat(file.as_fd()).unwrap().st_mode;
        assert_eq!(mode & 0o111, 0, "MFD_NOEXEC_SEAL: never executable");
    }

    #[test]
    fn read_and_write_reject_out_of_range() {
        let r = Region::create(100).unwrap();
        assert_eq!(
            r.write(99, b"ab").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            r.read(usize::MAX, &mut [0; 2]).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn freeze_keeps_pointers_readable_and_read_reports_the_frozen_contents() {
        let r = Region::create(4096).unwrap();
        r.write(0, b"frozen").unwrap();
        let mapping = r.mapping().unwrap();
        r.freeze().unwrap();
        assert!(r.is_frozen());
        assert_eq!(
            r.write(0, b"x").unwrap_err().kind(),
            ErrorKind::RegionFrozen
        );
        // A stray write through an old pointer lands in a private copy only, and read()
        // keeps reporting what every peer sees.
        // SAFETY: `mapping` maps 4096 bytes and lives for this block.
        unsafe { mapping.as_ptr().write(b'X') };
        let mut buf = [0u8; 6];
        r.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"frozen");
        assert!(
            sys::seals(r.file().unwrap().as_fd())
                .unwrap()
                .unwrap()
                .write
        );
    }

    #[test]
    fn freeze_fails_busy_while_another_writable_mapping_exists_and_changes_nothing() {
        let r = Region::create(4096).unwrap();
        let outside = outside_mapping(&r);
        assert_eq!(r.freeze().unwrap_err().kind(), ErrorKind::RegionBusy);
        assert!(!r.is_frozen());
        r.write(0, b"still shared").unwrap();
        // SAFETY: `outside` maps 4096 bytes and lives for this block.
        let first = unsafe { outside.as_ptr().read() };
        assert_eq!(first, b's', "the region stayed shared");
        drop(outside);
        r.freeze().unwrap();
    }

    #[test]
    fn a_peer_that_added_future_write_cannot_leave_the_region_private() {
        let r = Region::create(4096).unwrap();
        let outside = outside_mapping(&r);
        let file = r.file().unwrap();
        nix::fcntl::fcntl(
            &*file,
            nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_FUTURE_WRITE),
        )
        .unwrap();
        assert_eq!(r.freeze().unwrap_err().kind(), ErrorKind::RegionBusy);
        assert!(!r.is_frozen() && !r.is_closed());
        r.write(0, b"reaches the peer").unwrap();
        // SAFETY: `outside` maps 4096 bytes and lives for this block.
        let first = unsafe { outside.as_ptr().read() };
        assert_eq!(first, b'r', "local writes still reach the peer");
    }

    #[test]
    fn views_are_revoked_by_transfer_and_close_whichever_handle_lent_them() {
        let r = Region::create(4096).unwrap();
        let other_handle = r.clone();
        let counted = |_: Arc<Mapping>| Ok(Arc::new(Counted(Mutex::new(0))));
        let first = r.lend(counted).unwrap();
        let second = other_handle.lend(counted).unwrap();
        r.send_away(&Arc::new(Fate::default()));
        assert_eq!(
            (*first.0.lock().unwrap(), *second.0.lock().unwrap()),
            (1, 1)
        );
        assert_eq!(
            r.lend(counted).err().map(|e| e.kind()),
            Some(ErrorKind::RegionTransferred)
        );
        r.keep();
        let third = r.lend(counted).unwrap();
        r.close();
        assert_eq!(*third.0.lock().unwrap(), 1);
        assert!(r.mapping().is_err());
    }

    #[test]
    fn the_region_mapping_is_lent_once_then_a_second_mapping() {
        let r = Region::create(4096).unwrap();
        let mut lent = Vec::new();
        let first = r
            .lend(|m| {
                lent.push(m.as_ptr());
                Ok(Arc::new(Counted(Mutex::new(0))))
            })
            .unwrap();
        let _second = r
            .lend(|m| {
                lent.push(m.as_ptr());
                Ok(Arc::new(Counted(Mutex::new(0))))
            })
            .unwrap();
        assert_eq!(lent[0], r.as_ptr().unwrap().cast_mut());
        assert_ne!(lent[0], lent[1], "a second live view gets a second mapping");
        drop(first);
        let mut again = std::ptr::null_mut();
        let _third = r
            .lend(|m| {
                again = m.as_ptr();
                Ok(Arc::new(Counted(Mutex::new(0))))
            })
            .unwrap();
        assert_eq!(
            again, lent[0],
            "once its view is gone, the region's own mapping is lent again"
        );
    }

    #[test]
    fn a_live_view_is_found_again_until_it_is_revoked_or_gone() {
        struct Other;
        impl Lease for Other {
            fn revoke(&self) {}
        }
        let r = Region::create(4096).unwrap();
        let handle = r.clone();
        let count = |view: &Counted| Some(*view.0.lock().unwrap());
        assert_eq!(r.lent(count), None, "nothing lent yet");
        let other = r.lend(|_| Ok(Arc::new(Other))).unwrap();
        assert_eq!(
            r.lent(count),
            None,
            "a view of another binding's type is not handed out"
        );
        let view = r.lend(|_| Ok(Arc::new(Counted(Mutex::new(7))))).unwrap();
        assert_eq!(handle.lent(count), Some(7), "found through any handle");
        assert_eq!(
            r.lent(|_: &Counted| None::<u32>),
            None,
            "the binding may decline it"
        );
        r.send_away(&Arc::new(Fate::default()));
        assert_eq!(r.lent(count), None, "a region away lends nothing");
        r.keep();
        assert_eq!(r.lent(count), None, "revoked views are forgotten");
        let again = r.lend(|_| Ok(Arc::new(Counted(Mutex::new(8))))).unwrap();
        assert_eq!(r.lent(count), Some(8));
        drop((again, view, other));
        assert_eq!(
            r.lent(count),
            None,
            "views the binding let go of are not found"
        );
    }

    #[test]
    fn close_releases_the_file_and_keeps_addresses_valid() {
        let r = Region::create(1 << 20).unwrap();
        r.write(0, b"gone").unwrap();
        let mapping = r.mapping().unwrap();
        r.close();
        assert!(r.is_closed() && r.file().is_none());
        // SAFETY: `mapping` keeps the range mapped (now private zero pages).
        assert_eq!(unsafe { mapping.as_ptr().read() }, 0);
        // SAFETY: as above; writing is harmless.
        unsafe { mapping.as_ptr().write(7) };
        assert_eq!(
            r.write(0, b"x").unwrap_err().kind(),
            ErrorKind::RegionClosed
        );
    }

    #[test]
    fn reclaim_only_after_the_peer_ended_the_connection() {
        let r = Region::create(4096).unwrap();
        let by_peer = Arc::new(Fate::default());
        r.send_away(&by_peer);
        assert_eq!(
            r.reclaim().unwrap_err().kind(),
            ErrorKind::RegionTransferred,
            "still open"
        );
        by_peer.end(true);
        r.reclaim().unwrap();
        assert!(!r.is_transferred());

        let here = Arc::new(Fate::default());
        r.send_away(&here);
        here.end(false);
        assert_eq!(
            r.reclaim().unwrap_err().kind(),
            ErrorKind::RegionTransferred,
            "the peer keeps it"
        );
    }

    #[test]
    fn ending_a_connection_gives_up_what_came_over_it_with_a_transfer() {
        let (kept, given) = (Region::create(4096).unwrap(), Region::create(4096).unwrap());
        let (other, connection) = (Arc::new(Fate::default()), Arc::new(Fate::default()));
        kept.arrive(&connection, false);
        given.arrive(&connection, true);
        given.give_up_if_from(&other);
        assert!(
            !given.is_transferred(),
            "another connection's end changes nothing"
        );
        kept.give_up_if_from(&connection);
        given.give_up_if_from(&connection);
        assert!(!kept.is_transferred(), "a shared region stays");
        assert!(given.is_transferred());
        assert_eq!(
            given.reclaim().unwrap_err().kind(),
            ErrorKind::RegionTransferred
        );
        assert_eq!(
            given.check_usable("x").unwrap_err().kind(),
            ErrorKind::RegionTransferred
        );
    }

    #[test]
    fn inspect_rejects_a_descriptor_with_a_lying_size_or_frozen_flag() {
        let r = Region::create(4096).unwrap();
        let file = r.file().unwrap();
        assert_eq!(
            Region::inspect(file.as_fd(), 8192, false)
                .unwrap_err()
                .kind(),
            ErrorKind::RegionSizeMismatch
        );
        assert_eq!(
            Region::inspect(file.as_fd(), 4096, true)
                .unwrap_err()
                .kind(),
            ErrorKind::RegionUnsealed
        );
        assert!(Region::inspect(file.as_fd(), 4096, false).is_ok());
    }
}
