//! Request bodies and query strings. The agent rejects unknown fields; optional fields
//! left `None` are not sent.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

fn default_true() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// CRIU's `network-lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkLock {
    Iptables,
    Nftables,
    /// No lock: right when connections are not dumped (`tcp-close`) and the task dies
    /// with the dump. CRIU's lock rules would otherwise stay in the dead container's
    /// network namespace, and its peers would never see the connections close.
    Skip,
}

impl NetworkLock {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkLock::Iptables => "iptables",
            NetworkLock::Nftables => "nftables",
            NetworkLock::Skip => "skip",
        }
    }
}

/// Seconds the kubelet backend waits for the kubelet when the request names none.
pub const DEFAULT_KUBELET_TIMEOUT_SECONDS: u64 = 60;
/// The longest a kubelet checkpoint may be given.
pub const MAX_KUBELET_TIMEOUT_SECONDS: u64 = 3600;

/// `POST /v1/checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckpointRequest {
    Runc {
        container_id: String,
        #[serde(default = "default_true")]
        leave_running: bool,
        #[serde(default)]
        tcp_established: bool,
        /// Default: `true` for a stop-and-copy checkpoint without `tcp_established`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tcp_close: Option<bool>,
        /// Default: `skip` when connections are closed and the container stops, else
        /// CRIU's (iptables).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network_lock: Option<NetworkLock>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint_id: Option<String>,
        /// The image rootfs the container runs on, recorded so a restore can find it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rootfs_image: Option<PathBuf>,
    },
    Kubelet {
        namespace: String,
        pod: String,
        container: String,
        /// Default [`DEFAULT_KUBELET_TIMEOUT_SECONDS`], at most
        /// [`MAX_KUBELET_TIMEOUT_SECONDS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint_id: Option<String>,
    },
}

impl CheckpointRequest {
    /// A runc checkpoint with the documented defaults.
    pub fn runc(container_id: impl Into<String>) -> Self {
        CheckpointRequest::Runc {
            container_id: container_id.into(),
            leave_running: true,
            tcp_established: false,
            tcp_close: None,
            network_lock: None,
            checkpoint_id: None,
            rootfs_image: None,
        }
    }
}

/// `POST /v1/pushes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub checkpoint_id: String,
    pub image: String,
    /// `zstd` (default), `gzip`, `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<usize>,
    #[serde(default)]
    pub insecure: bool,
}

/// `POST /v1/pulls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<usize>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub verify_diff_ids: bool,
}

/// `POST /v1/direct/sends`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectSendRequest {
    pub checkpoint_id: String,
    pub target: String,
    /// Default: `checkpoint_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_checkpoint_id: Option<String>,
    /// The target's node: over mutual TLS the source agent sends only to a peer whose
    /// certificate names `ms2m-agent:<target_node>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// The target agent imports the received checkpoint into its node's image store under
    /// this reference (Kubernetes: the runtime restores only from an image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_reference: Option<String>,
}

/// Query of the Direct receive routes (`?import=<reference>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveQuery {
    /// Import the received checkpoint into the image store under this reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<String>,
}

/// `POST /v1/restores`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub checkpoint_id: String,
    pub container_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    #[serde(default)]
    pub tcp_established: bool,
    /// `None`: closed exactly when the target namespace lacks their local address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_close: Option<bool>,
    /// Pod name for the restored `/etc/hostname` (default: `container_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `POST /v1/images`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub checkpoint_id: String,
    pub reference: String,
}

/// Query of `DELETE /v1/images`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDeleteQuery {
    pub reference: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_requests() {
        let r: CheckpointRequest =
            serde_json::from_str(r#"{"backend":"runc","container_id":"c1"}"#).unwrap();
        assert_eq!(r, CheckpointRequest::runc("c1"));
        let e = serde_json::from_str::<CheckpointRequest>(
            r#"{"backend":"runc","container_id":"c1","leave_runing":true}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("leave_runing"), "{e}");
        // The kubelet always leaves the container running: the option does not exist there.
        assert!(
            serde_json::from_str::<CheckpointRequest>(
                r#"{"backend":"kubelet","namespace":"d","pod":"p","container":"c","leave_running":false}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<CheckpointRequest>(r#"{"backend":"crio"}"#).is_err());
        let r: CheckpointRequest = serde_json::from_str(
            r#"{"backend":"runc","container_id":"c1","leave_running":false,"tcp_close":true,"network_lock":"skip"}"#,
        )
        .unwrap();
        assert!(matches!(
            r,
            CheckpointRequest::Runc {
                tcp_close: Some(true),
                network_lock: Some(NetworkLock::Skip),
                ..
            }
        ));
        let mut r = CheckpointRequest::runc("counter-1");
        if let CheckpointRequest::Runc { checkpoint_id, .. } = &mut r {
            *checkpoint_id = Some("counter-1-ckpt".into());
        }
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"backend": "runc", "container_id": "counter-1", "leave_running": true,
                "tcp_established": false, "checkpoint_id": "counter-1-ckpt"})
        );
        let k = CheckpointRequest::Kubelet {
            namespace: "default".into(),
            pod: "counter-0".into(),
            container: "counter".into(),
            timeout_seconds: Some(60),
            checkpoint_id: Some("c".into()),
        };
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(v["backend"], "kubelet");
        assert_eq!(serde_json::from_value::<CheckpointRequest>(v).unwrap(), k);
    }

    #[test]
    fn a_direct_send_names_the_import_only_when_there_is_one() {
        let mut r = DirectSendRequest {
            checkpoint_id: "c".into(),
            target: "http://10.0.0.12:9411".into(),
            target_checkpoint_id: Some("c".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"checkpoint_id": "c", "target": "http://10.0.0.12:9411",
                "target_checkpoint_id": "c"}),
        );
        r.import_reference = Some("localhost/ms2m/default/mig:c".into());
        assert_eq!(
            serde_json::to_value(&r).unwrap()["import_reference"],
            "localhost/ms2m/default/mig:c"
        );
    }

    #[test]
    fn every_request_reads_back_what_it_writes() {
        fn rt<T: Serialize + for<'a> Deserialize<'a> + PartialEq + std::fmt::Debug>(v: T) {
            let back: T = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
            assert_eq!(back, v);
        }
        rt(PushRequest {
            checkpoint_id: "c".into(),
            image: "r/x:1".into(),
            compression: Some("gzip".into()),
            layers: Some(2),
            parallel: None,
            insecure: true,
        });
        rt(PullRequest {
            image: "r/x:1".into(),
            verify_diff_ids: true,
            ..Default::default()
        });
        rt(RestoreRequest {
            checkpoint_id: "c".into(),
            container_id: "d".into(),
            netns_path: Some("/run/netns/b".into()),
            tcp_close: Some(false),
            ..Default::default()
        });
        rt(ImportRequest::default());
    }
}
