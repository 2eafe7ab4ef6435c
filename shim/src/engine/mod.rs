//! The phase engine: a pure state machine shared by the Kubernetes controller and the
//! standalone driver. Observed state in, actions out; no I/O.
//!
//! Driver contract (what makes re-entry after a crash safe):
//! 1. observe the world, 2. [`decide`], 3. **persist** `decision.progress`,
//! 4. run `decision.actions` in order, calling [`mark_done`] and persisting after each
//!    success, stopping at the first failure, 5. wait as `decision.next` says
//!    ([`crate::driver::round`] does 1-4).
//!
//! Every step is `Intended` in the persisted progress before its side effect happens, and
//! every side effect is idempotent, so a driver restarted at any point repeats at most the
//! one effect that may or may not have happened. Effects that cannot be observed
//! (control messages) are therefore delivered at least once; consumers treat a repeated
//! `START_REPLAY`/`END_REPLAY` as a no-op.
//!
//! Failure handling: before the source stops for good, a failure rolls back (delete the
//! target, delete the replay queue, scale a Sequential source back up, remove the image a
//! Direct transfer imported on the target node) and ends in `Failed`. Once a ShadowPod source has been stopped (cutoff) or in `Finalizing`, undoing
//! would throw away the only up-to-date state, so the migration ends in `Failed` with the
//! target and the replay queue kept; no message is lost either way, since every message
//! is still in the primary or the replay queue.
//!
//! Once a migration is over, the drivers delete the checkpoints it left in the agents'
//! stores ([`leftover_checkpoints`]): after the phase is persisted, best effort, not a
//! step (the agents' retention expiry is the backstop for a driver that stops first).

mod decide;
mod leftovers;
mod types;

pub use decide::{POLL, REPLAY_POLL, decide, mark_done, record_job};
pub use leftovers::{LeftoverCheckpoint, leftover_checkpoints};
pub use types::*;

#[cfg(test)]
mod tests;
