//! NATS JetStream side of the protocol (docs/migration-protocol.md, "NATS JetStream").
//!
//! Mapping of the RabbitMQ names ([`QueueNames`]): the exchange is the **stream**, the
//! primary queue is the service's **durable consumer** on it, the replay queue is a
//! second durable consumer, `<primary>_ms2m-replay` (JetStream names cannot contain
//! dots, so every `.` of a queue name becomes `_`), and the control queue
//! `ms2m.control.<target>` is a **subject** captured by the stream `MS2M_CONTROL`, so a
//! control message sent before the target listens waits for it, as in a durable queue.
//!
//! What changes against RabbitMQ, and why:
//! - The stream keeps every message, so the replay consumer needs no second copy and no
//!   binding: it starts at the stream sequence after the primary consumer's
//!   acknowledgement floor. No pre-checkpoint condition is needed either (see the doc).
//! - The fence deletes the primary consumer (its pending and unacknowledged messages
//!   are all in the replay consumer's range); the primary's configuration was saved in
//!   the replay consumer's description when it was created, so nothing is lost if the
//!   driver dies in between.
//! - The cut is made when the target has left the replay consumer after `END_REPLAY`:
//!   the primary consumer is created again from the saved configuration, starting right
//!   after the replay consumer's acknowledgement floor, and then the replay consumer is
//!   deleted ([`NatsMessaging::delete_replay`]). Every message is delivered by exactly
//!   one of the two.
//!
//! Client: async-nats (tokio-native), plain TCP (no TLS feature compiled in). The
//! client reconnects by itself; every operation here is idempotent or, for the control
//! messages, deduplicated by the server (`Nats-Msg-Id` = `<migration>/<step>`).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, DeliverPolicy},
    stream,
};
use tokio::sync::OnceCell;
use tracing::{debug, info};

use super::{BacklogCheck, ControlMessage, MessagingError, QueueState, Result};
use crate::engine::QueueNames;

/// The stream that holds the control messages of every migration.
pub const CONTROL_STREAM: &str = "MS2M_CONTROL";
/// Subjects [`CONTROL_STREAM`] captures: `ms2m.control.<target>`.
pub const CONTROL_SUBJECTS: &str = "ms2m.control.>";
/// Prefix of the description under which the replay consumer keeps the primary
/// consumer's configuration (JSON), to create it again at the cut.
const SAVED_PRIMARY: &str = "ms2m-primary:";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The JetStream name for a queue name: `.` is not allowed in stream or consumer names.
pub fn jetstream_name(queue: &str) -> String {
    queue.replace('.', "_")
}

/// The control stream's configuration; the shim and the sample consumer both create it
/// (idempotently), so they must agree on it.
pub fn control_stream_config() -> stream::Config {
    stream::Config {
        name: CONTROL_STREAM.to_owned(),
        subjects: vec![CONTROL_SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(24 * 3600),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// A JetStream session, opened on first use; the client reconnects by itself.
pub struct NatsMessaging {
    url: String,
    js: OnceCell<jetstream::Context>,
    message_id_prefix: String,
}

fn op(op: &'static str) -> impl Fn(String) -> MessagingError {
    move |message| MessagingError::Operation { op, message }
}

/// What the server says about a consumer: `None` when it does not exist.
fn not_found<T>(
    r: std::result::Result<T, async_nats::jetstream::context::ConsumerInfoError>,
    name: &'static str,
) -> Result<Option<T>> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.kind(), K::NotFound) => Ok(None),
        Err(e) if matches!(e.kind(), K::StreamNotFound) => Err(MessagingError::Refused {
            op: name,
            code: 404,
            text: e.to_string(),
        }),
        Err(e) => Err(MessagingError::Operation {
            op: name,
            message: e.to_string(),
        }),
    }
}

impl NatsMessaging {
    pub fn new(url: &str, message_id_prefix: &str) -> Result<Self> {
        if !url.starts_with("nats://") {
            return Err(MessagingError::Url(format!(
                "scheme must be nats:// in {}",
                super::redact(url)
            )));
        }
        Ok(Self {
            url: url.to_owned(),
            js: OnceCell::new(),
            message_id_prefix: message_id_prefix.to_owned(),
        })
    }

