//! The consumer loop: primary queue, control queue, replay, and restore handling.
//!
//! One AMQP connection per "session". The control queue `ms2m.control.<pod>` is always
//! consumed; the data queue (primary or replay) on its own channel with a small
//! prefetch, so switching queues closes that channel and the broker requeues whatever
//! was prefetched. Every message is applied, then acked: a crash between the two
//! causes a redelivery, which the sequence-number rule turns into a skipped duplicate.
//!
//! After a checkpoint restore (see [`crate::restore`]) the session that came with the
//! checkpoint is abandoned without a single byte written to it — no ack, no close —
//! because with `--tcp-established` and ShadowPod it may be the very connection the
//! still-running source uses. Deliveries already in memory are applied without ack
//! (they were received before the checkpoint, the source acks them). The consumer
//! then re-reads its pod name, connects anew and consumes only its control queue until
//! `START_REPLAY` arrives.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use amqprs::{
    channel::{
        BasicAckArguments, BasicConsumeArguments, BasicQosArguments, Channel, ConsumerMessage,
    },
    connection::Connection,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info, warn};

use crate::{
    Error, Result, amqp,
    message::{ControlMessage, DataMessage, control_queue},
    restore::RestoreWatch,
    state::{Mode, Outcome, ServiceState},
};

/// State shared with the HTTP endpoint.
pub type SharedState = Arc<Mutex<ServiceState>>;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub delay: Duration,
    pub prefetch: u16,
    /// Fixed pod name. Environment and flags are frozen into a checkpoint, so a
    /// migrating consumer should leave this unset and read `hostname_file`.
    pub pod_name: Option<String>,
    pub hostname_file: PathBuf,
    pub restore_check: Duration,
    /// Skip already-applied sequence numbers. Off, the consumer behaves like a typical
    /// third-party one: every delivery is applied, and deliveries it held in memory when
    /// it was checkpointed are dropped after a restore (as client libraries do when
    /// their connection dies), never applied.
    pub dedup: bool,
    /// Sleep before reconnecting after the connection was lost (a typical consumer
    /// sleeps seconds).
    pub reconnect_delay: Duration,
}

impl ConsumerConfig {
    pub fn pod_name(&self) -> Result<String> {
        if let Some(name) = &self.pod_name {
            return Ok(name.clone());
        }
        let raw =
            std::fs::read_to_string(&self.hostname_file).map_err(|source| Error::PodName {
                path: self.hostname_file.display().to_string(),
                source,
            })?;
        let name = raw.trim();
        if name.is_empty() {
            return Err(Error::PodName {
                path: self.hostname_file.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "empty"),
            });
        }
        Ok(name.to_owned())
    }
}

fn lock(state: &SharedState) -> MutexGuard<'_, ServiceState> {
    // A panic while holding the lock leaves plain counters behind: still readable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

enum SessionEnd {
    /// Broker connection or a channel went away: reconnect in the same mode.
    Lost,
    /// This process was restored from a checkpoint.
    Restored,
}

struct DataConsumer {
    channel: Channel,
    rx: UnboundedReceiver<ConsumerMessage>,
}

struct Session {
    connection: Connection,
    control_channel: Channel,
    control_rx: UnboundedReceiver<ConsumerMessage>,
    data: Option<DataConsumer>,
}

impl Session {
    async fn open(cfg: &ConsumerConfig, pod: &str) -> Result<Self> {
        let connection = amqp::connect(&cfg.amqp_url, pod).await?;
        let control_channel = connection.open_channel(None).await?;
        amqp::declare_topology(&control_channel, &cfg.exchange, &cfg.queue).await?;
        let cq = control_queue(pod);
        amqp::declare_durable_queue(&control_channel, &cq).await?;
        let (_, control_rx) = control_channel
            .basic_consume_rx(
                BasicConsumeArguments::new(&cq, "ms2m-control")
                    .manual_ack(true)
                    .finish(),
            )
            .await?;
        Ok(Self {
            connection,
            control_channel,
            control_rx,
            data: None,
        })
    }

    async fn consume(&mut self, queue: &str, prefetch: u16) -> Result<()> {
        self.stop_data().await;
        let channel = self.connection.open_channel(None).await?;
        channel
            .basic_qos(BasicQosArguments::new(0, prefetch, false))
            .await?;
        let (_, rx) = channel
            .basic_consume_rx(
                BasicConsumeArguments::new(queue, "ms2m-data")
                    .manual_ack(true)
                    .finish(),
            )
            .await?;
        self.data = Some(DataConsumer { channel, rx });
        Ok(())
    }

