//! The reference producer on JetStream: `{seq, value}` at a fixed rate on the
//! exchange's subject, each publish acknowledged by the server ("produced" means "the
//! stream has it"). A publish whose acknowledgement did not come is sent again under
//! the same `Nats-Msg-Id` (its sequence number), which the server deduplicates.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{data_stream_config, err, stream_of};
use crate::{
    Error, Result,
    message::DataMessage,
    producer::{ProducerConfig, Summary},
};

/// Publishes until `count` messages, `duration` or `stop` resolves, whichever first.
/// `cfg.queue` is not used: the stream keeps every message for a consumer made later.
pub async fn run(
    cfg: ProducerConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary> {
    let (client, js) = super::connect(&cfg.amqp_url, "ms2m-sample-producer").await?;
    js.get_or_create_stream(data_stream_config(&cfg.exchange))
        .await
        .map_err(|e| err("stream", e))?;
    let (_, subject) = stream_of(&cfg.exchange);
    let interval = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let (mut produced, mut confirmed, mut sum) = (0u64, 0u64, 0i64);
    // `(seq, unix ms)` of every first publish, for the accounting outside the consumer.
    let mut published: Vec<(u64, u64)> = Vec::new();
    tokio::pin!(stop);
    loop {
        if cfg.count.is_some_and(|n| produced >= n) || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        let seq = cfg.start_seq + produced;
        let msg = DataMessage::for_seq(seq);
        produced += 1;
        sum += msg.value;
        published.push((seq, crate::state::unix_ms()));
        let give_up = Instant::now() + cfg.confirm_timeout;
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", seq.to_string().as_str());
            let stored = match js
                .publish_with_headers(subject.clone(), headers, msg.to_json().into())
                .await
            {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match stored {
                Ok(()) => {
                    confirmed += 1;
                    break;
                }
                Err(e) if Instant::now() < give_up => {
                    warn!(seq, error = %e, "publish not acknowledged, sending again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(Error::Confirm(format!(
                        "seq {seq} unacknowledged after {:?}: {e}",
                        cfg.confirm_timeout
                    )));
                }
            }
        }
        // Paced against the start time, so a slow publish does not lower the rate.
        let next = started + interval.mul_f64(produced as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = &mut stop => break,
        }
    }
    let elapsed = started.elapsed();
    let _ = client.flush().await;
    if let Some(path) = &cfg.publish_log {
        std::fs::write(path, serde_json::to_vec(&published)?)
            .map_err(|e| Error::Confirm(format!("publish log {}: {e}", path.display())))?;
    }
    let summary = Summary {
        produced,
        confirmed,
        nacked: 0,
        first_seq: cfg.start_seq,
        last_seq: cfg.start_seq + produced.saturating_sub(1),
        sum,
        elapsed_ms: elapsed.as_millis() as u64,
        rate: produced as f64 / elapsed.as_secs_f64().max(1e-9),
    };
    info!(?summary, "producer done");
    Ok(summary)
}
