//! The `StatefulMigration` custom resource (`migration.ms2m.io/v1alpha1`).
//!
//! The spec is validated by the API server (schema constraints and CEL rules with
//! messages that name the field) and again by [`StatefulMigrationSpec::validate`] before
//! the controller acts, so a bad value fails the migration in `Pending` with the same
//! message even on clusters that don't evaluate CEL.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::{Phase, Progress, ReplayMode, Strategy, TransferMode};
use crate::messaging::BrokerKind;

pub const GROUP: &str = "migration.ms2m.io";
pub const FINALIZER: &str = "migration.ms2m.io/cleanup";
pub const DEFAULT_REPLAY_CUTOFF_SECONDS: u32 = 60;
pub const DEFAULT_PHASE_TIMEOUT_SECONDS: u32 = 300;

/// Migrates one container of a running pod to another node without losing a message.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "migration.ms2m.io",
    version = "v1alpha1",
    kind = "StatefulMigration",
    plural = "statefulmigrations",
    shortname = "smig",
    namespaced,
    status = "StatefulMigrationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.sourceNode"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetNode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.spec == oldSelf.spec").message("spec is immutable: delete the migration and create a new one")
)]
#[cfg_attr(test, x_kube(cel))]
#[x_kube(validation = Rule::new("(has(self.transferMode) && self.transferMode == 'Direct') || (has(self.checkpointImageRepository) && self.checkpointImageRepository.size() > 0 && !self.checkpointImageRepository.contains('@') && !self.checkpointImageRepository.endsWith('/'))").message("checkpointImageRepository must be a repository without tag or digest, e.g. registry:5000/ms2m/checkpoints (required with transferMode Registry)"))]
#[serde(rename_all = "camelCase")]
pub struct StatefulMigrationSpec {
    /// The pod to migrate, in the migration's namespace.
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 253").message("sourcePod must be a pod name (1-253 characters)"))]
    #[schemars(length(max = 253))]
    pub source_pod: String,
    /// The container to checkpoint; default: the pod's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub container_name: Option<String>,
    /// The node to migrate to.
    #[x_kube(validation = Rule::new("self.size() > 0").message("targetNode must name a node"))]
    #[schemars(length(max = 253))]
    pub target_node: String,
    /// Repository the checkpoint image is pushed to, e.g. `registry.local:5000/ms2m/checkpoints`
    /// (transferMode Registry; unused with Direct).
    #[serde(default)]
    #[schemars(length(max = 255))]
    pub checkpoint_image_repository: String,
    /// Cutoff mode: longest time the source keeps serving while the target replays.
    #[serde(default = "default_replay_cutoff")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600").message("replayCutoffSeconds must be between 1 and 3600"))]
    pub replay_cutoff_seconds: u32,
    #[serde(default)]
    pub replay_mode: ReplayMode,
    /// Empty: Sequential for StatefulSet pods, ShadowPod otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_strategy: Option<Strategy>,
    /// `Registry`: pushed to `checkpointImageRepository`, pulled by the target node.
    /// `Direct`: sent agent to agent and imported into the target node's image store as
    /// `localhost/ms2m/<namespace>/<name>:<checkpoint id>`; no registry involved.
    #[serde(default)]
    pub transfer_mode: TransferMode,
    /// Longest time one phase may take before the migration fails and rolls back.
    #[serde(default = "default_phase_timeout")]
    #[x_kube(validation = Rule::new("self >= 10 && self <= 86400").message("phaseTimeoutSeconds must be between 10 and 86400"))]
    pub phase_timeout_seconds: u32,
    pub message_queue_config: MessageQueueConfig,
}

fn default_replay_cutoff() -> u32 {
    DEFAULT_REPLAY_CUTOFF_SECONDS
}

fn default_phase_timeout() -> u32 {
    DEFAULT_PHASE_TIMEOUT_SECONDS
}

