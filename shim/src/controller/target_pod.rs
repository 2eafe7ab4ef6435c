//! The target pod: a copy of the source pod that runs the checkpoint image on the target
//! node, pulled from the registry (Registry mode) or already in the node's image store
//! (Direct mode: imported by the target agent under [`local_image_reference`]).
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

/// Where the target node's runtime gets the checkpoint image from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// Pulled from the registry the source agent pushed to (`IfNotPresent`).
    Registry,
    /// Already in the node's image store, imported there by the target agent (Direct
    /// mode): `Never`. A pull of the local reference could only fail, and would report a
    /// missing import as a registry error.
    NodeStore,
}

impl ImageSource {
    fn pull_policy(self) -> &'static str {
        match self {
            ImageSource::Registry => "IfNotPresent",
            ImageSource::NodeStore => "Never",
        }
    }
}

/// Longest repository name a reference may have (distribution's `NameTotalLengthMax`).
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

/// The local reference a Direct transfer imports the checkpoint under on the target node:
/// `localhost/ms2m/<namespace>/<migration>:<checkpoint id>`. `localhost/` is what CRI-O and
/// containerd use for images that come from no registry. Kubernetes names already fit the
/// reference grammar; anything else is mapped into it (lowercase, `[a-z0-9]` joined by
/// `.`, `_`, `__` or dashes), and the migration's component is shortened to keep the name
/// within 255 characters. The tag carries the checkpoint id, which contains the
/// migration's uid, so shortening never makes two migrations share a reference.
pub fn local_image_reference(namespace: &str, migration: &str, checkpoint_id: &str) -> String {
    let prefix = "localhost/ms2m/";
    let ns = component(namespace, 63);
    let room = MAX_NAME - prefix.len() - ns.len() - 1;
    let name = component(migration, room);
    format!("{prefix}{ns}/{name}:{}", tag(checkpoint_id))
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, at most `max` characters.
fn component(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut sep = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if !out.is_empty() && !sep.is_empty() {
                let valid =
                    matches!(sep.as_str(), "." | "_" | "__") || sep.chars().all(|x| x == '-');
                out.push_str(if valid { &sep } else { "-" });
            }
            sep.clear();
            out.push(c);
        } else {
            sep.push(if matches!(c, '.' | '_') { c } else { '-' });
        }
    }
    // ASCII only, so any byte length is a char boundary; a cut may end on a separator.
    out.truncate(max);
    while out.ends_with(['.', '_', '-']) {
        out.pop();
    }
    if out.is_empty() {
        out.push('m');
    }
    out
}

/// A tag: `[a-z0-9_][a-z0-9_.-]{0,127}` (the grammar allows upper case; stores differ in
/// how they treat it, so none is used).
fn tag(s: &str) -> String {
    let mut out: String = s
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| matches!(c, '.' | '-'))
        .take(MAX_TAG)
        .collect();
    if out.is_empty() {
        out.push_str("checkpoint");
    }
    out
}

