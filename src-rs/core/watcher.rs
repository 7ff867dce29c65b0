//! A watcher: one thread's view of many sockets at once (epoll), for event loops that have
//! no poll handles of their own. It reports readiness once per arming, so the thread that
//! waits never spins while another thread handles what it reported.

use std::os::fd::BorrowedFd;

use crate::error::Result;
use crate::sys::{self, Interest};

/// Many sockets, each watched under a key, reported once per [`Watcher::arm`].
pub struct Watcher {
    epoll: sys::Epoll,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// A watcher with nothing to watch yet.
    pub fn new() -> Result<Watcher> {
        Ok(Watcher {
            epoll: sys::watcher()?,
        })
    }

    /// Starts watching `fd` under `key`, not armed yet.
    pub fn add(&self, fd: BorrowedFd<'_>, key: u64) -> Result<()> {
        sys::watch(&self.epoll, fd, key, Interest::default(), true)
    }

    /// Reports `fd`'s next readiness for `interest` once, under `key`. An empty interest
    /// disarms it.
    pub fn arm(&self, fd: BorrowedFd<'_>, key: u64, interest: Interest) -> Result<()> {
        sys::watch(&self.epoll, fd, key, interest, false)
    }

    /// Stops watching `fd` (before it is closed).
    pub fn remove(&self, fd: BorrowedFd<'_>) {
        sys::unwatch(&self.epoll, fd);
    }

    /// Blocks until something is ready; `ready` holds what, as `(key, readiness)`. An
    /// error or hang-up reads as readable: reading tells what happened.
    pub fn wait(&self, ready: &mut Vec<(u64, Interest)>) -> Result<()> {
        sys::wait_ready(&self.epoll, ready)
    }
}
