//! The MS2M control messages the shim sends to a restored consumer on its control queue
//! (`ms2m.control.<hostname>`): `{"type":"START_REPLAY","payload":{"queue":..}}` and
//! `{"type":"END_REPLAY"}`. Consumers written in other languages parse the same JSON
//! (docs/protocol.md).

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type")]
pub enum ControlMessage {
    #[serde(rename = "START_REPLAY")]
    StartReplay { payload: StartReplayPayload },
    #[serde(rename = "END_REPLAY")]
    EndReplay,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StartReplayPayload {
    /// The replay queue to drain before the primary one.
    pub queue: String,
}

impl ControlMessage {
    pub fn start_replay(replay_queue: &str) -> Self {
        ControlMessage::StartReplay {
            payload: StartReplayPayload {
                queue: replay_queue.to_owned(),
            },
        }
    }

    /// The message's name in steps and logs.
    pub fn step_name(&self) -> &'static str {
        match self {
            ControlMessage::StartReplay { .. } => "start-replay",
            ControlMessage::EndReplay => "end-replay",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_have_the_protocol_s_shape() {
        assert_eq!(
            serde_json::to_value(ControlMessage::start_replay("r")).unwrap(),
            serde_json::json!({"type": "START_REPLAY", "payload": {"queue": "r"}})
        );
        assert_eq!(
            serde_json::to_value(ControlMessage::EndReplay).unwrap(),
            serde_json::json!({"type": "END_REPLAY"})
        );
    }
}
