//! `runc restore -d` builder.
//!
//! runc's stdio become the restored container's stdio, and CRIU can only re-attach pipes
//! (not host files) to a restored process. So the container gets fresh pipes whose read
//! ends are drained into a log file by a small `cat` process of its own: the drainer
//! outlives the agent, so restarting the agent never closes a container's stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{Runc, RuncError};

#[derive(Debug, Clone)]
pub struct RestoreCmd {
    runc: Runc,
    id: String,
    bundle: Option<PathBuf>,
    image_path: Option<PathBuf>,
    work_path: Option<PathBuf>,
    tcp_established: bool,
    tcp_close: bool,
    file_locks: bool,
}

impl RestoreCmd {
    pub(super) fn new(runc: Runc, id: &str) -> Self {
        Self {
            runc,
            id: id.to_owned(),
            bundle: None,
            image_path: None,
            work_path: None,
            tcp_established: false,
            tcp_close: false,
            file_locks: false,
        }
    }

    /// CRIU `tcp-close`: established connections come back closed, so the service
    /// reconnects. Needed when the new network namespace lacks the address the
    /// connections were bound to (a pod with a new IP): CRIU cannot bind them back.
    pub fn tcp_close(mut self, yes: bool) -> Self {
        self.tcp_close = yes;
        self
    }

    pub fn bundle(mut self, p: impl Into<PathBuf>) -> Self {
        self.bundle = Some(p.into());
        self
    }

    pub fn image_path(mut self, p: impl Into<PathBuf>) -> Self {
        self.image_path = Some(p.into());
        self
    }

    pub fn work_path(mut self, p: impl Into<PathBuf>) -> Self {
        self.work_path = Some(p.into());
        self
    }

    pub fn tcp_established(mut self, yes: bool) -> Self {
        self.tcp_established = yes;
        self
    }

    pub fn file_locks(mut self, yes: bool) -> Self {
        self.file_locks = yes;
        self
    }

    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["restore".into(), "--detach".into()];
        if let Some(p) = &self.bundle {
            a.push("--bundle".into());
            a.push(p.into());
        }
        if let Some(p) = &self.image_path {
            a.push("--image-path".into());
            a.push(p.into());
        }
        if let Some(p) = &self.work_path {
            a.push("--work-path".into());
            a.push(p.into());
        }
        if self.tcp_established {
            a.push("--tcp-established".into());
        }
        if self.file_locks {
            a.push("--file-locks".into());
        }
        a.push(self.id.clone().into());
        a
    }

    /// Restore detached; the container's stdout/stderr are appended to `log`. Returns
    /// once runc has exited (the container keeps running).
    pub async fn run(self, log: &Path) -> Result<(), RuncError> {
        let spawn_err = |source| RuncError::Spawn {
            binary: PathBuf::from("runc"),
            source,
        };
        let (out_r, out_w) = std::io::pipe().map_err(spawn_err)?;
        let (in_r, in_w) = std::io::pipe().map_err(spawn_err)?;
        // The container reads EOF from stdin, like a pod without `stdin: true`.
        drop(in_w);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn_err)?;
        let mut drainer = tokio::process::Command::new("cat");
        drainer
            .stdin(Stdio::from(out_r))
            .stdout(Stdio::from(logf))
            .stderr(Stdio::null())
            .process_group(0);
        let drainer = drainer.spawn().map_err(|source| RuncError::Spawn {
            binary: PathBuf::from("cat"),
            source,
        })?;
        // Reaped by tokio's orphan reaper when it exits; it must not die with the job.
        drop(drainer);

        let mut c = self.runc.command();
        c.args(self.args())
            .stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w.try_clone().map_err(spawn_err)?))
            .stderr(Stdio::from(out_w));
        let criu_options: Vec<String> = if self.tcp_close {
            vec!["tcp-close".to_owned()]
        } else {
            Vec::new()
        };
        super::criu_config::apply(&mut c, self.work_path.as_deref(), &self.id, &criu_options)?;
        tracing::debug!(id = %self.id, cmd = ?c.as_std(), "runc restore");
        let mut child = c.spawn().map_err(spawn_err)?;
        // Drop our copies of the pipe ends (moved into the Command) so only the
        // container holds the write side.
        drop(c);
        let status = child.wait().await.map_err(spawn_err)?;
        if status.success() {
            return Ok(());
        }
        let stderr = tail_of(log, 4096).await;
        Err(RuncError::Failed {
            op: "restore",
            id: self.id,
            status,
            stderr,
        })
    }
}

async fn tail_of(p: &Path, max: usize) -> String {
    // The drainer writes asynchronously: give it a moment to flush runc's last words.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    match tokio::fs::read(p).await {
        Ok(b) => {
            let start = b.len().saturating_sub(max);
            String::from_utf8_lossy(&b[start..]).trim().to_owned()
        }
        Err(e) => format!("(no log: {e})"),
    }
}