/// Where the service's messages come from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[cfg_attr(test, x_kube(cel))]
#[x_kube(validation = Rule::new("has(self.brokerUrl) != has(self.brokerSecretRef)").message("set exactly one of brokerUrl and brokerSecretRef"))]
#[x_kube(validation = Rule::new("!has(self.broker) || !has(self.brokerUrl) || ((self.broker == 'NATS') == self.brokerUrl.startsWith('nats://'))").message("broker NATS goes with a nats:// brokerUrl, RabbitMQ with amqp://"))]
#[serde(rename_all = "camelCase")]
pub struct MessageQueueConfig {
    /// `amqp://user:pass@host:port/vhost` (RabbitMQ) or `nats://host:port` (NATS
    /// JetStream); prefer `brokerSecretRef` for credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('amqp://') || self.startsWith('nats://')").message("brokerUrl must start with amqp:// or nats://"))]
    #[schemars(length(max = 2048))]
    pub broker_url: Option<String>,
    /// A Secret key holding the broker URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_secret_ref: Option<SecretKeyRef>,
    /// `RabbitMQ` or `NATS`; empty: from the broker URL's scheme. With NATS,
    /// `exchangeName` is the stream and `queueName` the service's durable consumer on
    /// it (docs/migration-protocol.md, "NATS JetStream").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerKind>,
    /// The service's primary queue.
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 200 && !self.startsWith('amq.')").message("queueName must be 1-200 characters and not start with amq. (reserved)"))]
    #[schemars(length(max = 255))]
    pub queue_name: String,
    /// Fanout exchange the producers publish to.
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.startsWith('amq.')").message("exchangeName must be set and not start with amq. (reserved)"))]
    #[schemars(length(max = 255))]
    pub exchange_name: String,
    /// Routing key of the primary queue's binding (ignored by fanout exchanges).
    #[serde(default)]
    #[schemars(length(max = 255))]
    pub routing_key: String,
    /// RabbitMQ management API, `http(s)://host:port` (default: the broker's host on
    /// port 15672, with the broker URL's credentials). The cut-over reads the
    /// exchange's current bindings there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("managementUrl must start with http:// or https://"))]
    #[schemars(length(max = 2048))]
    pub management_url: Option<String>,
    /// The service's prefetch (`basic.qos`) on the primary queue; 0 for unlimited or
    /// automatic acknowledgement. The checkpoint waits until this many messages
    /// published after the replay binding have reached the source, which proves every
    /// earlier one acknowledged (docs/migration-protocol.md). Too high only waits
    /// longer; too low can lose messages. Default 50, the reference consumer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub source_prefetch: Option<i32>,
}

/// The reference consumer's prefetch: what `sourcePrefetch` defaults to.
pub const DEFAULT_SOURCE_PREFETCH: u16 = 50;

impl MessageQueueConfig {
    pub fn management(&self) -> crate::messaging::ManagementConfig {
        crate::messaging::ManagementConfig {
            url: self.management_url.clone(),
        }
    }

    pub fn source_prefetch(&self) -> u16 {
        self.source_prefetch
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(DEFAULT_SOURCE_PREFETCH)
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// A condition in the Kubernetes style, for `kubectl wait --for=condition=...`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

/// Observed progress. The engine's progress is flattened in, so `phase`, `sourceNode`,
/// `checkpointID`, `phaseTimings`, ... are top-level fields.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulMigrationStatus {
    #[serde(flatten)]
    pub progress: Progress,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl StatefulMigrationStatus {
    pub fn phase(&self) -> Phase {
        self.progress.phase
    }
}

/// A spec value the API server should have refused (or one CEL could not express).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid spec: {0}")]
pub struct InvalidSpec(pub String);

impl StatefulMigrationSpec {
    /// The same rules as the schema's, for clusters or drivers that did not apply them.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let bad = |m: &str| Err(InvalidSpec(m.to_owned()));
        if self.source_pod.is_empty() || self.source_pod.len() > 253 {
            return bad("sourcePod must be a pod name (1-253 characters)");
        }
        if self.target_node.is_empty() {
            return bad("targetNode must name a node");
        }
        let repo = &self.checkpoint_image_repository;
        if self.transfer_mode == TransferMode::Registry
            && (repo.is_empty() || repo.contains('@') || repo.ends_with('/'))
        {
            return bad(
                "checkpointImageRepository must be a repository without tag or digest, e.g. registry:5000/ms2m/checkpoints (required with transferMode Registry)",
            );
        }
        if !(1..=3600).contains(&self.replay_cutoff_seconds) {
            return bad("replayCutoffSeconds must be between 1 and 3600");
        }
        if !(10..=86400).contains(&self.phase_timeout_seconds) {
            return bad("phaseTimeoutSeconds must be between 10 and 86400");
        }
        let mq = &self.message_queue_config;
        if mq.broker_url.is_some() == mq.broker_secret_ref.is_some() {
            return bad("set exactly one of brokerUrl and brokerSecretRef");
        }
        if let Some(url) = &mq.broker_url {
            if !url.starts_with("amqp://") && !url.starts_with("nats://") {
                return bad("brokerUrl must start with amqp:// or nats://");
            }
            if mq
                .broker
                .is_some_and(|b| (b == BrokerKind::Nats) != url.starts_with("nats://"))
            {
                return bad("broker NATS goes with a nats:// brokerUrl, RabbitMQ with amqp://");
            }
        }
        if mq.queue_name.is_empty()
            || mq.queue_name.len() > 200
            || mq.queue_name.starts_with("amq.")
        {
            return bad("queueName must be 1-200 characters and not start with amq. (reserved)");
        }
        if mq.exchange_name.is_empty() || mq.exchange_name.starts_with("amq.") {
            return bad("exchangeName must be set and not start with amq. (reserved)");
        }
        Ok(())
    }

    pub fn replay_cutoff(&self) -> Duration {
        Duration::from_secs(self.replay_cutoff_seconds.into())
    }

    pub fn phase_timeout(&self) -> Duration {
        Duration::from_secs(self.phase_timeout_seconds.into())
    }
}

/// The CRD as installed: the derived one with integer formats Kubernetes knows.
///
/// schemars names Rust's unsigned integers `format: uint32`/`uint64`; Kubernetes knows
/// only `int32`/`int64` and, from 1.34 on, warns on every apply about the others. The
/// bounds are kept (`minimum: 0` from schemars, the CEL rules), so `int64` loses nothing:
/// every `u32` fits and the `u64` counters never come near 2^63.
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(StatefulMigration::crd()).expect("a CRD serializes");
    known_integer_formats(&mut value);
    serde_json::from_value(value).expect("the CRD reads back after renaming formats")
}

