//! The scenario runner (`ms2m_tests::e2e::Scenario`) with the migration done by hand
//! (runc + CRIU + the control tool), for both strategies: the final state of the
//! target equals the state computed from everything produced.

use std::time::Duration;

use ms2m_tests::e2e::{
    HTTP_PORT, Scenario, ScenarioSpec, Strategy, migrate_by_hand, migrate_by_hand_with, u64_of,
    wait_state,
};

#[test]
fn stop_and_copy_by_hand_loses_nothing() {
    let spec = ScenarioSpec {
        strategy: Strategy::StopAndCopy,
        rate: 10.0,
        total: 150,
        delay_ms: 50,
        ballast_mib: 8,
        warmup: 20,
        consumer: ms2m_tests::e2e::ConsumerBehaviour::default(),
        load: ms2m_tests::e2e::Load::Steady,
    };
    let report = Scenario::start(spec).run(migrate_by_hand);
    report.assert_exactly_once();
    assert!(
        report.summary["phases_ms"].get("replaying").is_none(),
        "no replay in stop-and-copy"
    );
}

#[test]
fn shadowpod_by_hand_with_32_mib_of_state_at_20_msg_per_s() {
    let spec = ScenarioSpec {
        strategy: Strategy::ShadowPod,
        rate: 20.0,
        total: 300,
        delay_ms: 20,
        ballast_mib: 32,
        warmup: 40,
        consumer: ms2m_tests::e2e::ConsumerBehaviour::default(),
        load: ms2m_tests::e2e::Load::Steady,
    };
    let report = Scenario::start(spec).run(migrate_by_hand);
    report.assert_exactly_once();
    assert!(
        report.summary["checkpoint_bytes"].as_u64().unwrap() > 32 << 20,
        "the ballast is in the checkpoint: {}",
        report.summary
    );
}

#[test]
fn shadowpod_by_hand_with_512_mib_of_state() {
    let spec = ScenarioSpec {
        strategy: Strategy::ShadowPod,
        rate: 10.0,
        total: 200,
        delay_ms: 50,
        ballast_mib: 512,
        warmup: 20,
        consumer: ms2m_tests::e2e::ConsumerBehaviour::default(),
        load: ms2m_tests::e2e::Load::Steady,
    };
    let report = Scenario::start(spec).run(migrate_by_hand);
    report.assert_exactly_once();
    assert!(
        report.summary["checkpoint_bytes"].as_u64().unwrap() > 512 << 20,
        "the ballast is in the checkpoint: {}",
        report.summary
    );
}

#[test]
fn broker_connections_dropped_mid_replay_lose_nothing() {
    let spec = ScenarioSpec {
        strategy: Strategy::ShadowPod,
        rate: 10.0,
        total: 200,
        delay_ms: 50,
        ballast_mib: 8,
        warmup: 20,
        consumer: ms2m_tests::e2e::ConsumerBehaviour::default(),
        load: ms2m_tests::e2e::Load::Steady,
    };
    let report = Scenario::start(spec).run(|sc| {
        migrate_by_hand_with(sc, |sc, target_pod| {
            let target = target_pod.addr();
            let before = wait_state(
                target,
                HTTP_PORT,
                Duration::from_secs(60),
                "replaying",
                |v| v["mode"] == "replaying",
            );
            // Source and target lose the broker at once; both reconnect, the target
            // back onto the replay queue, and redeliveries are skipped as duplicates.
            sc.cluster.sever_forwarded_connections();
            wait_state(
                target,
                HTTP_PORT,
                Duration::from_secs(60),
                "the target to reconnect",
                |v| {
                    v["mode"] == "replaying"
                        && u64_of(v, "connections") > u64_of(&before, "connections")
                },
            );
        })
    });
    report.assert_exactly_once();
}
