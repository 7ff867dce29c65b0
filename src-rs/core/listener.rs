//! Listening sockets: `bind(2)` + `listen(2)` at a path, `accept(2)` into endpoints.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, Readiness};
use crate::wire::Limits;

/// A listening socket. Its socket file has mode 0600 and is removed on drop (if it is
/// still the one this listener created).
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file, or `None` for an abstract name.
    file: Option<(u64, u64)>,
    limits: Limits,
}

fn path_identity(path: &Path) -> Option<(u64, u64)> {
    nix::sys::stat::stat(path)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

impl Listener {
    /// Listens at `path`; a leading NUL byte names a Linux abstract socket, which leaves
    /// no file behind. A stale socket file from a listener that died (nobody accepts on
    /// it) is replaced; a live one is an error.
    pub fn bind(path: impl AsRef<Path>) -> Result<Listener> {
        Self::bind_with_limits(path, Limits::default())
    }

    /// [`Listener::bind`] whose accepted endpoints accept at most `limits` per message.
    pub fn bind_with_limits(path: impl AsRef<Path>, limits: Limits) -> Result<Listener> {
        let path = path.as_ref();
        if !limits.is_valid() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "Listener::bind",
                "limits out of range",
            ));
        }
        let fd = match sys::listen_at(path) {
            Err(e)
                if e.errno() == Some(libc::EADDRINUSE)
                    && !sys::is_abstract(path)
                    && is_stale(path) =>
            {
                std::fs::remove_file(path).map_err(|io| {
                    Error::new(
                        ErrorKind::Os,
                        "unlink",
                        format!("a stale socket file could not be removed: {io}"),
                    )
                })?;
                sys::listen_at(path)?
            }
            other => other?,
        };
        let file = if sys::is_abstract(path) {
            None
        } else {
            path_identity(path)
        };
        Ok(Listener {
            fd,
            path: path.to_path_buf(),
            file,
            limits,
        })
    }

    /// The path it listens at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one pending connection without blocking ([`ErrorKind::WouldBlock`] if none).
    pub fn accept(&self) -> Result<Endpoint> {
        Endpoint::start(sys::accept(self.fd.as_fd())?, self.limits)
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
            if remaining == Some(Duration::ZERO)
                || !sys::wait(self.fd.as_fd(), Readiness::Readable, remaining)?
            {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    "accept",
                    "no connection arrived in time",
                ));
            }
        }
    }
}

/// A socket file nobody listens on any more: connecting to it is refused.
fn is_stale(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    is_socket
        && matches!(
            sys::connect_to(path),
            Err(e) if e.errno() == Some(libc::ECONNREFUSED)
        )
}

impl AsFd for Listener {
    /// The listening socket, for an event loop to wait on.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Listener {
    /// Removes the socket file now, if it is still the one this listener created, so no
    /// new client can find it. Also done on drop.
    pub fn remove_socket_file(&self) {
        if self.file.is_some() && path_identity(&self.path) == self.file {
            // Another process may have removed it meanwhile; nothing is left to clean then.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove_socket_file();
    }
}
