//! Wire formats: data messages and MS2M control messages.
//!
//! Control messages are those of the paper authors' Go implementation:
//! `{"type":"START_REPLAY","payload":{"queue":"<replay queue>"}}` and
//! `{"type":"END_REPLAY"}`. Extra fields are ignored and a `null`/empty payload is
//! accepted on `END_REPLAY`, so senders that always emit a payload interoperate.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// One unit of work on the primary queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataMessage {
    pub seq: u64,
    pub value: i64,
}

impl DataMessage {
    /// The message the reference producer sends for `seq`.
    pub fn for_seq(seq: u64) -> Self {
        Self {
            seq,
            value: value_for_seq(seq),
        }
    }

    pub fn parse(body: &[u8]) -> Result<Self> {
        Ok(serde_json::from_slice(body)?)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing two integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Deterministic, sign-varying value so that the sum is a checksum of *which*
/// sequence numbers were applied, not only of how many.
pub fn value_for_seq(seq: u64) -> i64 {
    (seq.wrapping_mul(2_654_435_761) % 2001) as i64 - 1000
}

/// Expected state after applying sequence numbers `1..=n` exactly once.
pub fn expected_sum(first: u64, last: u64) -> i64 {
    (first..=last).map(value_for_seq).sum()
}

/// Type tags of the Go implementation.
pub const START_REPLAY: &str = "START_REPLAY";
pub const END_REPLAY: &str = "END_REPLAY";

/// A decoded control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Consume `queue` (the replay queue) instead of the primary queue.
    StartReplay { queue: String },
    /// Go back to the primary queue.
    EndReplay,
}

#[derive(Deserialize)]
struct RawControl {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<Value>,
}

impl ControlMessage {
    pub fn parse(body: &[u8]) -> Result<Self> {
        let raw: RawControl = serde_json::from_slice(body)?;
        match raw.kind.as_str() {
            START_REPLAY => {
                let queue = raw
                    .payload
                    .as_ref()
                    .and_then(|p| p.get("queue"))
                    .and_then(Value::as_str)
                    .filter(|q| !q.is_empty())
                    .ok_or_else(|| {
                        Error::Control("START_REPLAY without payload.queue".to_owned())
                    })?;
                Ok(Self::StartReplay {
                    queue: queue.to_owned(),
                })
            }
            END_REPLAY => Ok(Self::EndReplay),
            other => Err(Error::Control(format!("unknown control type {other:?}"))),
        }
    }

    /// Encoded exactly as the Go implementation encodes it.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Payload<'a> {
            queue: &'a str,
        }
        // Field order follows the Go struct (`type`, then `payload`), and END_REPLAY
        // carries no payload key at all, as the Go encoder's `omitempty` produces.
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            payload: Option<Payload<'a>>,
        }
        let wire = match self {
            Self::StartReplay { queue } => Wire {
                kind: START_REPLAY,
                payload: Some(Payload { queue }),
            },
            Self::EndReplay => Wire {
                kind: END_REPLAY,
                payload: None,
            },
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// Name of the control queue of a pod.
pub fn control_queue(pod: &str) -> String {
    format!("ms2m.control.{pod}")
}

/// Name of the replay queue MS2M binds next to `primary`.
pub fn replay_queue(primary: &str) -> String {
    format!("{primary}.ms2m-replay")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_start_replay() {
        let m = ControlMessage::parse(
            br#"{"type":"START_REPLAY","payload":{"queue":"orders.ms2m-replay"}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ControlMessage::StartReplay {
                queue: "orders.ms2m-replay".into()
            }
        );
    }

    #[test]
    fn parses_end_replay_with_and_without_payload() {
        for body in [
            &br#"{"type":"END_REPLAY"}"#[..],
            br#"{"type":"END_REPLAY","payload":null}"#,
            br#"{"type":"END_REPLAY","payload":{}}"#,
            br#"{"payload":{"x":1},"type":"END_REPLAY","extra":true}"#,
        ] {
            assert_eq!(
                ControlMessage::parse(body).unwrap(),
                ControlMessage::EndReplay
            );
        }
    }

    #[test]
    fn rejects_start_replay_without_queue_and_unknown_types() {
        for body in [
            &br#"{"type":"START_REPLAY"}"#[..],
            br#"{"type":"START_REPLAY","payload":{"queue":""}}"#,
            br#"{"type":"START_REPLAY","payload":{"queue":7}}"#,
            br#"{"type":"PAUSE"}"#,
            br#"not json"#,
        ] {
            assert!(ControlMessage::parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn encodes_the_go_shapes_exactly() {
        let start = ControlMessage::StartReplay {
            queue: "q.ms2m-replay".into(),
        };
        assert_eq!(
            String::from_utf8(start.to_json()).unwrap(),
            r#"{"type":"START_REPLAY","payload":{"queue":"q.ms2m-replay"}}"#
        );
        assert_eq!(
            String::from_utf8(ControlMessage::EndReplay.to_json()).unwrap(),
            r#"{"type":"END_REPLAY"}"#
        );
        assert_eq!(ControlMessage::parse(&start.to_json()).unwrap(), start);
    }

    #[test]
    fn data_message_round_trip_and_names() {
        let m = DataMessage::for_seq(42);
        assert_eq!(DataMessage::parse(&m.to_json()).unwrap(), m);
        assert_eq!(
            DataMessage::parse(br#"{"seq":3,"value":-9}"#).unwrap(),
            DataMessage { seq: 3, value: -9 }
        );
        assert_eq!(control_queue("web-0"), "ms2m.control.web-0");
        assert_eq!(replay_queue("orders"), "orders.ms2m-replay");
        let values: Vec<i64> = (1..=200).map(value_for_seq).collect();
        assert!(values.iter().any(|v| *v < 0) && values.iter().any(|v| *v > 0));
        assert_eq!(expected_sum(1, 3), values[0] + values[1] + values[2]);
    }
}
