//! The migration scenario runner: two nodes, the source consumer on nodeA, a producer
//! at a fixed rate, one migration (a `migrate` closure: by hand here, through the
//! agents and the shim's standalone driver in `agents.rs`), then the accounting: final
//! state vs. everything produced, phase timings, checkpoint size, downtime.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::accounting::{Accounting, account};
use super::{
    Broker, ConsumerSpec, Producer, QueueCleanup, consumer_bundle, criu_stop_and_copy_source,
    criu_tcp_close, get_applied, get_state, restore_with_log, sample_binaries, u64_of, wait_state,
};
use crate::process::run;

/// How the service is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// MS2M/ShadowPod: checkpoint leaving the source running, restore, replay, then
    /// stop the source and switch the target to the primary queue.
    ShadowPod,
    /// The baseline: the checkpoint stops the source; restore; straight to the
    /// primary queue (`END_REPLAY` without replay).
    StopAndCopy,
}

/// One migration scenario: load, state size, strategy.
#[derive(Debug, Clone)]
pub struct ScenarioSpec {
    pub strategy: Strategy,
    /// Producer rate, messages per second.
    pub rate: f64,
    /// Messages produced in total.
    pub total: u64,
    /// Consumer processing time per message.
    pub delay_ms: u64,
    pub ballast_mib: u64,
    /// Messages the source applies before the migration starts.
    pub warmup: u64,
    pub consumer: super::ConsumerBehaviour,
    /// Steady at `rate`, or bursts.
    pub load: super::Load,
}

pub const HTTP_PORT: u16 = 8080;

/// Who does the node work of the migration, which decides how the source is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// runc + CRIU by hand: the source bundle carries the CRIU options itself.
    ByHand,
    /// The node agents: they choose the CRIU options per checkpoint (a stop-and-copy
    /// source needs nothing in its bundle).
    Agents,
}

/// Everything a running scenario has: two nodes, the broker names, the source.
pub struct Scenario {
    pub spec: ScenarioSpec,
    /// Host-side broker URL (producer, control tool).
    pub amqp_url: String,
    /// Broker URL pods use (relay on the cluster's services address).
    pub pod_amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub source_name: String,
    pub target_name: String,
    pub broker: Broker,
    pub source_pod: std::sync::Arc<crate::nodes::Pod>,
    pub source_spec: ConsumerSpec,
    /// `None` once stopped.
    pub source: Option<crate::container::Container>,
    /// Applies the source made, captured when it was stopped (ShadowPod: the target's
    /// memory copy does not have what the source applied after the checkpoint).
    pub source_applied: Vec<(u64, u64)>,
    pub tmp: tempfile::TempDir,
    _cleanup: QueueCleanup,
    // Last: torn down after the containers above are gone.
    pub cluster: crate::nodes::Cluster,
}

/// What a migration step hands back to the runner.
pub struct Migrated {
    pub target_pod: std::sync::Arc<crate::nodes::Pod>,
    pub target: crate::container::Container,
    /// Phase names and durations, in order.
    pub phases: Vec<(String, Duration)>,
    pub checkpoint_bytes: u64,
    /// Driver-specific figures (transfer rate, replay counters), copied to the summary.
    pub details: Value,
}

/// Outcome of a scenario: the target's final `/state`, and one JSON summary.
pub struct ScenarioReport {
    pub final_state: Value,
    pub produced: Value,
    pub summary: Value,
    /// The target container's output (the consumer logs to stderr), for diagnosis.
    pub target_log: String,
    /// Every message accounted for from outside the consumer (`None` for a rollback).
    pub accounting: Option<Accounting>,
    /// The producer's `(seq, unix ms)` of every publish (empty for a rollback).
    pub published: Vec<(u64, u64)>,
}

/// How much longer than the load's own longest pause (before the migration) nothing
/// may be applied during it: the rule.
pub const GAP_ALLOWANCE_MS: u64 = 200;

