//! OCI distribution client used by the transfer engine.
//!
//! A small client on reqwest rather than `oci-client`: the upload hot path needs one
//! streamed `PATCH` per blob fed by the encoder, resumable from the registry's offset,
//! which `oci-client` cannot do (it buffers fixed chunks and sends them one by one),
//! and keeping auth, TLS and retries in the same ~600 lines means one token cache and
//! one connection pool for both the control requests and the blob streams.

mod auth;
pub mod cli;
mod client;
mod reference;
mod tls;

pub use auth::{Challenge, Credentials, ENV_PASSWORD, ENV_USERNAME, from_docker_config};
pub use client::{Access, BlobResponse, ClientOptions, Manifest, RegistryClient, Scheme};
pub use reference::{Reference, is_loopback_host};
pub use tls::client_config;

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {0}")]
    Reference(String),
    #[error("registry authentication failed: {0}")]
    Auth(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("{method} {url}: {detail}")]
    Http {
        method: String,
        url: String,
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: registry answered {status}: {body}")]
    Status {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("registry protocol: {0}")]
    Protocol(String),
    #[error("registry {0} is not on this host: plain HTTP needs the insecure-registry option")]
    InsecureRefused(String),
}

impl Error {
    /// Worth another attempt: the connection broke or the registry said "not now".
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Http { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_request()
                    || source.is_body()
            }
            Error::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}
