//! runc + CRIU backend (standalone nodes, no kubelet).
//!
//! With `leave_running`, the container is paused (freezer cgroup) before the dump and
//! resumed after the rootfs diff is taken, so memory and filesystem are captured at the
//! same instant: CRIU keeps an already frozen cgroup frozen after `--leave-running`.
//! The pause is released on every path out, including cancellation (drop guard).
//!
//! The pristine image rootfs the diff is taken against comes from the request
//! (`rootfs_image`) or from the bundle annotation `org.ms2m.rootfs-image`; without one,
//! no diff is recorded and a restore must name a rootfs that already has the
//! container's files.

use std::path::{Path, PathBuf};

use super::{Backend, BackendError, CheckpointInfo};
use crate::crio_layout::{self as layout, ContainerConfig};
use crate::jobs::JobCtx;
use crate::runc::{NetworkLock, Runc};

pub const ROOTFS_IMAGE_ANNOTATION: &str = "org.ms2m.rootfs-image";

#[derive(Debug, Clone)]
pub struct RuncBackend {
    pub runc: Runc,
    pub criu: PathBuf,
    pub container_id: String,
    pub leave_running: bool,
    pub tcp_established: bool,
    /// CRIU `tcp-close`: connections are not dumped (stop-and-copy to a new pod IP).
    pub tcp_close: bool,
    /// `Skip` for a stop-and-copy with `tcp_close`: CRIU's lock rules would outlive the
    /// killed task in its network namespace, and the broker would never see the
    /// connection close (an unacked message stays held until the heartbeat timeout).
    pub network_lock: Option<NetworkLock>,
    pub rootfs_image: Option<PathBuf>,
    /// Where the intent to pause is recorded (see `crate::recovery`).
    pub pause_markers: PathBuf,
}

/// Resumes a paused container when dropped (cancellation included), then clears the
/// pause marker. A SIGKILL skips this: the marker is what the next start repairs from.
struct Unpause {
    runc: Runc,
    id: String,
    armed: bool,
    marker: Option<crate::recovery::PauseMarker>,
}

impl Drop for Unpause {
    fn drop(&mut self) {
        if self.armed {
            let mut c = self.runc.command().into_std();
            c.arg("resume").arg(&self.id);
            // Blocking for the few ms runc takes; leaving a container frozen would be worse.
            match c.output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    tracing::error!(container = %self.id, stderr = %String::from_utf8_lossy(&o.stderr), "could not resume container");
                    // Keep the marker: the next start resumes it.
                    return;
                }
                Err(e) => {
                    tracing::error!(container = %self.id, error = %e, "could not resume container");
                    return;
                }
            }
        }
        if let Some(m) = self.marker.take() {
            m.clear();
        }
    }
}

impl Backend for RuncBackend {
    fn name(&self) -> &'static str {
        "runc"
    }

    async fn checkpoint(&self, ctx: &JobCtx, dest: &Path) -> Result<CheckpointInfo, BackendError> {
        let id = &self.container_id;
        let state = self
            .runc
            .state(id)
            .await?
            .ok_or_else(|| BackendError::ContainerNotFound(id.clone()))?;
        let criu_version = crate::criu_check::criu_version(&self.criu)
            .await
            .map_err(|e| BackendError::Criu(e.to_string()))?
            .to_string();
        let spec = state.bundle.join("config.json");
        tokio::fs::copy(&spec, dest.join(layout::SPEC_DUMP))
            .await
            .map_err(BackendError::io(format!("copying {}", spec.display())))?;
        let rootfs_image = self.rootfs_image.clone().or_else(|| {
            state
                .annotations
                .as_ref()
                .and_then(|a| a.get(ROOTFS_IMAGE_ANNOTATION))
                .map(PathBuf::from)
        });
        let rootfs = if state.rootfs.as_os_str().is_empty() {
            state.bundle.join("rootfs")
        } else {
            state.rootfs.clone()
        };

        ctx.set_phase("dumping");
        let mut guard = Unpause {
            runc: self.runc.clone(),
            id: id.clone(),
            armed: false,
            marker: None,
        };
        let mut frozen_at = None;
        if self.leave_running && state.status == "running" {
            // Recorded before pausing, so no kill can leave it paused unrecorded.
            guard.marker = Some(
                crate::recovery::PauseMarker::record(&self.pause_markers, id)
                    .map_err(BackendError::io("recording the pause intent".to_string()))?,
            );
            self.runc.pause(id).await?;
            frozen_at = Some(std::time::Instant::now());
            guard.armed = true;
        }
        self.runc
            .checkpoint(id)
            .image_path(dest.join(layout::CHECKPOINT_DIR))
            .work_path(dest)
            .leave_running(self.leave_running)
            .tcp_established(self.tcp_established)
            .tcp_close(self.tcp_close)
            .network_lock(self.network_lock)
            .run()
            .await
            .map_err(|e| match e {
                crate::runc::RuncError::Failed { stderr, .. } => {
                    let log = std::fs::read_to_string(dest.join(layout::DUMP_LOG))
                        .map(|l| {
                            l.lines()
                                .filter(|x| x.contains("Error"))
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default();
                    BackendError::Criu(format!("runc checkpoint failed: {stderr}\n{log}"))
                }
                other => BackendError::Runc(other),
            })?;

        ctx.set_phase("archiving");
        if let Some(image) = rootfs_image.clone() {
            let (d, r) = (dest.to_owned(), rootfs.clone());
            let summary = tokio::task::spawn_blocking(move || {
                crate::rootfs_diff::write_diff(
                    &image,
                    &r,
                    &d.join(layout::ROOTFS_DIFF),
                    &d.join(layout::DELETED_FILES),
                )
            })
            .await
            .map_err(|e| BackendError::Io {
                context: "rootfs diff".into(),
                source: std::io::Error::other(e),
            })??;
            tracing::debug!(
                changed = summary.changed.len(),
                deleted = summary.deleted.len(),
                "rootfs diff"
            );
        }
        if guard.armed {
            guard.armed = false;
            self.runc.resume(id).await?;
        }
        if let Some(m) = guard.marker.take() {
            m.clear();
        }
        let frozen_ms = frozen_at.map(|t| t.elapsed().as_millis() as u64);
        let config = ContainerConfig {
            id: id.clone(),
            name: state
                .annotations
                .as_ref()
                .and_then(|a| a.get("io.kubernetes.container.name"))
                .cloned()
                .unwrap_or_else(|| id.clone()),
            rootfs_image: rootfs_image.map(|p| p.display().to_string()),
            rootfs_image_ref: None,
            rootfs_image_name: None,
            oci_runtime: Some("runc".into()),
            created_time: None,
            checkpointed_time: Some(layout::now_rfc3339()),
            criu_version: Some(criu_version.clone()),
        };
        let body = serde_json::to_vec_pretty(&config).unwrap_or_default();
        tokio::fs::write(dest.join(layout::CONFIG_DUMP), body)
            .await
            .map_err(BackendError::io("writing config.dump"))?;
        let d = dest.to_owned();
        let size = tokio::task::spawn_blocking(move || layout::dir_size(&d))
            .await
            .unwrap_or(0);
        ctx.set_bytes_total(Some(size));
        ctx.add_bytes(size);
        Ok(CheckpointInfo {
            criu_version: Some(criu_version),
            frozen_ms,
        })
    }
}
