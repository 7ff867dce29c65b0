//! Linux: anonymous sealed memfds and `AF_UNIX`/`SOCK_SEQPACKET` sockets.
//!
//! Every descriptor is created close-on-exec atomically (`MFD_CLOEXEC`,
//! `SOCK_CLOEXEC`, `MSG_CMSG_CLOEXEC`) and wrapped in an [`OwnedFd`] the moment the
//! kernel returns it, so no path through this file can leak one.

use std::ffi::c_int;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, MsgFlags, Shutdown, SockFlag, SockType, UnixAddr,
    accept4, bind, connect, getsockopt, listen, sendmsg, shutdown, socket, socketpair, sockopt,
};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat};

use super::{Credentials, FileInfo, Readiness, Received, Seals};
use crate::error::{Error, ErrorKind, Result};

/// The most descriptors Linux passes in one message (`SCM_MAX_FD`, unix(7)).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Creates an anonymous memory file of `size` bytes whose size can never change again.
///
/// The shrink and grow seals are added before anyone else can see the descriptor;
/// `F_SEAL_SEAL` is left off so that [`seal_contents`] can still freeze it.
pub(crate) fn create_memory_file(size: usize) -> Result<OwnedFd> {
    let len = i64::try_from(size).map_err(|_| {
        Error::new(
            ErrorKind::InvalidArgument,
            "Region::create",
            "size does not fit in off_t",
        )
    })?;
    let fd = memfd_create(
        c"shmlink",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| {
        Error::os(
            "memfd_create",
            e,
            "raise the open-file limit (ulimit -n) or close unused regions",
        )
    })?;
    nix::unistd::ftruncate(&fd, len).map_err(|e| {
        Error::os(
            "ftruncate",
            e,
            "the region is larger than the memory this process may use",
        )
    })?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )
    .map_err(|e| Error::os("fcntl(F_ADD_SEALS)", e, "this kernel cannot seal memfds"))?;
    Ok(fd)
}

/// The seals on a file, or `None` when the file cannot carry seals at all (it is not a memfd).
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
            "fcntl(F_GET_SEALS)",
            e,
            "the descriptor cannot be inspected",
        )),
    }
}

/// Adds the write seal (and the seal seal) so the contents can never change again.
pub(crate) fn seal_contents(fd: BorrowedFd<'_>) -> Result<()> {
    match fcntl(
        fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL),
    ) {
        Ok(_) => Ok(()),
        Err(Errno::EBUSY) => Err(Error::with_source(
            ErrorKind::RegionBusy,
            "freeze",
            Errno::EBUSY,
            "the region is still mapped writable by a peer; freeze regions before sharing them",
        )),
        Err(e) => Err(Error::os(
            "fcntl(F_ADD_SEALS)",
            e,
            "the region cannot be frozen",
        )),
    }
}

/// The file type, size and identity of a descriptor.
pub(crate) fn file_info(fd: BorrowedFd<'_>) -> Result<FileInfo> {
    let st = fstat(fd).map_err(|e| Error::os("fstat", e, "the descriptor cannot be inspected"))?;
    Ok(FileInfo {
        is_regular: SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG,
        size: st.st_size,
        identity: (st.st_dev, st.st_ino),
    })
}

/// Replaces the mapping at `addr..addr + len` with a private (copy-on-write) mapping of
/// `fd`, or a shared writable one when `shared`, at the same address.
///
/// The address range stays valid throughout, so raw pointers and JavaScript views
/// into it keep working; only the kind of mapping changes.
///
/// # Safety
/// - `addr..addr + len` must be exactly one live mapping of `fd` at offset 0 that the
///   caller owns (a [`crate::region`] mapping), so that no other code's memory is replaced.
/// - `fd` must be at least `len` bytes long and sealed against shrinking.
pub(crate) unsafe fn remap_in_place(
    addr: std::ptr::NonNull<u8>,
    len: usize,
    fd: BorrowedFd<'_>,
    shared: bool,
) -> Result<()> {
    let length = std::num::NonZeroUsize::new(len)
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "mmap", "empty mapping"))?;
    let start = std::num::NonZeroUsize::new(addr.as_ptr() as usize)
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "mmap", "null mapping"))?;
    let kind = if shared {
        MapFlags::MAP_SHARED
    } else {
        MapFlags::MAP_PRIVATE
    };
    // SAFETY: the caller guarantees the range is a mapping it owns, so MAP_FIXED only
    // replaces that mapping; the file is sealed and long enough, so every page stays
    // backed and the bytes visible through the range do not change.
    unsafe {
        mmap(
            Some(start),
            length,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            kind | MapFlags::MAP_FIXED,
            fd,
            0,
        )
    }
    .map_err(|e| Error::os("mmap(MAP_FIXED)", e, "the region could not be remapped"))?;
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
    .map_err(|e| Error::os("socketpair", e, "raise the open-file limit (ulimit -n)"))
}

fn seqpacket_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| Error::os("socket", e, "raise the open-file limit (ulimit -n)"))
}

/// A path, or a Linux abstract name when it starts with a NUL byte (Node's convention).
fn unix_addr(path: &Path, op: &'static str) -> Result<UnixAddr> {
    let bytes = path.as_os_str().as_bytes();
    let addr = match bytes.split_first() {
        Some((0, name)) => UnixAddr::new_abstract(name),
        _ => UnixAddr::new(path),
    };
    addr.map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidArgument,
            op,
            e,
            "socket paths hold at most 107 bytes; use a shorter path or an abstract name",
        )
    })
}

/// Whether the path names a Linux abstract socket (no file in the filesystem).
pub(crate) fn is_abstract(path: &Path) -> bool {
    path.as_os_str().as_bytes().first() == Some(&0)
}

