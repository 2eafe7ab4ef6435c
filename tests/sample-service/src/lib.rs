//! Reference stateful queue consumer and producer for MS2M.
//!
//! The consumer applies `{"seq", "value"}` messages to an in-memory state exactly
//! once (it skips any `seq` it has already applied), serves that state over HTTP and
//! speaks the MS2M control protocol, wire-compatible with the paper authors' Go
//! implementation (see `docs/sample-service.md`). The producer publishes a
//! deterministic stream so that a test can compute the expected final state from the
//! number of messages produced alone.

pub mod amqp;
pub mod ballast;
pub mod consumer;
pub mod control;
pub mod http;
pub mod message;
pub mod nats;
pub mod producer;
pub mod restore;
pub mod state;

/// Everything that can go wrong in the sample service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AMQP: {0}")]
    Amqp(#[from] amqprs::error::Error),
    #[error("invalid AMQP URL {url:?}: {reason}")]
    AmqpUrl { url: String, reason: String },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("control message rejected: {0}")]
    Control(String),
    #[error("publisher confirm: {0}")]
    Confirm(String),
    #[error("cannot read the pod name from {path}: {source}")]
    PodName {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
