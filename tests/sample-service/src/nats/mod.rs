//! The sample service on NATS JetStream, selected by a `nats://` broker URL (the same
//! `--amqp-url` / `MS2M_AMQP_URL` setting; the scheme picks the broker).
//!
//! Mapping (docs/migration-protocol.md, "NATS JetStream"): the exchange is the stream
//! (its name with every `.` made `_`) capturing the subject `<exchange>`; the primary
//! queue is the durable push consumer `<queue>` on it (explicit acks,
//! `max_ack_pending` = the prefetch), delivering to `deliver.<queue>`; the control
//! queue `ms2m.control.<pod>` is that subject in the stream `MS2M_CONTROL`, read through
//! the durable pull consumer `ms2m_control_<pod>`.
//!
//! The client's background task pings, flushes and reconnects by itself. After a CRIU
//! restore that task would reconnect and resubscribe on its own, in the target, to
//! whatever the source had subscribed (the primary consumer). Every client made here
//! therefore remembers the kernel task it was created in ([`TaskIdentity`]) and, from a
//! restored copy, never reconnects: its reconnect delay becomes a day. The consumer
//! notices the restore itself ([`crate::restore::RestoreWatch`]), leaks the old client
//! and its subscriptions without a byte written, and connects anew.

pub mod consumer;
pub mod producer;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::{Error, Result, restore::TaskIdentity};

/// Stream holding the control messages of every migration (the shim's name).
pub const CONTROL_STREAM: &str = "MS2M_CONTROL";
const CONTROL_SUBJECTS: &str = "ms2m.control.>";
/// How long a restored copy's client waits before a reconnect: forever, in practice.
const NEVER: Duration = Duration::from_secs(24 * 3600);

/// Whether `url` selects NATS JetStream.
pub fn is_nats_url(url: &str) -> bool {
    url.starts_with("nats://")
}

/// A JetStream name for a queue or exchange name: `.` is not allowed in one.
pub fn jetstream_name(name: &str) -> String {
    name.replace('.', "_")
}

/// Stream name and subject for an exchange name.
pub fn stream_of(exchange: &str) -> (String, String) {
    (jetstream_name(exchange), exchange.to_owned())
}

/// Delivery subject of the primary push consumer `queue`.
pub fn deliver_subject(queue: &str) -> String {
    format!("deliver.{queue}")
}

/// The control stream, as the shim creates it (shim/src/messaging/nats.rs): whoever
/// comes first creates it, so both must agree.
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

/// The data stream for `exchange` (file storage, so a server restart loses nothing).
pub fn data_stream_config(exchange: &str) -> stream::Config {
    let (name, subject) = stream_of(exchange);
    stream::Config {
        name,
        subjects: vec![subject],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

pub(crate) fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Nats(format!("{what}: {e}"))
}

/// Connects; the client's reconnect loop stops for good in a restored copy of this
/// process (see the module docs).
pub async fn connect(url: &str, name: &str) -> Result<(async_nats::Client, jetstream::Context)> {
    let born = TaskIdentity::current().ok();
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .name(name)
            .reconnect_delay_callback(move |attempts| {
                if born.is_some() && TaskIdentity::current().ok() != born {
                    return NEVER;
                }
                Duration::from_millis(100 * attempts.min(20) as u64)
            })
            .connect(url),
    )
    .await
    .map_err(|_| Error::Nats(format!("connect to {url}: timed out")))?
    .map_err(|e| err("connect", e))?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}
