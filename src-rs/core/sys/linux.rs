//! Linux: anonymous sealed memfds and `AF_UNIX`/`SOCK_SEQPACKET` sockets.
//!
//! Every descriptor is created close-on-exec atomically (`MFD_CLOEXEC`,
//! `SOCK_CLOEXEC`, `MSG_CMSG_CLOEXEC`) and wrapped in an [`OwnedFd`] the moment the
//! kernel returns it, so no path through this file can leak one.

use std::ffi::{c_int, c_uint};
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous};
use nix::sys::socket::{
    AddressFamily, Backlog, Shutdown, SockFlag, SockType, UnixAddr, accept4, bind, connect,
    getsockopt, listen, shutdown, socket, socketpair, sockopt,
};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat};
use nix::sys::statfs::{TMPFS_MAGIC, fstatfs};

use super::{Credentials, FileInfo, Interest, Io, MapKind, Received, Seals};
use crate::bytes::Bytes;
use crate::error::{Error, ErrorKind, Result};

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the file can never be made executable. Not in `libc` yet.
const MFD_NOEXEC_SEAL: c_uint = 0x0008;

/// Creates an anonymous memory file of `size` bytes whose size can never change again.
///
/// The shrink and grow seals are added before anyone else can see the descriptor;
/// `F_SEAL_SEAL` is left off so that [`seal_contents`] can still freeze it. The file is
/// created non-executable where the kernel knows how (`MFD_NOEXEC_SEAL`), which
/// `vm.memfd_noexec=2` requires; older kernels refuse the flag and get a plain memfd.
pub(crate) fn create_memory_file(size: usize, op: &'static str) -> Result<OwnedFd> {
    let len = i64::try_from(size)
        .map_err(|_| Error::invalid(op, format!("{size} bytes do not fit in off_t")))?;
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let fd = match memfd(base | MFD_NOEXEC_SEAL) {
        Err(Errno::EINVAL) => memfd(base),
        other => other,
    }
    .map_err(|e| {
        Error::os(
            op,
            "memfd_create",
            e,
            "raise the open-file limit (ulimit -n) or close unused regions",
        )
    })?;
    nix::unistd::ftruncate(&fd, len).map_err(|e| {
        Error::os(
            op,
            "ftruncate",
            e,
            "the region is larger than the memory this process may use",
        )
    })?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )
    .map_err(|e| {
        Error::os(
            op,
            "fcntl(F_ADD_SEALS)",
            e,
            "this kernel cannot seal memfds",
        )
    })?;
    Ok(fd)
}

/// `memfd_create(2)` as a system call rather than through glibc, whose wrapper (2.27)
/// would keep the published binary from loading on systems with an older glibc.
fn memfd(flags: c_uint) -> std::result::Result<OwnedFd, Errno> {
    // SAFETY: the name is a NUL-terminated literal; the kernel reads only it.
    let raw = unsafe { libc::syscall(libc::SYS_memfd_create, c"shmlink".as_ptr(), flags) };
    let raw = Errno::result(raw)? as RawFd;
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The seals on a file, or `None` when the file cannot carry seals at all (not a memfd).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> Result<Option<Seals>> {
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => {
            let flags = SealFlag::from_bits_truncate(bits);
            Ok(Some(Seals {
                shrink: flags.contains(SealFlag::F_SEAL_SHRINK),
                grow: flags.contains(SealFlag::F_SEAL_GROW),
                write: flags.contains(SealFlag::F_SEAL_WRITE),
                future_write: flags.contains(SealFlag::F_SEAL_FUTURE_WRITE),
            }))
        }
        Err(Errno::EINVAL) => Ok(None),
        Err(e) => Err(Error::os(
            "inspect region",
            "fcntl(F_GET_SEALS)",
            e,
            "the descriptor cannot be inspected",
        )),
    }
}

