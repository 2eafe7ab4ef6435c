//! `ms2m-shim migrate`: the same phase engine without Kubernetes. The source and target
//! are runc containers managed by the node agents; the checkpoint travels through a
//! registry (push, then pull on the target) or agent to agent (Direct).
//!
//! Progress is kept in memory and, with `--state-file`, in a JSON file written atomically
//! (temp file, fsync, rename, fsync of the directory) at the points where the controller
//! writes the CR status: before every side effect and after each one. Running `migrate`
//! again with an existing state file resumes the migration it records (a finished one is
//! only reported); the engine then repeats at most the one idempotent effect that may or
//! may not have happened. Without a state file, a driver killed mid-migration leaves what
//! the engine's rollback would clean up (target container, replay queue); the source
//! keeps running.
//! Decisions: standalone migrations are always ShadowPod (the agent can't "scale" a
//! container back), so a failure after the cutoff keeps the target for the operator.

//!
//! Files: `world.rs` (the engine's world: agents and broker), `state_file.rs` (the
//! atomic state file), `report.rs` (what a run reports).

mod report;
mod state_file;
mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::agent_client::AgentClient;
use crate::driver;
use crate::engine::{
    Next, Phase, Plan, Progress, QueueNames, ReplayMode, Strategy, TransferMode,
    leftover_checkpoints,
};
use crate::messaging::{ManagementConfig, MessagingError};

pub use report::{Report, timing_table};
pub use state_file::StateFile;
use world::Standalone;

/// Everything `migrate` needs, parsed from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub source_agent: crate::agent_client::AgentAddr,
    pub target_agent: crate::agent_client::AgentAddr,
    pub container: String,
    pub target_container: String,
    pub target_netns: Option<String>,
    /// Image rootfs of the source (recorded in the checkpoint).
    pub rootfs_image: Option<String>,
    /// Image rootfs on the target node (default: the one recorded in the checkpoint).
    pub rootfs: Option<String>,
    pub tcp_established: bool,
    pub transfer: TransferMode,
    /// Registry mode: where the checkpoint image goes.
    pub image: Option<String>,
    pub insecure_registry: bool,
    /// Direct mode: the target agent's URL as the source agent reaches it.
    pub direct_target: Option<String>,
    /// The target agent's node, which its certificate must name (mutual TLS).
    pub direct_target_node: Option<String>,
    pub broker_url: String,
    /// The broker's management API (unacknowledged counts for the pre-checkpoint
    /// condition, bindings for the cut-over).
    pub management: ManagementConfig,
    /// TLS material for an `amqps://` broker (`--broker-tls-dir`).
    pub broker_tls: Option<crate::messaging::BrokerTls>,
    /// The source consumer's prefetch (0: unlimited or auto-ack): the pre-checkpoint
    /// condition waits for this many post-binding deliveries.
    pub source_prefetch: u16,
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
    /// `<target>` in `ms2m.control.<target>`: what the restored consumer calls itself.
    pub control_name: String,
    pub replay_mode: ReplayMode,
    pub replay_cutoff: Duration,
    pub phase_timeout: Duration,
    pub checkpoint_id: String,
}

/// Why `migrate` could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error("state file {path}: {source}")]
    StateIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    StateFormat {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state file {path} records a migration of {recorded}, not of {asked}")]
    StateMismatch {
        path: PathBuf,
        recorded: String,
        asked: String,
    },
}

/// Runs one migration to its end, keeping progress in memory only. `live`: print the
/// phase line on stderr.
pub async fn migrate(s: Settings, live: bool) -> Result<Report, MigrateError> {
    migrate_with_state(s, live, None).await
}

