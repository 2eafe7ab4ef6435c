//! Every route of the agent's API on a real Unix socket and TCP listener: the happy
//! paths, each bad-request case (with its JSON error), token checks on TCP, and jobs
//! cancelled or aborted mid-transfer leaving no files and no tag.

mod agent_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use agent_common::{Agent, AgentOptions, eventually};
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::env;
use serde_json::{Value, json};

/// Status of `GET /v2/<repo>/manifests/<tag>` on the shared registry.
fn manifest_status(registry: &str, repo: &str, tag: &str) -> u16 {
    let mut s = TcpStream::connect(registry).unwrap();
    write!(
        s,
        "HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {registry}\r\nAccept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn post(agent: &Agent, path: &str, body: Value) -> agent_common::Resp {
    agent.call("POST", path, Some(&body.to_string()))
}

fn expect_error(r: &agent_common::Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.code(), code, "{}", r.body);
    assert!(
        !r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "error without a message: {}",
        r.body
    );
}

#[test]
fn probes_and_metrics() {
    let agent = Agent::start(AgentOptions::default());
    let h = agent.call("GET", "/healthz", None);
    assert_eq!((h.status, h.json()["status"].clone()), (200, json!("ok")));
    let r = agent.call("GET", "/readyz", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["criu_version"].as_str().unwrap().starts_with('4'),
        "{}",
        r.body
    );
    let m = agent.call_with(
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
        None,
    );
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().contains("openmetrics"));
    assert!(
        m.body
            .contains("ms2m_agent_jobs_in_flight{kind=\"push\"} 0"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("ms2m_agent_bytes_moved_total{kind=\"checkpoint\"} 0"),
        "{}",
        m.body
    );
}

