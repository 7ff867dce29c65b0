//! The operating-system backend, chosen once here.
//!
//! Linux has everything the protocol needs: sealable anonymous memory files
//! (`memfd_create`) and record-preserving `AF_UNIX` sockets (`SOCK_SEQPACKET`).
//! Other systems get a backend whose every call fails with
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported); `docs/PLATFORMS.md`
//! says what a macOS backend needs (`shm_open` + `shm_unlink`, stream framing).

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
mod unsupported;
#[cfg(not(target_os = "linux"))]
pub(crate) use unsupported::*;

/// The seals a memory file carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seals {
    pub(crate) shrink: bool,
    pub(crate) grow: bool,
    pub(crate) write: bool,
    /// `F_SEAL_FUTURE_WRITE`: no new writable mapping, though old ones still write.
    pub(crate) future_write: bool,
}

/// What `fstat` says about a descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileInfo {
    pub(crate) is_regular: bool,
    pub(crate) size: i64,
    /// `(st_dev, st_ino)`: two descriptors with the same identity are the same file.
    pub(crate) identity: (u64, u64),
}

/// Who is at the other end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Process id of the peer when it connected (for a socketpair: its creator).
    pub pid: i32,
    /// Effective user id of the peer.
    pub uid: u32,
    /// Effective group id of the peer.
    pub gid: u32,
}

/// What a caller waits for on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A record, a connection or end-of-file can be read.
    Readable,
    /// A record can be sent.
    Writable,
}

/// The outcome of one `recvmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) len: usize,
    /// `MSG_TRUNC`: the record was longer than the buffer.
    pub(crate) data_truncated: bool,
    /// `MSG_CTRUNC`: the kernel dropped descriptors.
    pub(crate) control_truncated: bool,
}
