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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::agent_client::{
    AgentClient, AgentError, CheckpointRequest, DirectSendRequest, Job, JobStatus, PushRequest,
    RestoreRequest,
};
use crate::driver::{self, World, WorldError};
use crate::engine::{
    Action, JobView, Next, Observation, Phase, Plan, Progress, QueueNames, ReplayMode, SourceView,
    StepState, Strategy, TargetView, TransferMode, leftover_checkpoints,
};
use crate::messaging::{Broker, ControlMessage, ManagementConfig, MessagingError};

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

/// The state file's content: what identifies the migration, and the engine's progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    pub version: u32,
    pub container: String,
    pub target_container: String,
    pub control_name: String,
    /// The checkpoint id names the agents' checkpoint and job results, so a resumed run
    /// must use the recorded one (the default id contains the start time).
    pub checkpoint_id: String,
    pub progress: Progress,
}

const STATE_VERSION: u32 = 1;

impl StateFile {
    /// Reads a state file; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<StateFile>, MigrateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(MigrateError::StateIo {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| MigrateError::StateFormat {
                path: path.to_owned(),
                source,
            })
    }

    /// Replaces the file atomically: a reader (or a restarted driver) sees the old or the
    /// new content, never a torn one, also across a power loss.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)?;
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(".tmp");
        let tmp = dir.join(name);
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is.
        std::fs::File::open(&dir)?.sync_all()
    }

    /// Checks that the file describes the migration the command line asks for.
    fn check(&self, path: &Path, s: &Settings) -> Result<(), MigrateError> {
        let recorded = format!("{} -> {}", self.container, self.target_container);
        let asked = format!("{} -> {}", s.container, s.target_container);
        if recorded != asked || self.version != STATE_VERSION {
            return Err(MigrateError::StateMismatch {
                path: path.to_owned(),
                recorded: format!("{recorded} (version {})", self.version),
                asked,
            });
        }
        Ok(())
    }
}

/// What `migrate` prints with `--json`, and returns.
#[derive(Serialize, Debug)]
pub struct Report {
    pub succeeded: bool,
    pub total_ms: u64,
    pub progress: Progress,
}

fn agent_err(e: AgentError) -> WorldError {
    if e.is_permanent() {
        WorldError::permanent(e.to_string())
    } else {
        WorldError::transient(e.to_string())
    }
}

fn mq_err(e: MessagingError) -> WorldError {
    if e.is_permanent() {
        WorldError::permanent(e.to_string())
    } else {
        WorldError::transient(e.to_string())
    }
}

fn job_view(job: Option<Job>, output: impl Fn(&Job) -> Option<String>) -> JobView {
    let Some(job) = job else {
        return JobView::NotStarted;
    };
    match job.status {
        JobStatus::Queued | JobStatus::Running => JobView::Running,
        JobStatus::Succeeded => match output(&job) {
            Some(o) => JobView::Succeeded {
                output: o,
                finished_at: job.finished_at,
            },
            None => JobView::Failed {
                reason: format!("job {} succeeded without the expected result", job.id),
            },
        },
        _ => JobView::Failed {
            reason: job.failure(),
        },
    }
}

struct Standalone {
    s: Settings,
    source: AgentClient,
    target: AgentClient,
    broker: std::sync::Arc<dyn Broker>,
    started: Instant,
    last_phase: Phase,
    live: bool,
    state_file: Option<PathBuf>,
}

impl Standalone {
    fn save_state(&self, progress: &Progress) -> Result<(), WorldError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        StateFile {
            version: STATE_VERSION,
            container: self.s.container.clone(),
            target_container: self.s.target_container.clone(),
            control_name: self.s.control_name.clone(),
            checkpoint_id: self.s.checkpoint_id.clone(),
            progress: progress.clone(),
        }
        .store(path)
        // Transient: the round stops before its effect and is retried.
        .map_err(|e| WorldError::transient(format!("writing {}: {e}", path.display())))
    }
}