    async fn stop_data(&mut self) {
        if let Some(data) = self.data.take() {
            // Closing the channel hands prefetched, unacked messages back to the queue.
            if let Err(e) = data.channel.close().await {
                debug!(error = %e, "closing data channel");
            }
        }
    }

    /// Leaks the checkpointed connection: dropping it would send `Connection.Close`,
    /// possibly on the socket the source still uses.
    fn abandon(self) {
        let Session {
            connection,
            control_channel,
            data,
            ..
        } = self;
        std::mem::forget(connection);
        std::mem::forget(control_channel);
        if let Some(d) = data {
            std::mem::forget(d.channel);
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connection.close()).await;
    }
}

/// Runs the consumer until the process is stopped. Only returns on errors that
/// retrying cannot fix (an unreadable pod name).
pub async fn run(cfg: ConsumerConfig, state: SharedState) -> Result<()> {
    let mut watch = RestoreWatch::new();
    let mut backoff = Duration::from_millis(250);
    loop {
        if watch.check() {
            on_restore(&cfg, &state)?;
        }
        let pod = lock(&state).pod.clone();
        let mut session = match Session::open(&cfg, &pod).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "broker unavailable, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        lock(&state).connections += 1;
        info!(pod = %pod, mode = ?lock(&state).mode, "connected");

        let end = serve(&cfg, &state, &mut watch, &mut session).await;
        // A restored connection often dies (tcp-close, new pod IP) before the idle
        // check notices the restore: ask again before touching the connection.
        if matches!(end, SessionEnd::Restored) || watch.check() {
            if let Some(data) = session.data.as_mut() {
                while let Ok(m) = data.rx.try_recv() {
                    if cfg.dedup {
                        apply_delivery(&state, &m, true);
                    }
                }
            }
            session.abandon();
            on_restore(&cfg, &state)?;
        } else {
            session.close().await;
        }
        if !cfg.reconnect_delay.is_zero() {
            info!(
                delay_ms = cfg.reconnect_delay.as_millis() as u64,
                "reconnecting after a pause"
            );
            tokio::time::sleep(cfg.reconnect_delay).await;
        }
    }
}

fn on_restore(cfg: &ConsumerConfig, state: &SharedState) -> Result<()> {
    let pod = cfg.pod_name()?;
    let mut s = lock(state);
    s.restores += 1;
    s.mode = Mode::AwaitingReplay;
    info!(old_pod = %s.pod, new_pod = %pod, last_seq = s.last_seq, "restored from a checkpoint: waiting for START_REPLAY");
    s.pod = pod;
    Ok(())
}

async fn serve(
    cfg: &ConsumerConfig,
    state: &SharedState,
    watch: &mut RestoreWatch,
    session: &mut Session,
) -> SessionEnd {
    let mode = lock(state).mode.clone();
    let start = match &mode {
        Mode::Primary => Some(cfg.queue.clone()),
        Mode::Replaying(q) => Some(q.clone()),
        Mode::AwaitingReplay => None,
    };
    if let Some(queue) = start {
        if watch.check() {
            return SessionEnd::Restored;
        }
        if let Err(e) = session.consume(&queue, cfg.prefetch).await {
            warn!(queue = %queue, error = %e, "cannot consume");
            if matches!(mode, Mode::Replaying(_)) {
                // The replay queue is gone: the next control message says what to do.
                lock(state).mode = Mode::AwaitingReplay;
            }
            return SessionEnd::Lost;
        }
    }

    let mut tick = tokio::time::interval(cfg.restore_check);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                if watch.check() {
                    return SessionEnd::Restored;
                }
            }
            m = session.control_rx.recv() => {
                let Some(m) = m else { return SessionEnd::Lost };
                if watch.check() {
                    return SessionEnd::Restored;
                }
                if let Err(end) = handle_control(cfg, state, watch, session, &m).await {
                    return end;
                }
            }
            m = next_data(&mut session.data) => {
                let Some(m) = m else {
                    warn!("data consumer ended (queue deleted or channel closed)");
                    return SessionEnd::Lost;
                };
                if let Err(end) = process(cfg, state, watch, session, m).await {
                    return end;
                }
            }
        }
    }
}

/// Works on one delivery, applies it, acks it.
async fn process(
    cfg: &ConsumerConfig,
    state: &SharedState,
    watch: &mut RestoreWatch,
    session: &mut Session,
    m: ConsumerMessage,
) -> std::result::Result<(), SessionEnd> {
    tokio::time::sleep(cfg.delay).await;
    // Checked after the work, before the ack: a checkpoint taken while this message
    // was being processed must not ack it from the copy.
    let restored = watch.check();
    if !restored || cfg.dedup {
        apply_delivery(state, &m, restored);
    }
    if restored {
        return Err(SessionEnd::Restored);
    }
    let (Some(deliver), Some(data)) = (m.deliver, session.data.as_ref()) else {
        return Ok(());
    };
    if let Err(e) = data
        .channel
        .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
        .await
    {
        warn!(error = %e, "ack failed");
        return Err(SessionEnd::Lost);
    }
    Ok(())
}

