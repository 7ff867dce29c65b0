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
mod session;
mod socket;
mod sync;
mod sys;
mod table;
pub mod wire;

pub use endpoint::{Bytes, Endpoint, Event, Options, PeerFilter, Stats, Submitted, Ticket};
pub use error::{Error, ErrorKind, Result};
pub use limits::{
    Limits, ProcessLimits, ProcessUsage, process_limits, process_usage, set_process_limits,
};
pub use listener::{ListenOptions, Listener};
pub use region::{Lease, Mapping, Realm, Region};
pub use session::{Attach, Incoming, Message};
pub use sys::{Credentials, Interest};
