//! The machine's own ceiling for any receiver: writing the archive's size into a new
//! file.
//!
//! Measured in the same run as the tools because on the VMs these benchmarks run on it
//! swings by an order of magnitude: the guest hands freed pages back to its host
//! (`page_reporting`), and the first write into such a page stalls on a host fault. A
//! new 1 GiB file is written at 3.6–4.9 GB/s while recently freed memory lasts and at
//! 300–400 MB/s after that (`copy_folio_from_iter_atomic` then takes 92 % of the time).
//! Holding freed pages longer (`min_free_ms`) and pre-touching memory did not make it
//! repeatable, so the benchmark reports the limit beside the tools instead of hiding it.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `bytes` into a new file at `path` (page cache, no fsync, as the tools do),
/// removes it, and returns the time the writing took.
pub fn write_new_file(path: &Path, bytes: u64) -> std::io::Result<Duration> {
    let block = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    drop(f);
    let took = t.elapsed();
    std::fs::remove_file(path)?;
    Ok(took)
}
