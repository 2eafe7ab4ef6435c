//! deploy/ is checked against the code: the CRD against the Rust types, RBAC against the
//! controller's API call table, and every manifest against the Kubernetes types.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ms2m_shim::controller::api_calls;
use ms2m_shim::crd::StatefulMigration;
use serde::Deserialize;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

/// Parses into `T` and back: a field the type doesn't know (a typo, a wrong level)
/// would be dropped and show up as a difference.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{what}: fields lost or changed when read as a Kubernetes type"
    );
    typed
}

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let on_disk = std::fs::read_to_string(deploy_dir().join("crd.yaml")).unwrap();
    assert!(
        on_disk == ms2m_shim::crd::crd_yaml(),
        "deploy/crd.yaml drifted from the Rust types: run `cargo run -p ms2m-shim -- crdgen > deploy/crd.yaml`"
    );
}

#[test]
fn every_manifest_parses_into_kubernetes_types() {
    let mut kinds = BTreeSet::new();
    for path in manifests() {
        for doc in docs(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let what = format!("{} {kind} {}", path.display(), doc["metadata"]["name"]);
            match kind.as_str() {
                "Namespace" => drop(round_trip::<Namespace>(&doc, &what)),
                "ServiceAccount" => drop(round_trip::<ServiceAccount>(&doc, &what)),
                "ClusterRole" => drop(round_trip::<ClusterRole>(&doc, &what)),
                "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(&doc, &what)),
                "ConfigMap" => drop(round_trip::<ConfigMap>(&doc, &what)),
                "Deployment" => drop(round_trip::<Deployment>(&doc, &what)),
                "DaemonSet" => drop(round_trip::<DaemonSet>(&doc, &what)),
                "CustomResourceDefinition" => {
                    drop(round_trip::<CustomResourceDefinition>(&doc, &what))
                }
                other => panic!("{what}: no check for kind {other:?}"),
            }
            kinds.insert(kind);
        }
    }
    for k in [
        "CustomResourceDefinition",
        "ClusterRole",
        "Deployment",
        "DaemonSet",
    ] {
        assert!(kinds.contains(k), "deploy/ has no {k}");
    }
}

#[test]
fn the_shim_role_grants_exactly_the_calls_the_controller_makes() {
    let rbac = docs(&deploy_dir().join("rbac.yaml"));
    let role: ClusterRole = rbac
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "ms2m-shim")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .expect("ClusterRole ms2m-shim in deploy/rbac.yaml");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.clone().unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                for v in &rule.verbs {
                    assert!(
                        v != "*" && r != "*" && g != "*",
                        "wildcards are not least privilege"
                    );
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let used: BTreeSet<_> = api_calls::ALL
        .iter()
        .map(|c| (c.group.to_owned(), c.resource.to_owned(), c.verb.to_owned()))
        .collect();
    let missing: Vec<_> = used.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "rbac.yaml lacks calls the controller makes: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "rbac.yaml grants calls the controller never makes: {extra:?}"
    );

    let binding = rbac
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding" && d["roleRef"]["name"] == "ms2m-shim")
        .expect("a binding for the shim role");
    let shim = docs(&deploy_dir().join("shim.yaml"));
    let sa = shim[0]["spec"]["template"]["spec"]["serviceAccountName"].clone();
    assert_eq!(
        binding["subjects"][0]["name"], sa,
        "the Deployment runs as the bound ServiceAccount"
    );
}

#[test]
fn the_agent_daemonset_has_what_checkpointing_needs() {
    let agent = docs(&deploy_dir().join("agent.yaml"));
    let ds_doc = agent
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let ds: DaemonSet = serde_json::from_value(ds_doc.clone()).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "CRIU needs privileges"
    );
    let host_paths: BTreeSet<String> = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.host_path.map(|h| h.path))
        .collect();
    // Checkpoints, the API socket, and CRI-O's image store for Direct-mode imports.
    for p in [
        "/var/lib/kubelet/checkpoints",
        "/run/ms2m",
        "/var/lib/containers/storage",
        "/run/containers/storage",
        "/etc/containers",
    ] {
        assert!(
            host_paths.contains(p),
            "host path {p} missing: {host_paths:?}"
        );
    }
    // The port the shim's discovery uses.
    let port = c.ports.as_ref().unwrap()[0].container_port;
    assert_eq!(
        port,
        i32::from(ms2m_shim::controller::AgentDiscovery::default().port)
    );
    let labels = ds.metadata.labels.unwrap();
    let sel = ms2m_shim::controller::AgentDiscovery::default().selector;
    let (k, v) = sel.split_once('=').unwrap();
    assert_eq!(
        labels.get(k).map(String::as_str),
        Some(v),
        "discovery selector matches the agents"
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = &docs(&deploy_dir().join("kustomization.yaml"))[0];
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present);
}

#[test]
fn the_example_migration_is_valid() {
    let doc = &docs(&deploy_dir().join("examples/statefulmigration.yaml"))[0];
    let m: StatefulMigration = serde_json::from_value(doc.clone()).unwrap();
    m.spec.validate().unwrap();
    assert_eq!(doc["apiVersion"], "migration.ms2m.io/v1alpha1");
}

#[test]
fn the_containerd_patch_switches_the_store_and_mounts_the_socket() {
    let doc = &docs(&deploy_dir().join("examples/agent-containerd-patch.yaml"))[0];
    let ds: DaemonSet = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(ds.metadata.name.as_deref(), Some("ms2m-agent"));
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.name, "agent", "patches the agent container by name");
    let env = c.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "MS2M_AGENT_IMAGE_STORE" && e.value.as_deref() == Some("containerd"))
    );
    let socket = "/run/containerd/containerd.sock";
    assert!(
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.mount_path == socket)
    );
    assert!(
        pod.volumes
            .unwrap()
            .iter()
            .any(|v| v.host_path.as_ref().is_some_and(|h| h.path == socket))
    );
}
