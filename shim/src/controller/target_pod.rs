//! The target pod: a copy of the source pod that runs the checkpoint image on the target
//! node.
//!
//! Decisions: the pod is pinned with `spec.nodeName` (the node was validated in
//! `Pending`; going through the scheduler could place it elsewhere or leave it pending
//! on affinity the source had). Labels are the source's minus those that make a
//! ReplicaSet or StatefulSet adopt it (`pod-template-hash`, `controller-revision-hash`,
//! `statefulset.kubernetes.io/pod-name`), so Services keep selecting it but no controller
//! counts it and deletes it as a surplus replica. It has no owner: deleting the migration
//! after completion must not delete the service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;

pub const LABEL_MIGRATION: &str = "migration.ms2m.io/migration";
pub const LABEL_ROLE: &str = "migration.ms2m.io/role";
pub const ANNOTATION_SOURCE: &str = "migration.ms2m.io/source-pod";
pub const ANNOTATION_IMAGE: &str = "migration.ms2m.io/checkpoint-image";

const ADOPTION_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

/// Builds the target pod from the source pod.
pub fn build(
    source: &Pod,
    container: &str,
    target_name: &str,
    target_node: &str,
    image: &str,
    migration: &str,
) -> Pod {
    let mut labels: BTreeMap<String, String> = source
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !ADOPTION_LABELS.contains(&k.as_str()))
        .collect();
    labels.insert(LABEL_MIGRATION.into(), migration.into());
    labels.insert(LABEL_ROLE.into(), "target".into());
    let annotations = BTreeMap::from([
        (
            ANNOTATION_SOURCE.to_owned(),
            source.metadata.name.clone().unwrap_or_default(),
        ),
        (ANNOTATION_IMAGE.to_owned(), image.to_owned()),
    ]);
    let mut spec = source.spec.clone().unwrap_or_default();
    spec.node_name = Some(target_node.into());
    // Scheduling constraints are moot with nodeName and may contradict the target node.
    spec.affinity = None;
    spec.node_selector = None;
    spec.scheduling_gates = None;
    spec.ephemeral_containers = None;
    // The StatefulSet's hostname/subdomain belong to the source's identity.
    spec.hostname = None;
    spec.subdomain = None;
    for c in &mut spec.containers {
        if c.name == container {
            c.image = Some(image.into());
            c.image_pull_policy = Some("IfNotPresent".into());
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(target_name.into()),
            namespace: source.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_runs_the_checkpoint_image_on_the_target_node_and_is_not_adopted() {
        let source: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "counter-7d9f-abcde", "namespace": "shop",
                "labels": {"app": "counter", "pod-template-hash": "7d9f"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "counter-7d9f", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "node-a", "nodeSelector": {"zone": "a"},
                "containers": [{"name": "counter", "image": "counter:1"}, {"name": "sidecar", "image": "side:1"}]}
        }))
        .unwrap();
        let t = build(
            &source,
            "counter",
            "counter-m1",
            "node-b",
            "reg/ckpt:x",
            "mig",
        );
        let spec = t.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-b"));
        assert_eq!(spec.node_selector, None);
        assert_eq!(spec.containers[0].image.as_deref(), Some("reg/ckpt:x"));
        assert_eq!(spec.containers[1].image.as_deref(), Some("side:1"));
        let labels = t.metadata.labels.unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("counter"));
        assert!(!labels.contains_key("pod-template-hash"));
        assert_eq!(labels.get(LABEL_ROLE).map(String::as_str), Some("target"));
        assert!(t.metadata.owner_references.is_none());
        assert_eq!(t.metadata.namespace.as_deref(), Some("shop"));
    }
}
