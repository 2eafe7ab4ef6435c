//! What the MS2M controller does on the broker, as a small tool: prepare the replay
//! queue, send `START_REPLAY` / `END_REPLAY`, read depths, delete queues. Used by the
//! end-to-end tests to drive a migration by hand and by service authors to exercise
//! their consumers.

use amqprs::channel::{
    Channel, ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments,
    QueueDeleteArguments,
};

use crate::{
    Result, amqp,
    message::{ControlMessage, control_queue, replay_queue},
};

/// Declares the fanout exchange (idempotent, as producers and consumers do) and
/// `<primary>.ms2m-replay` (durable), and binds them: from now on every published
/// message also lands in the replay queue.
pub async fn prepare_replay(ch: &Channel, exchange: &str, primary: &str) -> Result<String> {
    ch.exchange_declare(
        ExchangeDeclareArguments::new(exchange, "fanout")
            .durable(true)
            .finish(),
    )
    .await?;
    let q = replay_queue(primary);
    amqp::declare_durable_queue(ch, &q).await?;
    ch.queue_bind(QueueBindArguments::new(&q, exchange, ""))
        .await?;
    Ok(q)
}

/// Publishes a control message to `ms2m.control.<pod>` through the default exchange,
/// declaring the queue first so a consumer that is not connected yet still gets it.
pub async fn send(ch: &Channel, pod: &str, msg: &ControlMessage) -> Result<()> {
    let q = control_queue(pod);
    amqp::declare_durable_queue(ch, &q).await?;
    amqp::publish_json(ch, "", &q, msg.to_json()).await
}

pub async fn delete_queue(ch: &Channel, queue: &str) -> Result<()> {
    ch.queue_delete(QueueDeleteArguments::new(queue)).await?;
    Ok(())
}

pub async fn delete_exchange(ch: &Channel, exchange: &str) -> Result<()> {
    ch.exchange_delete(ExchangeDeleteArguments::new(exchange))
        .await?;
    Ok(())
}
