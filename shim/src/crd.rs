//! The `StatefulMigration` custom resource (`migration.ms2m.io/v1alpha1`).
//!
//! The spec is validated by the API server (schema constraints and CEL rules with
//! messages that name the field) and again by [`StatefulMigrationSpec::validate`] before
//! the controller acts, so a bad value fails the migration in `Pending` with the same
//! message even on clusters that don't evaluate CEL.

use std::collections::BTreeMap;
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
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.targetNode"}"#,
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
    /// The node to migrate to. Omitted or empty: the controller picks one (see
    /// `controller::target_node`: a Ready, schedulable node other than the source's that
    /// runs an agent, with the most free allocatable memory, ties broken by name) and
    /// records it in `status.targetNode`.
    #[serde(
        default,
        deserialize_with = "empty_as_default",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 253))]
    pub target_node: Option<String>,
    /// Repository the checkpoint image is pushed to, e.g. `registry.local:5000/ms2m/checkpoints`
    /// (transferMode Registry; unused with Direct).
    #[serde(default)]
    #[schemars(length(max = 255))]
    pub checkpoint_image_repository: String,
    /// Cutoff mode: longest time the source keeps serving while the target replays.
    /// `0`: no cutoff, the source stops once the target has caught up (as in the
    /// reference implementation); the phase timeout still bounds the replay.
    #[serde(default = "default_replay_cutoff")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 3600").message("replayCutoffSeconds must be between 0 (no cutoff) and 3600"))]
    pub replay_cutoff_seconds: u32,
    /// Empty: `Cutoff`.
    #[serde(default, deserialize_with = "empty_as_default")]
    #[schemars(schema_with = "enum_or_empty::<ReplayMode>")]
    pub replay_mode: ReplayMode,
    /// Empty or omitted: Sequential for StatefulSet pods, ShadowPod otherwise.
    #[serde(
        default,
        deserialize_with = "empty_as_default",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "enum_or_empty::<Strategy>")]
    pub migration_strategy: Option<Strategy>,
    /// `Registry`: pushed to `checkpointImageRepository`, pulled by the target node.
    /// `Direct`: sent agent to agent and imported into the target node's image store as
    /// `localhost/ms2m/<namespace>/<name>:<checkpoint id>`; no registry involved.
    /// Empty: `Registry`.
    #[serde(default, deserialize_with = "empty_as_default")]
    #[schemars(schema_with = "enum_or_empty::<TransferMode>")]
    pub transfer_mode: TransferMode,
    /// The reference implementation's StatefulSet identity swap: `None` (default, also
    /// empty), `ExchangeFence` or `Cutoff`. Accepted so its CRs apply unchanged. The swap
    /// itself is not implemented yet: a ShadowPod migration of a StatefulSet pod that asks
    /// for it fails in Pending, touching nothing; other pods ignore it.
    #[serde(
        default,
        deserialize_with = "empty_as_default",
        skip_serializing_if = "IdentitySwapMode::is_none"
    )]
    #[schemars(schema_with = "enum_or_empty::<IdentitySwapMode>")]
    pub identity_swap_mode: IdentitySwapMode,
    /// Longest time one phase may take before the migration fails and rolls back.
    #[serde(default = "default_phase_timeout")]
    #[x_kube(validation = Rule::new("self >= 10 && self <= 86400").message("phaseTimeoutSeconds must be between 10 and 86400"))]
    pub phase_timeout_seconds: u32,
    pub message_queue_config: MessageQueueConfig,
}

/// What happens to a StatefulSet pod's identity after a ShadowPod migration.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdentitySwapMode {
    /// The target keeps its own name; the StatefulSet is scaled down by one.
    #[default]
    None,
    /// Hand the StatefulSet's name back to a pod restored from the target, switching the
    /// queues with the exchange fence. Not implemented yet: a ShadowPod migration of a
    /// StatefulSet pod that asks for it fails in `Pending` (nothing is touched) with a
    /// message that says so. Ignored for pods no StatefulSet owns, as in the reference.
    ExchangeFence,
    /// The same swap with a time-based mini-replay cutoff; as `ExchangeFence`.
    Cutoff,
}

impl IdentitySwapMode {
    pub fn is_none(&self) -> bool {
        *self == IdentitySwapMode::None
    }
}

