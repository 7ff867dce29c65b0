//! The one error type of the crate.
//!
//! Every failure has an [`ErrorKind`] with a stable code ([`ErrorKind::code`], the
//! `ERR_SHMLINK_*` strings every language binding uses and `docs/ERRORS.md` lists), the
//! operation that failed, the system call when one did, a sentence saying what to do
//! about it, and the OS error when there is one.

use std::fmt;
use std::io;

macro_rules! error_kinds {
    ($( $(#[doc = $doc:literal])+ $kind:ident => $code:literal, )+) => {
        /// What went wrong, in terms a program can branch on.
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $( $(#[doc = $doc])+ $kind, )+
        }

        impl ErrorKind {
            /// Every kind, in the order `docs/ERRORS.md` lists them.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind),+];

            /// The stable code of this kind, such as `"ERR_SHMLINK_PEER_CLOSED"`.
            pub const fn code(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $code,)+
                }
            }
        }
    };
}

error_kinds! {
    /// This endpoint (or listener) was closed, locally or after a failure it reported.
    Closed => "ERR_SHMLINK_CLOSED",
    /// The peer closed its end of the connection (end of file).
    PeerClosed => "ERR_SHMLINK_PEER_CLOSED",
    /// The peer's credentials do not pass this side's filter (`SO_PEERCRED`).
    PeerRejected => "ERR_SHMLINK_PEER_REJECTED",
    /// A non-blocking call could not proceed now; wait for the socket and retry.
    WouldBlock => "ERR_SHMLINK_WOULD_BLOCK",
    /// A blocking call's timeout passed before it could complete.
    TimedOut => "ERR_SHMLINK_TIMED_OUT",
    /// The peer broke a rule of `docs/PROTOCOL.md`; the connection was closed.
    Protocol => "ERR_SHMLINK_PROTOCOL_VIOLATION",
    /// The peer speaks another protocol or another major version of it.
    Incompatible => "ERR_SHMLINK_PEER_INCOMPATIBLE",
    /// The peer exceeded a limit this side set (regions bound, bytes mapped, region size);
    /// the connection was closed.
    LimitExceeded => "ERR_SHMLINK_LIMIT_EXCEEDED",
    /// A received region lacks the seals the protocol requires.
    RegionUnsealed => "ERR_SHMLINK_REGION_UNSEALED",
    /// A region's size differs from the size its descriptor states.
    RegionSizeMismatch => "ERR_SHMLINK_REGION_SIZE_MISMATCH",
    /// A received descriptor is not a sealable memory file (a pipe, a socket, a disk file).
    RegionNotMemfd => "ERR_SHMLINK_REGION_NOT_MEMFD",
    /// A received memory file is not on shmem (tmpfs): a hugetlbfs memfd, for example.
    RegionNotShmem => "ERR_SHMLINK_REGION_NOT_SHMEM",
    /// A peer this endpoint does not trust with writable memory sent a region that is not frozen.
    RegionWritable => "ERR_SHMLINK_REGION_WRITABLE",
    /// The region was transferred to a peer and has not come back yet.
    RegionTransferred => "ERR_SHMLINK_REGION_TRANSFERRED",
    /// The region is frozen: its contents can no longer change.
    RegionFrozen => "ERR_SHMLINK_REGION_FROZEN",
    /// The region is mapped writable elsewhere, so it cannot be frozen now.
    RegionBusy => "ERR_SHMLINK_REGION_BUSY",
    /// The region was closed.
    RegionClosed => "ERR_SHMLINK_REGION_CLOSED",
    /// A copy or view larger than the runtime can hold in one buffer.
    RegionTooLarge => "ERR_SHMLINK_REGION_TOO_LARGE",
    /// More regions in one message than the receiving side accepts.
    TooManyRegions => "ERR_SHMLINK_TOO_MANY_REGIONS",
    /// An inline payload larger than the receiving side accepts.
    PayloadTooLarge => "ERR_SHMLINK_PAYLOAD_TOO_LARGE",
    /// The kernel dropped file descriptors from a received message.
    FdsTruncated => "ERR_SHMLINK_FDS_TRUNCATED",
    /// An argument is out of range or malformed.
    InvalidArgument => "ERR_SHMLINK_INVALID_ARG",
    /// The runtime refuses zero-copy views (Electron's V8 memory cage).
    ZeroCopyUnavailable => "ERR_SHMLINK_ZERO_COPY_UNAVAILABLE",
    /// The operating system does not provide what this call needs.
    Unsupported => "ERR_SHMLINK_UNSUPPORTED",
    /// The host runtime refused a call a binding made into it (a Node-API failure).
    Runtime => "ERR_SHMLINK_RUNTIME",
    /// A system call failed; [`Error::errno`] tells which error.
    Os => "ERR_SHMLINK_OS",
}

/// A failed shmlink operation.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    op: &'static str,
    syscall: Option<&'static str>,
    detail: String,
    source: Option<io::Error>,
}

