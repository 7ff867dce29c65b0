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

mod endpoint;
mod error;
mod limits;
mod listener;
mod region;
mod ring;
mod session;
mod socket;
mod sync;
mod sys;
mod table;
mod watcher;
pub mod wire;

pub use endpoint::{
    Bytes, DEFAULT_BUSY_POLL, Endpoint, Event, Options, PeerFilter, Stats, Submitted, Ticket,
};
pub use error::{Error, ErrorKind, Result};
pub use limits::{
    Limits, ProcessLimits, ProcessUsage, process_limits, process_usage, set_process_limits,
};
pub use listener::{ListenOptions, Listener};
pub use region::{Lease, Mapping, Realm, Region};
pub use session::{Attach, Incoming, Message};
pub use sys::{Credentials, Interest};
pub use watcher::Watcher;

/// Entry points for coverage-guided fuzzing (`fuzz/`), not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::limits::Limits;
    use crate::region::Realm;
    use crate::session::{Record, Session};

    /// Feeds `data` to a fresh session as a sequence of records, as a hostile peer could
    /// send them: each record is a length byte pair (little-endian u16) followed by that
    /// many bytes, and a flags byte whose bits say whether the record came truncated
    /// (data or control) and how many memory files to attach (freshly created, sealed,
    /// of the sizes the frame claims when it can). The first record is offered as the
    /// peer's HELLO when `data` starts with a zero byte; otherwise a valid HELLO is
    /// judged first. Returns when the session has ended or the input is used up.
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
        while rest.len() >= 3 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let flags = rest[2];
            rest = &rest[3..];
            let bytes = &rest[..len.min(rest.len())];
            rest = &rest[bytes.len()..];
            let fds = (0..(flags >> 4) & 0x3)
                .filter_map(|_| crate::region::fuzz_file(bytes))
                .collect();
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

    /// Decodes `data` as one record of the wire format.
    pub fn frame(data: &[u8]) {
        if let Ok(frame) = crate::wire::parse(data) {
            let _ = frame.descriptors().count();
        }
        let _ = crate::wire::parse_first(data);
    }
}
