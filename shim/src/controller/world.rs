//! The engine's world as the Kubernetes controller sees it: pods and nodes through the
//! API, agents and broker through [`Backends`].

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::{Event, EventType},
};
use serde_json::json;
use tracing::{debug, warn};

use super::api_calls::{self as calls, ApiCall};
use super::backends::MigrationRef;
use super::target_pod::{self, ImageSource};
use super::{Context, Error};
use crate::crd::{Condition, StatefulMigration, StatefulMigrationStatus};
use crate::driver::{World, WorldError};
use crate::engine::{
    Action, Observation, Phase, Plan, Progress, SourceView, StepState, Strategy, TargetView,
    TransferMode,
};
use crate::messaging::ControlMessage;

/// Lower cost = deleted first when a ReplicaSet scales down (beta since 1.22, on by default).
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Documents which table entry a call site uses.
fn uses(_: ApiCall) {}

fn kube_err(what: &str, e: kube::Error) -> WorldError {
    match &e {
        kube::Error::Api(s) if s.code == 403 || s.code == 422 || s.code == 400 => {
            WorldError::permanent(format!("{what}: {e}"))
        }
        _ => WorldError::transient(format!("{what}: {e}")),
    }
}

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

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.m.namespace)
    }

    fn container_name(&self, pod: Option<&Pod>) -> Option<String> {
        if let Some(c) = &self.m.spec.container_name {
            return Some(c.clone());
        }
        pod?.spec
            .as_ref()?
            .containers
            .first()
            .map(|c| c.name.clone())
    }

    /// The source pod as last observed in this reconcile (for building requests), or
    /// fetched now.
    async fn get_source(&mut self) -> Result<Option<Pod>, WorldError> {
        if let Some(p) = &self.source_pod {
            return Ok(Some(p.clone()));
        }
        self.fetch_source().await
    }

    async fn fetch_source(&mut self) -> Result<Option<Pod>, WorldError> {
        uses(calls::POD_GET);
        let pod = self
            .pods()
            .get_opt(&self.m.spec.source_pod)
            .await
            .map_err(|e| kube_err("reading the source pod", e))?;
        self.source_pod.clone_from(&pod);
        Ok(pod)
    }

    /// Ready depth and consumers of the replay queue, and with `primary` the consumers
    /// of the primary queue: current counts, not statistics.
    async fn observe_queues(
        &self,
        plan: &Plan,
        obs: &mut Observation,
        primary: bool,
    ) -> Result<(), WorldError> {
        let b = &self.ctx.backends;
        let replay = b.queue_state(&self.m, &plan.queues.replay).await?;
        obs.replay_depth = replay.map(|q| q.ready);
        obs.replay_consumers = replay.map(|q| q.consumers);
        if primary {
            obs.primary_consumers = b
                .queue_state(&self.m, &plan.queues.primary)
                .await?
                .map(|q| q.consumers);
        }
        Ok(())
    }

    async fn source_view(&mut self) -> Result<Option<SourceView>, WorldError> {
        let Some(pod) = self.fetch_source().await? else {
            return Ok(None);
        };
        // A Sequential target carries the source's name: that pod is not the source.
        if target_pod::is_target_of(&pod, &self.m.name) {
            return Ok(None);
        }
        let container = self.container_name(Some(&pod));
        let spec = pod.spec.as_ref();
        let has_container = match (&container, spec) {
            (Some(c), Some(s)) => s.containers.iter().any(|x| &x.name == c),
            _ => false,
        };
        let owned_by_sts = pod
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == "StatefulSet");
        Ok(Some(SourceView {
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            running: pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && pod.metadata.deletion_timestamp.is_none(),
            has_container,
            natural_strategy: if owned_by_sts {
                Strategy::Sequential
            } else {
                Strategy::ShadowPod
            },
        }))
    }

    async fn node_ready(&self, node: &str) -> Result<Option<bool>, WorldError> {
        uses(calls::NODE_GET);
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let Some(n) = nodes
            .get_opt(node)
            .await
            .map_err(|e| kube_err("reading the target node", e))?
        else {
            return Ok(None);
        };
        let ready = n
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let schedulable = !n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
        Ok(Some(ready && schedulable))
    }

    async fn target_view(&self, name: &str, strategy: Strategy) -> Result<TargetView, WorldError> {
        let Some(pod) = self.get_pod(name).await? else {
            return Ok(TargetView::Absent);
        };
        // Under the source's name, a pod that is not ours is the StatefulSet's.
        if strategy == Strategy::Sequential && !target_pod::is_target_of(&pod, &self.m.name) {
            return Ok(TargetView::Absent);
        }
        let status = pod.status.unwrap_or_default();
        let waiting = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| c.state?.waiting?.reason);
        Ok(match status.phase.as_deref() {
            Some("Running") => TargetView::Running,
            Some("Failed") | Some("Succeeded") => TargetView::Failed {
                reason: status
                    .message
                    .or(status.reason)
                    .unwrap_or_else(|| "the target pod exited".into()),
            },
            _ => match waiting.as_deref() {
                // Restoring again would fail the same way: stop now, not at the timeout.
                // ErrImageNeverPull: the imported image is not in the node's store, and
                // with `imagePullPolicy: Never` it never will be.
                Some(
                    r @ ("CrashLoopBackOff"
                    | "CreateContainerError"
                    | "InvalidImageName"
                    | "ErrImageNeverPull"),
                ) => TargetView::Failed {
                    reason: r.to_owned(),
                },
                _ => TargetView::Pending { reason: waiting },
            },
        })
    }

    async fn get_pod(&self, name: &str) -> Result<Option<Pod>, WorldError> {
        uses(calls::POD_GET);
        self.pods()
            .get_opt(name)
            .await
            .map_err(|e| kube_err("reading the target pod", e))
    }

    fn statefulsets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.ctx.client.clone(), &self.m.namespace)
    }

    /// Sequential target: the StatefulSet's pod, built from its template (the source pod
    /// is gone by now). A 409 is an earlier attempt's pod only if it is ours: under the
    /// source's name it may be a pod the StatefulSet made after someone scaled it up.
    async fn create_sequential_target(
        &self,
        node: &str,
        image: &str,
        from: ImageSource,
    ) -> Result<(), WorldError> {
        let (sts, ordinal) = self.statefulset_of()?;
        uses(calls::STATEFULSET_GET);
        let set = self
            .statefulsets()
            .get(&sts)
            .await
            .map_err(|e| kube_err("reading the source StatefulSet", e))?;
        let first = set
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone());
        let container = self
            .m
            .spec
            .container_name
            .clone()
            .or(first)
            .ok_or_else(|| WorldError::permanent("the StatefulSet's template has no container"))?;
        let pod = target_pod::build_for_statefulset(
            &set,
            ordinal,
            &container,
            node,
            image,
            from,
            &self.m.name,
        );
        uses(calls::POD_CREATE);
        match self.pods().create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let name = pod.metadata.name.unwrap_or_default();
                match self.get_pod(&name).await? {
                    Some(p) if !target_pod::is_target_of(&p, &self.m.name) => {
                        Err(WorldError::permanent(format!(
                            "pod {name} exists and is not this migration's target (was {sts} scaled up?)"
                        )))
                    }
                    _ => Ok(()),
                }
            }
            Err(e) => Err(kube_err("creating the target pod", e)),
        }
    }

    /// Gives the Sequential target back to its StatefulSet. Scale-up first: the
    /// controller's attempt to create `<sts>-<ordinal>` fails while the target holds the
    /// name, so no second instance can appear. Then the selector's labels: the
    /// StatefulSet adopts the orphan whose name matches an ordinal it wants. The reverse
    /// order would let it adopt the pod while the ordinal is above its replica count and
    /// delete it.
    async fn hand_back_to_statefulset(&self, target: &str) -> Result<(), WorldError> {
        let (sts, ordinal) = self.statefulset_of()?;
        self.scale_statefulset(ordinal + 1).await?;
        uses(calls::STATEFULSET_GET);
        let set = self
            .statefulsets()
            .get(&sts)
            .await
            .map_err(|e| kube_err("reading the source StatefulSet", e))?;
        let labels = target_pod::selector_labels(&set);
        uses(calls::POD_PATCH);
        self.pods()
            .patch(
                target,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await
            .map_err(|e| kube_err("handing the target to its StatefulSet", e))?;
        Ok(())
    }

    /// Deletes the target; under a Sequential source's name only if the pod is ours (uid
    /// precondition, so a pod re-made in between is not hit).
    async fn delete_target(&self, name: &str, strategy: Strategy) -> Result<(), WorldError> {
        if strategy != Strategy::Sequential {
            return self.delete_pod(name, None).await;
        }
        match self.get_pod(name).await? {
            Some(p) if target_pod::is_target_of(&p, &self.m.name) => {
                self.delete_pod(name, p.metadata.uid).await
            }
            _ => Ok(()),
        }
    }

    /// `<sts>-<ordinal>` → (`<sts>`, ordinal).
    fn statefulset_of(&self) -> Result<(String, i32), WorldError> {
        let pod = &self.m.spec.source_pod;
        pod.rsplit_once('-')
            .and_then(|(sts, ord)| Some((sts.to_owned(), ord.parse::<i32>().ok()?)))
            .ok_or_else(|| {
                WorldError::permanent(format!(
                    "{pod} is not named like a StatefulSet pod (<name>-<ordinal>)"
                ))
            })
    }

    /// Scaling a StatefulSet down removes its highest ordinals: only the highest one can
    /// be migrated Sequentially without taking its siblings down too.
    async fn sequential_precondition(&self) -> Result<Option<String>, WorldError> {
        let (sts, ordinal) = match self.statefulset_of() {
            Ok(x) => x,
            Err(e) => return Ok(Some(e.message)),
        };
        uses(calls::STATEFULSET_GET);
        let api: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), &self.m.namespace);
        let Some(s) = api
            .get_opt(&sts)
            .await
            .map_err(|e| kube_err("reading the source StatefulSet", e))?
        else {
            return Ok(Some(format!("StatefulSet {sts} not found")));
        };
        let spec = s.spec.unwrap_or_default();
        let deletes_claims = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref())
            == Some("Delete");
        if deletes_claims
            && spec
                .volume_claim_templates
                .as_ref()
                .is_some_and(|v| !v.is_empty())
        {
            return Ok(Some(format!(
                "StatefulSet {sts} deletes its claims when scaled down (persistentVolumeClaimRetentionPolicy.whenScaled: Delete): a Sequential migration would lose {}'s volumes",
                self.m.spec.source_pod
            )));
        }
        let replicas = spec.replicas.unwrap_or(1);
        Ok((replicas != ordinal + 1).then(|| {
            format!(
                "a Sequential migration moves the StatefulSet's highest ordinal ({sts}-{}), not {}",
                replicas - 1,
                self.m.spec.source_pod
            )
        }))
    }

    async fn scale_statefulset(&self, replicas: i32) -> Result<(), WorldError> {
        let (sts, _) = self.statefulset_of()?;
        uses(calls::STATEFULSET_SCALE_PATCH);
        let api: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), &self.m.namespace);
        api.patch_scale(
            &sts,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .map_err(|e| kube_err("scaling the source StatefulSet", e))?;
        Ok(())
    }

    /// Stops a ShadowPod source. A ReplicaSet-owned source would be replaced by a fresh
    /// pod (a second consumer without the state), so the target takes its place in the
    /// ReplicaSet first: the source gets the lowest deletion cost (should the ReplicaSet
    /// trim a surplus pod, it picks the source), the target gets the labels that make
    /// the ReplicaSet adopt it, then the source goes. Each step is idempotent; a source
    /// already gone has nothing to hand over.
    async fn hand_over_and_stop_source(&mut self, target: &str) -> Result<(), WorldError> {
        let Some(source) = self.fetch_source().await? else {
            return Ok(());
        };
        let owned_by_rs = source
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == "ReplicaSet");
        if owned_by_rs {
            uses(calls::POD_PATCH);
            let pods = self.pods();
            let cost = json!({"metadata": {"annotations": {DELETION_COST: i32::MIN.to_string()}}});
            pods.patch(
                &self.m.spec.source_pod,
                &PatchParams::default(),
                &Patch::Merge(cost),
            )
            .await
            .map_err(|e| kube_err("lowering the source's deletion cost", e))?;
            let labels = json!({"metadata": {"labels": source.labels()}});
            pods.patch(target, &PatchParams::default(), &Patch::Merge(labels))
                .await
                .map_err(|e| kube_err("handing the source's labels to the target", e))?;
        }
        self.delete_pod(&self.m.spec.source_pod, None).await
    }

    async fn delete_pod(&self, name: &str, uid: Option<String>) -> Result<(), WorldError> {
        uses(calls::POD_DELETE);
        let dp = match uid {
            Some(uid) => DeleteParams::default().preconditions(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            None => DeleteParams::default(),
        };
        match self.pods().delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_err("deleting a pod", e)),
        }
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

    async fn warn(&self, reason: &str, note: String) {
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

    /// The pod a ShadowPod target is built from.
    async fn template(&mut self) -> Result<Pod, WorldError> {
        self.get_source().await?.ok_or_else(|| {
            WorldError::permanent("the source pod disappeared before the target was created")
        })
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

fn condition(progress: &Progress, prev: &[Condition], now: &str) -> Vec<Condition> {
    let (status, reason, message) = match progress.phase {
        Phase::Completed => ("True", "Completed", "the target serves".to_owned()),
        Phase::Failed => (
            "False",
            "Failed",
            progress
                .failure
                .as_ref()
                .map(|f| f.reason.clone())
                .unwrap_or_default(),
        ),
        p => ("Unknown", p.as_str(), format!("migration in phase {p}")),
    };
    let since = |type_: &str, status: &str| {
        prev.iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_owned())
    };
    let mut conditions = vec![Condition {
        type_: "Succeeded".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.clone(),
        last_transition_time: since("Succeeded", status),
    }];
    // The reference implementation's condition, so `kubectl wait --for=condition=Failed`
    // written for it works unchanged.
    if progress.phase == Phase::Failed {
        conditions.push(Condition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: "MigrationFailed".into(),
            message,
            last_transition_time: since("Failed", "True"),
        });
    }
    conditions
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
            condition(progress, &prev.conditions, &now),
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
