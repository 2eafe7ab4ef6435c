//! The consumer loop on JetStream; the AMQP loop's rules ([`crate::consumer`]) on
//! durable consumers instead of queues.
//!
//! - A fresh (never restored) consumer creates the stream and the primary consumer if
//!   missing. A restored one never creates the primary consumer: the shim deletes it
//!   (the fence) and creates it again at the cut, and a consumer that made it first
//!   would start it at the wrong sequence. After `END_REPLAY` it binds it by name and
//!   retries until it exists.
//! - Each delivery is applied, then acknowledged. A delivery being worked on when the
//!   process was checkpointed is neither applied nor acknowledged by the restored copy:
//!   the replay consumer starts at the source's acknowledgement floor, so it delivers
//!   that message again, and so does everything the copy held in memory.
//! - After a restore the old client, its subscriptions and everything they buffered
//!   are leaked, never used or dropped (dropping a subscription sends UNSUB; the
//!   client's reconnect loop is stopped, see [`super`]). Then a new connection consumes
//!   only the control subject until `START_REPLAY` names the replay consumer.
//! - On `END_REPLAY` the replay subscription goes at once, after the acknowledgement of
//!   the last applied message on the same connection: the shim cuts at the replay
//!   consumer's acknowledgement floor, so what was received but not applied comes
//!   again from the primary consumer.

use std::{sync::MutexGuard, time::Duration};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::{
    control_stream_config, data_stream_config, deliver_subject, err, jetstream_name, stream_of,
};
use crate::{
    Result,
    consumer::{ConsumerConfig, SharedState},
    message::{ControlMessage, DataMessage, control_queue},
    restore::RestoreWatch,
    state::{Mode, ServiceState},
};

fn lock(state: &SharedState) -> MutexGuard<'_, ServiceState> {
    // A panic while holding the lock leaves plain counters behind: still readable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

enum SessionEnd {
    Lost,
    Restored,
}

struct Session {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    control: consumer::pull::Stream,
    data: Option<consumer::push::Messages>,
}

impl Session {
    async fn open(cfg: &ConsumerConfig, pod: &str, fresh: bool) -> Result<Self> {
        let (client, js) = super::connect(&cfg.amqp_url, pod).await?;
        let (stream, subject) = stream_of(&cfg.exchange);
        if fresh {
            let s = js
                .get_or_create_stream(data_stream_config(&cfg.exchange))
                .await
                .map_err(|e| err("stream", e))?;
            s.get_or_create_consumer(
                &cfg.queue,
                consumer::push::Config {
                    durable_name: Some(cfg.queue.clone()),
                    deliver_subject: deliver_subject(&cfg.queue),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: i64::from(cfg.prefetch),
                    filter_subject: subject,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| err("primary consumer", e))?;
        }
        let cs = js
            .get_or_create_stream(control_stream_config())
            .await
            .map_err(|e| err("control stream", e))?;
        let subject = control_queue(pod);
        let name = jetstream_name(&subject);
        let control = cs
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subject,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| err("control consumer", e))?
            .messages()
            .await
            .map_err(|e| err("control subscription", e))?;
        Ok(Self {
            client,
            js,
            stream,
            control,
            data: None,
        })
    }

    /// Binds the durable push consumer `name` (never creates it).
    async fn consume(&mut self, name: &str) -> Result<()> {
        // Unsubscribing leaves unacknowledged deliveries pending in the consumer.
        self.data = None;
        let s = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| err("stream", e))?;
        let c = s
            .get_consumer::<consumer::push::Config>(name)
            .await
            .map_err(|e| err("consumer", e))?;
        self.data = Some(c.messages().await.map_err(|e| err("subscribe", e))?);
        Ok(())
    }

    /// Leaks the checkpointed client and subscriptions: see the module docs.
    fn abandon(self) {
        std::mem::forget(self);
    }

    async fn close(self) {
        let Session {
            client,
            data,
            control,
            ..
        } = self;
        drop(data);
        drop(control);
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    }
}

