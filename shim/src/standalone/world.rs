//! The standalone driver's [`World`]: the node agents over their API and the broker,
//! observed and changed for the engine, with progress saved to the state file.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ms2m_api::{
    CheckpointRequest, CheckpointResult, DirectSendRequest, JobStatus, PullRequest, PushRequest,
    PushResult, RestoreRequest, SendResult,
};

use super::state_file::STATE_VERSION;
use super::{Settings, StateFile};
use crate::adapters::{AgentJob, agent_err, job_view, mq_err};
use crate::agent_client::AgentClient;
use crate::driver::{World, WorldError};
use crate::engine::{
    Action, JobView, Observation, Phase, Plan, Progress, SourceView, StepState, Strategy,
    TargetView, TransferMode,
};
use crate::messaging::{Broker, ControlMessage};

pub(super) struct Standalone {
    pub(super) s: Settings,
    pub(super) source: AgentClient,
    pub(super) target: AgentClient,
    pub(super) broker: std::sync::Arc<dyn Broker>,
    pub(super) started: Instant,
    pub(super) last_phase: Phase,
    pub(super) live: bool,
    pub(super) state_file: Option<PathBuf>,
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
        job: AgentJob,
        deadline: Instant,
    ) -> Result<AgentJob, WorldError> {
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
                obs.checkpoint =
                    job_view(job.as_ref(), |r: CheckpointResult| Some(r.checkpoint_id));
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
                obs.transfer = if direct {
                    job_view(job.as_ref(), |r: SendResult| Some(r.target_checkpoint_id))
                } else {
                    job_view(job.as_ref(), |r: PushResult| Some(r.image))
                };
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
                    tcp_close: None,
                    network_lock: None,
                    checkpoint_id: Some(checkpoint_id.clone()),
                    rootfs_image: self.s.rootfs_image.as_ref().map(PathBuf::from),
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
                            compression: Some("zstd".into()),
                            insecure: self.s.insecure_registry,
                            ..Default::default()
                        })
                        .await
                        .map_err(agent_err)?,
                    TransferMode::Direct => self
                        .source
                        .start_direct_send(&DirectSendRequest {
                            checkpoint_id: checkpoint_id.clone(),
                            target: self.s.direct_target.clone().unwrap_or_default(),
                            target_checkpoint_id: Some(checkpoint_id.clone()),
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
                    let pull = PullRequest {
                        image: image.clone(),
                        checkpoint_id: Some(plan.checkpoint_id.clone()),
                        insecure: self.s.insecure_registry,
                        ..Default::default()
                    };
                    match self.target.start_pull(&pull).await {
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
                    netns_path: self.s.target_netns.as_ref().map(PathBuf::from),
                    rootfs: self.s.rootfs.as_ref().map(PathBuf::from),
                    tcp_established: self.s.tcp_established,
                    tcp_close: None,
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
}