/// A listening socket bound to `path`, whose socket file only the owner may use.
pub(crate) fn listen_at(path: &Path) -> Result<OwnedFd> {
    let addr = unix_addr(path, "bind")?;
    let fd = seqpacket_socket()?;
    // Linux creates the socket file with the socket inode's mode, so setting it before
    // bind() leaves no moment in which other users could connect.
    fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(|e| Error::os("fchmod", e, "the socket's mode could not be set"))?;
    bind(fd.as_raw_fd(), &addr).map_err(|e| {
        Error::os(
            "bind",
            e,
            "another listener owns this path, or its directory is not writable",
        )
    })?;
    listen(&fd, Backlog::MAXCONN)
        .map_err(|e| Error::os("listen", e, "the socket could not listen"))?;
    Ok(fd)
}

/// Connects a new socket to the listener at `path`.
pub(crate) fn connect_to(path: &Path) -> Result<OwnedFd> {
    let addr = unix_addr(path, "connect")?;
    let fd = seqpacket_socket()?;
    connect(fd.as_raw_fd(), &addr).map_err(|e| match e {
        Errno::EAGAIN => Error::with_source(
            ErrorKind::WouldBlock,
            "connect",
            e,
            "the listener's backlog is full; retry after it accepts",
        ),
        _ => Error::os("connect", e, "is a shmlink listener running at this path?"),
    })?;
    Ok(fd)
}

/// Accepts one pending connection, non-blocking and close-on-exec.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> Result<OwnedFd> {
    loop {
        match accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(raw) => return Ok(unsafe { OwnedFd::from_raw_fd(raw) }),
            Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(Errno::EAGAIN) => return Err(Error::would_block("accept")),
            Err(e) => {
                return Err(Error::os(
                    "accept4",
                    e,
                    "raise the open-file limit (ulimit -n)",
                ));
            }
        }
    }
}

/// Makes an inherited socket non-blocking and checks that it is a `SOCK_SEQPACKET` socket.
pub(crate) fn adopt_socket(fd: BorrowedFd<'_>) -> Result<()> {
    let kind = getsockopt(&fd, sockopt::SockType).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidArgument,
            "Endpoint::from_fd",
            e,
            "the descriptor is not a socket",
        )
    })?;
    if kind != SockType::SeqPacket {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "Endpoint::from_fd",
            "the descriptor is not a SOCK_SEQPACKET socket; create it with Endpoint.pair()",
        ));
    }
    let flags = fcntl(fd, FcntlArg::F_GETFL)
        .map_err(|e| Error::os("fcntl(F_GETFL)", e, "the descriptor cannot be inspected"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| {
        Error::os(
            "fcntl(F_SETFL)",
            e,
            "the descriptor cannot be made non-blocking",
        )
    })?;
    Ok(())
}

/// Shuts both directions down, so the peer sees end-of-file at once.
pub(crate) fn shutdown_both(fd: BorrowedFd<'_>) {
    // The socket may already be disconnected (ENOTCONN); either way it is finished.
    let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
}

/// Sends one record: the iovecs gathered, plus `fds` as one `SCM_RIGHTS` message.
pub(crate) fn send_frame(
    sock: BorrowedFd<'_>,
    iov: &[std::io::IoSlice<'_>],
    fds: &[RawFd],
) -> std::result::Result<usize, Errno> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Receives one record into `buf` and every descriptor that came with it into `fds`.
///
/// The descriptors are owned before the flags are looked at, so a truncated message
/// (`MSG_CTRUNC`) still hands over, and thereby closes, each descriptor the kernel did
/// install. The kernel is offered room for `max_fds` descriptors exactly, so one more
/// sets `MSG_CTRUNC`; `control` comes from [`control_buffer`] with at least that room.
pub(crate) fn recv_frame(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut [u64],
    max_fds: usize,
    fds: &mut Vec<OwnedFd>,
) -> std::result::Result<Received, Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a C struct of integers and pointers; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len(max_fds).min(std::mem::size_of_val(control)) as _;
    let received = loop {
        // SAFETY: `msg` points at `iov`, `buf` and `control`, which are live and
        // exclusively borrowed for the whole call, with their true lengths.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match Errno::result(n) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(n) => break n as usize,
        }
    };
    take_descriptors(&msg, fds);
    Ok(Received {
        len: received,
        data_truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
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

/// Waits until `fd` is ready for `readiness`, or `timeout` passes (`None`: forever).
pub(crate) fn wait(
    fd: BorrowedFd<'_>,
    readiness: Readiness,
    timeout: Option<Duration>,
) -> Result<bool> {
    let events = match readiness {
        Readiness::Readable => PollFlags::POLLIN,
        Readiness::Writable => PollFlags::POLLOUT,
    };
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
    };
    let mut fds = [PollFd::new(fd, events)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::os("poll", e, "the socket cannot be waited on")),
        }
    }
}

/// The process, user and group of the peer, as the kernel recorded them at connect time.
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> Result<Credentials> {
    let creds = getsockopt(&fd, sockopt::PeerCredentials).map_err(|e| {
        Error::os(
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
    let payload = (fds.clamp(1, MAX_FDS_PER_MESSAGE) * size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_LEN is arithmetic on its argument; it touches no memory.
    unsafe { libc::CMSG_LEN(payload) as usize }
}

/// A control buffer for up to `fds` descriptors, as `u64`s so that the `cmsghdr` in it
/// is aligned.
pub(crate) fn control_buffer(fds: usize) -> Vec<u64> {
    vec![0u64; control_len(fds).div_ceil(size_of::<u64>())]
}
