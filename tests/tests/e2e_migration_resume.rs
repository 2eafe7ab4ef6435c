//! The shim's standalone driver killed mid-migration and started again: the sample
//! consumer under load is migrated from nodeA to nodeB by the real `ms2m-shim migrate`
//! binary with `--state-file`; the test SIGKILLs the driver as soon as the state file
//! says Replaying, runs the same command again, and the resumed run completes. The
//! target's final state must equal the state computed from everything produced:
//! nothing lost, nothing applied twice (the resumed run may repeat one effect, e.g.
//! `START_REPLAY`, which the consumer treats as a no-op).

use ms2m_tests::e2e::agents::{Agents, ShimOptions, migrate_with_shim_killed_in};
use ms2m_tests::e2e::{Driver, Scenario, ScenarioSpec, Strategy, u64_of};

#[test]
fn shim_killed_mid_replaying_resumes_from_its_state_file_and_loses_nothing() {
    // 40 ms per message at 20 msg/s: the replay backlog drains slowly, so Replaying
    // lasts until the cutoff and the kill lands while both instances consume.
    let sc = Scenario::start_for(
        ScenarioSpec {
            strategy: Strategy::ShadowPod,
            rate: 20.0,
            total: 300,
            delay_ms: 40,
            ballast_mib: 8,
            warmup: 20,
            consumer: ms2m_tests::e2e::ConsumerBehaviour::default(),
            load: ms2m_tests::e2e::Load::Steady,
        },
        Driver::Agents,
    );
    let agents = Agents::start(&sc, None);
    let opts = ShimOptions {
        replay_cutoff_seconds: 3,
        ..ShimOptions::default()
    };
    let mut killed_at = serde_json::Value::Null;
    let mut resumed = serde_json::Value::Null;
    let report = sc.run(|sc| {
        let (m, k, r) = migrate_with_shim_killed_in(sc, &agents, &opts, "Replaying");
        killed_at = k;
        resumed = r;
        m
    });
    assert_eq!(
        killed_at["progress"]["phase"], "Replaying",
        "the first run was killed mid-Replaying: {killed_at}"
    );
    // The second run continued the recorded migration instead of starting another: same
    // start, same agent jobs (it never checkpointed or pushed again).
    for key in ["startTime", "checkpointJob", "transferJob", "checkpointId"] {
        assert!(!killed_at["progress"][key].is_null(), "{key}: {killed_at}");
        assert_eq!(
            resumed["progress"][key], killed_at["progress"][key],
            "{key}: the resumed run restarted the migration: {resumed}"
        );
    }
    assert_eq!(resumed["progress"]["phase"], "Completed", "{resumed}");
    let phases: Vec<String> = report.summary["phases_ms"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for p in [
        "checkpointing",
        "transferring",
        "restoring",
        "replaying",
        "finalizing",
    ] {
        assert!(
            phases.iter().any(|x| x == p),
            "{p} missing from the resumed run's report: {phases:?}"
        );
    }
    if report.summary["lost"] != 0 || report.summary["sum_matches"] != true {
        eprintln!("final instance log:\n{}", report.target_log);
    }
    let total = report.produced["produced"].as_u64().unwrap();
    assert_eq!(
        report.produced["confirmed"].as_u64(),
        Some(total),
        "{}",
        report.produced
    );
    assert_eq!(
        u64_of(&report.final_state, "count"),
        total,
        "lost or doubly applied messages: {}",
        report.summary
    );
    assert_eq!(u64_of(&report.final_state, "last_seq"), total);
    assert_eq!(
        report.final_state["sum"], report.produced["sum"],
        "wrong set of messages applied: {}",
        report.summary
    );
    assert_eq!(
        u64_of(&report.final_state, "gaps"),
        0,
        "{}",
        report.final_state
    );
    assert_eq!(report.final_state["mode"], "primary");
    // The restore request named the target's hostname after the control name, so the
    // restored consumer listened on the queue the driver sent START_REPLAY to.
    assert_eq!(
        report.final_state["pod"],
        report.summary["details"]["target"]
    );
}