/// Builds the target pod from the source pod.
pub fn build(
    source: &Pod,
    container: &str,
    target_name: &str,
    target_node: &str,
    image: &str,
    from: ImageSource,
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
    pin(&mut spec, container, target_node, image, from);
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
    from: ImageSource,
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
    pin(&mut pod_spec, container, target_node, image, from);
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

fn pin(spec: &mut PodSpec, container: &str, target_node: &str, image: &str, from: ImageSource) {
    spec.node_name = Some(target_node.into());
    // Scheduling constraints are moot with nodeName and may contradict the target node.
    spec.affinity = None;
    spec.node_selector = None;
    spec.scheduling_gates = None;
    spec.ephemeral_containers = None;
    for c in &mut spec.containers {
        if c.name == container {
            c.image = Some(image.into());
            c.image_pull_policy = Some(from.pull_policy().into());
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
            ImageSource::Registry,
            "mig",
        );
        let spec = t.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-b"));
        assert_eq!(spec.node_selector, None);
        assert_eq!(spec.containers[0].image.as_deref(), Some("reg/ckpt:x"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(spec.containers[1].image.as_deref(), Some("side:1"));
        let labels = t.metadata.labels.unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("counter"));
        assert!(!labels.contains_key("pod-template-hash"));
        assert_eq!(labels.get(LABEL_ROLE).map(String::as_str), Some("target"));
        assert!(t.metadata.owner_references.is_none());
        assert_eq!(t.metadata.namespace.as_deref(), Some("shop"));
    }

    /// Distribution's reference grammar for `localhost/<path>:<tag>`.
    fn is_valid_local_reference(r: &str) -> bool {
        let Some((name, tag)) = r.rsplit_once(':') else {
            return false;
        };
        let Some(path) = name.strip_prefix("localhost/") else {
            return false;
        };
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
            if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
                return false;
            }
            // Separators between alnum runs: ".", "_", "__" or one or more "-".
            c.split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                .filter(|sep| !sep.is_empty())
                .all(|sep| matches!(sep, "." | "_" | "__") || sep.chars().all(|ch| ch == '-'))
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
        };
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        name.len() <= 255 && path.split('/').all(component_ok) && tag_ok
    }

    #[test]
    fn the_local_reference_of_a_migration_is_its_namespace_name_and_checkpoint() {
        let r = local_image_reference("default", "mig", "default.mig-0c5e9a7d");
        assert_eq!(r, "localhost/ms2m/default/mig:default.mig-0c5e9a7d");
        assert!(is_valid_local_reference(&r));
        // Deterministic: a restarted controller computes the same.
        assert_eq!(
            r,
            local_image_reference("default", "mig", "default.mig-0c5e9a7d")
        );
        // Dots of a DNS subdomain name are valid separators and stay.
        assert_eq!(
            local_image_reference("shop", "counter.to-b", "shop.counter.to-b-0c5e9a7d"),
            "localhost/ms2m/shop/counter.to-b:shop.counter.to-b-0c5e9a7d"
        );
    }

    #[test]
    fn any_name_maps_to_a_valid_reference() {
        let long = "a".repeat(253);
        let (ns63, tag200) = ("n".repeat(63), "t".repeat(200));
        // Shortened right after a dot.
        let cut_at_dot = format!("{}.{}", "a".repeat(175), "b".repeat(60));
        let cases = [
            ("Default", "Mig", "Ckpt-1"),
            ("ns", "a..b", "c"),
            ("ns", "a.-b_-c___d", "c"),
            ("ns", "-lead.trail-", ".x"),
            ("ns", "über/mig:1@x", "-Tag:With/Odd@chars"),
            ("", "", ""),
            ("ns", "...", "..."),
            (ns63.as_str(), long.as_str(), tag200.as_str()),
            ("ns", cut_at_dot.as_str(), "c"),
        ];
        for (ns, name, id) in cases {
            let r = local_image_reference(ns, name, id);
            assert!(
                is_valid_local_reference(&r),
                "{ns:?} {name:?} {id:?} gave the invalid {r:?}"
            );
            assert!(r.starts_with("localhost/ms2m/"), "{r}");
        }
        assert_eq!(
            local_image_reference("Default", "Mig", "Ckpt-1"),
            "localhost/ms2m/default/mig:ckpt-1"
        );
        assert_eq!(
            local_image_reference("ns", "a..b", "c"),
            "localhost/ms2m/ns/a-b:c"
        );
        let r = local_image_reference("n".repeat(63).as_str(), &long, "t");
        assert_eq!(r.rsplit_once(':').unwrap().0.len(), 255);
    }

    #[test]
    fn a_target_from_the_node_store_is_never_pulled() {
        let source: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "counter-0", "namespace": "shop"},
            "spec": {"nodeName": "node-a",
                "containers": [{"name": "counter", "image": "counter:1", "imagePullPolicy": "Always"},
                    {"name": "sidecar", "image": "side:1", "imagePullPolicy": "Always"}]}
        }))
        .unwrap();
        let reference = "localhost/ms2m/shop/mig:c";
        let t = build(
            &source,
            "counter",
            "counter-0-m1",
            "node-b",
            reference,
            ImageSource::NodeStore,
            "mig",
        );
        let spec = t.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-b"));
        assert_eq!(spec.containers[0].image.as_deref(), Some(reference));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Never")
        );
        // The other containers come from wherever they came from before.
        assert_eq!(
            spec.containers[1].image_pull_policy.as_deref(),
            Some("Always")
        );
    }
}
