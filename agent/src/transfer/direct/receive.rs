//! The receiving end of a Direct transfer: each layer is unpacked as it streams in, then
//! confirmed against its END frame; the staging is committed once every layer matched
//! and DONE arrived.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use ms2m_api::wire::{self, Done};
use ms2m_image_format::{
    ExpectedLayer, LayerDescriptor, LayerHashes, LayerStats, MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD, Staging,
};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{CONTENT_TYPE, MAX_LAYERS, Received};
use crate::transfer::Error;
use crate::transfer::channel::{ChannelChunks, ChannelItem, DEPTH};

/// The check behind `GET /v1/direct/receive/{checkpoint_id}` (the sender's preflight):
/// Ok when `receive` into `dest` could start.
pub fn check_destination(dest: &Path) -> Result<(), Error> {
    if !dest.parent().is_some_and(Path::is_dir) {
        return Err(Error::Protocol(format!(
            "{}: parent directory missing",
            dest.display()
        )));
    }
    if dest.exists() {
        return Err(Error::Protocol(format!(
            "{} already exists",
            dest.display()
        )));
    }
    Ok(())
}

type Unpacked = Result<(ExpectedLayer, LayerStats), Error>;

struct LayerIn {
    tx: Option<mpsc::Sender<ChannelItem>>,
    /// Started at the layer's first frame (layers interleave, in any order).
    unpacker: Option<tokio::task::JoinHandle<Unpacked>>,
    desc: Option<LayerDescriptor>,
    /// First bytes of a layer whose first piece was too short to sniff.
    head: Vec<u8>,
}

/// The layer's compression, from its first bytes: the decoder must pick a decompressor
/// before the END frame names the media type. The announced media type is compared with
/// this one when the layer is confirmed, so a wrong guess only fails the transfer.
fn sniff_media_type(first: &[u8]) -> &'static str {
    if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        MEDIA_TYPE_LAYER_ZSTD
    } else if first.starts_with(&[0x1f, 0x8b]) {
        MEDIA_TYPE_LAYER_GZIP
    } else {
        MEDIA_TYPE_LAYER_TAR
    }
}

/// Receives a Direct-mode stream into `dest` (which must not exist; its parent must).
/// Generic over the body so the daemon can pass axum's/hyper's request body as is.
///
/// Each layer is unpacked into one staging directory as its bytes arrive (one decoder
/// thread per layer, hostile-entry rules applied while streaming); its digests are
/// checked against the END frame once both are in, and the staging is committed only
/// when every layer matched and DONE arrived. Whatever fails, every decoder is ended and
/// the staging removed before this returns.
pub async fn receive<B>(dest: &Path, headers: &http::HeaderMap, body: B) -> Result<Received, Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    receive_limited(dest, headers, body, &ReceiveLimits::default()).await
}

/// What one Direct receive may take.
#[derive(Debug, Clone)]
pub struct ReceiveLimits {
    /// Most layers (one decoder thread each). Layers interleave on the wire, each
    /// decoder blocking until its next bytes come, so a receive needs one thread per
    /// layer the sender opened: the bound is on layers, and the job queue bounds how
    /// many receives run at once.
    pub max_layers: usize,
    /// Decompressed bytes the checkpoint may unpack to.
    pub max_bytes: Option<u64>,
    /// A body that delivers nothing for this long is dropped.
    pub stall: Duration,
}

impl Default for ReceiveLimits {
    fn default() -> Self {
        Self {
            max_layers: MAX_LAYERS,
            max_bytes: None,
            stall: Duration::from_secs(300),
        }
    }
}

