//! The one error type of the crate.
//!
//! Every failure has an [`ErrorKind`] that bindings map to a stable code (the Node
//! package turns [`ErrorKind::PeerClosed`] into `ERR_SHMLINK_PEER_CLOSED`), the
//! operation that failed, a sentence saying what to do about it, and the OS error
//! when there is one.

use std::fmt;
use std::io;

/// What went wrong, in terms a program can branch on.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// This endpoint was closed, locally or after a protocol violation.
    Closed,
    /// The peer closed its end of the connection (end of file).
    PeerClosed,
    /// A non-blocking call could not proceed now; wait for the socket and retry.
    WouldBlock,
    /// A blocking call's timeout passed before it could complete.
    TimedOut,
    /// The peer broke a rule of `docs/PROTOCOL.md`; the connection was closed.
    Protocol,
    /// The peer speaks another protocol or another major version of it.
    Incompatible,
    /// A received region lacks the seals the protocol requires.
    RegionUnsealed,
    /// A region's size differs from the size its descriptor states.
    RegionSizeMismatch,
    /// A received descriptor is not a sealable memory file (a pipe, a socket, a disk file).
    RegionNotMemfd,
    /// The region was transferred to a peer and has not come back yet.
    RegionTransferred,
    /// The region is frozen: its contents can no longer change.
    RegionFrozen,
    /// The region is mapped writable elsewhere, so it cannot be frozen now.
    RegionBusy,
    /// More regions in one message than the receiving side accepts.
    TooManyRegions,
    /// An inline payload larger than the receiving side accepts.
    PayloadTooLarge,
    /// The kernel dropped file descriptors from a received message.
    FdsTruncated,
    /// An argument is out of range or malformed.
    InvalidArgument,
    /// The operating system does not provide what this call needs.
    Unsupported,
    /// A system call failed; [`Error::errno`] tells which error.
    Os,
}

/// A failed shmlink operation.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    op: &'static str,
    detail: String,
    source: Option<io::Error>,
}

/// The result type of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` raised by `op`, with a sentence that says what happened and what to do.
    pub fn new(kind: ErrorKind, op: &'static str, detail: impl Into<String>) -> Self {
        Error {
            kind,
            op,
            detail: detail.into(),
            source: None,
        }
    }

    /// An OS error from system call `op`; `advice` says what the caller can do about it.
    pub fn os(op: &'static str, errno: nix::errno::Errno, advice: &str) -> Self {
        Self::with_source(ErrorKind::Os, op, errno, advice)
    }

    /// An error of `kind` caused by the OS error `errno`.
    pub fn with_source(
        kind: ErrorKind,
        op: &'static str,
        errno: nix::errno::Errno,
        detail: impl Into<String>,
    ) -> Self {
        Error {
            kind,
            op,
            detail: detail.into(),
            source: Some(io::Error::from_raw_os_error(errno as i32)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation or system call that failed, such as `"sendmsg"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The OS error number, when a system call failed.
    pub fn errno(&self) -> Option<i32> {
        self.source.as_ref().and_then(io::Error::raw_os_error)
    }

    /// The symbolic name of [`Error::errno`], such as `"EMFILE"`.
    pub fn errno_name(&self) -> Option<String> {
        self.errno()
            .map(|n| format!("{:?}", nix::errno::Errno::from_raw(n)))
    }

    pub(crate) fn would_block(op: &'static str) -> Self {
        Self::new(
            ErrorKind::WouldBlock,
            op,
            "the socket is not ready; wait for it and retry",
        )
    }

    pub(crate) fn closed(op: &'static str) -> Self {
        Self::new(
            ErrorKind::Closed,
            op,
            "the endpoint is closed; create or accept a new one",
        )
    }

    pub(crate) fn peer_closed(op: &'static str) -> Self {
        Self::new(
            ErrorKind::PeerClosed,
            op,
            "the peer closed the connection; regions it sent stay valid until you drop them",
        )
    }

    pub(crate) fn protocol(op: &'static str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::new(
            ErrorKind::Protocol,
            op,
            format!("{detail}; the connection was closed (docs/PROTOCOL.md, receiver rules)"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => match self.errno_name() {
                Some(name) => write!(f, "{} failed: {name} ({source}); {}", self.op, self.detail),
                None => write!(f, "{} failed: {source}; {}", self.op, self.detail),
            },
            None => write!(f, "{}: {}", self.op, self.detail),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_and_static() {
        fn assert_bounds<T: Send + Sync + 'static>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn os_error_names_the_call_the_errno_and_the_remedy() {
        let e = Error::os("sendmsg", nix::errno::Errno::EMFILE, "close unused regions");
        let text = e.to_string();
        assert!(text.starts_with("sendmsg failed: EMFILE ("), "{text}");
        assert!(text.ends_with("; close unused regions"), "{text}");
        assert_eq!(e.errno(), Some(libc::EMFILE));
        assert!(std::error::Error::source(&e).is_some());
    }
}
