//! What a checkpoint archive says about itself: `config.dump`, `spec.dump`, `dump.log`
//! and the file list, read the way checkpointctl reads them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use crate::archive::Archive;

/// A file of the archive and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
}

/// Metadata of a checkpoint. Fields the archive does not record are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// Container name (Kubernetes container name for CRI-O/containerd).
    pub container_name: Option<String>,
    /// Container id in the engine that made the checkpoint.
    pub container_id: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    /// `CRI-O`, `containerd`, `Podman`, or the `io.container.manager` value as found.
    pub engine: Option<String>,
    /// OCI runtime (`runc`, `crun`, ...) from `config.dump`.
    pub runtime: Option<String>,
    /// Image reference the user asked for (`rootfsImage`).
    pub rootfs_image: Option<String>,
    /// Resolved image name (`rootfsImageName`).
    pub rootfs_image_name: Option<String>,
    /// Image id / digest (`rootfsImageRef`).
    pub rootfs_image_ref: Option<String>,
    /// CRIU version from `dump.log` when the archive has one.
    pub criu_version: Option<String>,
    /// Container creation time, as recorded (RFC 3339).
    pub created: Option<String>,
    /// Checkpoint time, as recorded (RFC 3339).
    pub checkpointed_at: Option<String>,
    /// Sum of `checkpoint/pages-*.img` sizes.
    pub memory_size: u64,
    /// Sum of all regular file sizes.
    pub total_size: u64,
    /// Whether `rootfs-diff.tar` is present.
    pub has_rootfs_diff: bool,
    /// Every regular file with its size, in archive order.
    pub files: Vec<FileInfo>,
}

/// How much of `dump.log` we look at for the version line (it is near the top).
const DUMP_LOG_HEAD: u64 = 64 * 1024;

impl CheckpointMetadata {
    pub(crate) fn from_archive(archive: &Archive) -> CheckpointMetadata {
        let config = read_json(archive, "config.dump");
        let spec = read_json(archive, "spec.dump");
        let ann = spec
            .as_ref()
            .and_then(|s| s.get("annotations"))
            .and_then(Value::as_object);
        let a = |k: &str| {
            ann.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let c = |k: &str| {
            config
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };

        let manager = a("io.container.manager");
        let engine = match manager.as_deref() {
            Some("libpod") => Some("Podman".to_owned()),
            Some("cri-o") => Some("CRI-O".to_owned()),
            Some(other) => Some(other.to_owned()),
            None if a("io.kubernetes.cri.container-name").is_some() => {
                Some("containerd".to_owned())
            }
            None => None,
        };
        let crio_name = a("io.kubernetes.cri-o.Metadata")
            .and_then(|m| serde_json::from_str::<Value>(&m).ok())
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned));
        let container_name = crio_name
            .or_else(|| a("io.kubernetes.cri.container-name"))
            .or_else(|| a("io.kubernetes.container.name"))
            .or_else(|| c("name"));

        let mut files = Vec::new();
        let mut memory_size = 0;
        let mut total_size = 0;
        for e in archive.entries().iter().filter(|e| e.is_file()) {
            total_size += e.size;
            if is_page_image(&e.path) {
                memory_size += e.size;
            }
            files.push(FileInfo {
                path: e.path.clone(),
                size: e.size,
            });
        }

        let criu_version = ["dump.log", "checkpoint/dump.log"]
            .iter()
            .find_map(|p| archive.read_head(p, DUMP_LOG_HEAD))
            .and_then(|log| criu_version_from_log(&log));

        CheckpointMetadata {
            container_name,
            container_id: c("id"),
            pod_name: a("io.kubernetes.pod.name").or_else(|| a("io.kubernetes.cri.sandbox-name")),
            namespace: a("io.kubernetes.pod.namespace")
                .or_else(|| a("io.kubernetes.cri.sandbox-namespace")),
            engine,
            runtime: c("runtime"),
            rootfs_image: c("rootfsImage"),
            rootfs_image_name: c("rootfsImageName"),
            rootfs_image_ref: c("rootfsImageRef"),
            criu_version,
            created: c("createdTime"),
            checkpointed_at: c("checkpointedTime"),
            memory_size,
            total_size,
            has_rootfs_diff: archive
                .entry("rootfs-diff.tar")
                .is_some_and(|e| e.is_file()),
            files,
        }
    }
}

/// CRIU memory page images: `checkpoint/pages-<n>.img`.
pub fn is_page_image(path: &str) -> bool {
    path.strip_prefix("checkpoint/pages-")
        .is_some_and(|rest| rest.ends_with(".img") && !rest.contains('/'))
}

fn read_json(archive: &Archive, path: &str) -> Option<Value> {
    archive.entry(path).filter(|e| e.is_file())?;
    match archive.read_small(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(entry = path, error = %e, "checkpoint metadata is not valid JSON; ignored");
                None
            }
        },
        Err(e) => {
            warn!(entry = path, error = %e, "checkpoint metadata unreadable; ignored");
            None
        }
    }
}

/// CRIU logs `Version: 4.2.1 (gitid ...)` near the start of every log.
fn criu_version_from_log(log: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(log);
    text.lines().find_map(|l| {
        let rest = &l[l.find("Version: ")? + "Version: ".len()..];
        let v: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
            .collect();
        (!v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_images() {
        assert!(is_page_image("checkpoint/pages-1.img"));
        assert!(is_page_image("checkpoint/pages-12.img"));
        assert!(!is_page_image("checkpoint/pagemap-1.img"));
        assert!(!is_page_image("pages-1.img"));
    }

    #[test]
    fn version_line() {
        let log = b"(00.000000) Version: 4.2.1 (gitid 0)\n(00.000010) Running on x\n";
        assert_eq!(criu_version_from_log(log).as_deref(), Some("4.2.1"));
        assert_eq!(criu_version_from_log(b"nothing"), None);
    }
}
