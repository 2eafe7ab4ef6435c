//! End-to-end migration benchmark: MS2M (ShadowPod through the agents and the shim's
//! standalone driver) against stop-and-copy (checkpoint that stops the source, push,
//! pull, restore, straight to the primary queue; over the same agents), same service,
//! same rate, same machine, in the same run — the papers' comparison. The papers'
//! scenario by default: ≈27 MB of state, 10 msg/s, 50 ms per message.
//!
//! Each run is one `ms2m-demo` (tests/src/bin/ms2m-demo.rs: two netns nodes, one
//! release-built agent each, the reference consumer, the real broker and registry);
//! its JSON summary carries the phase timings, the transfer and the accounting. Every
//! run must lose nothing and apply nothing twice, or the benchmark fails. Medians of
//! `MS2M_BENCH_RUNS` (default 3).
//!
//! Environment: MS2M_BENCH_RUNS, MS2M_BENCH_BALLAST_MIB (25), MS2M_BENCH_RATE (10),
//! MS2M_BENCH_DELAY_MS (50), MS2M_BENCH_TOTAL (150); the services' variables as for
//! the tests (scripts/bench.sh starts them).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn cargo(root: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(root)
        .args(args)
        .status()
        .expect("run cargo");
    assert!(st.success(), "cargo {args:?} failed");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Runner {
    demo: PathBuf,
    agent: PathBuf,
    shim: PathBuf,
    common: Vec<String>,
}

impl Runner {
    fn run(&self, strategy: &str) -> Value {
        let out = Command::new(&self.demo)
            .args(["--strategy", strategy, "--quiet"])
            .args(&self.common)
            .env("MS2M_AGENT_BIN", &self.agent)
            .env("MS2M_SHIM_BIN", &self.shim)
            .output()
            .expect("run ms2m-demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("");
        let v: Value = serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "ms2m-demo ({strategy}) printed no summary ({e}, {}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            v["ok"] == true && out.status.success(),
            "a message was lost or applied twice ({strategy}): {v}"
        );
        v["ms2m_demo"].clone()
    }
}

fn ms(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64().unwrap_or(f64::NAN)
}

fn main() {
    // `cargo bench` passes `--bench` (and filters); this harness takes none.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    for v in ["MS2M_TEST_REGISTRY", "MS2M_TEST_AMQP_URL", "MS2M_CRIU"] {
        assert!(
            std::env::var_os(v).is_some(),
            "{v} is not set: run through scripts/bench.sh (it starts the registry and the broker)"
        );
    }
    let runs: usize = env_or("MS2M_BENCH_RUNS", "3")
        .parse()
        .expect("MS2M_BENCH_RUNS");
    eprintln!("[migration] building release ms2m-agent and ms2m-shim, and ms2m-demo");
    cargo(
        &root,
        &[
            "build",
            "--release",
            "-q",
            "-p",
            "ms2m-agent",
            "-p",
            "ms2m-shim",
            "--bin",
            "ms2m-agent",
            "--bin",
            "ms2m-shim",
        ],
    );
    cargo(
        &root,
        &["build", "-q", "-p", "ms2m-tests", "--bin", "ms2m-demo"],
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let rate = env_or("MS2M_BENCH_RATE", "10");
    let delay = env_or("MS2M_BENCH_DELAY_MS", "50");
    let ballast = env_or("MS2M_BENCH_BALLAST_MIB", "25");
    let total = env_or("MS2M_BENCH_TOTAL", "150");
    let runner = Runner {
        demo: target.join("debug/ms2m-demo"),
        agent: target.join("release/ms2m-agent"),
        shim: target.join("release/ms2m-shim"),
        common: [
            "--rate",
            &rate,
            "--delay-ms",
            &delay,
            "--ballast-mib",
            &ballast,
            "--total",
            &total,
            "--warmup",
            "30",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    };

    let strategies = [
        ("MS2M (ShadowPod)", "shadowpod"),
        ("stop-and-copy", "stop-and-copy"),
    ];
    let mut results: Vec<(&str, Vec<Value>)> = Vec::new();
    // Interleaved, so a slow spell of the machine hits both alike.
    let mut by: Vec<Vec<Value>> = vec![Vec::new(), Vec::new()];
    for i in 0..runs {
        for (k, (label, s)) in strategies.iter().enumerate() {
            let v = runner.run(s);
            eprintln!(
                "[migration] run {}/{runs} {label}: total {} ms, downtime {} ms, lost {}, applied twice {}",
                i + 1,
                v["migration_ms"],
                v["downtime_ms"],
                v["lost"],
                v["applied_twice"]
            );
            by[k].push(v);
        }
    }
    for (k, (label, _)) in strategies.iter().enumerate() {
        results.push((label, std::mem::take(&mut by[k])));
    }

    let ckpt = median(
        results[0]
            .1
            .iter()
            .map(|v| ms(v, &["checkpoint_bytes"]))
            .collect(),
    );
    println!(
        "\nmigration: {rate} msg/s, {delay} ms per message, {ballast} MiB ballast \
         (checkpoint {:.1} MB), registry transfer, medians of {runs}",
        ckpt / 1e6
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "strategy", "total", "ckpt", "transfer", "restore", "replay", "final", "downtime", "lost"
    );
    let mut downtimes = Vec::new();
    for (label, vs) in &results {
        let med = |path: &[&str]| median(vs.iter().map(|v| ms(v, path)).collect());
        let cell = |x: f64| {
            if x.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.3} s", x / 1000.0)
            }
        };
        let lost: u64 = vs.iter().map(|v| v["lost"].as_u64().unwrap_or(0)).sum();
        let downtime = med(&["downtime_ms"]);
        downtimes.push(downtime);
        println!(
            "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
            label,
            cell(med(&["migration_ms"])),
            cell(med(&["phases_ms", "checkpointing"])),
            cell(med(&["phases_ms", "transferring"])),
            cell(med(&["phases_ms", "restoring"])),
            cell(med(&["phases_ms", "replaying"])),
            cell(med(&["phases_ms", "finalizing"])),
            cell(downtime),
            lost
        );
    }
    let rate_mbs = median(
        results
            .iter()
            .flat_map(|(_, vs)| vs.iter())
            .map(|v| ms(v, &["details", "transfer", "archive_mb_per_s"]))
            .collect(),
    );
    println!("transfer rate (archive MB/s, median of all runs): {rate_mbs:.0}");
    if downtimes[1] > 0.0 {
        println!(
            "MS2M downtime vs stop-and-copy: {:.1} % less",
            100.0 * (1.0 - downtimes[0] / downtimes[1])
        );
    }
    println!("targets (issue 6): total <= 3 s, transfer <= 0.3 s, downtime <= 0.5 s, zero loss");
}