impl Standalone {
    /// Waits for a job to finish (long-polling); fails when it didn't succeed.
    async fn wait_job(
        &self,
        agent: &AgentClient,
        job: Job,
        deadline: Instant,
    ) -> Result<Job, WorldError> {
        let mut job = job;
        while !job.status.is_terminal() {
            if Instant::now() >= deadline {
                return Err(WorldError::permanent(format!(
                    "{} job {} did not finish in time",
                    job.kind, job.id
                )));
            }
            job = agent
                .job(&job.id, Duration::from_secs(5))
                .await
                .map_err(agent_err)?
                .ok_or_else(|| WorldError::transient(format!("the agent forgot job {}", job.id)))?;
        }
        if job.status != JobStatus::Succeeded {
            return Err(WorldError::permanent(format!(
                "{} job failed: {}",
                job.kind,
                job.failure()
            )));
        }
        Ok(job)
    }

    fn live_line(&mut self, progress: &Progress) {
        if !self.live {
            return;
        }
        let depth = progress
            .replay
            .last_depth
            .map(|d| format!("  replay depth {d}"))
            .unwrap_or_default();
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r\x1b[2K[ms2m] {:<13} {:>7.1}s{depth}",
            progress.phase.as_str(),
            self.started.elapsed().as_secs_f64()
        );
        if progress.phase != self.last_phase {
            self.last_phase = progress.phase;
            if progress.phase.is_terminal() {
                let _ = writeln!(err);
            }
        }
        let _ = err.flush();
    }
}

#[async_trait::async_trait]
impl World for Standalone {
    async fn observe(
        &mut self,
        plan: &Plan,
        progress: &Progress,
    ) -> Result<Observation, WorldError> {
        let mut obs = Observation::at(jiff::Timestamp::now());
        match progress.phase {
            Phase::Pending => {
                let src = self
                    .source
                    .container(&self.s.container)
                    .await
                    .map_err(agent_err)?;
                obs.source = src.map(|c| SourceView {
                    node: self.source.addr().to_string(),
                    running: c.status == "running",
                    has_container: true,
                    natural_strategy: Strategy::ShadowPod,
                });
                obs.target_node_ready = Some(self.target.ready().await.is_ok());
                if self.s.transfer == TransferMode::Registry && self.s.image.is_none() {
                    obs.fatal = Some("--image is required with --transfer registry".into());
                }
                if self.s.transfer == TransferMode::Direct && self.s.direct_target.is_none() {
                    obs.fatal = Some("--direct-target is required with --transfer direct".into());
                }
            }
            Phase::Checkpointing
                if progress.steps.replay_topology == StepState::Done
                    && progress.steps.checkpoint == StepState::NotStarted =>
            {
                let check = self
                    .broker
                    .pre_binding_backlog(&plan.queues, self.s.source_prefetch)
                    .await
                    .map_err(mq_err)?;
                obs.backlog_settled = Some(check.settled);
            }
            Phase::Checkpointing if progress.steps.checkpoint != StepState::NotStarted => {
                let job = match &progress.checkpoint_job {
                    Some(id) => self
                        .source
                        .job(id, Duration::from_secs(1))
                        .await
                        .map_err(agent_err)?,
                    None => None,
                };
                obs.checkpoint = job_view(job, |j| j.result_str("checkpoint_id"));
                if obs.checkpoint == JobView::NotStarted
                    && self
                        .source
                        .checkpoint_exists(&plan.checkpoint_id)
                        .await
                        .map_err(agent_err)?
                {
                    obs.checkpoint = JobView::Succeeded {
                        output: plan.checkpoint_id.clone(),
                        finished_at: None,
                    };
                }
            }
            Phase::Transferring if progress.steps.transfer != StepState::NotStarted => {
                let job = match &progress.transfer_job {
                    Some(id) => self
                        .source
                        .job(id, Duration::from_secs(1))
                        .await
                        .map_err(agent_err)?,
                    None => None,
                };
                let direct = self.s.transfer == TransferMode::Direct;
                obs.transfer = job_view(job, |j| {
                    if direct {
                        j.result_str("target_checkpoint_id")
                    } else {
                        j.result_str("image")
                    }
                });
            }
            Phase::Restoring => {
                obs.target = match self
                    .target
                    .container(&plan.target_name)
                    .await
                    .map_err(agent_err)?
                {
                    None => TargetView::Absent,
                    Some(c) if c.status == "running" => TargetView::Running,
                    Some(c) if c.status == "stopped" => TargetView::Failed {
                        reason: format!("target container {} stopped", c.id),
                    },
                    Some(c) => TargetView::Pending {
                        reason: Some(c.status),
                    },
                };
            }
            Phase::Replaying => {
                obs.target = TargetView::Running;
                if progress.steps.stop_source == StepState::Done
                    && progress.steps.fence_primary != StepState::Done
                {
                    let src = self
                        .source
                        .container(&self.s.container)
                        .await
                        .map_err(agent_err)?;
                    obs.source = src.map(|c| SourceView {
                        node: self.source.addr().to_string(),
                        running: c.status == "running",
                        has_container: true,
                        natural_strategy: Strategy::ShadowPod,
                    });
                }
                self.observe_queues(plan, &mut obs, true).await?;
            }
            Phase::Finalizing => self.observe_queues(plan, &mut obs, false).await?,
            _ => {}
        }
        Ok(obs)
    }

