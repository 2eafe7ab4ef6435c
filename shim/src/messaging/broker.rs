//! The broker-agnostic interface the drivers call: one implementation per broker
//! (RabbitMQ over AMQP 0-9-1, NATS JetStream), chosen by `messageQueueConfig.broker` or
//! the broker URL's scheme. The phase engine never sees which one runs.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    BacklogCheck, BrokerTls, ControlMessage, ManagementConfig, Messaging, MessagingError,
    QueueState, Result, nats::NatsMessaging,
};
use crate::engine::QueueNames;

/// Which broker the service's messages come from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BrokerKind {
    RabbitMQ,
    #[serde(rename = "NATS")]
    Nats,
}

impl BrokerKind {
    /// `nats://` is NATS, `amqp://`/`amqps://` RabbitMQ; anything else is refused.
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("nats://") {
            Ok(BrokerKind::Nats)
        } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
            Ok(BrokerKind::RabbitMQ)
        } else {
            Err(MessagingError::Url(format!(
                "unknown scheme (want amqp://, amqps:// or nats://) in {}",
                super::redact(url)
            )))
        }
    }
}

/// The protocol's broker operations, in the order docs/migration-protocol.md gives them.
#[async_trait::async_trait]
pub trait Broker: Send + Sync {
    /// Step 1: from now on every message reaches the replay queue too.
    async fn ensure_replay_topology(&self, q: &QueueNames) -> Result<()>;
    /// Current ready count and consumers of `queue` (one of `q`'s), `None` if absent.
    async fn queue_state(&self, q: &QueueNames, queue: &str) -> Result<Option<QueueState>>;
    /// Step 2: may the checkpoint be taken?
    async fn pre_binding_backlog(&self, q: &QueueNames, prefetch: u16) -> Result<BacklogCheck>;
    /// Step 7: the primary queue stops feeding anyone; returns the duplicates withheld.
    async fn fence_primary(&self, q: &QueueNames) -> Result<u64>;
    /// Step 9: new messages go to the primary queue, not the replay queue.
    async fn cut_over(&self, q: &QueueNames) -> Result<()>;
    /// Step 10 (and rollback): the replay queue goes.
    async fn delete_replay(&self, q: &QueueNames) -> Result<()>;
    /// `START_REPLAY` / `END_REPLAY` to `ms2m.control.<target>`.
    async fn send_control(&self, control: &str, msg: &ControlMessage) -> Result<()>;
}

/// The broker behind `url`: `kind` when given, else from the URL's scheme.
pub fn connect(
    url: &str,
    kind: Option<BrokerKind>,
    message_id_prefix: &str,
    management: &ManagementConfig,
    tls: Option<&BrokerTls>,
) -> Result<Arc<dyn Broker>> {
    Ok(match kind.map_or_else(|| BrokerKind::from_url(url), Ok)? {
        BrokerKind::RabbitMQ => Arc::new(Messaging::with_tls(
            url,
            message_id_prefix,
            management,
            tls,
        )?),
        BrokerKind::Nats => Arc::new(NatsMessaging::new(url, message_id_prefix)?),
    })
}

#[async_trait::async_trait]
impl Broker for Messaging {
    async fn ensure_replay_topology(&self, q: &QueueNames) -> Result<()> {
        Messaging::ensure_replay_topology(self, q).await
    }
    async fn queue_state(&self, _: &QueueNames, queue: &str) -> Result<Option<QueueState>> {
        Messaging::queue_state(self, queue).await
    }
    async fn pre_binding_backlog(&self, q: &QueueNames, prefetch: u16) -> Result<BacklogCheck> {
        Messaging::pre_binding_backlog(self, q, prefetch).await
    }
    async fn fence_primary(&self, q: &QueueNames) -> Result<u64> {
        Messaging::fence_primary(self, q).await
    }
    async fn cut_over(&self, q: &QueueNames) -> Result<()> {
        Messaging::cut_over(self, q).await
    }
    async fn delete_replay(&self, q: &QueueNames) -> Result<()> {
        Messaging::delete_replay(self, q).await
    }
    async fn send_control(&self, control: &str, msg: &ControlMessage) -> Result<()> {
        Messaging::send_control(self, control, msg).await
    }
}

#[async_trait::async_trait]
impl Broker for NatsMessaging {
    async fn ensure_replay_topology(&self, q: &QueueNames) -> Result<()> {
        NatsMessaging::ensure_replay_topology(self, q).await
    }
    async fn queue_state(&self, q: &QueueNames, queue: &str) -> Result<Option<QueueState>> {
        NatsMessaging::queue_state(self, q, queue).await
    }
    /// JetStream retains what the replay consumer needs: nothing to wait for, whatever
    /// the source's `max_ack_pending` (docs/migration-protocol.md, NATS section).
    async fn pre_binding_backlog(&self, q: &QueueNames, _prefetch: u16) -> Result<BacklogCheck> {
        NatsMessaging::pre_binding_backlog(self, q).await
    }
    async fn fence_primary(&self, q: &QueueNames) -> Result<u64> {
        NatsMessaging::fence_primary(self, q).await
    }
    async fn cut_over(&self, q: &QueueNames) -> Result<()> {
        NatsMessaging::cut_over(self, q).await
    }
    async fn delete_replay(&self, q: &QueueNames) -> Result<()> {
        NatsMessaging::delete_replay(self, q).await
    }
    async fn send_control(&self, control: &str, msg: &ControlMessage) -> Result<()> {
        NatsMessaging::send_control(self, control, msg).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_broker() {
        assert_eq!(
            BrokerKind::from_url("nats://h:4222").unwrap(),
            BrokerKind::Nats
        );
        assert_eq!(
            BrokerKind::from_url("amqp://h").unwrap(),
            BrokerKind::RabbitMQ
        );
        assert!(BrokerKind::from_url("http://h").is_err());
        let k: BrokerKind = serde_json::from_str("\"NATS\"").unwrap();
        assert_eq!(k, BrokerKind::Nats);
        let none = ManagementConfig::default();
        assert!(connect("nats://127.0.0.1:1", None, "m", &none, None).is_ok());
        assert!(
            connect(
                "nats://127.0.0.1:1",
                Some(BrokerKind::RabbitMQ),
                "m",
                &none,
                None
            )
            .is_err()
        );
    }
}
