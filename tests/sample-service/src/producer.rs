//! The reference producer: `{seq, value}` at a fixed rate to the fanout exchange,
//! with publisher confirms, so "produced" means "the broker has it".

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, Nack, Return,
    callbacks::ChannelCallback,
    channel::{Channel, ConfirmSelectArguments},
};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::info;

use crate::{Error, Result, amqp, message::DataMessage};

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub amqp_url: String,
    pub exchange: String,
    /// Also declare this primary queue and bind it, so nothing is dropped when the
    /// producer starts before any consumer.
    pub queue: Option<String>,
    pub rate: f64,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub start_seq: u64,
    pub confirm_timeout: Duration,
    /// Bursty load instead of a steady rate: this many messages back to back, then
    /// `pause` (the "10 then 1 s"); `rate` is ignored.
    pub burst: Option<(u64, Duration)>,
    /// Where to write `[[seq, unix_ms], …]` of every publish when done: the accounting
    /// measures each message's delay from its publish, outside the consumer.
    pub publish_log: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub produced: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Sum of the values of all produced messages: the consumer's expected `sum`.
    pub sum: i64,
    pub elapsed_ms: u64,
    pub rate: f64,
}

enum Confirm {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
}

struct ConfirmForwarder(mpsc::UnboundedSender<Confirm>);

#[async_trait::async_trait]
impl ChannelCallback for ConfirmForwarder {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        tracing::warn!(%close, "channel closed by broker");
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
        _: bool,
    ) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(true)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self.0.send(Confirm::Ack {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let _ = self.0.send(Confirm::Nack {
            tag: nack.delivery_tag(),
            multiple: nack.multiple(),
        });
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// Outstanding publish tags and what the broker said about them.
#[derive(Default)]
struct Confirms {
    outstanding: BTreeSet<u64>,
    acked: u64,
    nacked: u64,
}

impl Confirms {
    fn settle(&mut self, c: Confirm) {
        let (tag, multiple, ack) = match c {
            Confirm::Ack { tag, multiple } => (tag, multiple, true),
            Confirm::Nack { tag, multiple } => (tag, multiple, false),
        };
        let settled: Vec<u64> = if multiple {
            self.outstanding.range(..=tag).copied().collect()
        } else {
            self.outstanding.get(&tag).copied().into_iter().collect()
        };
        for t in settled {
            self.outstanding.remove(&t);
            if ack {
                self.acked += 1;
            } else {
                self.nacked += 1;
            }
        }
    }
}

/// Publishes until `count` messages, `duration` or `stop` resolves, whichever first,
/// then waits for every confirm.
pub async fn run(
    cfg: ProducerConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary> {
    let connection = amqp::connect(&cfg.amqp_url, "ms2m-sample-producer").await?;
    let channel = connection.open_channel(None).await?;
    match &cfg.queue {
        Some(q) => amqp::declare_topology(&channel, &cfg.exchange, q).await?,
        None => {
            channel
                .exchange_declare(
                    amqprs::channel::ExchangeDeclareArguments::new(&cfg.exchange, "fanout")
                        .durable(true)
                        .finish(),
                )
                .await?
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    channel.register_callback(ConfirmForwarder(tx)).await?;
    channel
        .confirm_select(ConfirmSelectArguments::default())
        .await?;

    let routing_key = cfg.queue.clone().unwrap_or_default();
    let interval = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let mut confirms = Confirms::default();
    let mut produced = 0u64;
    let mut sum = 0i64;
    let mut published: Vec<(u64, u64)> = Vec::new();
    tokio::pin!(stop);
    loop {
        if cfg.count.is_some_and(|n| produced >= n) || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        let seq = cfg.start_seq + produced;
        let msg = DataMessage::for_seq(seq);
        let at = crate::state::unix_ms();
        amqp::publish_json(&channel, &cfg.exchange, &routing_key, msg.to_json()).await?;
        published.push((seq, at));
        produced += 1;
        sum += msg.value;
        confirms.outstanding.insert(produced);
        while let Ok(c) = rx.try_recv() {
            confirms.settle(c);
        }
        // Paced against the start time, so a slow publish does not lower the rate.
        let next = match cfg.burst {
            Some((n, _)) if !produced.is_multiple_of(n.max(1)) => continue,
            Some((n, pause)) => started + pause.mul_f64((produced / n.max(1)) as f64),
            None => started + interval.mul_f64(produced as f64),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = &mut stop => break,
        }
    }
    let waited = tokio::time::timeout(cfg.confirm_timeout, async {
        while !confirms.outstanding.is_empty() {
            match rx.recv().await {
                Some(c) => confirms.settle(c),
                None => break,
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    let _ = connection.close().await;
    if let Some(path) = &cfg.publish_log {
        std::fs::write(path, serde_json::to_vec(&published)?)
            .map_err(|e| Error::Confirm(format!("publish log {}: {e}", path.display())))?;
    }
    if waited.is_err() || !confirms.outstanding.is_empty() {
        return Err(Error::Confirm(format!(
            "{} of {produced} publishes unconfirmed after {:?}",
            confirms.outstanding.len(),
            cfg.confirm_timeout
        )));
    }
    let summary = Summary {
        produced,
        confirmed: confirms.acked,
        nacked: confirms.nacked,
        first_seq: cfg.start_seq,
        last_seq: cfg.start_seq + produced.saturating_sub(1),
        sum,
        elapsed_ms: elapsed.as_millis() as u64,
        rate: produced as f64 / elapsed.as_secs_f64().max(1e-9),
    };
    info!(?summary, "producer done");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_settle_single_and_multiple() {
        let mut c = Confirms::default();
        c.outstanding.extend(1..=5);
        c.settle(Confirm::Ack {
            tag: 2,
            multiple: false,
        });
        c.settle(Confirm::Ack {
            tag: 3,
            multiple: true,
        });
        c.settle(Confirm::Nack {
            tag: 5,
            multiple: false,
        });
        assert_eq!((c.acked, c.nacked), (3, 1));
        assert_eq!(c.outstanding.iter().copied().collect::<Vec<_>>(), vec![4]);
    }
}
