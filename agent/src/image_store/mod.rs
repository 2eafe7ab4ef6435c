//! Importing a checkpoint into the node's image store, where a Kubernetes runtime can
//! restore it from: containers-storage (CRI-O) or containerd.
//!
//! The checkpoint archive is written as an OCI image layout (the image-format crate's
//! `write_oci_layout`, so the image carries exactly the annotations a push gives it) in a
//! temp directory, which the runtime's own tool then copies into the store: `skopeo copy`
//! for containers-storage (`containers_storage.rs`), `ctr images import` for containerd
//! (`containerd.rs`). The tools are driven as CLIs rather than linked: there is no Rust
//! client for containers-storage, containerd's API is gRPC (a protobuf/tonic stack for
//! one call), and skopeo and ctr ship with the runtimes' own packages, so they match the
//! store's on-disk format and locking by construction.
//!
//! The layout is uncompressed: both stores decompress a layer to unpack it, so
//! compressing it here would only spend a core on work that is undone a moment later.
//!
//! The temp layout directory is shared (`Arc<TempDir>`) between the caller's future
//! and the blocking threads that write or stream it, so it is removed by whichever
//! finishes last: on success, on failure, and when the import is cancelled (the tool is
//! killed at once; a layout still being written is finished, then removed). A crash
//! leaves `ms2m-import-*` in the work directory, which [`remove_stale_layouts`] sweeps
//! at the agent's start.

mod containerd;
mod containers_storage;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use ms2m_image_format::{Compression, EncodeOptions, ImageOptions, write_oci_layout};
use tokio::process::Command;

pub use containerd::{Containerd, Ctr, CtrImport};
pub use containers_storage::{ContainersStorage, Skopeo, SkopeoCopy, validate_storage_spec};

pub use ms2m_api::{ErrorCode, Imported, Removed, StoreKind};

use crate::registry::Reference;

/// Prefix of the temp layout directories in the work directory.
const LAYOUT_PREFIX: &str = "ms2m-import-";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {0}")]
    Reference(String),
    #[error(
        "invalid containers-storage spec {0:?}: expected empty (the system's default) or \
         `[driver@graphroot+runroot]`, e.g. `[overlay@/var/lib/containers/storage+/run/containers/storage]`"
    )]
    StorageSpec(String),
    /// The checkpoint archive could not be opened (missing, hostile, not a checkpoint).
    #[error("opening the checkpoint archive: {0}")]
    Archive(#[source] crate::transfer::Error),
    #[error("building the OCI layout: {0}")]
    Layout(#[source] ms2m_image_format::Error),
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} {op} failed ({status}): {stderr}")]
    Failed {
        tool: &'static str,
        op: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The job error code (docs/agent-api.md).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Reference(_) => ErrorCode::InvalidRequest,
            // The agent's configuration, not the request.
            Error::StorageSpec(_) => ErrorCode::Internal,
            Error::Archive(_) | Error::Layout(_) => ErrorCode::InvalidArchive,
            Error::Spawn { .. } | Error::Failed { .. } => ErrorCode::ImageStoreError,
            Error::Io { .. } => ErrorCode::Io,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// A reference the stores accept: a docker reference with a tag (the image's digest is
/// decided by its content, so a reference naming one cannot be honoured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `registry/repository`, normalized (`docker.io/library/` for Hub short names).
    pub name: String,
    pub tag: String,
}

impl ImageRef {
    /// Parsed with the agent's registry reference parser, so the names are the ones a
    /// push would use.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let r = Reference::parse(input).map_err(|e| match e {
            crate::registry::Error::Reference(m) => Error::Reference(m),
            other => Error::Reference(format!("{input:?}: {other}")),
        })?;
        if r.digest.is_some() {
            return Err(Error::Reference(format!(
                "{input:?}: name the image with a tag, not a digest (the digest follows from the content)"
            )));
        }
        Ok(Self {
            name: format!("{}/{}", r.registry, r.repository),
            tag: r.tag.unwrap_or_else(|| "latest".into()),
        })
    }
}

