//! A checkpoint imported into a node's image store as a checkpoint image, on the real
//! tools: a real runc+CRIU checkpoint into a private containers-storage through
//! `POST /v1/images` (checked with skopeo, read back to the identical tree); a Direct
//! transfer that imports on the target; a private containerd through the API and the
//! `ms2m-agent import` CLI (checked with ctr); and the API's refusals.

mod agent_common;

use std::process::Command;

use agent_common::{Agent, AgentOptions, COUNTER, Resp, copy_tree, eventually};
use ms2m_agent::config::Overrides;
use ms2m_agent::image_store::StoreKind;
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::env;
use ms2m_tests::image_store::{PrivateContainerd, PrivateStorage};
use ms2m_tests::transfer::{agent_binary, synthetic_checkpoint, tree_listing};
use serde_json::{Value, json};

const CRIO_NAME: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";

fn storage_agent(storage: &PrivateStorage, tcp: bool) -> Agent {
    Agent::start(AgentOptions {
        tcp,
        overrides: Overrides {
            image_store: Some(StoreKind::ContainersStorage),
            containers_storage: Some(storage.spec.clone()),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn expect_error(r: &Resp, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.code(), code, "{}", r.body);
    r.json()["error"]["message"].as_str().unwrap().to_string()
}

/// No `ms2m-import-*` layout is left in the agent's work directory.
fn assert_no_layouts(agent: &Agent) {
    let left: Vec<String> = std::fs::read_dir(agent.config.work_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ms2m-import-"))
        .collect();
    assert!(left.is_empty(), "import layouts left behind: {left:?}");
}

fn delete_image(agent: &Agent, reference: &str) -> Value {
    let r = agent.call("DELETE", &format!("/v1/images?reference={reference}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn real_checkpoint_imports_into_containers_storage() {
    let storage = PrivateStorage::new();
    let agent = storage_agent(&storage, false);
    let work = tempfile::tempdir().unwrap();
    let src = Bundle::busybox(&work.path().join("src"), &["sh", "-c", COUNTER]);
    let image = agent.images_dir().join("busybox");
    copy_tree(&src.rootfs(), &image);
    let id = env::unique("ms2m-imp");
    let source = Container::run(&src, &id);
    eventually(10, "the counter to write", || {
        std::fs::read_to_string(src.rootfs().join("count"))
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    let ck = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "runc", "container_id": id, "checkpoint_id": "imp-ck",
                "rootfs_image": image}),
    );
    assert_eq!(ck["status"], "succeeded", "{ck}");
    drop(source);
    let info = agent.call("GET", "/v1/checkpoints/imp-ck", None).json();
    let name = info["container"]["name"].as_str().unwrap().to_string();

    let reference = "localhost/ms2m/counter:ckpt-1";
    let job = agent.run_job(
        "/v1/images",
        &json!({"checkpoint_id": "imp-ck", "reference": reference}),
    );
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "image_import");
    let res = &job["result"];
    assert_eq!(res["reference"], reference, "{res}");
    assert_eq!(res["store"], "containers-storage");
    assert_eq!(res["checkpoint_id"], "imp-ck");
    assert!(res["elapsed_ms"].is_u64(), "{res}");
    let image_id = res["image_id"].as_str().unwrap();
    assert!(image_id.starts_with("sha256:"), "{res}");
    assert_no_layouts(&agent);

    // The store has it under the reference, with the checkpoint annotations a push
    // gives, uncompressed layers, and the id we reported.
    let inspected = storage
        .inspect(reference, false)
        .expect("image in the store");
    assert_eq!(inspected["Digest"], res["manifest_digest"], "{inspected}");
    assert!(!inspected["Layers"].as_array().unwrap().is_empty());
    let manifest = storage.inspect(reference, true).unwrap();
    assert_eq!(
        manifest["annotations"][CRIO_NAME],
        name.as_str(),
        "{manifest}"
    );
    assert_eq!(
        manifest["annotations"]["org.criu.checkpoint.container.name"],
        name.as_str()
    );
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"], "application/vnd.oci.image.layer.v1.tar",
            "{l}"
        );
    }
    assert_eq!(storage.image_ids(), vec![image_id[7..].to_string()]);

    // What the store holds is the checkpoint, file for file.
    let back = work.path().join("back");
    std::fs::create_dir_all(&back).unwrap();
    storage.copy_to_layout(reference, &back.join("layout"));
    ms2m_image_format::read_oci_layout(back.join("layout"), back.join("tree")).unwrap();
    assert_eq!(
        tree_listing(&agent.checkpoints_dir().join("imp-ck")),
        tree_listing(&back.join("tree"))
    );

    // Removal (the shim's rollback) is idempotent.
    let del = delete_image(&agent, reference);
    assert_eq!(
        del,
        json!({"reference": reference, "store": "containers-storage", "removed": true})
    );
    assert!(storage.inspect(reference, false).is_none());
    assert_eq!(delete_image(&agent, reference)["removed"], false);
    eprintln!(
        "figures: real checkpoint of {} bytes imported in {} ms (job {} ms)",
        ck["result"]["size_bytes"], res["elapsed_ms"], job["duration_ms"]
    );
}

#[test]
fn direct_send_imports_on_the_target() {
    let storage = PrivateStorage::new();
    let source = Agent::start(AgentOptions::default());
    let target = storage_agent(&storage, true);
    synthetic_checkpoint(
        &source.checkpoints_dir().join("syn"),
        "direct-counter",
        3 << 20,
    );
    let url = format!("http://{}", target.tcp.unwrap());
    let reference = "localhost/ms2m/direct:ckpt-2";

    let sent = source.run_job(
        "/v1/direct/sends",
        &json!({"checkpoint_id": "syn", "target": url, "target_checkpoint_id": "syn-recv",
                "import_reference": reference}),
    );
    assert_eq!(sent["status"], "succeeded", "{sent}");
    let imported = &sent["result"]["received"]["imported"];
    assert_eq!(imported["reference"], reference, "{sent}");
    assert_eq!(imported["store"], "containers-storage");
    assert!(
        imported["image_id"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    // The target's own job reports it too, after an `importing` phase.
    let recv = target
        .call("GET", "/v1/jobs?kind=direct_receive", None)
        .json();
    let job = &recv["jobs"][0];
    assert_eq!(job["status"], "succeeded", "{recv}");
    assert_eq!(job["phase"], "importing", "{recv}");
    assert_eq!(job["result"]["imported"], *imported);
    assert_eq!(job["result"]["checkpoint_id"], "syn-recv");
    // The checkpoint is stored and the image is in the target's store.
    assert!(
        target
            .checkpoints_dir()
            .join("syn-recv/checkpoint/pages-1.img")
            .is_file()
    );
    let inspected = storage
        .inspect(reference, false)
        .expect("image in the store");
    assert_eq!(inspected["Digest"], imported["manifest_digest"]);
    let manifest = storage.inspect(reference, true).unwrap();
    assert_eq!(manifest["annotations"][CRIO_NAME], "direct-counter");
    assert_no_layouts(&target);

    // Without `import_reference` the answer has no `imported`.
    let plain = source.run_job(
        "/v1/direct/sends",
        &json!({"checkpoint_id": "syn", "target": url, "target_checkpoint_id": "syn-plain"}),
    );
    assert_eq!(plain["status"], "succeeded", "{plain}");
    assert!(
        plain["result"]["received"].get("imported").is_none(),
        "{plain}"
    );

    // A target whose import fails answers an error; the received checkpoint stays.
    // (Another archive: the same one would be the same image, and containers-storage
    // removes an image with all its names.)
    synthetic_checkpoint(
        &source.checkpoints_dir().join("syn2"),
        "direct-counter",
        1 << 20,
    );
    let broken = Agent::start(AgentOptions {
        tcp: true,
        overrides: Overrides {
            containers_storage: Some(storage.spec.clone()),
            skopeo_path: Some("/nonexistent/skopeo".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    let failed = source.run_job(
        "/v1/direct/sends",
        &json!({"checkpoint_id": "syn2", "target": format!("http://{}", broken.tcp.unwrap()),
                "target_checkpoint_id": "syn-kept", "import_reference": "localhost/ms2m/x:y"}),
    );
    assert_eq!(failed["status"], "failed", "{failed}");
    let msg = failed["error"]["message"].as_str().unwrap();
    assert!(msg.contains("image_store_error"), "{msg}");
    assert!(msg.contains("stays stored"), "{msg}");
    assert!(
        broken
            .checkpoints_dir()
            .join("syn-kept/checkpoint/pages-1.img")
            .is_file()
    );
    let recv = broken
        .call("GET", "/v1/jobs?kind=direct_receive", None)
        .json();
    assert_eq!(
        recv["jobs"][0]["error"]["code"], "image_store_error",
        "{recv}"
    );
    assert_eq!(recv["jobs"][0]["error"]["phase"], "importing", "{recv}");
    assert_no_layouts(&broken);
    // The import can be retried from the stored checkpoint (here on the working agent).
    let stored = broken.checkpoints_dir().join("syn-kept");
    copy_tree(&stored, &target.checkpoints_dir().join("syn-kept"));
    let retried = target.run_job(
        "/v1/images",
        &json!({"checkpoint_id": "syn-kept", "reference": "localhost/ms2m/x:y"}),
    );
    assert_eq!(retried["status"], "succeeded", "{retried}");
    for r in [reference, "localhost/ms2m/x:y"] {
        assert_eq!(delete_image(&target, r)["removed"], true);
    }
}

fn ctr_lists(c: &PrivateContainerd, reference: &str) -> Option<String> {
    c.images()
        .into_iter()
        .find(|(name, _)| name == reference)
        .map(|(_, digest)| digest)
}

#[test]
fn containerd_import_through_the_api_and_the_cli() {
    let containerd = PrivateContainerd::start();
    let agent = Agent::start(AgentOptions {
        overrides: Overrides {
            image_store: Some(StoreKind::Containerd),
            containerd_address: Some(containerd.address.clone()),
            containerd_namespace: Some("k8s.io".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    synthetic_checkpoint(&agent.checkpoints_dir().join("ctd"), "ctd-counter", 2 << 20);
    let reference = "localhost/ms2m/counter:ckpt-3";
    let job = agent.run_job(
        "/v1/images",
        &json!({"checkpoint_id": "ctd", "reference": reference}),
    );
    assert_eq!(job["status"], "succeeded", "{job}");
    let res = &job["result"];
    assert_eq!(res["store"], "containerd", "{res}");
    assert_eq!(res["reference"], reference);
    let digest = ctr_lists(&containerd, reference)
        .unwrap_or_else(|| panic!("ctr images ls lacks {reference}: {:?}", containerd.images()));
    assert_eq!(digest, res["manifest_digest"].as_str().unwrap());
    let manifest = containerd.content_json(&digest);
    assert_eq!(
        manifest["annotations"][CRIO_NAME], "ctd-counter",
        "{manifest}"
    );
    assert_eq!(manifest["config"]["digest"], res["image_id"], "{manifest}");
    assert_no_layouts(&agent);

    // The CLI, on the node without the daemon, into the same containerd.
    let cli_ref = "localhost/ms2m/cli:ckpt-4";
    let out = Command::new(agent_binary())
        .arg("import")
        .arg(agent.checkpoints_dir().join("ctd"))
        .arg(cli_ref)
        .args(["--store", "containerd", "--containerd-address"])
        .arg(&containerd.address)
        .args(["--namespace", "k8s.io", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ms2m-agent import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["reference"], cli_ref, "{cli}");
    assert_eq!(cli["store"], "containerd");
    // Same archive, same encoder settings: the same image.
    assert_eq!(cli["manifest_digest"], res["manifest_digest"]);
    assert!(ctr_lists(&containerd, cli_ref).is_some());

    // Removal is idempotent.
    let del = delete_image(&agent, reference);
    assert_eq!(
        del,
        json!({"reference": reference, "store": "containerd", "removed": true})
    );
    assert!(ctr_lists(&containerd, reference).is_none());
    assert_eq!(delete_image(&agent, reference)["removed"], false);
    assert_eq!(delete_image(&agent, cli_ref)["removed"], true);
}

#[test]
fn bad_requests_get_clear_errors() {
    let storage = PrivateStorage::new();
    let agent = storage_agent(&storage, true);
    synthetic_checkpoint(&agent.checkpoints_dir().join("syn"), "syn", 1 << 20);
    let post = |body: &str| agent.call("POST", "/v1/images", Some(body));

    // References a tool would read as options, or with whitespace or control
    // characters, stop at the parser (issue 13: `ctr` received `--sync.x/x:t`).
    for reference in [
        "--sync.x/x:t",
        "-localhost/a:t",
        "localhost/a:-t",
        "localhost/a b:t",
        "localhost/a:t\n--all",
        "localhost/a:t\u{1b}",
    ] {
        let body = json!({"checkpoint_id": "syn", "reference": reference}).to_string();
        let m = expect_error(&post(&body), 400, "invalid_request");
        assert!(
            m.contains("reference") || m.contains("registry"),
            "{reference:?}: {m}"
        );
        let d = agent.call(
            "DELETE",
            &format!(
                "/v1/images?reference={}",
                reference
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect::<String>()
            ),
            None,
        );
        expect_error(&d, 400, "invalid_request");
    }

    let m = expect_error(
        &post(r#"{"checkpoint_id": "syn", "reference": "Not A Reference"}"#),
        400,
        "invalid_request",
    );
    assert!(m.contains("Not A Reference"), "{m}");
    let m = expect_error(
        &post(
            r#"{"checkpoint_id": "syn", "reference": "localhost/a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}"#,
        ),
        400,
        "invalid_request",
    );
    assert!(m.contains("tag"), "{m}");
    let m = expect_error(
        &post(r#"{"checkpoint_id": "nope", "reference": "localhost/a:b"}"#),
        404,
        "not_found",
    );
    assert!(m.contains("nope"), "{m}");
    expect_error(&post(r#"{"checkpoint_id": "#), 400, "malformed_json");
    let m = expect_error(
        &post(r#"{"checkpoint_id": "syn", "reference": "localhost/a:b", "store": "x"}"#),
        400,
        "invalid_request",
    );
    assert!(m.contains("store"), "{m}");
    expect_error(&post(r#"{"checkpoint_id": "syn"}"#), 400, "invalid_request");
    expect_error(
        &post(r#"{"checkpoint_id": "../x", "reference": "localhost/a:b"}"#),
        400,
        "invalid_request",
    );

    // DELETE: absent is fine, a missing or bad reference is not.
    assert_eq!(
        delete_image(&agent, "localhost/ms2m/absent:x"),
        json!({"reference": "localhost/ms2m/absent:x", "store": "containers-storage", "removed": false})
    );
    let by_digest = format!("localhost/ms2m/absent@sha256:{}", "ab".repeat(32));
    assert_eq!(delete_image(&agent, &by_digest)["removed"], false);
    expect_error(
        &agent.call("DELETE", "/v1/images", None),
        400,
        "invalid_request",
    );
    expect_error(
        &agent.call("DELETE", "/v1/images?reference=Bad%20Ref", None),
        400,
        "invalid_request",
    );

    // Direct: a bad `import_reference` is refused before anything is sent, and the
    // receiving routes check `?import=` (the preflight too, so a sender learns early).
    let url = format!("http://{}", agent.tcp.unwrap());
    let r = agent.call(
        "POST",
        "/v1/direct/sends",
        Some(
            &json!({"checkpoint_id": "syn", "target": url, "import_reference": "BAD"}).to_string(),
        ),
    );
    let m = expect_error(&r, 400, "invalid_request");
    assert!(m.contains("BAD"), "{m}");
    let token = agent.token.clone();
    let pre = agent.call_tcp(
        "GET",
        "/v1/direct/receive/new-id?import=Bad%20Ref",
        Some(&token),
        None,
    );
    expect_error(&pre, 400, "invalid_request");
    let pre = agent.call_tcp(
        "GET",
        "/v1/direct/receive/new-id?imprt=x",
        Some(&token),
        None,
    );
    expect_error(&pre, 400, "invalid_request");
    let ok = agent.call_tcp(
        "GET",
        "/v1/direct/receive/new-id?import=localhost%2Fms2m%2Fc%3Aok",
        Some(&token),
        None,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    // No job was started by any of these.
    let jobs = agent.call("GET", "/v1/jobs", None).json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "{jobs}");
    assert!(storage.image_ids().is_empty(), "{:?}", storage.image_ids());
}

#[test]
fn a_cancelled_import_leaves_no_layout() {
    let storage = PrivateStorage::new();
    let agent = storage_agent(&storage, false);
    synthetic_checkpoint(&agent.checkpoints_dir().join("big"), "big", 256 << 20);
    let r = agent.call(
        "POST",
        "/v1/images",
        Some(r#"{"checkpoint_id": "big", "reference": "localhost/ms2m/big:c"}"#),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let work = agent.config.work_dir();
    // Cancel while the layout exists (being written, or being copied by skopeo).
    eventually(30, "the import layout to appear", || {
        std::fs::read_dir(&work)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("ms2m-import-"))
            .then_some(())
    });
    let c = agent.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.json()["status"], "cancelled", "{}", c.body);
    // A layout being written is finished by its thread, then removed.
    eventually(60, "the layout to be removed", || {
        let left = std::fs::read_dir(&work)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("ms2m-import-"));
        (!left).then_some(())
    });
    // The checkpoint is free again.
    let del = agent.call("DELETE", "/v1/checkpoints/big", None);
    assert_eq!(del.status, 204, "{}", del.body);
}
