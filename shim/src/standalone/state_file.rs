//! The state file: what identifies a standalone migration and the engine's progress,
//! replaced atomically so a restarted driver resumes where the last one stopped.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{MigrateError, Settings};
use crate::engine::Progress;

/// The state file's content: what identifies the migration, and the engine's progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    pub version: u32,
    pub container: String,
    pub target_container: String,
    pub control_name: String,
    /// The checkpoint id names the agents' checkpoint and job results, so a resumed run
    /// must use the recorded one (the default id contains the start time).
    pub checkpoint_id: String,
    pub progress: Progress,
}

pub(super) const STATE_VERSION: u32 = 1;

impl StateFile {
    /// Reads a state file; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<StateFile>, MigrateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(MigrateError::StateIo {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| MigrateError::StateFormat {
                path: path.to_owned(),
                source,
            })
    }

    /// Replaces the file atomically: a reader (or a restarted driver) sees the old or the
    /// new content, never a torn one, also across a power loss.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)?;
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(".tmp");
        let tmp = dir.join(name);
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is.
        std::fs::File::open(&dir)?.sync_all()
    }

    /// Checks that the file describes the migration the command line asks for.
    pub(super) fn check(&self, path: &Path, s: &Settings) -> Result<(), MigrateError> {
        let recorded = format!("{} -> {}", self.container, self.target_container);
        let asked = format!("{} -> {}", s.container, s.target_container);
        if recorded != asked || self.version != STATE_VERSION {
            return Err(MigrateError::StateMismatch {
                path: path.to_owned(),
                recorded: format!("{recorded} (version {})", self.version),
                asked,
            });
        }
        Ok(())
    }
}
