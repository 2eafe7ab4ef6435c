//! One blob, one upload session: POST → one streamed PATCH fed by a producer thread →
//! PUT `?digest=`. The producer (the layer encoder) runs on a blocking thread and writes
//! into a bounded channel; the digest it returns names the blob in the closing PUT.
//!
//! Faults: a broken PATCH first asks the registry how much of the session it holds and,
//! if it answers, re-runs the producer discarding that many bytes (the encoder is
//! deterministic, so the bytes are the same) and appends the rest; a registry that
//! forgot the session (distribution after a restart, or one that refuses a stale
//! upload state) gets the layer again from a fresh session. Either way the registry
//! checks the final digest, so a resume that went wrong cannot produce a wrong blob.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Error;
use super::channel::{ChannelSink, DEPTH};
use super::progress::{LayerState, Progress};
use crate::registry::RegistryClient;

/// Something that can write the same blob again and again.
pub trait BlobSource: Send + Sync + 'static {
    /// What the producer returns besides the digest (e.g. the layer descriptor).
    type Output: Send + 'static;
    /// Writes the whole blob to `sink` (as a `Write`, or as a `ChunkSink` to hand on
    /// its own buffers) and returns its digest (`sha256:<hex>`).
    fn produce(&self, sink: &mut ChannelSink) -> Result<(String, Self::Output), Error>;
}

/// Uploads the blob of `source`, reporting as layer `index` of `progress`.
pub async fn upload_blob<S: BlobSource>(
    client: &RegistryClient,
    source: Arc<S>,
    index: usize,
    progress: &Progress,
) -> Result<(String, S::Output), Error> {
    let attempts = client.options().attempts.max(1);
    let mut resume_at: Option<String> = None;
    let mut attempt = 0u32;
    loop {
        let (location, skip) = match resume_at.take() {
            Some(loc) => match client.upload_offset(&loc).await {
                Ok(off) => {
                    debug!(index, off, "resuming upload");
                    (loc, off)
                }
                Err(e) => {
                    debug!(index, %e, "upload session gone, restarting the layer");
                    client.cancel_upload(&loc).await;
                    (client.start_upload().await?, 0)
                }
            },
            None => (client.start_upload().await?, 0),
        };
        progress.set_state(index, LayerState::Transferring);
        let (tx, rx) = mpsc::channel::<Bytes>(DEPTH);
        let src = source.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let mut sink = ChannelSink::new(tx, skip);
            let out = src.produce(&mut sink)?;
            sink.flush()
                .map_err(|e| Error::io("sending the last chunk", e))?;
            Ok::<_, Error>(out)
        });
        let p = progress.clone();
        let stream = tokio_stream(rx).map(move |b| {
            p.add_wire(index, b.len() as u64);
            Ok::<Bytes, std::io::Error>(b)
        });
        let patched = client
            .patch_stream(&location, reqwest::Body::wrap_stream(stream))
            .await;
        let produced = producer
            .await
            .map_err(|e| Error::Internal(format!("encoder thread: {e}")))?;
        let retryable;
        let err = match (patched, produced) {
            (Ok(next), Ok((digest, out))) => {
                progress.set_state(index, LayerState::Committing);
                match client.finish_upload(&next, &digest).await {
                    Ok(()) => {
                        progress.set_state(index, LayerState::Done);
                        return Ok((digest, out));
                    }
                    Err(e) => {
                        // A digest the registry disputes means the session holds other
                        // bytes than we think: start over rather than resume.
                        client.cancel_upload(&next).await;
                        retryable = e.is_transient()
                            || matches!(e, crate::registry::Error::Status { status: 400, .. });
                        Error::from(e)
                    }
                }
            }
            // The producer failed on its own (not because the socket went away): an
            // encoding error is not a network fault, retrying cannot help.
            (Ok(_), Err(e)) => {
                client.cancel_upload(&location).await;
                progress.set_state(index, LayerState::Failed);
                return Err(e);
            }
            (Err(e), Err(pe)) if !pe.is_stream_closed() => {
                client.cancel_upload(&location).await;
                progress.set_state(index, LayerState::Failed);
                debug!(%e, "upload also failed");
                return Err(pe);
            }
            (Err(e), _) => {
                // A dropped connection may have left bytes worth resuming from; a refusal
                // (expired token, session the registry forgot) needs a fresh session.
                if e.is_transient() {
                    resume_at = Some(location);
                } else {
                    client.cancel_upload(&location).await;
                }
                retryable = true;
                Error::from(e)
            }
        };
        attempt += 1;
        if attempt >= attempts || !retryable {
            progress.set_state(index, LayerState::Failed);
            return Err(Error::Upload {
                index,
                attempts: attempt,
                source: Box::new(err),
            });
        }
        let delay = client.options().backoff_for(attempt - 1);
        warn!(index, attempt, ?delay, %err, "layer upload failed, retrying");
        progress.set_state(index, LayerState::Retrying);
        tokio::time::sleep(delay).await;
    }
}

/// A `Stream` over an mpsc receiver without pulling in tokio-stream.
pub(crate) fn tokio_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
