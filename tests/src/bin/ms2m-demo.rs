//! `make demo`: two nodes on this machine (network namespaces), one `ms2m-agent` in
//! each, the reference consumer as a runc container in a pod on nodeA, a producer at a
//! fixed rate, and one live migration to nodeB with the shim's standalone driver
//! (`ms2m-shim migrate`). Prints the phase timings, checkpoint size, transfer rate,
//! downtime and message accounting, then one JSON summary line (the last line of
//! stdout). Everything it set up is torn down when it ends, also on failure.
//!
//! ```text
//! ms2m-demo [--strategy shadowpod|stop-and-copy] [--transfer registry|direct]
//!           [--replay-mode cutoff|drain] [--rate MSG_PER_S] [--total N]
//!           [--delay-ms MS] [--ballast-mib MIB] [--warmup N]
//!           [--consumer rust|python|py-p1|py-p50|py-unlimited|py-autoack]
//!           [--load steady|bursty] [--broker rabbitmq|nats] [--quiet]
//! ```
//! `--consumer python` is the issue's third-party consumer: Python + pika, prefetch 50,
//! manual ack, no deduplication, 3 s before a reconnect (tests/consumers/pika_consumer.py).
//! A consumer without a prefetch bound (py-unlimited, py-autoack) is moved by
//! stop-and-copy: ms2m refuses ShadowPod for it (docs/migration-protocol.md).
//! Needs root, CRIU, runc, and the services `scripts/demo.sh` starts
//! (MS2M_TEST_REGISTRY, MS2M_TEST_AMQP_URL or with `--broker nats` MS2M_NATS_URL,
//! MS2M_CRIU). Exit status 1 when the run
//! breaks the protocol's promise for its consumer (tests/src/e2e/conformance.rs: a message
//! lost, more applied twice than the proven bound, or a pause in processing longer
//! than the load's own plus 0.2 s). Stop-and-copy (the papers' baseline) goes over the agents'
//! HTTP API, since the standalone driver only does ShadowPod.

use std::process::ExitCode;

use ms2m_tests::e2e::agents::{
    Agents, ReplayMode, ShimOptions, Transfer, migrate_stop_and_copy_via_agents, migrate_with_shim,
};
use ms2m_tests::e2e::conformance::verdict;
use ms2m_tests::e2e::nats::BrokerKind;
use ms2m_tests::e2e::{ConsumerBehaviour, Driver, Load, Scenario, ScenarioSpec, Strategy};
use serde_json::{Value, json};

struct Args {
    strategy: Strategy,
    shim: ShimOptions,
    spec: ScenarioSpec,
    broker: BrokerKind,
    quiet: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "ms2m-demo: {msg}\nusage: ms2m-demo [--strategy shadowpod|stop-and-copy] \
         [--transfer registry|direct] [--replay-mode cutoff|drain] [--rate N] [--total N] \
         [--delay-ms MS] [--ballast-mib MIB] [--warmup N] \
         [--consumer rust|python|py-p1|py-p50|py-unlimited|py-autoack] [--load steady|bursty] \
         [--broker rabbitmq|nats] [--quiet]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        strategy: Strategy::ShadowPod,
        shim: ShimOptions::default(),
        // The papers' scenario: ≈27 MB of state, 10 msg/s, 50 ms per message.
        spec: ScenarioSpec {
            strategy: Strategy::ShadowPod,
            rate: 10.0,
            total: 200,
            delay_ms: 50,
            ballast_mib: 25,
            warmup: 30,
            consumer: ms2m_tests::e2e::ConsumerBehaviour::default(),
            load: ms2m_tests::e2e::Load::Steady,
        },
        broker: BrokerKind::RabbitMq,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--quiet" {
            a.quiet = true;
            continue;
        }
        let val = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| -> f64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--strategy" => {
                a.strategy = match val.as_str() {
                    "shadowpod" => Strategy::ShadowPod,
                    "stop-and-copy" => Strategy::StopAndCopy,
                    _ => usage("--strategy is shadowpod or stop-and-copy"),
                }
            }
            "--transfer" => {
                a.shim.transfer = match val.as_str() {
                    "registry" => Transfer::Registry,
                    "direct" => Transfer::Direct,
                    _ => usage("--transfer is registry or direct"),
                }
            }
            "--replay-mode" => {
                a.shim.replay_mode = match val.as_str() {
                    "cutoff" => ReplayMode::Cutoff,
                    "drain" => ReplayMode::Drain,
                    _ => usage("--replay-mode is cutoff or drain"),
                }
            }
            "--consumer" => {
                a.spec.consumer = match val.as_str() {
                    "rust" => ConsumerBehaviour::default(),
                    "python" | "py-p50" => ConsumerBehaviour::python(50, false),
                    "py-p1" => ConsumerBehaviour::python(1, false),
                    "py-unlimited" => ConsumerBehaviour::python(0, false),
                    "py-autoack" => ConsumerBehaviour::python(0, true),
                    _ => usage(
                        "--consumer is rust, python, py-p1, py-p50, py-unlimited or py-autoack",
                    ),
                }
            }
            "--load" => {
                a.spec.load = match val.as_str() {
                    "steady" => Load::Steady,
                    "bursty" => Load::bursty(),
                    _ => usage("--load is steady or bursty"),
                }
            }
            "--broker" => {
                a.broker = match val.as_str() {
                    "rabbitmq" => BrokerKind::RabbitMq,
                    "nats" => BrokerKind::Nats,
                    _ => usage("--broker is rabbitmq or nats"),
                }
            }
            "--rate" => a.spec.rate = num(&val),
            "--total" => a.spec.total = num(&val) as u64,
            "--delay-ms" => a.spec.delay_ms = num(&val) as u64,
            "--ballast-mib" => a.spec.ballast_mib = num(&val) as u64,
            "--warmup" => a.spec.warmup = num(&val) as u64,
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if a.strategy == Strategy::ShadowPod && a.spec.consumer.declared_prefetch() == 0 {
        eprintln!(
            "[demo] {}: no prefetch bound, ms2m refuses ShadowPod for it; moving it by stop-and-copy",
            a.spec.consumer.label()
        );
        a.strategy = Strategy::StopAndCopy;
    }
    a.spec.strategy = a.strategy;
    if a.strategy == Strategy::StopAndCopy && a.broker == BrokerKind::Nats {
        // That path sends END_REPLAY with the AMQP control tool.
        usage("--strategy stop-and-copy runs on RabbitMQ only");
    }
    if a.spec.warmup >= a.spec.total {
        usage("--warmup must be below --total");
    }
    a
}