fn known_integer_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(f) = map.get_mut("format")
                && matches!(f.as_str(), Some("uint8" | "uint16" | "uint32" | "uint64"))
            {
                *f = "int64".into();
            }
            map.values_mut().for_each(known_integer_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(known_integer_formats),
        _ => {}
    }
}

/// The CRD as YAML, exactly as `deploy/base/crd.yaml` holds it.
pub fn crd_yaml() -> String {
    let body = serde_yaml::to_string(&crd()).expect("a CRD serializes to YAML");
    format!("# Generated by `ms2m-shim crdgen`: do not edit.\n---\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> serde_json::Value {
        json!({
            "sourcePod": "counter-0",
            "targetNode": "node-b",
            "checkpointImageRepository": "registry:5000/ms2m/checkpoints",
            "replayCutoffSeconds": 60,
            "replayMode": "Cutoff",
            "transferMode": "Registry",
            "phaseTimeoutSeconds": 300,
            "messageQueueConfig": {"brokerUrl": "amqp://guest:guest@rabbit:5672/%2f", "queueName": "orders", "exchangeName": "orders.fanout", "routingKey": ""}
        })
    }

    #[test]
    fn the_broker_follows_the_url_or_must_match_it() {
        let mut v = spec();
        v["messageQueueConfig"]["brokerUrl"] = json!("nats://nats:4222");
        let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
        s.validate().unwrap();
        StatefulMigrationSpec::validate_cel(&v, None).unwrap();
        assert_eq!(s.message_queue_config.broker, None);
        v["messageQueueConfig"]["broker"] = json!("NATS");
        let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
        s.validate().unwrap();
        assert_eq!(s.message_queue_config.broker, Some(BrokerKind::Nats));
        v["messageQueueConfig"]["brokerUrl"] = json!("amqp://h");
        let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
        let message = "broker NATS goes with a nats:// brokerUrl";
        assert!(s.validate().unwrap_err().0.contains(message));
        let cel = format!(
            "{:?}",
            StatefulMigrationSpec::validate_cel(&v, None).unwrap_err()
        );
        assert!(cel.contains(message), "CEL said {cel}");
    }

    #[test]
    fn defaults_fill_in() {
        let s: StatefulMigrationSpec = serde_json::from_value(json!({
            "sourcePod": "p", "targetNode": "n", "checkpointImageRepository": "r/x",
            "messageQueueConfig": {"brokerUrl": "amqp://h", "queueName": "q", "exchangeName": "e"}
        }))
        .unwrap();
        assert_eq!(s.replay_cutoff_seconds, 60);
        assert_eq!(s.phase_timeout_seconds, 300);
        assert_eq!(s.replay_mode, ReplayMode::Cutoff);
        assert_eq!(s.transfer_mode, TransferMode::Registry);
        assert_eq!(s.migration_strategy, None);
        s.validate().unwrap();
    }

    /// Each bad value is refused by the CEL rules in the CRD (evaluated with kube's CEL
    /// interpreter, as the API server would) and by `validate`, with the same message.
    #[test]
    fn bad_values_are_refused_with_clear_messages() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("/sourcePod", json!(""), "sourcePod must be a pod name"),
            ("/targetNode", json!(""), "targetNode must name a node"),
            (
                "/checkpointImageRepository",
                json!("reg/x@sha256:00"),
                "without tag or digest",
            ),
            ("/replayCutoffSeconds", json!(0), "between 1 and 3600"),
            ("/phaseTimeoutSeconds", json!(5), "between 10 and 86400"),
            (
                "/messageQueueConfig/queueName",
                json!("amq.gen"),
                "queueName must be",
            ),
            (
                "/messageQueueConfig/brokerUrl",
                json!("http://x"),
                "must start with amqp:// or nats://",
            ),
        ];
        for (path, value, message) in cases {
            let mut v = spec();
            *v.pointer_mut(path).unwrap() = value;
            let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
            let err = s.validate().unwrap_err();
            assert!(err.0.contains(message), "{path}: {err}");
            let cel = StatefulMigrationSpec::validate_cel(&v, None);
            let cel_msg = format!("{:?}", cel.expect_err(path));
            assert!(cel_msg.contains(message), "{path}: CEL said {cel_msg}");
        }
        let ok = spec();
        StatefulMigrationSpec::validate_cel(&ok, None).unwrap();
    }

    #[test]
    fn direct_mode_needs_no_registry() {
        let mut v = spec();
        v["transferMode"] = json!("Direct");
        v.as_object_mut()
            .unwrap()
            .remove("checkpointImageRepository");
        let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.transfer_mode, TransferMode::Direct);
        s.validate().unwrap();
        StatefulMigrationSpec::validate_cel(&v, None).unwrap();
        // Registry still needs one, present or not.
        v["transferMode"] = json!("Registry");
        let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
        assert!(
            s.validate()
                .unwrap_err()
                .0
                .contains("required with transferMode Registry")
        );
        let cel = format!("{:?}", StatefulMigrationSpec::validate_cel(&v, None));
        assert!(cel.contains("required with transferMode Registry"), "{cel}");
        v.as_object_mut().unwrap().remove("transferMode");
        let cel = format!("{:?}", StatefulMigrationSpec::validate_cel(&v, None));
        assert!(
            cel.contains("checkpointImageRepository"),
            "default mode: {cel}"
        );
    }

    #[test]
    fn exactly_one_broker_source() {
        let mut v = spec();
        v["messageQueueConfig"]["brokerSecretRef"] = json!({"name": "rabbit", "key": "url"});
        let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
        assert!(s.validate().unwrap_err().0.contains("exactly one"));
        let cel = MessageQueueConfig::validate_cel(&v["messageQueueConfig"], None);
        assert!(format!("{cel:?}").contains("exactly one"));
    }

    #[test]
    fn crd_uses_only_integer_formats_kubernetes_knows() {
        let text = serde_json::to_string(&crd()).unwrap();
        assert!(!text.contains("\"format\":\"uint"), "{text}");
        assert!(text.contains("\"format\":\"int64\""));
    }

    #[test]
    fn crd_has_printer_columns_status_and_rules() {
        let crd = serde_json::to_value(crd()).unwrap();
        assert_eq!(
            crd["metadata"]["name"],
            "statefulmigrations.migration.ms2m.io"
        );
        let v = &crd["spec"]["versions"][0];
        let cols: Vec<_> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(cols, ["Phase", "Source", "Target", "Age"]);
        assert!(v["subresources"]["status"].is_object());
        let text = crd.to_string();
        assert!(text.contains("x-kubernetes-validations"));
        assert!(text.contains("spec is immutable"));
    }

    #[test]
    fn status_flattens_the_engine_progress() {
        let mut st = StatefulMigrationStatus::default();
        st.progress.phase = Phase::Replaying;
        st.progress.checkpoint_id = Some("c1".into());
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["phase"], "Replaying");
        assert_eq!(v["checkpointId"], "c1");
    }
}
