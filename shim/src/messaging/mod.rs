//! AMQP 0-9-1 side of the protocol: the fanout topology that feeds the replay queue, the
//! control messages to the target, and the replay queue depth.
//!
//! Wire compatibility with the reference implementation: control queue
//! `ms2m.control.<target>` (durable), JSON bodies `{"type":"START_REPLAY","payload":{"queue":..}}`
//! and `{"type":"END_REPLAY"}`, persistent, via the default exchange; replay queue
//! `<primary>.ms2m-replay` (durable) bound to the fanout exchange. Extension: each control
//! message carries an AMQP `message-id` (`<migration>/<step>`) so consumers that care can
//! drop a repeat; consumers that don't still work, since both messages are idempotent.
//!
//! Client: amqprs (tokio-native, ~31 dependencies against lapin's ~198). Every operation
//! here is idempotent (declare, bind, unbind, delete) or confirmed (publish with publisher
//! confirms and `mandatory`, so an unroutable control message is an error, not a silent
//! drop). A dropped connection is reopened and the operation retried once; a publish whose
//! confirm was lost with the connection is sent again (at-least-once), which is why the
//! control messages must be, and are, harmless to repeat.

use std::time::Duration;

use amqprs::{
    BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return,
    callbacks::{ChannelCallback, DefaultConnectionCallback},
    channel::{
        BasicPublishArguments, Channel, ConfirmSelectArguments, ExchangeBindArguments,
        ExchangeDeclareArguments, ExchangeDeleteArguments, ExchangeType, QueueBindArguments,
        QueueDeclareArguments, QueueDeleteArguments, QueuePurgeArguments, QueueUnbindArguments,
    },
    connection::{Connection, OpenConnectionArguments},
};

mod backlog;
mod broker;
mod broker_tls;
mod management;
pub mod nats;

pub use backlog::{BacklogCheck, pre_binding_backlog};
pub use broker::{Broker, BrokerKind, connect};
pub use broker_tls::BrokerTls;
pub use management::{Binding, Management, ManagementConfig};
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, info, warn};

use crate::engine::QueueNames;

/// How long one broker round trip may take before the connection is considered dead.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("invalid broker URL: {0}")]
    Url(String),
    #[error("broker connection failed: {0}")]
    Connect(String),
    #[error("broker operation `{op}` failed: {message}")]
    Operation { op: &'static str, message: String },
    #[error("broker refused `{op}`: {code} {text}")]
    Refused {
        op: &'static str,
        code: u16,
        text: String,
    },
    #[error("control message to {queue} was not routed: {text}")]
    Unroutable { queue: String, text: String },
    #[error("broker did not confirm the control message to {0}")]
    NotConfirmed(String),
    #[error("broker operation `{0}` timed out")]
    Timeout(&'static str),
    #[error("broker TLS: {0}")]
    Tls(String),
}

impl MessagingError {
    /// A refusal or an unroutable message won't change by retrying; the rest might.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MessagingError::Url(_)
                | MessagingError::Tls(_)
                | MessagingError::Refused { .. }
                | MessagingError::Unroutable { .. }
        )
    }
}

pub type Result<T, E = MessagingError> = std::result::Result<T, E>;

/// The control messages of the MS2M protocol live in the API crate, shared with
/// consumers' tests.
pub use ms2m_api::control::{ControlMessage, StartReplayPayload};

/// What the broker told the channel asynchronously.
#[derive(Debug)]
enum ChannelEvent {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
    Returned { code: u16, text: String },
    Closed { code: u16, text: String },
}

struct Forwarder(mpsc::UnboundedSender<ChannelEvent>);

