//! The decision function: one pure step of the state machine.

use std::time::Duration;

use jiff::Timestamp;

use super::types::*;

/// How often a driver polls while an agent job or a pod is in flight.
pub const POLL: Duration = Duration::from_secs(1);
/// How often the replay queue depth is sampled while replaying.
pub const REPLAY_POLL: Duration = Duration::from_millis(250);

/// One step: given the plan, the persisted progress and a fresh observation, say what to
/// persist and which side effects to carry out. Pure and deterministic.
pub fn decide(plan: &Plan, prev: &Progress, obs: &Observation) -> Decision {
    let mut s = Step {
        plan,
        obs,
        p: prev.clone(),
        actions: Vec::new(),
        transitions: Vec::new(),
        next: Next::After(POLL),
    };
    if s.p.start_time.is_none() {
        s.p.start_time = Some(obs.now);
        s.p.phase_started_at = Some(obs.now);
        s.p.target_pod_name = Some(plan.target_name.clone());
        s.p.phase_timings.push(PhaseTiming {
            phase: s.p.phase,
            started_at: obs.now,
            duration_ms: None,
        });
    }
    s.run();
    Decision {
        progress: s.p,
        actions: s.actions,
        next: s.next,
        transitions: s.transitions,
    }
}

/// Marks the side effect of `action` as carried out. Drivers call it after each action
/// succeeded, and persist the progress afterwards.
pub fn mark_done(progress: &mut Progress, action: &Action) {
    progress.steps.set(action.step(), StepState::Done);
}

/// Records an agent job id once the agent accepted the request.
pub fn record_job(progress: &mut Progress, action: &Action, job_id: &str) {
    match action {
        Action::StartCheckpoint { .. } => progress.checkpoint_job = Some(job_id.to_owned()),
        Action::StartTransfer { .. } => progress.transfer_job = Some(job_id.to_owned()),
        _ => {}
    }
}

struct Step<'a> {
    plan: &'a Plan,
    obs: &'a Observation,
    p: Progress,
    actions: Vec<Action>,
    transitions: Vec<Transition>,
    next: Next,
}

