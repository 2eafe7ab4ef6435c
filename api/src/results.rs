//! Answers and job results, one type per job kind (read with
//! [`crate::JobView::result`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::job::{JobKind, JobOutput};

/// `result` of a `checkpoint` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointResult {
    pub checkpoint_id: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    /// `runc` or `kubelet`.
    pub backend: String,
    pub criu_version: Option<String>,
    pub dump_ms: u64,
    /// How long the container was frozen (pause → resume) when it kept running.
    pub frozen_ms: Option<u64>,
}

/// One layer of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSummary {
    pub digest: String,
    pub size_bytes: u64,
    pub diff_id: String,
    pub uncompressed_size_bytes: u64,
}

/// `result` of a `push` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResult {
    pub image: String,
    /// Digest of the index (what the tag points at).
    pub digest: String,
    pub manifest_digest: String,
    /// Compressed bytes sent (layers, config, manifests), resent bytes counted once.
    pub bytes_uploaded: u64,
    /// Uncompressed archive bytes.
    pub archive_bytes: u64,
    pub layers: Vec<LayerSummary>,
    pub elapsed_ms: u64,
}

/// `result` of a `pull` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResult {
    pub checkpoint_id: String,
    pub path: PathBuf,
    /// Digest of what the reference resolved to (index or manifest).
    pub digest: String,
    /// Uncompressed bytes unpacked.
    pub size_bytes: u64,
    pub bytes_downloaded: u64,
    pub elapsed_ms: u64,
}

/// Which image store; also the `store` field of results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// containers-storage, CRI-O's (and Podman's) store, through skopeo.
    #[default]
    ContainersStorage,
    /// containerd's image store, through ctr.
    Containerd,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::ContainersStorage => "containers-storage",
            StoreKind::Containerd => "containerd",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an import produced (also `received.imported` of a Direct receive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// The normalized reference the image is stored under.
    pub reference: String,
    pub store: StoreKind,
    /// The id the store and the runtime's CRI show for the image (`crictl images`,
    /// `podman images`): the config digest, which both stores use as image id.
    pub image_id: String,
    /// The manifest digest (`skopeo inspect`'s `Digest`, `ctr images ls`'s DIGEST).
    pub manifest_digest: String,
}

/// `result` of an `image_import` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResult {
    pub checkpoint_id: String,
    #[serde(flatten)]
    pub imported: Imported,
    pub elapsed_ms: u64,
}

/// `DELETE /v1/images` → `200`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub reference: String,
    pub store: StoreKind,
    /// False when the store had no such image (removal is idempotent).
    pub removed: bool,
}

/// What a Direct receiver stored: `received` of a send's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub path: PathBuf,
    /// Uncompressed bytes unpacked.
    pub size_bytes: u64,
    /// Compressed layer bytes received.
    pub bytes_received: u64,
    /// Layer digests, in order.
    pub layers: Vec<String>,
    /// Set when the sender asked for an import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<Imported>,
}

/// `PUT /v1/direct/receive/{id}` → `200`, and the `result` of a `direct_receive` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveResult {
    pub checkpoint_id: String,
    #[serde(flatten)]
    pub received: Received,
}

/// `GET /v1/direct/receive/{id}` → `200`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveReady {
    pub checkpoint_id: String,
    pub ready: bool,
}

/// `result` of a `direct_send` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    pub target: String,
    pub target_checkpoint_id: String,
    pub bytes_sent: u64,
    pub archive_bytes: u64,
    pub elapsed_ms: u64,
    pub received: Received,
}

/// `result` of a `restore` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResult {
    pub container_id: String,
    pub pid: i64,
    pub bundle: PathBuf,
    pub restore_ms: u64,
    pub hostname: String,
    pub tcp_close: bool,
}

/// One entry of `GET /v1/checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointEntry {
    pub checkpoint_id: String,
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// `GET /v1/checkpoints` → `200`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointList {
    pub checkpoints: Vec<CheckpointEntry>,
}

/// `GET /v1/containers/{id}` → `200` (runc's state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub bundle: PathBuf,
}

/// `GET /healthz` and `GET /readyz` → `200`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criu_version: Option<String>,
}

macro_rules! outputs {
    ($($t:ty => [$($k:ident),*],)*) => {
        $(impl JobOutput for $t {
            const KINDS: &'static [JobKind] = &[$(JobKind::$k),*];
        })*
    };
}

outputs! {
    CheckpointResult => [Checkpoint],
    PushResult => [Push],
    PullResult => [Pull],
    RestoreResult => [Restore],
    SendResult => [DirectSend],
    ReceiveResult => [DirectReceive],
    ImportResult => [ImageImport],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of docs/agent-api.md parse as their types.
    #[test]
    fn documented_results_parse() {
        let send: SendResult = serde_json::from_value(serde_json::json!({
            "target": "http://10.0.0.12:9411", "target_checkpoint_id": "c", "bytes_sent": 123,
            "archive_bytes": 456, "elapsed_ms": 90,
            "received": {"path": "/p", "size_bytes": 456, "bytes_received": 123,
                "layers": ["sha256:00"],
                "imported": {"reference": "localhost/ms2m/counter:ckpt-1",
                    "store": "containers-storage", "image_id": "sha256:01",
                    "manifest_digest": "sha256:02"}}
        }))
        .unwrap();
        assert_eq!(
            send.received.imported.unwrap().reference,
            "localhost/ms2m/counter:ckpt-1"
        );
        let imp: ImportResult = serde_json::from_value(serde_json::json!({
            "checkpoint_id": "counter-1-ckpt", "reference": "localhost/ms2m/counter:ckpt-1",
            "store": "containerd", "image_id": "sha256:...", "manifest_digest": "sha256:...",
            "elapsed_ms": 840
        }))
        .unwrap();
        assert_eq!(imp.imported.store, StoreKind::Containerd);
        let rcv: ReceiveResult = serde_json::from_value(serde_json::json!({
            "checkpoint_id": "c", "path": "/p", "size_bytes": 1, "bytes_received": 1,
            "layers": []
        }))
        .unwrap();
        assert!(rcv.received.imported.is_none());
        assert_eq!(
            serde_json::to_value(&rcv).unwrap(),
            serde_json::json!({"checkpoint_id": "c", "path": "/p", "size_bytes": 1,
                "bytes_received": 1, "layers": []})
        );
    }
}