/// Before leaving the replay queue, applies what it holds right now (plus what was
/// already prefetched). Closing the channel would hand those back to a queue the
/// controller deletes next, and the ones the source applied before it stopped are in
/// no other queue. Anything published later is in the primary queue as well.
///
/// The depth is read by a passive declare on the consuming channel. The broker may
/// answer a declare before a delivery it had already sent off, but not before one it
/// sent before the *previous* answer: depth 0 twice in a row with nothing in `rx`
/// means every delivery was worked off and nothing more can come (after the cut-over
/// nothing new enters the replay queue). Two round trips, no wait for stragglers, so
/// the primary queue is served again at once.
async fn drain_replay(
    cfg: &ConsumerConfig,
    state: &SharedState,
    watch: &mut RestoreWatch,
    session: &mut Session,
    queue: &str,
) -> std::result::Result<(), SessionEnd> {
    info!(queue, "END_REPLAY: finishing the replay queue");
    let mut empty_reads = 0;
    loop {
        let Some(data) = session.data.as_mut() else {
            return Ok(());
        };
        let ready = match amqp::queue_depth(&data.channel, queue).await {
            Ok(n) => n,
            Err(e) => {
                // A missing queue: only what is already here is left to finish.
                warn!(queue, error = %e, "replay queue depth unknown, draining what is prefetched");
                0
            }
        };
        let next = match data.rx.try_recv() {
            Ok(m) => {
                empty_reads = 0;
                Some(m)
            }
            Err(_) if ready == 0 && empty_reads >= 1 => return Ok(()),
            Err(_) if ready == 0 => {
                empty_reads += 1;
                continue;
            }
            Err(_) => tokio::time::timeout(Duration::from_secs(2), data.rx.recv())
                .await
                .ok()
                .flatten(),
        };
        let Some(m) = next else { return Ok(()) };
        process(cfg, state, watch, session, m).await?;
    }
}

async fn next_data(data: &mut Option<DataConsumer>) -> Option<ConsumerMessage> {
    match data {
        Some(d) => d.rx.recv().await,
        None => std::future::pending().await,
    }
}

fn apply_delivery(state: &SharedState, m: &ConsumerMessage, after_restore: bool) {
    let body = m.content.as_deref().unwrap_or_default();
    match DataMessage::parse(body) {
        Ok(msg) => {
            let mut s = lock(state);
            let outcome = s.apply(msg);
            if after_restore && outcome == Outcome::Applied {
                s.applied_unacked_after_restore += 1;
            }
            debug!(seq = msg.seq, ?outcome, "message");
        }
        // Acked anyway: a message that can never parse must not loop forever.
        Err(e) => warn!(error = %e, "dropping unparsable message"),
    }
}

async fn handle_control(
    cfg: &ConsumerConfig,
    state: &SharedState,
    watch: &mut RestoreWatch,
    session: &mut Session,
    m: &ConsumerMessage,
) -> std::result::Result<(), SessionEnd> {
    let body = m.content.as_deref().unwrap_or_default();
    let parsed = ControlMessage::parse(body);
    if let Some(deliver) = &m.deliver {
        // Acked before acting: the action is idempotent and re-sent by the shim on
        // failure, while a poison control message must not block the queue.
        if let Err(e) = session
            .control_channel
            .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
            .await
        {
            warn!(error = %e, "control ack failed");
            return Err(SessionEnd::Lost);
        }
    }
    let (queue, mode) = match parsed {
        Ok(ControlMessage::StartReplay { queue }) => (queue.clone(), Mode::Replaying(queue)),
        Ok(ControlMessage::EndReplay) => (cfg.queue.clone(), Mode::Primary),
        Err(e) => {
            warn!(error = %e, body = %String::from_utf8_lossy(body), "ignoring control message");
            return Ok(());
        }
    };
    if mode == Mode::Primary {
        let current = lock(state).mode.clone();
        if let Mode::Replaying(replay) = current {
            drain_replay(cfg, state, watch, session, &replay).await?;
        }
    }
    info!(?mode, "control: switching queue");
    lock(state).mode = mode;
    if let Err(e) = session.consume(&queue, cfg.prefetch).await {
        warn!(queue = %queue, error = %e, "cannot consume after control message");
        return Err(SessionEnd::Lost);
    }
    Ok(())
}