    async fn js(&self) -> Result<&jetstream::Context> {
        self.js
            .get_or_try_init(|| async {
                let client = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    async_nats::ConnectOptions::new()
                        .name("ms2m-shim")
                        .connect(self.url.as_str()),
                )
                .await
                .map_err(|_| MessagingError::Timeout("connect"))?
                .map_err(|e| MessagingError::Connect(e.to_string()))?;
                debug!("nats connection open");
                Ok(jetstream::new(client))
            })
            .await
    }

    async fn stream(&self, name: &str) -> Result<stream::Stream> {
        self.js()
            .await?
            .get_stream(name)
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j) if j.code() == 404 => {
                    MessagingError::Refused {
                        op: "stream.info",
                        code: 404,
                        text: e.to_string(),
                    }
                }
                _ => MessagingError::Operation {
                    op: "stream.info",
                    message: e.to_string(),
                },
            })
    }

    async fn consumer(&self, q: &QueueNames, name: &str) -> Result<Option<consumer::Info>> {
        let stream = self.stream(&q.exchange).await?;
        not_found(stream.consumer_info(name).await, "consumer.info")
    }

    async fn create(&self, stream: &stream::Stream, config: consumer::Config) -> Result<()> {
        stream
            .create_consumer(config)
            .await
            .map(drop)
            .map_err(|e| op("consumer.create")(e.to_string()))
    }

    async fn delete(&self, stream: &stream::Stream, name: &str) -> Result<()> {
        match stream.delete_consumer(name).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                jetstream::stream::ConsumerErrorKind::JetStream(j) if j.code() == 404 => Ok(()),
                _ => Err(op("consumer.delete")(e.to_string())),
            },
        }
    }

    /// The replay consumer for the primary consumer `primary`, starting at `start`: the
    /// primary's configuration (same filter, acknowledgement and flow settings, so the
    /// target consumes it the way the source consumed the primary) under another name
    /// and delivery subject, with the primary's own configuration kept in the
    /// description.
    fn replay_config(primary: &consumer::Config, replay: &str, start: u64) -> consumer::Config {
        let mut c = primary.clone();
        c.name = Some(replay.to_owned());
        c.durable_name = Some(replay.to_owned());
        if c.deliver_subject.is_some() {
            c.deliver_subject = Some(format!("_ms2m.replay.{replay}"));
        }
        c.deliver_group = None;
        c.deliver_policy = DeliverPolicy::ByStartSequence {
            start_sequence: start,
        };
        c.description = Some(format!(
            "{SAVED_PRIMARY}{}",
            serde_json::to_string(primary).expect("consumer configs serialize")
        ));
        c
    }

    /// The primary consumer's configuration as the replay consumer saved it.
    fn saved_primary(replay: &consumer::Info) -> Result<consumer::Config> {
        replay
            .config
            .description
            .as_deref()
            .and_then(|d| d.strip_prefix(SAVED_PRIMARY))
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| MessagingError::Refused {
                op: "consumer.create(primary)",
                code: 412,
                text: format!(
                    "replay consumer {} holds no saved primary configuration",
                    replay.name
                ),
            })
    }

    /// Creates the replay consumer (once): it starts right after the primary consumer's
    /// acknowledgement floor. Every message up to the floor was acknowledged by the
    /// source, hence applied, before this read, hence before the checkpoint's freeze.
    pub async fn ensure_replay_topology(&self, q: &QueueNames) -> Result<()> {
        let stream = self.stream(&q.exchange).await?;
        let replay = jetstream_name(&q.replay);
        if not_found(stream.consumer_info(&replay).await, "consumer.info")?.is_some() {
            return Ok(());
        }
        let primary = not_found(stream.consumer_info(&q.primary).await, "consumer.info")?
            .ok_or_else(|| MessagingError::Refused {
                op: "consumer.info(primary)",
                code: 404,
                text: format!("no consumer {} on stream {}", q.primary, q.exchange),
            })?;
        let start = primary.ack_floor.stream_sequence + 1;
        self.create(
            &stream,
            Self::replay_config(&primary.config, &replay, start),
        )
        .await?;
        info!(stream = %q.exchange, %replay, start, "replay consumer created");
        Ok(())
    }

    /// The replay consumer is not consumed before `START_REPLAY`, so it can be moved up
    /// to the primary's current acknowledgement floor: the closer that read is to the
    /// freeze, the fewer messages a non-deduplicating target applies twice. Nothing has
    /// to wait (the stream retains every message the replay consumer needs), so the
    /// check is settled as soon as the replay consumer exists.
    pub async fn pre_binding_backlog(&self, q: &QueueNames) -> Result<BacklogCheck> {
        let stream = self.stream(&q.exchange).await?;
        let replay = jetstream_name(&q.replay);
        let Some(r) = not_found(stream.consumer_info(&replay).await, "consumer.info")? else {
            // A driver that died between the delete and the create below: create it
            // again, at the current floor.
            self.ensure_replay_topology(q).await?;
            return Ok(BacklogCheck {
                settled: false,
                detail: "replay consumer created again".into(),
            });
        };
        let Some(p) = not_found(stream.consumer_info(&q.primary).await, "consumer.info")? else {
            return Err(MessagingError::Refused {
                op: "consumer.info(primary)",
                code: 404,
                text: format!("no consumer {} on stream {}", q.primary, q.exchange),
            });
        };
        let start = match r.config.deliver_policy {
            DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
            _ => 0,
        };
        let floor = p.ack_floor.stream_sequence + 1;
        let untouched = r.delivered.consumer_sequence == 0 && !r.push_bound && r.num_waiting == 0;
        if untouched && floor > start {
            let config = Self::saved_primary(&r)?;
            self.delete(&stream, &replay).await?;
            self.create(&stream, Self::replay_config(&config, &replay, floor))
                .await?;
            debug!(%replay, from = start, to = floor, "replay consumer moved up");
        }
        Ok(BacklogCheck {
            settled: true,
            detail: format!(
                "replay starts at stream sequence {}; primary acked up to {}, delivered up to {}",
                floor.max(start),
                p.ack_floor.stream_sequence,
                p.delivered.stream_sequence
            ),
        })
    }

    /// Current state of a consumer, as the engine reads a queue. `consumers` is 1 while
    /// a client is bound (a push consumer's subscription, or a pull consumer's waiting
    /// request); `ready` is what the consumer still owes that client (undelivered plus
    /// unacknowledged), and 0 while nobody is bound.
    ///
    /// Unbound, nothing is owed to anyone: after `END_REPLAY` the target leaves the
    /// replay consumer, which keeps matching new messages and keeps what the target had
    /// received but not processed unacknowledged; all of that lies after the replay
    /// consumer's acknowledgement floor, where the primary consumer restarts at the cut.
    pub async fn queue_state(&self, q: &QueueNames, queue: &str) -> Result<Option<QueueState>> {
        let Some(info) = self.consumer(q, &jetstream_name(queue)).await? else {
            return Ok(None);
        };
        Ok(Some(consumer_state(&info)))
    }

    /// The fence: deletes the primary consumer once the source is gone. Its pending and
    /// unacknowledged messages lie after the replay consumer's start, so the target gets
    /// them from there; the primary consumer would deliver them a second time. Returns
    /// how many it held.
    pub async fn fence_primary(&self, q: &QueueNames) -> Result<u64> {
        let stream = self.stream(&q.exchange).await?;
        let replay = jetstream_name(&q.replay);
        let Some(r) = not_found(stream.consumer_info(&replay).await, "consumer.info")? else {
            return Err(MessagingError::Refused {
                op: "fence",
                code: 404,
                text: format!("no replay consumer {replay}: the primary's config would be lost"),
            });
        };
        Self::saved_primary(&r)?;
        let Some(p) = not_found(stream.consumer_info(&q.primary).await, "consumer.info")? else {
            return Ok(0);
        };
        let held = p.num_pending + p.num_ack_pending as u64;
        self.delete(&stream, &q.primary).await?;
        info!(primary = %q.primary, held, "primary consumer fenced (deleted)");
        Ok(held)
    }

    /// Nothing to route on JetStream: the cut is made when the target has left the
    /// replay consumer ([`Self::delete_replay`]).
    pub async fn cut_over(&self, q: &QueueNames) -> Result<()> {
        debug!(stream = %q.exchange, "cut-over: made at the replay consumer's deletion");
        Ok(())
    }

    /// The cut, then the replay consumer's deletion. When the primary consumer was
    /// fenced, it is created again from its saved configuration, starting after the
    /// replay consumer's acknowledgement floor: the target acknowledged (applied)
    /// everything up to there from the replay consumer, and nothing after it (what it
    /// received and left unacknowledged, it did not apply). The engine calls this once
    /// the target has left the replay consumer. During a rollback the
    /// primary still exists and only the replay consumer goes.
    pub async fn delete_replay(&self, q: &QueueNames) -> Result<()> {
        let stream = self.stream(&q.exchange).await?;
        let replay = jetstream_name(&q.replay);
        let Some(r) = not_found(stream.consumer_info(&replay).await, "consumer.info")? else {
            return Ok(());
        };
        let primary = not_found(stream.consumer_info(&q.primary).await, "consumer.info")?;
        if primary.is_none() {
            if r.push_bound || r.num_waiting > 0 {
                // The target is (again) bound: cutting now could hand a message to both
                // consumers. Try again next round.
                return Err(MessagingError::Operation {
                    op: "cut",
                    message: format!("the target is still bound to {replay}"),
                });
            }
            let mut config = Self::saved_primary(&r)?;
            let start = r.ack_floor.stream_sequence + 1;
            config.deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: start,
            };
            self.create(&stream, config).await?;
            info!(primary = %q.primary, start, "primary consumer created again after the replay");
        }
        self.delete(&stream, &replay).await?;
        info!(%replay, "replay consumer deleted");
        Ok(())
    }

    /// Publishes a control message on `ms2m.control.<target>` into the control stream
    /// and waits for the server's acknowledgement; the server drops a repeat with the
    /// same `Nats-Msg-Id` within its duplicate window.
    pub async fn send_control(&self, control_subject: &str, msg: &ControlMessage) -> Result<()> {
        let js = self.js().await?;
        js.get_or_create_stream(control_stream_config())
            .await
            .map_err(|e| op("stream.create(control)")(e.to_string()))?;
        let msg = match msg {
            // The target binds the consumer by this name: send the JetStream one.
            ControlMessage::StartReplay { payload } => {
                ControlMessage::start_replay(&jetstream_name(&payload.queue))
            }
            other => other.clone(),
        };
        let body = serde_json::to_vec(&msg).expect("control messages serialize");
        let message_id = format!("{}/{}", self.message_id_prefix, msg.step_name());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id.as_str());
        let ack = js
            .publish_with_headers(control_subject.to_owned(), headers, body.into())
            .await
            .map_err(|e| op("publish(control)")(e.to_string()))?
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::StreamNotFound => {
                    MessagingError::Unroutable {
                        queue: control_subject.to_owned(),
                        text: e.to_string(),
                    }
                }
                _ => MessagingError::NotConfirmed(control_subject.to_owned()),
            })?;
        info!(
            subject = control_subject,
            message = msg.step_name(),
            duplicate = ack.duplicate,
            "control message stored"
        );
        Ok(())
    }
}