    async fn execute(
        &mut self,
        plan: &Plan,
        progress: &mut Progress,
        action: &Action,
    ) -> Result<(), WorldError> {
        match action {
            Action::EnsureReplayTopology => self
                .broker
                .ensure_replay_topology(&plan.queues)
                .await
                .map_err(mq_err),
            Action::StartCheckpoint { checkpoint_id } => {
                let req = CheckpointRequest::Runc {
                    container_id: self.s.container.clone(),
                    leave_running: true,
                    tcp_established: self.s.tcp_established,
                    checkpoint_id: checkpoint_id.clone(),
                    rootfs_image: self.s.rootfs_image.clone(),
                };
                match self.source.start_checkpoint(&req).await {
                    Ok(job) => {
                        crate::engine::record_job(progress, action, &job.id);
                        Ok(())
                    }
                    // Asked before and the answer was lost: the checkpoint id is taken.
                    Err(e) if e.status() == Some(409) => Ok(()),
                    Err(e) => Err(agent_err(e)),
                }
            }
            Action::StartTransfer {
                checkpoint_id,
                mode,
                image,
            } => {
                let job = match mode {
                    TransferMode::Registry => self
                        .source
                        .start_push(&PushRequest {
                            checkpoint_id: checkpoint_id.clone(),
                            image: image.clone(),
                            compression: "zstd".into(),
                            insecure: self.s.insecure_registry,
                        })
                        .await
                        .map_err(agent_err)?,
                    TransferMode::Direct => self
                        .source
                        .start_direct_send(&DirectSendRequest {
                            checkpoint_id: checkpoint_id.clone(),
                            target: self.s.direct_target.clone().unwrap_or_default(),
                            target_checkpoint_id: checkpoint_id.clone(),
                            target_node: self.s.direct_target_node.clone(),
                            import_reference: None,
                        })
                        .await
                        .map_err(agent_err)?,
                };
                crate::engine::record_job(progress, action, &job.id);
                Ok(())
            }
            Action::CreateTarget { name, image, .. } => {
                let deadline = Instant::now() + plan.phase_timeout;
                if self.s.transfer == TransferMode::Registry {
                    let pull = serde_json::json!({"image": image, "checkpoint_id": plan.checkpoint_id,
                        "insecure": self.s.insecure_registry});
                    match self.target_pull(&pull).await {
                        Ok(job) => {
                            self.wait_job(&self.target, job, deadline).await?;
                        }
                        // Pulled by an earlier attempt.
                        Err(e) if e.status() == Some(409) => {}
                        Err(e) => return Err(agent_err(e)),
                    }
                }
                let req = RestoreRequest {
                    checkpoint_id: plan.checkpoint_id.clone(),
                    container_id: name.clone(),
                    netns_path: self.s.target_netns.clone(),
                    rootfs: self.s.rootfs.clone(),
                    tcp_established: self.s.tcp_established,
                    // The consumer names its control queue after its hostname.
                    hostname: Some(self.s.control_name.clone()),
                };
                match self.target.start_restore(&req).await {
                    Ok(job) => {
                        self.wait_job(&self.target, job, deadline).await?;
                        Ok(())
                    }
                    Err(e) if e.status() == Some(409) => Ok(()),
                    Err(e) => Err(agent_err(e)),
                }
            }
            Action::SendStartReplay {
                control_queue,
                replay_queue,
            } => self
                .broker
                .send_control(control_queue, &ControlMessage::start_replay(replay_queue))
                .await
                .map_err(mq_err),
            Action::FencePrimary => {
                let purged = self
                    .broker
                    .fence_primary(&plan.queues)
                    .await
                    .map_err(mq_err)?;
                *progress.replay.purged_duplicates.get_or_insert(0) += purged;
                Ok(())
            }
            Action::CutOver => self.broker.cut_over(&plan.queues).await.map_err(mq_err),
            Action::SendEndReplay { control_queue } => self
                .broker
                .send_control(control_queue, &ControlMessage::EndReplay)
                .await
                .map_err(mq_err),
            Action::DeleteReplayQueue => self
                .broker
                .delete_replay(&plan.queues)
                .await
                .map_err(mq_err),
            Action::StopSource | Action::RemoveSource => self
                .source
                .delete_container(&self.s.container)
                .await
                .map_err(agent_err),
            Action::DeleteTarget { name } => {
                self.target.delete_container(name).await.map_err(agent_err)
            }
            Action::ResumeSource => Err(WorldError::permanent(
                "a stopped standalone source cannot be resumed",
            )),
            // Never decided here: the plan has no import reference (the target agent
            // restores from its checkpoint store, nothing enters an image store).
            Action::DeleteImportedImage { .. } => Ok(()),
        }
    }

