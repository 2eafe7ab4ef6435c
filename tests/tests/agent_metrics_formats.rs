//! The agent's `/metrics` in both exposition formats, checked by the tools that read
//! them: `promtool check metrics` (Debian's prometheus package) on the Prometheus text
//! format, and the Python client's strict OpenMetrics parser on OpenMetrics. The agent
//! has run a job first, so every family has samples (histograms included).

mod agent_common;

use std::io::Write;
use std::process::{Command, Stdio};

use agent_common::{Agent, AgentOptions};
use serde_json::json;

/// Every series name with `prefix` that deploy/grafana-dashboard.json queries.
fn dashboard_series(prefix: &str) -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana-dashboard.json"
    );
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices(prefix) {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    assert!(
        !names.is_empty(),
        "the dashboard queries no {prefix}* series"
    );
    names
}

/// The dashboard shows only series the exposition has.
fn assert_dashboard_matches(prefix: &str, exposition: &str) {
    for name in dashboard_series(prefix) {
        assert!(
            exposition
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "deploy/grafana-dashboard.json queries {name}, which /metrics lacks:\n{exposition}"
        );
    }
}

fn feed(cmd: &mut Command, input: &str) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} (run scripts/setup.sh): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Reads OpenMetrics strictly (it raises on anything the spec forbids, a missing
/// `# EOF` included) and prints the family names.
const OPENMETRICS_PARSE: &str = "
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    print(f.name, f.type, len(f.samples))
";

#[test]
fn metrics_pass_promtool_and_the_openmetrics_parser() {
    let agent = Agent::start(AgentOptions::default());
    // A failing job (no kubelet answers here): a duration and a failure sample, not
    // only zeros.
    let r = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "kubelet", "namespace": "default", "pod": "p-0", "container": "c"}),
    );
    assert_eq!(r["status"], "failed", "{r}");

    for accept in [None, Some("text/plain; version=0.0.4"), Some("*/*")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let m = agent.call_with("GET", "/metrics", &headers, None);
        assert_eq!(m.status, 200);
        assert_eq!(
            m.header("content-type").as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "Accept {accept:?}"
        );
        let (code, out) = feed(Command::new("promtool").args(["check", "metrics"]), &m.body);
        assert_eq!(code, 0, "promtool check metrics: {out}\n{}", m.body);
        assert_dashboard_matches("ms2m_agent_", &m.body);
        assert!(
            m.body.contains(
                "ms2m_agent_job_duration_seconds_count{kind=\"checkpoint\",status=\"failed\"} 1"
            ),
            "{}",
            m.body
        );
    }

    let m = agent.call_with(
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )],
        None,
    );
    assert_eq!(
        m.header("content-type").as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    // Debian's python3-prometheus-client lives under /usr/bin/python3's path.
    let (code, out) = feed(
        Command::new("/usr/bin/python3").args(["-c", OPENMETRICS_PARSE]),
        &m.body,
    );
    assert_eq!(code, 0, "OpenMetrics parser: {out}\n{}", m.body);
    for family in [
        "ms2m_agent_bytes_moved counter",
        "ms2m_agent_job_duration_seconds histogram",
        "ms2m_agent_job_failures counter",
        "ms2m_agent_jobs_in_flight gauge",
    ] {
        assert!(out.contains(family), "{family} missing: {out}");
    }
    // The same exposition in the text format fails promtool: negotiation matters.
    let (code, _) = feed(Command::new("promtool").args(["check", "metrics"]), &m.body);
    assert_ne!(code, 0, "promtool read OpenMetrics counters as text");
}

/// The shim's `/metrics`, fed by decisions as the driver hands them over, read by the
/// same two tools.
#[test]
fn shim_metrics_pass_promtool_and_the_openmetrics_parser() {
    use ms2m_shim::engine::{Decision, Next, Phase, PhaseTiming, Progress, Transition};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(ms2m_shim::metrics::serve(l));
        a
    });
    for (from, to) in [
        (Phase::Pending, Phase::Checkpointing),
        (Phase::Replaying, Phase::Finalizing),
        (Phase::Finalizing, Phase::Completed),
    ] {
        let mut progress = Progress {
            phase: to,
            phase_timings: vec![PhaseTiming {
                phase: from,
                started_at: jiff::Timestamp::now(),
                duration_ms: Some(1200),
            }],
            ..Progress::default()
        };
        progress.replay.depth_at_start = Some(12);
        progress.replay.peak_depth = Some(30);
        ms2m_shim::metrics::record(&Decision {
            progress,
            actions: vec![],
            next: Next::Now,
            transitions: vec![Transition {
                from,
                to,
                note: String::new(),
            }],
        });
    }
    let get = |accept: &str| {
        // The shim's metrics listener speaks the agents' plain HTTP: the same client.
        let client =
            ms2m_tests::agent_http::AgentClient::new(ms2m_tests::agent_http::AgentAddr::Tcp {
                base: format!("http://{addr}"),
                token: String::new(),
            });
        ms2m_tests::agent_http::try_call(
            &client,
            "GET",
            "/metrics",
            &[("Accept", accept)],
            None,
            std::time::Duration::from_secs(30),
        )
        .expect("the shim's /metrics")
    };
    let text = get("text/plain");
    assert_eq!(
        text.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let (code, out) = feed(
        Command::new("promtool").args(["check", "metrics"]),
        &text.body,
    );
    assert_eq!(code, 0, "promtool check metrics: {out}\n{}", text.body);
    assert!(
        text.body
            .contains("ms2m_shim_migrations_finished_total{outcome=\"completed\"} 1"),
        "{}",
        text.body
    );
    let om = get("application/openmetrics-text; version=1.0.0");
    let (code, out) = feed(
        Command::new("/usr/bin/python3").args(["-c", OPENMETRICS_PARSE]),
        &om.body,
    );
    assert_eq!(code, 0, "OpenMetrics parser: {out}\n{}", om.body);
    for family in [
        "ms2m_shim_migration_phase_entered counter",
        "ms2m_shim_migrations_finished counter",
        "ms2m_shim_phase_duration_seconds histogram",
        "ms2m_shim_replay_peak_depth_messages histogram",
    ] {
        assert!(out.contains(family), "{family} missing: {out}");
    }
}