/// Adds the write seal (and the seal seal) so the contents can never change again.
pub(crate) fn seal_contents(fd: BorrowedFd<'_>, op: &'static str) -> Result<()> {
    match fcntl(
        fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL),
    ) {
        Ok(_) => Ok(()),
        Err(Errno::EBUSY) => Err(Error::sys(
            ErrorKind::RegionBusy,
            op,
            "fcntl(F_ADD_SEALS)",
            Errno::EBUSY,
            "the region is still mapped writable by a peer; freeze regions before sharing them",
        )),
        Err(e) => Err(Error::os(
            op,
            "fcntl(F_ADD_SEALS)",
            e,
            "the region cannot be frozen",
        )),
    }
}

/// `(st_dev, st_ino)` of a descriptor this process made itself, which needs no other
/// check: two descriptors with the same identity are the same file.
pub(crate) fn file_identity(fd: BorrowedFd<'_>) -> Result<(u64, u64)> {
    let st = stat_of(fd)?;
    Ok((st.st_dev, st.st_ino))
}

fn stat_of(fd: BorrowedFd<'_>) -> Result<nix::sys::stat::FileStat> {
    fstat(fd).map_err(|e| {
        Error::os(
            "inspect region",
            "fstat",
            e,
            "the descriptor cannot be inspected",
        )
    })
}

/// The file type, filesystem, size and identity of a descriptor.
pub(crate) fn file_info(fd: BorrowedFd<'_>) -> Result<FileInfo> {
    let st = stat_of(fd)?;
    let is_regular = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG;
    // Only regular files are asked which filesystem they live on; a socket or pipe
    // answers fstatfs too, but the answer means nothing for a region.
    let on_shmem = is_regular
        && fstatfs(fd)
            .map_err(|e| {
                Error::os(
                    "inspect region",
                    "fstatfs",
                    e,
                    "the descriptor cannot be inspected",
                )
            })?
            .filesystem_type()
            == TMPFS_MAGIC;
    Ok(FileInfo {
        is_regular,
        on_shmem,
        size: st.st_size,
        identity: (st.st_dev, st.st_ino),
    })
}

/// Copies `len` bytes of the file at `offset` to `dst` (`pread(2)`), as the file holds
/// them, whatever this process's private mappings of it say.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes for the duration of the call.
pub(crate) unsafe fn read_file_at(
    fd: BorrowedFd<'_>,
    offset: usize,
    dst: *mut u8,
    len: usize,
    op: &'static str,
) -> Result<()> {
    let mut done = 0;
    while done < len {
        let at = i64::try_from(offset + done)
            .map_err(|_| Error::invalid(op, "the offset does not fit in off_t"))?;
        let at_dst = dst.wrapping_add(done);
        // SAFETY: `at_dst .. dst + len` is valid for writes (the caller's contract); the
        // kernel writes at most `len - done` bytes there.
        let n = unsafe { libc::pread(fd.as_raw_fd(), at_dst.cast(), len - done, at) };
        match Errno::result(n) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::Os,
                    op,
                    "the region's file ended early; it cannot have shrunk (sealed), so report this",
                ));
            }
            Ok(n) => done += n as usize,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::os(op, "pread", e, "the region could not be read")),
        }
    }
    Ok(())
}

/// Replaces the mapping at `addr..addr + len` with a mapping of `fd` of `kind`, at the
/// same address.
///
/// The address range stays valid throughout, so raw pointers and JavaScript views
/// into it keep working; only the kind of mapping changes.
///
/// # Safety
/// - `addr..addr + len` must be exactly one live mapping of `fd` at offset 0 that the
///   caller owns (a [`crate::region`] mapping), so that no other code's memory is replaced.
/// - `fd` must be at least `len` bytes long and sealed against shrinking.
pub(crate) unsafe fn remap_in_place(
    addr: NonNull<u8>,
    len: usize,
    fd: BorrowedFd<'_>,
    kind: MapKind,
) -> Result<()> {
    const OP: &str = "remap region";
    let length = std::num::NonZeroUsize::new(len)
        .ok_or_else(|| Error::invalid(OP, "an empty mapping cannot be replaced"))?;
    let sharing = match kind {
        MapKind::Shared => MapFlags::MAP_SHARED,
        MapKind::Private => MapFlags::MAP_PRIVATE,
    };
    // SAFETY: the caller guarantees the range is a mapping it owns, so MAP_FIXED only
    // replaces that mapping; the file is sealed and long enough, so every page stays
    // backed and the bytes visible through the range do not change.
    unsafe {
        mmap(
            Some(addr.addr()),
            length,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            sharing | MapFlags::MAP_FIXED,
            fd,
            0,
        )
    }
    .map_err(|e| Error::os(OP, "mmap(MAP_FIXED)", e, "the region could not be remapped"))?;
    Ok(())
}

