//! Checkpoint backends behind one trait, and the store they write into.
//!
//! Every backend produces a directory in the CRI-O archive layout
//! (see [`crate::crio_layout`]) under `<state_dir>/checkpoints/<id>/`. The work happens
//! in `.<id>.partial` and is renamed into place at the end, so a listing never shows a
//! half-written checkpoint and a failed or cancelled job leaves nothing.

pub mod kubelet;
pub mod runc;
mod store;

use ms2m_api::ErrorCode;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use store::{CheckpointStore, InUse, StoreError, validate_id};

use crate::jobs::{JobCtx, JobFailure};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error(transparent)]
    Runc(#[from] crate::runc::RuncError),
    #[error("CRIU: {0}")]
    Criu(String),
    #[error("kubelet: {0}")]
    Kubelet(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Diff(#[from] crate::rootfs_diff::DiffError),
    #[error("invalid checkpoint archive: {0}")]
    InvalidArchive(String),
}

impl BackendError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let context = context.into();
        move |source| BackendError::Io { context, source }
    }

    /// The job error code (see docs/agent-api.md).
    pub fn code(&self) -> ErrorCode {
        use crate::runc::RuncError;
        match self {
            BackendError::ContainerNotFound(_) => ErrorCode::ContainerNotFound,
            BackendError::Runc(RuncError::NotFound(_)) => ErrorCode::ContainerNotFound,
            // runc's checkpoint and restore are CRIU runs: their failures are CRIU's.
            BackendError::Runc(RuncError::Failed {
                op: "checkpoint" | "restore",
                ..
            }) => ErrorCode::CriuFailed,
            BackendError::Runc(_) => ErrorCode::RuncFailed,
            BackendError::Criu(_) => ErrorCode::CriuFailed,
            BackendError::Kubelet(_) => ErrorCode::KubeletError,
            BackendError::Io { .. } => ErrorCode::Io,
            BackendError::Diff(_) | BackendError::InvalidArchive(_) => ErrorCode::InvalidArchive,
        }
    }
}

impl From<BackendError> for JobFailure {
    fn from(e: BackendError) -> Self {
        JobFailure::new(e.code(), e.to_string())
    }
}

/// What a backend reports besides the files it wrote.
#[derive(Debug, Clone, Default)]
pub struct CheckpointInfo {
    pub criu_version: Option<String>,
    /// How long the container was frozen (pause → resume) when it kept running.
    pub frozen_ms: Option<u64>,
}

/// A way to checkpoint one container into a directory in the CRI-O archive layout.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;

    /// Write the checkpoint into `dest` (an empty, existing directory).
    fn checkpoint(
        &self,
        ctx: &JobCtx,
        dest: &Path,
    ) -> impl Future<Output = Result<CheckpointInfo, BackendError>> + Send;
}

/// Run `backend` as the body of a checkpoint job, storing the result as `id`.
pub async fn run_job<B: Backend>(
    backend: B,
    store: CheckpointStore,
    id: String,
    ctx: JobCtx,
) -> Result<ms2m_api::CheckpointResult, JobFailure> {
    let partial = store.partial_path(&id);
    let final_path = store.path(&id);
    ctx.clean_on_failure(&partial);
    tokio::fs::create_dir_all(&partial).await.map_err(|e| {
        JobFailure::new(
            ErrorCode::Io,
            format!("creating {}: {e}", partial.display()),
        )
    })?;
    let started = Instant::now();
    let info = backend.checkpoint(&ctx, &partial).await?;
    let dump_ms = started.elapsed().as_millis() as u64;
    // Whatever umask CRIU, runc or the kubelet wrote with: memory and environment are
    // in there, readable by root only.
    let p = partial.clone();
    tokio::task::spawn_blocking(move || store::make_private(&p))
        .await
        .map_err(|e| JobFailure::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| JobFailure::new(ErrorCode::Io, e.to_string()))?;
    tokio::fs::rename(&partial, &final_path)
        .await
        .map_err(|e| {
            JobFailure::new(
                ErrorCode::Io,
                format!("moving the checkpoint to {}: {e}", final_path.display()),
            )
        })?;
    ctx.output(&final_path);
    let p: PathBuf = final_path.clone();
    let size = tokio::task::spawn_blocking(move || crate::crio_layout::dir_size(&p))
        .await
        .unwrap_or(0);
    Ok(ms2m_api::CheckpointResult {
        checkpoint_id: id,
        path: final_path,
        size_bytes: size,
        backend: backend.name().to_owned(),
        criu_version: info.criu_version,
        dump_ms,
        frozen_ms: info.frozen_ms,
    })
}
