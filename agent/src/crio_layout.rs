//! The checkpoint archive layout CRI-O (and Podman) write, which the kubelet API
//! returns and runtimes restore from. The runc backend writes the same files so one
//! transfer and restore path serves both backends.
//!
//! `config.dump` carries checkpointctl's `ContainerConfig` fields; ms2m adds
//! `criuVersion` (readers ignore unknown keys), so an inspection can name the CRIU that
//! made the images.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
pub const STATS_DUMP: &str = "stats-dump";
pub const DUMP_LOG: &str = "dump.log";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_image_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_image_name: Option<String>,
    #[serde(default, rename = "runtime", skip_serializing_if = "Option::is_none")]
    pub oci_runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointed_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criu_version: Option<String>,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

pub fn read_config_dump(dir: &Path) -> std::io::Result<ContainerConfig> {
    let b = std::fs::read(dir.join(CONFIG_DUMP))?;
    serde_json::from_slice(&b).map_err(std::io::Error::other)
}

/// Total size of the regular files under `p`.
pub fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}
