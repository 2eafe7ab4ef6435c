//! The pre-checkpoint condition: has the source acknowledged every message published
//! before the replay queue was bound?
//!
//! Such a message exists only in the primary queue. If the source applies it after the
//! checkpoint, it is in neither the target's memory nor the replay queue. Ready depth
//! cannot tell (a consumer with prefetch 50 holds up to 50 deliveries unacknowledged),
//! and the management API's `messages_unacknowledged` is a statistic that can be up to
//! two `collect_statistics_interval`s old. The argument (docs/migration-protocol.md):
//!
//! 1. A reading taken at time `s` equals the queue's true counts at some moment
//!    `τ ≥ s − lag`, `lag = 2 × interval + margin` (the queue emits its counts at least
//!    every interval while anything changes, the collector copies them every interval;
//!    if nothing changed, the counts at `s − lag` are the same).
//! 2. The replay queue is not consumed before `START_REPLAY`, so its ready depth at any
//!    time is the number of messages published since the binding, `post(t)`, and
//!    `post` never decreases. A depth sampled at `t₀ ≤ s − lag` is at most `post(τ)`.
//! 3. The primary queue holds (ready + unacknowledged) its oldest unacknowledged messages
//!    and everything after them (FIFO delivery, a consumer that acknowledges in delivery
//!    order, as single-threaded consumers do). If that count is at most `post(τ)`, all
//!    of it was published after the binding: every pre-binding message was acknowledged
//!    by `τ`, hence before the checkpoint that follows.
//!
//! The probe starts its clock at its first use, which is after the binding: a restarted
//! driver simply waits one `lag` again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::management::QueueStats;

/// What the probe concluded, with the figures it used (for logs and status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BacklogCheck {
    pub settled: bool,
    pub detail: String,
}

/// Replay-depth history and the decision rule; no I/O, so it can be tested alone.
#[derive(Debug)]
pub struct BacklogProbe {
    lag: Duration,
    /// (when, replay ready depth), oldest first; depths never decrease.
    history: VecDeque<(Instant, u64)>,
}

impl BacklogProbe {
    pub fn new(stats_interval: Duration) -> Self {
        let margin = (stats_interval / 2).max(Duration::from_millis(250));
        Self {
            lag: stats_interval * 2 + margin,
            history: VecDeque::new(),
        }
    }

    pub fn lag(&self) -> Duration {
        self.lag
    }

    /// Records a replay depth sampled at `at` (real time, `queue.declare`).
    pub fn record_replay_depth(&mut self, at: Instant, depth: u64) {
        self.history.push_back((at, depth));
    }

    /// Decides on a primary-queue reading fetched at `at`.
    pub fn check(&mut self, at: Instant, primary: Option<QueueStats>) -> BacklogCheck {
        let Some(cutoff) = at.checked_sub(self.lag) else {
            return self.pending("statistics not yet older than the binding");
        };
        // The newest depth sampled no later than `at - lag`; older ones are no longer
        // needed (a later, larger one is as old or older than any future cutoff needs).
        while self.history.len() > 1 && self.history[1].0 <= cutoff {
            self.history.pop_front();
        }
        let Some(&(_, post)) = self.history.front().filter(|(t, _)| *t <= cutoff) else {
            return self.pending(&format!(
                "waiting {} ms for broker statistics newer than the replay binding",
                self.lag.as_millis()
            ));
        };
        let Some(p) = primary else {
            return self.pending("the primary queue has no statistics yet");
        };
        let held = p.ready + p.unacknowledged;
        BacklogCheck {
            settled: held <= post,
            detail: format!(
                "primary ready {} + unacknowledged {} against {post} published since the binding",
                p.ready, p.unacknowledged
            ),
        }
    }

    fn pending(&self, why: &str) -> BacklogCheck {
        BacklogCheck {
            settled: false,
            detail: why.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(ready: u64, unacknowledged: u64) -> Option<QueueStats> {
        Some(QueueStats {
            ready,
            unacknowledged,
        })
    }

    #[test]
    fn a_reading_is_not_trusted_before_it_can_postdate_the_binding() {
        let t0 = Instant::now();
        let mut p = BacklogProbe::new(Duration::from_millis(100));
        assert_eq!(p.lag(), Duration::from_millis(450));
        p.record_replay_depth(t0, 0);
        // A stale reading of an empty queue right after the binding proves nothing: the
        // prefetch-50 case measured on the real broker read exactly like this.
        assert!(!p.check(t0 + Duration::from_millis(10), stats(0, 0)).settled);
        assert!(!p.check(t0 + Duration::from_millis(449), stats(0, 0)).settled);
        assert!(p.check(t0 + Duration::from_millis(450), stats(0, 0)).settled);
    }

    #[test]
    fn held_messages_must_all_be_post_binding_ones() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = BacklogProbe::new(ms(100));
        p.record_replay_depth(t0, 0);
        p.record_replay_depth(t0 + ms(200), 3);
        p.record_replay_depth(t0 + ms(600), 9);
        // At t0+700 the cutoff is t0+250: 3 messages were published after the binding by
        // then. 5 held (e.g. 2 ready + 3 unacked): at least 2 are older than the binding.
        let c = p.check(t0 + ms(700), stats(2, 3));
        assert!(!c.settled, "{c:?}");
        assert!(p.check(t0 + ms(700), stats(0, 3)).settled);
        // Later, the depth sampled at t0+600 counts: 9.
        assert!(p.check(t0 + ms(1100), stats(4, 5)).settled);
        assert!(!p.check(t0 + ms(1100), stats(5, 5)).settled);
    }

    #[test]
    fn no_statistics_is_not_settled() {
        let t0 = Instant::now();
        let mut p = BacklogProbe::new(Duration::from_millis(100));
        p.record_replay_depth(t0, 5);
        assert!(!p.check(t0 + Duration::from_secs(1), None).settled);
    }
}
