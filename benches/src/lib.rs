//! Shared helpers for the benchmarks.

pub mod write_limit;