/// Reads an absent, `null` or empty-string value as the type's default: the reference
/// implementation's Go types use `omitempty` strings, whose zero value `""` means "the
/// default", and its users write `transferMode: ""` in templated CRs.
fn empty_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() || v.as_str() == Some("") {
        return Ok(T::default());
    }
    T::deserialize(v).map_err(serde::de::Error::custom)
}

/// `T`'s string enum with `""` added, so the API server's schema accepts the empty value
/// that [`empty_as_default`] reads as the default.
fn enum_or_empty<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let schema = T::json_schema(generator);
    // schemars writes a unit-variant enum as `enum: [...]`, or as `oneOf` of `const`s
    // when the variants are documented; either way the values are strings.
    let mut values: Vec<serde_json::Value> = Vec::new();
    let mut collect = |s: &serde_json::Value| {
        if let Some(c) = s.get("const") {
            values.push(c.clone());
        }
        if let Some(e) = s.get("enum").and_then(|e| e.as_array()) {
            values.extend(e.iter().cloned());
        }
    };
    collect(schema.as_value());
    if let Some(variants) = schema.get("oneOf").and_then(|o| o.as_array()) {
        variants.iter().for_each(&mut collect);
    }
    values.push("".into());
    let mut out = serde_json::json!({"type": "string", "enum": values});
    if let Some(d) = schema.get("description") {
        out["description"] = d.clone();
    }
    schemars::Schema::try_from(out).expect("an object is a schema")
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
    /// `amqp://user:pass@host:port/vhost` (RabbitMQ), `amqps://` for TLS (see
    /// `tlsSecretRef`), or `nats://host:port` (NATS JetStream); prefer `brokerSecretRef`
    /// for credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('amqp://') || self.startsWith('amqps://') || self.startsWith('nats://')").message("brokerUrl must start with amqp://, amqps:// or nats://"))]
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
    /// For an `amqps://` broker: a Secret in the migration's namespace in the
    /// `kubernetes.io/tls` layout: `ca.crt` (the CA that signed the broker's certificate;
    /// without it the system's roots are trusted) and optionally `tls.crt` + `tls.key`
    /// (a client certificate). A cert-manager Certificate's Secret fits as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,
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

/// Why ShadowPod refuses a consumer whose prefetch is unlimited or which acknowledges
/// automatically (docs/migration-protocol.md, "Consumers without a prefetch bound").
pub const UNBOUNDED_PREFETCH_REFUSED: &str = "sourcePrefetch 0 (unlimited prefetch or automatic acknowledgement): ShadowPod cannot prove that such a consumer loses nothing, since nothing bounds what it holds unapplied at the checkpoint; set a prefetch (basic.qos) and manual acknowledgement on the consumer, or choose migrationStrategy Sequential (stop-and-copy: the broker requeues every unacknowledged delivery; an auto-ack consumer still loses what its client had buffered)";

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

/// A Secret in the migration's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub name: String,
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
/// `targetNode`, `checkpointId`, `phaseRecords`, ... are top-level fields.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulMigrationStatus {
    #[serde(flatten)]
    pub progress: Progress,
    /// Duration of each finished phase as a Go duration string (`"1.234s"`, `"850ms"`,
    /// `"1m2.5s"`), keyed by phase name: the reference implementation's shape, which its
    /// users' scripts read (`jq .status.phaseTimings.Checkpointing`). Derived from
    /// `phaseRecords`, which has the start times too.
    #[serde(
        default,
        deserialize_with = "map_or_nothing",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub phase_timings: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl StatefulMigrationStatus {
    pub fn new(
        progress: Progress,
        conditions: Vec<Condition>,
        observed_generation: Option<i64>,
    ) -> Self {
        Self {
            phase_timings: phase_timings_map(&progress),
            progress,
            conditions,
            observed_generation,
        }
    }

    pub fn phase(&self) -> Phase {
        self.progress.phase
    }
}

/// `status.phaseTimings`: each finished phase's duration, as Go prints a
/// `time.Duration` rounded to milliseconds. A phase entered twice (a resumed driver)
/// counts once per entry, summed.
pub fn phase_timings_map(p: &Progress) -> BTreeMap<String, String> {
    let mut ms: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &p.phase_timings {
        if let Some(d) = t.duration_ms {
            *ms.entry(t.phase.as_str()).or_default() += d;
        }
    }
    ms.into_iter()
        .map(|(phase, d)| (phase.to_owned(), go_duration_ms(d)))
        .collect()
}

