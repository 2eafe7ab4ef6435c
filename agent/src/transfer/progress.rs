//! Transfer progress shared between the worker threads, the CLI progress bar and the
//! daemon's job status / Prometheus metrics. Everything is atomics: writers never
//! block, readers take a consistent-enough snapshot at any time.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Where one layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum LayerState {
    Pending = 0,
    /// Encoding and uploading (push) or downloading and unpacking (pull): one stream.
    Transferring = 1,
    /// Waiting out a back-off before resuming or restarting.
    Retrying = 2,
    /// Bytes all sent; the registry is verifying the digest.
    Committing = 3,
    Done = 4,
    /// The registry already had it.
    Skipped = 5,
    Failed = 6,
}

impl LayerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Transferring,
            2 => Self::Retrying,
            3 => Self::Committing,
            4 => Self::Done,
            5 => Self::Skipped,
            6 => Self::Failed,
            _ => Self::Pending,
        }
    }
}

#[derive(Debug, Default)]
struct Layer {
    /// Uncompressed bytes planned for this layer (file sizes).
    planned: AtomicU64,
    /// Bytes on the wire (compressed), counting resent bytes once.
    wire: AtomicU64,
    state: AtomicU8,
    attempts: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    layers: OnceLock<Box<[Layer]>>,
    finished_after_ms: AtomicU64,
}

/// Cheap to clone; all clones observe the same transfer.
#[derive(Debug, Clone)]
pub struct Progress(Arc<Inner>);

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSnapshot {
    pub state: LayerState,
    pub planned_bytes: u64,
    pub wire_bytes: u64,
    pub attempts: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub elapsed: Duration,
    /// Uncompressed bytes planned (archive size), 0 until the plan is known.
    pub planned_bytes: u64,
    /// Bytes moved on the wire so far.
    pub wire_bytes: u64,
    /// Planned bytes of the layers already done or skipped.
    pub done_planned_bytes: u64,
    /// Average wire rate since the start, bytes per second.
    pub wire_rate: f64,
    pub finished: bool,
    pub layers: Vec<LayerSnapshot>,
}

impl Progress {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            started: Instant::now(),
            layers: OnceLock::new(),
            finished_after_ms: AtomicU64::new(u64::MAX),
        }))
    }

    /// Declares the layers once the plan is known; later calls are ignored.
    pub fn set_layers(&self, planned: &[u64]) {
        let layers: Box<[Layer]> = planned
            .iter()
            .map(|p| Layer {
                planned: AtomicU64::new(*p),
                ..Layer::default()
            })
            .collect();
        let _ = self.0.layers.set(layers);
    }

    fn layer(&self, i: usize) -> Option<&Layer> {
        self.0.layers.get().and_then(|l| l.get(i))
    }

    pub fn add_wire(&self, layer: usize, n: u64) {
        if let Some(l) = self.layer(layer) {
            l.wire.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn set_state(&self, layer: usize, state: LayerState) {
        if let Some(l) = self.layer(layer) {
            l.state.store(state as u8, Ordering::Relaxed);
            if state == LayerState::Transferring {
                l.attempts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Marks the whole transfer finished (the rate then stops decaying).
    pub fn finish(&self) {
        let ms = self.0.started.elapsed().as_millis() as u64;
        let _ = self.0.finished_after_ms.compare_exchange(
            u64::MAX,
            ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub fn snapshot(&self) -> Snapshot {
        let fin = self.0.finished_after_ms.load(Ordering::Relaxed);
        let finished = fin != u64::MAX;
        let elapsed = if finished {
            Duration::from_millis(fin)
        } else {
            self.0.started.elapsed()
        };
        let layers: Vec<LayerSnapshot> = self
            .0
            .layers
            .get()
            .map(|ls| {
                ls.iter()
                    .map(|l| LayerSnapshot {
                        state: LayerState::from_u8(l.state.load(Ordering::Relaxed)),
                        planned_bytes: l.planned.load(Ordering::Relaxed),
                        wire_bytes: l.wire.load(Ordering::Relaxed),
                        attempts: l.attempts.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let wire_bytes = layers.iter().map(|l| l.wire_bytes).sum();
        let planned_bytes = layers.iter().map(|l| l.planned_bytes).sum();
        let done_planned_bytes = layers
            .iter()
            .filter(|l| matches!(l.state, LayerState::Done | LayerState::Skipped))
            .map(|l| l.planned_bytes)
            .sum();
        let secs = elapsed.as_secs_f64();
        Snapshot {
            elapsed,
            planned_bytes,
            wire_bytes,
            done_planned_bytes,
            wire_rate: if secs > 0.0 {
                wire_bytes as f64 / secs
            } else {
                0.0
            },
            finished,
            layers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_layers_and_tracks_states() {
        let p = Progress::new();
        p.set_layers(&[100, 50]);
        p.set_state(0, LayerState::Transferring);
        p.add_wire(0, 40);
        p.add_wire(1, 10);
        p.set_state(1, LayerState::Done);
        let clone = p.clone();
        p.finish();
        let s = clone.snapshot();
        assert_eq!(s.planned_bytes, 150);
        assert_eq!(s.wire_bytes, 50);
        assert_eq!(s.done_planned_bytes, 50);
        assert!(s.finished);
        assert_eq!(s.layers[0].state, LayerState::Transferring);
        assert_eq!(s.layers[0].attempts, 1);
        assert_eq!(s.layers[1].state, LayerState::Done);
    }

    #[test]
    fn updates_before_the_plan_are_ignored() {
        let p = Progress::new();
        p.add_wire(3, 10);
        p.set_state(0, LayerState::Done);
        assert_eq!(p.snapshot().wire_bytes, 0);
        assert!(p.snapshot().layers.is_empty());
    }
}
