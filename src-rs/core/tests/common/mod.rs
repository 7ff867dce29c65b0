//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use shmlink::wire::{self, Descriptor};
use shmlink::{Endpoint, Limits, Options, Realm, Region};

static SERIAL: Mutex<()> = Mutex::new(());

/// Every test in a binary that counts `/proc/self/fd` holds this for its whole run, so
/// that no other test's descriptors come or go while one is counting.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs `body` and asserts it left the number of open descriptors unchanged.
/// The caller holds [`serial`].
pub fn assert_no_fd_leak(body: impl FnOnce()) {
    let before = fd_count();
    body();
    let after = fd_count();
    assert_eq!(
        before, after,
        "descriptors leaked: {before} open before, {after} after"
    );
}

/// A connected pair whose ends play two processes: each resolves regions in its own
/// realm, so a region sent from one to the other is a separate region there, mapped anew.
pub fn separate_pair() -> (Endpoint, Endpoint) {
    let side = || Options {
        realm: Realm::unique(),
        ..Options::trusted()
    };
    let (a, fd) = Endpoint::pair_for_child(side()).unwrap();
    let b = Endpoint::from_fd(fd, side()).unwrap();
    (a, b)
}

/// An endpoint whose peer is a raw socket the test drives byte by byte. The raw side has
/// already sent a valid HELLO unless `hello` is false.
pub struct Hostile {
    pub endpoint: Endpoint,
    pub raw: OwnedFd,
}

pub fn hostile_pair(limits: Limits, hello: bool) -> Hostile {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .unwrap();
    let endpoint = Endpoint::from_fd(
        a,
        Options {
            limits,
            ..Options::trusted()
        },
    )
    .unwrap();
    let raw = b;
    if hello {
        send_raw(&raw, &wire::hello_frame(wire::Announced::default()), &[]);
    }
    Hostile { endpoint, raw }
}

pub fn send_raw(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

/// A MESSAGE frame with the given descriptors and payload.
pub fn message(descriptors: &[Descriptor], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::put_header(
        &mut out,
        wire::KIND_MESSAGE,
        descriptors.len() as u16,
        payload.len() as u32,
    );
    for d in descriptors {
        wire::put_descriptor(&mut out, *d);
    }
    out.extend_from_slice(payload);
    out
}

/// A sealed memory file of `size` bytes starting with `contents`, as a peer process would
/// hold it: this process keeps no region for it, so receiving it maps it anew.
pub fn foreign_file(size: usize, contents: &[u8]) -> OwnedFd {
    let region = Region::create(size).unwrap();
    region.write(0, contents).unwrap();
    region.file().unwrap().try_clone().unwrap()
}

/// `n` foreign memory files of `size` bytes, and NEW descriptors for them with ids 1..=n.
pub fn with_n_fds(n: usize, size: usize) -> (Vec<OwnedFd>, Vec<Descriptor>) {
    let regions: Vec<OwnedFd> = (0..n).map(|_| foreign_file(size, b"")).collect();
    let descriptors = (0..n)
        .map(|i| Descriptor {
            id: i as u32 + 1,
            flags: wire::FLAG_NEW,
            size: size as u64,
        })
        .collect();
    (regions, descriptors)
}

pub fn raw_fds(files: &[OwnedFd]) -> Vec<RawFd> {
    files.iter().map(AsRawFd::as_raw_fd).collect()
}

/// Whether the raw side sees end-of-file: the endpoint shut the connection down.
pub fn raw_sees_eof(sock: &OwnedFd) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// FNV-1a, enough to tell two byte strings apart in a test.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

pub fn region_bytes(region: &Region) -> Vec<u8> {
    let mut buf = vec![0u8; region.size()];
    region.read(0, &mut buf).unwrap();
    buf
}