#[async_trait::async_trait]
impl ChannelCallback for Forwarder {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        let _ = self.0.send(ChannelEvent::Closed {
            code: close.reply_code(),
            text: close.reply_text().clone(),
        });
        Ok(())
    }
    async fn cancel(
        &mut self,
        _: &Channel,
        _: Cancel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _: &Channel,
        active: bool,
    ) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: amqprs::Ack) {
        let _ = self.0.send(ChannelEvent::Ack {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let _ = self.0.send(ChannelEvent::Nack {
            tag: nack.delivery_tag(),
            multiple: nack.multiple(),
        });
    }
    async fn publish_return(&mut self, _: &Channel, ret: Return, _: BasicProperties, _: Vec<u8>) {
        let _ = self.0.send(ChannelEvent::Returned {
            code: ret.reply_code(),
            text: ret.reply_text().clone(),
        });
    }
}

struct Link {
    connection: Connection,
    channel: Channel,
    events: mpsc::UnboundedReceiver<ChannelEvent>,
    /// Delivery tag of the next publish (confirm mode numbers publishes from 1).
    next_tag: u64,
}

/// A broker session that survives dropped connections.
pub struct Messaging {
    args: OpenConnectionArguments,
    link: Mutex<Option<Link>>,
    /// Prefix of the `message-id` of control messages, e.g. the migration's name.
    message_id_prefix: String,
    management: Management,
}

/// A queue as `queue.declare(passive)` reports it: current, not a statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery (unacknowledged deliveries are not counted).
    pub ready: u64,
    pub consumers: u32,
}

impl Messaging {
    /// Nothing is opened until the first operation. The management API is expected on
    /// the AMQP host's port 15672; see [`Messaging::with_management`].
    pub fn new(url: &str, message_id_prefix: &str) -> Result<Self> {
        Self::with_management(url, message_id_prefix, &ManagementConfig::default())
    }

    pub fn with_management(
        url: &str,
        message_id_prefix: &str,
        management: &ManagementConfig,
    ) -> Result<Self> {
        Self::with_tls(url, message_id_prefix, management, None)
    }