/// Runs the consumer until the process is stopped.
pub async fn run(cfg: ConsumerConfig, state: SharedState) -> Result<()> {
    let mut watch = RestoreWatch::new();
    let mut backoff = Duration::from_millis(250);
    loop {
        if watch.check() {
            on_restore(&cfg, &state)?;
        }
        let (pod, fresh) = {
            let s = lock(&state);
            (s.pod.clone(), s.restores == 0 && s.mode == Mode::Primary)
        };
        let mut session = match Session::open(&cfg, &pod, fresh).await {
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
        info!(pod = %pod, mode = ?lock(&state).mode, "connected (NATS)");

        let end = serve(&cfg, &state, &mut watch, &mut session).await;
        if matches!(end, SessionEnd::Restored) || watch.check() {
            session.abandon();
            on_restore(&cfg, &state)?;
        } else {
            session.close().await;
        }
        if !cfg.reconnect_delay.is_zero() {
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

/// Binds `name`; the primary consumer is retried until it exists (it is absent
/// between the shim's fence and its cut), the replay consumer is not.
async fn bind(
    cfg: &ConsumerConfig,
    state: &SharedState,
    watch: &mut RestoreWatch,
    session: &mut Session,
    name: &str,
) -> std::result::Result<(), SessionEnd> {
    let mut logged = false;
    loop {
        if watch.check() {
            return Err(SessionEnd::Restored);
        }
        match session.consume(name).await {
            Ok(()) => return Ok(()),
            Err(e) if name == cfg.queue => {
                if !logged {
                    info!(consumer = name, error = %e, "primary consumer not there yet, retrying");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                warn!(consumer = name, error = %e, "cannot consume");
                // The replay consumer is gone: the next control message says what to do.
                lock(state).mode = Mode::AwaitingReplay;
                return Err(SessionEnd::Lost);
            }
        }
    }
}

async fn serve(
    cfg: &ConsumerConfig,
    state: &SharedState,
    watch: &mut RestoreWatch,
    session: &mut Session,
) -> SessionEnd {
    let start = match lock(state).mode.clone() {
        Mode::Primary => Some(cfg.queue.clone()),
        Mode::Replaying(q) => Some(q),
        Mode::AwaitingReplay => None,
    };
    if let Some(name) = start
        && let Err(end) = bind(cfg, state, watch, session, &name).await
    {
        return end;
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
            m = session.control.next() => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Missed heartbeats and the like: the stream goes on.
                        debug!(error = %e, "control subscription");
                        continue;
                    }
                    None => return SessionEnd::Lost,
                };
                if watch.check() {
                    return SessionEnd::Restored;
                }
                if let Err(end) = handle_control(cfg, state, watch, session, m).await {
                    return end;
                }
            }
            m = next_data(&mut session.data) => {
                match m {
                    Some(Ok(m)) => {
                        if let Err(end) = process(cfg, state, watch, m).await {
                            return end;
                        }
                    }
                    Some(Err(e)) => debug!(error = %e, "data subscription"),
                    None => {
                        warn!("data subscription ended");
                        return SessionEnd::Lost;
                    }
                }
            }
        }
    }
}

async fn next_data(
    data: &mut Option<consumer::push::Messages>,
) -> Option<std::result::Result<jetstream::Message, consumer::push::MessagesError>> {
    match data {
        Some(d) => d.next().await,
        None => std::future::pending().await,
    }
}

/// Works on one delivery, applies it, acknowledges it.
async fn process(
    cfg: &ConsumerConfig,
    state: &SharedState,
    watch: &mut RestoreWatch,
    m: jetstream::Message,
) -> std::result::Result<(), SessionEnd> {
    tokio::time::sleep(cfg.delay).await;
    // Checked after the work, before the apply: a restored copy leaves this message to
    // the replay consumer, which starts at or before it.
    if watch.check() {
        return Err(SessionEnd::Restored);
    }
    match DataMessage::parse(&m.payload) {
        Ok(msg) => {
            let outcome = lock(state).apply(msg);
            debug!(seq = msg.seq, ?outcome, "message");
        }
        // Acknowledged anyway: a message that can never parse must not loop forever.
        Err(e) => warn!(error = %e, "dropping unparsable message"),
    }
    if let Err(e) = m.ack().await {
        warn!(error = %e, "ack failed");
        return Err(SessionEnd::Lost);
    }
    Ok(())
}

async fn handle_control(
    cfg: &ConsumerConfig,
    state: &SharedState,
    watch: &mut RestoreWatch,
    session: &mut Session,
    m: jetstream::Message,
) -> std::result::Result<(), SessionEnd> {
    // Acknowledged before acting: the action is idempotent and the shim sends again on
    // failure, while a poison control message must not block the subject.
    if let Err(e) = m.ack().await {
        warn!(error = %e, "control ack failed");
        return Err(SessionEnd::Lost);
    }
    let (name, mode) = match ControlMessage::parse(&m.payload) {
        Ok(ControlMessage::StartReplay { queue }) => (queue.clone(), Mode::Replaying(queue)),
        Ok(ControlMessage::EndReplay) => (cfg.queue.clone(), Mode::Primary),
        Err(e) => {
            warn!(error = %e, body = %String::from_utf8_lossy(&m.payload), "ignoring control message");
            return Ok(());
        }
    };
    info!(?mode, "control: switching consumer");
    // Leave the current consumer first: after END_REPLAY the shim waits for the replay
    // consumer to be unbound before it makes the primary one again.
    session.data = None;
    lock(state).mode = mode;
    bind(cfg, state, watch, session, &name).await
}
