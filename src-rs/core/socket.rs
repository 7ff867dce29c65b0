//! A socket that its owner can close before the owner itself goes: a connection that has
//! ended, or a listener that stopped, releases its descriptor as soon as no event loop
//! watches it, instead of when the last handle to it is dropped.

use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::sync::{AtomicI32, Ordering};

#[derive(Debug)]
pub(crate) struct Socket(AtomicI32);

impl Socket {
    pub(crate) fn new(fd: OwnedFd) -> Socket {
        Socket(AtomicI32::new(fd.into_raw_fd()))
    }

    pub(crate) fn raw(&self) -> Option<RawFd> {
        let raw = self.0.load(Ordering::Acquire);
        (raw >= 0).then_some(raw)
    }

    /// The socket, or `None` once released. The borrow must not outlive the caller's
    /// hold on its owner's lock, under which alone `release` runs.
    pub(crate) fn borrow(&self) -> Option<BorrowedFd<'static>> {
        // SAFETY: a non-negative number here is the open socket this struct owns. It is
        // closed only by `release`, which runs with its owner's lock held; every caller
        // holds that lock and drops the borrow before releasing it.
        self.raw().map(|raw| unsafe { BorrowedFd::borrow_raw(raw) })
    }

    pub(crate) fn release(&self) {
        let raw = self.0.swap(-1, Ordering::AcqRel);
        if raw >= 0 {
            // SAFETY: `raw` was the socket this struct owned; swapping in -1 made this the
            // only place that closes it.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.release();
    }
}
