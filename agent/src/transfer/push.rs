//! Registry push: archive → layers encoded on their own threads → one upload session
//! per layer, concurrently → config → manifest (by digest) → index (the tag) last, so a
//! failed or cancelled push never leaves a tag pointing at a partial image.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use ms2m_image_format::{
    Archive, Compression, ImageOptions, LayerDescriptor, LayerHashes, LayerPlan, build_image,
    encode_layer_chunks, plan_layers,
};
use serde::Serialize;
use tracing::info;

use super::channel::ChannelSink;
use super::upload::{BlobSource, upload_blob};
use super::{Error, Progress};
use crate::registry::{Access, ClientOptions, Reference, RegistryClient};

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Number of whole-file layers the archive is split into.
    pub layers: usize,
    /// Layers uploaded at the same time.
    pub parallel: usize,
    pub compression: Compression,
    pub client: ClientOptions,
}

impl Default for PushOptions {
    fn default() -> Self {
        let layers = default_layers();
        Self {
            layers,
            parallel: layers,
            compression: default_compression(layers),
            client: ClientOptions::default(),
        }
    }
}

/// Two upload streams roughly double what a registry ingests compared with one (§5 of
/// the design notes); more than the core count only adds contention.
pub fn default_layers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

/// zstd level 1 (≈1 GB/s a core, ratio ≈0.5 on heaps), compressed on each layer's
/// encoder thread (`workers: 0`) with both sha256 on helper threads. libzstd workers
/// (one per layer when layers = cores) add a copy and thread hand-offs that lose on a
/// busy 2-core node; measured in `docs/transfer.md`. `--zstd-workers` still sets them.
pub fn default_compression(_layers: usize) -> Compression {
    Compression::Zstd {
        level: 1,
        workers: 0,
    }
}

/// What a push produced.
#[derive(Debug, Clone, Serialize)]
pub struct PushResult {
    pub image: String,
    /// Digest of the index (what the tag points at).
    pub digest: String,
    pub manifest_digest: String,
    /// Compressed bytes sent (layers, config, manifests), resent bytes counted once.
    pub bytes_uploaded: u64,
    /// Uncompressed archive bytes.
    pub archive_bytes: u64,
    pub layers: Vec<LayerSummary>,
    // JSON names carry their unit (`*_ms`, `*_bytes`), as every other result does.
    #[serde(with = "millis", rename = "elapsed_ms")]
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    pub digest: String,
    #[serde(rename = "size_bytes")]
    pub size: u64,
    pub diff_id: String,
    #[serde(rename = "uncompressed_size_bytes")]
    pub uncompressed_size: u64,
}

