//! The shim's Prometheus metrics: migrations by phase and outcome, how long each phase
//! took, and how deep the replay queue got. The controller and the standalone driver
//! both run [`crate::driver::round`], which hands every decision to [`record`]; that is
//! the only hook. The controller serves them on `/metrics` ([`serve`]).
//!
//! Counters, not gauges of migrations in flight: a restarted controller cannot know
//! what an earlier process counted, and `increase()` over counters survives restarts.

use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{Decision, Phase};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

fn phase_histogram() -> Histogram {
    // 10 ms .. ~90 min: a Pending check to a long Drain replay.
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    entered: Family<PhaseLabel, Counter>,
    finished: Family<OutcomeLabel, Counter>,
    phase_seconds: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    depth_at_start: Histogram,
    peak_depth: Histogram,
}

const PHASES: [Phase; 9] = [
    Phase::Pending,
    Phase::Checkpointing,
    Phase::Transferring,
    Phase::Restoring,
    Phase::Replaying,
    Phase::Finalizing,
    Phase::Completed,
    Phase::RollingBack,
    Phase::Failed,
];

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ms2m_shim");
        let entered = Family::<PhaseLabel, Counter>::default();
        let finished = Family::<OutcomeLabel, Counter>::default();
        let phase_seconds =
            Family::<PhaseLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                phase_histogram,
            );
        // Messages: 1 .. ~1M.
        let depth_at_start = Histogram::new(exponential_buckets(1.0, 4.0, 11));
        let peak_depth = Histogram::new(exponential_buckets(1.0, 4.0, 11));
        registry.register(
            "migration_phase_entered",
            "Migrations that entered a phase",
            entered.clone(),
        );
        registry.register(
            "migrations_finished",
            "Migrations that ended, by outcome (completed, failed)",
            finished.clone(),
        );
        registry.register(
            "phase_duration_seconds",
            "How long a migration spent in a phase",
            phase_seconds.clone(),
        );
        registry.register(
            "replay_depth_at_start_messages",
            "Replay queue depth when START_REPLAY was sent: the backlog since the checkpoint",
            depth_at_start.clone(),
        );
        registry.register(
            "replay_peak_depth_messages",
            "Deepest the replay queue got during a migration's replay",
            peak_depth.clone(),
        );
        // Every phase and outcome from the start: dashboards see zeros, not gaps.
        for p in PHASES {
            let _ = entered.get_or_create(&label(p));
        }
        for o in ["completed", "failed"] {
            let _ = finished.get_or_create(&OutcomeLabel { outcome: o.into() });
        }
        Self {
            registry: Mutex::new(registry),
            entered,
            finished,
            phase_seconds,
            depth_at_start,
            peak_depth,
        }
    }

    fn record(&self, d: &Decision) {
        for t in &d.transitions {
            self.entered.get_or_create(&label(t.to)).inc();
            // The engine closed the timing of the phase it left.
            if let Some(ms) = d
                .progress
                .phase_timings
                .iter()
                .rev()
                .find(|pt| pt.phase == t.from)
                .and_then(|pt| pt.duration_ms)
            {
                self.phase_seconds
                    .get_or_create(&label(t.from))
                    .observe(ms as f64 / 1000.0);
            }
            if t.from == Phase::Replaying {
                let r = &d.progress.replay;
                if let Some(n) = r.depth_at_start {
                    self.depth_at_start.observe(n as f64);
                }
                if let Some(n) = r.peak_depth {
                    self.peak_depth.observe(n as f64);
                }
            }
            let outcome = match t.to {
                Phase::Completed => Some("completed"),
                Phase::Failed => Some("failed"),
                _ => None,
            };
            if let Some(o) = outcome {
                self.finished
                    .get_or_create(&OutcomeLabel { outcome: o.into() })
                    .inc();
            }
        }
    }

    /// OpenMetrics when `accept` names it, else Prometheus text 0.0.4 (as the agent).
    pub fn encode_for(&self, accept: Option<&str>) -> (String, &'static str) {
        let mut om = String::new();
        {
            let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut om, &reg);
        }
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (om, OPENMETRICS_CONTENT_TYPE)
        } else {
            (openmetrics_to_text(&om), TEXT_CONTENT_TYPE)
        }
    }
}

fn label(p: Phase) -> PhaseLabel {
    PhaseLabel {
        phase: p.as_str().to_owned(),
    }
}

/// Prometheus text 0.0.4 from OpenMetrics: counter families carry their `_total`
/// suffix, and there are no `# UNIT` lines or `# EOF` (agent/src/metrics.rs does the same).
fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{p}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// What [`crate::driver::round`] calls with every decision.
pub fn record(d: &Decision) {
    global().record(d);
}

/// Serves `GET /metrics` (anything else: 404) until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode, header};
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    if req.uri().path() == "/metrics" {
                        let accept = req
                            .headers()
                            .get(header::ACCEPT)
                            .and_then(|v| v.to_str().ok());
                        let (body, ct) = global().encode_for(accept);
                        Response::builder()
                            .header(header::CONTENT_TYPE, ct)
                            .body(Full::new(Bytes::from(body)))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                    }
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{PhaseTiming, Progress, Transition};

    fn decision(from: Phase, to: Phase, ms: u64) -> Decision {
        let mut progress = Progress {
            phase: to,
            phase_timings: vec![PhaseTiming {
                phase: from,
                started_at: jiff::Timestamp::now(),
                duration_ms: Some(ms),
            }],
            ..Progress::default()
        };
        progress.replay.depth_at_start = Some(40);
        progress.replay.peak_depth = Some(90);
        Decision {
            progress,
            actions: vec![],
            next: crate::engine::Next::Now,
            transitions: vec![Transition {
                from,
                to,
                note: String::new(),
            }],
        }
    }

    #[test]
    fn decisions_become_phase_outcome_duration_and_depth_samples() {
        let m = Metrics::new();
        m.record(&decision(Phase::Replaying, Phase::Finalizing, 2500));
        m.record(&decision(Phase::Finalizing, Phase::Completed, 100));
        let (text, ct) = m.encode_for(None);
        assert_eq!(ct, TEXT_CONTENT_TYPE);
        for want in [
            "ms2m_shim_migration_phase_entered_total{phase=\"Completed\"} 1",
            "ms2m_shim_migration_phase_entered_total{phase=\"Failed\"} 0",
            "ms2m_shim_migrations_finished_total{outcome=\"completed\"} 1",
            "ms2m_shim_phase_duration_seconds_sum{phase=\"Replaying\"} 2.5",
            "ms2m_shim_replay_peak_depth_messages_sum 90.0",
            "ms2m_shim_replay_depth_at_start_messages_count 1",
            "# TYPE ms2m_shim_migrations_finished_total counter",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        let (om, ct) = m.encode_for(Some("application/openmetrics-text"));
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(om.ends_with("# EOF\n"));
    }
}
