//! The engine's world as the Kubernetes controller sees it: pods and nodes through the
//! API, agents and broker through [`Backends`].
//!
//! Files: `pods.rs` (source, target, nodes), `statefulset.rs` (the Sequential
//! strategy's StatefulSet operations), `status.rs` (conditions); the [`World`] impl is
//! here.

mod pods;
mod statefulset;
mod status;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Resource,
    api::PostParams,
    runtime::events::{Event, EventType},
};
use tracing::{debug, warn};

use super::api_calls::{self as calls, ApiCall};
use super::backends::MigrationRef;
use super::target_pod::{self, ImageSource};
use super::{Context, Error};
use crate::adapters::kube_err;
use crate::crd::{StatefulMigration, StatefulMigrationStatus};
use crate::driver::{World, WorldError};
use crate::engine::{
    Action, Observation, Phase, Plan, Progress, StepState, Strategy, TargetView, TransferMode,
};
use crate::messaging::ControlMessage;

/// Lower cost = deleted first when a ReplicaSet scales down (beta since 1.22, on by default).
pub(super) const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Documents which table entry a call site uses.
pub(super) fn uses(_: ApiCall) {}

pub(super) struct KubeWorld {
    ctx: Arc<Context>,
    obj: StatefulMigration,
    m: MigrationRef,
    deleting: bool,
    source_pod: Option<Pod>,
}

impl KubeWorld {
    pub(super) fn new(
        ctx: Arc<Context>,
        obj: &StatefulMigration,
        m: MigrationRef,
        deleting: bool,
    ) -> Self {
        Self {
            ctx,
            obj: obj.clone(),
            m,
            deleting,
            source_pod: None,
        }
    }

    /// The names changed (the strategy was resolved in this reconcile).
    pub(super) fn set_ref(&mut self, m: MigrationRef) {
        self.m = m;
    }

    /// A Warning event on the migration, for what goes wrong without failing it.
    /// Deletes the checkpoints a finished migration left in the agents' stores (see
    /// [`crate::engine::leftover_checkpoints`]). Best effort: a node whose agent does not
    /// answer keeps its copy until the agent's retention expiry, and says so in an event.
    pub(super) async fn release_checkpoints(&self, plan: &Plan, progress: &Progress) {
        let mut failed = Vec::new();
        for l in crate::engine::leftover_checkpoints(plan, progress) {
            match self
                .ctx
                .backends
                .delete_checkpoint(&self.m, &l.node, &l.checkpoint_id)
                .await
            {
                Ok(()) => {
                    debug!(migration = %self.m.name, node = %l.node, checkpoint = %l.checkpoint_id, "checkpoint deleted")
                }
                Err(e) => {
                    warn!(
                        migration = %self.m.name, node = %l.node, checkpoint = %l.checkpoint_id, error = %e,
                        "could not delete the checkpoint"
                    );
                    failed.push(format!("{} on node {} ({e})", l.checkpoint_id, l.node));
                }
            }
        }
        // One event for all nodes: the recorder folds repeats of a reason into a series.
        if !failed.is_empty() {
            self.warn(
                "CheckpointCleanupFailed",
                format!(
                    "checkpoint left until the agents' retention expires: {}",
                    failed.join("; ")
                ),
            )
            .await;
        }
    }

    pub(super) async fn warn(&self, reason: &str, note: String) {
        uses(calls::EVENT_CREATE);
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(super::truncate(&note, 1000)),
            action: "Migrate".into(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &self.obj.object_ref(&()))
            .await
        {
            warn!(error = %e, "could not publish event");
        }
    }
}

/// A Direct transfer leaves the checkpoint image in the target node's store; a Registry
/// transfer leaves it in the registry.
fn image_source(plan: &Plan) -> ImageSource {
    match plan.transfer_mode {
        TransferMode::Registry => ImageSource::Registry,
        TransferMode::Direct => ImageSource::NodeStore,
    }
}

