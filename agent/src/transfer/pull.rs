//! Registry pull: manifest (through the index) → config → every layer downloaded in
//! parallel and fed, while it streams, to the verifying decoder on its own thread; the
//! staging directory is committed to the destination only when every layer verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use ms2m_image_format::{ExpectedLayer, Staging, unpack_layer_chunks};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::channel::{ChannelChunks, ChannelItem, DEPTH};
use super::{Error, LayerState, Progress};
use crate::registry::{Access, ClientOptions, Reference, RegistryClient};

/// A config blob larger than this is not a checkpoint image's.
const MAX_CONFIG: u64 = 4 * 1024 * 1024;
/// A download that delivers nothing for this long is treated as dropped.
const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub client: ClientOptions,
    /// Layers downloaded at the same time.
    pub parallel: usize,
    /// Also check each layer's uncompressed digest against the config's diff_ids.
    /// Off by default: the blob digests (pinned by the manifest) already fix every
    /// byte, and decompression is deterministic, so a diff_id mismatch could only
    /// reveal an inconsistent image, at ≈0.6 CPU s per GiB. See docs/transfer.md.
    pub verify_diff_ids: bool,
    /// Refuse (and remove) a checkpoint that unpacks to more bytes than this.
    pub max_bytes: Option<u64>,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            parallel: 4,
            verify_diff_ids: false,
            max_bytes: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PullResult {
    pub image: String,
    /// Digest of what the reference resolved to (index or manifest).
    pub digest: String,
    pub path: PathBuf,
    /// Uncompressed bytes unpacked.
    pub size_bytes: u64,
    pub bytes_downloaded: u64,
    pub elapsed_ms: u64,
}

/// The manifest of an image, resolved through an index when there is one.
pub async fn resolve_manifest(
    client: &RegistryClient,
    image: &Reference,
) -> Result<(String, ImageManifest), Error> {
    let top = client.get_manifest(image.manifest_reference()).await?;
    let is_index = top.media_type.contains("index") || top.media_type.contains("manifest.list");
    let manifest_bytes = if is_index {
        let index = ImageIndex::from_reader(&top.bytes[..])
            .map_err(|e| Error::Protocol(format!("image index of {image}: {e}")))?;
        let chosen = pick_manifest(index.manifests())
            .ok_or_else(|| Error::Protocol(format!("image index of {image} lists no manifest")))?;
        client.get_manifest(chosen.digest().as_ref()).await?.bytes
    } else {
        top.bytes.clone()
    };
    let manifest = ImageManifest::from_reader(&manifest_bytes[..])
        .map_err(|e| Error::Protocol(format!("manifest of {image}: {e}")))?;
    Ok((top.digest, manifest))
}

/// This host's platform if listed, else the first entry: a checkpoint is only
/// restorable on the architecture it was taken on, and the index we push lists one.
fn pick_manifest(list: &[Descriptor]) -> Option<&Descriptor> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    list.iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| p.architecture().to_string() == arch)
        })
        .or_else(|| list.first())
}