/// A reference to remove: any docker reference (a digest is fine here), normalized as
/// the stores record names.
pub fn removal_reference(input: &str) -> Result<String, Error> {
    Reference::parse(input)
        .map(|r| r.to_string())
        .map_err(|e| match e {
            crate::registry::Error::Reference(m) => Error::Reference(m),
            other => Error::Reference(format!("{input:?}: {other}")),
        })
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

#[derive(Debug, Clone)]
pub enum Backend {
    ContainersStorage(ContainersStorage),
    Containerd(Containerd),
}

/// A node's image store and where import layouts are staged.
#[derive(Debug, Clone)]
pub struct ImageStore {
    backend: Backend,
    work_dir: PathBuf,
}

impl ImageStore {
    pub fn new(backend: Backend, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            backend,
            work_dir: work_dir.into(),
        }
    }

    /// The store the agent's configuration names, staging in `<state_dir>/work`.
    pub fn from_config(c: &crate::config::Config) -> Self {
        let backend = match c.image_store {
            StoreKind::ContainersStorage => Backend::ContainersStorage(ContainersStorage::new(
                Skopeo::new(&c.skopeo_path),
                c.containers_storage.clone(),
            )),
            StoreKind::Containerd => Backend::Containerd(Containerd::new(Ctr::new(
                &c.ctr_path,
                &c.containerd_address,
                &c.containerd_namespace,
            ))),
        };
        Self::new(backend, c.work_dir())
    }

    pub fn kind(&self) -> StoreKind {
        match self.backend {
            Backend::ContainersStorage(_) => StoreKind::ContainersStorage,
            Backend::Containerd(_) => StoreKind::Containerd,
        }
    }

    /// Imports the checkpoint archive (directory or tar) at `archive_path` as image
    /// `reference`. An image already stored under that name loses the name to the new
    /// one.
    pub async fn import(&self, archive_path: &Path, reference: &str) -> Result<Imported, Error> {
        let started = Instant::now();
        let image = ImageRef::parse(reference)?;
        if let Backend::ContainersStorage(cs) = &self.backend {
            validate_storage_spec(cs.storage())?;
        }
        let archive = crate::transfer::push::open_archive(archive_path)
            .await
            .map_err(Error::Archive)?;
        let layout = Arc::new(
            tempfile::Builder::new()
                .prefix(LAYOUT_PREFIX)
                .tempdir_in(&self.work_dir)
                .map_err(Error::io(format!(
                    "creating a layout directory in {}",
                    self.work_dir.display()
                )))?,
        );
        let (dir, tag) = (layout.clone(), image.tag.clone());
        let built = tokio::task::spawn_blocking(move || {
            let opts = EncodeOptions {
                layers: crate::transfer::push::default_layers(),
                compression: Compression::None,
                image: ImageOptions {
                    tag: Some(tag),
                    ..ImageOptions::default()
                },
                split: false,
            };
            write_oci_layout(&archive, dir.path(), &opts)
        })
        .await
        .map_err(|e| Error::Internal(format!("layout thread: {e}")))?
        .map_err(Error::Layout)?;
        let layout_ms = started.elapsed().as_millis() as u64;
        match &self.backend {
            Backend::ContainersStorage(cs) => cs.import(&layout, &image).await?,
            Backend::Containerd(c) => c.import(&layout, &image).await?,
        }
        let imported = Imported {
            reference: image.to_string(),
            store: self.kind(),
            image_id: built.config.digest(),
            manifest_digest: built.manifest.digest(),
        };
        tracing::info!(
            archive = %archive_path.display(), reference = %imported.reference,
            store = %imported.store, image_id = %imported.image_id, layout_ms,
            ms = started.elapsed().as_millis() as u64, "checkpoint imported"
        );
        Ok(imported)
    }

    /// Removes image `reference` from the store; an absent image is not an error.
    pub async fn remove(&self, reference: &str) -> Result<Removed, Error> {
        let image = removal_reference(reference)?;
        let removed = match &self.backend {
            Backend::ContainersStorage(cs) => {
                validate_storage_spec(cs.storage())?;
                cs.remove(&image).await?
            }
            Backend::Containerd(c) => c.remove(&image).await?,
        };
        tracing::info!(reference = %image, store = %self.kind(), removed, "image removal");
        Ok(Removed {
            reference: image,
            store: self.kind(),
            removed,
        })
    }
}

/// Removes layout directories an earlier run left behind (a crash mid-import).
pub fn remove_stale_layouts(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(LAYOUT_PREFIX) {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => {
                    tracing::info!(path = %e.path().display(), "removed a stale import layout")
                }
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a stale import layout")
                }
            }
        }
    }
}

/// Runs a tool to completion, its output captured; a non-zero exit is an error carrying
/// its stderr. The child is killed if the future is dropped (`kill_on_drop`).
async fn run_tool(
    tool: &'static str,
    binary: &Path,
    op: &'static str,
    mut cmd: Command,
) -> Result<std::process::Output, Error> {
    tracing::debug!(tool, op, cmd = ?cmd.as_std(), "image store tool");
    let out = cmd
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| Error::Spawn {
            tool: binary.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Failed {
            tool,
            op,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_and_need_a_tag() {
        let r = ImageRef::parse("localhost/ms2m/counter:ckpt-1").unwrap();
        assert_eq!(r.name, "localhost/ms2m/counter");
        assert_eq!(r.tag, "ckpt-1");
        assert_eq!(
            ImageRef::parse("counter").unwrap().to_string(),
            "docker.io/library/counter:latest"
        );
        assert_eq!(
            ImageRef::parse("registry.local:5000/a/b:c")
                .unwrap()
                .to_string(),
            "registry.local:5000/a/b:c"
        );
        for bad in [
            "",
            "Upper/Case:x",
            "localhost/a:bad tag",
            "localhost/a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost/a:t@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost//a:t",
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert!(matches!(e, Error::Reference(_)), "{bad}: {e}");
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
        }
        // Removal takes any reference, digests included.
        assert_eq!(
            removal_reference("localhost/a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").unwrap(),
            "localhost/a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            removal_reference("counter").unwrap(),
            "docker.io/library/counter:latest"
        );
        assert!(removal_reference("Bad Ref").is_err());
    }

    #[test]
    fn stale_layouts_are_swept_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ms2m-import-abc/blobs")).unwrap();
        std::fs::create_dir_all(d.path().join("restore-x")).unwrap();
        remove_stale_layouts(d.path());
        assert!(!d.path().join("ms2m-import-abc").exists());
        assert!(d.path().join("restore-x").exists());
    }
}