    async fn persist(&mut self, progress: &Progress) -> Result<(), WorldError> {
        self.save_state(progress)?;
        self.live_line(progress);
        Ok(())
    }
}

impl Standalone {
    /// Ready depth and consumers of the replay queue, and with `primary` the consumers
    /// of the primary queue: current counts, not statistics.
    async fn observe_queues(
        &self,
        plan: &Plan,
        obs: &mut Observation,
        primary: bool,
    ) -> Result<(), WorldError> {
        let replay = self
            .broker
            .queue_state(&plan.queues, &plan.queues.replay)
            .await
            .map_err(mq_err)?;
        obs.replay_depth = replay.map(|q| q.ready);
        obs.replay_consumers = replay.map(|q| q.consumers);
        if primary {
            obs.primary_consumers = self
                .broker
                .queue_state(&plan.queues, &plan.queues.primary)
                .await
                .map_err(mq_err)?
                .map(|q| q.consumers);
        }
        Ok(())
    }

    async fn target_pull(&self, body: &serde_json::Value) -> Result<Job, AgentError> {
        self.target.start_pull(body).await
    }
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

/// The final table of phase timings.
pub fn timing_table(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!("{:<14} {:>10}\n", "PHASE", "DURATION"));
    for t in &r.progress.phase_timings {
        let d = t.duration_ms.map_or_else(
            || "-".to_owned(),
            |ms| format!("{:.3} s", ms as f64 / 1000.0),
        );
        out.push_str(&format!("{:<14} {:>10}\n", t.phase.as_str(), d));
    }
    out.push_str(&format!(
        "{:<14} {:>10}\n",
        "total",
        format!("{:.3} s", r.total_ms as f64 / 1000.0)
    ));
    let rep = &r.progress.replay;
    if let Some(d) = rep.depth_at_start {
        out.push_str(&format!(
            "replay: backlog {d}, peak {}, source stopped by {}\n",
            rep.peak_depth.unwrap_or(d),
            rep.stop_reason.as_deref().unwrap_or("-")
        ));
    }
    match &r.progress.failure {
        Some(f) => out.push_str(&format!(
            "FAILED in {}: {}{}\n",
            f.phase,
            f.reason,
            if f.rolled_back { " (rolled back)" } else { "" }
        )),
        None if r.succeeded => out.push_str("Completed\n"),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::PhaseTiming;

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