    /// As [`Messaging::with_management`], over TLS for an `amqps://` URL: trusting
    /// `tls`'s CA (or the system's roots) and presenting its client certificate. The
    /// management API defaults to `https://<host>:15671` then, with the same trust.
    pub fn with_tls(
        url: &str,
        message_id_prefix: &str,
        management: &ManagementConfig,
        tls: Option<&BrokerTls>,
    ) -> Result<Self> {
        let mut args = connection_args(url)?;
        args.connection_name("ms2m-shim");
        let parsed = parse_url(url)?;
        let tls_config = match (parsed.tls, tls) {
            (true, tls) => Some(std::sync::Arc::new(
                tls.cloned().unwrap_or_default().client_config()?,
            )),
            (false, Some(_)) => {
                return Err(MessagingError::Tls(format!(
                    "TLS material is configured but the broker URL {} is not amqps://",
                    redact(url)
                )));
            }
            (false, None) => None,
        };
        if let Some(cfg) = &tls_config {
            // Installed before the first connection: amqprs's TLS needs a provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            args.tls_adaptor(amqprs::tls::TlsAdaptor::new(
                tokio_rustls::TlsConnector::from(cfg.clone()),
                parsed.host.clone(),
            ));
        }
        let management = Management::new(&parsed, management, tls_config.as_deref())?;
        Ok(Self {
            args,
            link: Mutex::new(None),
            message_id_prefix: message_id_prefix.to_owned(),
            management,
        })
    }

    pub fn management(&self) -> &Management {
        &self.management
    }

    async fn open(&self) -> Result<Link> {
        let connection = tokio::time::timeout(OP_TIMEOUT, Connection::open(&self.args))
            .await
            .map_err(|_| MessagingError::Timeout("connect"))?
            .map_err(|e| MessagingError::Connect(e.to_string()))?;
        connection
            .register_callback(DefaultConnectionCallback)
            .await
            .map_err(|e| MessagingError::Connect(e.to_string()))?;
        let (channel, events) = open_channel(&connection).await?;
        debug!("broker connection open");
        Ok(Link {
            connection,
            channel,
            events,
            next_tag: 1,
        })
    }

    /// Runs `op` on a live link; reconnects and retries once when the connection was
    /// found dead. Only idempotent operations go through here.
    async fn run<T, F>(&self, name: &'static str, op: F) -> Result<T>
    where
        F: for<'a> Fn(&'a mut Link) -> futures::future::BoxFuture<'a, Result<T>>,
    {
        let mut guard = self.link.lock().await;
        for attempt in 0..2 {
            let link = match guard.as_mut() {
                Some(l) if l.connection.is_open() && l.channel.is_open() => l,
                Some(l) if l.connection.is_open() => {
                    // The server closed the channel after a refused operation: new channel.
                    let (channel, events) = open_channel(&l.connection).await?;
                    l.channel = channel;
                    l.events = events;
                    l.next_tag = 1;
                    l
                }
                _ => {
                    if guard.is_some() {
                        info!(op = name, "broker connection lost, reconnecting");
                    }
                    *guard = None;
                    guard.insert(self.open().await?)
                }
            };
            let res = match tokio::time::timeout(OP_TIMEOUT, op(link)).await {
                Ok(r) => r,
                Err(_) => Err(MessagingError::Timeout(name)),
            };
            match res {
                Ok(v) => return Ok(v),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    // Dead connection (or a timeout on one that looks alive): start over.
                    warn!(op = name, error = %e, attempt, "broker operation failed");
                    if let Some(l) = guard.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), l.connection.close())
                            .await;
                    }
                    if attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Declares the fanout exchange and the replay queue and binds both the primary and
    /// the replay queue, so that from now on every message lands in both. The primary
    /// queue must exist (the service declared it); it is not re-declared, so its
    /// arguments stay the service's.
    pub async fn ensure_replay_topology(&self, q: &QueueNames) -> Result<()> {
        self.run("ensure_replay_topology", |l| {
            let q = q.clone();
            Box::pin(async move {
                let (ch, ev) = (&l.channel, &mut l.events);
                let mut ex = ExchangeDeclareArguments::of_type(&q.exchange, ExchangeType::Fanout);
                ex.durable(true);
                ch.exchange_declare(ex)
                    .await
                    .map_err(|e| op_err(ev, "exchange.declare", e))?;
                let mut primary = QueueDeclareArguments::new(&q.primary);
                primary.passive(true);
                ch.queue_declare(primary)
                    .await
                    .map_err(|e| op_err(ev, "queue.declare(primary)", e))?;
                ch.queue_bind(QueueBindArguments::new(
                    &q.primary,
                    &q.exchange,
                    &q.routing_key,
                ))
                .await
                .map_err(|e| op_err(ev, "queue.bind(primary)", e))?;
                ch.queue_declare(QueueDeclareArguments::durable_client_named(&q.replay))
                    .await
                    .map_err(|e| op_err(ev, "queue.declare(replay)", e))?;
                ch.queue_bind(QueueBindArguments::new(
                    &q.replay,
                    &q.exchange,
                    &q.routing_key,
                ))
                .await
                .map_err(|e| op_err(ev, "queue.bind(replay)", e))?;
                Ok(())
            })
        })
        .await?;
        info!(exchange = %q.exchange, replay = %q.replay, "replay queue bound");
        Ok(())
    }

    /// Ready messages and consumers of `queue` (passive declare), `None` when the queue
    /// does not exist.
    pub async fn queue_state(&self, queue: &str) -> Result<Option<QueueState>> {
        let res = self
            .run("queue_state", |l| {
                let queue = queue.to_owned();
                Box::pin(async move {
                    let mut args = QueueDeclareArguments::new(&queue);
                    args.passive(true);
                    let ev = &mut l.events;
                    let ok = l
                        .channel
                        .queue_declare(args)
                        .await
                        .map_err(|e| op_err(ev, "queue.declare(passive)", e))?;
                    Ok(ok.map(|(_, count, consumers)| QueueState {
                        ready: u64::from(count),
                        consumers,
                    }))
                })
            })
            .await;
        match res {
            Ok(state) => Ok(state),
            Err(MessagingError::Refused { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Messages ready in `queue`, `None` when the queue does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Result<Option<u64>> {
        Ok(self.queue_state(queue).await?.map(|s| s.ready))
    }

    /// The pre-checkpoint condition ([`backlog`]) for a source consumer with `prefetch`
    /// (0: unlimited or automatic acknowledgement): call it after the replay binding and
    /// before `START_REPLAY` (the replay queue must not be consumed yet).
    pub async fn pre_binding_backlog(&self, q: &QueueNames, prefetch: u16) -> Result<BacklogCheck> {
        // The replay depth first: it only grows, so reading it before the primary's
        // keeps the rule on the safe side.
        let replay = self.queue_state(&q.replay).await?.map_or(0, |s| s.ready);
        let primary = self.queue_state(&q.primary).await?.unwrap_or(QueueState {
            ready: 0,
            consumers: 0,
        });
        let check = pre_binding_backlog(replay, primary.ready, primary.consumers, prefetch);
        debug!(settled = check.settled, detail = %check.detail, "pre-binding backlog");
        Ok(check)
    }

    /// The fence, once the source's channel is closed (its unacknowledged deliveries are
    /// back in the primary queue): unbind the primary queue from the exchange, then purge
    /// it. Every message in it was published after the replay binding (the
    /// pre-checkpoint condition saw to the older ones), so each is also in the replay
    /// queue, which the target consumes; a consumer that does not deduplicate would apply
    /// it twice. From here on only the replay queue is fed. Returns the messages purged.
    /// Repeating it is harmless: an unbound primary queue receives nothing.
    pub async fn fence_primary(&self, q: &QueueNames) -> Result<u64> {
        let purged = self
            .run("fence_primary", |l| {
                let q = q.clone();
                Box::pin(async move {
                    let ev = &mut l.events;
                    l.channel
                        .queue_unbind(QueueUnbindArguments::new(
                            &q.primary,
                            &q.exchange,
                            &q.routing_key,
                        ))
                        .await
                        .map_err(|e| op_err(ev, "queue.unbind(primary)", e))?;
                    let n = l
                        .channel
                        .queue_purge(QueuePurgeArguments::new(&q.primary))
                        .await
                        .map_err(|e| op_err(ev, "queue.purge(primary)", e))?;
                    Ok(u64::from(n.unwrap_or(0)))
                })
            })
            .await?;
        info!(primary = %q.primary, purged, "primary queue fenced");
        Ok(purged)
    }

    /// Routes new messages to the primary queue instead of the replay queue in one
    /// routing step, so that each message is in exactly one of them:
    ///
    /// 1. a fallback exchange `F` bound to the primary queue, and a cut exchange `M`
    ///    whose alternate exchange is `F`;
    /// 2. the replay queue moves behind `M` (`X → M → replay`; RabbitMQ delivers a
    ///    message once per queue however many paths lead there);
    /// 3. **the cut**: unbind the replay queue from `M`. `M` now routes nowhere, so the
    ///    broker hands every message to `F`: the primary queue;
    /// 4. bind the primary queue to `X` directly (one copy: routes are deduplicated),
    ///    then remove `M` and `F`.
    ///
    /// Re-entrant: the current bindings (management API, not statistics) say whether an
    /// interrupted attempt got past the cut, so a repeat never feeds the replay queue
    /// again once it was cut off.
    pub async fn cut_over(&self, q: &QueueNames) -> Result<()> {
        let cut = format!("{}.ms2m-cut", q.exchange);
        let fallback = format!("{}.ms2m-fallback", q.exchange);
        let from_x = self.management.bindings_from(&q.exchange).await?;
        if !from_x.iter().any(|b| b.is_queue(&q.primary)) {
            let from_cut = self.management.bindings_from(&cut).await?;
            let replay_fed = from_x.iter().any(|b| b.is_queue(&q.replay))
                || from_cut.iter().any(|b| b.is_queue(&q.replay));
            if replay_fed {
                self.run("cut_over", |l| {
                    let (q, cut, fallback) = (q.clone(), cut.clone(), fallback.clone());
                    Box::pin(async move { cut_replay(l, &q, &cut, &fallback).await })
                })
                .await?;
                info!(replay = %q.replay, "replay queue cut off; new messages go to the primary queue");
            }
            self.run("cut_over(bind primary)", |l| {
                let q = q.clone();
                Box::pin(async move {
                    let ev = &mut l.events;
                    l.channel
                        .queue_bind(QueueBindArguments::new(
                            &q.primary,
                            &q.exchange,
                            &q.routing_key,
                        ))
                        .await
                        .map_err(|e| op_err(ev, "queue.bind(primary)", e))
                })
            })
            .await?;
        }
        for name in [cut, fallback] {
            self.run("cut_over(cleanup)", |l| {
                let name = name.clone();
                Box::pin(async move {
                    let ev = &mut l.events;
                    match l
                        .channel
                        .exchange_delete(ExchangeDeleteArguments::new(&name))
                        .await
                        .map_err(|e| op_err(ev, "exchange.delete", e))
                    {
                        Err(MessagingError::Refused { code: 404, .. }) | Ok(()) => Ok(()),
                        Err(e) => Err(e),
                    }
                })
            })
            .await?;
        }
        info!(primary = %q.primary, "primary queue bound again");
        Ok(())
    }

    /// Deletes the replay queue (and with it its binding); a missing queue is fine.
    pub async fn delete_replay(&self, q: &QueueNames) -> Result<()> {
        self.run("delete_replay", |l| {
            let q = q.clone();
            Box::pin(async move {
                let ev = &mut l.events;
                l.channel
                    .queue_delete(QueueDeleteArguments::new(&q.replay))
                    .await
                    .map_err(|e| op_err(ev, "queue.delete(replay)", e))?;
                Ok(())
            })
        })
        .await?;
        info!(replay = %q.replay, "replay queue deleted");
        Ok(())
    }

    /// Publishes a control message to `ms2m.control.<target>` and waits for the broker's
    /// confirm. The control queue is declared first (durable, as the reference consumer
    /// declares it), so a message sent before the target's consumer is up waits for it.
    pub async fn send_control(&self, control_queue: &str, msg: &ControlMessage) -> Result<()> {
        let body = serde_json::to_vec(msg).expect("control messages serialize");
        let message_id = format!("{}/{}", self.message_id_prefix, msg.step_name());
        self.run("send_control", |l| {
            let body = body.clone();
            let message_id = message_id.clone();
            let control_queue = control_queue.to_owned();
            Box::pin(async move {
                l.channel
                    .queue_declare(QueueDeclareArguments::durable_client_named(&control_queue))
                    .await
                    .map_err(|e| op_err(&mut l.events, "queue.declare(control)", e))?;
                let mut props = BasicProperties::default();
                props
                    .with_content_type("application/json")
                    .with_persistence(true)
                    .with_message_id(&message_id);
                let mut args = BasicPublishArguments::new("", &control_queue);
                args.mandatory = true;
                let tag = l.next_tag;
                l.channel
                    .basic_publish(props, body, args)
                    .await
                    .map_err(|e| op_err(&mut l.events, "basic.publish", e))?;
                l.next_tag += 1;
                await_confirm(l, tag, &control_queue).await
            })
        })
        .await?;
        info!(
            queue = control_queue,
            message = msg.step_name(),
            "control message confirmed"
        );
        Ok(())
    }
}

/// Steps 1-3 of [`Messaging::cut_over`] on one channel; each is idempotent up to the
/// cut, and the caller runs them only while the replay queue is still fed.
async fn cut_replay(l: &mut Link, q: &QueueNames, cut: &str, fallback: &str) -> Result<()> {
    let (ch, ev) = (&l.channel, &mut l.events);
    let mut f = ExchangeDeclareArguments::of_type(fallback, ExchangeType::Fanout);
    f.durable(true);
    ch.exchange_declare(f)
        .await
        .map_err(|e| op_err(ev, "exchange.declare(fallback)", e))?;
    ch.queue_bind(QueueBindArguments::new(&q.primary, fallback, ""))
        .await
        .map_err(|e| op_err(ev, "queue.bind(primary, fallback)", e))?;
    let mut m = ExchangeDeclareArguments::of_type(cut, ExchangeType::Fanout);
    m.durable(true);
    let mut args = FieldTable::new();
    args.insert(
        "alternate-exchange".try_into().expect("a short field name"),
        FieldValue::from(fallback),
    );
    m.arguments = args;
    ch.exchange_declare(m)
        .await
        .map_err(|e| op_err(ev, "exchange.declare(cut)", e))?;
    ch.queue_bind(QueueBindArguments::new(&q.replay, cut, ""))
        .await
        .map_err(|e| op_err(ev, "queue.bind(replay, cut)", e))?;
    ch.exchange_bind(ExchangeBindArguments::new(cut, &q.exchange, &q.routing_key))
        .await
        .map_err(|e| op_err(ev, "exchange.bind(cut)", e))?;
    ch.queue_unbind(QueueUnbindArguments::new(
        &q.replay,
        &q.exchange,
        &q.routing_key,
    ))
    .await
    .map_err(|e| op_err(ev, "queue.unbind(replay)", e))?;
    // The cut: from this routing decision on, the cut exchange matches nothing and its
    // alternate exchange takes the message to the primary queue.
    ch.queue_unbind(QueueUnbindArguments::new(&q.replay, cut, ""))
        .await
        .map_err(|e| op_err(ev, "queue.unbind(replay, cut)", e))?;
    Ok(())
}

/// Parses `amqp://user:pass@host:port/vhost` (RFC 3986 percent-encoding, as the AMQP URI
/// spec says: `%2f` is the default vhost `/`). amqprs's own parser leaves the vhost
/// encoded, which the broker refuses.
pub fn connection_args(url: &str) -> Result<OpenConnectionArguments> {
    let u = parse_url(url)?;
    let mut args = OpenConnectionArguments::new(&u.host, u.port, &u.user, &u.password);
    args.virtual_host(&u.vhost);
    Ok(args)
}

/// The parts of an AMQP URL, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// `amqps://`.
    pub tls: bool,
}

pub fn parse_url(url: &str) -> Result<AmqpUrl> {
    let bad = |m: &str| MessagingError::Url(format!("{m} in {}", redact(url)));
    let (rest, tls) = match (url.strip_prefix("amqp://"), url.strip_prefix("amqps://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(bad("scheme must be amqp:// or amqps://")),
    };
    let (authority, vhost) = match rest.split_once('/') {
        Some((a, v)) => (a, Some(v)),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, pass) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (
                decode(u).ok_or_else(|| bad("bad user"))?,
                decode(p).ok_or_else(|| bad("bad password"))?,
            ),
            None => (decode(u).ok_or_else(|| bad("bad user"))?, String::new()),
        },
        None => ("guest".to_owned(), "guest".to_owned()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
        None => (hostport, if tls { 5671 } else { 5672 }),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let vhost = match vhost {
        None | Some("") => "/".to_owned(),
        Some(v) => decode(v).ok_or_else(|| bad("bad vhost"))?,
    };
    Ok(AmqpUrl {
        host: host.to_owned(),
        port,
        user,
        password: pass,
        vhost,
        tls,
    })
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = url[s + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***@{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

async fn open_channel(
    connection: &Connection,
) -> Result<(Channel, mpsc::UnboundedReceiver<ChannelEvent>)> {
    let channel = connection
        .open_channel(None)
        .await
        .map_err(|e| MessagingError::Connect(e.to_string()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    channel
        .register_callback(Forwarder(tx))
        .await
        .map_err(|e| MessagingError::Connect(e.to_string()))?;
    channel
        .confirm_select(ConfirmSelectArguments::default())
        .await
        .map_err(|e| MessagingError::Connect(e.to_string()))?;
    Ok((channel, rx))
}

/// Turns an amqprs error into ours, preferring the broker's close reason when the
/// channel was closed by a refusal (404 no such queue, 406 precondition failed, ...).
fn op_err(
    events: &mut mpsc::UnboundedReceiver<ChannelEvent>,
    op: &'static str,
    e: amqprs::error::Error,
) -> MessagingError {
    while let Ok(ev) = events.try_recv() {
        if let ChannelEvent::Closed { code, text } = ev {
            return MessagingError::Refused { op, code, text };
        }
    }
    MessagingError::Operation {
        op,
        message: e.to_string(),
    }
}

async fn await_confirm(l: &mut Link, tag: u64, queue: &str) -> Result<()> {
    let mut returned: Option<String> = None;
    loop {
        let Some(ev) = l.events.recv().await else {
            return Err(MessagingError::NotConfirmed(queue.to_owned()));
        };
        match ev {
            // A mandatory message that can't be routed comes back before its ack.
            ChannelEvent::Returned { code, text } => returned = Some(format!("{code} {text}")),
            ChannelEvent::Ack { tag: t, multiple } if t == tag || (multiple && t >= tag) => {
                return match returned {
                    Some(text) => Err(MessagingError::Unroutable {
                        queue: queue.to_owned(),
                        text,
                    }),
                    None => Ok(()),
                };
            }
            ChannelEvent::Nack { tag: t, multiple } if t == tag || (multiple && t >= tag) => {
                return Err(MessagingError::NotConfirmed(queue.to_owned()));
            }
            ChannelEvent::Closed { code, text } => {
                return Err(MessagingError::Refused {
                    op: "basic.publish",
                    code,
                    text,
                });
            }
            other => debug!(?other, "confirm for an earlier publish"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_match_the_reference_wire_format() {
        let start =
            serde_json::to_value(ControlMessage::start_replay("orders.ms2m-replay")).unwrap();
        assert_eq!(
            start,
            serde_json::json!({"type": "START_REPLAY", "payload": {"queue": "orders.ms2m-replay"}})
        );
        let end = serde_json::to_string(&ControlMessage::EndReplay).unwrap();
        assert_eq!(end, r#"{"type":"END_REPLAY"}"#);
        let parsed: ControlMessage =
            serde_json::from_str(r#"{"type":"START_REPLAY","payload":{"queue":"q"}}"#).unwrap();
        assert_eq!(parsed, ControlMessage::start_replay("q"));
    }

    #[test]
    fn urls_are_percent_decoded() {
        let a = parse_url("amqp://gu%40st:p%3Ass@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            a,
            AmqpUrl {
                host: "127.0.0.1".into(),
                port: 5673,
                user: "gu@st".into(),
                password: "p:ss".into(),
                vhost: "/".into(),
                tls: false,
            }
        );
        assert_eq!(parse_url("amqp://h").unwrap().port, 5672);
        let s = parse_url("amqps://u:p@rabbit.svc/%2f").unwrap();
        assert!(s.tls);
        assert_eq!(s.port, 5671, "the AMQPS default port");
        assert!(connection_args("amqp://h/prod").is_ok());
        assert!(connection_args("http://h").is_err());
        assert!(connection_args("amqp://u:p@h:notaport/").is_err());
        assert_eq!(redact("amqp://u:secret@h:1/%2f"), "amqp://u:***@h:1/%2f");
    }

    #[test]
    fn bad_urls_are_refused_up_front() {
        assert!(matches!(
            Messaging::new("not a url", "m"),
            Err(MessagingError::Url(_))
        ));
    }
}
