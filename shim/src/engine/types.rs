//! The engine's vocabulary: what a migration is asked to do (`Plan`), what it has done so
//! far (`Progress`, persisted in the CR status or the standalone driver's memory), what the
//! driver saw (`Observation`) and what it must do next (`Action`).

use std::time::Duration;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Migration phases, in the order a successful migration walks them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Phase {
    #[default]
    Pending,
    Checkpointing,
    Transferring,
    Restoring,
    Replaying,
    Finalizing,
    Completed,
    /// Undoing the side effects of a failed migration; ends in `Failed`.
    RollingBack,
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Checkpointing => "Checkpointing",
            Phase::Transferring => "Transferring",
            Phase::Restoring => "Restoring",
            Phase::Replaying => "Replaying",
            Phase::Finalizing => "Finalizing",
            Phase::Completed => "Completed",
            Phase::RollingBack => "RollingBack",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the replay ends.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayMode {
    /// The source keeps serving while the target catches up; once the target consumes
    /// and the replay queue is empty, or after `replayCutoffSeconds` at the latest, the
    /// source is stopped.
    #[default]
    Cutoff,
    /// Stop the source as soon as the target consumes the replay queue, then let the
    /// target catch up alone: the source applies nothing the target also applies.
    Drain,
}

/// How the source makes room for the target.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The target starts beside the running source (Deployments, bare pods).
    ShadowPod,
    /// The source is stopped before the target starts (StatefulSets: one identity).
    Sequential,
}

/// How the checkpoint reaches the target node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransferMode {
    #[default]
    Registry,
    Direct,
}

/// Names on the broker, all derived once from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueNames {
    pub exchange: String,
    pub primary: String,
    pub replay: String,
    pub control: String,
    pub routing_key: String,
}

impl QueueNames {
    /// The replay and control names follow the reference implementation, so consumers
    /// written for it work unchanged.
    pub fn new(exchange: &str, primary: &str, routing_key: &str, target_name: &str) -> Self {
        Self {
            exchange: exchange.to_owned(),
            primary: primary.to_owned(),
            replay: format!("{primary}.ms2m-replay"),
            control: format!("ms2m.control.{target_name}"),
            routing_key: routing_key.to_owned(),
        }
    }
}

/// Everything the engine needs from the spec, resolved and defaulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub replay_mode: ReplayMode,
    /// `None`: no cutoff; in Cutoff mode the source then stops only once the target
    /// caught up (the phase timeout still applies).
    pub replay_cutoff: Option<Duration>,
    /// Longest time any one phase may take before the migration fails (and rolls back).
    pub phase_timeout: Duration,
    pub transfer_mode: TransferMode,
    /// `None`: chosen from the source's owner in `Pending`.
    pub strategy: Option<Strategy>,
    pub target_node: String,
    /// Target pod name (Kubernetes) or container id (standalone).
    pub target_name: String,
    /// Checkpoint id on the agents; deterministic so a repeated request is recognised.
    pub checkpoint_id: String,
    /// Image reference the checkpoint is pushed to (Registry mode).
    pub checkpoint_image: String,
    /// Direct mode into the target node's image store (Kubernetes): the local reference
    /// the target agent imports the checkpoint under; the target runs it, and a rollback
    /// removes it. `None`: nothing is imported (Registry mode, or the standalone driver,
    /// which restores from the agent's checkpoint store).
    pub import_reference: Option<String>,
    pub queues: QueueNames,
}

/// Progress of one side effect. `Intended` is written before the effect is attempted,
/// `Done` after it succeeded: a restart that finds `Intended` repeats the (idempotent)
/// effect, one that finds `Done` does not.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepState {
    #[default]
    NotStarted,
    Intended,
    Done,
}

impl StepState {
    fn is_not_started(&self) -> bool {
        *self == StepState::NotStarted
    }
}

/// One field per side effect of the protocol.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Steps {
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub replay_topology: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub checkpoint: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub transfer: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub stop_source: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub create_target: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub start_replay: StepState,
    /// The source is gone: unbind the primary queue and purge it (every message in it is
    /// also in the replay queue), so the replay queue is the only one fed.
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub fence_primary: StepState,
    /// Switch the exchange from the replay queue back to the primary queue in one
    /// routing step (alternate exchange), so each message lands in exactly one of them.
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub cut_over: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub end_replay: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub delete_replay: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub remove_source: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub delete_target: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub resume_source: StepState,
    #[serde(default, skip_serializing_if = "StepState::is_not_started")]
    pub delete_image: StepState,
}

/// Names a field of [`Steps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKey {
    ReplayTopology,
    Checkpoint,
    Transfer,
    StopSource,
    CreateTarget,
    StartReplay,
    FencePrimary,
    CutOver,
    EndReplay,
    DeleteReplay,
    RemoveSource,
    DeleteTarget,
    ResumeSource,
    DeleteImage,
}