impl ScenarioReport {
    /// One migration accounted for from outside the consumer: every published message is
    /// in the surviving state (publish log vs. its apply log, and its own counters
    /// agree), at most `twice_bound` applied twice. The pause rule (nothing applied for
    /// longer than the load's own longest pause plus [`GAP_ALLOWANCE_MS`]) is printed,
    /// not asserted: it is not met yet for every consumer and load
    /// (docs/migration-protocol.md, conformance: an open defect) and does not apply to
    /// stop-and-copy; the conformance cells (`conformance::verdict`) assert it where
    /// it holds. Returns the accounting.
    pub fn assert_accounted(&self, twice_bound: u64) -> &Accounting {
        let a = self
            .accounting
            .as_ref()
            .expect("a completed migration's accounting");
        if a.lost != 0 {
            eprintln!("final instance log:\n{}", self.target_log);
        }
        assert_eq!(
            a.lost, 0,
            "lost (publish log vs apply log): {}",
            self.summary
        );
        assert_eq!(a.published, self.produced["produced"].as_u64().unwrap_or(0));
        assert_eq!(self.summary["lost"], 0, "lost (state): {}", self.summary);
        assert_eq!(
            a.applied_twice,
            super::u64_of(&self.final_state, "applied_twice"),
            "the apply log and the state disagree: {}",
            self.summary
        );
        assert!(
            a.applied_twice <= twice_bound,
            "applied twice {} > bound {twice_bound}: {}",
            a.applied_twice,
            self.summary
        );
        eprintln!(
            "longest pause in processing: {} ms during the migration, {} ms before it",
            a.longest_gap_ms, a.baseline_gap_ms
        );
        a
    }

    /// Every produced message was confirmed by the broker and applied exactly once by
    /// the final instance, in order, which is back on the primary queue. Prints the
    /// final instance's log first when something was lost.
    pub fn assert_exactly_once(&self) {
        use super::u64_of;
        if self.accounting.is_some() {
            self.assert_accounted(0);
        }
        if self.summary["lost"] != 0 || self.summary["sum_matches"] != true {
            eprintln!("final instance log:\n{}", self.target_log);
        }
        assert_eq!(self.summary["applied_twice"], 0, "{}", self.summary);
        assert_eq!(u64_of(&self.final_state, "applied_twice"), 0);
        let total = self.produced["produced"].as_u64().unwrap();
        assert_eq!(
            self.produced["confirmed"].as_u64(),
            Some(total),
            "{}",
            self.produced
        );
        assert_eq!(
            u64_of(&self.final_state, "count"),
            total,
            "lost or doubly applied messages: {}",
            self.summary
        );
        assert_eq!(u64_of(&self.final_state, "last_seq"), total);
        assert_eq!(
            self.final_state["sum"], self.produced["sum"],
            "wrong set of messages applied: {}",
            self.summary
        );
        assert_eq!(u64_of(&self.final_state, "gaps"), 0, "{}", self.final_state);
        assert_eq!(self.final_state["mode"], "primary");
    }
}

impl Scenario {
    /// Sets up two nodes, starts the source consumer on nodeA and waits until it
    /// is connected (for a migration by hand).
    pub fn start(spec: ScenarioSpec) -> Scenario {
        Scenario::start_for(spec, Driver::ByHand)
    }

    /// The pristine image rootfs the source runs on (a copy made before it started).
    pub fn rootfs_image(&self) -> std::path::PathBuf {
        self.rootfs_images().join("consumer")
    }

    /// The directory holding [`Scenario::rootfs_image`] (the agents' allowed rootfs dir).
    pub fn rootfs_images(&self) -> std::path::PathBuf {
        self.tmp.path().join("images")
    }

    /// [`Scenario::start`] for a given driver.
    pub fn start_for(spec: ScenarioSpec, driver: Driver) -> Scenario {
        Scenario::start_on(spec, driver, super::nats::BrokerKind::RabbitMq)
    }

