//! deploy/ is checked against the code: the CRD against the Rust types, RBAC against the
//! controller's API call table, and every manifest against the Kubernetes types.
//!
//! Schema validation is offline: each object `kubectl kustomize` builds is read into the
//! k8s-openapi type of its kind and written back. Those types are generated from
//! Kubernetes' OpenAPI schema (the `v1_33` feature), so a missing required field or a
//! wrong type fails to read, and a field the schema doesn't have at that place (a typo, a
//! wrong level) is dropped and shows up as a difference. Not checked: enum values and
//! string formats inside fields (the schema types them as plain strings). kubeconform
//! and the like need the schemas downloaded; the Rust types carry them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ms2m_shim::controller::api_calls;
use ms2m_shim::crd::StatefulMigration;
use serde::Deserialize;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn base_dir() -> PathBuf {
    deploy_dir().join("base")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(base_dir())
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
    let mut diffs = Vec::new();
    differences(doc, &back, String::new(), &mut diffs);
    assert!(
        diffs.is_empty(),
        "{what}: fields the Kubernetes schema doesn't have there, or of another type: {diffs:#?}"
    );
    typed
}

/// JSON pointers where `a` and `b` differ; numbers compare by value (YAML's `0` and the
/// schema's `0.0` are one number).
fn differences(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                let here = format!("{at}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => differences(v, w, here, out),
                    (Some(_), None) => out.push(format!("{here}: dropped")),
                    (None, Some(_)) => out.push(format!("{here}: added")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(v, w, format!("{at}/{i}"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{at}: {a} became {b}")),
    }
}

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let on_disk = std::fs::read_to_string(base_dir().join("crd.yaml")).unwrap();
    assert!(
        on_disk == ms2m_shim::crd::crd_yaml(),
        "deploy/base/crd.yaml drifted from the Rust types: run `cargo run -p ms2m-shim -- crdgen > deploy/base/crd.yaml`"
    );
}

/// Checks one object against its kind's schema; returns the kind.
fn validate(doc: &Value, what: &str) -> String {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let what = format!("{what}: {kind} {}", doc["metadata"]["name"]);
    match kind.as_str() {
        "Namespace" => drop(round_trip::<Namespace>(doc, &what)),
        "ServiceAccount" => drop(round_trip::<ServiceAccount>(doc, &what)),
        "ClusterRole" => drop(round_trip::<ClusterRole>(doc, &what)),
        "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(doc, &what)),
        "ConfigMap" => drop(round_trip::<ConfigMap>(doc, &what)),
        "Deployment" => drop(round_trip::<Deployment>(doc, &what)),
        "DaemonSet" => drop(round_trip::<DaemonSet>(doc, &what)),
        "NetworkPolicy" => drop(round_trip::<NetworkPolicy>(doc, &what)),
        "CustomResourceDefinition" => drop(round_trip::<CustomResourceDefinition>(doc, &what)),
        other => panic!("{what}: no check for kind {other:?}"),
    }
    kind
}

#[test]
fn every_manifest_parses_into_kubernetes_types() {
    let mut kinds = BTreeSet::new();
    for path in manifests() {
        for doc in docs(&path) {
            kinds.insert(validate(&doc, &path.display().to_string()));
        }
    }
    for k in [
        "CustomResourceDefinition",
        "ClusterRole",
        "Deployment",
        "DaemonSet",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(k), "deploy/base has no {k}");
    }
}

/// `kubectl kustomize <dir>`, as YAML documents.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("running kubectl (install it with scripts/setup.sh: kubectl >= 1.21 builds kustomize components): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `to` as a path relative to the directory `from` (both absolute once canonical).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let to = to.canonicalize().unwrap();
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c);
    }
    rel
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn agent_container(objects: &[Value]) -> Value {
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0].clone()
}

