//! containers-storage (CRI-O's store) through skopeo:
//! `skopeo copy oci:<layout>:<tag> containers-storage:<spec><reference>` and
//! `skopeo delete containers-storage:<spec><reference>`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tokio::process::Command;

use super::{Error, ImageRef, run_tool};

/// Ok for an empty spec (the system's store, which CRI-O uses) or
/// `[driver@graphroot+runroot]` (options may follow the runroot after `:`).
pub fn validate_storage_spec(spec: &str) -> Result<(), Error> {
    let ok = spec.is_empty()
        || spec
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .is_some_and(|inner| !inner.is_empty() && !inner.contains(['[', ']']));
    if ok {
        Ok(())
    } else {
        Err(Error::StorageSpec(spec.to_owned()))
    }
}

/// The skopeo CLI.
#[derive(Debug, Clone)]
pub struct Skopeo {
    binary: PathBuf,
}

impl Skopeo {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// `skopeo copy <src> <dest>`.
    pub fn copy(&self, src: impl Into<OsString>, dest: impl Into<OsString>) -> SkopeoCopy {
        SkopeoCopy {
            skopeo: self.clone(),
            src: src.into(),
            dest: dest.into(),
        }
    }

    /// `skopeo delete <target>`: the arguments.
    pub fn delete_args(&self, target: impl Into<OsString>) -> Vec<OsString> {
        // The policy guards what is *pulled*; deleting from a local store is not a pull.
        // `--`: the target is never read as an option, whatever it holds.
        vec![
            "--insecure-policy".into(),
            "delete".into(),
            "--".into(),
            target.into(),
        ]
    }

    /// `skopeo delete <target>`.
    pub async fn delete(&self, target: &str) -> Result<(), Error> {
        let mut c = Command::new(&self.binary);
        c.args(self.delete_args(target));
        run_tool("skopeo", &self.binary, "delete", c)
            .await
            .map(drop)
    }
}

#[derive(Debug, Clone)]
pub struct SkopeoCopy {
    skopeo: Skopeo,
    src: OsString,
    dest: OsString,
}

impl SkopeoCopy {
    pub fn args(&self) -> Vec<OsString> {
        vec![
            // The source is a layout this agent just wrote from a verified archive: a
            // signature policy has nothing to judge, and nodes whose agent image lacks
            // /etc/containers/policy.json would fail for no reason.
            "--insecure-policy".into(),
            "copy".into(),
            "--quiet".into(),
            "--".into(),
            self.src.clone(),
            self.dest.clone(),
        ]
    }

    pub async fn run(self) -> Result<(), Error> {
        let mut c = Command::new(self.skopeo.binary());
        c.args(self.args());
        run_tool("skopeo", self.skopeo.binary(), "copy", c)
            .await
            .map(drop)
    }
}

/// containers-storage at `storage` (a `[driver@root+runroot]` spec, empty for the
/// system's default).
#[derive(Debug, Clone)]
pub struct ContainersStorage {
    skopeo: Skopeo,
    storage: String,
}

impl ContainersStorage {
    pub fn new(skopeo: Skopeo, storage: impl Into<String>) -> Self {
        Self {
            skopeo,
            storage: storage.into(),
        }
    }

    pub fn storage(&self) -> &str {
        &self.storage
    }

    /// The skopeo transport reference of `image` in this store.
    pub fn transport_ref(&self, image: &(impl std::fmt::Display + ?Sized)) -> String {
        format!("containers-storage:{}{image}", self.storage)
    }

    pub(super) async fn import(&self, layout: &TempDir, image: &ImageRef) -> Result<(), Error> {
        let dir = layout.path().to_string_lossy();
        // skopeo's `oci:` transport splits its argument at the first ':'.
        if dir.contains(':') {
            return Err(Error::Internal(format!(
                "layout directory {dir} contains ':', which skopeo's oci: transport cannot name"
            )));
        }
        self.skopeo
            .copy(
                format!("oci:{dir}:{}", image.tag),
                self.transport_ref(image),
            )
            .run()
            .await
    }

    /// Ok(false) when the store has no such image. The image goes with all its names:
    /// c/image deletes images, not tags.
    pub(super) async fn remove(&self, image: &str) -> Result<bool, Error> {
        match self.skopeo.delete(&self.transport_ref(image)).await {
            Ok(()) => Ok(true),
            // c/image's words for a name the store does not have.
            Err(Error::Failed { stderr, .. })
                if stderr.contains("identifier is not an image")
                    || stderr.contains("does not resolve to an image ID") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: Vec<OsString>) -> Vec<String> {
        a.into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn commands_follow_the_skopeo_cli() {
        let cs = ContainersStorage::new(Skopeo::new("skopeo"), "[overlay@/r+/rr]");
        let image = ImageRef::parse("localhost/ms2m/c:ckpt-1").unwrap();
        let dest = cs.transport_ref(&image);
        assert_eq!(
            dest,
            "containers-storage:[overlay@/r+/rr]localhost/ms2m/c:ckpt-1"
        );
        assert_eq!(
            strings(cs.skopeo.copy("oci:/l:ckpt-1", dest.clone()).args()),
            [
                "--insecure-policy",
                "copy",
                "--quiet",
                "--",
                "oci:/l:ckpt-1",
                dest.as_str()
            ]
        );
        assert_eq!(
            strings(cs.skopeo.delete_args(dest.clone())),
            ["--insecure-policy", "delete", "--", dest.as_str()]
        );
    }

    #[test]
    fn storage_specs() {
        for ok in [
            "",
            "[overlay@/var/lib/containers/storage+/run/containers/storage]",
            "[vfs@/tmp/r+/tmp/rr]",
            "[overlay@/r+/rr:overlay.mountopt=nodev]",
        ] {
            validate_storage_spec(ok).unwrap();
        }
        for bad in ["overlay@/r+/rr", "[]", "[overlay@/r+/rr", "[a]]"] {
            assert!(
                matches!(validate_storage_spec(bad), Err(Error::StorageSpec(_))),
                "{bad}"
            );
        }
    }
}
