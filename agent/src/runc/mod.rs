//! Typed wrapper around the runc CLI: one builder per operation (`checkpoint.rs`,
//! `restore.rs`); the short ones (state, pause, resume, kill, delete) live here.
//!
//! CRIU options that runc has no flag for (`tcp-close`, `network-lock`) travel in a CRIU
//! configuration file named by the `CRIU_CONFIG_FILE` environment variable of the runc
//! process: runc execs `criu swrk` with its own environment and CRIU reads that file in
//! RPC mode too. runc's per-container way (the `org.criu.config` annotation) is fixed
//! when the container is created, so it cannot carry a per-checkpoint choice; a
//! container's own annotation file is still read after ours, so an operator's explicit
//! settings win.
//!
//! runc is driven as a CLI rather than linked (libcontainer) because that is what
//! Kubernetes runtimes do too, and it keeps the agent's process free of Go. Every child
//! is spawned with `kill_on_drop` so that cancelling a job stops the tool.

mod checkpoint;
mod criu_config;
mod restore;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::Command;

pub use checkpoint::{CheckpointCmd, NetworkLock};
pub use restore::RestoreCmd;

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("runc {op} {id} failed ({status}): {stderr}")]
    Failed {
        op: &'static str,
        id: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("runc state {id}: unreadable answer: {source}")]
    State {
        id: String,
        source: serde_json::Error,
    },
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("writing the CRIU configuration {path}: {source}")]
    CriuConfig {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `runc state` output (the fields the agent uses).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ContainerState {
    pub id: String,
    pub pid: i64,
    pub status: String,
    pub bundle: PathBuf,
    #[serde(default)]
    pub rootfs: PathBuf,
    #[serde(default)]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: Option<PathBuf>,
    criu: Option<PathBuf>,
}

impl Runc {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            root: None,
            criu: None,
        }
    }

    /// `runc --root`.
    pub fn root(mut self, root: Option<PathBuf>) -> Self {
        self.root = root;
        self
    }

    /// `runc --criu`: the CRIU binary runc execs for checkpoint and restore.
    pub fn criu(mut self, criu: impl Into<PathBuf>) -> Self {
        self.criu = Some(criu.into());
        self
    }

    pub fn criu_path(&self) -> Option<&Path> {
        self.criu.as_deref()
    }

    pub(crate) fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        if let Some(r) = &self.root {
            c.arg("--root").arg(r);
        }
        if let Some(criu) = &self.criu {
            c.arg("--criu").arg(criu);
        }
        c.kill_on_drop(true).stdin(Stdio::null());
        c
    }

    pub(crate) async fn run(
        &self,
        op: &'static str,
        id: &str,
        mut cmd: Command,
    ) -> Result<std::process::Output, RuncError> {
        tracing::debug!(op, id, cmd = ?cmd.as_std(), "runc");
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(out);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.contains("does not exist") || stderr.contains("container not found") {
            return Err(RuncError::NotFound(id.to_owned()));
        }
        Err(RuncError::Failed {
            op,
            id: id.to_owned(),
            status: out.status,
            stderr,
        })
    }

    /// `runc state <id>`; `Ok(None)` when the container does not exist.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuncError> {
        let mut c = self.command();
        c.arg("state").arg(id);
        match self.run("state", id, c).await {
            Ok(out) => serde_json::from_slice(&out.stdout)
                .map(Some)
                .map_err(|source| RuncError::State {
                    id: id.to_owned(),
                    source,
                }),
            Err(RuncError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn pause(&self, id: &str) -> Result<(), RuncError> {
        let mut c = self.command();
        c.arg("pause").arg(id);
        self.run("pause", id, c).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<(), RuncError> {
        let mut c = self.command();
        c.arg("resume").arg(id);
        self.run("resume", id, c).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), RuncError> {
        let mut c = self.command();
        c.arg("kill").arg(id).arg(signal);
        self.run("kill", id, c).await.map(drop)
    }

    /// `runc delete [--force] <id>`.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let mut c = self.command();
        c.arg("delete");
        if force {
            c.arg("--force");
        }
        c.arg(id);
        self.run("delete", id, c).await.map(drop)
    }

    pub fn checkpoint(&self, id: &str) -> CheckpointCmd {
        CheckpointCmd::new(self.clone(), id)
    }

    pub fn restore(&self, id: &str) -> RestoreCmd {
        RestoreCmd::new(self.clone(), id)
    }
}
