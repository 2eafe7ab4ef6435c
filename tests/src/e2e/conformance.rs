//! The conformance matrix of the migration protocol (issue 11, docs/migration-protocol.md):
//! consumers {the Rust sample (dedup); the Python + pika consumer at prefetch 1, 50 and
//! unlimited with manual ack; the Python consumer with automatic ack} × transfer
//! {registry, direct} × replay mode {cutoff, drain} × load {steady 10 msg/s, bursty 10
//! then 1 s}. Each cell is one migration through two real agents and `ms2m-shim migrate`,
//! accounted for from outside the consumer ([`super::accounting`]).
//!
//! What each cell must show ([`verdict`]):
//! - consumers with a prefetch bound, ShadowPod: 0 lost; applied twice within the bound
//!   the protocol doc proves (0 for the deduplicating sample); no interval without
//!   processing longer than the load's own longest pause before the migration + 0.2 s;
//! - consumers without one (`sourcePrefetch` 0: unlimited prefetch, automatic ack): ms2m
//!   refuses ShadowPod for them, so the cell runs what ms2m offers instead, stop-and-copy
//!   (the controller's Sequential strategy; over the agents' API here, push and pull, so
//!   its transfer and replay mode are fixed). Manual ack: 0 lost, at most 2 applied
//!   twice (the delivery between its apply and its ack at the freeze, and an ack still in
//!   the dead socket). Automatic ack: what the client had buffered at the freeze is lost,
//!   and only that: every lost message was published before the checkpoint ended.
//!   Stop-and-copy has no processing while the service moves, so no gap rule.

use serde_json::{Value, json};

use super::accounting::{Accounting, max_published_within};
use super::agents::{
    Agents, ReplayMode, ShimOptions, Transfer, migrate_stop_and_copy_via_agents, migrate_with_shim,
};
use super::{
    ConsumerBehaviour, ConsumerKind, Driver, GAP_ALLOWANCE_MS, Load, Scenario, ScenarioReport,
    ScenarioSpec, Strategy,
};

/// One cell of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub consumer: ConsumerBehaviour,
    pub transfer: Transfer,
    pub mode: ReplayMode,
    pub load: Load,
}

/// The five consumers of the matrix, in table order.
pub fn consumers() -> [ConsumerBehaviour; 5] {
    [
        ConsumerBehaviour::default(),
        ConsumerBehaviour::python(1, false),
        ConsumerBehaviour::python(50, false),
        ConsumerBehaviour::python(0, false),
        ConsumerBehaviour::python(0, true),
    ]
}

/// Every cell: 5 consumers × 2 transfers × 2 modes × 2 loads. Cells of consumers ms2m
/// migrates by stop-and-copy differ only in their load (transfer and mode do not apply).
pub fn full_matrix() -> Vec<Cell> {
    let mut cells = Vec::new();
    for consumer in consumers() {
        for transfer in [Transfer::Registry, Transfer::Direct] {
            for mode in [ReplayMode::Cutoff, ReplayMode::Drain] {
                for load in [Load::Steady, Load::bursty()] {
                    let cell = Cell {
                        consumer,
                        transfer,
                        mode,
                        load,
                    };
                    if cell.strategy() == Strategy::StopAndCopy
                        && (transfer, mode) != (Transfer::Registry, ReplayMode::Cutoff)
                    {
                        continue;
                    }
                    cells.push(cell);
                }
            }
        }
    }
    cells
}

impl Cell {
    /// ShadowPod, unless the consumer has no prefetch bound (ms2m refuses ShadowPod then).
    pub fn strategy(&self) -> Strategy {
        if self.consumer.declared_prefetch() == 0 {
            Strategy::StopAndCopy
        } else {
            Strategy::ShadowPod
        }
    }

    pub fn name(&self) -> String {
        match self.strategy() {
            Strategy::ShadowPod => format!(
                "{}/{}/{}/{}",
                self.consumer.label(),
                match self.transfer {
                    Transfer::Registry => "registry",
                    Transfer::Direct => "direct",
                },
                match self.mode {
                    ReplayMode::Cutoff => "cutoff",
                    ReplayMode::Drain => "drain",
                },
                self.load.label()
            ),
            Strategy::StopAndCopy => format!(
                "{}/stop-and-copy/{}",
                self.consumer.label(),
                self.load.label()
            ),
        }
    }

    /// The service: 10 msg/s on average, 50 ms of work per message, a little
    /// state; 30 messages before the migration starts.
    pub fn spec(&self) -> ScenarioSpec {
        ScenarioSpec {
            strategy: self.strategy(),
            rate: 10.0,
            total: 200,
            delay_ms: 50,
            ballast_mib: if self.consumer.kind == ConsumerKind::RustSample {
                8
            } else {
                0
            },
            warmup: 30,
            consumer: self.consumer,
            load: self.load,
        }
    }

    pub fn shim_options(&self) -> ShimOptions {
        ShimOptions {
            replay_mode: self.mode,
            transfer: self.transfer,
            ..ShimOptions::default()
        }
    }

    /// Runs the cell's migration and returns its report (panics when the driver fails).
    pub fn run(&self) -> ScenarioReport {
        let sc = Scenario::start_for(self.spec(), Driver::Agents);
        let agents = Agents::start(&sc, None);
        let opts = self.shim_options();
        let strategy = self.strategy();
        sc.run(|sc| match strategy {
            Strategy::ShadowPod => migrate_with_shim(sc, &agents, &opts),
            Strategy::StopAndCopy => migrate_stop_and_copy_via_agents(sc, &agents),
        })
    }
}

