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
//!
//! A Sequential target is the StatefulSet's own pod `<sts>-<ordinal>` (the source is gone
//! by then, so the name is free): identity labels and hostname included, only the
//! selector's labels held back until the StatefulSet takes it back (docs/shim.md).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume};
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
    pin(&mut spec, container, target_node, image);
    // The StatefulSet's hostname/subdomain belong to the source's identity.
    spec.hostname = None;
    spec.subdomain = None;
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

/// Labels of the StatefulSet's pod template that its selector looks at. The target is
/// created without them (a StatefulSet adopts an orphan that matches its selector and
/// deletes it while the ordinal is above its replica count) and gets them when it is
/// handed back, after the scale-up.
pub fn selector_labels(sts: &StatefulSet) -> BTreeMap<String, String> {
    let Some(spec) = sts.spec.as_ref() else {
        return BTreeMap::new();
    };
    let sel = &spec.selector;
    let mut keys: Vec<&str> = sel
        .match_labels
        .iter()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    keys.extend(
        sel.match_expressions
            .iter()
            .flatten()
            .map(|e| e.key.as_str()),
    );
    spec.template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect()
}

/// The Sequential target: the StatefulSet's pod `<sts>-<ordinal>` as its controller would
/// create it (template, revision and pod-name labels, hostname/subdomain, the claim
/// template volumes), running the checkpoint image on the target node, minus the
/// selector's labels until the hand-back.
pub fn build_for_statefulset(
    sts: &StatefulSet,
    ordinal: i32,
    container: &str,
    target_node: &str,
    image: &str,
    migration: &str,
) -> Pod {
    let sts_name = sts.metadata.name.clone().unwrap_or_default();
    let name = format!("{sts_name}-{ordinal}");
    let spec = sts.spec.clone().unwrap_or_default();
    let held_back = selector_labels(sts);
    let mut labels: BTreeMap<String, String> = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !held_back.contains_key(k))
        .collect();
    let status = sts.status.clone().unwrap_or_default();
    // The template used is the current spec's, i.e. the update revision's.
    if let Some(rev) = status.update_revision.or(status.current_revision) {
        labels.insert("controller-revision-hash".into(), rev);
    }
    labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
    labels.insert("apps.kubernetes.io/pod-index".into(), ordinal.to_string());
    labels.insert(LABEL_MIGRATION.into(), migration.into());
    labels.insert(LABEL_ROLE.into(), "target".into());
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    // The StatefulSet controller adds the claim templates' volumes to every pod it makes.
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for claim in spec.volume_claim_templates.iter().flatten() {
        let Some(claim_name) = claim.metadata.name.clone() else {
            continue;
        };
        if volumes.iter().any(|v| v.name == claim_name) {
            continue;
        }
        volumes.push(Volume {
            name: claim_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{claim_name}-{name}"),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if volumes.is_empty() {
        pod_spec.volumes = None;
    }
    pin(&mut pod_spec, container, target_node, image);
    pod_spec.hostname = Some(name.clone());
    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: sts.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_IMAGE.to_owned(),
                image.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// Whether `pod` is the target of migration `migration` (a Sequential target carries the
/// source's name, so the name alone does not say).
pub fn is_target_of(pod: &Pod, migration: &str) -> bool {
    let labels = pod.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(LABEL_MIGRATION))
        .map(String::as_str)
        == Some(migration)
        && labels.and_then(|l| l.get(LABEL_ROLE)).map(String::as_str) == Some("target")
}

fn pin(spec: &mut PodSpec, container: &str, target_node: &str, image: &str) {
    spec.node_name = Some(target_node.into());
    // Scheduling constraints are moot with nodeName and may contradict the target node.
    spec.affinity = None;
    spec.node_selector = None;
    spec.scheduling_gates = None;
    spec.ephemeral_containers = None;
    for c in &mut spec.containers {
        if c.name == container {
            c.image = Some(image.into());
            c.image_pull_policy = Some("IfNotPresent".into());
        }
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
