//! The migration's status as the CR shows it: the `Succeeded` condition.

use crate::crd::Condition;
use crate::engine::{Phase, Progress};

pub(super) fn condition(progress: &Progress, prev: &[Condition], now: &str) -> Vec<Condition> {
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