/// Replaces the mapping at `addr..addr + len` with private zero pages at the same
/// address: the region's memory is let go at once, while code still holding a pointer
/// into the range reads zeros and writes harmlessly. `MAP_NORESERVE`: the pages cost
/// nothing until someone touches them.
///
/// # Safety
/// `addr..addr + len` must be exactly one live mapping the caller owns.
pub(crate) unsafe fn discard_in_place(addr: NonNull<u8>, len: usize) -> Result<()> {
    const OP: &str = "Region.close";
    let length = std::num::NonZeroUsize::new(len)
        .ok_or_else(|| Error::invalid(OP, "an empty mapping cannot be replaced"))?;
    // SAFETY: the caller guarantees the range is a mapping it owns, so MAP_FIXED only
    // replaces that mapping with anonymous memory of the same size.
    unsafe {
        mmap_anonymous(
            Some(addr.addr()),
            length,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED | MapFlags::MAP_NORESERVE,
        )
    }
    .map_err(|e| {
        Error::os(
            OP,
            "mmap(MAP_FIXED|MAP_ANONYMOUS)",
            e,
            "the region's memory could not be released",
        )
    })?;
    Ok(())
}

/// A connected pair of non-blocking, close-on-exec `SOCK_SEQPACKET` sockets.
pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| {
        Error::os(
            "Endpoint.pair",
            "socketpair",
            e,
            "raise the open-file limit (ulimit -n)",
        )
    })
}

fn seqpacket_socket(op: &'static str) -> Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| Error::os(op, "socket", e, "raise the open-file limit (ulimit -n)"))
}

/// A path, or a Linux abstract name when it starts with a NUL byte (Node's convention).
fn unix_addr(path: &Path, op: &'static str) -> Result<UnixAddr> {
    let bytes = path.as_os_str().as_bytes();
    let addr = match bytes.split_first() {
        Some((0, name)) => UnixAddr::new_abstract(name),
        _ => UnixAddr::new(path),
    };
    addr.map_err(|e| {
        Error::sys(
            ErrorKind::InvalidArgument,
            op,
            "bind",
            e,
            "socket paths hold at most 107 bytes; use a shorter path or an abstract name",
        )
    })
}

fn is_abstract(path: &Path) -> bool {
    path.as_os_str().as_bytes().first() == Some(&0)
}

/// A listening socket bound to `path`, whose socket file only the owner may use, and
/// the `(st_dev, st_ino)` of that file (`None` for an abstract name). A socket file left
/// by a listener that died (connecting to it is refused) is replaced; a live one is an
/// error.
pub(crate) fn listen_at(path: &Path, backlog: usize) -> Result<(OwnedFd, Option<(u64, u64)>)> {
    const OP: &str = "Endpoint.listen";
    let addr = unix_addr(path, OP)?;
    let fd = seqpacket_socket(OP)?;
    // Linux creates the socket file with the socket inode's mode, so setting it before
    // bind() leaves no moment in which other users could connect.
    fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(|e| Error::os(OP, "fchmod", e, "the socket's mode could not be set"))?;
    match bind(fd.as_raw_fd(), &addr) {
        Err(Errno::EADDRINUSE) if !is_abstract(path) && is_stale(path) => {
            std::fs::remove_file(path).map_err(|io| {
                Error::new(
                    ErrorKind::Os,
                    OP,
                    format!("a stale socket file could not be removed: {io}"),
                )
            })?;
            bind(fd.as_raw_fd(), &addr)
        }
        other => other,
    }
    .map_err(|e| {
        Error::os(
            OP,
            "bind",
            e,
            "another listener owns this path, or its directory is not writable",
        )
    })?;
    let backlog =
        Backlog::new(i32::try_from(backlog).unwrap_or(i32::MAX)).unwrap_or(Backlog::MAXCONN);
    listen(&fd, backlog).map_err(|e| Error::os(OP, "listen", e, "the socket could not listen"))?;
    let file = (!is_abstract(path))
        .then(|| nix::sys::stat::stat(path).ok())
        .flatten()
        .map(|st| (st.st_dev, st.st_ino));
    Ok((fd, file))
}

