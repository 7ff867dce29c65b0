//! Systems without a backend yet: every call fails with `ErrorKind::Unsupported`, so a
//! build for them loads and reports what is missing instead of misbehaving.

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use nix::errno::Errno;

use super::{Credentials, FileInfo, Readiness, Received, Seals};
use crate::error::{Error, ErrorKind, Result};

pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

fn unsupported<T>(op: &'static str) -> Result<T> {
    Err(Error::new(
        ErrorKind::Unsupported,
        op,
        "shmlink needs Linux (sealed memfds and SOCK_SEQPACKET sockets); see docs/PLATFORMS.md",
    ))
}

pub(crate) fn create_memory_file(_size: usize) -> Result<OwnedFd> {
    unsupported("Region::create")
}

pub(crate) fn seals(_fd: BorrowedFd<'_>) -> Result<Option<Seals>> {
    unsupported("fcntl(F_GET_SEALS)")
}

pub(crate) fn seal_contents(_fd: BorrowedFd<'_>) -> Result<()> {
    unsupported("freeze")
}

pub(crate) fn file_info(_fd: BorrowedFd<'_>) -> Result<FileInfo> {
    unsupported("fstat")
}

/// # Safety
/// Never maps anything; kept `unsafe` to match the Linux signature.
pub(crate) unsafe fn remap_in_place(
    _addr: NonNull<u8>,
    _len: usize,
    _fd: BorrowedFd<'_>,
    _shared: bool,
) -> Result<()> {
    unsupported("mmap")
}

pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    unsupported("Endpoint::pair")
}

pub(crate) fn is_abstract(_path: &Path) -> bool {
    false
}

pub(crate) fn listen_at(_path: &Path) -> Result<OwnedFd> {
    unsupported("Listener::bind")
}

pub(crate) fn connect_to(_path: &Path) -> Result<OwnedFd> {
    unsupported("Endpoint::connect")
}

pub(crate) fn accept(_listener: BorrowedFd<'_>) -> Result<OwnedFd> {
    unsupported("accept")
}

pub(crate) fn adopt_socket(_fd: BorrowedFd<'_>) -> Result<()> {
    unsupported("Endpoint::from_fd")
}

pub(crate) fn shutdown_both(_fd: BorrowedFd<'_>) {}

pub(crate) fn send_frame(
    _sock: BorrowedFd<'_>,
    _iov: &[std::io::IoSlice<'_>],
    _fds: &[RawFd],
) -> std::result::Result<usize, Errno> {
    Err(Errno::ENOSYS)
}

pub(crate) fn recv_frame(
    _sock: BorrowedFd<'_>,
    _buf: &mut [u8],
    _control: &mut [u64],
    _max_fds: usize,
    _fds: &mut Vec<OwnedFd>,
) -> std::result::Result<Received, Errno> {
    Err(Errno::ENOSYS)
}

pub(crate) fn wait(
    _fd: BorrowedFd<'_>,
    _readiness: Readiness,
    _timeout: Option<Duration>,
) -> Result<bool> {
    unsupported("poll")
}

pub(crate) fn peer_credentials(_fd: BorrowedFd<'_>) -> Result<Credentials> {
    unsupported("peer credentials")
}

pub(crate) fn control_buffer(_fds: usize) -> Vec<u64> {
    Vec::new()
}
