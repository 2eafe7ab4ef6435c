//! Listeners: inherited from systemd (socket activation, `LISTEN_FDS`/`LISTEN_PID`,
//! fds from 3) or created by the agent (Unix socket with mode and group; TCP).

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("inherited fd {0} is neither a Unix nor a TCP stream socket")]
    Unsupported(RawFd),
    #[error("group {0:?} not found")]
    Group(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ListenError {
    let what = what.into();
    move |source| ListenError::Io { what, source }
}

#[derive(Debug, Default)]
pub struct Inherited {
    pub unix: Option<std::os::unix::net::UnixListener>,
    pub tcp: Option<std::net::TcpListener>,
}

const SD_LISTEN_FDS_START: RawFd = 3;

/// Take the listeners systemd passed, if they are meant for this process. The
/// variables are removed so children don't take them too. Call it before any other
/// thread exists (before the tokio runtime is built).
pub fn from_systemd() -> Result<Inherited, ListenError> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    // SAFETY: called from `main` before the runtime and any other thread exist, so no
    // concurrent reader of the environment can observe the change.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let mut out = Inherited::default();
    if !pid_ok {
        return Ok(out);
    }
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + n {
        // SAFETY: systemd's protocol hands fds 3..3+LISTEN_FDS to this process (LISTEN_PID
        // matched) and nothing else in the agent owns them; borrowing just for getsockname.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let addr: SockaddrStorage =
            getsockname(std::os::fd::AsRawFd::as_raw_fd(&bfd)).map_err(|e| ListenError::Io {
                what: format!("inherited fd {fd}"),
                source: e.into(),
            })?;
        let _ = nix::fcntl::fcntl(
            bfd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        match addr.family() {
            Some(AddressFamily::Unix) if out.unix.is_none() => {
                // SAFETY: fd is an open listening Unix socket passed to us by systemd and
                // owned by nothing else; the listener takes ownership exactly once.
                let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                l.set_nonblocking(true)
                    .map_err(io("inherited Unix socket"))?;
                out.unix = Some(l);
            }
            Some(AddressFamily::Inet | AddressFamily::Inet6) if out.tcp.is_none() => {
                // SAFETY: as above, for a TCP listening socket.
                let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                l.set_nonblocking(true)
                    .map_err(io("inherited TCP socket"))?;
                out.tcp = Some(l);
            }
            _ => return Err(ListenError::Unsupported(fd)),
        }
    }
    Ok(out)
}

/// Bind the Unix socket at `path` with `mode` and optional `group`, replacing a stale
/// socket left by a previous run (never any other kind of file).
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<tokio::net::UnixListener, ListenError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path)
        && m.file_type().is_socket()
    {
        std::fs::remove_file(path).map_err(io(format!("removing stale {}", path.display())))?;
    }
    let l =
        tokio::net::UnixListener::bind(path).map_err(io(format!("binding {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))?;
    if let Some(g) = group {
        let gid = nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .ok_or_else(|| ListenError::Group(g.to_owned()))?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| ListenError::Io {
            what: format!("chgrp {}", path.display()),
            source: e.into(),
        })?;
    }
    Ok(l)
}
