//! The operating-system backend, chosen once here.
//!
//! Linux has everything the protocol needs: sealable anonymous memory files
//! (`memfd_create`) and record-preserving `AF_UNIX` sockets (`SOCK_SEQPACKET`).
//! Other systems get a backend whose every call fails with
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported); `docs/PLATFORMS.md`
//! says what a macOS backend needs (`shm_open` + `shm_unlink`, stream framing).
//!
//! The contract is the list of names below: every backend exports exactly these, with
//! these signatures, and reports failures as [`crate::Error`]s it builds itself. What an
//! `errno` means (a full socket, a peer that left, a stale socket file) is decided inside
//! the backend and handed out as [`Io`] or an error kind, never as a raw `errno`.
//! `tests` below is the suite every backend passes.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as os;

#[cfg(not(target_os = "linux"))]
mod unsupported;
#[cfg(not(target_os = "linux"))]
use unsupported as os;

#[cfg(target_os = "linux")]
pub(crate) use nix::sys::epoll::Epoll;
pub(crate) use os::{
    accept, adopt_socket, claim_socket, connect_to, control_buffer, create_memory_file,
    current_cpu, discard_in_place, file_identity, file_info, futex_wait, futex_wake, listen_at,
    peer_credentials, read_file_at, recv_record, remap_in_place, seal_contents, seals, send_record,
    seqpacket_pair, shutdown_both, single_cpu, unwatch, wait, wait_ready, watch, watcher,
};
#[cfg(not(target_os = "linux"))]
pub(crate) use unsupported::Epoll;

/// The seals a memory file carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Seals {
    pub(crate) shrink: bool,
    pub(crate) grow: bool,
    pub(crate) write: bool,
    /// `F_SEAL_FUTURE_WRITE`: no new writable mapping, though old ones still write.
    pub(crate) future_write: bool,
}

/// What `fstat` and `fstatfs` say about a descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileInfo {
    pub(crate) is_regular: bool,
    /// On shmem (tmpfs), where a memfd's pages cannot be taken away under a mapping, as
    /// a hugetlbfs memfd's can.
    pub(crate) on_shmem: bool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    /// A record, a connection or end-of-file can be read.
    pub readable: bool,
    /// A record can be sent.
    pub writable: bool,
}

impl Interest {
    /// Waiting for records.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Waiting for room.
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
    };

    /// Whether nothing is waited for.
    pub fn is_empty(&self) -> bool {
        !self.readable && !self.writable
    }
}

/// How a region is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapKind {
    /// `MAP_SHARED`, writable: writes reach the file.
    Shared,
    /// `MAP_PRIVATE`: reads see the file, writes stay in this process.
    Private,
}

