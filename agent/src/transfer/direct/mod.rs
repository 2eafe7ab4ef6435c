//! Direct mode: the source agent streams the encoded layers to the target agent in one
//! HTTP request (`PUT /v1/direct/receive/{checkpoint_id}`), no registry in between.
//! Wire format and route: `docs/transfer.md`.
//!
//! Sender: one encoder thread per layer, as for a push, each writing DATA frames into
//! one bounded channel that is the request body; an END frame carries the layer's
//! descriptor once the encoder knows its digests; DONE closes the stream.
//!
//! Receiver: in Direct mode a layer's digests arrive after its last byte, so each layer
//! is unpacked as it streams in (hostile-entry rules applied on the fly) into a staging
//! directory with the image-format decoder's deferred verification
//! (`Staging::unpack_layer_chunks_unverified`), then confirmed against the END frame; the
//! staging is committed only when every layer matched and DONE arrived, and removed
//! otherwise. No spool file: the bytes are written once, where they end up.

//!
//! The wire format itself (frames, their encoder and decoder) is `ms2m_api::wire`,
//! shared with the tests; [`send`] and [`receive`] are the two ends.

mod receive;
mod send;

use std::path::PathBuf;

use ms2m_image_format::Compression;

pub use super::push::open_archive;
pub use ms2m_api::wire::{CONTENT_TYPE, ROUTE_PREFIX};
pub use ms2m_api::{Received, SendResult};
pub use receive::{ReceiveLimits, check_destination, receive, receive_limited};
pub use send::send;

/// Refuse streams with more layers than any plan would make.
const MAX_LAYERS: usize = 64;

#[derive(Debug, Clone)]
pub struct DirectOptions {
    pub layers: usize,
    pub compression: Compression,
    /// Bearer token of the target agent's TCP listener.
    pub token: Option<String>,
    /// Extra CA certificates for an HTTPS target.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS with the target (cluster CA, this agent's certificate, the target's
    /// identity checked); replaces `ca_file` and `token`.
    pub tls: Option<rustls::ClientConfig>,
    /// Ask the target to import the received checkpoint into its image store under this
    /// reference (`?import=`).
    pub import_reference: Option<String>,
}

impl Default for DirectOptions {
    fn default() -> Self {
        let layers = super::push::default_layers();
        Self {
            layers,
            compression: super::push::default_compression(layers),
            token: None,
            ca_file: None,
            tls: None,
            import_reference: None,
        }
    }
}

/// Checkpoint ids as the agent API accepts them.
pub fn valid_checkpoint_id(id: &str) -> bool {
    ms2m_api::ids::is_valid_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_ids() {
        assert!(valid_checkpoint_id("counter-1.ckpt_2"));
        for bad in ["", "-x", "../x", "a/b", &"a".repeat(129)] {
            assert!(!valid_checkpoint_id(bad), "{bad}");
        }
    }
}