/// Go's `time.Duration.String()` for a whole number of milliseconds: `0s`, `850ms`,
/// `1.234s`, `1m2.5s`, `1h0m0s`.
pub fn go_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut secs = s.to_string();
    if frac > 0 {
        let f = format!("{frac:03}");
        secs.push('.');
        secs.push_str(f.trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

/// Reads a map, and anything else (the array an older ms2m wrote under the same name)
/// as empty: the map is derived, so nothing is lost.
fn map_or_nothing<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
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
        let repo = &self.checkpoint_image_repository;
        if self.transfer_mode == TransferMode::Registry
            && (repo.is_empty() || repo.contains('@') || repo.ends_with('/'))
        {
            return bad(
                "checkpointImageRepository must be a repository without tag or digest, e.g. registry:5000/ms2m/checkpoints (required with transferMode Registry)",
            );
        }
        if self.replay_cutoff_seconds > 3600 {
            return bad("replayCutoffSeconds must be between 0 (no cutoff) and 3600");
        }
        if !(10..=86400).contains(&self.phase_timeout_seconds) {
            return bad("phaseTimeoutSeconds must be between 10 and 86400");
        }
        let mq = &self.message_queue_config;
        if mq.broker_url.is_some() == mq.broker_secret_ref.is_some() {
            return bad("set exactly one of brokerUrl and brokerSecretRef");
        }
        if let Some(url) = &mq.broker_url {
            if !url.starts_with("amqp://")
                && !url.starts_with("amqps://")
                && !url.starts_with("nats://")
            {
                return bad("brokerUrl must start with amqp://, amqps:// or nats://");
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
        if mq.source_prefetch == Some(0) && self.migration_strategy != Some(Strategy::Sequential) {
            return bad(UNBOUNDED_PREFETCH_REFUSED);
        }
        Ok(())
    }

    /// `None`: no cutoff (`replayCutoffSeconds: 0`).
    pub fn replay_cutoff(&self) -> Option<Duration> {
        (self.replay_cutoff_seconds > 0)
            .then(|| Duration::from_secs(self.replay_cutoff_seconds.into()))
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
            (
                "/checkpointImageRepository",
                json!("reg/x@sha256:00"),
                "without tag or digest",
            ),
            (
                "/replayCutoffSeconds",
                json!(3601),
                "between 0 (no cutoff) and 3600",
            ),
            ("/phaseTimeoutSeconds", json!(5), "between 10 and 86400"),
            (
                "/messageQueueConfig/queueName",
                json!("amq.gen"),
                "queueName must be",
            ),
            (
                "/messageQueueConfig/brokerUrl",
                json!("http://x"),
                "must start with amqp://, amqps:// or nats://",
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
    fn an_unbounded_prefetch_needs_the_sequential_strategy() {
        let mut v = spec();
        v["messageQueueConfig"]["sourcePrefetch"] = json!(0);
        for strategy in [None, Some("ShadowPod")] {
            if let Some(st) = strategy {
                v["migrationStrategy"] = json!(st);
            }
            let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
            let err = s.validate().unwrap_err();
            assert!(err.0.contains("sourcePrefetch 0"), "{strategy:?}: {err}");
        }
        v["migrationStrategy"] = json!("Sequential");
        let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
        s.validate().unwrap();
        v["messageQueueConfig"]["sourcePrefetch"] = json!(1);
        v.as_object_mut().unwrap().remove("migrationStrategy");
        let s: StatefulMigrationSpec = serde_json::from_value(v).unwrap();
        s.validate().unwrap();
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

    /// The reference implementation's Go types write `""` for "the default" and omit
    /// `targetNode`; `replayCutoffSeconds: 0` means no cutoff there.
    #[test]
    fn zero_values_mean_what_they_mean_in_the_reference_implementation() {
        let mut v = spec();
        v["migrationStrategy"] = json!("");
        v["transferMode"] = json!("");
        v["replayMode"] = json!("");
        v["identitySwapMode"] = json!("");
        v["targetNode"] = json!("");
        v["replayCutoffSeconds"] = json!(0);
        let s: StatefulMigrationSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.migration_strategy, None);
        assert_eq!(s.transfer_mode, TransferMode::Registry);
        assert_eq!(s.replay_mode, ReplayMode::Cutoff);
        assert_eq!(s.identity_swap_mode, IdentitySwapMode::None);
        assert_eq!(s.target_node, None);
        assert_eq!(s.replay_cutoff(), None);
        s.validate().unwrap();
        StatefulMigrationSpec::validate_cel(&v, None).unwrap();
        v.as_object_mut().unwrap().remove("targetNode");
        let s: StatefulMigrationSpec = serde_json::from_value(v).unwrap();
        assert_eq!(s.target_node, None);
        // Written back, the defaults are explicit and the empty values gone.
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["transferMode"], "Registry");
        assert!(back.get("targetNode").is_none() && back.get("identitySwapMode").is_none());
    }

    #[test]
    fn identity_swap_modes_are_accepted() {
        for (text, mode) in [
            ("None", IdentitySwapMode::None),
            ("ExchangeFence", IdentitySwapMode::ExchangeFence),
            ("Cutoff", IdentitySwapMode::Cutoff),
        ] {
            let mut v = spec();
            v["identitySwapMode"] = json!(text);
            let s: StatefulMigrationSpec = serde_json::from_value(v).unwrap();
            assert_eq!(s.identity_swap_mode, mode);
        }
        let mut v = spec();
        v["identitySwapMode"] = json!("Sometimes");
        assert!(serde_json::from_value::<StatefulMigrationSpec>(v).is_err());
    }

    #[test]
    fn the_schema_accepts_empty_strings_for_the_enums() {
        let crd = serde_json::to_value(crd()).unwrap();
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        for field in [
            "migrationStrategy",
            "transferMode",
            "replayMode",
            "identitySwapMode",
        ] {
            let values = props[field]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{field}: {}", props[field]));
            assert!(values.contains(&json!("")), "{field}: {values:?}");
        }
        let required = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"].to_string();
        assert!(!required.contains("targetNode"), "{required}");
    }

    #[test]
    fn go_durations_print_as_go_prints_them() {
        assert_eq!(go_duration_ms(0), "0s");
        assert_eq!(go_duration_ms(850), "850ms");
        assert_eq!(go_duration_ms(1000), "1s");
        assert_eq!(go_duration_ms(1234), "1.234s");
        assert_eq!(go_duration_ms(1500), "1.5s");
        assert_eq!(go_duration_ms(62_500), "1m2.5s");
        assert_eq!(go_duration_ms(120_000), "2m0s");
        assert_eq!(go_duration_ms(3_600_000), "1h0m0s");
        assert_eq!(go_duration_ms(3_723_004), "1h2m3.004s");
    }

    #[test]
    fn status_phase_timings_is_the_reference_map_and_records_keep_the_detail() {
        use crate::engine::PhaseTiming;
        let t0: jiff::Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let mut p = Progress {
            phase: Phase::Replaying,
            ..Progress::default()
        };
        for (phase, ms) in [
            (Phase::Pending, Some(12)),
            (Phase::Checkpointing, Some(1234)),
            (Phase::Transferring, Some(62_500)),
            (Phase::Replaying, None),
        ] {
            p.phase_timings.push(PhaseTiming {
                phase,
                started_at: t0,
                duration_ms: ms,
            });
        }
        let st = StatefulMigrationStatus::new(p, vec![], None);
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["phaseTimings"]["Checkpointing"], "1.234s");
        assert_eq!(v["phaseTimings"]["Transferring"], "1m2.5s");
        assert_eq!(v["phaseTimings"]["Pending"], "12ms");
        assert!(
            v["phaseTimings"].get("Replaying").is_none(),
            "still running"
        );
        assert_eq!(v["phaseRecords"].as_array().unwrap().len(), 4);
        let back: StatefulMigrationStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);
        // A status an older ms2m wrote (records under `phaseTimings`) still reads.
        let old = json!({"phase": "Replaying", "phaseTimings": [{"phase": "Pending", "startedAt": "2026-12-02T10:00:00Z", "durationMs": 5}]});
        let st: StatefulMigrationStatus = serde_json::from_value(old).unwrap();
        assert_eq!(st.progress.phase, Phase::Replaying);
        assert!(st.phase_timings.is_empty());
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