/// [`receive`] within `limits`.
pub async fn receive_limited<B>(
    dest: &Path,
    headers: &http::HeaderMap,
    body: B,
    limits: &ReceiveLimits,
) -> Result<Received, Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != CONTENT_TYPE {
        return Err(Error::Protocol(format!(
            "Content-Type must be {CONTENT_TYPE}, got {ct:?}"
        )));
    }
    check_destination(dest)?;
    let dest_buf = dest.to_path_buf();
    let staging = Arc::new(
        tokio::task::spawn_blocking(move || Staging::new(&dest_buf))
            .await
            .map_err(|e| Error::Internal(format!("staging thread: {e}")))??,
    );
    let mut layers: Vec<LayerIn> = Vec::new();
    let mut received = 0u64;
    let rx = Rx {
        staging: staging.clone(),
        budget: limits.max_bytes.map(crate::transfer::budget::Budget::new),
        max_layers: limits.max_layers.min(MAX_LAYERS),
        stall: limits.stall,
    };
    let read = read_frames(body, &rx, &mut layers, &mut received).await;

    // End every decoder (EOF, or an error marker when the stream broke) and wait for
    // them, so that no thread still writes into the staging when it is judged.
    let mut outcomes = Vec::with_capacity(layers.len());
    let mut descs = Vec::with_capacity(layers.len());
    for l in layers {
        if let Some(tx) = l.tx
            && read.is_err()
        {
            let _ = tx.try_send(ChannelItem::Error("direct stream failed".into()));
        }
        outcomes.push(match l.unpacker {
            Some(u) => u
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("unpack thread: {e}")))),
            None => Err(Error::Protocol("a layer index without frames".into())),
        });
        descs.push(l.desc);
    }
    if let Some(b) = &rx.budget
        && b.exceeded()
    {
        return Err(Error::TooLarge { limit: b.limit() });
    }
    drop(rx);
    let done = match read {
        Ok(Some(done)) => done,
        Ok(None) => {
            // A decoder stopped reading: its error is the cause.
            return Err(outcomes
                .into_iter()
                .find_map(Result::err)
                .unwrap_or_else(|| Error::Internal("a layer decoder stopped early".into())));
        }
        Err(e) => return Err(e),
    };
    if done.layers != descs.len() || done.layers == 0 {
        return Err(Error::Protocol(format!(
            "DONE announces {} layers, stream had {}",
            done.layers,
            descs.len()
        )));
    }
    let mut size_bytes = 0;
    let mut digests = Vec::with_capacity(descs.len());
    for (i, (outcome, desc)) in outcomes.into_iter().zip(descs).enumerate() {
        let (actual, stats) = outcome?;
        let d = desc.ok_or_else(|| Error::Protocol(format!("layer {i} has no END")))?;
        staging.confirm_layer(&ExpectedLayer::from(&d), &actual)?;
        debug!(layer = i, digest = %d.digest, entries = stats.entries, "layer received");
        size_bytes += stats.uncompressed_size;
        digests.push(d.digest);
    }
    let staging =
        Arc::try_unwrap(staging).map_err(|_| Error::Internal("staging still shared".into()))?;
    let path = tokio::task::spawn_blocking(move || staging.commit())
        .await
        .map_err(|e| Error::Internal(format!("commit thread: {e}")))??;
    info!(path = %path.display(), size_bytes, received, "direct receive done");
    Ok(Received {
        path,
        size_bytes,
        bytes_received: received,
        layers: digests,
        imported: None,
    })
}

/// The receive's shared state, as the frame parser needs it.
struct Rx {
    staging: Arc<Staging>,
    budget: Option<Arc<crate::transfer::budget::Budget>>,
    max_layers: usize,
    stall: Duration,
}

