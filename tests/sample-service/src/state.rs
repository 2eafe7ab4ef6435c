//! The consumer's in-memory state and the exactly-once apply rule.

use std::collections::{HashSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::message::DataMessage;

/// Which queue the consumer takes work from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", content = "queue", rename_all = "snake_case")]
pub enum Mode {
    /// Normal operation on the primary queue.
    Primary,
    /// Restored from a checkpoint: consume nothing until `START_REPLAY`.
    AwaitingReplay,
    /// Catching up from the replay queue.
    Replaying(String),
}

/// What applying one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// `seq` was at or below the last applied one: already part of the state.
    SkippedDuplicate,
}

/// Everything `/state` reports. Counters only grow, so two snapshots can be compared.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceState {
    pub pod: String,
    #[serde(flatten)]
    pub mode: Mode,
    /// Skip a `seq` at or below the last applied one. Off: every delivery is applied,
    /// as by a consumer that does not deduplicate (most don't).
    pub dedup: bool,
    /// Messages applied (with `dedup`, each sequence number at most once).
    pub count: u64,
    /// Applies of a sequence number this state had applied before: double application
    /// (only possible without `dedup`).
    pub applied_twice: u64,
    /// Distinct sequence numbers applied: `count - applied_twice`.
    pub distinct: u64,
    pub sum: i64,
    pub last_seq: u64,
    pub skipped_duplicates: u64,
    /// Times a message skipped ahead of `last_seq + 1` (messages this instance never saw).
    pub gaps: u64,
    /// Sequence numbers missing in those gaps.
    pub missing: u64,
    /// Checkpoint restores this process detected.
    pub restores: u64,
    /// Applied after a restore without an ack (the source acks them on its own connection).
    pub applied_unacked_after_restore: u64,
    pub ballast_mib: u64,
    pub ballast_checksum: u64,
    /// Wall-clock time of the last apply, for downtime measurements across instances.
    pub last_applied_unix_ms: u64,
    pub connections: u64,
    /// `(seq, unix ms)` of the most recent applies (bounded), for downtime and
    /// accounting across instances; served by `/applied`, not `/state`.
    #[serde(skip)]
    pub applied_log: VecDeque<(u64, u64)>,
    #[serde(skip)]
    seen: HashSet<u64>,
}

/// Entries kept in [`ServiceState::applied_log`]: 16 bytes each, ≈1.6 MB at most.
pub const APPLIED_LOG_CAP: usize = 100_000;

impl ServiceState {
    pub fn new(pod: String) -> Self {
        Self {
            pod,
            mode: Mode::Primary,
            dedup: true,
            count: 0,
            applied_twice: 0,
            distinct: 0,
            sum: 0,
            last_seq: 0,
            skipped_duplicates: 0,
            gaps: 0,
            missing: 0,
            restores: 0,
            applied_unacked_after_restore: 0,
            ballast_mib: 0,
            ballast_checksum: 0,
            last_applied_unix_ms: 0,
            connections: 0,
            applied_log: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Applies `msg` unless its sequence number is already covered by the state.
    ///
    /// Producers number messages 1, 2, 3, … and a single queue delivers them in order
    /// (redeliveries only repeat), so "seq ≤ last applied" means "already applied".
    pub fn apply(&mut self, msg: DataMessage) -> Outcome {
        if self.dedup && msg.seq <= self.last_seq {
            self.skipped_duplicates += 1;
            return Outcome::SkippedDuplicate;
        }
        if self.seen.insert(msg.seq) {
            self.distinct += 1;
        } else {
            self.applied_twice += 1;
        }
        if msg.seq > self.last_seq + 1 {
            self.gaps += 1;
            self.missing += msg.seq - self.last_seq - 1;
        }
        self.count += 1;
        self.sum += msg.value;
        self.last_seq = self.last_seq.max(msg.seq);
        self.last_applied_unix_ms = unix_ms();
        if self.applied_log.len() == APPLIED_LOG_CAP {
            self.applied_log.pop_front();
        }
        self.applied_log
            .push_back((msg.seq, self.last_applied_unix_ms));
        Outcome::Applied
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DataMessage, expected_sum};

    #[test]
    fn applies_in_order_and_skips_duplicates() {
        let mut s = ServiceState::new("p".into());
        for seq in 1..=5 {
            assert_eq!(s.apply(DataMessage::for_seq(seq)), Outcome::Applied);
        }
        // A redelivery and a replayed prefix: both already in the state.
        assert_eq!(s.apply(DataMessage::for_seq(5)), Outcome::SkippedDuplicate);
        for seq in 3..=5 {
            assert_eq!(
                s.apply(DataMessage::for_seq(seq)),
                Outcome::SkippedDuplicate
            );
        }
        assert_eq!(s.apply(DataMessage::for_seq(6)), Outcome::Applied);
        assert_eq!((s.count, s.last_seq, s.skipped_duplicates), (6, 6, 4));
        assert_eq!(s.sum, expected_sum(1, 6));
        assert_eq!((s.gaps, s.missing), (0, 0));
        let seqs: Vec<u64> = s.applied_log.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            vec![1, 2, 3, 4, 5, 6],
            "duplicates are not logged as applies"
        );
    }

    #[test]
    fn replay_overlapping_the_checkpoint_gives_the_exact_state() {
        // Source applied 1..=10 before the checkpoint; the replay queue was bound
        // at 8, so it holds 8..=20; then END_REPLAY and the primary queue still has
        // 18..=25 (also in the replay queue, acked there by the target).
        let mut target = ServiceState::new("t".into());
        (1..=10).for_each(|s| {
            target.apply(DataMessage::for_seq(s));
        });
        (8..=20).chain(18..=25).for_each(|s| {
            target.apply(DataMessage::for_seq(s));
        });
        assert_eq!(target.count, 25);
        assert_eq!(target.sum, expected_sum(1, 25));
        assert_eq!(target.skipped_duplicates, 3 + 3);
        assert_eq!(target.gaps, 0);
    }

    #[test]
    fn counts_gaps() {
        let mut s = ServiceState::new("p".into());
        s.apply(DataMessage::for_seq(1));
        s.apply(DataMessage::for_seq(4));
        assert_eq!((s.gaps, s.missing, s.count), (1, 2, 2));
    }

    #[test]
    fn state_json_shape() {
        let mut s = ServiceState::new("web-0".into());
        s.mode = Mode::Replaying("q.ms2m-replay".into());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["mode"], "replaying");
        assert_eq!(v["queue"], "q.ms2m-replay");
        assert_eq!(v["pod"], "web-0");
        s.mode = Mode::AwaitingReplay;
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["mode"], "awaiting_replay");
        assert!(v.get("applied_log").is_none());
    }
}
