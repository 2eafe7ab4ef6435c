//! Where checkpoints live: `<state_dir>/checkpoints/<id>/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid id {0:?}: use 1-128 characters of [A-Za-z0-9_.-], starting with a letter or digit"
    )]
    InvalidId(String),
    #[error("checkpoint {0} not found")]
    NotFound(String),
    #[error("checkpoint {0} already exists")]
    Exists(String),
    #[error("checkpoint {0} is in use by a running job")]
    InUse(String),
    #[error("checkpoint {0} is still being written by a running job (cancel the job to remove it)")]
    BeingWritten(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Ids become path components: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), StoreError> {
    if ms2m_api::ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.to_owned()))
    }
}

pub use ms2m_api::CheckpointEntry as Listed;

#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    in_use: Arc<Mutex<HashMap<String, usize>>>,
}

/// Marks a checkpoint as used by a job until dropped.
#[derive(Debug)]
pub struct InUse {
    store: CheckpointStore,
    id: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut m = self.store.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

impl CheckpointStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            in_use: Arc::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn partial_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(".{id}.partial"))
    }

    /// An existing checkpoint's directory.
    pub fn existing(&self, id: &str) -> Result<PathBuf, StoreError> {
        validate_id(id)?;
        let p = self.path(id);
        if p.is_dir() {
            Ok(p)
        } else {
            Err(StoreError::NotFound(id.to_owned()))
        }
    }

    /// Check that `id` is valid and free (neither stored nor being written).
    pub fn ensure_new(&self, id: &str) -> Result<(), StoreError> {
        validate_id(id)?;
        if self.path(id).exists() || self.partial_path(id).exists() {
            return Err(StoreError::Exists(id.to_owned()));
        }
        Ok(())
    }

    pub fn acquire(&self, id: &str) -> InUse {
        *self
            .in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default() += 1;
        InUse {
            store: self.clone(),
            id: id.to_owned(),
        }
    }

    pub fn list(&self) -> Vec<Listed> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            out.push(Listed {
                size_bytes: crate::crio_layout::dir_size(&e.path()),
                path: e.path(),
                checkpoint_id: name,
            });
        }
        out.sort_by(|a, b| a.checkpoint_id.cmp(&b.checkpoint_id));
        out
    }

    /// Deletes every checkpoint stored before `now - max_age` that no job uses, and
    /// returns their ids. A checkpoint's age is its directory's birth time (the moment
    /// it was written here; an mtime can be restored from an old archive), or its mtime
    /// where the filesystem has no birth time. Migrations never delete their checkpoints (a completed
    /// one leaves the source's, and in Direct mode the target's copy), so without this
    /// each migration would leave its memory size on the node's disk.
    pub fn expire(&self, max_age: std::time::Duration, now: std::time::SystemTime) -> Vec<String> {
        let mut removed = Vec::new();
        for l in self.list() {
            let old = std::fs::metadata(&l.path)
                .and_then(|m| m.created().or_else(|_| m.modified()))
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > max_age);
            if old && self.delete(&l.checkpoint_id).is_ok() {
                removed.push(l.checkpoint_id);
            }
        }
        removed
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        validate_id(id)?;
        // Leftovers of a killed agent are removed at start (crate::recovery), so a
        // partial dir now belongs to a running job: say so rather than "not found",
        // since creating the id answers "exists".
        if !self.path(id).is_dir() && self.partial_path(id).exists() {
            return Err(StoreError::BeingWritten(id.to_owned()));
        }
        let p = self.existing(id)?;
        if self
            .in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
        {
            return Err(StoreError::InUse(id.to_owned()));
        }
        std::fs::remove_dir_all(&p).map_err(|e| StoreError::Io(p, e))
    }
}

/// Dirs 0700 and files 0600 below (and including) `root`, never following a symlink:
/// a checkpoint is the process's memory, secrets included.
pub fn make_private(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_safe() {
        for ok in ["c1", "counter-1.ckpt_2", "A"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", &"a".repeat(129), "a b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiry_takes_old_unused_checkpoints_only() {
        use std::time::{Duration, SystemTime};
        let t = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(t.path());
        let write = |id: &str| {
            std::fs::create_dir(t.path().join(id)).unwrap();
            std::fs::write(t.path().join(id).join("pages-1.img"), b"x").unwrap();
        };
        write("old");
        write("old-in-use");
        // Birth times cannot be set: age the first two by waiting.
        std::thread::sleep(Duration::from_millis(1100));
        write("new");
        let _job = store.acquire("old-in-use");
        let removed = store.expire(Duration::from_millis(500), SystemTime::now());
        assert_eq!(removed, vec!["old".to_string()]);
        let left: Vec<_> = store.list().into_iter().map(|l| l.checkpoint_id).collect();
        assert_eq!(left, vec!["new".to_string(), "old-in-use".to_string()]);
    }

    #[test]
    fn in_use_blocks_delete() {
        let t = tempfile::tempdir().unwrap();
        let s = CheckpointStore::new(t.path());
        std::fs::create_dir(t.path().join("c1")).unwrap();
        let g = s.acquire("c1");
        assert!(matches!(s.delete("c1"), Err(StoreError::InUse(_))));
        drop(g);
        s.delete("c1").unwrap();
        assert!(matches!(s.delete("c1"), Err(StoreError::NotFound(_))));
    }
}