#[async_trait::async_trait]
impl World for KubeWorld {
    async fn observe(
        &mut self,
        plan: &Plan,
        progress: &Progress,
    ) -> Result<Observation, WorldError> {
        let mut obs = Observation::at(jiff::Timestamp::now());
        obs.deleting = self.deleting;
        let source_node = progress.source_node.clone().unwrap_or_default();
        match progress.phase {
            Phase::Pending => {
                if let Err(e) = self.m.spec.validate() {
                    obs.fatal = Some(e.to_string());
                    return Ok(obs);
                }
                obs.source = self.source_view().await?;
                // An empty plan node: none named and none chosen (the chooser's reason,
                // or the missing source, fails the migration).
                if !plan.target_node.is_empty() {
                    obs.target_node_ready = self.node_ready(&plan.target_node).await?;
                }
                let sequential = plan
                    .strategy
                    .or(obs.source.as_ref().map(|s| s.natural_strategy));
                if obs.source.is_some() && sequential == Some(Strategy::Sequential) {
                    obs.fatal = self.sequential_precondition().await?;
                }
                let swap = self.m.spec.identity_swap_mode;
                let statefulset_pod = obs
                    .source
                    .as_ref()
                    .is_some_and(|s| s.natural_strategy == Strategy::Sequential);
                if statefulset_pod && sequential == Some(Strategy::ShadowPod) && !swap.is_none() {
                    obs.fatal = Some(format!(
                        "identitySwapMode {swap:?} is not implemented in ms2m yet; migrate this StatefulSet pod with identitySwapMode None (the target keeps its own name and the StatefulSet is scaled down by one) or migrationStrategy Sequential"
                    ));
                }
            }
            Phase::Checkpointing
                if progress.steps.replay_topology == StepState::Done
                    && progress.steps.checkpoint == StepState::NotStarted =>
            {
                obs.backlog_settled = Some(
                    self.ctx
                        .backends
                        .pre_binding_backlog_settled(&self.m)
                        .await?,
                );
            }
            Phase::Checkpointing if progress.steps.checkpoint != StepState::NotStarted => {
                obs.checkpoint = self
                    .ctx
                    .backends
                    .checkpoint_job(
                        &self.m,
                        &source_node,
                        progress.checkpoint_job.as_deref(),
                        &plan.checkpoint_id,
                    )
                    .await?;
            }
            Phase::Transferring if progress.steps.transfer != StepState::NotStarted => {
                let b = &self.ctx.backends;
                let job = progress.transfer_job.as_deref();
                obs.transfer = match plan.transfer_mode {
                    TransferMode::Registry => b.push_job(&self.m, &source_node, job).await?,
                    TransferMode::Direct => b.direct_send_job(&self.m, &source_node, job).await?,
                };
            }
            Phase::Restoring => {
                let strategy = progress.strategy.unwrap_or(Strategy::ShadowPod);
                obs.target = self.target_view(&plan.target_name, strategy).await?;
                if progress.strategy == Some(Strategy::Sequential) {
                    obs.source = self.source_view().await?;
                }
            }
            Phase::Replaying => {
                obs.target = TargetView::Running;
                if progress.steps.stop_source == StepState::Done
                    && progress.steps.fence_primary != StepState::Done
                {
                    obs.source = self.source_view().await?;
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
        let b = self.ctx.backends.clone();
        let strategy = progress.strategy.unwrap_or(Strategy::ShadowPod);
        let source_node = progress.source_node.clone().unwrap_or_default();
        match action {
            Action::EnsureReplayTopology => b.ensure_replay_topology(&self.m).await,
            Action::StartCheckpoint { checkpoint_id } => {
                let pod = self.get_source().await?;
                let container = self.container_name(pod.as_ref()).ok_or_else(|| {
                    WorldError::permanent("cannot tell which container to checkpoint")
                })?;
                if let Some(job) = b
                    .start_checkpoint(
                        &self.m,
                        &source_node,
                        &self.m.spec.source_pod,
                        &container,
                        checkpoint_id,
                    )
                    .await?
                {
                    crate::engine::record_job(progress, action, &job);
                }
                Ok(())
            }
            Action::StartTransfer {
                checkpoint_id,
                mode,
                image,
            } => {
                let job = match mode {
                    TransferMode::Registry => {
                        b.start_push(&self.m, &source_node, checkpoint_id, image)
                            .await?
                    }
                    // The runtime restores only from an image in the node's store: the
                    // target agent imports what it receives under `image`.
                    TransferMode::Direct => {
                        b.start_direct_send(
                            &self.m,
                            &source_node,
                            &plan.target_node,
                            checkpoint_id,
                            image,
                        )
                        .await?
                    }
                };
                crate::engine::record_job(progress, action, &job);
                Ok(())
            }
            Action::StopSource => match strategy {
                Strategy::ShadowPod => self.hand_over_and_stop_source(&plan.target_name).await,
                Strategy::Sequential => {
                    let (_, ordinal) = self.statefulset_of()?;
                    self.scale_statefulset(ordinal).await
                }
            },
            Action::CreateTarget { image, node, .. } if strategy == Strategy::Sequential => {
                self.create_sequential_target(node, image, image_source(plan))
                    .await
            }
            Action::CreateTarget { name, image, node } => {
                let template = self.template().await?;
                let container = self
                    .container_name(Some(&template))
                    .ok_or_else(|| WorldError::permanent("the source has no container"))?;
                let pod = target_pod::build(
                    &template,
                    &container,
                    name,
                    node,
                    image,
                    image_source(plan),
                    &self.m.name,
                );
                uses(calls::POD_CREATE);
                match self.pods().create(&PostParams::default(), &pod).await {
                    Ok(_) => Ok(()),
                    // Created by an earlier attempt whose outcome we didn't see.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(kube_err("creating the target pod", e)),
                }
            }
            Action::SendStartReplay {
                control_queue,
                replay_queue,
            } => {
                b.send_control(
                    &self.m,
                    control_queue,
                    &ControlMessage::start_replay(replay_queue),
                )
                .await
            }
            Action::FencePrimary => {
                let purged = b.fence_primary(&self.m).await?;
                *progress.replay.purged_duplicates.get_or_insert(0) += purged;
                Ok(())
            }
            Action::CutOver => b.cut_over(&self.m).await,
            Action::SendEndReplay { control_queue } => {
                b.send_control(&self.m, control_queue, &ControlMessage::EndReplay)
                    .await
            }
            Action::DeleteReplayQueue => b.delete_replay(&self.m).await,
            Action::RemoveSource => match strategy {
                Strategy::ShadowPod => self.delete_pod(&self.m.spec.source_pod, None).await,
                // Scaled away in Restoring; the StatefulSet gets the target in its place.
                Strategy::Sequential => self.hand_back_to_statefulset(&plan.target_name).await,
            },
            Action::DeleteTarget { name } => self.delete_target(name, strategy).await,
            Action::ResumeSource => {
                let (_, ordinal) = self.statefulset_of()?;
                self.scale_statefulset(ordinal + 1).await
            }
            Action::DeleteImportedImage { reference } => {
                // Best effort: a leftover image costs disk space on one node (and the
                // kubelet's image GC removes unused images under disk pressure); holding
                // the rollback for it would cost more.
                if let Err(e) = b.delete_image(&self.m, &plan.target_node, reference).await {
                    warn!(
                        migration = %self.m.name, %reference, node = %plan.target_node, error = %e,
                        "could not remove the imported checkpoint image"
                    );
                    self.warn(
                        "ImageCleanupFailed",
                        format!(
                            "checkpoint image {reference} left in the image store of node {}: {e}",
                            plan.target_node
                        ),
                    )
                    .await;
                }
                Ok(())
            }
        }
    }

    async fn persist(&mut self, progress: &Progress) -> Result<(), WorldError> {
        let prev = self.obj.status.clone().unwrap_or_default();
        let now = jiff::Timestamp::now().to_string();
        let status = StatefulMigrationStatus::new(
            progress.clone(),
            status::condition(progress, &prev.conditions, &now),
            self.obj.metadata.generation,
        );
        let mut obj = self.obj.clone();
        obj.status = Some(status);
        uses(calls::MIGRATION_STATUS_UPDATE);
        let api: Api<StatefulMigration> =
            Api::namespaced(self.ctx.client.clone(), &self.m.namespace);
        match api
            .replace_status(&self.m.name, &PostParams::default(), &obj)
            .await
        {
            Ok(updated) => {
                self.obj = updated;
                Ok(())
            }
            Err(e) => Err(WorldError::transient(format!(
                "writing the status: {}",
                Error::Kube(e)
            ))),
        }
    }
}