#[test]
fn bad_requests_get_json_errors() {
    let agent = Agent::start(AgentOptions::default());
    let work = tempfile::tempdir().unwrap();
    ms2m_tests::transfer::synthetic_checkpoint(
        &agent.checkpoints_dir().join("synth"),
        "synth",
        1 << 20,
    );

    expect_error(
        &agent.call("POST", "/v1/checkpoints", Some("{\"backend\": ")),
        400,
        "malformed_json",
    );
    let r = post(
        &agent,
        "/v1/checkpoints",
        json!({"backend": "runc", "container_id": "x", "leave_runing": true}),
    );
    expect_error(&r, 400, "invalid_request");
    assert!(r.body.contains("leave_runing"), "{}", r.body);
    expect_error(
        &post(
            &agent,
            "/v1/checkpoints",
            json!({"backend": "crio", "container_id": "x"}),
        ),
        400,
        "invalid_request",
    );
    expect_error(
        &post(&agent, "/v1/checkpoints", json!({"backend": "runc"})),
        400,
        "invalid_request",
    );
    expect_error(
        &post(
            &agent,
            "/v1/checkpoints",
            json!({"backend": "runc", "container_id": "../etc"}),
        ),
        400,
        "invalid_request",
    );
    expect_error(
        &agent.call_with(
            "POST",
            "/v1/checkpoints",
            &[("Content-Type", "text/plain")],
            Some(b"{}"),
        ),
        415,
        "unsupported_media_type",
    );
    let big = format!(
        "{{\"backend\": \"runc\", \"container_id\": \"{}\"}}",
        "a".repeat(100 * 1024)
    );
    expect_error(
        &agent.call("POST", "/v1/checkpoints", Some(&big)),
        413,
        "payload_too_large",
    );
    expect_error(
        &post(
            &agent,
            "/v1/checkpoints",
            json!({"backend": "runc", "container_id": env::unique("nosuch")}),
        ),
        404,
        "container_not_found",
    );
    expect_error(
        &post(
            &agent,
            "/v1/checkpoints",
            json!({"backend": "kubelet", "namespace": "Default!", "pod": "p", "container": "c"}),
        ),
        400,
        "invalid_request",
    );

    // Paths outside the agent's directories.
    let outside = work.path().join("rootfs");
    std::fs::create_dir_all(&outside).unwrap();
    let r = post(
        &agent,
        "/v1/restores",
        json!({"checkpoint_id": "synth", "container_id": "r1", "rootfs": outside}),
    );
    expect_error(&r, 403, "path_not_allowed");
    let r = post(
        &agent,
        "/v1/restores",
        json!({"checkpoint_id": "synth", "container_id": "r1", "rootfs": "/etc"}),
    );
    expect_error(&r, 403, "path_not_allowed");
    let r = post(
        &agent,
        "/v1/restores",
        json!({"checkpoint_id": "synth", "container_id": "r1", "netns_path": "/etc/passwd"}),
    );
    expect_error(&r, 403, "path_not_allowed");
    expect_error(
        &post(
            &agent,
            "/v1/restores",
            json!({"checkpoint_id": "nosuch", "container_id": "r1"}),
        ),
        404,
        "not_found",
    );

    // Unknown things, wrong methods, bad queries.
    expect_error(
        &agent.call("GET", "/v1/jobs/job-0000000000000000", None),
        404,
        "not_found",
    );
    expect_error(
        &agent.call("DELETE", "/v1/jobs/job-0000000000000000", None),
        404,
        "not_found",
    );
    expect_error(
        &agent.call("GET", "/v1/jobs/x?wait=1000", None),
        400,
        "invalid_request",
    );
    expect_error(
        &agent.call("GET", "/v1/jobs?status=bogus", None),
        400,
        "invalid_request",
    );
    expect_error(&agent.call("GET", "/v2/nothing", None), 404, "not_found");
    expect_error(
        &agent.call("PUT", "/v1/jobs", None),
        405,
        "method_not_allowed",
    );
    expect_error(
        &agent.call("GET", "/v1/checkpoints/nosuch", None),
        404,
        "not_found",
    );
    expect_error(
        &agent.call("DELETE", "/v1/checkpoints/nosuch", None),
        404,
        "not_found",
    );
    expect_error(
        &agent.call("GET", "/v1/containers/nosuch-ctr", None),
        404,
        "container_not_found",
    );
    expect_error(
        &agent.call("DELETE", "/v1/containers/nosuch-ctr", None),
        404,
        "container_not_found",
    );
    expect_error(
        &post(
            &agent,
            "/v1/pushes",
            json!({"checkpoint_id": "synth", "image": "UPPER CASE!"}),
        ),
        400,
        "invalid_request",
    );
    expect_error(
        &post(
            &agent,
            "/v1/pushes",
            json!({"checkpoint_id": "synth", "image": "127.0.0.1:5000/x:y", "compression": "lz4"}),
        ),
        400,
        "invalid_request",
    );
    expect_error(
        &post(
            &agent,
            "/v1/pulls",
            json!({"image": "127.0.0.1:5000/x:y", "checkpoint_id": "synth"}),
        ),
        409,
        "conflict",
    );
    expect_error(
        &post(
            &agent,
            "/v1/direct/sends",
            json!({"checkpoint_id": "synth", "target": "ftp://x"}),
        ),
        400,
        "invalid_request",
    );

    // Direct receive: preflight, content type, and a stream that is not one.
    assert_eq!(
        agent
            .call("GET", "/v1/direct/receive/fresh-id", None)
            .status,
        200
    );
    expect_error(
        &agent.call("GET", "/v1/direct/receive/synth", None),
        409,
        "conflict",
    );
    expect_error(
        &agent.call_with("PUT", "/v1/direct/receive/fresh-id", &[], Some(b"{}")),
        415,
        "unsupported_media_type",
    );
    let garbage = agent.call_with(
        "PUT",
        "/v1/direct/receive/fresh-id",
        &[("Content-Type", "application/vnd.ms2m.direct.v1")],
        Some(&[0xffu8; 64]),
    );
    assert!(
        matches!(garbage.status, 400 | 422),
        "{} {}",
        garbage.status,
        garbage.body
    );
    assert!(
        !agent.checkpoints_dir().join("fresh-id").exists(),
        "a failed receive left files"
    );

    // Checkpoints: list, inspect, delete.
    let list = agent.call("GET", "/v1/checkpoints", None).json();
    assert_eq!(list["checkpoints"][0]["checkpoint_id"], "synth", "{list}");
    let info = agent.call("GET", "/v1/checkpoints/synth", None);
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.json()["container"]["name"], "synth");
    assert_eq!(info.json()["memory_bytes"], 1 << 20);
    assert_eq!(
        agent.call("DELETE", "/v1/checkpoints/synth", None).status,
        204
    );
    expect_error(
        &agent.call("GET", "/v1/checkpoints/synth", None),
        404,
        "not_found",
    );
}

