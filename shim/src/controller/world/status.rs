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
    let since = prev
        .iter()
        .find(|c| c.type_ == "Succeeded" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_owned());
    vec![Condition {
        type_: "Succeeded".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
    }]
}
