//! containerd's image store through ctr:
//! `ctr --address <sock> --namespace <ns> images import --base-name <name> -` with a tar
//! of the OCI layout on stdin, and `... images rm <reference>`.
//!
//! The tar is streamed from the layout directory into ctr's stdin (ctr ≥ 1.6 reads `-`),
//! so no archive file is written beside the layout. The layout's `index.json` names the
//! manifest by tag only (`org.opencontainers.image.ref.name`, as an OCI layout does), and
//! `--base-name` makes ctr store it as `<name>:<tag>`.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tempfile::TempDir;
use tokio::process::Command;

use super::{Error, ImageRef, run_tool};

/// The ctr CLI bound to one containerd and namespace.
#[derive(Debug, Clone)]
pub struct Ctr {
    binary: PathBuf,
    address: PathBuf,
    namespace: String,
}

impl Ctr {
    pub fn new(
        binary: impl Into<PathBuf>,
        address: impl Into<PathBuf>,
        namespace: impl Into<String>,
    ) -> Self {
        Self {
            binary: binary.into(),
            address: address.into(),
            namespace: namespace.into(),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn global_args(&self) -> Vec<OsString> {
        vec![
            "--address".into(),
            self.address.clone().into(),
            "--namespace".into(),
            self.namespace.clone().into(),
        ]
    }

    /// `ctr images import --base-name <name> -`.
    pub fn import(&self, base_name: impl Into<String>) -> CtrImport {
        CtrImport {
            ctr: self.clone(),
            base_name: base_name.into(),
        }
    }

    /// `ctr images rm <reference>`: the arguments.
    pub fn remove_args(&self, reference: &str) -> Vec<OsString> {
        let mut a = self.global_args();
        // `--`: whatever the reference is, ctr never reads it as an option.
        a.extend(["images".into(), "rm".into(), "--".into(), reference.into()]);
        a
    }

    /// `ctr images rm <reference>`; Ok(false) when there was no such image (ctr only
    /// warns about it, with status 0).
    pub async fn remove(&self, reference: &str) -> Result<bool, Error> {
        let mut c = Command::new(&self.binary);
        c.args(self.remove_args(reference));
        let out = run_tool("ctr", &self.binary, "images rm", c).await?;
        Ok(!String::from_utf8_lossy(&out.stderr).contains("not found"))
    }
}

#[derive(Debug, Clone)]
pub struct CtrImport {
    ctr: Ctr,
    base_name: String,
}

impl CtrImport {
    pub fn args(&self) -> Vec<OsString> {
        let mut a = self.ctr.global_args();
        a.extend([
            "images".into(),
            "import".into(),
            "--base-name".into(),
            self.base_name.clone().into(),
            "--".into(),
            "-".into(),
        ]);
        a
    }

    /// Runs ctr with a tar of `layout` on its stdin.
    pub async fn run(self, layout: &Arc<TempDir>) -> Result<(), Error> {
        let binary = self.ctr.binary().to_owned();
        let mut c = Command::new(&binary);
        c.args(self.args())
            .kill_on_drop(true)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tracing::debug!(cmd = ?c.as_std(), "ctr images import");
        let mut child = c.spawn().map_err(|source| Error::Spawn {
            tool: binary.clone(),
            source,
        })?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Internal("ctr without stdin".into()))?
            .into_owned_fd()
            .map_err(Error::io("ctr stdin"))?;
        // The writer thread keeps the layout alive until it is done with it, even when
        // this future is dropped (ctr is killed then, and the write fails at once).
        let dir = layout.clone();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let pipe = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::from(stdin));
            let mut tar = tar::Builder::new(pipe);
            tar.mode(tar::HeaderMode::Deterministic);
            tar.follow_symlinks(false);
            tar.append_path_with_name(dir.path().join("oci-layout"), "oci-layout")?;
            tar.append_dir_all("blobs", dir.path().join("blobs"))?;
            tar.append_path_with_name(dir.path().join("index.json"), "index.json")?;
            // Closing stdin is ctr's end of input.
            tar.into_inner()?.flush()
        });
        let out = child
            .wait_with_output()
            .await
            .map_err(Error::io("waiting for ctr"))?;
        let written = writer
            .await
            .map_err(|e| Error::Internal(format!("tar thread: {e}")))?;
        if !out.status.success() {
            return Err(Error::Failed {
                tool: "ctr",
                op: "images import",
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        written.map_err(Error::io("streaming the layout to ctr"))?;
        tracing::debug!(stdout = %String::from_utf8_lossy(&out.stdout).trim(), "ctr images import");
        Ok(())
    }
}

/// containerd's store (address and namespace, `k8s.io` for the CRI).
#[derive(Debug, Clone)]
pub struct Containerd {
    ctr: Ctr,
}

impl Containerd {
    pub fn new(ctr: Ctr) -> Self {
        Self { ctr }
    }

    pub(super) async fn import(
        &self,
        layout: &Arc<TempDir>,
        image: &ImageRef,
    ) -> Result<(), Error> {
        self.ctr.import(&image.name).run(layout).await
    }

    pub(super) async fn remove(&self, image: &str) -> Result<bool, Error> {
        self.ctr.remove(image).await
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
    fn commands_follow_the_ctr_cli() {
        let ctr = Ctr::new("ctr", "/run/containerd/containerd.sock", "k8s.io");
        let g = [
            "--address",
            "/run/containerd/containerd.sock",
            "--namespace",
            "k8s.io",
        ];
        let mut want: Vec<&str> = g.to_vec();
        want.extend([
            "images",
            "import",
            "--base-name",
            "localhost/ms2m/c",
            "--",
            "-",
        ]);
        assert_eq!(strings(ctr.import("localhost/ms2m/c").args()), want);
        let mut want: Vec<&str> = g.to_vec();
        want.extend(["images", "rm", "--", "localhost/ms2m/c:t"]);
        assert_eq!(strings(ctr.remove_args("localhost/ms2m/c:t")), want);
    }
}
