//! Where checkpoints live: `<state_dir>/checkpoints/<id>/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

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
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Ids become path components: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.to_owned()))
    }
}

#[derive(Debug, Serialize)]
pub struct Listed {
    pub checkpoint_id: String,
    pub path: PathBuf,
    pub size_bytes: u64,
}

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

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
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
