//! Zero-copy inter-process communication: shared-memory regions handed between
//! processes over UNIX sockets, safely.
//!
//! A [`Region`] is an anonymous memory file ([`memfd_create(2)`]) whose size is sealed,
//! so no process can shrink it under a mapping. An [`Endpoint`] sends small messages with
//! regions attached over an `AF_UNIX`/`SOCK_SEQPACKET` socket ([`unix(7)`]), passing a
//! region's descriptor only the first time and its id afterwards. A receiver checks
//! every descriptor (type, seals, size) before mapping it.
//!
//! Sending is a release and receiving an acquire: what one process wrote to a region
//! before [`Endpoint::send`] is visible to the other after its receive. The argument,
//! and what it assumes, is in `docs/MEMORY-MODEL.md`; the wire format is in
//! `docs/PROTOCOL.md`.
//!
//! ```
//! use shmlink::{Attach, Endpoint, Region};
//!
//! # fn main() -> Result<(), shmlink::Error> {
//! let (parent, child) = Endpoint::pair()?;
//! let frame = Region::create(1 << 20)?;
//! frame.write(0, b"pixels")?;
//! parent.send_blocking(b"frame 1", &[Attach::transfer(&frame)], None)?;
//!
//! let message = child.recv_timeout(None)?;
//! let mut head = [0u8; 6];
//! message.regions[0].region.read(0, &mut head)?;
//! assert_eq!(&head, b"pixels");
//! assert_eq!(message.payload, b"frame 1");
//! # Ok(())
//! # }
//! ```
//!
//! [`memfd_create(2)`]: https://man7.org/linux/man-pages/man2/memfd_create.2.html
//! [`unix(7)`]: https://man7.org/linux/man-pages/man7/unix.7.html

#![warn(missing_docs)]

mod bytes;
mod endpoint;
mod error;
mod limits;
mod listener;
mod payload;
mod pool;
mod region;
mod ring;
mod session;
mod socket;
mod sync;
mod sys;
mod table;
mod watcher;
pub mod wire;

pub use bytes::Bytes;
pub use endpoint::{
    DEFAULT_BUSY_POLL, Endpoint, Event, Options, PeerFilter, Settle, Stats, Submitted, Ticket,
};
pub use error::{Error, ErrorKind, Result};
pub use limits::{
    Limits, ProcessLimits, ProcessUsage, process_limits, process_usage, set_process_limits,
};
pub use listener::{ListenOptions, Listener};
pub use payload::Payload;
pub use pool::{Pool, PoolStats};
pub use region::{Lease, Mapping, Realm, Region};
pub use session::{Attach, Incoming, Message};
pub use sys::{Credentials, Interest};
pub use watcher::Watcher;

/// Entry points for coverage-guided fuzzing (`fuzz/`), not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use std::os::fd::OwnedFd;

    use crate::limits::Limits;
    use crate::region::{FuzzFile, Realm};
    use crate::session::{Record, Session};
    use crate::wire::{DESCRIPTOR_LEN, FLAG_FROZEN, FLAG_NEW, HEADER_LEN};

    /// Feeds `data` to a fresh session as a sequence of records, as a hostile peer could
    /// send them.
    ///
    /// The first byte picks the start: 0 offers the first record as the peer's HELLO;
    /// any other value has a valid HELLO judged first, and 1 also makes the session
    /// refuse writable regions (an untrusted peer). Then each record is a length
    /// (little-endian u16), a flags byte and that many bytes. The flags byte:
    ///
    /// | bits | meaning |
    /// |------|---------|
    /// | 0    | the record came truncated (`MSG_TRUNC`) |
    /// | 1    | descriptors were dropped (`MSG_CTRUNC`) |
    /// | 2–3  | what the files are: 0 memory files sealed as the descriptors say, 1 the files this input sent before, again (duplicates, newest first), 2 memory files whose write seal is the opposite of what the descriptors say, 3 pipes |
    /// | 4–5  | how many files come with the record (0–3) |
    ///
    /// A memory file made for the k-th file of a record takes its size and `FROZEN` flag
    /// from the k-th descriptor marked `NEW` in the record's bytes (whether or not the
    /// frame is otherwise well formed), or is 4096 bytes and writable when there is no
    /// such descriptor; sizes above 1 MiB become 4096 bytes (a size mismatch). Returns
    /// when the session has ended or the input is used up.
    pub fn session(data: &[u8]) {
        let mut session =
            Session::new(Limits::default(), data.first() != Some(&1), Realm::unique());
        let mut rest = data.get(1..).unwrap_or_default();
        if data.first() != Some(&0) {
            let hello = crate::wire::hello_frame(crate::wire::Announced::default());
            let _ = session.handle_record(Record {
                bytes: &hello,
                fds: Vec::new(),
                data_truncated: false,
                control_truncated: false,
            });
        }
        let mut sent: Vec<OwnedFd> = Vec::new();
        while rest.len() >= 3 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let flags = rest[2];
            rest = &rest[3..];
            let bytes = &rest[..len.min(rest.len())];
            rest = &rest[bytes.len()..];
            let fds = files(bytes, flags, &mut sent);
            let outcome = session.handle_record(Record {
                bytes,
                fds,
                data_truncated: flags & 1 != 0,
                control_truncated: flags & 2 != 0,
            });
            if outcome.is_err() {
                return;
            }
        }
    }

    /// The files that come with one record, as its flags byte says; every memory file
    /// made is also kept in `sent`, so a later record can send it again.
    fn files(bytes: &[u8], flags: u8, sent: &mut Vec<OwnedFd>) -> Vec<OwnedFd> {
        let count = usize::from((flags >> 4) & 0x3);
        let mut new = bytes
            .get(HEADER_LEN..)
            .unwrap_or_default()
            .chunks_exact(DESCRIPTOR_LEN)
            .map(|d| {
                let word = |at: usize| u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
                let size = u64::from(word(8)) | (u64::from(word(12)) << 32);
                (word(4), size)
            })
            .filter(|(flags, _)| flags & FLAG_NEW != 0);
        (0..count)
            .filter_map(|k| {
                let (flags_of_d, size) = new.next().unwrap_or((0, 4096));
                let size = usize::try_from(size)
                    .ok()
                    .filter(|size| (1..=1 << 20).contains(size))
                    .unwrap_or(4096);
                let frozen = flags_of_d & FLAG_FROZEN != 0;
                let kind = match (flags >> 2) & 0x3 {
                    0 => FuzzFile::Sealed { frozen },
                    1 => {
                        let again = sent.len().checked_sub(1 + k).and_then(|i| sent.get(i));
                        if let Some(file) = again.and_then(|f| f.try_clone().ok()) {
                            return Some(file);
                        }
                        FuzzFile::Sealed { frozen }
                    }
                    2 => FuzzFile::Sealed { frozen: !frozen },
                    _ => FuzzFile::Pipe,
                };
                let file = crate::region::fuzz_file(size, kind)?;
                if let (FuzzFile::Sealed { .. }, Ok(copy)) = (kind, file.try_clone()) {
                    sent.push(copy);
                }
                Some(file)
            })
            .collect()
    }

    /// Decodes `data` as one record of the wire format.
    pub fn frame(data: &[u8]) {
        if let Ok(frame) = crate::wire::parse(data) {
            let _ = frame.descriptors().count();
        }
        let _ = crate::wire::parse_first(data);
    }
}
