//! Listening sockets: `bind(2)` + `listen(2)` at a path, accepted connections checked
//! against a credential filter before anything is read from them.
//!
//! Accepted connections wait in a bounded queue until the application takes them; an
//! endpoint reads nothing until then (its driver is not started), so a peer cannot make
//! this process map a region before the application has looked at who it is. Past the
//! bound, connections stay in the kernel's backlog, whose own bound makes further
//! clients wait.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::endpoint::{Endpoint, Options, PeerFilter};
use crate::error::{Error, ErrorKind, Result};
use crate::socket::Socket;
use crate::sync::{AtomicU64, Ordering};
use crate::sys::{self, Interest};

/// How a listener admits connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    /// Who may connect (`SO_PEERCRED`); others are closed at once, unread.
    pub allow: PeerFilter,
    /// How accepted endpoints treat their peers (frozen regions only, by default).
    pub endpoint: Options,
    /// Accepted connections the application has not taken yet, at most.
    pub max_pending: usize,
    /// Connections the kernel queues before the listener accepts them (`listen(2)`).
    pub backlog: usize,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            allow: PeerFilter::SameUser,
            endpoint: Options::untrusted(),
            max_pending: 64,
            backlog: 128,
        }
    }
}

#[derive(Debug)]
struct State {
    closed: bool,
    pending: VecDeque<Endpoint>,
}

/// A listening socket. Its socket file has mode 0600 and is removed when the listener is
/// closed or dropped (if it is still the one this listener created).
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file, or `None` for an abstract name.
    file: Option<(u64, u64)>,
    options: ListenOptions,
    state: Mutex<State>,
    rejected: AtomicU64,
}

impl Listener {
    /// Listens at `path`; a leading NUL byte names a Linux abstract socket, which leaves
    /// no file behind (and which any local user can reach: the filter is what keeps
    /// them out). A stale socket file from a listener that died is replaced; a live one
    /// is an error.
    pub fn bind(path: impl AsRef<Path>, options: ListenOptions) -> Result<Listener> {
        options.endpoint.limits.validate("Endpoint.listen")?;
        if options.max_pending == 0 {
            return Err(Error::invalid(
                "Endpoint.listen",
                "maxPending must be at least 1",
            ));
        }
        let path = path.as_ref();
        let (fd, file) = sys::listen_at(path, options.backlog)?;
        Ok(Listener {
            socket: Socket::new(fd),
            path: path.to_path_buf(),
            file,
            options,
            state: Mutex::new(State {
                closed: false,
                pending: VecDeque::new(),
            }),
            rejected: AtomicU64::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The path it listens at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections refused by the credential filter so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Accepted connections waiting for the application.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// What a driving event loop should wait for: connections, while there is room for them.
    pub fn interest(&self) -> Interest {
        let state = self.state();
        Interest {
            readable: !state.closed && state.pending.len() < self.options.max_pending,
            writable: false,
        }
    }

    /// Accepts the connections the kernel has queued, as many as there is room for,
    /// closing those the filter refuses. Returns how many now wait for the application.
    pub fn on_ready(&self) -> Result<usize> {
        let mut state = self.state();
        while !state.closed && state.pending.len() < self.options.max_pending {
            let Some(listening) = self.socket.borrow() else {
                break;
            };
            let Some(fd) = sys::accept(listening)? else {
                break;
            };
            if self.options.allow.check(fd.as_fd(), "accept").is_err() {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                sys::shutdown_both(fd.as_fd());
                continue;
            }
            // A connection whose HELLO cannot even be sent is already gone; drop it.
            if let Ok(endpoint) = Endpoint::start(fd, self.options.endpoint.clone()) {
                state.pending.push_back(endpoint);
            }
        }
        Ok(state.pending.len())
    }

    /// The oldest accepted connection the application has not taken, if any.
    pub fn take(&self) -> Option<Endpoint> {
        self.state().pending.pop_front()
    }

    /// Accepts one connection without blocking ([`ErrorKind::WouldBlock`] if none).
    pub fn accept(&self) -> Result<Endpoint> {
        if self.state().closed {
            return Err(closed());
        }
        self.on_ready()?;
        self.take().ok_or_else(|| Error::would_block("accept"))
    }

    /// Accepts one connection, waiting up to `timeout` (`None`: forever).
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> Result<Endpoint> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.accept() {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => return other,
            }
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let Some(listening) = self.socket.borrow() else {
                return Err(closed());
            };
            if remaining == Some(Duration::ZERO)
                || !sys::wait(listening, Interest::READABLE, remaining)?
            {
                return Err(Error::timed_out("accept"));
            }
        }
    }

    /// Stops listening: new clients are refused, the socket file is removed (if it is
    /// still this listener's) and connections not yet taken are closed. The descriptor
    /// itself is closed when the listener is dropped, so an event loop can stop watching
    /// it first. Idempotent.
    pub fn close(&self) {
        let mut state = self.state();
        if std::mem::replace(&mut state.closed, true) {
            return;
        }
        if let Some(listening) = self.socket.borrow() {
            sys::shutdown_both(listening);
        }
        self.remove_socket_file();
        state.pending.clear();
    }

    /// Closes the descriptor of a closed listener now, instead of on drop. The event loop
    /// must have stopped watching it.
    pub fn release_socket(&self) {
        let state = self.state();
        if state.closed {
            self.socket.release();
        }
    }

    /// The listening socket's descriptor number, for an event loop to watch; `None` once
    /// released.
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.socket.raw()
    }

    /// Whether [`Listener::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    fn remove_socket_file(&self) {
        let still_ours = self.file.is_some()
            && nix::sys::stat::stat(&self.path)
                .ok()
                .map(|st| (st.st_dev, st.st_ino))
                == self.file;
        if still_ours {
            // Another process may remove it meanwhile; nothing is left to clean then.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn closed() -> Error {
    Error::new(
        ErrorKind::Closed,
        "accept",
        "the listener is closed; listen again to accept connections",
    )
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}