impl From<PushResult> for ms2m_api::PushResult {
    fn from(r: PushResult) -> Self {
        Self {
            image: r.image,
            digest: r.digest,
            manifest_digest: r.manifest_digest,
            bytes_uploaded: r.bytes_uploaded,
            archive_bytes: r.archive_bytes,
            layers: r
                .layers
                .into_iter()
                .map(|l| ms2m_api::LayerSummary {
                    digest: l.digest,
                    size_bytes: l.size,
                    diff_id: l.diff_id,
                    uncompressed_size_bytes: l.uncompressed_size,
                })
                .collect(),
            elapsed_ms: r.elapsed.as_millis() as u64,
        }
    }
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// One layer of the plan as an upload source: re-encoding gives the same bytes.
struct LayerSource {
    archive: Arc<Archive>,
    plan: LayerPlan,
    compression: Compression,
}

impl BlobSource for LayerSource {
    type Output = LayerDescriptor;
    fn produce(&self, sink: &mut ChannelSink) -> Result<(String, LayerDescriptor), Error> {
        let d = encode_layer_chunks(
            &self.archive,
            &self.plan,
            &self.compression,
            LayerHashes::BlobAndDiffId,
            sink,
        )?;
        Ok((d.digest.clone(), d))
    }
}

/// Opens (and validates) an archive off the async threads.
pub async fn open_archive(source: &Path) -> Result<Arc<Archive>, Error> {
    let p: PathBuf = source.to_path_buf();
    let a = tokio::task::spawn_blocking(move || Archive::open(&p))
        .await
        .map_err(|e| Error::Internal(format!("archive thread: {e}")))??;
    Ok(Arc::new(a))
}

/// Pushes the checkpoint archive (tar file or directory) at `source` to `image`.
pub async fn push(
    source: &Path,
    image: &Reference,
    opts: &PushOptions,
    progress: &Progress,
) -> Result<PushResult, Error> {
    let started = Instant::now();
    let archive = open_archive(source).await?;
    push_archive(archive, image, opts, progress)
        .await
        .map(|mut r| {
            r.elapsed = started.elapsed();
            r
        })
}

/// Pushes an already opened archive.
pub async fn push_archive(
    archive: Arc<Archive>,
    image: &Reference,
    opts: &PushOptions,
    progress: &Progress,
) -> Result<PushResult, Error> {
    let started = Instant::now();
    let client = RegistryClient::connect(image, opts.client.clone(), Access::Push).await?;
    let plans = plan_layers(&archive, opts.layers.max(1));
    progress.set_layers(&plans.iter().map(|p| p.size).collect::<Vec<_>>());
    info!(image = %image, layers = plans.len(), archive_bytes = archive.total_size(), "pushing");

    let client_ref = &client;
    let uploads = plans.into_iter().map(|plan| {
        let source = Arc::new(LayerSource {
            archive: archive.clone(),
            plan,
            compression: opts.compression,
        });
        async move {
            let index = source.plan.index;
            upload_blob(client_ref, source, index, progress)
                .await
                .map(|(_, d)| (index, d))
        }
    });
    // The first failed layer ends the push: dropping the other uploads closes their
    // channels, which stops their encoders.
    let mut done: Vec<(usize, LayerDescriptor)> = futures::stream::iter(uploads)
        .buffer_unordered(opts.parallel.max(1))
        .try_collect()
        .await?;
    done.sort_by_key(|(i, _)| *i);
    let layers: Vec<LayerDescriptor> = done.into_iter().map(|(_, d)| d).collect();

    let image_opts = ImageOptions {
        tag: image.tag.clone(),
        ..ImageOptions::default()
    };
    let built = build_image(archive.metadata(), &layers, &image_opts)?;
    client
        .put_blob(&built.config.digest(), &built.config.bytes)
        .await?;
    let manifest_digest = built.manifest.digest();
    client
        .put_manifest(
            &manifest_digest,
            built.manifest.descriptor.media_type().as_ref(),
            &built.manifest.bytes,
        )
        .await?;
    let index_digest = built.index.digest();
    let target = image.tag.clone().unwrap_or_else(|| index_digest.clone());
    client
        .put_manifest(
            &target,
            built.index.descriptor.media_type().as_ref(),
            &built.index.bytes,
        )
        .await?;
    progress.finish();
    let wire = progress.snapshot().wire_bytes
        + (built.config.bytes.len() + built.manifest.bytes.len() + built.index.bytes.len()) as u64;
    info!(image = %image, digest = %index_digest, bytes = wire, elapsed = ?started.elapsed(), "pushed");
    Ok(PushResult {
        image: image.to_string(),
        digest: index_digest,
        manifest_digest,
        bytes_uploaded: wire,
        archive_bytes: archive.total_size(),
        layers: layers
            .iter()
            .map(|d| LayerSummary {
                digest: d.digest.clone(),
                size: d.size,
                diff_id: d.diff_id.clone(),
                uncompressed_size: d.uncompressed_size,
            })
            .collect(),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send + 'static>(_: T) {}

    #[test]
    fn push_and_pull_futures_can_be_spawned_by_the_job_runner() {
        // Compile-time property: the daemon runs both as tokio tasks.
        let image = Reference::parse("127.0.0.1:5000/a:b").unwrap();
        assert_send(async move {
            let _ = push(
                Path::new("/nonexistent"),
                &image,
                &PushOptions::default(),
                &Progress::new(),
            )
            .await;
        });
        let image = Reference::parse("127.0.0.1:5000/a:b").unwrap();
        assert_send(async move {
            let opts = crate::transfer::pull::PullOptions::default();
            let _ = crate::transfer::pull::pull(
                &image,
                Path::new("/nonexistent"),
                &opts,
                &Progress::new(),
            )
            .await;
        });
    }

    #[test]
    fn defaults_fit_the_machine() {
        let o = PushOptions::default();
        assert!((2..=4).contains(&o.layers));
        assert_eq!(o.parallel, o.layers);
        // Compression on the encoder threads, hashes beside them (see default_compression).
        assert!(matches!(
            o.compression,
            Compression::Zstd {
                level: 1,
                workers: 0
            }
        ));
    }
}