    /// [`Scenario::start_for`] on a given broker (the `amqp_url` fields then hold
    /// its URL, whatever the scheme).
    pub fn start_on(
        spec: ScenarioSpec,
        driver: Driver,
        broker: super::nats::BrokerKind,
    ) -> Scenario {
        crate::env::require_root();
        let amqp_url = broker.host_url();
        crate::env::criu();
        crate::env::tool("runc", "runc");
        crate::env::tool("iptables-restore", "iptables");
        sample_binaries();
        let cluster = crate::nodes::Cluster::new();
        let pod_amqp_url = broker.pod_url(&amqp_url, &cluster);
        let name = crate::env::unique("e2e-");
        let (source_name, target_name) = (format!("{name}-src"), format!("{name}-dst"));
        let cleanup = QueueCleanup {
            broker: Broker {
                amqp_url: amqp_url.clone(),
            },
            queues: vec![
                name.clone(),
                format!("{name}.ms2m-replay"),
                format!("ms2m.control.{source_name}"),
                format!("ms2m.control.{target_name}"),
            ],
            exchanges: vec![name.clone()],
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let source_pod = cluster.pod(crate::nodes::NodeId::A, "src");
        let source_spec = ConsumerSpec {
            pod: source_name.clone(),
            amqp_url: pod_amqp_url.clone(),
            exchange: name.clone(),
            queue: name.clone(),
            delay_ms: spec.delay_ms,
            ballast_mib: spec.ballast_mib,
            http_port: HTTP_PORT,
            behaviour: spec.consumer,
        };
        let bundle = consumer_bundle(
            &tmp.path().join("src"),
            &source_spec,
            &source_pod.netns_path(),
        );
        if spec.strategy == Strategy::StopAndCopy && driver == Driver::ByHand {
            criu_stop_and_copy_source(&bundle);
        }
        let pristine = tmp.path().join("images");
        std::fs::create_dir_all(&pristine).expect("images dir");
        run(Command::new("cp")
            .arg("-a")
            .arg(bundle.rootfs())
            .arg(pristine.join("consumer")));
        let source =
            crate::container::Container::run(&bundle, &crate::env::unique("ms2m-e2e-src-"));
        let addr = source_pod.addr();
        if let Err(e) = std::panic::catch_unwind(|| {
            wait_state(
                addr,
                HTTP_PORT,
                Duration::from_secs(60),
                "the source to connect",
                |v| u64_of(v, "connections") >= 1,
            )
        }) {
            eprintln!("--- source container output ---\n{}", source.output());
            std::panic::resume_unwind(e);
        }
        Scenario {
            spec,
            broker: Broker {
                amqp_url: amqp_url.clone(),
            },
            amqp_url,
            pod_amqp_url,
            exchange: name.clone(),
            queue: name,
            source_name,
            target_name,
            source_pod,
            source_spec,
            source: Some(source),
            source_applied: Vec::new(),
            tmp,
            _cleanup: cleanup,
            cluster,
        }
    }

    /// Produces the load, calls `migrate` once the source has applied `warmup`
    /// messages, waits until the target has applied the last message, and accounts.
    pub fn run(mut self, migrate: impl FnOnce(&mut Scenario) -> Migrated) -> ScenarioReport {
        let spec = self.spec.clone();
        let publish_log = self.tmp.path().join("published.json");
        let producer = Producer::start_with(
            &self.amqp_url,
            &self.exchange,
            &self.queue,
            spec.rate,
            spec.total,
            spec.load,
            Some(&publish_log),
        );
        wait_state(
            self.source_pod.addr(),
            HTTP_PORT,
            Duration::from_secs(120),
            "the warm-up",
            |v| u64_of(v, "count") >= spec.warmup,
        );
        let t0 = unix_ms();
        let started = Instant::now();
        let migrated = migrate(&mut self);
        let migration_time = started.elapsed();
        let t1 = unix_ms();
        self.stop_source();

        let produced = producer.finish();
        let total = produced["produced"].as_u64().expect("produced");
        let target_addr = migrated.target_pod.addr();
        let fin = wait_state(
            target_addr,
            HTTP_PORT,
            Duration::from_secs(300),
            "the target to apply the last message and be back on the primary queue",
            // A driver may finish right after sending END_REPLAY: the consumer switches
            // once it has applied what it holds from the replay queue.
            |v| u64_of(v, "last_seq") >= total && v["mode"] == "primary",
        );
        let mut applies = get_applied(target_addr, HTTP_PORT).expect("target /applied");
        // The target's log carries the source's applies up to the checkpoint (it is
        // part of the restored memory), then its own: a seq twice in it was applied
        // twice to the state that survives.
        let applied_twice = {
            let mut seqs: Vec<u64> = applies.iter().map(|(s, _)| *s).collect();
            let n = seqs.len();
            seqs.sort_unstable();
            seqs.dedup();
            (n - seqs.len()) as u64
        };
        let published: Vec<(u64, u64)> = serde_json::from_slice(
            &std::fs::read(&publish_log).expect("the producer's publish log"),
        )
        .expect("publish log JSON");
        let surviving = applies.clone();
        if let Ok(dir) = std::env::var("MS2M_E2E_DUMP_DIR") {
            // For diagnosis: the logs the accounting reads.
            let _ = std::fs::write(
                Path::new(&dir).join(format!("{}-logs.json", self.queue)),
                json!({"published": published, "surviving": surviving,
                       "source": self.source_applied})
                .to_string(),
            );
        }
        applies.extend(self.source_applied.iter().copied());
        let accounting = account(&published, &surviving, &applies, t0, t1);
        let downtime = longest_gap(&applies, t0, t1);
        let count = u64_of(&fin, "count");
        let distinct = u64_of(&fin, "distinct");
        let summary = json!({
            "strategy": format!("{:?}", spec.strategy),
            "rate": spec.rate,
            "delay_ms": spec.delay_ms,
            "ballast_mib": spec.ballast_mib,
            "load": spec.load.label(),
            "accounting": accounting,
            "consumer": {
                "label": spec.consumer.label(),
                "auto_ack": spec.consumer.auto_ack,
                "prefetch": spec.consumer.prefetch,
                "dedup": spec.consumer.dedup,
                "reconnect_delay_ms": spec.consumer.reconnect_delay_ms,
            },
            "produced": total,
            "applied": count,
            "lost": total.saturating_sub(distinct),
            // From the surviving state's own apply log (every apply, duplicates included)
            // and its counter: they must agree.
            "applied_twice": applied_twice,
            "applied_twice_by_state": fin["applied_twice"],
            "sum_matches": fin["sum"] == produced["sum"],
            "skipped_duplicates": fin["skipped_duplicates"],
            "gaps": fin["gaps"],
            "checkpoint_bytes": migrated.checkpoint_bytes,
            "migration_ms": migration_time.as_millis() as u64,
            "downtime_ms": downtime,
            "phases_ms": phases_json(&migrated.phases),
            "details": migrated.details,
        });
        eprintln!("{summary}");
        let target_log = migrated.target.output();
        drop(migrated.target);
        ScenarioReport {
            final_state: fin,
            produced,
            summary,
            target_log,
            accounting: Some(accounting),
            published,
        }
    }

    /// Produces the load, calls `migrate` (which must fail and roll back) once the source
    /// has applied `warmup` messages, then waits until the *source* applied the last
    /// message and accounts on it. `migrate` returns the driver's report.
    pub fn run_expecting_rollback(
        mut self,
        migrate: impl FnOnce(&mut Scenario) -> Value,
    ) -> ScenarioReport {
        let spec = self.spec.clone();
        let producer = Producer::start(
            &self.amqp_url,
            &self.exchange,
            &self.queue,
            spec.rate,
            spec.total,
        );
        wait_state(
            self.source_pod.addr(),
            HTTP_PORT,
            Duration::from_secs(120),
            "the warm-up",
            |v| u64_of(v, "count") >= spec.warmup,
        );
        let driver_report = migrate(&mut self);
        let after = get_state(self.source_pod.addr(), HTTP_PORT);
        let produced = producer.finish();
        let total = produced["produced"].as_u64().expect("produced");
        let fin = wait_state(
            self.source_pod.addr(),
            HTTP_PORT,
            Duration::from_secs(300),
            "the source to apply the last message after the rollback",
            |v| u64_of(v, "last_seq") >= total,
        );
        let count = u64_of(&fin, "count");
        let summary = json!({
            "strategy": format!("{:?}", spec.strategy),
            "rate": spec.rate,
            "produced": total,
            "applied": count,
            "lost": total.saturating_sub(count),
            "sum_matches": fin["sum"] == produced["sum"],
            "source_state_after_rollback": after,
            "driver_report": driver_report,
        });
        eprintln!("{summary}");
        let target_log = self.source.as_ref().map(|c| c.output()).unwrap_or_default();
        ScenarioReport {
            final_state: fin,
            produced,
            summary,
            target_log,
            accounting: None,
            published: Vec::new(),
        }
    }

    /// Captures the source's applies, then kills and deletes it.
    pub fn stop_source(&mut self) {
        if let Some(source) = self.source.take() {
            if let Some(log) = get_applied(self.source_pod.addr(), HTTP_PORT) {
                self.source_applied = log;
            }
            drop(source);
        }
    }
}

fn phases_json(phases: &[(String, Duration)]) -> Value {
    let map: serde_json::Map<String, Value> = phases
        .iter()
        .map(|(name, d)| (name.clone(), json!(d.as_millis() as u64)))
        .collect();
    Value::Object(map)
}

/// Longest interval within `[from, to]` (unix ms) in which nobody applied a message.
pub fn longest_gap(applies: &[(u64, u64)], from: u64, to: u64) -> u64 {
    let mut times: Vec<u64> = applies
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| (from..=to).contains(t))
        .collect();
    times.sort_unstable();
    times.dedup();
    let mut prev = from;
    let mut longest = 0;
    for t in times.into_iter().chain(std::iter::once(to)) {
        longest = longest.max(t - prev);
        prev = t;
    }
    longest
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Total size of the regular files directly in `dir` (CRIU's image directory is flat).
pub fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The migration done by hand with runc + CRIU and the control tool: what the shim's
/// standalone driver and the agents automate (and what the runner will call instead
/// once they exist).
pub fn migrate_by_hand(sc: &mut Scenario) -> Migrated {
    migrate_by_hand_with(sc, |_, _| {})
}

/// [`migrate_by_hand`], calling `while_replaying` right after `START_REPLAY` (ShadowPod)
/// — the place to inject a fault.
pub fn migrate_by_hand_with(
    sc: &mut Scenario,
    while_replaying: impl FnOnce(&Scenario, &crate::nodes::Pod),
) -> Migrated {
    let criu = crate::env::criu();
    let mut phases = Vec::new();
    let images = sc.tmp.path().join("images");
    let source_id = sc.source.as_ref().expect("source running").id().to_string();
    let shadow = sc.spec.strategy == Strategy::ShadowPod;

    let t = Instant::now();
    let replay = shadow.then(|| sc.broker.prepare_replay(&sc.exchange, &sc.queue));
    if let Some(replay) = &replay {
        sc.broker
            .wait_pre_binding_backlog_applied(&sc.queue, replay);
    }
    let mut dump = Command::new("runc");
    dump.arg("--criu").arg(&criu).arg("checkpoint");
    if shadow {
        dump.args(["--leave-running", "--tcp-established"]);
    }
    dump.arg("--image-path").arg(&images);
    dump.arg("--work-path")
        .arg(sc.tmp.path().join("work-dump"))
        .arg(&source_id);
    run(&mut dump);
    phases.push(("checkpointing".to_string(), t.elapsed()));
    let checkpoint_bytes = dir_size(&images);
    if !shadow {
        // The dump ended the source; what it applied is in the checkpoint.
        sc.source.take();
    }

    let t = Instant::now();
    let target_pod = sc.cluster.pod(crate::nodes::NodeId::B, "dst");
    let spec = ConsumerSpec {
        pod: sc.target_name.clone(),
        ..sc.source_spec.clone()
    };
    let bundle = consumer_bundle(&sc.tmp.path().join("dst"), &spec, &target_pod.netns_path());
    criu_tcp_close(&bundle);
    let target = restore_with_log(
        &bundle,
        &crate::env::unique("ms2m-e2e-dst-"),
        &images,
        &sc.tmp.path().join("work-restore"),
        &["--tcp-established"],
    );
    wait_state(
        target_pod.addr(),
        HTTP_PORT,
        Duration::from_secs(60),
        "the target to await replay",
        |v| v["mode"] == "awaiting_replay" && u64_of(v, "connections") >= 1,
    );
    phases.push(("restoring".to_string(), t.elapsed()));

    if let Some(replay) = &replay {
        let t = Instant::now();
        sc.broker.start_replay(&sc.target_name, replay);
        while_replaying(sc, &target_pod);
        let source_addr = sc.source_pod.addr();
        wait_state(
            target_pod.addr(),
            HTTP_PORT,
            Duration::from_secs(300),
            "the target to catch up",
            |b| {
                let a = get_state(source_addr, HTTP_PORT)
                    .map(|a| u64_of(&a, "last_seq"))
                    .unwrap_or(u64::MAX);
                b["mode"] == "replaying" && u64_of(b, "last_seq") >= a
            },
        );
        phases.push(("replaying".to_string(), t.elapsed()));
    }

    let t = Instant::now();
    sc.stop_source();
    sc.broker.end_replay(&sc.target_name);
    wait_state(
        target_pod.addr(),
        HTTP_PORT,
        Duration::from_secs(120),
        "the target on the primary queue",
        |v| v["mode"] == "primary",
    );
    if let Some(replay) = &replay {
        sc.broker.delete_queue(replay);
    }
    sc.cluster.remove_pod(&sc.source_pod);
    phases.push(("finalizing".to_string(), t.elapsed()));

    Migrated {
        target_pod,
        target,
        phases,
        checkpoint_bytes,
        details: json!({"driver": "by hand (runc + CRIU + ms2m-sample-control)"}),
    }
}
