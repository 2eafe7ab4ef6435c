//! Checkpoint archives and OCI checkpoint images: model, validation, layout, streaming
//! encoder and verifying decoder. Pure `Read`/`Write`; no network.