impl Steps {
    pub fn get(&self, key: StepKey) -> StepState {
        *self.slot(key)
    }

    pub fn set(&mut self, key: StepKey, state: StepState) {
        *self.slot_mut(key) = state;
    }

    fn slot(&self, key: StepKey) -> &StepState {
        match key {
            StepKey::ReplayTopology => &self.replay_topology,
            StepKey::Checkpoint => &self.checkpoint,
            StepKey::Transfer => &self.transfer,
            StepKey::StopSource => &self.stop_source,
            StepKey::CreateTarget => &self.create_target,
            StepKey::StartReplay => &self.start_replay,
            StepKey::FencePrimary => &self.fence_primary,
            StepKey::CutOver => &self.cut_over,
            StepKey::EndReplay => &self.end_replay,
            StepKey::DeleteReplay => &self.delete_replay,
            StepKey::RemoveSource => &self.remove_source,
            StepKey::DeleteTarget => &self.delete_target,
            StepKey::ResumeSource => &self.resume_source,
            StepKey::DeleteImage => &self.delete_image,
        }
    }

    fn slot_mut(&mut self, key: StepKey) -> &mut StepState {
        match key {
            StepKey::ReplayTopology => &mut self.replay_topology,
            StepKey::Checkpoint => &mut self.checkpoint,
            StepKey::Transfer => &mut self.transfer,
            StepKey::StopSource => &mut self.stop_source,
            StepKey::CreateTarget => &mut self.create_target,
            StepKey::StartReplay => &mut self.start_replay,
            StepKey::FencePrimary => &mut self.fence_primary,
            StepKey::CutOver => &mut self.cut_over,
            StepKey::EndReplay => &mut self.end_replay,
            StepKey::DeleteReplay => &mut self.delete_replay,
            StepKey::RemoveSource => &mut self.remove_source,
            StepKey::DeleteTarget => &mut self.delete_target,
            StepKey::ResumeSource => &mut self.resume_source,
            StepKey::DeleteImage => &mut self.delete_image,
        }
    }
}

/// How long one phase took.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTiming {
    pub phase: Phase,
    #[schemars(with = "String")]
    pub started_at: Timestamp,
    /// Unset while the phase runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// What the replay queue did.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplayCounters {
    /// Depth when `START_REPLAY` was sent: the backlog since the checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_at_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_depth: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_depth: Option<u64>,
    /// When the source had consumed every message published before the replay queue
    /// was bound (the checkpoint waits for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub backlog_drained_at: Option<Timestamp>,
    /// Why the source was stopped: `CaughtUp`, `Cutoff` or `Drain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub source_stopped_at: Option<Timestamp>,
    /// Consumers on the primary queue when the source was told to stop: the fence waits
    /// until fewer are left (the source's channel closed, its prefetch requeued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_consumers_at_stop: Option<u32>,
    /// Messages purged from the primary queue by the fence: copies of replay-queue
    /// messages that a consumer without deduplication would otherwise apply twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_duplicates: Option<u64>,
    /// When the exchange was switched back to the primary queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub cut_over_at: Option<Timestamp>,
}

/// Why a migration failed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The phase the failure happened in.
    pub phase: Phase,
    pub reason: String,
    /// False when the failure came after the point of no return (source stopped for
    /// good): the target and the replay queue are left in place for an operator.
    pub rolled_back: bool,
}

/// Everything the engine remembers between two decisions.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub start_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub completion_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub phase_started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// The node the target runs on: the spec's, or the one the controller chose when the
    /// spec named none (recorded before anything else happens, so it never changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pod_name: Option<String>,
    /// Agent job ids, so a restarted driver polls the job it started instead of starting
    /// another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_job: Option<String>,
    #[serde(default)]
    pub steps: Steps,
    #[serde(default)]
    pub replay: ReplayCounters,
    /// One record per phase entered: start and duration. Written as `phaseRecords`;
    /// `status.phaseTimings` is the reference implementation's map of durations, derived
    /// from these (`crd::phase_timings_map`). Standalone state files written before the
    /// rename still read.
    #[serde(
        default,
        rename = "phaseRecords",
        alias = "phaseTimings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub phase_timings: Vec<PhaseTiming>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// An agent job as the driver saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum JobView {
    /// No job (never started, or the agent forgot it and left no result behind).
    #[default]
    NotStarted,
    Running,
    /// `output`: the checkpoint id (checkpoint) or the image reference (transfer).
    Succeeded {
        output: String,
        /// When the agent finished the job (its own clock): the phase boundary.
        finished_at: Option<Timestamp>,
    },
    Failed {
        reason: String,
    },
}

