//! The reference implementation's CRs, applied unchanged. Each file in
//! `shim/tests/reference-crs/` (one per documented field and value) must
//! 1. pass the installed CRD's schema (`deploy/base/crd.yaml`) under strict field
//!    validation, as `kubectl apply --validate=strict` checks it;
//! 2. pass the CRD's CEL rules, evaluated with kube's CEL interpreter;
//! 3. drive the controller, against the mocked API, to the first decision its
//!    `# expect:` header names (`Checkpointing`, or `Failed <reason>`), from a source pod
//!    owned as its `# source:` header says.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::fixtures::*;
use crate::crd::{
    MessageQueueConfig, StatefulMigration, StatefulMigrationSpec, StatefulMigrationStatus,
};
use crate::engine::{JobView, Phase};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference-crs")
}

/// Every CR file, by name.
fn crs() -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir())
        .expect("the reference CR directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 20, "the corpus is there ({} files)", out.len());
    out
}

fn header<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
        .unwrap_or_else(|| panic!("no `# {key}:` header"))
        .trim()
}

/// The CRD's schema with every object closed to unknown fields, which is what strict
/// field validation (kubectl's default `--validate=strict`) enforces.
fn strict_schema() -> Value {
    let crd: Value = serde_yaml::from_str(include_str!("../../../deploy/base/crd.yaml"))
        .expect("deploy/base/crd.yaml reads");
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    // The root is the API server's: apiVersion, kind and metadata are implicit there.
    if let Some(props) = schema["properties"].as_object_mut() {
        props.values_mut().for_each(close_objects);
    }
    schema
}

fn close_objects(v: &mut Value) {
    if let Some(map) = v.as_object_mut() {
        if map.contains_key("properties")
            && !map.contains_key("additionalProperties")
            && !map.contains_key("x-kubernetes-preserve-unknown-fields")
        {
            map.insert("additionalProperties".into(), json!(false));
        }
        map.values_mut().for_each(close_objects);
    } else if let Some(items) = v.as_array_mut() {
        items.iter_mut().for_each(close_objects);
    }
}