fn env_names(container: &Value) -> BTreeSet<String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Every variant a user can install: the base, each overlay, and each component on its
/// own in an overlay outside deploy/ (as a user's overlay would use it).
#[test]
fn every_kustomize_variant_builds_and_matches_the_kubernetes_schemas() {
    let base = kustomize(&base_dir());
    let base_kinds: BTreeSet<String> = base.iter().map(|d| validate(d, "base")).collect();
    assert!(base_kinds.contains("NetworkPolicy") && base_kinds.contains("DaemonSet"));
    let base_env = env_names(&agent_container(&base));

    let overlays = subdirs(&deploy_dir().join("overlays"));
    assert!(overlays.len() >= 2, "overlays: {overlays:?}");
    for overlay in &overlays {
        let objects = kustomize(overlay);
        let what = overlay.display().to_string();
        let kinds: BTreeSet<String> = objects.iter().map(|d| validate(d, &what)).collect();
        assert_eq!(kinds, base_kinds, "{what} adds or loses kinds");
        assert_eq!(objects.len(), base.len(), "{what}");
    }
    let example = kustomize(&deploy_dir().join("overlays/example"));
    let images: BTreeSet<String> = example
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("DaemonSet" | "Deployment")))
        .map(|o| {
            o["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        images,
        BTreeSet::from([
            "registry.example.com/ms2m/ms2m-agent:0.1.0".to_owned(),
            "registry.example.com/ms2m/ms2m-shim:0.1.0".to_owned()
        ]),
        "the example overlay names the images"
    );

    let components = subdirs(&deploy_dir().join("components"));
    assert!(components.len() >= 2, "components: {components:?}");
    for component in &components {
        // kustomize refuses absolute paths: the overlay names base and component relative
        // to itself, as a user's would.
        let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let here = work.path().canonicalize().unwrap();
        std::fs::write(
            work.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{}]\ncomponents: [{}]\n",
                relative(&here, &base_dir()).display(),
                relative(&here, component).display()
            ),
        )
        .unwrap();
        let objects = kustomize(work.path());
        let what = component.display().to_string();
        for d in &objects {
            validate(d, &what);
        }
        let added: BTreeSet<String> = env_names(&agent_container(&objects))
            .difference(&base_env)
            .cloned()
            .collect();
        assert!(!added.is_empty(), "{what} changes no agent setting");
    }
}

#[test]
fn the_kind_overlay_runs_containerd_with_self_signed_kubelet_certificates() {
    let objects = kustomize(&deploy_dir().join("overlays/kind"));
    let c = agent_container(&objects);
    let env = env_names(&c);
    for e in [
        "MS2M_AGENT_IMAGE_STORE",
        "MS2M_AGENT_KUBELET_CA_FILE",
        "MS2M_AGENT_KUBELET_TLS_SERVER_NAME",
    ] {
        assert!(env.contains(e), "{e} missing: {env:?}");
    }
    let server_name = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MS2M_AGENT_KUBELET_TLS_SERVER_NAME")
        .unwrap();
    assert_eq!(
        server_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "kubelet certificates name the node"
    );
    let ca = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MS2M_AGENT_KUBELET_CA_FILE")
        .unwrap()["value"]
        .clone();
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == ca),
        "the kubelet CA file {ca} is mounted"
    );
}

#[test]
fn only_the_shim_and_peer_agents_reach_the_agent_port() {
    let doc = &docs(&base_dir().join("networkpolicy.yaml"))[0];
    let np: NetworkPolicy = serde_json::from_value(doc.clone()).unwrap();
    let spec = np.spec.unwrap();
    let sel = ms2m_shim::controller::AgentDiscovery::default().selector;
    let (k, v) = sel.split_once('=').unwrap();
    assert_eq!(
        spec.pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|l| l.get(k))
            .map(String::as_str),
        Some(v),
        "the policy selects the agents"
    );
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 1, "one rule, nothing else admitted");
    let from: BTreeSet<String> = ingress[0]
        .from
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(
                p.namespace_selector.is_none() && p.ip_block.is_none(),
                "{p:?}"
            );
            p.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[k]
                .clone()
        })
        .collect();
    assert_eq!(
        from,
        BTreeSet::from(["ms2m-agent".to_owned(), "ms2m-shim".to_owned()])
    );
    let ports = ingress[0].ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    let agent = docs(&base_dir().join("agent.yaml"));
    let ds = agent.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let port = &ds["spec"]["template"]["spec"]["containers"][0]["ports"][0];
    assert_eq!(
        serde_json::to_value(&ports[0].port).unwrap(),
        port["name"],
        "the policy opens the agents' API port"
    );
    let shim = docs(&base_dir().join("shim.yaml"));
    assert_eq!(
        shim[0]["spec"]["template"]["metadata"]["labels"][k], "ms2m-shim",
        "the shim's pods carry the label the policy admits"
    );
}

