//! The protocol's full conformance matrix (issue 11): every consumer × transfer ×
//! replay mode × load of `ms2m_tests::e2e::conformance::full_matrix`, one migration
//! each through two real agents and `ms2m-shim migrate`, accounted for from outside the
//! consumer. Prints one row per cell as it finishes, then the whole table: lost,
//! applied twice (and the bound the protocol proves for the cell), the longest interval
//! without processing during the migration against the load's own before it, and the
//! worst and p99 per-message downtime (publish → first application in the surviving
//! state) during the migration, with the worst before it. Fails when a cell breaks its
//! promise (`conformance::verdict`). `make test` runs a covering subset
//! (tests/tests/e2e_conformance.rs).
//!
//! Environment: MS2M_CONFORMANCE_CELLS (substrings; only cells whose name contains one),
//! the services' variables as for the tests (scripts/bench.sh starts them).

use ms2m_tests::e2e::conformance::{TABLE_HEADER, full_matrix, table_row, verdict};

fn main() {
    for v in ["MS2M_TEST_REGISTRY", "MS2M_TEST_AMQP_URL", "MS2M_CRIU"] {
        assert!(
            std::env::var_os(v).is_some(),
            "{v} is not set: run through scripts/bench.sh (it starts the registry and the broker)"
        );
    }
    let only: Vec<String> = std::env::var("MS2M_CONFORMANCE_CELLS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let cells: Vec<_> = full_matrix()
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|o| c.name().contains(o.as_str())))
        .collect();
    eprintln!("[conformance] {} cells", cells.len());
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        let name = cell.name();
        eprintln!("[conformance] {}/{}: {name}", i + 1, cells.len());
        match std::panic::catch_unwind(|| cell.run()) {
            Ok(report) => {
                let v = verdict(name.clone(), &cell.consumer, cell.strategy(), &report);
                eprintln!("{TABLE_HEADER}\n{}", table_row(&v));
                if !v.ok() {
                    eprintln!("[conformance] {name}: {:?}", v.failures);
                    failed.push(name);
                }
                rows.push(table_row(&v));
            }
            Err(_) => {
                rows.push(format!("{name:<38} migration failed (see above)"));
                failed.push(name);
            }
        }
    }
    println!("\nconformance matrix: 10 msg/s on average, 50 ms per message; ms");
    println!("{TABLE_HEADER}");
    for r in &rows {
        println!("{r}");
    }
    assert!(
        failed.is_empty(),
        "cells that broke their promise: {failed:?}"
    );
}
