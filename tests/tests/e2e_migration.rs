//! The real migration: two node agents (`ms2m-agent serve` in nodeA/nodeB), the
//! shim's standalone driver (`ms2m-shim migrate`), the reference consumer with real
//! state, a producer at a fixed rate, the shared broker and registry. The target's final
//! state must equal the state computed from everything produced: nothing lost, nothing
//! applied twice. Faults roll back and the source keeps applying, losing nothing.
//!
//! Combinations (CI time matters, 2 cores): ShadowPod Cutoff over the registry with
//! 32 MiB; ShadowPod Drain over Direct at 50 msg/s; stop-and-copy over the agents'
//! API; one heavy run (512 MiB, 100 msg/s); two faults; and a consumer written the way
//! third parties write them (prefetch 50, no deduplication, 3 s before a reconnect) in
//! Cutoff over the registry and Drain over Direct.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ms2m_tests::e2e::agents::{
    Agents, ReplayMode, ShimOptions, Transfer, migrate_stop_and_copy_via_agents, migrate_with_shim,
    run_shim,
};
use serde_json::Value;

use ms2m_tests::e2e::{
    Driver, HTTP_PORT, Scenario, ScenarioReport, ScenarioSpec, Strategy, get_state, u64_of,
};

fn spec(
    strategy: Strategy,
    rate: f64,
    total: u64,
    delay_ms: u64,
    ballast_mib: u64,
) -> ScenarioSpec {
    ScenarioSpec {
        strategy,
        rate,
        total,
        delay_ms,
        ballast_mib,
        warmup: (rate as u64).max(10),
        consumer: ms2m_tests::e2e::ConsumerBehaviour::default(),
        load: ms2m_tests::e2e::Load::Steady,
    }
}

/// A run with [`ConsumerBehaviour::third_party`]: nothing lost, and what was applied
/// twice stays within the bound docs/migration-protocol.md proves: the messages
/// published after the replay binding that reached the source before the checkpoint
/// (the source's prefetch window, plus what arrived while the checkpoint was taken).
fn third_party_run(replay_mode: ReplayMode, transfer: Transfer) {
    let mut s = spec(Strategy::ShadowPod, 10.0, 260, 50, 8);
    s.consumer = ms2m_tests::e2e::ConsumerBehaviour::third_party();
    s.warmup = 30;
    let prefetch = s.consumer.prefetch;
    let sc = Scenario::start_for(s, Driver::Agents);
    let agents = Agents::start(&sc, None);
    let opts = ShimOptions {
        replay_mode,
        transfer,
        ..ShimOptions::default()
    };
    let report = sc.run(|sc| migrate_with_shim(sc, &agents, &opts));
    let consumer = ms2m_tests::e2e::ConsumerBehaviour::third_party();
    let bound = ms2m_tests::e2e::conformance::shadowpod_twice_bound(&consumer, &report);
    let a = report.assert_accounted(bound);
    eprintln!(
        "third-party consumer (prefetch {prefetch}), {replay_mode:?} {transfer:?}: applied twice {} (bound {bound})",
        a.applied_twice
    );
    // The restored consumer slept 3 s before it reconnected: the source may not have
    // been stopped before the target consumed the replay queue.
    let replay = &report.summary["details"]["replay"];
    assert!(replay["stopReason"].is_string(), "{}", report.summary);
}

#[test]
fn a_third_party_consumer_in_cutoff_over_the_registry_loses_nothing() {
    third_party_run(ReplayMode::Cutoff, Transfer::Registry);
}

#[test]
fn a_third_party_consumer_in_drain_over_direct_loses_nothing() {
    third_party_run(ReplayMode::Drain, Transfer::Direct);
}

