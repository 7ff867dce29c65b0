//! Taking over a file descriptor number that JavaScript hands in.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};

/// Takes ownership of descriptor `raw`. `Endpoint.fromFd(fd)` documents that the
/// descriptor passes to the endpoint, which closes it; this checks that it is open and
/// not one of the standard streams.
pub fn claim(raw: i32) -> Result<OwnedFd, &'static str> {
    if raw <= 2 {
        return Err("fd must be an open socket descriptor above 2 (not stdin, stdout or stderr)");
    }
    // SAFETY: F_GETFD only reads the descriptor table entry; an invalid number fails
    // with EBADF and touches nothing.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err("fd is not an open descriptor");
    }
    // SAFETY: `raw` is open (checked above) and, by the contract of `Endpoint.fromFd`,
    // its ownership passes to us: nothing else will close it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