/// In the order a migration walks them (the summary's map is sorted by name).
const PHASES: [&str; 5] = [
    "checkpointing",
    "transferring",
    "restoring",
    "replaying",
    "finalizing",
];

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn print_human(s: &Value) {
    println!("broker:          {}", s["broker"].as_str().unwrap_or("?"));
    println!(
        "driver:          {}",
        s["details"]["driver"].as_str().unwrap_or("?")
    );
    println!(
        "service:         {} msg/s, {} ms per message, {} MiB of state",
        s["rate"], s["delay_ms"], s["ballast_mib"]
    );
    println!("phases:");
    for name in PHASES {
        if let Some(ms) = s["phases_ms"][name].as_u64() {
            println!("  {name:<14} {:>8.3} s", ms as f64 / 1000.0);
        }
    }
    println!(
        "  {:<14} {:>8.3} s",
        "total",
        s["migration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "checkpoint:      {}",
        mb(s["checkpoint_bytes"].as_u64().unwrap_or(0))
    );
    let t = &s["details"]["transfer"];
    if t.is_object() {
        println!(
            "transfer:        {} ({}) archive, {} on the wire, in {:.3} s: {:.0} MB/s",
            mb(t["archive_bytes"].as_u64().unwrap_or(0)),
            t["kind"].as_str().unwrap_or("?"),
            mb(t["wire_bytes"].as_u64().unwrap_or(0)),
            t["ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            t["archive_mb_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "downtime:        {:.3} s (longest gap in which no instance applied a message)",
        s["downtime_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "messages:        produced {}, applied {}, lost {}, applied twice {} \
         (duplicates delivered and skipped: {})",
        s["produced"], s["applied"], s["lost"], s["applied_twice"], s["skipped_duplicates"]
    );
    let a = &s["accounting"];
    println!(
        "from outside:    {} published, {} lost, {} applied twice (publish log vs the \
         surviving state's apply log)",
        a["published"], a["lost"], a["applied_twice"]
    );
    println!(
        "per message:     publish -> first application in the surviving state: worst {} ms, \
         p99 {} ms during the migration; worst {} ms, p99 {} ms before it",
        a["downtime_during"]["worst_ms"],
        a["downtime_during"]["p99_ms"],
        a["downtime_before"]["worst_ms"],
        a["downtime_before"]["p99_ms"]
    );
    println!(
        "no processing:   longest {} ms during the migration, {} ms before it",
        a["longest_gap_ms"], a["baseline_gap_ms"]
    );
}

fn main() -> ExitCode {
    let args = parse();
    let strategy = args.strategy;
    if !args.quiet {
        eprintln!(
            "[demo] two nodes, one agent each, consumer on nodeA; migrating to nodeB ({strategy:?})"
        );
    }
    let sc = Scenario::start_on(args.spec.clone(), Driver::Agents, args.broker);
    let agents = Agents::start(&sc, None);
    let report = sc.run(|sc| match strategy {
        Strategy::ShadowPod => migrate_with_shim(sc, &agents, &args.shim),
        Strategy::StopAndCopy => migrate_stop_and_copy_via_agents(sc, &agents),
    });
    drop(agents);
    let v = verdict(
        args.spec.consumer.label(),
        &args.spec.consumer,
        strategy,
        &report,
    );
    let mut s = report.summary;
    s["broker"] = json!(match args.broker {
        BrokerKind::RabbitMq => "RabbitMQ",
        BrokerKind::Nats => "NATS JetStream",
    });
    let ok = v.ok();
    if !args.quiet {
        print_human(&s);
        println!(
            "verdict:         {} (applied twice allowed: {}){}",
            if ok { "ok" } else { "FAILED" },
            v.twice_bound,
            if ok {
                String::new()
            } else {
                format!(": {}", v.failures.join("; "))
            }
        );
    }
    println!(
        "{}",
        json!({"ms2m_demo": s, "verdict": v.to_json(), "ok": ok})
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