/// Pulls `image` and unpacks it as a checkpoint archive directory at `dest` (which must
/// not exist). On any error nothing is left at `dest`.
pub async fn pull(
    image: &Reference,
    dest: &Path,
    opts: &PullOptions,
    progress: &Progress,
) -> Result<PullResult, Error> {
    let started = Instant::now();
    let client = RegistryClient::connect(image, opts.client.clone(), Access::Pull).await?;
    let (digest, manifest) = resolve_manifest(&client, image).await?;
    let config_bytes = client
        .get_small_blob(manifest.config().digest().as_ref(), MAX_CONFIG)
        .await?;
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| Error::Protocol(format!("image config of {image}: {e}")))?;
    let diff_ids = config.rootfs().diff_ids().clone();
    let layers = manifest.layers().clone();
    if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
        return Err(Error::Protocol(format!(
            "{image}: {} layers but {} diff_ids",
            layers.len(),
            diff_ids.len()
        )));
    }
    progress.set_layers(&layers.iter().map(|l| l.size()).collect::<Vec<_>>());

    let dest_buf = dest.to_path_buf();
    let staging = Arc::new(
        tokio::task::spawn_blocking(move || Staging::new(&dest_buf))
            .await
            .map_err(|e| Error::Internal(format!("staging thread: {e}")))??,
    );
    let client_ref = &client;
    let budget = opts.max_bytes.map(super::budget::Budget::new);
    let budget_ref = &budget;
    let jobs: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, desc)| {
            (
                i,
                desc.digest().to_string(),
                ExpectedLayer::new(
                    desc,
                    diff_ids
                        .get(i)
                        .filter(|_| opts.verify_diff_ids)
                        .map(String::as_str),
                ),
                staging.clone(),
            )
        })
        .collect();
    let jobs = jobs
        .into_iter()
        .map(|(i, digest, expected, staging)| async move {
            let (tx, rx) = mpsc::channel(DEPTH);
            progress.set_state(i, LayerState::Transferring);
            let budget = budget_ref.clone();
            let decoder = tokio::task::spawn_blocking(move || match budget {
                Some(b) => unpack_layer_chunks(
                    super::budget::Metered::new(ChannelChunks::new(rx), &expected.media_type, b),
                    &expected,
                    &staging,
                ),
                None => unpack_layer_chunks(ChannelChunks::new(rx), &expected, &staging),
            });
            let fed = feed(client_ref, &digest, i, tx, progress).await;
            let decoded = decoder
                .await
                .map_err(|e| Error::Internal(format!("decoder thread: {e}")))?;
            let r = match (fed, decoded) {
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) => Err(Error::Image(e)),
                (Ok(()), Ok(stats)) => Ok(stats.uncompressed_size),
            };
            progress.set_state(
                i,
                if r.is_ok() {
                    LayerState::Done
                } else {
                    LayerState::Failed
                },
            );
            r
        });
    let sizes: Vec<Result<u64, Error>> = futures::stream::iter(jobs)
        .buffer_unordered(opts.parallel.max(1))
        .collect()
        .await;
    if let Some(b) = &budget
        && b.exceeded()
    {
        return Err(Error::TooLarge { limit: b.limit() });
    }
    let mut size_bytes = 0;
    for s in sizes {
        size_bytes += s?;
    }
    let staging = Arc::try_unwrap(staging)
        .map_err(|_| Error::Internal("staging still shared after all layers".into()))?;
    let path = tokio::task::spawn_blocking(move || staging.commit())
        .await
        .map_err(|e| Error::Internal(format!("commit thread: {e}")))??;
    progress.finish();
    let bytes_downloaded = progress.snapshot().wire_bytes;
    info!(image = %image, path = %path.display(), size_bytes, elapsed = ?started.elapsed(), "pulled");
    Ok(PullResult {
        image: image.to_string(),
        digest,
        path,
        size_bytes,
        bytes_downloaded,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Streams blob `digest` into `tx`, resuming with a range request after a broken
/// download. Returns Ok when the blob ended or the decoder stopped reading (its own
/// error is then the one that counts).
async fn feed(
    client: &RegistryClient,
    digest: &str,
    index: usize,
    tx: mpsc::Sender<ChannelItem>,
    progress: &Progress,
) -> Result<(), Error> {
    let attempts = client.options().attempts.max(1);
    let mut offset = 0u64;
    let mut attempt = 0u32;
    loop {
        // A body that breaks or stalls after the response started is a dropped download
        // whatever reqwest calls it (a cut chunked body surfaces as a decode error).
        let mut broke_midway = false;
        let err = match client.get_blob(digest, offset).await {
            Ok(blob) => {
                // A registry ignoring Range answers from byte 0: skip what we have.
                let mut skip = offset - blob.start;
                let mut stream = blob.response.bytes_stream();
                loop {
                    match tokio::time::timeout(STALL, stream.next()).await {
                        Ok(Some(Ok(mut chunk))) => {
                            if skip > 0 {
                                let n = skip.min(chunk.len() as u64) as usize;
                                let _ = chunk.split_to(n);
                                skip -= n as u64;
                            }
                            if chunk.is_empty() {
                                continue;
                            }
                            offset += chunk.len() as u64;
                            progress.add_wire(index, chunk.len() as u64);
                            if tx.send(ChannelItem::Data(chunk)).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => return Ok(()),
                        Ok(Some(Err(e))) => {
                            broke_midway = true;
                            break crate::registry::Error::Http {
                                method: "GET".into(),
                                url: digest.into(),
                                detail: format!("download broke at byte {offset}: {e}"),
                                source: e,
                            };
                        }
                        Err(_) => {
                            broke_midway = true;
                            break crate::registry::Error::Protocol(format!(
                                "download stalled at byte {offset} for {STALL:?}"
                            ));
                        }
                    }
                }
            }
            Err(e) => e,
        };
        attempt += 1;
        if attempt >= attempts || !(err.is_transient() || broke_midway) {
            let e = Error::Download {
                digest: digest.to_string(),
                source: Box::new(err.into()),
            };
            let _ = tx.send(ChannelItem::Error(e.to_string())).await;
            return Err(e);
        }
        let delay = client.options().backoff_for(attempt - 1);
        warn!(digest, offset, attempt, %err, "download broke, resuming");
        progress.set_state(index, LayerState::Retrying);
        tokio::time::sleep(delay).await;
        progress.set_state(index, LayerState::Transferring);
    }
}
