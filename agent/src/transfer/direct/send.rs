//! The sending end of a Direct transfer: encoder threads write frames into one bounded
//! channel that is the request body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use ms2m_api::wire::{self, FrameKind};
use ms2m_image_format::{
    Archive, ChunkSink, LayerDescriptor, LayerHashes, encode_layer_chunks, plan_layers,
};
use tokio::sync::mpsc;
use tracing::info;

use super::{
    CONTENT_TYPE, DirectOptions, MAX_LAYERS, ROUTE_PREFIX, Received, SendResult,
    valid_checkpoint_id,
};
use crate::registry::client_config;
use crate::transfer::channel::{CHUNK, DEPTH};
use crate::transfer::upload::tokio_stream;
use crate::transfer::{Error, LayerState, Progress};

// A DATA frame carries at most one chunk.
const _: () = assert!(CHUNK <= wire::MAX_DATA as usize);

/// One frame of the request body: a whole END/DONE frame, or a DATA frame's 7-byte
/// header with its payload (a slice of the encoder's buffer, never copied) and layer.
/// Header and payload travel as one item because several encoder threads share the
/// channel: sent apart, another layer's frame could come between them.
type Piece = (Bytes, Option<(u16, Bytes)>);

/// One layer's end of the request body: each chunk of encoder output goes out as DATA
/// frames of at most `CHUNK` bytes.
struct FrameSink {
    tx: mpsc::Sender<Piece>,
    layer: u16,
}

impl FrameSink {
    fn push(&self, piece: Piece) -> std::io::Result<()> {
        // blocking_send parks this encoder thread until the socket drains.
        self.tx.blocking_send(piece).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "direct stream closed")
        })
    }
}

impl ChunkSink for FrameSink {
    fn send(&mut self, mut chunk: Bytes) -> std::io::Result<()> {
        while !chunk.is_empty() {
            let payload = chunk.split_to(chunk.len().min(CHUNK));
            let header = wire::header(FrameKind::Data, self.layer, payload.len() as u32);
            self.push((Bytes::copy_from_slice(&header), Some((self.layer, payload))))?;
        }
        Ok(())
    }
}

