//! What a killed agent leaves behind, and how the next start repairs it.
//!
//! - A leave-running checkpoint pauses the container (freezer cgroup) before CRIU runs
//!   and resumes it after the rootfs diff. Killed in between, nothing resumes it: the
//!   service stays frozen. So the intent is recorded first, as a marker file per
//!   in-flight pause (`<state>/work/paused/<hex id>`, written and synced before
//!   `runc pause`, removed after `runc resume`), and on start every container that still
//!   has a marker and is still `paused` is resumed. A marker whose container is running
//!   or gone is just removed. A container paused by someone else has no marker and is
//!   left alone.
//! - `runc checkpoint` (and the CRIU it runs) outlive a SIGKILLed agent. Before
//!   resuming or removing anything, the start waits for such leftovers (`runc`/`criu`
//!   processes whose command line names the checkpoints dir) to end, then kills what is
//!   left after [`ORPHAN_WAIT`]: resuming a container while CRIU still dumps it, or
//!   deleting the directory CRIU writes into, would race with it.
//! - `.<id>.partial` checkpoint dirs and `.<name>.ms2m-staging-*` unpack dirs of jobs
//!   that never finished are removed (no job runs yet at start, so none is in use).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::runc::Runc;

/// How long the start waits for a previous agent's `runc checkpoint`/CRIU to end.
pub const ORPHAN_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    container_id: String,
}

/// Where pause markers live.
pub fn markers_dir(config: &Config) -> PathBuf {
    config.work_dir().join("paused")
}

/// The recorded intent to pause one container; removed by [`PauseMarker::clear`].
#[derive(Debug)]
pub struct PauseMarker {
    path: PathBuf,
}

impl PauseMarker {
    /// Writes and syncs the marker (and its directory) before the container is paused.
    pub fn record(dir: &Path, container_id: &str) -> std::io::Result<PauseMarker> {
        use std::io::Write as _;
        std::fs::create_dir_all(dir)?;
        // Hex: a container id never becomes a path component as written.
        let path = dir.join(hex::encode(container_id));
        let body = serde_json::to_vec(&Intent {
            container_id: container_id.to_owned(),
        })
        .map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(PauseMarker { path })
    }

    /// The container was resumed (or never paused): forget the intent.
    pub fn clear(self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove pause marker");
        }
    }
}

/// What [`recover`] did, for the log and for tests.
#[derive(Debug, Default, Serialize)]
pub struct Recovered {
    pub resumed: Vec<String>,
    pub removed: Vec<PathBuf>,
    pub orphans_killed: Vec<i32>,
}

/// Pids of `runc`/`criu` processes whose command line mentions `dir` (only those: a
/// shell that happens to be in the directory is none of our business).
fn processes_naming(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| matches!(c.trim(), "runc" | "criu"))
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Repairs what an interrupted agent left: see the module docs. Runs before the
/// listeners accept anything.
pub async fn recover(config: &Config, runc: &Runc) -> Recovered {
    let mut out = Recovered::default();
    let ck_dir = config.checkpoints_dir();

    let deadline = Instant::now() + ORPHAN_WAIT;
    loop {
        let left = processes_naming(&ck_dir);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for pid in left {
                tracing::warn!(
                    pid,
                    "killing a previous agent's leftover checkpoint process"
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                out.orphans_killed.push(pid);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            break;
        }
        tracing::info!(pids = ?left, "waiting for a previous agent's checkpoint processes to end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dir = markers_dir(config);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let path = e.path();
            let intent = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Intent>(&b).ok());
            if let Some(Intent { container_id: id }) = intent {
                match runc.state(&id).await {
                    Ok(Some(s)) if s.status == "paused" => match runc.resume(&id).await {
                        Ok(()) => {
                            tracing::warn!(container = %id, "resumed a container an interrupted checkpoint left paused");
                            out.resumed.push(id);
                        }
                        Err(e) => {
                            // Keep the marker: the next start tries again.
                            tracing::error!(container = %id, error = %e, "cannot resume a container left paused");
                            continue;
                        }
                    },
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(container = %id, error = %e, "runc state failed; keeping its pause marker");
                        continue;
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    if let Ok(rd) = std::fs::read_dir(&ck_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let leftover = name.starts_with('.')
                && (name.ends_with(".partial") || name.contains(".ms2m-staging-"));
            if !leftover {
                continue;
            }
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match r {
                Ok(()) => out.removed.push(p),
                Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot remove leftover"),
            }
        }
    }
    if !out.removed.is_empty() {
        tracing::info!(removed = ?out.removed, "removed leftovers of interrupted jobs");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_hex_named_and_cleared() {
        let t = tempfile::tempdir().unwrap();
        let m = PauseMarker::record(t.path(), "../../etc/x").unwrap();
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![hex::encode("../../etc/x")]);
        m.clear();
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
