//! The counting container the checkpoint/restore tests share: a shell loop appending
//! `i [more columns]` to /log in its rootfs, so the test reads the process's in-memory
//! state from the host, and a restart (a second "1") or a skip is visible.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Counts into /log every 20 ms.
pub const COUNTER: &[&str] = &[
    "sh",
    "-c",
    "i=0; while true; do i=$((i+1)); echo $i >> /log; sleep 0.02; done",
];

/// The lines of `<rootfs>/log`, each as its whitespace-separated numbers; a line being
/// written right now (not yet parseable) is left out.
pub fn log_lines(rootfs: &Path) -> Vec<Vec<u64>> {
    fs::read_to_string(rootfs.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().map(|w| w.parse().ok()).collect())
        .collect()
}

/// Waits (at most 30 s) until /log has `n` lines and returns them.
pub fn wait_for_lines(rootfs: &Path, n: usize) -> Vec<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = log_lines(rootfs);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "counter reached only {} lines",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the first column is one unbroken count 1, 2, 3, …: the restored process
/// carried on from its in-memory counter instead of starting over or skipping.
pub fn assert_continuous(lines: &[Vec<u64>]) {
    for (k, line) in lines.iter().enumerate() {
        assert_eq!(
            line[0],
            k as u64 + 1,
            "count restarted or skipped at line {k}: {:?}",
            &lines[k.saturating_sub(3)..(k + 3).min(lines.len())]
        );
    }
}
