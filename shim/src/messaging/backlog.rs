//! The pre-checkpoint condition: has the source acknowledged every message published
//! before the replay queue was bound?
//!
//! Such a message exists only in the primary queue. If the source applies it after the
//! checkpoint, it is in neither the target's memory nor the replay queue. Ready depth
//! alone cannot tell: a consumer with prefetch 50 holds up to 50 deliveries
//! unacknowledged while the primary queue reads empty. The broker has no current count
//! of those: the management API's `messages_unacknowledged` is a statistic, and on this
//! project's broker (RabbitMQ 3.10, `collect_statistics_interval` 100 ms) it read 0 for
//! the whole 2 s in which a prefetch-50 consumer worked off 40 deliveries
//! (docs/migration-protocol.md has the measurement). So the rule uses only current
//! counts (`queue.declare(passive)`) and the consumer's prefetch:
//!
//! 1. The replay queue is not consumed before `START_REPLAY`, so its ready depth is the
//!    number of messages published since the binding, and it never decreases.
//! 2. Read the replay depth `r` first, then the primary's ready depth `p` and consumer
//!    count `c`. At the second read at least `r - p` post-binding messages have left
//!    the primary queue, i.e. were delivered (the primary holds no more than `p` ready
//!    messages of any age).
//! 3. A consumer with prefetch `N` is delivered a message only while it holds fewer than
//!    `N` unacknowledged, and a consumer that acknowledges in delivery order holds a
//!    suffix of what it was delivered. When the `N`-th post-binding message was
//!    delivered, the consumer's suffix of fewer than `N` unacknowledged deliveries held
//!    no pre-binding message: all were acknowledged. With `c` consumers, `N·c`
//!    post-binding deliveries are enough for every one of them.
//!
//! So `r - p >= N·c` proves the condition. Without a consumer (`c = 0`, e.g. between a
//! crash and its reconnect) nothing is unacknowledged, and `p <= r` proves that no
//! pre-binding message is left in the primary queue. It needs traffic after the binding: with an
//! idle producer nothing can be proven and the phase times out (rollback, nothing lost).
//! A consumer without a prefetch limit, or with automatic acknowledgement, gives no
//! bound; for it (`prefetch` 0) the rule proves only that every pre-binding message was
//! *delivered* (`r - p >= 1`), and what it had not applied at the checkpoint is the
//! residual the protocol document bounds.

/// What the rule concluded, with the figures it used (for logs and status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BacklogCheck {
    pub settled: bool,
    pub detail: String,
}

/// The rule above. `replay_ready` must be read before `primary_ready` and
/// `primary_consumers`; `prefetch` is the source consumer's (0: unlimited or auto-ack).
pub fn pre_binding_backlog(
    replay_ready: u64,
    primary_ready: u64,
    primary_consumers: u32,
    prefetch: u16,
) -> BacklogCheck {
    let delivered_since_binding = replay_ready.saturating_sub(primary_ready);
    let needed = u64::from(prefetch.max(1)) * u64::from(primary_consumers);
    BacklogCheck {
        settled: replay_ready >= primary_ready && delivered_since_binding >= needed,
        detail: format!(
            "{delivered_since_binding} of the {replay_ready} messages published since the binding \
             delivered from the primary queue, {needed} needed (prefetch {prefetch}, {primary_consumers} consumer(s))"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_post_binding_deliveries_per_consumer_prove_the_backlog_acknowledged() {
        // (replay, primary ready, consumers, prefetch) -> settled
        let cases = [
            // Prefetch 1: one post-binding delivery is enough (the old depth rule).
            (5, 4, 1, 1, true),
            (5, 5, 1, 1, false),
            // Prefetch 50: an empty primary queue proves nothing by itself.
            (10, 0, 1, 50, false),
            (49, 0, 1, 50, false),
            (50, 0, 1, 50, true),
            (60, 10, 1, 50, true),
            (60, 11, 1, 50, false),
            // Two consumers of prefetch 10.
            (19, 0, 2, 10, false),
            (20, 0, 2, 10, true),
            // No traffic since the binding: never.
            (0, 0, 1, 1, false),
            // Unlimited prefetch: every pre-binding message delivered.
            (1, 0, 1, 0, true),
            (3, 3, 1, 0, false),
            // No consumer: nothing unacknowledged; no pre-binding message may be ready.
            (0, 0, 0, 50, true),
            (3, 3, 0, 50, true),
            (3, 4, 0, 50, false),
        ];
        for (r, p, c, n, want) in cases {
            let got = pre_binding_backlog(r, p, c, n);
            assert_eq!(
                got.settled, want,
                "replay {r}, primary {p}, {c} x prefetch {n}: {got:?}"
            );
        }
    }
}