/// What a cell showed and whether that is what the protocol promises for it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub cell: String,
    pub accounting: Accounting,
    /// The most applied twice the protocol allows in this run.
    pub twice_bound: u64,
    /// Whether the gap rule applies (ShadowPod).
    pub gap_rule: bool,
    /// What broke the promise; empty when the cell conforms.
    pub failures: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cell": self.cell,
            "ok": self.ok(),
            "twice_bound": self.twice_bound,
            "gap_rule": self.gap_rule,
            "failures": self.failures,
            "accounting": self.accounting,
        })
    }
}

/// The bound docs/migration-protocol.md proves for a ShadowPod run of a consumer that
/// does not deduplicate: the post-binding messages the source applied before the freeze,
/// at most `N·c` (the condition's wait; one consumer here) plus what was published while
/// the condition was observed and the checkpoint taken (the busiest window of the
/// checkpointing phase plus one second of polling and job start), plus the delivery in
/// the consumer's hands at the freeze.
pub fn shadowpod_twice_bound(consumer: &ConsumerBehaviour, report: &ScenarioReport) -> u64 {
    if consumer.dedup {
        return 0;
    }
    let checkpointing_ms = report.summary["phases_ms"]["checkpointing"]
        .as_u64()
        .unwrap_or(0);
    u64::from(consumer.declared_prefetch())
        + max_published_within(&report.published, checkpointing_ms + 1000)
        + 1
}

/// Judges one finished run of `consumer` under `strategy`.
pub fn verdict(
    cell: String,
    consumer: &ConsumerBehaviour,
    strategy: Strategy,
    report: &ScenarioReport,
) -> Verdict {
    let a = report
        .accounting
        .clone()
        .expect("a completed migration's accounting");
    let mut failures = Vec::new();
    let total = report.produced["produced"].as_u64().unwrap_or(0);
    if a.published != total {
        failures.push(format!(
            "publish log has {} entries, the producer published {total}",
            a.published
        ));
    }
    let state_twice = report.final_state["applied_twice"].as_u64().unwrap_or(0);
    if state_twice != a.applied_twice {
        failures.push(format!(
            "the apply log says {} applied twice, the state {state_twice}",
            a.applied_twice
        ));
    }
    let (twice_bound, gap_rule) = match strategy {
        Strategy::ShadowPod => (shadowpod_twice_bound(consumer, report), true),
        Strategy::StopAndCopy if consumer.dedup => (0, false),
        Strategy::StopAndCopy => (2, false),
    };
    let lossy = strategy == Strategy::StopAndCopy && consumer.auto_ack;
    if lossy {
        let checkpoint_end = a.t0
            + report.summary["phases_ms"]["checkpointing"]
                .as_u64()
                .unwrap_or(0);
        if let Some(last) = a.last_lost_published_ms.filter(|t| *t > checkpoint_end) {
            failures.push(format!(
                "lost a message published at {last}, after the checkpoint ended at {checkpoint_end}"
            ));
        }
    } else if a.lost != 0 {
        failures.push(format!("lost {}: {:?}", a.lost, a.lost_seqs));
    }
    if a.applied_twice > twice_bound {
        failures.push(format!(
            "applied twice {} > bound {twice_bound}",
            a.applied_twice
        ));
    }
    if gap_rule && a.longest_gap_ms > a.baseline_gap_ms + GAP_ALLOWANCE_MS {
        failures.push(format!(
            "{} ms without processing during the migration, {} ms before it",
            a.longest_gap_ms, a.baseline_gap_ms
        ));
    }
    Verdict {
        cell,
        accounting: a,
        twice_bound,
        gap_rule,
        failures,
    }
}

/// One row of the printed table.
pub fn table_row(v: &Verdict) -> String {
    let a = &v.accounting;
    format!(
        "{:<38} {:>4} {:>5} {:>5} {:>7} {:>7} {:>8} {:>7} {:>7} {}",
        v.cell,
        a.lost,
        a.applied_twice,
        v.twice_bound,
        a.longest_gap_ms,
        a.baseline_gap_ms,
        a.downtime_during.worst_ms,
        a.downtime_during.p99_ms,
        a.downtime_before.worst_ms,
        if v.ok() { "ok" } else { "FAIL" }
    )
}

pub const TABLE_HEADER: &str = "cell                                   lost twice bound gap(ms) base(ms) worst(ms) p99(ms) pre(ms) verdict";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_matrix_has_every_value_of_every_axis() {
        let cells = full_matrix();
        // 3 ShadowPod consumers × 8, 2 stop-and-copy consumers × 2 loads.
        assert_eq!(cells.len(), 3 * 8 + 2 * 2);
        let names: Vec<String> = cells.iter().map(Cell::name).collect();
        for part in [
            "rust-dedup",
            "py-p1",
            "py-p50",
            "py-unlimited",
            "py-autoack",
            "/registry/",
            "/direct/",
            "/cutoff/",
            "/drain/",
            "/steady",
            "/bursty",
        ] {
            assert!(names.iter().any(|n| n.contains(part)), "{part}: {names:?}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }
}
