//! Systems without a backend yet: every call fails with `ErrorKind::Unsupported`, so a
//! build for them loads and reports what is missing instead of misbehaving.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use super::{Credentials, FileInfo, Interest, Io, MapKind, Received, Seals};
use crate::bytes::Bytes;
use crate::error::{Error, ErrorKind, Result};

fn unsupported<T>(op: &'static str) -> Result<T> {
    Err(Error::new(
        ErrorKind::Unsupported,
        op,
        "shmlink needs Linux (sealed memfds and SOCK_SEQPACKET sockets); see docs/PLATFORMS.md",
    ))
}

pub(crate) fn create_memory_file(_size: usize, op: &'static str) -> Result<OwnedFd> {
    unsupported(op)
}

pub(crate) fn seals(_fd: BorrowedFd<'_>) -> Result<Option<Seals>> {
    unsupported("inspect region")
}

pub(crate) fn seal_contents(_fd: BorrowedFd<'_>, op: &'static str) -> Result<()> {
    unsupported(op)
}

pub(crate) fn file_info(_fd: BorrowedFd<'_>) -> Result<FileInfo> {
    unsupported("inspect region")
}

pub(crate) fn file_identity(_fd: BorrowedFd<'_>) -> Result<(u64, u64)> {
    unsupported("inspect region")
}

/// # Safety
/// Never writes anything; `unsafe` to match the Linux signature.
pub(crate) unsafe fn read_file_at(
    _fd: BorrowedFd<'_>,
    _offset: usize,
    _dst: *mut u8,
    _len: usize,
    op: &'static str,
) -> Result<()> {
    unsupported(op)
}

/// # Safety
/// Never maps anything; `unsafe` to match the Linux signature.
pub(crate) unsafe fn remap_in_place(
    _addr: NonNull<u8>,
    _len: usize,
    _fd: BorrowedFd<'_>,
    _kind: MapKind,
) -> Result<()> {
    unsupported("remap region")
}

/// # Safety
/// Never maps anything; `unsafe` to match the Linux signature.
pub(crate) unsafe fn discard_in_place(_addr: NonNull<u8>, _len: usize) -> Result<()> {
    unsupported("Region.close")
}

pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    unsupported("Endpoint.pair")
}

pub(crate) fn listen_at(_path: &Path, _backlog: usize) -> Result<(OwnedFd, Option<(u64, u64)>)> {
    unsupported("Endpoint.listen")
}

pub(crate) fn connect_to(_path: &Path) -> Result<OwnedFd> {
    unsupported("Endpoint.connect")
}

pub(crate) fn accept(_listener: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
    unsupported("accept")
}

pub(crate) fn claim_socket(_raw: std::os::fd::RawFd, op: &'static str) -> Result<OwnedFd> {
    unsupported(op)
}

pub(crate) fn adopt_socket(_fd: BorrowedFd<'_>, op: &'static str) -> Result<()> {
    unsupported(op)
}

pub(crate) fn shutdown_both(_fd: BorrowedFd<'_>) {}

pub(crate) fn send_record(
    _sock: BorrowedFd<'_>,
    _parts: &[Bytes<'_>],
    _fds: &[BorrowedFd<'_>],
) -> Result<Io<usize>> {
    unsupported("send")
}

pub(crate) fn recv_record(
    _sock: BorrowedFd<'_>,
    _buf: &mut Vec<u8>,
    _control: &mut [u64],
    _max_fds: usize,
    _fds: &mut Vec<OwnedFd>,
) -> Result<Io<Received>> {
    unsupported("recv")
}

pub(crate) fn wait(
    _fd: BorrowedFd<'_>,
    _interest: Interest,
    _timeout: Option<Duration>,
) -> Result<bool> {
    unsupported("wait")
}

pub(crate) fn peer_credentials(_fd: BorrowedFd<'_>) -> Result<Credentials> {
    unsupported("Endpoint.peer")
}

pub(crate) fn control_buffer(_fds: usize) -> Vec<u64> {
    Vec::new()
}

/// Stands in for an epoll instance where there is none.
pub(crate) struct Epoll;

pub(crate) fn watcher() -> Result<Epoll> {
    unsupported("watch")
}

pub(crate) fn watch(
    _epoll: &Epoll,
    _fd: BorrowedFd<'_>,
    _key: u64,
    _interest: Interest,
    _first: bool,
) -> Result<()> {
    unsupported("watch")
}

pub(crate) fn unwatch(_epoll: &Epoll, _fd: BorrowedFd<'_>) {}

pub(crate) fn wait_ready(_epoll: &Epoll, _ready: &mut Vec<(u64, Interest)>) -> Result<()> {
    unsupported("watch")
}

pub(crate) fn futex_wait(_word: &std::sync::atomic::AtomicU32, _expected: u32, timeout: Duration) {
    // No ring is ever set up here (every call that could make one fails); sleeping keeps
    // a caller's loop from spinning all the same.
    std::thread::sleep(timeout);
}

pub(crate) fn futex_wake(_word: &std::sync::atomic::AtomicU32) {}

pub(crate) fn single_cpu() -> bool {
    false
}

pub(crate) fn current_cpu() -> Option<u32> {
    None
}
