//! Regions: sealed anonymous memory files and their mappings.
//!
//! A [`Region`] is a cheap handle (clones share one region). The memory file's size is
//! sealed at creation, so no process can shrink it under a mapping and no access can
//! raise `SIGBUS`. Mappings are raw ([`memmap2::MmapRaw`]): this crate never forms a
//! `&[u8]` or `&mut [u8]` over shared memory, because another process may write it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use crate::sys;

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// One mapping of a region into this process's address space.
///
/// A binding that lends the memory to a garbage-collected runtime keeps an
/// `Arc<Mapping>` until the runtime lets go; the range stays mapped until then.
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

    fn shared(fd: BorrowedFd<'_>, size: usize) -> Result<Mapping> {
        MmapOptions::new()
            .len(size)
            .map_raw(&fd)
            .map(|map| Mapping { map })
            .map_err(|e| map_error(e, "mmap(MAP_SHARED)"))
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

fn map_error(e: std::io::Error, op: &'static str) -> Error {
    match e.raw_os_error() {
        Some(errno) => Error::os(
            op,
            nix::errno::Errno::from_raw(errno),
            "the region could not be mapped (address space or vm.max_map_count exhausted?)",
        ),
        None => Error::new(ErrorKind::Os, op, e.to_string()),
    }
}

#[derive(Debug)]
struct Inner {
    serial: u64,
    fd: OwnedFd,
    size: usize,
    identity: (u64, u64),
    /// The mapping `as_ptr` hands out; lives as long as the region.
    primary: Arc<Mapping>,
    /// Every other mapping still alive (`map_again`), so `freeze` can convert them all.
    extra: Mutex<Vec<Weak<Mapping>>>,
    frozen: AtomicBool,
    transferred: AtomicBool,
}

/// A shared-memory region: a sealed anonymous memory file, mapped.
///
/// Cloning gives another handle to the same region. The file is closed and the memory
/// unmapped when the last handle, and the last [`Mapping`] a binding holds, is dropped.
#[derive(Debug, Clone)]
pub struct Region {
    inner: Arc<Inner>,
}

impl Region {
    /// Creates a zero-filled region of `size` bytes, shared-mapped and writable.
    ///
    /// Backed by `memfd_create(2)` with `MFD_CLOEXEC | MFD_ALLOW_SEALING`, sized once
    /// with `ftruncate(2)` and sealed with `F_SEAL_SHRINK | F_SEAL_GROW`. Nothing appears
    /// in `/dev/shm`, so a crash leaves nothing behind.
    pub fn create(size: usize) -> Result<Region> {
        if size == 0 || isize::try_from(size).is_err() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "Region::create",
                format!(
                    "size must be between 1 and {} bytes, not {size}",
                    isize::MAX
                ),
            ));
        }
        let fd = sys::create_memory_file(size)?;
        let info = sys::file_info(fd.as_fd())?;
        let primary = Mapping::shared(fd.as_fd(), size)?;
        Ok(Region::from_parts(fd, size, info.identity, primary, false))
    }

    fn from_parts(
        fd: OwnedFd,
        size: usize,
        identity: (u64, u64),
        primary: Mapping,
        frozen: bool,
    ) -> Region {
        Region {
            inner: Arc::new(Inner {
                serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
                fd,
                size,
                identity,
                primary: Arc::new(primary),
                extra: Mutex::new(Vec::new()),
                frozen: AtomicBool::new(frozen),
                transferred: AtomicBool::new(false),
            }),
        }
    }

    /// Checks a descriptor a peer sent against the rules of `docs/PROTOCOL.md` §5 and
    /// returns what [`Region::adopt`] needs to map it.
    pub(crate) fn inspect(fd: BorrowedFd<'_>, size: u64, frozen: bool) -> Result<sys::FileInfo> {
        inspect(fd, size, frozen)
    }

    /// Maps a descriptor that passed [`Region::inspect`].
    pub(crate) fn adopt(fd: OwnedFd, info: sys::FileInfo, frozen: bool) -> Result<Region> {
        let size = usize::try_from(info.size).map_err(|_| {
            Error::new(
                ErrorKind::RegionSizeMismatch,
                "adopt region",
                "the region is too large to map",
            )
        })?;
        let primary = if frozen {
            Mapping::private(fd.as_fd(), size)?
        } else {
            Mapping::shared(fd.as_fd(), size)?
        };
        Ok(Region::from_parts(fd, size, info.identity, primary, frozen))
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
        self.inner.transferred.load(Ordering::Acquire)
    }

    pub(crate) fn set_transferred(&self, transferred: bool) {
        self.inner.transferred.store(transferred, Ordering::Release);
    }

    /// A number that identifies this region within the process (clones share it).
    pub fn serial(&self) -> u64 {
        self.inner.serial
    }

    /// `(st_dev, st_ino)` of the memory file: equal for every descriptor of it.
    pub(crate) fn identity(&self) -> (u64, u64) {
        self.inner.identity
    }

    /// Whether two handles refer to the same region object.
    pub fn same_as(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn check_accessible(&self, op: &'static str) -> Result<()> {
        if self.is_transferred() {
            return Err(Error::new(
                ErrorKind::RegionTransferred,
                op,
                "the region was transferred to a peer; wait until the peer sends it back",
            ));
        }
        Ok(())
    }

    /// The first byte of the region, for reading.
    ///
    /// Reading through it is sound while the peer follows the protocol: it does not
    /// write a region while it is handed to this side (`docs/MEMORY-MODEL.md`).
    pub fn as_ptr(&self) -> Result<*const u8> {
        self.check_accessible("Region::as_ptr")?;
        Ok(self.inner.primary.as_ptr().cast_const())
    }

    /// The first byte of the region, for writing. Fails once the region is frozen.
    pub fn as_mut_ptr(&self) -> Result<*mut u8> {
        self.check_accessible("Region::as_mut_ptr")?;
        self.check_writable("Region::as_mut_ptr")?;
        Ok(self.inner.primary.as_ptr())
    }

    fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.is_frozen() {
            return Err(Error::new(
                ErrorKind::RegionFrozen,
                op,
                "the region is frozen and cannot be written",
            ));
        }
        Ok(())
    }

    fn check_range(&self, op: &'static str, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                op,
                format!(
                    "bytes {offset}..{offset}+{len} lie outside the region's {} bytes",
                    self.size()
                ),
            )),
        }
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the region.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_accessible("Region::read")?;
        self.check_range("Region::read", offset, buf.len())?;
        let src = self.inner.primary.as_ptr().wrapping_add(offset);
        // SAFETY: `offset..offset + buf.len()` lies inside the mapping (checked above),
        // which lives as long as `self`; `buf` is a distinct Rust allocation, so the
        // ranges cannot overlap. The protocol guarantees no peer writes meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into the region starting at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_accessible("Region::write")?;
        self.check_writable("Region::write")?;
        self.check_range("Region::write", offset, data.len())?;
        let dst = self.inner.primary.as_ptr().wrapping_add(offset);
        // SAFETY: as in `read`, with the roles swapped; the region is not frozen, so the
        // mapping is shared and writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// The mapping behind [`Region::as_ptr`], for a binding that must keep it alive
    /// beyond this handle (a JavaScript `ArrayBuffer`).
    pub fn mapping(&self) -> Arc<Mapping> {
        Arc::clone(&self.inner.primary)
    }

    /// A new mapping of the same memory at another address: copy-on-write when the
    /// region is frozen, shared and writable otherwise.
    pub fn map_again(&self) -> Result<Arc<Mapping>> {
        let mut extra = self.extra();
        let mapping = if self.is_frozen() {
            Mapping::private(self.as_fd(), self.size())?
        } else {
            Mapping::shared(self.as_fd(), self.size())?
        };
        let mapping = Arc::new(mapping);
        extra.retain(|m| m.strong_count() > 0);
        extra.push(Arc::downgrade(&mapping));
        Ok(mapping)
    }

    fn extra(&self) -> MutexGuard<'_, Vec<Weak<Mapping>>> {
        self.inner
            .extra
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the contents immutable for every process: adds `F_SEAL_WRITE`.
    ///
    /// Each of this process's mappings is first replaced, at the same address, by a
    /// copy-on-write one, so pointers and views stay valid and can still be read; a
    /// stray write through them changes only a private copy of that page. Fails with
    /// [`ErrorKind::RegionBusy`] while a peer still maps the region writable: freeze a
    /// region before sharing it.
    pub fn freeze(&self) -> Result<()> {
        self.check_accessible("Region::freeze")?;
        let extra = self.extra();
        if self.is_frozen() {
            return Ok(());
        }
        let mappings: Vec<Arc<Mapping>> = std::iter::once(Arc::clone(&self.inner.primary))
            .chain(extra.iter().filter_map(Weak::upgrade))
            .collect();
        for (done, mapping) in mappings.iter().enumerate() {
            if let Err(e) = self.remap(mapping, false) {
                self.restore_shared(&mappings[..done]);
                return Err(e);
            }
        }
        if let Err(e) = sys::seal_contents(self.as_fd()) {
            self.restore_shared(&mappings);
            return Err(e);
        }
        self.inner.frozen.store(true, Ordering::Release);
        Ok(())
    }

    fn remap(&self, mapping: &Mapping, shared: bool) -> Result<()> {
        // SAFETY: `mapping` is a live mapping of this region's file at offset 0 owned by
        // this region (primary or map_again), of exactly `len` bytes; the file is sealed
        // against shrinking and has the region's size.
        unsafe { sys::remap_in_place(mapping.start(), mapping.len(), self.as_fd(), shared) }
    }

    /// Undoes a partial freeze: back to shared mappings.
    fn restore_shared(&self, mappings: &[Arc<Mapping>]) {
        for mapping in mappings {
            // Restoring maps the same file at the same address with the kind it had a
            // moment ago; should even that fail, the mapping stays copy-on-write, which
            // is still memory-safe, and the error returned to the caller stands.
            let _ = self.remap(mapping, true);
        }
    }
}