/// The result type of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` raised by operation `op` (such as `"send"`), with a sentence
    /// that says what happened and what to do.
    pub fn new(kind: ErrorKind, op: &'static str, detail: impl Into<String>) -> Self {
        Error {
            kind,
            op,
            syscall: None,
            detail: detail.into(),
            source: None,
        }
    }

    /// An error of `kind` in `op`, caused by system call `syscall` failing with `errno`.
    pub fn sys(
        kind: ErrorKind,
        op: &'static str,
        syscall: &'static str,
        errno: nix::errno::Errno,
        detail: impl Into<String>,
    ) -> Self {
        Error {
            kind,
            op,
            syscall: Some(syscall),
            detail: detail.into(),
            source: Some(io::Error::from_raw_os_error(errno as i32)),
        }
    }

    /// An [`ErrorKind::Os`] error: system call `syscall` failed in `op`; `advice` says
    /// what the caller can do about it.
    pub fn os(
        op: &'static str,
        syscall: &'static str,
        errno: nix::errno::Errno,
        advice: impl Into<String>,
    ) -> Self {
        Self::sys(ErrorKind::Os, op, syscall, errno, advice)
    }

    /// The same error reported for another operation (a blocking call reporting what
    /// the non-blocking call it made found).
    pub(crate) fn during(mut self, op: &'static str) -> Self {
        self.op = op;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stable code, such as `"ERR_SHMLINK_CLOSED"` (the kind's [`ErrorKind::code`]).
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The operation that failed, such as `"send"` or `"Region.read"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The system call that failed, such as `"sendmsg"`, when one did.
    pub fn syscall(&self) -> Option<&'static str> {
        self.syscall
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
            "the peer closed the connection; regions it sent stay valid until you close them",
        )
    }

    pub(crate) fn timed_out(op: &'static str) -> Self {
        Self::new(ErrorKind::TimedOut, op, "the timeout passed first")
    }

    pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, op, detail)
    }

    pub(crate) fn protocol(op: &'static str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::new(
            ErrorKind::Protocol,
            op,
            format!("{detail}; the connection was closed (docs/PROTOCOL.md §7)"),
        )
    }
}

impl Error {
    /// What happened, without the operation's name: for a message that embeds this error
    /// in the account of another operation.
    pub(crate) fn cause(&self) -> String {
        let text = self.to_string();
        text.strip_prefix(self.op)
            .and_then(|rest| rest.strip_prefix(": "))
            .map_or_else(|| text.clone(), str::to_owned)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.op)?;
        if let Some(syscall) = self.syscall {
            write!(f, "{syscall} failed")?;
            match (self.errno_name(), &self.source) {
                (Some(name), Some(source)) => write!(f, ": {name} ({source})")?,
                (None, Some(source)) => write!(f, ": {source}")?,
                _ => {}
            }
            write!(f, "; ")?;
        }
        write!(f, "{}", self.detail)
    }
}

impl Clone for Error {
    fn clone(&self) -> Self {
        Error {
            kind: self.kind,
            op: self.op,
            syscall: self.syscall,
            detail: self.detail.clone(),
            source: self.source.as_ref().map(|e| match e.raw_os_error() {
                Some(errno) => io::Error::from_raw_os_error(errno),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
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
    fn os_error_names_the_operation_the_call_the_errno_and_the_remedy() {
        let e = Error::os(
            "send",
            "sendmsg",
            nix::errno::Errno::EMFILE,
            "close unused regions",
        );
        let text = e.to_string();
        assert!(text.starts_with("send: sendmsg failed: EMFILE ("), "{text}");
        assert!(text.ends_with("; close unused regions"), "{text}");
        assert_eq!(e.errno(), Some(libc::EMFILE));
        assert_eq!(e.syscall(), Some("sendmsg"));
        assert_eq!(e.op(), "send");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn every_code_is_distinct_and_well_formed() {
        let mut codes: Vec<_> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert!(codes.iter().all(|c| c.starts_with("ERR_SHMLINK_")));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
    }
}