/// A socket file nobody listens on any more: connecting to it is refused.
fn is_stale(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    let refused = || -> Option<bool> {
        let addr = unix_addr(path, "connect").ok()?;
        let fd = seqpacket_socket("connect").ok()?;
        Some(connect(fd.as_raw_fd(), &addr) == Err(Errno::ECONNREFUSED))
    };
    is_socket && refused() == Some(true)
}

/// Connects a new socket to the listener at `path`.
pub(crate) fn connect_to(path: &Path) -> Result<OwnedFd> {
    const OP: &str = "Endpoint.connect";
    let addr = unix_addr(path, OP)?;
    let fd = seqpacket_socket(OP)?;
    connect(fd.as_raw_fd(), &addr).map_err(|e| match e {
        Errno::EAGAIN => Error::sys(
            ErrorKind::WouldBlock,
            OP,
            "connect",
            e,
            "the listener's backlog is full; retry after it accepts",
        ),
        _ => Error::os(
            OP,
            "connect",
            e,
            "is a shmlink listener running at this path?",
        ),
    })?;
    Ok(fd)
}

/// Accepts one pending connection, non-blocking and close-on-exec; `None` when none waits.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
    loop {
        match accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(raw) => return Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) })),
            Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => {
                return Err(Error::os(
                    "accept",
                    "accept4",
                    e,
                    "raise the open-file limit (ulimit -n)",
                ));
            }
        }
    }
}

/// Takes ownership of socket number `raw`, which the caller says is this process's to
/// close (handed down by a parent, or by JavaScript), once it is known to be a connected
/// `SOCK_SEQPACKET` socket; anything else is refused and left open, since it belongs to
/// someone else.
pub(crate) fn claim_socket(raw: RawFd, op: &'static str) -> Result<OwnedFd> {
    if raw <= 2 {
        return Err(Error::invalid(
            op,
            format!("descriptor {raw} is stdin, stdout or stderr, not a socket"),
        ));
    }
    if let Err(e) = fcntl(
        // SAFETY: the number is only used for this F_GETFD query, which fails with EBADF
        // for a number that is not open and touches nothing.
        unsafe { BorrowedFd::borrow_raw(raw) },
        FcntlArg::F_GETFD,
    ) {
        return Err(Error::sys(
            ErrorKind::InvalidArgument,
            op,
            "fcntl(F_GETFD)",
            e,
            format!("descriptor {raw} is not open in this process"),
        ));
    }
    // SAFETY: `raw` is open (checked above); borrowed only for the checks below.
    adopt_socket(unsafe { BorrowedFd::borrow_raw(raw) }, op)?;
    // SAFETY: `raw` is an open socket of the right kind and, by the caller's contract,
    // ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Makes an inherited socket non-blocking and checks that it is a connected
/// `SOCK_SEQPACKET` socket.
pub(crate) fn adopt_socket(fd: BorrowedFd<'_>, op: &'static str) -> Result<()> {
    let kind = getsockopt(&fd, sockopt::SockType).map_err(|e| {
        let found = match e {
            Errno::EBADF => "no open descriptor".to_owned(),
            _ => describe_descriptor(fd),
        };
        Error::sys(
            ErrorKind::InvalidArgument,
            op,
            "getsockopt(SO_TYPE)",
            e,
            format!("the descriptor is not a socket (it is {found})"),
        )
    })?;
    if kind != SockType::SeqPacket {
        return Err(Error::invalid(
            op,
            format!(
                "the descriptor is a {kind:?} socket, not a SOCK_SEQPACKET one; create it with Endpoint.pair()"
            ),
        ));
    }
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| {
        Error::os(
            op,
            "fcntl(F_GETFL)",
            e,
            "the descriptor cannot be inspected",
        )
    })?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| {
        Error::os(
            op,
            "fcntl(F_SETFL)",
            e,
            "the descriptor cannot be made non-blocking",
        )
    })?;
    Ok(())
}