fn schema_errors(validator: &jsonschema::Validator, obj: &Value) -> Vec<String> {
    validator
        .iter_errors(obj)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_reference_cr_passes_the_crd_schema_and_its_cel_rules() {
    let validator = jsonschema::validator_for(&strict_schema()).expect("the CRD schema compiles");
    for (name, text) in crs() {
        let obj: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errors = schema_errors(&validator, &obj);
        assert!(
            errors.is_empty(),
            "{name}: the schema refuses it: {errors:?}"
        );
        StatefulMigrationSpec::validate_cel(&obj["spec"], None)
            .unwrap_or_else(|e| panic!("{name}: CEL refuses the spec: {e:?}"));
        MessageQueueConfig::validate_cel(&obj["spec"]["messageQueueConfig"], None)
            .unwrap_or_else(|e| panic!("{name}: CEL refuses messageQueueConfig: {e:?}"));
        let typed: StatefulMigration =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        typed
            .spec
            .validate()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The strictness is real: a misspelt field and a value outside an enum are refused.
#[test]
fn the_strict_schema_refuses_what_the_api_server_would() {
    let validator = jsonschema::validator_for(&strict_schema()).unwrap();
    let (_, text) = crs()
        .into_iter()
        .find(|(n, _)| n == "minimal.yaml")
        .unwrap();
    let good: Value = serde_yaml::from_str(&text).unwrap();
    for (path, value, what) in [
        (
            "/spec/identitySwapModes",
            json!("None"),
            "identitySwapModes",
        ),
        ("/spec/transferMode", json!("Carrier"), "Carrier"),
        ("/spec/messageQueueConfig/prefetch", json!(5), "prefetch"),
    ] {
        let mut bad = good.clone();
        let (parent, key) = path.rsplit_once('/').unwrap();
        bad.pointer_mut(parent).unwrap()[key] = value;
        let errors = schema_errors(&validator, &bad).join("; ");
        assert!(errors.contains(what), "{path}: {errors}");
    }
}

fn source_pod_for(name: &str, owner: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "42",
            "labels": {"app": "consumer"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner, "name": "consumer",
                "uid": "o1", "controller": true}]},
        "spec": {"nodeName": "worker-1", "containers": [{"name": "consumer", "image": "consumer:1"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.5"}
    })
}

fn ready_node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"allocatable": {"memory": "8Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// Answers the controller as an API server holding `source` would, until it writes a
/// status whose phase is not Pending; returns that status.
async fn first_decision(api: &mut ApiServerVerifier, source: Value) -> StatefulMigrationStatus {
    loop {
        let source = source.clone();
        let (method, path, body) = api
            .respond(move |method, path, _| {
                let ok = |v| Some((StatusCode::OK, v));
                match (method.as_str(), path) {
                    ("GET", p) if p.starts_with("/api/v1/namespaces/default/pods/") => ok(source),
                    ("GET", "/api/v1/nodes") => ok(json!({"apiVersion": "v1", "kind": "NodeList",
                        "metadata": {}, "items": (["worker-1", "worker-2", "worker-3"].map(ready_node))})),
                    ("GET", p) if p.starts_with("/api/v1/nodes/") => {
                        ok(ready_node(p.rsplit('/').next().unwrap()))
                    }
                    ("GET", "/api/v1/pods") => {
                        ok(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}))
                    }
                    ("GET", p) if p.contains("/statefulsets/") => ok(json!({"apiVersion": "apps/v1",
                        "kind": "StatefulSet", "metadata": {"name": "consumer"}, "spec": {"replicas": 1,
                        "selector": {}, "template": {}, "serviceName": "consumer"}})),
                    ("POST", p) if p.ends_with("/events") => None,
                    ("PUT", p) if p.ends_with("/status") => None,
                    (m, p) => panic!("unexpected {m} {p}"),
                }
            })
            .await;
        if method == Method::PUT {
            let st: StatefulMigrationStatus =
                serde_json::from_value(body["status"].clone()).unwrap();
            if st.progress.phase != Phase::Pending {
                return st;
            }
        }
        let _ = path;
    }
}

#[tokio::test]
async fn every_reference_cr_drives_the_controller_to_its_expected_first_decision() {
    for (name, text) in crs() {
        let (ctx, mut api, backends) = test_context();
        *backends.agent_nodes.lock().unwrap() =
            BTreeSet::from(["worker-1", "worker-2", "worker-3"].map(String::from));
        backends
            .checkpoint_jobs
            .lock()
            .unwrap()
            .push_back(JobView::Running);
        let mut obj: StatefulMigration = serde_yaml::from_str(&text).unwrap();
        obj.metadata.namespace = Some("default".into());
        obj.metadata.uid = Some(UID.into());
        obj.metadata.resource_version = Some("7".into());
        obj.metadata.finalizers = Some(vec![crate::crd::FINALIZER.into()]);
        let source = source_pod_for(&obj.spec.source_pod, header(&text, "source"));
        let reconcile = tokio::spawn(super::reconcile(Arc::new(obj), ctx));
        let st = tokio::time::timeout(Duration::from_secs(10), first_decision(&mut api, source))
            .await
            .unwrap_or_else(|_| panic!("{name}: no decision"));
        reconcile.abort();
        let expect = header(&text, "expect");
        let (phase, reason) = expect.split_once(' ').unwrap_or((expect, ""));
        assert_eq!(
            st.progress.phase.as_str(),
            phase,
            "{name}: {:?}",
            st.progress.failure
        );
        if !reason.is_empty() {
            let got = &st.progress.failure.as_ref().unwrap().reason;
            assert!(got.contains(reason), "{name}: {got}");
        }
        if phase == "Checkpointing" {
            // A chosen node is never the source's, and the map shape is what scripts read.
            let target = st.progress.target_node.as_deref().unwrap();
            assert_ne!(target, "worker-1", "{name}");
            let v = serde_json::to_value(&st).unwrap();
            assert!(v["phaseTimings"]["Pending"].is_string(), "{name}: {v}");
        }
    }
}