/// The source workload as the driver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceView {
    pub node: String,
    pub running: bool,
    pub has_container: bool,
    /// `Some(Sequential)` for StatefulSet-owned pods, `Some(ShadowPod)` otherwise.
    pub natural_strategy: Strategy,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TargetView {
    #[default]
    Absent,
    /// Created, not running yet; `reason` is what the runtime says (e.g. `ContainerCreating`).
    Pending {
        reason: Option<String>,
    },
    Running,
    Failed {
        reason: String,
    },
}

/// What the driver saw just before asking the engine. Fields the current phase doesn't
/// need may stay at their defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub now: Timestamp,
    /// The migration object is being deleted: roll back and stop.
    pub deleting: bool,
    /// `None`: the source is gone.
    pub source: Option<SourceView>,
    /// `None`: no such node; `Some(false)`: not Ready.
    pub target_node_ready: Option<bool>,
    pub checkpoint: JobView,
    pub transfer: JobView,
    pub target: TargetView,
    /// Ready messages in the replay queue; `None` when not measured (or no such queue).
    pub replay_depth: Option<u64>,
    /// Consumers on the replay queue (real time, from `queue.declare`): "caught up" needs
    /// a target that consumes, not only an empty queue.
    pub replay_consumers: Option<u32>,
    /// Consumers on the primary queue (real time).
    pub primary_consumers: Option<u32>,
    /// Every message published before the replay binding has been acknowledged by the
    /// source (messaging's backlog probe, from fresh management statistics). `None`: not
    /// measured.
    pub backlog_settled: Option<bool>,
    /// A side effect failed in a way that retrying cannot fix.
    pub fatal: Option<String>,
}

impl Observation {
    pub fn at(now: Timestamp) -> Self {
        Self {
            now,
            deleting: false,
            source: None,
            target_node_ready: None,
            checkpoint: JobView::NotStarted,
            transfer: JobView::NotStarted,
            target: TargetView::Absent,
            replay_depth: None,
            replay_consumers: None,
            primary_consumers: None,
            backlog_settled: None,
            fatal: None,
        }
    }
}

/// A side effect for the driver to carry out, in the order given. Every action is
/// idempotent: the driver may repeat it after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Declare the fanout exchange and the replay queue, bind the primary and the replay
    /// queue to it. Must precede the checkpoint: from then on every message is in both.
    EnsureReplayTopology,
    StartCheckpoint {
        checkpoint_id: String,
    },
    /// `image`: the registry reference pushed to, or with a Direct import the local
    /// reference the target agent imports under.
    StartTransfer {
        checkpoint_id: String,
        mode: TransferMode,
        image: String,
    },
    /// Stop the source from consuming (ShadowPod: delete/stop it; Sequential: scale its
    /// owner down).
    StopSource,
    CreateTarget {
        name: String,
        image: String,
        node: String,
    },
    SendStartReplay {
        control_queue: String,
        replay_queue: String,
    },
    /// The source is gone: unbind the primary queue from the exchange and purge it.
    FencePrimary,
    /// Route new messages to the primary queue instead of the replay queue, atomically.
    CutOver,
    SendEndReplay {
        control_queue: String,
    },
    DeleteReplayQueue,
    /// Remove what is left of the source for good (delete the pod or container).
    RemoveSource,
    DeleteTarget {
        name: String,
    },
    /// Rollback of a Sequential `StopSource` (scale the owner back up).
    ResumeSource,
    /// Rollback of a Direct import: remove `reference` from the target node's image
    /// store. Best effort: a failure is reported, never retried, never blocks the rollback.
    DeleteImportedImage {
        reference: String,
    },
}

impl Action {
    pub fn step(&self) -> StepKey {
        match self {
            Action::EnsureReplayTopology => StepKey::ReplayTopology,
            Action::StartCheckpoint { .. } => StepKey::Checkpoint,
            Action::StartTransfer { .. } => StepKey::Transfer,
            Action::StopSource => StepKey::StopSource,
            Action::CreateTarget { .. } => StepKey::CreateTarget,
            Action::SendStartReplay { .. } => StepKey::StartReplay,
            Action::FencePrimary => StepKey::FencePrimary,
            Action::CutOver => StepKey::CutOver,
            Action::SendEndReplay { .. } => StepKey::EndReplay,
            Action::DeleteReplayQueue => StepKey::DeleteReplay,
            Action::RemoveSource => StepKey::RemoveSource,
            Action::DeleteTarget { .. } => StepKey::DeleteTarget,
            Action::ResumeSource => StepKey::ResumeSource,
            Action::DeleteImportedImage { .. } => StepKey::DeleteImage,
        }
    }
}

/// When the driver should ask again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Right after the actions ran (they changed what the next decision sees).
    Now,
    After(Duration),
    /// Terminal: nothing more to do.
    Stop,
}

/// A phase change, for events and the live phase line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Persist this before running `actions`.
    pub progress: Progress,
    pub actions: Vec<Action>,
    pub next: Next,
    pub transitions: Vec<Transition>,
}