#[test]
fn the_shim_role_grants_exactly_the_calls_the_controller_makes() {
    let rbac = docs(&base_dir().join("rbac.yaml"));
    let role: ClusterRole = rbac
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "ms2m-shim")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .expect("ClusterRole ms2m-shim in deploy/base/rbac.yaml");
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
    let shim = docs(&base_dir().join("shim.yaml"));
    let sa = shim[0]["spec"]["template"]["spec"]["serviceAccountName"].clone();
    assert_eq!(
        binding["subjects"][0]["name"], sa,
        "the Deployment runs as the bound ServiceAccount"
    );
}

#[test]
fn the_agent_daemonset_has_what_checkpointing_needs() {
    let agent = docs(&base_dir().join("agent.yaml"));
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
    let k = &docs(&base_dir().join("kustomization.yaml"))[0];
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
    let doc = &docs(&deploy_dir().join("components/containerd/agent-patch.yaml"))[0];
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

/// `bash scripts/images.sh` (what `make images` runs) with `PATH` holding only `dir`.
fn images_script(path: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bash = ["/usr/bin/bash", "/bin/bash"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("bash");
    let out = std::process::Command::new(bash)
        .arg(root.join("scripts/images.sh"))
        .env_clear()
        .env("PATH", path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `make images` needs a container engine (the CI machines have none): without one it
/// stops before building anything and says what it tried; usage mistakes exit 2.
#[test]
fn make_images_fails_clearly_without_a_container_engine() {
    // A PATH with the shell tools the script uses, and no docker or podman.
    let bin = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for tool in ["sed", "grep", "tail", "head", "cat", "dirname"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(real, bin.path().join(tool)).unwrap();
    }

    let (code, err) = images_script(bin.path(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("REGISTRY is not set") && err.contains("usage: make images"),
        "{err}"
    );

    let (code, err) = images_script(bin.path(), &[("REGISTRY", "registry.example.com/ms2m:1.0")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("without tag or digest"), "{err}");

    let (code, err) = images_script(
        bin.path(),
        &[("REGISTRY", "registry.example.com/ms2m"), ("TAG", "a b")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a valid image tag"), "{err}");

    let (code, err) = images_script(bin.path(), &[("REGISTRY", "localhost:5000/ms2m")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("needs a container engine"), "{err}");
    assert!(err.contains("docker: not found on PATH"), "{err}");
    assert!(err.contains("podman: not found on PATH"), "{err}");
    assert!(!err.contains("building "), "nothing is built: {err}");

    // An engine that is there but cannot build (a docker client without its daemon).
    std::fs::write(
        bin.path().join("docker"),
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        bin.path().join("docker"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (code, err) = images_script(
        bin.path(),
        &[
            ("REGISTRY", "localhost:5000/ms2m"),
            ("CONTAINER_ENGINE", "docker"),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("'docker info' failed: Cannot connect to the Docker daemon"),
        "{err}"
    );
}

/// Paths under deploy/ that the README and docs/ name exist, and no doc points at
/// design notes that are not in the repository.
#[test]
fn docs_name_only_deploy_paths_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(e.unwrap().path());
    }
    let mut missing = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            !text.contains("DESIGN.md"),
            "{} refers to DESIGN.md, which is not in the repository",
            f.display()
        );
        for (i, _) in text.match_indices("deploy/") {
            if i > 0 && !b" `(['\"".contains(&text.as_bytes()[i - 1]) {
                continue;
            }
            let path: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "_./-".contains(*c))
                .collect();
            let path = path.trim_end_matches('.');
            // `deploy/overlays/<yours>` and the README's `my-cluster` are the user's copy;
            // `deploy/ms2m-shim` is kubectl's name for the Deployment.
            if text[i + path.len()..].starts_with('<')
                || path.starts_with("deploy/overlays/my-cluster")
                || path.starts_with("deploy/ms2m-")
            {
                continue;
            }
            if !root.join(path).exists() {
                missing.push(format!("{}: {path}", f.display()));
            }
        }
    }
    assert!(missing.is_empty(), "named but not there: {missing:#?}");
}