/// Reads frames until the body ends, feeding each layer's decoder. `Ok(None)`: a decoder
/// stopped taking data (its own error says why).
///
/// DATA payloads are handed on as slices of the body's own chunks (no copy): the wire
/// decoder collects only headers and the small END/DONE documents across chunk
/// boundaries.
async fn read_frames<B>(
    mut body: B,
    rx: &Rx,
    layers: &mut Vec<LayerIn>,
    received: &mut u64,
) -> Result<Option<Done>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    let protocol = |e: wire::WireError| Error::Protocol(e.to_string());
    let mut decoder = wire::Decoder::new();
    let mut done: Option<Done> = None;
    loop {
        let Some(frame) = tokio::time::timeout(rx.stall, body.frame())
            .await
            .map_err(|_| {
                Error::Protocol(format!(
                    "the stream delivered nothing for {} s",
                    rx.stall.as_secs()
                ))
            })?
        else {
            break;
        };
        let mut data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => return Err(Error::Protocol(format!("request body: {e}"))),
        };
        while let Some(event) = decoder.next(&mut data).map_err(protocol)? {
            match event {
                wire::Event::Data { layer, piece } => {
                    let layer = usize::from(layer);
                    layer_slot(layers, layer, rx.max_layers)?;
                    if piece.is_empty() {
                        continue;
                    }
                    *received += piece.len() as u64;
                    if !feed(&mut layers[layer], rx, layer, piece).await? {
                        return Ok(None);
                    }
                }
                wire::Event::Done(d) => done = Some(d),
                wire::Event::End { layer, payload } => {
                    let layer = usize::from(layer);
                    let l = layer_slot(layers, layer, rx.max_layers)?;
                    let d: LayerDescriptor = serde_json::from_slice(&payload)
                        .map_err(|e| Error::Protocol(format!("layer {layer} END: {e}")))?;
                    if l.desc.is_some() {
                        return Err(Error::Protocol(format!("layer {layer}: second END")));
                    }
                    l.desc = Some(d);
                    if l.unpacker.is_none() {
                        // A layer whose END comes before (or without) enough bytes to
                        // tell its compression: start its decoder on what there is.
                        let head = Bytes::from(std::mem::take(&mut l.head));
                        start_decoder(l, rx, sniff_media_type(&head));
                        if !head.is_empty() && !send_piece(l, layer, head).await? {
                            return Ok(None);
                        }
                    }
                    // EOF for the decoder: the layer is complete.
                    l.tx = None;
                }
            }
        }
    }
    decoder.finish().map_err(protocol)?;
    done.map(Some)
        .ok_or_else(|| Error::Protocol("stream ended without DONE".into()))
}

/// The entry of `layer`, created on its first frame.
fn layer_slot(
    layers: &mut Vec<LayerIn>,
    layer: usize,
    max_layers: usize,
) -> Result<&mut LayerIn, Error> {
    if layer >= max_layers {
        return Err(Error::Protocol(format!(
            "layer {layer} out of range: this agent takes at most {max_layers} layers \
             (max_direct_layers)"
        )));
    }
    while layers.len() <= layer {
        layers.push(LayerIn {
            tx: None,
            unpacker: None,
            desc: None,
            head: Vec::new(),
        });
    }
    Ok(&mut layers[layer])
}

fn start_decoder(l: &mut LayerIn, rx: &Rx, media_type: &'static str) {
    let (tx, chunks) = mpsc::channel(DEPTH);
    let staging = rx.staging.clone();
    let budget = rx.budget.clone();
    l.unpacker = Some(tokio::task::spawn_blocking(move || {
        let chunks = ChannelChunks::new(chunks);
        Ok(match budget {
            Some(b) => staging.unpack_layer_chunks_unverified(
                crate::transfer::budget::Metered::new(chunks, media_type, b),
                media_type,
                LayerHashes::BlobOnly,
            )?,
            None => {
                staging.unpack_layer_chunks_unverified(chunks, media_type, LayerHashes::BlobOnly)?
            }
        })
    }));
    l.tx = Some(tx);
}

/// Bytes needed to tell zstd and gzip from a plain tar.
const SNIFF: usize = 4;