/// Runs one migration to its end recording progress in `state_file`, or resumes the
/// migration an existing `state_file` records.
pub async fn migrate_with_state(
    mut s: Settings,
    live: bool,
    state_file: Option<PathBuf>,
) -> Result<Report, MigrateError> {
    let mut progress = Progress::default();
    if let Some(path) = &state_file
        && let Some(state) = StateFile::load(path)?
    {
        state.check(path, &s)?;
        tracing::info!(
            path = %path.display(),
            phase = state.progress.phase.as_str(),
            checkpoint_id = %state.checkpoint_id,
            "resuming the recorded migration"
        );
        s.checkpoint_id = state.checkpoint_id;
        s.control_name = state.control_name;
        progress = state.progress;
    }
    let queues = QueueNames::new(&s.exchange, &s.queue, &s.routing_key, &s.control_name);
    let plan = Plan {
        replay_mode: s.replay_mode,
        replay_cutoff: (!s.replay_cutoff.is_zero()).then_some(s.replay_cutoff),
        phase_timeout: s.phase_timeout,
        transfer_mode: s.transfer,
        strategy: Some(Strategy::ShadowPod),
        target_node: s.target_agent.to_string(),
        target_name: s.target_container.clone(),
        checkpoint_id: s.checkpoint_id.clone(),
        checkpoint_image: s.image.clone().unwrap_or_default(),
        import_reference: None,
        queues,
    };
    let mut world = Standalone {
        source: AgentClient::new(s.source_agent.clone()),
        target: AgentClient::new(s.target_agent.clone()),
        broker: crate::messaging::connect(
            &s.broker_url,
            None,
            &s.checkpoint_id,
            &s.management,
            s.broker_tls.as_ref(),
        )?,
        s,
        started: Instant::now(),
        last_phase: progress.phase,
        live,
        state_file,
    };
    let mut fatal = None;
    let mut errors = 0u32;
    loop {
        match driver::round(&mut world, &plan, &mut progress, &mut fatal).await {
            Ok(d) => {
                errors = 0;
                match d.next {
                    Next::Now => {}
                    Next::After(wait) => tokio::time::sleep(wait).await,
                    Next::Stop => break,
                }
            }
            Err(e) => {
                errors += 1;
                warn!(error = %e, errors, "round failed, retrying");
                // A world that stays unreachable is a failure, not a reason to spin
                // forever: fail (and roll back) after a phase timeout's worth of
                // attempts, and stop trying after twice that.
                let limit = plan.phase_timeout.as_secs().max(1);
                if u64::from(errors) > 2 * limit {
                    warn!("giving up; the migration is left as reported");
                    break;
                }
                if u64::from(errors) > limit && progress.failure.is_none() {
                    fatal = Some(format!("giving up after {errors} failed attempts: {e}"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // What the migration left in the agents' stores, as the controller does it: best
    // effort, the agents' retention expiry removes what this cannot.
    for l in leftover_checkpoints(&plan, &progress) {
        let agent = if l.node == plan.target_node {
            &world.target
        } else {
            &world.source
        };
        if let Err(e) = agent.delete_checkpoint(&l.checkpoint_id).await {
            warn!(node = %l.node, checkpoint = %l.checkpoint_id, error = %e, "could not delete the checkpoint (the agent's retention expiry will)");
        }
    }
    // Across restarts the migration started when the first run did.
    let total_ms = match (progress.start_time, progress.completion_time) {
        (Some(a), Some(b)) => u64::try_from(b.duration_since(a).as_millis()).ok(),
        _ => None,
    }
    .unwrap_or_else(|| {
        world
            .started
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    });
    Ok(Report {
        succeeded: progress.phase == Phase::Completed,
        total_ms,
        progress,
    })
}

#[cfg(test)]
mod tests {
    use super::state_file::STATE_VERSION;
    use super::*;
    use crate::engine::{PhaseTiming, StepState};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!(
                "ms2m-state-{tag}-{}-{}",
                std::process::id(),
                jiff::Timestamp::now().as_nanosecond()
            ));
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn settings() -> Settings {
        Settings {
            // Nothing listens there: a test that reaches an agent fails.
            source_agent: crate::agent_client::AgentAddr::parse("unix:/nonexistent/a.sock", None)
                .unwrap(),
            target_agent: crate::agent_client::AgentAddr::parse("unix:/nonexistent/b.sock", None)
                .unwrap(),
            container: "counter-1".into(),
            target_container: "counter-1-ms2m".into(),
            target_netns: None,
            rootfs_image: None,
            rootfs: None,
            tcp_established: false,
            transfer: TransferMode::Registry,
            image: Some("127.0.0.1:5000/ms2m/counter:ckpt".into()),
            insecure_registry: false,
            direct_target: None,
            direct_target_node: None,
            broker_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            management: ManagementConfig::default(),
            broker_tls: None,
            source_prefetch: 1,
            queue: "q".into(),
            exchange: "x".into(),
            routing_key: String::new(),
            control_name: "counter-1-ms2m".into(),
            replay_mode: ReplayMode::Cutoff,
            replay_cutoff: Duration::from_secs(30),
            phase_timeout: Duration::from_secs(2),
            checkpoint_id: "counter-1-1".into(),
        }
    }

    fn state(phase: Phase) -> StateFile {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let mut progress = Progress {
            phase,
            start_time: Some(t0),
            phase_started_at: Some(t0),
            checkpoint_id: Some("counter-1-1".into()),
            checkpoint_job: Some("job-7".into()),
            ..Progress::default()
        };
        progress.steps.replay_topology = StepState::Done;
        progress.steps.checkpoint = StepState::Intended;
        StateFile {
            version: STATE_VERSION,
            container: "counter-1".into(),
            target_container: "counter-1-ms2m".into(),
            control_name: "counter-1-ms2m".into(),
            checkpoint_id: "counter-1-1".into(),
            progress,
        }
    }

    const ALL_PHASES: [Phase; 9] = [
        Phase::Pending,
        Phase::Checkpointing,
        Phase::Transferring,
        Phase::Restoring,
        Phase::Replaying,
        Phase::Finalizing,
        Phase::RollingBack,
        Phase::Completed,
        Phase::Failed,
    ];

    #[test]
    fn every_phase_survives_the_state_file_unchanged() {
        let dir = TempDir::new("roundtrip");
        let path = dir.0.join("m.json");
        assert_eq!(StateFile::load(&path).unwrap(), None);
        for phase in ALL_PHASES {
            let st = state(phase);
            st.store(&path).unwrap();
            assert_eq!(StateFile::load(&path).unwrap().as_ref(), Some(&st));
        }
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("m.json")],
            "no temp file left"
        );
    }

    #[test]
    fn a_stale_temp_file_does_not_hide_the_last_complete_state() {
        let dir = TempDir::new("torn");
        let path = dir.0.join("m.json");
        state(Phase::Replaying).store(&path).unwrap();
        // A writer killed between creating and renaming its temp file.
        std::fs::write(dir.0.join("m.json.tmp"), b"{\"version\": 1, \"contai").unwrap();
        let loaded = StateFile::load(&path).unwrap().unwrap();
        assert_eq!(loaded.progress.phase, Phase::Replaying);
        state(Phase::Finalizing).store(&path).unwrap();
        let loaded = StateFile::load(&path).unwrap().unwrap();
        assert_eq!(loaded.progress.phase, Phase::Finalizing);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_a_fresh_start() {
        let dir = TempDir::new("corrupt");
        let path = dir.0.join("m.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = StateFile::load(&path).unwrap_err();
        assert!(matches!(err, MigrateError::StateFormat { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_state_file_of_another_migration_is_refused() {
        let dir = TempDir::new("mismatch");
        let path = dir.0.join("m.json");
        let mut st = state(Phase::Replaying);
        st.container = "other".into();
        st.store(&path).unwrap();
        let err = migrate_with_state(settings(), false, Some(path))
            .await
            .unwrap_err();
        assert!(
            matches!(err, MigrateError::StateMismatch { .. }) && err.to_string().contains("other"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn resuming_a_finished_migration_reports_it_and_touches_nothing() {
        let dir = TempDir::new("finished");
        for phase in [Phase::Completed, Phase::Failed] {
            let path = dir.0.join(format!("{}.json", phase.as_str()));
            let mut st = state(phase);
            st.progress.completion_time =
                Some(st.progress.start_time.unwrap() + jiff::SignedDuration::from_millis(2500));
            // A different default checkpoint id on the command line: the recorded wins.
            st.store(&path).unwrap();
            let r = migrate_with_state(settings(), false, Some(path.clone()))
                .await
                .unwrap();
            assert_eq!(r.succeeded, phase == Phase::Completed);
            assert_eq!(r.total_ms, 2500);
            assert_eq!(r.progress, st.progress);
            assert_eq!(StateFile::load(&path).unwrap().unwrap(), st);
        }
    }

    #[tokio::test]
    async fn a_resumed_run_continues_from_the_recorded_phase_with_the_recorded_ids() {
        // The agents are unreachable, so the resumed run can't make progress; what it
        // writes shows where it resumed: never back at Pending, same checkpoint id.
        let dir = TempDir::new("resume");
        for phase in [
            Phase::Checkpointing,
            Phase::Transferring,
            Phase::Restoring,
            Phase::Replaying,
        ] {
            let path = dir.0.join(format!("{}.json", phase.as_str()));
            let mut st = state(phase);
            st.checkpoint_id = "recorded-id".into();
            st.progress.start_time = Some(jiff::Timestamp::now());
            st.progress.phase_started_at = st.progress.start_time;
            st.store(&path).unwrap();
            let mut s = settings();
            s.checkpoint_id = "fresh-default-id".into();
            s.phase_timeout = Duration::from_secs(1);
            let r = migrate_with_state(s, false, Some(path.clone()))
                .await
                .unwrap();
            assert!(!r.succeeded, "{phase:?}: no agent, no success");
            let after = StateFile::load(&path).unwrap().unwrap();
            assert_eq!(after.checkpoint_id, "recorded-id");
            assert_eq!(after.progress.start_time, st.progress.start_time);
            assert_ne!(after.progress.phase, Phase::Pending, "{phase:?}");
            assert_eq!(after.progress.steps.replay_topology, StepState::Done);
        }
    }

    #[test]
    fn the_table_lists_every_phase_and_the_total() {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let r = Report {
            succeeded: true,
            total_ms: 2500,
            progress: Progress {
                phase: Phase::Completed,
                phase_timings: vec![
                    PhaseTiming {
                        phase: Phase::Checkpointing,
                        started_at: t0,
                        duration_ms: Some(250),
                    },
                    PhaseTiming {
                        phase: Phase::Replaying,
                        started_at: t0,
                        duration_ms: Some(1200),
                    },
                ],
                ..Progress::default()
            },
        };
        let table = timing_table(&r);
        assert!(table.contains("Checkpointing     0.250 s"), "{table}");
        assert!(table.contains("total             2.500 s"), "{table}");
        assert!(table.ends_with("Completed\n"));
    }
}