fn consumer_state(info: &consumer::Info) -> QueueState {
    let bound = info.push_bound || info.num_waiting > 0;
    QueueState {
        ready: if bound {
            info.num_pending + info.num_ack_pending as u64
        } else {
            0
        },
        consumers: u32::from(bound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_dots_and_urls_need_the_nats_scheme() {
        assert_eq!(jetstream_name("orders.ms2m-replay"), "orders_ms2m-replay");
        assert!(NatsMessaging::new("amqp://h", "m").is_err());
        assert!(NatsMessaging::new("nats://127.0.0.1:4222", "m").is_ok());
    }

    #[test]
    fn the_replay_consumer_keeps_the_primary_config_to_restore_it_at_the_cut() {
        let primary = consumer::Config {
            durable_name: Some("orders".into()),
            name: Some("orders".into()),
            deliver_subject: Some("deliver.orders".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 50,
            filter_subject: "orders".into(),
            ..Default::default()
        };
        let r = NatsMessaging::replay_config(&primary, "orders_ms2m-replay", 42);
        assert_eq!(r.durable_name.as_deref(), Some("orders_ms2m-replay"));
        assert_eq!(
            r.deliver_subject.as_deref(),
            Some("_ms2m.replay.orders_ms2m-replay")
        );
        assert_eq!(r.max_ack_pending, 50);
        assert_eq!(r.filter_subject, "orders");
        assert!(matches!(
            r.deliver_policy,
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        ));
        let json = r.description.unwrap();
        let back: consumer::Config =
            serde_json::from_str(json.strip_prefix(SAVED_PRIMARY).unwrap()).unwrap();
        assert_eq!(back.deliver_subject.as_deref(), Some("deliver.orders"));
        assert_eq!(back.durable_name.as_deref(), Some("orders"));
    }
}
