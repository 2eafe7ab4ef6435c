//! A counting busybox container in a pre-created netns is checkpointed through the
//! agent's API with leave-running, pushed to the registry, pulled back, and restored
//! under a new id in another netns: both run, and the restored counter continues from
//! the value it had at the checkpoint.

mod agent_common;

use std::process::Command;

use agent_common::{Agent, AgentOptions, COUNTER, copy_tree, eventually, numbers};
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::env;
use ms2m_tests::netns::Netns;
use serde_json::json;

fn count_in(rootfs: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(rootfs.join("count"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The counter value recorded in a checkpoint's rootfs-diff.tar.
fn diff_count(checkpoint: &std::path::Path) -> u64 {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(checkpoint.join("rootfs-diff.tar"))
        .arg("count")
        .output()
        .unwrap();
    assert!(out.status.success(), "count not in rootfs-diff.tar");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn checkpoint_push_pull_restore_continues_the_counter() {
    let registry = env::registry();
    let agent = Agent::start(AgentOptions::default());
    let work = tempfile::tempdir().unwrap();

    // The "image": a pristine busybox rootfs the agent may restore from.
    let src = Bundle::busybox(&work.path().join("src"), &["sh", "-c", COUNTER]);
    let image = agent.images_dir().join("busybox");
    copy_tree(&src.rootfs(), &image);

    let ns_a = Netns::new(&env::unique("ms2m-ag-a"));
    let ns_b = Netns::new(&env::unique("ms2m-ag-b"));
    src.use_netns(&ns_a.path());
    let src_id = env::unique("ms2m-agsrc");
    let source = Container::run(&src, &src_id);
    eventually(10, "the source counter to reach 5", || {
        count_in(&src.rootfs()).filter(|n| *n >= 5)
    });

    // Checkpoint through the API; the source keeps running.
    let ck = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "runc", "container_id": src_id, "leave_running": true,
                "checkpoint_id": "counter-ck", "rootfs_image": image}),
    );
    assert_eq!(ck["status"], "succeeded", "{ck}");
    assert_eq!(ck["kind"], "checkpoint");
    assert!(ck["result"]["size_bytes"].as_u64().unwrap() > 0, "{ck}");
    assert!(
        ck["result"]["frozen_ms"].is_u64(),
        "leave_running reports the freeze: {ck}"
    );
    let ck_dir = agent.checkpoints_dir().join("counter-ck");
    for f in [
        "config.dump",
        "spec.dump",
        "checkpoint/pstree.img",
        "rootfs-diff.tar",
        "stats-dump",
        "dump.log",
    ] {
        assert!(ck_dir.join(f).exists(), "checkpoint lacks {f}");
    }
    assert_eq!(
        source.status().as_deref(),
        Some("running"),
        "leave_running stopped the source"
    );
    let at_checkpoint = count_in(&src.rootfs()).unwrap();
    eventually(10, "the source to keep counting", || {
        count_in(&src.rootfs()).filter(|n| *n > at_checkpoint + 2)
    });

    // The value the checkpoint recorded in its rootfs diff.
    let n = diff_count(&ck_dir);
    assert!(n >= 5);

    // Inspect shows the process tree and the memory.
    let info = agent.call("GET", "/v1/checkpoints/counter-ck", None);
    assert_eq!(info.status, 200, "{}", info.body);
    let info = info.json();
    assert_eq!(info["processes"][0]["pid"], 1, "{info}");
    assert_eq!(info["processes"][0]["comm"], "sh", "{info}");
    assert!(info["memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(info["rootfs_diff"], true);
    assert_eq!(info["runtime"], "runc");

    // Push and pull through the registry.
    let image_ref = format!("{registry}/ms2m-test/{}:ck", env::unique("agent-counter"));
    let push = agent.run_job(
        "/v1/pushes",
        &json!({"checkpoint_id": "counter-ck", "image": image_ref}),
    );
    assert_eq!(push["status"], "succeeded", "{push}");
    assert!(push["bytes_done"].as_u64().unwrap() > 0, "{push}");
    let pull = agent.run_job(
        "/v1/pulls",
        &json!({"image": image_ref, "checkpoint_id": "counter-pulled"}),
    );
    assert_eq!(pull["status"], "succeeded", "{pull}");

    // Restore the pulled checkpoint under a new id in the other netns.
    let dst_id = env::unique("ms2m-agdst");
    let restored = agent.run_job(
        "/v1/restores",
        &json!({"checkpoint_id": "counter-pulled", "container_id": dst_id,
                "netns_path": ns_b.path()}),
    );
    let target = Container::adopt(&dst_id);
    assert_eq!(restored["status"], "succeeded", "{restored}");
    let bundle = std::path::PathBuf::from(restored["result"]["bundle"].as_str().unwrap());
    assert_eq!(target.status().as_deref(), Some("running"));
    assert_eq!(source.status().as_deref(), Some("running"));

    // The restored process lives in netns B.
    let pid = target.pid().unwrap();
    let ns_of = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    };
    assert_eq!(
        ns_of(std::path::Path::new(&format!("/proc/{pid}/ns/net"))),
        ns_of(&ns_b.path()),
        "restored into the wrong network namespace"
    );

    // It continues from the checkpoint: its first number is the recorded value or the
    // next one (depending on where in the loop the freeze happened), then it counts on.
    let log = eventually(10, "the restored counter to print", || {
        let l = std::fs::read_to_string(bundle.join("container.log")).ok()?;
        (numbers(&l).len() >= 3).then_some(l)
    });
    let got = numbers(&log);
    assert!(
        got[0] == n || got[0] == n + 1,
        "restored counter started at {} but the checkpoint held {n}: {log}",
        got[0]
    );
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "not consecutive: {got:?}"
    );

    eprintln!(
        "figures: checkpoint job {} ms (dump {} ms, source frozen {} ms), push {} ms, pull {} ms, restore job {} ms (runc restore {} ms), archive {} bytes",
        ck["duration_ms"],
        ck["result"]["dump_ms"],
        ck["result"]["frozen_ms"],
        push["duration_ms"],
        pull["duration_ms"],
        restored["duration_ms"],
        restored["result"]["restore_ms"],
        ck["result"]["size_bytes"]
    );
    // Standalone cleanup through the API removes the target and its bundle.
    let del = agent.call("DELETE", &format!("/v1/containers/{dst_id}"), None);
    assert_eq!(del.status, 204, "{}", del.body);
    assert!(target.status().is_none());
    assert!(!bundle.exists());
    drop(source);
}

#[test]
fn direct_send_to_another_agent_then_restore_there() {
    let source_agent = Agent::start(AgentOptions::default());
    let target_agent = Agent::start(AgentOptions {
        tcp: true,
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let src = Bundle::busybox(&work.path().join("src"), &["sh", "-c", COUNTER]);
    let image_a = source_agent.images_dir().join("busybox");
    copy_tree(&src.rootfs(), &image_a);
    // The target node has the same image at the same place.
    copy_tree(&src.rootfs(), &target_agent.images_dir().join("busybox"));
    let ns_b = Netns::new(&env::unique("ms2m-agd-b"));
    let src_id = env::unique("ms2m-agdsrc");
    let source = Container::run(&src, &src_id);
    eventually(10, "the source counter to reach 3", || {
        count_in(&src.rootfs()).filter(|n| *n >= 3)
    });

    let ck = source_agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "runc", "container_id": src_id, "checkpoint_id": "d-ck", "rootfs_image": image_a}),
    );
    assert_eq!(ck["status"], "succeeded", "{ck}");
    let target_url = format!("http://{}", target_agent.tcp.unwrap());
    let sent = source_agent.run_job(
        "/v1/direct/sends",
        &json!({"checkpoint_id": "d-ck", "target": target_url, "target_checkpoint_id": "d-recv"}),
    );
    assert_eq!(sent["status"], "succeeded", "{sent}");
    assert!(sent["bytes_done"].as_u64().unwrap() > 0);
    // The receiving agent recorded it as a job too, and stores the checkpoint.
    let recv = target_agent
        .call("GET", "/v1/jobs?kind=direct_receive", None)
        .json();
    assert_eq!(recv["jobs"][0]["status"], "succeeded", "{recv}");
    assert!(
        target_agent
            .checkpoints_dir()
            .join("d-recv/checkpoint/pstree.img")
            .is_file()
    );
    // Preflight for an id that now exists: conflict.
    let pre = target_agent.call_tcp(
        "GET",
        "/v1/direct/receive/d-recv",
        Some(&target_agent.token),
        None,
    );
    assert_eq!(pre.status, 409, "{}", pre.body);

    // The image path recorded by the source is the source node's; give the target's.
    let dst_id = env::unique("ms2m-agddst");
    let restored = target_agent.run_job(
        "/v1/restores",
        &json!({"checkpoint_id": "d-recv", "container_id": dst_id, "netns_path": ns_b.path(),
                "rootfs": target_agent.images_dir().join("busybox")}),
    );
    let target = Container::adopt(&dst_id);
    assert_eq!(restored["status"], "succeeded", "{restored}");
    let bundle = std::path::PathBuf::from(restored["result"]["bundle"].as_str().unwrap());
    let log = eventually(10, "the restored counter to print", || {
        let l = std::fs::read_to_string(bundle.join("container.log")).ok()?;
        (numbers(&l).len() >= 2).then_some(l)
    });
    let n = diff_count(&source_agent.checkpoints_dir().join("d-ck"));
    let first = numbers(&log)[0];
    assert!(
        first == n || first == n + 1,
        "restored counter started at {first}, checkpoint held {n}: {log}"
    );
    assert_eq!(source.status().as_deref(), Some("running"));
    assert_eq!(target.status().as_deref(), Some("running"));
}