/// What kind of file a descriptor is, in words, for error messages.
fn describe_descriptor(fd: BorrowedFd<'_>) -> String {
    let Ok(st) = fstat(fd) else {
        return "not an open descriptor".to_owned();
    };
    let kind = match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFCHR => "a character device (a terminal or /dev/null)",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFSOCK => "a socket",
        _ => "a file of another kind",
    };
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(target) => format!("{kind}, {}", target.display()),
        Err(_) => kind.to_owned(),
    }
}

/// Shuts both directions down, so the peer sees end-of-file at once.
pub(crate) fn shutdown_both(fd: BorrowedFd<'_>) {
    // The socket may already be disconnected (ENOTCONN); either way it is finished.
    let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
}

/// Sends one record: `parts` gathered, plus `fds` as one `SCM_RIGHTS` message. The
/// bytes are read by the kernel only (`Bytes` may be memory another agent changes).
pub(crate) fn send_record(
    sock: BorrowedFd<'_>,
    parts: &[Bytes<'_>],
    fds: &[BorrowedFd<'_>],
) -> Result<Io<usize>> {
    const MAX_PARTS: usize = 2;
    if parts.len() > MAX_PARTS {
        return Err(Error::invalid(
            "send",
            "a record is sent in at most two parts",
        ));
    }
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_PARTS];
    for (slot, part) in iov.iter_mut().zip(parts) {
        slot.iov_base = part.as_ptr().cast_mut().cast();
        slot.iov_len = part.len();
    }
    let mut control = if fds.is_empty() {
        Vec::new()
    } else {
        control_buffer(fds.len())
    };
    // SAFETY: msghdr is a C struct of integers and pointers; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = parts.len() as _;
    if !fds.is_empty() {
        let len = control_len(fds.len());
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = len as _;
        // SAFETY: `msg` describes `control`, which has room for CMSG_LEN(fds) bytes, so
        // the first header is inside it.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        // SAFETY: cmsghdr is a C struct of integers (with padding fields on some
        // targets); all zeroes is a valid value.
        let mut header: libc::cmsghdr = unsafe { std::mem::zeroed() };
        header.cmsg_len = len as _;
        header.cmsg_level = libc::SOL_SOCKET;
        header.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: `cmsg` points at the start of `control`, aligned for cmsghdr (u64 words)
        // and large enough for it.
        unsafe { cmsg.write(header) };
        // SAFETY: CMSG_DATA computes an offset inside the header just written.
        let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<c_int>();
        for (i, fd) in fds.iter().enumerate() {
            let slot = data.wrapping_add(i);
            // SAFETY: the data area holds `fds.len()` ints (CMSG_LEN above), so `slot` is
            // inside it; it may be unaligned for c_int.
            unsafe { slot.write_unaligned(fd.as_raw_fd()) };
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (whose entries point at bytes valid for reads by
        // the `Bytes` contract) and `control`, all live for the call; sendmsg only reads.
        let sent = unsafe {
            libc::sendmsg(
                sock.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        match Errno::result(sent).map(|n| n as usize) {
            Ok(n) => return Ok(Io::Done(n)),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(Io::WouldBlock),
            Err(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN) => return Ok(Io::Disconnected),
            Err(e @ Errno::ETOOMANYREFS) => {
                return Err(Error::os(
                    "send",
                    "sendmsg",
                    e,
                    "too many descriptors are in flight; wait until the peer has received earlier messages",
                ));
            }
            Err(e) => {
                return Err(Error::os(
                    "send",
                    "sendmsg",
                    e,
                    "the message could not be sent; close the endpoint",
                ));
            }
        }
    }
}

/// Receives one record into `buf`, which it clears first and then holds the record's
/// bytes, and every descriptor that came with it into `fds`.
///
/// The kernel writes into `buf`'s spare capacity, which is never zeroed: a record up to
/// the capacity fits, a longer one is truncated (`data_truncated`). The descriptors are owned before the flags are looked at, so a truncated message
/// (`MSG_CTRUNC`) still hands over, and thereby closes, each descriptor the kernel did
/// install. The kernel is offered room for `max_fds` descriptors exactly, so one more
/// sets `MSG_CTRUNC`; `control` comes from [`control_buffer`] with at least that room.
///
/// `ECONNRESET` (the peer closed with records of ours unread) is reported by Linux once,
/// before the records the peer sent earlier; it is skipped here so they are received
/// (`docs/PROTOCOL.md` §1 rule 6). A zero-length record is end-of-file.
pub(crate) fn recv_record(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    control: &mut [u64],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
) -> Result<Io<Received>> {
    buf.clear();
    let room = buf.spare_capacity_mut();
    let mut iov = libc::iovec {
        iov_base: room.as_mut_ptr().cast(),
        iov_len: room.len(),
    };
    // SAFETY: msghdr is a C struct of integers and pointers; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len(max_fds).min(std::mem::size_of_val(control)) as _;
    let mut reset_seen = false;
    let received = loop {
        // SAFETY: `msg` points at `iov`, `buf`'s spare capacity and `control`, which are
        // live and exclusively borrowed for the whole call, with their true lengths.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match Errno::result(n) {
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) if !reset_seen => reset_seen = true,
            Err(Errno::EAGAIN) => return Ok(Io::WouldBlock),
            Err(e) => {
                return Err(Error::os(
                    "recv",
                    "recvmsg",
                    e,
                    "the socket failed; the connection was closed",
                ));
            }
            Ok(n) => break (n as usize).min(iov.iov_len),
        }
    };
    // SAFETY: without MSG_TRUNC in its flags recvmsg returns how many bytes it copied into
    // the one iovec, so the first `received` bytes of the spare capacity (at most its
    // length, as clamped above) are initialized.
    unsafe { buf.set_len(received) };
    take_descriptors(&msg, fds);
    Ok(Io::Done(Received {
        len: received,
        data_truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    }))
}

/// Moves every descriptor of every `SCM_RIGHTS` message in `msg` into `fds`.
fn take_descriptors(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `msg` was filled by recvmsg; its control pointer and length describe the
    // buffer the kernel wrote, which is what CMSG_FIRSTHDR walks.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a pointer to a whole,
        // suitably aligned cmsghdr inside the control buffer.
        let header = unsafe { std::ptr::read(cmsg) };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: `cmsg` is a valid header (above); CMSG_DATA only computes an offset.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let header_len = data as usize - cmsg as usize;
            let count = (header.cmsg_len as usize).saturating_sub(header_len) / size_of::<c_int>();
            for i in 0..count {
                let slot = data.cast::<c_int>().wrapping_add(i);
                // SAFETY: the kernel wrote `count` ints after the header (cmsg_len counts
                // only descriptors it installed, also under MSG_CTRUNC); they may be unaligned.
                let raw = unsafe { std::ptr::read_unaligned(slot) };
                // SAFETY: SCM_RIGHTS installed `raw` in this process for us alone.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `cmsg` points at a header inside the buffer described by `msg`.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// Waits until `fd` is ready for `interest`, or `timeout` passes (`None`: forever);
/// `Ok(false)` on timeout.
pub(crate) fn wait(
    fd: BorrowedFd<'_>,
    interest: Interest,
    timeout: Option<Duration>,
) -> Result<bool> {
    let mut events = PollFlags::empty();
    if interest.readable {
        events |= PollFlags::POLLIN;
    }
    if interest.writable {
        events |= PollFlags::POLLOUT;
    }
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
    };
    let mut fds = [PollFd::new(fd, events)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::os(
                    "wait",
                    "poll",
                    e,
                    "the socket cannot be waited on",
                ));
            }
        }
    }
}

/// The process, user and group of the peer, as the kernel recorded them at connect time.
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> Result<Credentials> {
    let creds = getsockopt(&fd, sockopt::PeerCredentials).map_err(|e| {
        Error::os(
            "Endpoint.peer",
            "getsockopt(SO_PEERCRED)",
            e,
            "the peer's credentials are unavailable",
        )
    })?;
    Ok(Credentials {
        pid: creds.pid(),
        uid: creds.uid(),
        gid: creds.gid(),
    })
}

/// The control length that holds exactly `fds` descriptors (`CMSG_LEN`).
fn control_len(fds: usize) -> usize {
    let payload = (fds.max(1) * size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_LEN is arithmetic on its argument; it touches no memory.
    unsafe { libc::CMSG_LEN(payload) as usize }
}

/// A control buffer for up to `fds` descriptors, as `u64`s so that the `cmsghdr` in it
/// is aligned.
pub(crate) fn control_buffer(fds: usize) -> Vec<u64> {
    vec![0u64; control_len(fds).div_ceil(size_of::<u64>())]
}

/// An epoll instance, for a thread that waits on many sockets at once.
pub(crate) fn watcher() -> Result<Epoll> {
    Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| {
        Error::os(
            "watch",
            "epoll_create1",
            e,
            "raise the open-file limit (ulimit -n)",
        )
    })
}

fn epoll_flags(interest: Interest) -> EpollFlags {
    let mut flags = EpollFlags::EPOLLONESHOT;
    if interest.readable {
        flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
    }
    if interest.writable {
        flags |= EpollFlags::EPOLLOUT;
    }
    flags
}

/// Watches `fd` for `interest`, reported once under `key` (then disarmed until the next
/// call): adds `fd` on the first call, re-arms it on later ones.
pub(crate) fn watch(
    epoll: &Epoll,
    fd: BorrowedFd<'_>,
    key: u64,
    interest: Interest,
    first: bool,
) -> Result<()> {
    let event = EpollEvent::new(epoll_flags(interest), key);
    let done = if first {
        epoll.add(fd, event)
    } else {
        epoll.modify(fd, &mut { event })
    };
    done.map_err(|e| Error::os("watch", "epoll_ctl", e, "the socket cannot be watched"))
}

/// Stops watching `fd`.
pub(crate) fn unwatch(epoll: &Epoll, fd: BorrowedFd<'_>) {
    // A descriptor that was never added, or is closed already, is not watched either way.
    let _ = epoll.delete(fd);
}

/// Waits for readiness; fills `ready` with `(key, readiness)` pairs.
pub(crate) fn wait_ready(epoll: &Epoll, ready: &mut Vec<(u64, Interest)>) -> Result<()> {
    let mut events = [EpollEvent::empty(); 64];
    let count = loop {
        match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(count) => break count,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::os(
                    "watch",
                    "epoll_wait",
                    e,
                    "the watcher thread cannot wait",
                ));
            }
        }
    };
    ready.clear();
    ready.extend(events[..count].iter().map(|event| {
        let flags = event.events();
        let failed = EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP;
        (
            event.data(),
            Interest {
                readable: flags.intersects(EpollFlags::EPOLLIN | failed),
                writable: flags.contains(EpollFlags::EPOLLOUT),
            },
        )
    }));
    Ok(())
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (`futex(2)`, `FUTEX_WAIT`,
/// not private: the word lies in a memory file another process maps). Returns at once if
/// the word already differs; a wake-up, a timeout and a signal all just return, and the
/// caller looks again.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic for the whole call (it is borrowed);
    // FUTEX_WAIT only reads it, and `timeout` is a valid timespec on this stack. The
    // result needs no handling: EAGAIN (the word changed), ETIMEDOUT and EINTR all mean
    // "look again", which every caller does.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
        )
    };
}

/// Wakes every thread of any process sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE only uses its address as
    // a key and cannot fail for a valid one.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// The CPU this thread runs on now (`sched_getcpu`, a vDSO call), if the kernel says.
pub(crate) fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    u32::try_from(unsafe { libc::sched_getcpu() }).ok()
}

/// Whether the machine has one CPU online: then a peer this thread waits for can run only
/// when it stops, so spinning can never pay. (A process pinned to one CPU may still have
/// its peer on another, so the affinity mask says nothing here; the spin budget adapts.)
pub(crate) fn single_cpu() -> bool {
    matches!(
        nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN),
        Ok(Some(1))
    )
}
