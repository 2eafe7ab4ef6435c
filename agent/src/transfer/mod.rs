//! The transfer engine: encode → upload (push), download → verify → unpack (pull), direct agent-to-agent.
//!
//! Threads and memory: every layer has one blocking thread running the synchronous
//! encoder (or decoder) and one async task moving its bytes to (or from) the socket,
//! joined by a bounded channel (`channel::DEPTH × channel::CHUNK` = 4 MiB). Nothing is
//! staged in a temp file and nothing holds a whole blob, so memory does not grow with
//! the archive.

pub mod bench;
pub mod budget;
pub mod channel;
pub mod direct;
pub mod encode_args;
pub mod progress;
pub mod progress_bar;
pub mod pull;
pub mod push;
pub mod synthetic;
pub mod upload;

use std::io;

pub use progress::{LayerSnapshot, LayerState, Progress, Snapshot};

use crate::registry;

/// Errors of the transfer engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(transparent)]
    Image(#[from] ms2m_image_format::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {index}: upload failed after {attempts} attempt(s): {source}")]
    Upload {
        index: usize,
        attempts: u32,
        #[source]
        source: Box<Error>,
    },
    #[error("blob {digest}: download failed: {source}")]
    Download {
        digest: String,
        #[source]
        source: Box<Error>,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("the checkpoint exceeds max_checkpoint_bytes ({limit} bytes) once decompressed")]
    TooLarge { limit: u64 },
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Worth retrying: a network fault or a registry that said "not now".
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Registry(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The producer stopped because its consumer (the socket side) went away: the real
    /// cause is the consumer's error.
    pub(crate) fn is_stream_closed(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<io::Error>()
                && io.kind() == io::ErrorKind::BrokenPipe
            {
                return true;
            }
            cur = e.source();
        }
        false
    }
}
