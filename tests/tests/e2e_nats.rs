//! The real migration on NATS JetStream: the reference consumer as a runc container
//! on nodeA, consuming its durable consumer on a stream of a real nats-server; a
//! producer at a fixed rate; two node agents; the shim's standalone driver with a
//! `nats://` broker URL; CRIU with the source left running (ShadowPod). The accounting
//! is the RabbitMQ runs': every message produced applied exactly once by the instance
//! that survives. The protocol's corner cases on JetStream (a large
//! `max_ack_pending`, a server restart, a non-deduplicating consumer) are covered
//! without CRIU in shim_nats.rs; this one run (CI time) proves the restored consumer
//! leaves its checkpointed client behind and follows START_REPLAY / END_REPLAY.

use ms2m_tests::e2e::agents::{Agents, ReplayMode, ShimOptions, Transfer, migrate_with_shim};
use ms2m_tests::e2e::nats::BrokerKind;
use ms2m_tests::e2e::{ConsumerBehaviour, Driver, Scenario, ScenarioSpec, Strategy};

#[test]
fn a_migration_over_nats_loses_nothing() {
    // 20 msg/s, 20 ms per message: the target catches up while the producer runs, so
    // the replay ends by Drain with the source still consuming until the stop.
    let spec = ScenarioSpec {
        strategy: Strategy::ShadowPod,
        rate: 20.0,
        total: 300,
        delay_ms: 20,
        ballast_mib: 8,
        warmup: 20,
        consumer: ConsumerBehaviour::default(),
        load: ms2m_tests::e2e::Load::Steady,
    };
    let sc = Scenario::start_on(spec, Driver::Agents, BrokerKind::Nats);
    assert!(
        sc.pod_amqp_url.starts_with("nats://"),
        "{}",
        sc.pod_amqp_url
    );
    let agents = Agents::start(&sc, None);
    let opts = ShimOptions {
        replay_mode: ReplayMode::Drain,
        transfer: Transfer::Registry,
        ..ShimOptions::default()
    };
    let report = sc.run(|sc| migrate_with_shim(sc, &agents, &opts));
    report.assert_exactly_once();
    assert_eq!(
        report.summary["details"]["replay"]["stopReason"], "Drain",
        "{}",
        report.summary
    );
    // It was restored (not started afresh) and named its control subject after the
    // target pod, or START_REPLAY would never have reached it.
    assert!(
        report.final_state["restores"].as_u64() >= Some(1),
        "{}",
        report.final_state
    );
    assert_eq!(
        report.final_state["pod"],
        report.summary["details"]["target"]
    );
}
