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

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
        for kind in JobKind::ALL {
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

    /// The exposition in the format `accept` (an HTTP `Accept` value) asks for:
    /// OpenMetrics when it names `application/openmetrics-text`, else Prometheus text
    /// 0.0.4, which every scraper and `promtool check metrics` read. Returns the body
    /// and its content type.
    pub fn encode_for(&self, accept: Option<&str>) -> (String, &'static str) {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (self.encode(), OPENMETRICS_CONTENT_TYPE)
        } else {
            (self.encode_text(), TEXT_CONTENT_TYPE)
        }
    }

    /// Prometheus text format 0.0.4, derived from the OpenMetrics exposition (the only
    /// one prometheus-client writes). They differ in three places: counter families are
    /// named with their `_total` suffix, and there are no `# UNIT` lines or `# EOF`.
    pub fn encode_text(&self) -> String {
        let om = self.encode();
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
    fn the_format_follows_accept() {
        let m = Metrics::new();
        m.bytes_moved(JobKind::Push, 7);
        let (om, ct) = m.encode_for(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ));
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE ms2m_agent_bytes_moved counter"), "{om}");
        for accept in [None, Some("text/plain"), Some("*/*")] {
            let (text, ct) = m.encode_for(accept);
            assert_eq!(ct, TEXT_CONTENT_TYPE);
            assert!(!text.contains("# EOF"), "{text}");
            assert!(
                text.contains("# TYPE ms2m_agent_bytes_moved_total counter"),
                "{text}"
            );
            assert!(
                text.contains("ms2m_agent_bytes_moved_total{kind=\"push\"} 7"),
                "{text}"
            );
        }
    }

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
