//! Prometheus metrics (`GET /metrics`): bytes moved, job durations, failures by phase,
//! jobs in flight. Labels stay low-cardinality (kind, status, phase — never ids).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::jobs::{JobKind, JobStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStatusLabel {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindPhaseLabel {
    kind: String,
    phase: String,
}

fn duration_histogram() -> Histogram {
    // 10 ms .. ~40 min: a small checkpoint to a multi-GiB push over a slow link.
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    bytes: Family<KindLabel, Counter>,
    durations: Family<KindStatusLabel, Histogram, fn() -> Histogram>,
    failures: Family<KindPhaseLabel, Counter>,
    in_flight: Family<KindLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ms2m_agent");
        let bytes = Family::<KindLabel, Counter>::default();
        let durations =
            Family::<KindStatusLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let failures = Family::<KindPhaseLabel, Counter>::default();
        let in_flight = Family::<KindLabel, Gauge>::default();
        registry.register(
            "bytes_moved",
            "Bytes moved by jobs (checkpoint archive, uploads, downloads, direct transfers)",
            bytes.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Duration of finished jobs",
            durations.clone(),
        );
        registry.register(
            "job_failures",
            "Jobs that failed or were aborted, by the phase they were in",
            failures.clone(),
        );
        registry.register(
            "jobs_in_flight",
            "Jobs currently running",
            in_flight.clone(),
        );
        // Every kind shows up from the start, so dashboards see zeros, not gaps.
        for kind in [
            JobKind::Checkpoint,
            JobKind::Push,
            JobKind::Pull,
            JobKind::Restore,
            JobKind::DirectSend,
            JobKind::DirectReceive,
            JobKind::ImageImport,
        ] {
            let l = KindLabel {
                kind: kind.as_str().to_owned(),
            };
            let _ = in_flight.get_or_create(&l);
            let _ = bytes.get_or_create(&l);
        }
        Self {
            registry: Arc::new(Mutex::new(registry)),
            bytes,
            durations,
            failures,
            in_flight,
        }
    }

    pub fn bytes_moved(&self, kind: JobKind, n: u64) {
        self.bytes
            .get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            })
            .inc_by(n);
    }

    pub fn job_started(&self, kind: JobKind) {
        self.in_flight
            .get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }

    pub fn job_finished(&self, kind: JobKind, status: JobStatus, phase: &str, duration_ms: u64) {
        let k = kind.as_str().to_owned();
        self.in_flight
            .get_or_create(&KindLabel { kind: k.clone() })
            .dec();
        self.durations
            .get_or_create(&KindStatusLabel {
                kind: k.clone(),
                status: status.as_str().to_owned(),
            })
            .observe(duration_ms as f64 / 1000.0);
        if matches!(status, JobStatus::Failed | JobStatus::Aborted) {
            self.failures
                .get_or_create(&KindPhaseLabel {
                    kind: k,
                    phase: phase.to_owned(),
                })
                .inc();
        }
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_family_with_labels() {
        let m = Metrics::new();
        m.job_started(JobKind::Push);
        m.bytes_moved(JobKind::Push, 1000);
        m.job_finished(JobKind::Push, JobStatus::Failed, "uploading", 1500);
        let text = m.encode();
        assert!(
            text.contains("ms2m_agent_bytes_moved_total{kind=\"push\"} 1000"),
            "{text}"
        );
        assert!(
            text.contains("ms2m_agent_job_failures_total{kind=\"push\",phase=\"uploading\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ms2m_agent_jobs_in_flight{kind=\"push\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "ms2m_agent_job_duration_seconds_count{kind=\"push\",status=\"failed\"} 1"
            ),
            "{text}"
        );
    }
}