impl AsFd for Region {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}

/// What a receiver checks before mapping, in the order `docs/PROTOCOL.md` §5 lists.
fn inspect(fd: BorrowedFd<'_>, size: u64, frozen: bool) -> Result<sys::FileInfo> {
    const OP: &str = "adopt region";
    let info = sys::file_info(fd)?;
    if !info.is_regular {
        return Err(Error::new(
            ErrorKind::RegionNotMemfd,
            OP,
            "the peer sent a descriptor that is not a memory file (a pipe, socket or device)",
        ));
    }
    let Some(seals) = sys::seals(fd)? else {
        return Err(Error::new(
            ErrorKind::RegionNotMemfd,
            OP,
            "the peer sent a file that cannot be sealed (not a memfd); regions must come from memfd_create",
        ));
    };
    if !(seals.shrink && seals.grow) {
        return Err(Error::new(
            ErrorKind::RegionUnsealed,
            OP,
            "the peer sent a memfd without F_SEAL_SHRINK and F_SEAL_GROW; it could shrink it and crash us",
        ));
    }
    if frozen && !seals.write {
        return Err(Error::new(
            ErrorKind::RegionUnsealed,
            OP,
            "the peer marked a region frozen but did not add F_SEAL_WRITE",
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
                "the descriptor says {size} bytes but the file has {} bytes",
                info.size
            ),
        ));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn created_region_is_zeroed_sealed_and_writable() {
        let r = Region::create(8192).unwrap();
        let mut buf = [1u8; 16];
        r.read(8176, &mut buf).unwrap();
        assert_eq!(buf, [0; 16]);
        r.write(8176, b"0123456789abcdef").unwrap();
        r.read(8176, &mut buf).unwrap();
        assert_eq!(&buf, b"0123456789abcdef");
        let seals = sys::seals(r.as_fd()).unwrap().unwrap();
        assert!(seals.shrink && seals.grow && !seals.write);
        assert!(nix::unistd::ftruncate(r.as_fd(), 4096).is_err());
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
    fn freeze_keeps_pointers_readable_and_blocks_writes_everywhere() {
        let r = Region::create(4096).unwrap();
        r.write(0, b"frozen").unwrap();
        let again = r.map_again().unwrap();
        r.freeze().unwrap();
        assert!(r.is_frozen());
        assert_eq!(
            r.write(0, b"x").unwrap_err().kind(),
            ErrorKind::RegionFrozen
        );
        let mut buf = [0u8; 6];
        r.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"frozen");
        // A stray write through an old pointer lands in a private copy only.
        // SAFETY: `again` maps 4096 bytes and lives for this block.
        unsafe { again.as_ptr().write(b'X') };
        let fresh = r.map_again().unwrap();
        // SAFETY: `fresh` maps 4096 bytes and lives for this block.
        assert_eq!(unsafe { fresh.as_ptr().read() }, b'f');
        assert!(sys::seals(r.as_fd()).unwrap().unwrap().write);
    }

    #[test]
    fn freeze_fails_busy_while_another_writable_mapping_exists() {
        let r = Region::create(4096).unwrap();
        let outside = MmapOptions::new().len(4096).map_raw(&r.as_fd()).unwrap();
        assert_eq!(r.freeze().unwrap_err().kind(), ErrorKind::RegionBusy);
        assert!(!r.is_frozen());
        r.write(0, b"still shared").unwrap();
        // SAFETY: `outside` maps 4096 bytes and lives for this block.
        assert_eq!(unsafe { outside.as_ptr().read() }, b's');
        drop(outside);
        r.freeze().unwrap();
    }

    #[test]
    fn adopt_rejects_a_descriptor_with_a_lying_size() {
        let r = Region::create(4096).unwrap();
        assert_eq!(
            Region::inspect(r.as_fd(), 8192, false).unwrap_err().kind(),
            ErrorKind::RegionSizeMismatch
        );
        assert_eq!(
            Region::inspect(r.as_fd(), 4096, true).unwrap_err().kind(),
            ErrorKind::RegionUnsealed
        );
        assert!(Region::inspect(r.as_fd(), 4096, false).is_ok());
    }
}