fn phase_names(r: &ScenarioReport) -> Vec<String> {
    r.summary["phases_ms"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn shadowpod_cutoff_over_the_registry_with_32_mib_loses_nothing() {
    // 40 ms per message at 20 msg/s: the target catches up at 5 msg/s net, slower than
    // the 1 s cutoff allows, so the source is stopped by the cutoff while both consume.
    let sc = Scenario::start_for(spec(Strategy::ShadowPod, 20.0, 300, 40, 32), Driver::Agents);
    let opts = ShimOptions {
        replay_cutoff_seconds: 1,
        ..ShimOptions::default()
    };
    let agents = Agents::start(&sc, None);
    let report = sc.run(|sc| migrate_with_shim(sc, &agents, &opts));
    report.assert_exactly_once();
    assert_eq!(
        report.summary["details"]["replay"]["stopReason"], "Cutoff",
        "{}",
        report.summary
    );
    assert!(
        report.summary["checkpoint_bytes"].as_u64().unwrap() > 32 << 20,
        "the ballast is in the checkpoint: {}",
        report.summary
    );
    let phases = phase_names(&report);
    for p in [
        "checkpointing",
        "transferring",
        "restoring",
        "replaying",
        "finalizing",
    ] {
        assert!(phases.iter().any(|x| x == p), "{p} missing: {phases:?}");
    }
    // The restored consumer named its control queue after the target pod (hostname file
    // written by the agent), or START_REPLAY would never have reached it.
    assert_eq!(
        report.final_state["pod"],
        report.summary["details"]["target"]
    );
}

#[test]
fn shadowpod_drain_over_direct_at_50_msg_per_s_loses_nothing() {
    let sc = Scenario::start_for(spec(Strategy::ShadowPod, 50.0, 600, 10, 8), Driver::Agents);
    let agents = Agents::start(&sc, None);
    let opts = ShimOptions {
        replay_mode: ReplayMode::Drain,
        transfer: Transfer::Direct,
        ..ShimOptions::default()
    };
    let report = sc.run(|sc| migrate_with_shim(sc, &agents, &opts));
    report.assert_exactly_once();
    assert_eq!(
        report.summary["details"]["replay"]["stopReason"], "Drain",
        "{}",
        report.summary
    );
}

#[test]
fn stop_and_copy_through_the_agents_loses_nothing() {
    // The agent's defaults for a stop-and-copy checkpoint (tcp-close, network-lock
    // skip) are what makes the broker see the source's connection close and requeue its
    // unacked message at once: the bundle carries no CRIU options here.
    let sc = Scenario::start_for(
        spec(Strategy::StopAndCopy, 10.0, 150, 50, 8),
        Driver::Agents,
    );
    let agents = Agents::start(&sc, None);
    let report = sc.run(|sc| migrate_stop_and_copy_via_agents(sc, &agents));
    report.assert_exactly_once();
    assert!(
        !phase_names(&report).iter().any(|p| p == "replaying"),
        "no replay in stop-and-copy"
    );
    assert_eq!(
        report.summary["details"]["criu_rules_left_in_source_netns"], false,
        "network-lock skip: no CRIU DROP rules in the dead source's namespace"
    );
}

#[test]
fn shadowpod_with_512_mib_at_100_msg_per_s_loses_nothing() {
    let sc = Scenario::start_for(
        spec(Strategy::ShadowPod, 100.0, 1500, 5, 512),
        Driver::Agents,
    );
    let agents = Agents::start(&sc, None);
    let report = sc.run(|sc| migrate_with_shim(sc, &agents, &ShimOptions::default()));
    report.assert_exactly_once();
    assert!(
        report.summary["checkpoint_bytes"].as_u64().unwrap() > 512 << 20,
        "{}",
        report.summary
    );
}

/// A private registry on a free loopback port, killed on demand.
struct PrivateRegistry {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRegistry {
    fn start() -> PrivateRegistry {
        let bin = ms2m_tests::env::tool("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "private registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateRegistry {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Right after a rolled-back migration: the driver says so, the target container and
/// the replay queue are gone, the source is still applying.
fn assert_rolled_back_now(sc: &Scenario, agents: &Agents, dr: &Value, failed_in: &str) {
    assert_eq!(dr["succeeded"], false, "{dr}");
    assert_eq!(dr["progress"]["phase"], "Failed", "{dr}");
    assert_eq!(dr["progress"]["failure"]["phase"], failed_in, "{dr}");
    assert_eq!(dr["progress"]["failure"]["rolledBack"], true, "{dr}");
    let (status, _) = agents
        .b
        .call("GET", &format!("/v1/containers/{}", sc.target_name), None);
    assert_eq!(status, 404, "the target container was removed");
    assert!(
        !sc.broker.queue_exists(&format!("{}.ms2m-replay", sc.queue)),
        "the replay queue was deleted by the rollback"
    );
    let before = get_state(sc.source_pod.addr(), HTTP_PORT).expect("source answers");
    std::thread::sleep(Duration::from_secs(1));
    let after = get_state(sc.source_pod.addr(), HTTP_PORT).expect("source answers");
    assert!(
        u64_of(&after, "count") > u64_of(&before, "count"),
        "the source keeps applying after the rollback: {before} → {after}"
    );
}

/// In the end the source applied everything produced, once.
fn assert_source_lost_nothing(report: &ScenarioReport) {
    let total = report.produced["produced"].as_u64().unwrap();
    assert_eq!(
        u64_of(&report.final_state, "count"),
        total,
        "{}",
        report.summary
    );
    assert_eq!(report.final_state["sum"], report.produced["sum"]);
    assert_eq!(u64_of(&report.final_state, "gaps"), 0);
    assert_eq!(report.final_state["mode"], "primary");
}

#[test]
fn registry_down_during_transfer_fails_rolls_back_and_loses_nothing() {
    let mut registry = PrivateRegistry::start();
    let sc = Scenario::start_for(spec(Strategy::ShadowPod, 10.0, 150, 50, 8), Driver::Agents);
    let agents = Agents::start(&sc, Some(registry.port));
    let report = sc.run_expecting_rollback(|sc| {
        let opts = ShimOptions {
            phase_timeout_seconds: 30,
            ..ShimOptions::default()
        };
        let r = run_shim(sc, &agents, &opts, |source_agent| {
            // The registry dies once the checkpoint starts: it is down for the whole
            // Transferring phase.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, jobs) = source_agent.call("GET", "/v1/jobs?kind=checkpoint", None);
                if jobs["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
                    break;
                }
                assert!(Instant::now() < deadline, "no checkpoint job started");
                std::thread::sleep(Duration::from_millis(10));
            }
            registry.kill();
        });
        assert_rolled_back_now(sc, &agents, &r.report, "Transferring");
        r.report
    });
    assert_source_lost_nothing(&report);
}

#[test]
fn target_restore_failure_rolls_back_and_loses_nothing() {
    let sc = Scenario::start_for(spec(Strategy::ShadowPod, 10.0, 150, 50, 8), Driver::Agents);
    // The target node's image lacks the service binary: CRIU cannot restore it.
    let broken: PathBuf = sc.rootfs_images().join("broken");
    std::fs::create_dir_all(broken.join("bin")).unwrap();
    std::fs::copy(
        sc.rootfs_image().join("bin/busybox"),
        broken.join("bin/busybox"),
    )
    .unwrap();
    let agents = Agents::start(&sc, None);
    let report = sc.run_expecting_rollback(|sc| {
        let opts = ShimOptions {
            target_rootfs: Some(broken.clone()),
            ..ShimOptions::default()
        };
        let r = run_shim(sc, &agents, &opts, |_| {});
        assert_rolled_back_now(sc, &agents, &r.report, "Restoring");
        r.report
    });
    assert_source_lost_nothing(&report);
}
