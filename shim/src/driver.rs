//! One round of the engine's driver contract, shared by the Kubernetes controller and
//! the standalone driver: observe, decide, persist, act (persisting after each effect).

use crate::engine::{Action, Decision, Observation, Plan, Progress, decide, mark_done};

/// A side effect or an observation failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct WorldError {
    pub message: String,
    /// Retrying cannot help: the migration fails (and rolls back).
    pub permanent: bool,
}

impl WorldError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

/// What a driver plugs into the engine: how to see the world, how to change it, and how
/// to remember progress.
#[async_trait::async_trait]
pub trait World: Send {
    async fn observe(
        &mut self,
        plan: &Plan,
        progress: &Progress,
    ) -> Result<Observation, WorldError>;
    /// Carries out one action; may record what it started (job ids) in `progress`.
    async fn execute(
        &mut self,
        plan: &Plan,
        progress: &mut Progress,
        action: &Action,
    ) -> Result<(), WorldError>;
    async fn persist(&mut self, progress: &Progress) -> Result<(), WorldError>;
}

/// Runs one round. `fatal` carries a permanent failure of the previous round's action
/// into this round's observation (the engine then fails the migration). Returns the
/// decision (its `progress` is what was persisted last).
pub async fn round<W: World + ?Sized>(
    world: &mut W,
    plan: &Plan,
    progress: &mut Progress,
    fatal: &mut Option<String>,
) -> Result<Decision, WorldError> {
    let now = jiff::Timestamp::now();
    let mut obs = match world.observe(plan, progress).await {
        // Stamped when the observation is complete, not when it began: an observation
        // long-polls agent jobs, and a phase boundary taken from its start would put the
        // job's work into the next phase.
        Ok(obs) => Observation {
            now: jiff::Timestamp::now(),
            ..obs
        },
        Err(e) => {
            // A world that stays unobservable for longer than a phase may take fails the
            // migration like any other timeout; the engine never gets to see the clock
            // otherwise.
            let overdue = !progress.phase.is_terminal()
                && progress.phase_started_at.is_some_and(|t| {
                    now.duration_since(t).as_secs() >= plan.phase_timeout.as_secs() as i64
                });
            if overdue && fatal.is_none() {
                *fatal = Some(format!(
                    "{} (unobservable for longer than the phase timeout of {} s)",
                    e.message,
                    plan.phase_timeout.as_secs()
                ));
            }
            if fatal.is_none() {
                return Err(e);
            }
            // Failing anyway: what rollback needs is in `progress`, not in the world.
            tracing::warn!(error = %e, "observation failed; deciding on the failure alone");
            Observation::at(now)
        }
    };
    if obs.fatal.is_none() {
        obs.fatal = fatal.take();
    }
    let decision = decide(plan, progress, &obs);
    crate::metrics::record(&decision);
    if decision.progress != *progress {
        world.persist(&decision.progress).await?;
        *progress = decision.progress.clone();
    }
    for action in &decision.actions {
        match world.execute(plan, progress, action).await {
            Ok(()) => {
                mark_done(progress, action);
                world.persist(progress).await?;
            }
            Err(e) if e.permanent => {
                *fatal = Some(format!("{action:?} failed: {}", e.message));
                world.persist(progress).await?;
                break;
            }
            Err(e) => {
                world.persist(progress).await?;
                return Err(e);
            }
        }
    }
    Ok(Decision {
        progress: progress.clone(),
        ..decision
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Phase, QueueNames, ReplayMode, StepState, TransferMode};
    use std::time::Duration;

    /// A world that cannot be observed (the agent is down) and records what it is asked.
    #[derive(Default)]
    struct Unreachable {
        executed: Vec<Action>,
        persisted: Vec<Phase>,
    }

    #[async_trait::async_trait]
    impl World for Unreachable {
        async fn observe(&mut self, _: &Plan, _: &Progress) -> Result<Observation, WorldError> {
            Err(WorldError::transient("agent unreachable"))
        }
        async fn execute(
            &mut self,
            _: &Plan,
            _: &mut Progress,
            a: &Action,
        ) -> Result<(), WorldError> {
            self.executed.push(a.clone());
            Ok(())
        }
        async fn persist(&mut self, p: &Progress) -> Result<(), WorldError> {
            self.persisted.push(p.phase);
            Ok(())
        }
    }

    fn plan() -> Plan {
        Plan {
            replay_mode: ReplayMode::Cutoff,
            replay_cutoff: Some(Duration::from_secs(30)),
            phase_timeout: Duration::from_secs(60),
            transfer_mode: TransferMode::Registry,
            strategy: None,
            target_node: "b".into(),
            target_name: "t".into(),
            checkpoint_id: "c".into(),
            checkpoint_image: "r/i:t".into(),
            import_reference: None,
            queues: QueueNames::new("x", "q", "", "t"),
        }
    }

    fn checkpointing(started_secs_ago: i64) -> Progress {
        let started = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(started_secs_ago);
        let mut p = Progress {
            phase: Phase::Checkpointing,
            start_time: Some(started),
            phase_started_at: Some(started),
            ..Progress::default()
        };
        p.steps.replay_topology = StepState::Done;
        p
    }

    #[tokio::test]
    async fn an_unobservable_world_is_retried_within_the_phase_timeout() {
        let mut w = Unreachable::default();
        let mut p = checkpointing(5);
        let mut fatal = None;
        let err = round(&mut w, &plan(), &mut p, &mut fatal)
            .await
            .unwrap_err();
        assert!(!err.permanent);
        assert!(w.persisted.is_empty() && w.executed.is_empty());
    }

    #[tokio::test]
    async fn an_unobservable_world_past_the_phase_timeout_fails_and_rolls_back() {
        let mut w = Unreachable::default();
        let mut p = checkpointing(61);
        let mut fatal = None;
        let d = round(&mut w, &plan(), &mut p, &mut fatal).await.unwrap();
        assert_eq!(d.progress.phase, Phase::RollingBack);
        assert_eq!(w.executed, vec![Action::DeleteReplayQueue]);
        let reason = &d.progress.failure.as_ref().unwrap().reason;
        assert!(
            reason.contains("agent unreachable") && reason.contains("60 s"),
            "{reason}"
        );
        // Rolling back needs no observation either.
        let d = round(&mut w, &plan(), &mut p, &mut fatal).await;
        assert!(
            d.is_err(),
            "without a pending failure, an unobservable world is an error"
        );
        let mut fatal = Some("still down".into());
        let d = round(&mut w, &plan(), &mut p, &mut fatal).await.unwrap();
        assert_eq!(d.progress.phase, Phase::Failed);
    }
}