#[test]
fn tcp_listener_requires_the_token() {
    let agent = Agent::start(AgentOptions {
        tcp: true,
        ..Default::default()
    });
    expect_error(
        &agent.call_tcp("GET", "/v1/jobs", None, None),
        401,
        "unauthorized",
    );
    expect_error(
        &agent.call_tcp("GET", "/v1/jobs", Some("wrong"), None),
        401,
        "unauthorized",
    );
    expect_error(
        &agent.call_tcp(
            "POST",
            "/v1/checkpoints",
            None,
            Some("{\"backend\":\"runc\",\"container_id\":\"x\"}"),
        ),
        401,
        "unauthorized",
    );
    expect_error(
        &agent.call_tcp("GET", "/metrics", None, None),
        401,
        "unauthorized",
    );
    expect_error(
        &agent.call_tcp("GET", "/nowhere", None, None),
        401,
        "unauthorized",
    );
    let token = agent.token.clone();
    let ok = agent.call_tcp("GET", "/v1/jobs", Some(&token), None);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["jobs"], json!([]));
    // Kubelet probes carry no token.
    assert_eq!(agent.call_tcp("GET", "/healthz", None, None).status, 200);
    assert_eq!(agent.call_tcp("GET", "/readyz", None, None).status, 200);
}

#[test]
fn checkpoint_job_lifecycle_conflicts_and_purge() {
    let agent = Agent::start(AgentOptions::default());
    let work = tempfile::tempdir().unwrap();
    let b = Bundle::busybox(
        &work.path().join("b"),
        &["sh", "-c", "while true; do sleep 0.1; done"],
    );
    let id = env::unique("ms2m-agapi");
    let c = Container::run(&b, &id);

    let st = agent.call("GET", &format!("/v1/containers/{id}"), None);
    assert_eq!(st.status, 200, "{}", st.body);
    assert_eq!(st.json()["status"], "running");

    let r = post(
        &agent,
        "/v1/checkpoints",
        json!({"backend": "runc", "container_id": id, "checkpoint_id": "ck1"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let job_id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location").unwrap(), format!("/v1/jobs/{job_id}"));
    let done = agent.wait_job(&job_id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["checkpoint_id"], "ck1");
    assert!(done["duration_ms"].is_u64());
    assert_eq!(
        c.status().as_deref(),
        Some("running"),
        "leave_running is the default"
    );

    // Same id again: conflict.
    expect_error(
        &post(
            &agent,
            "/v1/checkpoints",
            json!({"backend": "runc", "container_id": id, "checkpoint_id": "ck1"}),
        ),
        409,
        "conflict",
    );
    // Listing and filters.
    let all = agent
        .call("GET", "/v1/jobs?kind=checkpoint&status=succeeded", None)
        .json();
    assert_eq!(all["jobs"][0]["id"], job_id.as_str(), "{all}");
    assert_eq!(
        agent.call("GET", "/v1/jobs?kind=push", None).json()["jobs"],
        json!([])
    );

    // A finished job cannot be cancelled; purging forgets it and deletes its checkpoint.
    expect_error(
        &agent.call("DELETE", &format!("/v1/jobs/{job_id}"), None),
        409,
        "conflict",
    );
    let p = agent.call("DELETE", &format!("/v1/jobs/{job_id}?purge=true"), None);
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(
        !agent.checkpoints_dir().join("ck1").exists(),
        "purge left the checkpoint"
    );
    expect_error(
        &agent.call("GET", &format!("/v1/jobs/{job_id}"), None),
        404,
        "not_found",
    );

    // Checkpointing a container that stops: the job fails with the phase it was in.
    let r = post(
        &agent,
        "/v1/checkpoints",
        json!({"backend": "runc", "container_id": id, "checkpoint_id": "ck2", "leave_running": false}),
    );
    assert_eq!(r.status, 202);
    let done = agent.wait_job(r.json()["id"].as_str().unwrap());
    assert_eq!(done["status"], "succeeded", "{done}");
    eventually(
        10,
        "the container to stop after a checkpoint without leave_running",
        || (c.status().as_deref() != Some("running")).then_some(()),
    );
    // runc removes a container it checkpointed without leave_running.
    expect_error(
        &post(
            &agent,
            "/v1/checkpoints",
            json!({"backend": "runc", "container_id": id, "checkpoint_id": "ck3"}),
        ),
        404,
        "container_not_found",
    );
    drop(c);

    // A container that exists but cannot be dumped (created, never started): the job
    // fails in the phase it was in, and leaves nothing behind.
    let b2 = Bundle::busybox(&work.path().join("b2"), &["sh", "-c", "sleep 100"]);
    let created = env::unique("ms2m-agcre");
    let st = std::process::Command::new("runc")
        .args(["create", "--bundle"])
        .arg(b2.dir())
        .arg(&created)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "runc create");
    let c = Container::adopt(&created);
    let r = post(
        &agent,
        "/v1/checkpoints",
        json!({"backend": "runc", "container_id": created, "checkpoint_id": "ck4"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let failed = agent.wait_job(r.json()["id"].as_str().unwrap());
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["phase"], "dumping", "{failed}");
    assert!(!agent.checkpoints_dir().join("ck4").exists());
    assert!(
        !agent.checkpoints_dir().join(".ck4.partial").exists(),
        "failed job left its files"
    );
    let id = created;

    // The container can be removed through the API.
    assert_eq!(
        agent
            .call("DELETE", &format!("/v1/containers/{id}"), None)
            .status,
        204
    );
    assert!(c.status().is_none());
    let m = agent.call("GET", "/metrics", None).body;
    assert!(
        m.contains("ms2m_agent_job_failures_total{kind=\"checkpoint\",phase=\"dumping\"} 1"),
        "{m}"
    );
}

#[test]
fn cancelled_or_aborted_transfers_leave_no_files_and_no_tag() {
    let registry = env::registry();
    let agent = Agent::start(AgentOptions::default());
    ms2m_tests::transfer::synthetic_checkpoint(
        &agent.checkpoints_dir().join("big"),
        "big",
        384 << 20,
    );
    let repo = format!("ms2m-test/{}", env::unique("agent-cancel"));

    // Cancel a push once bytes are moving: no tag appears.
    let r = post(
        &agent,
        "/v1/pushes",
        json!({"checkpoint_id": "big", "image": format!("{registry}/{repo}:cancelled")}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    eventually(60, "the push to move bytes", || {
        let j = agent.call("GET", &format!("/v1/jobs/{id}"), None).json();
        assert_eq!(
            j["status"], "running",
            "push ended before it could be cancelled: {j}"
        );
        (j["bytes_done"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    // The checkpoint is in use by the push.
    expect_error(
        &agent.call("DELETE", "/v1/checkpoints/big", None),
        409,
        "conflict",
    );
    let c = agent.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.json()["status"], "cancelled", "{}", c.body);
    assert_eq!(c.json()["error"]["code"], "cancelled");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        manifest_status(&registry, &repo, "cancelled"),
        404,
        "a cancelled push left a tag"
    );

    // A complete push, then a pull cancelled straight away: nothing in the store.
    let done = agent.run_job(
        "/v1/pushes",
        &json!({"checkpoint_id": "big", "image": format!("{registry}/{repo}:full")}),
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    let r = post(
        &agent,
        "/v1/pulls",
        json!({"image": format!("{registry}/{repo}:full"), "checkpoint_id": "pulled"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let c = agent.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.json()["status"], "cancelled", "{}", c.body);
    std::thread::sleep(Duration::from_millis(500));
    let names: Vec<String> = std::fs::read_dir(agent.checkpoints_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["big".to_string()],
        "a cancelled pull left files"
    );

    // Shutdown (SIGTERM) with a push in flight and no grace: aborted, no tag.
    let r = post(
        &agent,
        "/v1/pushes",
        json!({"checkpoint_id": "big", "image": format!("{registry}/{repo}:aborted")}),
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    eventually(60, "the push to move bytes", || {
        let j = agent.call("GET", &format!("/v1/jobs/{id}"), None).json();
        (j["bytes_done"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    agent.shutdown_jobs(Duration::ZERO);
    let j = agent.call("GET", &format!("/v1/jobs/{id}"), None).json();
    assert_eq!(j["status"], "aborted", "{j}");
    expect_error(
        &post(
            &agent,
            "/v1/pushes",
            json!({"checkpoint_id": "big", "image": format!("{registry}/{repo}:late")}),
        ),
        503,
        "shutting_down",
    );
    assert_eq!(agent.call("GET", "/readyz", None).status, 503);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        manifest_status(&registry, &repo, "aborted"),
        404,
        "an aborted push left a tag"
    );
    let m = agent.call("GET", "/metrics", None).body;
    assert!(
        m.contains("ms2m_agent_bytes_moved_total{kind=\"push\"}"),
        "{m}"
    );
}
