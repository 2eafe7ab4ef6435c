//! Accounting of one migration from outside the consumer: the producer's publish log
//! (`[[seq, unix_ms], …]`, written by the producer itself) against the apply log of the
//! state that survives (the target's: the checkpointed prefix the source applied, then
//! its own applies, every apply logged, duplicates included) and every instance's applies.
//!
//! - **lost**: published, never applied to the surviving state;
//! - **applied twice**: applies of a seq the surviving state had applied before;
//! - **per-message downtime**: publish → first application in the surviving state, the
//!   delay a user of that state sees; worst and p99 for messages published before the
//!   migration and during it;
//! - **gaps**: the longest interval in which no instance applied anything, before the
//!   migration (the load's own rhythm: a bursty producer pauses) and during it.

use serde::Serialize;
use std::collections::HashMap;

/// Worst and 99th percentile of per-message delays, in ms, over `n` messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delays {
    pub n: u64,
    pub worst_ms: u64,
    pub p99_ms: u64,
}

impl Delays {
    fn of(mut d: Vec<u64>) -> Delays {
        if d.is_empty() {
            return Delays::default();
        }
        d.sort_unstable();
        let n = d.len();
        // Nearest rank: the smallest value with at least 99 % of the delays at or below it.
        let rank = (n * 99).div_ceil(100).max(1);
        Delays {
            n: n as u64,
            worst_ms: d[n - 1],
            p99_ms: d[rank - 1],
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Accounting {
    pub published: u64,
    /// Published seqs absent from the surviving state's apply log.
    pub lost: u64,
    /// The first few lost seqs, for diagnosis.
    pub lost_seqs: Vec<u64>,
    pub applied_twice: u64,
    /// Longest interval without any apply between the first apply and the migration's start.
    pub baseline_gap_ms: u64,
    /// Longest interval without any apply during the migration.
    pub longest_gap_ms: u64,
    pub downtime_before: Delays,
    pub downtime_during: Delays,
    /// The migration's span (unix ms).
    pub t0: u64,
    pub t1: u64,
    /// Publish time of the latest lost message (unix ms).
    pub last_lost_published_ms: Option<u64>,
}

/// `published`: the producer's log; `surviving`: the surviving state's apply log;
/// `all_applies`: every instance's applies; the migration ran from `t0` to `t1` (unix ms).
pub fn account(
    published: &[(u64, u64)],
    surviving: &[(u64, u64)],
    all_applies: &[(u64, u64)],
    t0: u64,
    t1: u64,
) -> Accounting {
    let mut first: HashMap<u64, u64> = HashMap::with_capacity(surviving.len());
    let mut applied_twice = 0;
    for &(seq, t) in surviving {
        match first.get_mut(&seq) {
            Some(f) => {
                applied_twice += 1;
                *f = (*f).min(t);
            }
            None => {
                first.insert(seq, t);
            }
        }
    }
    let (mut before, mut during, mut lost_seqs) = (Vec::new(), Vec::new(), Vec::new());
    let mut lost = 0;
    let mut last_lost_published_ms = None;
    for &(seq, pt) in published {
        let Some(&at) = first.get(&seq) else {
            lost += 1;
            last_lost_published_ms = last_lost_published_ms.max(Some(pt));
            if lost_seqs.len() < 20 {
                lost_seqs.push(seq);
            }
            continue;
        };
        let delay = at.saturating_sub(pt);
        if pt < t0 {
            before.push(delay);
        } else if pt <= t1 {
            during.push(delay);
        }
    }
    let start = all_applies
        .iter()
        .map(|(_, t)| *t)
        .min()
        .unwrap_or(t0)
        .min(t0);
    Accounting {
        published: published.len() as u64,
        lost,
        lost_seqs,
        applied_twice,
        baseline_gap_ms: super::longest_gap(all_applies, start, t0),
        longest_gap_ms: super::longest_gap(all_applies, t0, t1),
        downtime_before: Delays::of(before),
        downtime_during: Delays::of(during),
        t0,
        t1,
        last_lost_published_ms,
    }
}

/// Most messages published within any `window_ms` (a sliding window over the publish
/// log): "rate × duration" for a load that is not steady.
pub fn max_published_within(published: &[(u64, u64)], window_ms: u64) -> u64 {
    let mut times: Vec<u64> = published.iter().map(|(_, t)| *t).collect();
    times.sort_unstable();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] > window_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lost_twice_and_first_application_delays() {
        let published: Vec<(u64, u64)> = (1..=6).map(|s| (s, 1000 + s * 100)).collect();
        // Seq 4 applied twice (once by the checkpointed source, once from the replay
        // queue), 6 never; the migration spans 1350..=1700.
        let surviving = [
            (1, 1110),
            (2, 1220),
            (3, 1330),
            (4, 1450),
            (4, 1900),
            (5, 2000),
        ];
        let a = account(&published, &surviving, &surviving, 1350, 1700);
        assert_eq!((a.published, a.lost, a.applied_twice), (6, 1, 1));
        assert_eq!(a.lost_seqs, vec![6]);
        assert_eq!(a.last_lost_published_ms, Some(1600));
        // Before: 10, 20, 30 ms; during: seq 4 (first at 1450: 50 ms), seq 5 (500 ms).
        assert_eq!(a.downtime_before.worst_ms, 30);
        assert_eq!(a.downtime_during.worst_ms, 500);
        assert_eq!(a.downtime_during.n, 2);
        assert_eq!(a.baseline_gap_ms, 1330 - 1220);
        // 1350 → 1450 → 1700 (end): 250 ms.
        assert_eq!(a.longest_gap_ms, 250);
    }

    #[test]
    fn the_busiest_window_of_a_bursty_load() {
        // Bursts of 10 within 5 ms, one per second.
        let p: Vec<(u64, u64)> = (0..30).map(|i| (i, (i / 10) * 1000 + i % 10)).collect();
        assert_eq!(max_published_within(&p, 100), 10);
        // The window is inclusive: 1000 ms reach from a burst to the next one's first.
        assert_eq!(max_published_within(&p, 1000), 11);
        assert_eq!(max_published_within(&p, 1009), 20);
        assert_eq!(max_published_within(&[], 1000), 0);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let d = Delays::of((1..=200).collect());
        assert_eq!((d.n, d.worst_ms, d.p99_ms), (200, 200, 198));
        assert_eq!(Delays::of(vec![7]).p99_ms, 7);
        assert_eq!(Delays::of(vec![]), Delays::default());
    }
}
