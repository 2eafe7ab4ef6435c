//! What a finished migration leaves on the nodes that nothing needs any more.

use super::types::{Phase, Plan, Progress, StepState};

/// A checkpoint in a node agent's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftoverCheckpoint {
    pub node: String,
    pub checkpoint_id: String,
}

/// The checkpoints to delete once the migration is over: the source node's, and the
/// target node's copy (a Direct receive, or the standalone target's pull; asking an
/// agent that has none is harmless). Nothing while the migration runs, nothing when it
/// never checkpointed, and nothing when it failed past the point of no return: then the
/// target and the replay queue are kept for an operator, and so is the state they came
/// from. Best effort for the drivers: the agents' `checkpoint_retention_seconds` removes
/// whatever a failed or skipped cleanup leaves.
pub fn leftover_checkpoints(plan: &Plan, p: &Progress) -> Vec<LeftoverCheckpoint> {
    let over = match p.phase {
        Phase::Completed => true,
        Phase::Failed => p.failure.as_ref().is_none_or(|f| f.rolled_back),
        _ => false,
    };
    if !over || p.steps.checkpoint == StepState::NotStarted {
        return Vec::new();
    }
    let id = p
        .checkpoint_id
        .clone()
        .unwrap_or_else(|| plan.checkpoint_id.clone());
    let mut nodes = Vec::new();
    if let Some(source) = &p.source_node {
        nodes.push(source.clone());
    }
    if p.steps.transfer != StepState::NotStarted && !nodes.contains(&plan.target_node) {
        nodes.push(plan.target_node.clone());
    }
    nodes
        .into_iter()
        .map(|node| LeftoverCheckpoint {
            node,
            checkpoint_id: id.clone(),
        })
        .collect()
}