/// The outcome of a non-blocking socket call that did not fail for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Io<T> {
    Done(T),
    /// The socket is full (send) or empty (receive); wait for it.
    WouldBlock,
    /// The peer is gone (`EPIPE`, `ECONNRESET` on send).
    Disconnected,
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    //! The backend contract, as one suite.
    use std::os::fd::{AsFd, OwnedFd};

    use crate::bytes::Bytes;
    use std::time::Duration;

    use super::*;

    #[test]
    fn memory_files_are_sealed_regular_shmem_files_of_the_asked_size() {
        let fd = create_memory_file(8192, "test").unwrap();
        let info = file_info(fd.as_fd()).unwrap();
        assert!(info.is_regular && info.on_shmem);
        assert_eq!(info.size, 8192);
        let seals = seals(fd.as_fd()).unwrap().unwrap();
        assert!(seals.shrink && seals.grow && !seals.write && !seals.future_write);
        seal_contents(fd.as_fd(), "test").unwrap();
        assert!(super::seals(fd.as_fd()).unwrap().unwrap().write);
    }

    /// What a call that had to complete returned.
    fn done<T: std::fmt::Debug>(io: Io<T>) -> T {
        match io {
            Io::Done(value) => value,
            other => panic!("the call did not complete: {other:?}"),
        }
    }

    #[test]
    fn records_keep_their_boundaries_and_descriptors_arrive_in_order() {
        let (a, b) = seqpacket_pair().unwrap();
        let files: Vec<OwnedFd> = (0..3)
            .map(|_| create_memory_file(4096, "test").unwrap())
            .collect();
        let raw: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        let sent =
            send_record(a.as_fd(), &[Bytes::from(b"one"), Bytes::from(b"two")], &raw).unwrap();
        assert_eq!(sent, Io::Done(6));
        assert_eq!(
            send_record(a.as_fd(), &[Bytes::from(b"x")], &[]).unwrap(),
            Io::Done(1)
        );
        let mut buf = Vec::with_capacity(16);
        let mut control = control_buffer(4);
        let mut fds = Vec::new();
        let got = done(recv_record(b.as_fd(), &mut buf, &mut control, 4, &mut fds).unwrap());
        assert_eq!(buf, b"onetwo");
        assert_eq!(got.len, 6);
        assert_eq!(fds.len(), 3);
        for (mine, theirs) in files.iter().zip(&fds) {
            let (m, t) = (
                file_info(mine.as_fd()).unwrap(),
                file_info(theirs.as_fd()).unwrap(),
            );
            assert_eq!(m.identity, t.identity);
        }
        fds.clear();
        let got = done(recv_record(b.as_fd(), &mut buf, &mut control, 4, &mut fds).unwrap());
        assert_eq!(buf, b"x");
        assert_eq!(got.len, 1);
        assert!(fds.is_empty(), "the second record carried no descriptors");
        assert_eq!(
            recv_record(b.as_fd(), &mut buf, &mut control, 4, &mut fds).unwrap(),
            Io::WouldBlock
        );
        assert!(
            !wait(
                b.as_fd(),
                Interest::READABLE,
                Some(Duration::from_millis(1))
            )
            .unwrap()
        );
    }

    #[test]
    fn a_record_longer_than_the_room_is_truncated_to_it() {
        let (a, b) = seqpacket_pair().unwrap();
        send_record(a.as_fd(), &[Bytes::from(b"0123456789")], &[]).unwrap();
        send_record(a.as_fd(), &[Bytes::from(b"ab")], &[]).unwrap();
        let mut buf = Vec::with_capacity(4);
        let mut control = control_buffer(1);
        let got = done(recv_record(b.as_fd(), &mut buf, &mut control, 1, &mut Vec::new()).unwrap());
        assert!(got.data_truncated);
        assert_eq!((got.len, buf.as_slice()), (4, b"0123".as_slice()));
        let got = done(recv_record(b.as_fd(), &mut buf, &mut control, 1, &mut Vec::new()).unwrap());
        assert!(!got.data_truncated);
        assert_eq!(
            buf, b"ab",
            "the longer record's bytes are not part of the next"
        );
    }

    #[test]
    fn more_descriptors_than_offered_room_truncate_and_the_arrived_ones_are_owned() {
        let (a, b) = seqpacket_pair().unwrap();
        let files: Vec<OwnedFd> = (0..3)
            .map(|_| create_memory_file(4096, "test").unwrap())
            .collect();
        let raw: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        send_record(a.as_fd(), &[Bytes::from(b"three")], &raw).unwrap();
        let mut buf = Vec::with_capacity(16);
        let mut control = control_buffer(1);
        let mut fds = Vec::new();
        let got = done(recv_record(b.as_fd(), &mut buf, &mut control, 1, &mut fds).unwrap());
        assert!(got.control_truncated);
        assert!(fds.len() <= 1);
    }

    #[test]
    fn a_peer_that_left_reads_as_end_of_file_and_refuses_sends() {
        let (a, b) = seqpacket_pair().unwrap();
        drop(b);
        assert_eq!(
            send_record(a.as_fd(), &[Bytes::from(b"x")], &[]).unwrap(),
            Io::Disconnected
        );
        let (c, d) = seqpacket_pair().unwrap();
        shutdown_both(d.as_fd());
        let mut buf = Vec::with_capacity(16);
        let mut control = control_buffer(1);
        let got = done(recv_record(c.as_fd(), &mut buf, &mut control, 1, &mut Vec::new()).unwrap());
        assert_eq!(got.len, 0);
    }

    #[test]
    fn credentials_name_this_process_for_a_socketpair() {
        let (a, _b) = seqpacket_pair().unwrap();
        let creds = peer_credentials(a.as_fd()).unwrap();
        assert_eq!(creds.pid, std::process::id() as i32);
    }
}