impl Step<'_> {
    fn run(&mut self) {
        if self.p.phase.is_terminal() {
            self.next = Next::Stop;
            return;
        }
        if self.p.phase != Phase::RollingBack {
            if self.obs.deleting {
                return self.fail("the migration was deleted while in progress".into());
            }
            if let Some(fatal) = &self.obs.fatal {
                return self.fail(fatal.clone());
            }
        }
        match self.p.phase {
            Phase::Pending => self.pending(),
            Phase::Checkpointing => self.checkpointing(),
            Phase::Transferring => self.transferring(),
            Phase::Restoring => self.restoring(),
            Phase::Replaying => self.replaying(),
            Phase::Finalizing => self.finalizing(),
            Phase::RollingBack => self.rolling_back(),
            Phase::Completed | Phase::Failed => unreachable!("terminal phases return early"),
        }
    }

    fn strategy(&self) -> Strategy {
        self.p
            .strategy
            .or(self.plan.strategy)
            .unwrap_or(Strategy::ShadowPod)
    }

    fn elapsed_in_phase(&self) -> Duration {
        let since = self.p.phase_started_at.unwrap_or(self.obs.now);
        since_ms(since, self.obs.now)
    }

    fn timed_out(&self) -> bool {
        self.elapsed_in_phase() >= self.plan.phase_timeout
    }

    fn timeout_reason(&self, what: &str) -> String {
        format!(
            "{what} within the phase timeout of {} s",
            self.plan.phase_timeout.as_secs()
        )
    }

    /// Emits `action` unless its step is done, recording the intent first.
    fn want(&mut self, action: Action) -> bool {
        let key = action.step();
        if self.p.steps.get(key) == StepState::Done {
            return false;
        }
        self.p.steps.set(key, StepState::Intended);
        self.actions.push(action);
        self.next = Next::Now;
        true
    }

    fn enter(&mut self, to: Phase, note: String) {
        self.enter_at(to, note, self.obs.now);
    }

    /// Enters `to` as of `at`: the moment the work that ends the current phase really
    /// ended (an agent job's own finish time), clamped between the current phase's start
    /// and this observation, so a skewed agent clock cannot make a phase negative or end
    /// in the future.
    fn enter_at(&mut self, to: Phase, note: String, at: Timestamp) {
        let now = self.obs.now;
        let floor = self
            .p
            .phase_timings
            .last()
            .map(|t| t.started_at)
            .or(self.p.phase_started_at)
            .unwrap_or(now);
        let at = at.clamp(floor.min(now), now);
        if let Some(last) = self.p.phase_timings.last_mut()
            && last.duration_ms.is_none()
        {
            last.duration_ms = Some(ms(since_ms(last.started_at, at)));
        }
        self.transitions.push(Transition {
            from: self.p.phase,
            to,
            note,
        });
        self.p.phase = to;
        self.p.phase_started_at = Some(at);
        if to.is_terminal() {
            self.p.completion_time = Some(at);
            self.next = Next::Stop;
        } else {
            self.p.phase_timings.push(PhaseTiming {
                phase: to,
                started_at: at,
                duration_ms: None,
            });
            self.next = Next::Now;
        }
    }

    /// Nothing to undo before the first side effect; after the point of no return undoing
    /// would lose state, so the migration stops where it is.
    fn fail(&mut self, reason: String) {
        let phase = self.p.phase;
        let past_no_return = phase == Phase::Finalizing
            || (self.strategy() == Strategy::ShadowPod
                && self.p.steps.stop_source != StepState::NotStarted);
        self.actions.clear();
        if phase == Phase::Pending {
            self.p.failure = Some(Failure {
                phase,
                reason: reason.clone(),
                rolled_back: true,
            });
            self.enter(Phase::Failed, reason);
        } else if past_no_return {
            self.p.failure = Some(Failure {
                phase,
                reason: format!(
                    "{reason} (after the source was stopped: target and replay queue kept for recovery, messages remain in the queues)"
                ),
                rolled_back: false,
            });
            self.enter(Phase::Failed, reason);
        } else {
            self.p.failure = Some(Failure {
                phase,
                reason: reason.clone(),
                rolled_back: true,
            });
            self.enter(Phase::RollingBack, reason);
            self.rolling_back();
        }
    }

    fn pending(&mut self) {
        let Some(src) = self.obs.source.clone() else {
            return self.fail("source not found".into());
        };
        if !src.running {
            return self.fail("source is not running".into());
        }
        if !src.has_container {
            return self.fail("source has no such container".into());
        }
        match self.obs.target_node_ready {
            None => {
                return self.fail(format!("target node {} not found", self.plan.target_node));
            }
            Some(false) => {
                return self.fail(format!(
                    "target node {} is not Ready",
                    self.plan.target_node
                ));
            }
            Some(true) => {}
        }
        if src.node == self.plan.target_node {
            return self.fail(format!(
                "source already runs on the target node {}",
                self.plan.target_node
            ));
        }
        let strategy = self.plan.strategy.unwrap_or(src.natural_strategy);
        self.p.strategy = Some(strategy);
        self.p.source_node = Some(src.node.clone());
        self.enter(
            Phase::Checkpointing,
            format!(
                "source on {}, target node {}, strategy {:?}",
                src.node, self.plan.target_node, strategy
            ),
        );
        self.checkpointing();
    }

    fn checkpointing(&mut self) {
        match self.obs.checkpoint.clone() {
            JobView::Succeeded {
                output,
                finished_at,
            } => {
                self.p.checkpoint_id = Some(output.clone());
                self.enter_at(
                    Phase::Transferring,
                    format!("checkpoint {output} taken"),
                    finished_at.unwrap_or(self.obs.now),
                );
                return self.transferring();
            }
            JobView::Failed { reason } => {
                return self.fail(format!("checkpoint failed: {reason}"));
            }
            JobView::NotStarted => {
                // The agent forgot a job it had accepted (restart): ask again, same id.
                if self.p.steps.checkpoint == StepState::Done {
                    self.p.steps.checkpoint = StepState::Intended;
                    self.p.checkpoint_job = None;
                }
            }
            JobView::Running => {}
        }
        if self.timed_out() {
            let what = if self.p.steps.checkpoint == StepState::NotStarted {
                "the source did not consume the messages published before the replay queue was bound"
            } else {
                "the checkpoint did not complete"
            };
            return self.fail(self.timeout_reason(what));
        }
        // The replay queue must receive every message from before the checkpoint on.
        if self.want(Action::EnsureReplayTopology) {
            return;
        }
        if self.p.steps.checkpoint == StepState::NotStarted {
            // Messages published before the binding are only in the primary queue; the
            // checkpoint must already contain their effect, or the target never sees
            // them (the source acks them, the replay queue never had them). Ready depth
            // alone cannot tell: a consumer with prefetch holds up to its prefetch
            // unacknowledged. The messaging layer decides from fresh broker statistics
            // (docs/migration-protocol.md, "The pre-checkpoint condition").
            if self.obs.backlog_settled != Some(true) {
                self.next = Next::After(REPLAY_POLL);
                return;
            }
            self.p.replay.backlog_drained_at = Some(self.obs.now);
        }
        self.want(Action::StartCheckpoint {
            checkpoint_id: self.plan.checkpoint_id.clone(),
        });
    }

    fn transferring(&mut self) {
        match self.obs.transfer.clone() {
            JobView::Succeeded {
                output,
                finished_at,
            } => {
                self.p.checkpoint_image = Some(output.clone());
                self.enter_at(
                    Phase::Restoring,
                    format!("checkpoint available as {output}"),
                    finished_at.unwrap_or(self.obs.now),
                );
                return self.restoring();
            }
            JobView::Failed { reason } => {
                return self.fail(format!("transfer failed: {reason}"));
            }
            JobView::NotStarted => {
                if self.p.steps.transfer == StepState::Done {
                    self.p.steps.transfer = StepState::Intended;
                    self.p.transfer_job = None;
                }
            }
            JobView::Running => {}
        }
        if self.timed_out() {
            return self.fail(self.timeout_reason("the transfer did not complete"));
        }
        let checkpoint_id = self
            .p
            .checkpoint_id
            .clone()
            .unwrap_or_else(|| self.plan.checkpoint_id.clone());
        let image = match &self.plan.import_reference {
            // Recorded with the intent, before the send: a restarted driver imports under,
            // creates the target from and rolls back the reference it started with, even
            // if the plan's naming has changed since.
            Some(reference) => self
                .p
                .checkpoint_image
                .get_or_insert_with(|| reference.clone())
                .clone(),
            None => self.plan.checkpoint_image.clone(),
        };
        self.want(Action::StartTransfer {
            checkpoint_id,
            mode: self.plan.transfer_mode,
            image,
        });
    }

    fn restoring(&mut self) {
        match self.obs.target.clone() {
            TargetView::Running => {
                self.enter(
                    Phase::Replaying,
                    format!(
                        "target {} running on {}",
                        self.plan.target_name, self.plan.target_node
                    ),
                );
                return self.replaying();
            }
            TargetView::Failed { reason } => {
                return self.fail(format!("target failed: {reason}"));
            }
            TargetView::Absent => {
                // Created before and gone now (evicted, deleted by hand): create again.
                if self.p.steps.create_target == StepState::Done {
                    self.p.steps.create_target = StepState::Intended;
                }
            }
            TargetView::Pending { .. } => {}
        }
        if self.timed_out() {
            let why = match &self.obs.target {
                TargetView::Pending {
                    reason: Some(reason),
                } => format!("the target did not become Running ({reason})"),
                _ => "the target did not become Running".to_owned(),
            };
            return self.fail(self.timeout_reason(&why));
        }
        if self.strategy() == Strategy::Sequential {
            self.record_primary_consumers();
            self.want(Action::StopSource);
            if self.p.steps.stop_source != StepState::Done {
                return;
            }
            if self.obs.source.is_some() {
                // The identity is still taken until the old instance is gone.
                self.next = Next::After(POLL);
                return;
            }
        }
        let image = self
            .p
            .checkpoint_image
            .clone()
            .or_else(|| self.plan.import_reference.clone())
            .unwrap_or_else(|| self.plan.checkpoint_image.clone());
        self.want(Action::CreateTarget {
            name: self.plan.target_name.clone(),
            image,
            node: self.plan.target_node.clone(),
        });
    }

    fn replaying(&mut self) {
        if let Some(depth) = self.obs.replay_depth {
            let r = &mut self.p.replay;
            r.last_depth = Some(depth);
            // First sample: the backlog since the checkpoint.
            r.depth_at_start.get_or_insert(depth);
            r.peak_depth = Some(r.peak_depth.map_or(depth, |p| p.max(depth)));
        }
        if self.p.steps.start_replay != StepState::Done {
            if self.timed_out() {
                return self.fail(self.timeout_reason("START_REPLAY could not be sent"));
            }
            if self.p.replay.started_at.is_none() {
                self.p.replay.started_at = Some(self.obs.now);
            }
            self.want(Action::SendStartReplay {
                control_queue: self.plan.queues.control.clone(),
                replay_queue: self.plan.queues.replay.clone(),
            });
            return;
        }
        // An empty replay queue says nothing while nobody consumes it: a restored consumer
        // may still sleep before it reconnects. The source stops only once the target
        // consumes, in every mode.
        let consuming = self.obs.replay_consumers.is_some_and(|c| c >= 1);
        let caught_up = consuming && self.obs.replay_depth == Some(0);
        if self.p.steps.stop_source != StepState::Done {
            let replay_started = self.p.replay.started_at.unwrap_or(self.obs.now);
            let replaying_for = since_ms(replay_started, self.obs.now);
            // Once decided, the stop goes through whatever the depth does next.
            let reason = match (&self.p.replay.stop_reason, self.plan.replay_mode) {
                (Some(r), _) => Some(r.clone()),
                _ if !consuming => None,
                (None, ReplayMode::Drain) => Some("Drain".to_owned()),
                (None, ReplayMode::Cutoff) if caught_up => Some("CaughtUp".to_owned()),
                (None, ReplayMode::Cutoff)
                    if self.plan.replay_cutoff.is_some_and(|c| replaying_for >= c) =>
                {
                    Some("Cutoff".to_owned())
                }
                (None, ReplayMode::Cutoff) => None,
            };
            let Some(reason) = reason else {
                if self.timed_out() {
                    let what = if consuming {
                        "the target did not catch up"
                    } else {
                        "the target did not start consuming the replay queue"
                    };
                    return self.fail(self.timeout_reason(what));
                }
                self.next = Next::After(REPLAY_POLL);
                return;
            };
            if self.p.replay.stop_reason.is_none() {
                self.p.replay.stop_reason = Some(reason);
                self.p.replay.source_stopped_at = Some(self.obs.now);
            }
            self.record_primary_consumers();
            self.want(Action::StopSource);
            return;
        }
        let stopped_at = self.p.replay.source_stopped_at.unwrap_or(self.obs.now);
        let since_stop = since_ms(stopped_at, self.obs.now);
        if self.p.steps.fence_primary != StepState::Done {
            // The fence may purge the primary queue only once nothing consumes it any
            // more: a pod in its termination grace period still does, and its unacked
            // deliveries come back to the primary queue when its channel closes.
            let source_channel_closed = match (
                self.p.replay.primary_consumers_at_stop,
                self.obs.primary_consumers,
            ) {
                (_, None) => false,
                (Some(before), Some(now)) => now < before || now == 0,
                (None, Some(now)) => now == 0,
            };
            if self.obs.source.is_some() || !source_channel_closed {
                if since_stop >= self.plan.phase_timeout {
                    let what = if self.obs.source.is_some() {
                        "the source did not stop"
                    } else {
                        "the source's broker connection did not close"
                    };
                    return self.fail(self.timeout_reason(what));
                }
                self.next = Next::After(REPLAY_POLL);
                return;
            }
            self.want(Action::FencePrimary);
            return;
        }
        if caught_up {
            self.enter(Phase::Finalizing, "target caught up, source gone".into());
            return self.finalizing();
        }
        // After the source stopped the clock restarts: catching up alone has its own budget.
        if since_stop >= self.plan.phase_timeout {
            return self.fail(self.timeout_reason("the target did not catch up"));
        }
        self.next = Next::After(REPLAY_POLL);
    }

    /// Remembers how many consumers the primary queue had when the source was told to
    /// stop, so the fence can tell when the source's channel is gone.
    fn record_primary_consumers(&mut self) {
        if self.p.replay.primary_consumers_at_stop.is_none() {
            self.p.replay.primary_consumers_at_stop = self.obs.primary_consumers;
        }
    }

    fn finalizing(&mut self) {
        if self.timed_out() {
            return self.fail(self.timeout_reason("finalizing did not complete"));
        }
        if self.want(Action::CutOver) {
            return;
        }
        if self.p.replay.cut_over_at.is_none() {
            self.p.replay.cut_over_at = Some(self.obs.now);
        }
        if self.want(Action::SendEndReplay {
            control_queue: self.plan.queues.control.clone(),
        }) {
            return;
        }
        // The replay queue goes only once the target has left it with nothing behind:
        // a message it held unacknowledged and gave back would be lost with the queue.
        if self.p.steps.delete_replay != StepState::Done {
            // Gone already: deleted by an attempt whose outcome was not recorded.
            let left = match (self.obs.replay_depth, self.obs.replay_consumers) {
                (None, _) => true,
                (Some(depth), consumers) => depth == 0 && consumers == Some(0),
            };
            if !left {
                self.next = Next::After(REPLAY_POLL);
                return;
            }
            if self.want(Action::DeleteReplayQueue) {
                return;
            }
        }
        self.want(Action::RemoveSource);
        let s = &self.p.steps;
        if [s.cut_over, s.end_replay, s.delete_replay, s.remove_source]
            .iter()
            .all(|st| *st == StepState::Done)
        {
            self.enter(
                Phase::Completed,
                format!(
                    "{} serves from {}",
                    self.plan.target_name, self.plan.target_node
                ),
            );
        }
    }

    fn rolling_back(&mut self) {
        let s = self.p.steps.clone();
        if s.create_target != StepState::NotStarted {
            self.want(Action::DeleteTarget {
                name: self.plan.target_name.clone(),
            });
        }
        if s.replay_topology != StepState::NotStarted {
            self.want(Action::DeleteReplayQueue);
        }
        if s.stop_source != StepState::NotStarted {
            self.want(Action::ResumeSource);
        }
        // Last: the image is only disk space on the target node, and a container of the
        // target still going away may hold it a little longer.
        if s.transfer != StepState::NotStarted
            && let Some(planned) = &self.plan.import_reference
        {
            let reference = self
                .p
                .checkpoint_image
                .clone()
                .unwrap_or_else(|| planned.clone());
            self.want(Action::DeleteImportedImage { reference });
        }
        if self.actions.is_empty() {
            let reason = self
                .p
                .failure
                .as_ref()
                .map(|f| f.reason.clone())
                .unwrap_or_default();
            self.enter(Phase::Failed, format!("rolled back: {reason}"));
        }
    }
}

fn since_ms(from: Timestamp, to: Timestamp) -> Duration {
    let d = to.as_millisecond() - from.as_millisecond();
    Duration::from_millis(d.max(0) as u64)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