/// Hands a DATA piece to the layer's decoder, starting it once the first bytes tell
/// its compression. `Ok(false)`: the decoder stopped taking data.
async fn feed(l: &mut LayerIn, rx: &Rx, layer: usize, piece: Bytes) -> Result<bool, Error> {
    if l.desc.is_some() {
        return Err(Error::Protocol(format!("layer {layer}: data after END")));
    }
    if l.unpacker.is_some() {
        return send_piece(l, layer, piece).await;
    }
    if l.head.is_empty() && piece.len() >= SNIFF {
        start_decoder(l, rx, sniff_media_type(&piece));
        return send_piece(l, layer, piece).await;
    }
    // Rare: the first piece is cut before the magic bytes.
    l.head.extend_from_slice(&piece);
    if l.head.len() < SNIFF {
        return Ok(true);
    }
    let head = Bytes::from(std::mem::take(&mut l.head));
    start_decoder(l, rx, sniff_media_type(&head));
    send_piece(l, layer, head).await
}

async fn send_piece(l: &LayerIn, layer: usize, piece: Bytes) -> Result<bool, Error> {
    let tx =
        l.tx.as_ref()
            .ok_or_else(|| Error::Protocol(format!("layer {layer}: data after END")))?;
    Ok(tx.send(ChannelItem::Data(piece)).await.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::direct::open_archive;
    use ms2m_api::wire::FrameKind;
    use ms2m_image_format::{Compression, encode_layer_with, plan_layers};

    /// The frame parser hands DATA on as slices of the body's chunks and collects
    /// headers and END/DONE across them: however the body is cut, the same archive
    /// lands, and a stream cut inside a frame is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_chunking_of_the_body_gives_the_same_archive() {
        use http_body_util::StreamBody;

        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("ckpt");
        crate::transfer::synthetic::write_checkpoint(&src, "chunks", 200_000).unwrap();
        let archive = open_archive(&src).await.unwrap();
        let mut stream = Vec::new();
        let plans = plan_layers(&archive, 2);
        assert_eq!(plans.len(), 2);
        for plan in &plans {
            let mut blob = Vec::new();
            let desc = encode_layer_with(
                &archive,
                plan,
                &Compression::default(),
                LayerHashes::BlobOnly,
                &mut blob,
            )
            .unwrap();
            let i = plan.index as u16;
            // Two DATA frames per layer, the second interleaved after the other layer's.
            let (a, b) = blob.split_at(blob.len() / 2);
            stream.push((
                i,
                a.to_vec(),
                b.to_vec(),
                serde_json::to_vec(&desc).unwrap(),
            ));
        }
        let mut body = Vec::new();
        for (i, a, _, _) in &stream {
            body.extend_from_slice(&wire::frame(FrameKind::Data, *i, a));
        }
        for (i, _, b, end) in &stream {
            body.extend_from_slice(&wire::frame(FrameKind::Data, *i, b));
            body.extend_from_slice(&wire::frame(FrameKind::End, *i, end));
        }
        body.extend_from_slice(&wire::done_frame(2));

        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(CONTENT_TYPE),
        );
        let cut = |body: &[u8], size: usize| {
            let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = body
                .chunks(size)
                .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            StreamBody::new(futures::stream::iter(chunks))
        };
        let want = archive.total_size();
        for size in [1, 2, 3, 7, 8, 4099, 65536, body.len()] {
            let dest = work.path().join(format!("rx-{size}"));
            let got = receive(&dest, &headers, cut(&body, size)).await.unwrap();
            assert_eq!(got.layers.len(), 2, "chunks of {size}");
            let copy = open_archive(&dest).await.unwrap();
            assert_eq!(copy.total_size(), want, "chunks of {size}");
            for (a, b) in archive.entries().iter().zip(copy.entries()) {
                assert_eq!(a.path, b.path, "chunks of {size}");
                if a.is_file() {
                    assert_eq!(
                        std::fs::read(src.join(&a.path)).unwrap(),
                        std::fs::read(dest.join(&b.path)).unwrap(),
                        "{} with chunks of {size}",
                        a.path
                    );
                }
            }
        }
        for end in [body.len() - 1, body.len() - 20, 5] {
            let dest = work.path().join(format!("cut-{end}"));
            let err = receive(&dest, &headers, cut(&body[..end], 1000))
                .await
                .unwrap_err();
            assert!(!dest.exists(), "cut at {end}: {err}");
        }
    }
}