/// Streams `archive` to the agent at `target` (`http(s)://host:port`), which stores it as
/// checkpoint `checkpoint_id`.
pub async fn send(
    archive: Arc<Archive>,
    target: &str,
    checkpoint_id: &str,
    opts: &DirectOptions,
    progress: &Progress,
) -> Result<SendResult, Error> {
    let started = Instant::now();
    if !valid_checkpoint_id(checkpoint_id) {
        return Err(Error::Protocol(format!(
            "invalid checkpoint id {checkpoint_id:?}"
        )));
    }
    let plans = plan_layers(&archive, opts.layers.clamp(1, MAX_LAYERS));
    progress.set_layers(&plans.iter().map(|p| p.size).collect::<Vec<_>>());
    let (tx, rx) = mpsc::channel::<Piece>(DEPTH * plans.len());
    let mut encoders = Vec::new();
    for plan in plans {
        let (archive, tx, compression) = (archive.clone(), tx.clone(), opts.compression);
        let index = plan.index;
        progress.set_state(index, LayerState::Transferring);
        encoders.push(tokio::task::spawn_blocking(move || {
            let mut sink = FrameSink {
                tx: tx.clone(),
                layer: index as u16,
            };
            // No image comes of a Direct stream, so no diff_id: the blob digest is what
            // the receiver verifies.
            let desc = encode_layer_chunks(
                &archive,
                &plan,
                &compression,
                LayerHashes::BlobOnly,
                &mut sink,
            )?;
            tx.blocking_send((wire::end_frame(index as u16, &desc), None))
                .map_err(|_| Error::Protocol("direct stream closed".into()))?;
            Ok::<LayerDescriptor, Error>(desc)
        }));
    }
    let p = progress.clone();
    let body = tokio_stream(rx).flat_map(move |(head, data): Piece| {
        let payload = data.map(|(layer, payload)| {
            p.add_wire(layer as usize, payload.len() as u64);
            payload
        });
        futures::stream::iter(
            std::iter::once(head)
                .chain(payload)
                .map(Ok::<Bytes, std::io::Error>),
        )
    });
    let finisher = async move {
        let mut descs = Vec::new();
        let mut first_err = None;
        for e in encoders {
            match e.await {
                Ok(Ok(d)) => descs.push(d),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(Error::Internal(format!("encoder thread: {e}")));
                }
            }
        }
        if let Some(e) = first_err {
            // Dropping `tx` without DONE makes the receiver discard everything.
            return Err(e);
        }
        tx.send((wire::done_frame(descs.len()), None))
            .await
            .map_err(|_| Error::Protocol("direct stream closed before DONE".into()))?;
        Ok(descs)
    };

    let tls = match &opts.tls {
        Some(c) => c.clone(),
        None => client_config(opts.ca_file.as_deref())?,
    };
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(15))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| Error::Protocol(format!("HTTP client: {e}")))?;
    let mut url = format!(
        "{}{ROUTE_PREFIX}{checkpoint_id}",
        target.trim_end_matches('/')
    );
    if let Some(r) = &opts.import_reference {
        url.push_str("?import=");
        url.extend(form_urlencoded::byte_serialize(r.as_bytes()));
    }
    preflight(&client, &url, opts.token.as_deref()).await?;
    let mut req = client
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(reqwest::Body::wrap_stream(body));
    if let Some(t) = &opts.token {
        req = req.header(reqwest::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = async {
        let resp = req
            .send()
            .await
            .map_err(|e| crate::registry::Error::from_reqwest("PUT", &url, e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| crate::registry::Error::from_reqwest("PUT", &url, e))?;
        if !status.is_success() {
            return Err(Error::Protocol(format!(
                "{url}: target agent answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(1000)])
            )));
        }
        serde_json::from_slice::<Received>(&bytes)
            .map_err(|e| Error::Protocol(format!("{url}: bad answer: {e}")))
    };
    let (sent, encoded) = tokio::join!(request, finisher);
    // An encoder that failed on its own is the cause of a truncated request; an encoder
    // that stopped because the request ended (refused, connection lost) is not.
    let (descs, received) = match (encoded, sent) {
        (Ok(d), Ok(r)) => (d, r),
        (Err(e), Err(s)) if e.is_stream_closed() => return Err(s),
        (Err(e), _) => return Err(e),
        (Ok(_), Err(s)) => return Err(s),
    };
    let bytes_sent: u64 = descs.iter().map(|d| d.size).sum();
    if received.layers != descs.iter().map(|d| d.digest.clone()).collect::<Vec<_>>() {
        return Err(Error::Protocol(format!(
            "target stored layers {:?}, we sent {:?}",
            received.layers,
            descs.iter().map(|d| &d.digest).collect::<Vec<_>>()
        )));
    }
    for i in 0..descs.len() {
        progress.set_state(i, LayerState::Done);
    }
    progress.finish();
    info!(target, checkpoint_id, bytes_sent, elapsed = ?started.elapsed(), "direct transfer done");
    Ok(SendResult {
        target: target.to_string(),
        target_checkpoint_id: checkpoint_id.to_string(),
        bytes_sent,
        archive_bytes: archive.total_size(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        received,
    })
}

/// Asks the target whether it would accept the stream (token, id, destination free)
/// before any encoding starts: a server refusing a request while its body is still being
/// written shows up as a broken pipe, not as its answer. Targets that do not serve the
/// `GET` (404/405) are streamed to directly.
async fn preflight(client: &reqwest::Client, url: &str, token: Option<&str>) -> Result<(), Error> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.header(reqwest::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| crate::registry::Error::from_reqwest("GET", url, e))?;
    let status = resp.status();
    if status.is_success() || status.as_u16() == 404 || status.as_u16() == 405 {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(Error::Protocol(format!(
        "{url}: target agent answered {status}: {}",
        &body[..body.len().min(1000)]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sink_cuts_data_frames_with_lengths() {
        let (tx, mut rx) = mpsc::channel(64);
        let data = Bytes::from(vec![9u8; CHUNK + 5]);
        let ptr = data.as_ptr();
        std::thread::spawn(move || {
            let mut s = FrameSink { tx, layer: 3 };
            s.send(data).unwrap();
            s.send(Bytes::new()).unwrap();
        })
        .join()
        .unwrap();
        let mut pieces = Vec::new();
        while let Ok(p) = rx.try_recv() {
            pieces.push(p);
        }
        assert_eq!(pieces.len(), 2);
        let ((h1, d1), (h2, d2)) = (&pieces[0], &pieces[1]);
        let ((l1, p1), (l2, p2)) = (d1.as_ref().unwrap(), d2.as_ref().unwrap());
        assert_eq!((*l1, *l2), (3, 3));
        assert_eq!(&h1[..], &[FrameKind::Data as u8, 0, 3, 0, 4, 0, 0]);
        assert_eq!(u32::from_be_bytes([h2[3], h2[4], h2[5], h2[6]]), 5);
        assert_eq!((p1.len(), p2.len()), (CHUNK, 5));
        assert_eq!(
            p1.as_ptr(),
            ptr,
            "the payload is the encoder's buffer, not a copy"
        );
    }
}
