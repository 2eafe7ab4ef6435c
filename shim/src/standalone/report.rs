//! What a standalone migration reports: the `--json` document and the timing table.

use serde::Serialize;

use crate::engine::Progress;

/// What `migrate` prints with `--json`, and returns.
#[derive(Serialize, Debug)]
pub struct Report {
    pub succeeded: bool,
    pub total_ms: u64,
    pub progress: Progress,
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
