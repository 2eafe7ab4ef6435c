//! `ms2m-shim migrate`'s driver end to end on real parts: two agents (in-process, real
//! sockets), a counting busybox runc container in a network namespace, CRIU, the
//! registry, and RabbitMQ. The queue is idle, so the replay is empty, and the counter
//! is no AMQP consumer: the test consumes the replay queue in the target's place from
//! `START_REPLAY` to `END_REPLAY` (the protocol stops the source only once the target
//! consumes). What is checked is the orchestration — every phase on the real services, the source gone, the
//! target running on from the checkpoint in the other namespace, the control messages
//! on the wire, the replay queue removed; and a rollback that leaves the source serving.

mod agent_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_common::{Agent, AgentOptions, COUNTER, copy_tree, eventually, numbers};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, Channel, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::Connection;
use ms2m_shim::agent_client::AgentAddr;
use ms2m_shim::engine::{Phase, ReplayMode, StepState, TransferMode};
use ms2m_shim::messaging::{Messaging, connection_args};
use ms2m_shim::standalone::{self, Report, Settings};
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::env;
use ms2m_tests::netns::Netns;

fn count_in(rootfs: &Path) -> Option<u64> {
    std::fs::read_to_string(rootfs.join("count"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn ns_of(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// Two agents, a running source in namespace A, an empty namespace B, a primary queue.
struct Rig {
    rt: tokio::runtime::Runtime,
    agent_a: Agent,
    agent_b: Agent,
    source: Container,
    src_rootfs: PathBuf,
    ns_b: Netns,
    _ns_a: Netns,
    conn: Option<(Connection, Channel)>,
    settings: Settings,
    _work: tempfile::TempDir,
}

impl Rig {
    fn new(tcp_target: bool) -> Rig {
        let registry = env::registry();
        let amqp = env::amqp_url();
        let agent_a = Agent::start(AgentOptions {
            tcp: tcp_target,
            ..Default::default()
        });
        let agent_b = Agent::start(AgentOptions {
            tcp: tcp_target,
            ..Default::default()
        });
        let work = tempfile::tempdir().unwrap();
        let src = Bundle::busybox(&work.path().join("src"), &["sh", "-c", COUNTER]);
        let image_a = agent_a.images_dir().join("busybox");
        let image_b = agent_b.images_dir().join("busybox");
        copy_tree(&src.rootfs(), &image_a);
        copy_tree(&src.rootfs(), &image_b);
        let ns_a = Netns::new(&env::unique("ms2m-sa-a"));
        let ns_b = Netns::new(&env::unique("ms2m-sa-b"));
        src.use_netns(&ns_a.path());
        let src_id = env::unique("ms2m-sasrc");
        let source = Container::run(&src, &src_id);
        eventually(10, "the source counter to reach 5", || {
            count_in(&src.rootfs()).filter(|n| *n >= 5)
        });

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let base = env::unique("shim-sa-");
        let queue = format!("{base}.q");
        let conn = rt.block_on(async {
            let c = Connection::open(&connection_args(&amqp).unwrap())
                .await
                .expect("rabbitmq-server reachable");
            let ch = c.open_channel(None).await.unwrap();
            // The service's primary queue, as it would have declared it.
            ch.queue_declare(QueueDeclareArguments::durable_client_named(&queue))
                .await
                .unwrap();
            (c, ch)
        });
        let target_id = env::unique("ms2m-satgt");
        let settings = Settings {
            source_agent: AgentAddr::Unix(agent_a.socket.clone()),
            target_agent: AgentAddr::Unix(agent_b.socket.clone()),
            container: src_id,
            target_container: target_id.clone(),
            target_netns: Some(ns_b.path().to_string_lossy().into_owned()),
            rootfs_image: Some(image_a.to_string_lossy().into_owned()),
            rootfs: Some(image_b.to_string_lossy().into_owned()),
            tcp_established: false,
            transfer: TransferMode::Registry,
            image: Some(format!(
                "{registry}/ms2m-test/{}:ck",
                env::unique("shim-sa")
            )),
            insecure_registry: false,
            direct_target: agent_b.tcp.map(|a| format!("http://{a}")),
            direct_target_node: None,
            broker_url: amqp,
            management: env::management(),
            broker_tls: None,
            source_prefetch: 1,
            queue,
            exchange: format!("{base}.x"),
            routing_key: String::new(),
            control_name: target_id,
            replay_mode: ReplayMode::Cutoff,
            replay_cutoff: Duration::from_secs(30),
            phase_timeout: Duration::from_secs(120),
            checkpoint_id: env::unique("shim-sa-ck"),
        };
        Rig {
            rt,
            agent_a,
            agent_b,
            source,
            src_rootfs: src.rootfs(),
            ns_b,
            _ns_a: ns_a,
            conn: Some(conn),
            settings,
            _work: work,
        }
    }

    fn migrate(&self) -> Report {
        let stand_in = self.rt.spawn(replay_consumer_stand_in(
            self.settings.broker_url.clone(),
            format!("{}.ms2m-replay", self.settings.queue),
            format!("ms2m.control.{}", self.settings.control_name),
        ));
        let report = self
            .rt
            .block_on(standalone::migrate(self.settings.clone(), false))
            .expect("broker URL accepted");
        stand_in.abort();
        eprintln!("{}", standalone::timing_table(&report));
        report
    }

    fn replay_depth(&self) -> Option<u64> {
        let replay = format!("{}.ms2m-replay", self.settings.queue);
        // Built and dropped inside the runtime, as amqprs requires.
        self.rt.block_on(async {
            let m = Messaging::new(&self.settings.broker_url, "check").unwrap();
            m.queue_depth(&replay).await.unwrap()
        })
    }

    /// Bodies of the next `n` messages on the target's control queue.
    fn control_messages(&self, n: usize) -> Vec<serde_json::Value> {
        let control = format!("ms2m.control.{}", self.settings.control_name);
        let (_c, ch) = self.conn.as_ref().unwrap();
        self.rt.block_on(async {
            let (_tag, mut rx) = ch
                .basic_consume_rx(BasicConsumeArguments::new(&control, &env::unique("t")))
                .await
                .unwrap();
            let mut bodies = Vec::new();
            for _ in 0..n {
                let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("a control message")
                    .unwrap();
                ch.basic_ack(BasicAckArguments::new(
                    m.deliver.unwrap().delivery_tag(),
                    false,
                ))
                .await
                .unwrap();
                bodies.push(serde_json::from_slice(&m.content.unwrap()).unwrap());
            }
            bodies
        })
    }

    fn assert_migrated(&self, report: &Report) {
        let p = &report.progress;
        assert!(report.succeeded, "migration failed: {p:#?}");
        let phases: Vec<Phase> = p.phase_timings.iter().map(|t| t.phase).collect();
        assert_eq!(
            phases,
            [
                Phase::Pending,
                Phase::Checkpointing,
                Phase::Transferring,
                Phase::Restoring,
                Phase::Replaying,
                Phase::Finalizing
            ]
        );
        assert!(p.phase_timings.iter().all(|t| t.duration_ms.is_some()));
        for (name, st) in [
            ("replay_topology", p.steps.replay_topology),
            ("checkpoint", p.steps.checkpoint),
            ("transfer", p.steps.transfer),
            ("create_target", p.steps.create_target),
            ("start_replay", p.steps.start_replay),
            ("stop_source", p.steps.stop_source),
            ("fence_primary", p.steps.fence_primary),
            ("cut_over", p.steps.cut_over),
            ("end_replay", p.steps.end_replay),
            ("delete_replay", p.steps.delete_replay),
            ("remove_source", p.steps.remove_source),
        ] {
            assert_eq!(st, StepState::Done, "{name}");
        }
        assert_eq!(p.replay.stop_reason.as_deref(), Some("CaughtUp"));

        // The source is gone; the target runs in namespace B and counts on.
        assert_eq!(
            self.source.status(),
            None,
            "the source container was not removed"
        );
        let target_id = &self.settings.target_container;
        let target = Container::adopt(target_id);
        assert_eq!(target.status().as_deref(), Some("running"));
        let pid = target.pid().unwrap();
        assert_eq!(
            ns_of(Path::new(&format!("/proc/{pid}/ns/net"))),
            ns_of(&self.ns_b.path())
        );
        let log_path = self
            .agent_b
            .config
            .bundles_dir()
            .join(target_id)
            .join("container.log");
        let log = eventually(10, "the restored counter to print", || {
            let l = std::fs::read_to_string(&log_path).ok()?;
            (numbers(&l).len() >= 3).then_some(l)
        });
        let got = numbers(&log);
        assert!(
            got[0] >= 5,
            "the target started from scratch, not from the checkpoint: {got:?}"
        );
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "not consecutive: {got:?}"
        );

        // On the wire: START_REPLAY then END_REPLAY; the replay queue is gone.
        let replay = format!("{}.ms2m-replay", self.settings.queue);
        let bodies = self.control_messages(2);
        assert_eq!(
            bodies[0],
            serde_json::json!({"type": "START_REPLAY", "payload": {"queue": replay}})
        );
        assert_eq!(bodies[1], serde_json::json!({"type": "END_REPLAY"}));
        assert_eq!(self.replay_depth(), None, "replay queue left behind");
        self.assert_checkpoints_deleted();
    }

    /// The finished migration deleted its checkpoint from both agents' stores.
    fn assert_checkpoints_deleted(&self) {
        for (node, agent) in [("source", &self.agent_a), ("target", &self.agent_b)] {
            let dir = agent
                .config
                .checkpoints_dir()
                .join(&self.settings.checkpoint_id);
            assert!(
                !dir.exists(),
                "the {node} agent still holds {}",
                dir.display()
            );
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = Container::adopt(&self.settings.target_container);
        let control = format!("ms2m.control.{}", self.settings.control_name);
        if let Some((c, ch)) = self.conn.take() {
            let queue = self.settings.queue.clone();
            self.rt.block_on(async move {
                for q in [&queue, &control, &format!("{queue}.ms2m-replay")] {
                    let _ = ch.queue_delete(QueueDeleteArguments::new(q)).await;
                }
                let _ = ch.close().await;
                let _ = c.close().await;
            });
        }
        let _ = &self.agent_a;
    }
}

/// Consumes the replay queue as the restored service would: from the moment
/// `START_REPLAY` is waiting on the control queue until `END_REPLAY` joins it (the
/// control messages themselves stay there for the test to read).
async fn replay_consumer_stand_in(url: String, replay: String, control: String) {
    let conn = Connection::open(&connection_args(&url).unwrap())
        .await
        .expect("rabbitmq-server reachable");
    let depth = |name: String| {
        let conn = &conn;
        async move {
            let ch = conn.open_channel(None).await.ok()?;
            let mut args = QueueDeclareArguments::new(&name);
            args.passive(true);
            let n = ch.queue_declare(args).await.ok()??.1;
            let _ = ch.close().await;
            Some(n)
        }
    };
    while depth(control.clone()).await.unwrap_or(0) < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ch = conn.open_channel(None).await.unwrap();
    let (_tag, mut rx) = ch
        .basic_consume_rx(BasicConsumeArguments::new(&replay, "stand-in"))
        .await
        .unwrap();
    while depth(control.clone()).await.unwrap_or(0) < 2 {
        while let Ok(m) = rx.try_recv() {
            let tag = m.deliver.unwrap().delivery_tag();
            ch.basic_ack(BasicAckArguments::new(tag, false))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = ch.close().await;
    let _ = conn.close().await;
}

#[test]
fn standalone_migration_through_two_real_agents_and_the_registry() {
    let rig = Rig::new(false);
    let report = rig.migrate();
    rig.assert_migrated(&report);
    assert!(
        report
            .progress
            .checkpoint_image
            .as_deref()
            .unwrap()
            .contains("/ms2m-test/")
    );
}

#[test]
fn standalone_migration_agent_to_agent_in_direct_mode() {
    let mut rig = Rig::new(true);
    rig.settings.transfer = TransferMode::Direct;
    rig.settings.image = None;
    let report = rig.migrate();
    rig.assert_migrated(&report);
    // Direct: the "image" is the checkpoint id on the target agent.
    assert_eq!(
        report.progress.checkpoint_image.as_deref(),
        Some(rig.settings.checkpoint_id.as_str())
    );
}

#[test]
fn a_refused_restore_rolls_back_and_the_source_keeps_running() {
    let mut rig = Rig::new(false);
    // A rootfs outside the target agent's allowed directories: 403 path_not_allowed.
    rig.settings.rootfs = Some("/etc".into());
    let report = rig.migrate();
    let p = &report.progress;
    assert!(!report.succeeded);
    assert_eq!(p.phase, Phase::Failed);
    let failure = p.failure.as_ref().unwrap();
    assert_eq!(failure.phase, Phase::Restoring);
    assert!(failure.rolled_back);
    assert!(
        failure.reason.contains("path_not_allowed"),
        "{}",
        failure.reason
    );
    assert_eq!(p.steps.delete_replay, StepState::Done);
    assert_eq!(
        p.steps.start_replay,
        StepState::NotStarted,
        "no START_REPLAY after a failed restore"
    );
    assert_eq!(
        rig.replay_depth(),
        None,
        "the rollback left the replay queue"
    );
    assert_eq!(rig.source.status().as_deref(), Some("running"));
    // The counter rewrites its file every tick: a read can catch it empty.
    let before = eventually(10, "the source's count", || count_in(&rig.src_rootfs));
    eventually(10, "the source to keep counting", || {
        count_in(&rig.src_rootfs).filter(|n| *n > before)
    });
    assert!(
        Container::adopt(&rig.settings.target_container)
            .status()
            .is_none()
    ); // Rolled back: the checkpoint (and the target's pulled copy) are deleted too.
    rig.assert_checkpoints_deleted();
}
