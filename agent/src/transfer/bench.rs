//! The operators' benchmark behind `ms2m-agent bench`: this node's throughput for each
//! stage of a push (read, hash, compress, the whole encoder, upload) and end to end, on
//! a synthetic checkpoint or a real archive.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ms2m_image_format::{Archive, Compression, encode_layer, plan_layers};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::channel::ChannelSink;
use super::push::{PushOptions, open_archive, push_archive};
use super::upload::{BlobSource, upload_blob};
use super::{Error, Progress};
use crate::registry::{Access, Reference, RegistryClient};

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: &'static str,
    /// Bytes the stage consumed (uncompressed for read/hash/compress/encode, wire bytes
    /// for upload, archive bytes for end to end).
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

impl Stage {
    fn new(name: &'static str, bytes: u64, started: Instant) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        Self {
            name,
            bytes,
            seconds,
            mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub archive: PathBuf,
    pub archive_bytes: u64,
    pub layers: usize,
    pub compression: String,
    pub compressed_bytes: u64,
    pub stages: Vec<Stage>,
    pub image: String,
    pub digest: String,
}

/// Discards what is written, counting it.
struct Null(u64);

impl Write for Null {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn for_each_file(archive: &Archive, mut f: impl FnMut(&[u8])) -> Result<u64, Error> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    for e in archive.entries().iter().filter(|e| e.is_file()) {
        let mut r = archive.open_entry(e)?;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| Error::io("reading the archive", e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            f(&buf[..n]);
        }
    }
    Ok(total)
}

/// Incompressible bytes at memory speed, to load the registry alone.
struct NoiseBlob {
    size: u64,
    seed: u64,
}

impl BlobSource for NoiseBlob {
    type Output = ();
    fn produce(&self, sink: &mut ChannelSink) -> Result<(String, ()), Error> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut x = self.seed | 1;
        let mut left = self.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            for c in buf[..n].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
            h.update(&buf[..n]);
            sink.write_all(&buf[..n])
                .map_err(|e| Error::io("upload stream", e))?;
            left -= n as u64;
        }
        Ok((format!("sha256:{}", hex::encode(h.finalize())), ()))
    }
}

/// Runs every stage against `image`'s registry. `archive` is an existing checkpoint.
pub async fn run(
    archive_path: &Path,
    image: &Reference,
    opts: &PushOptions,
) -> Result<BenchReport, Error> {
    let archive = open_archive(archive_path).await?;
    let total = archive.total_size();
    let mut stages = Vec::new();

    let a = archive.clone();
    stages.push(
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let n = for_each_file(&a, |_| {})?;
            Ok::<_, Error>(Stage::new("read", n, t))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??,
    );
    let a = archive.clone();
    stages.push(
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let mut h = Sha256::new();
            let n = for_each_file(&a, |b| h.update(b))?;
            let _ = h.finalize();
            Ok::<_, Error>(Stage::new("hash (sha256, 1 thread)", n, t))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??,
    );
    let (a, c) = (archive.clone(), opts.compression);
    stages.push(
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let mut null = Null(0);
            let n = match c {
                Compression::Zstd { level, workers } => {
                    let mut enc = zstd::stream::write::Encoder::new(&mut null, level)
                        .map_err(|e| Error::io("zstd", e))?;
                    if workers > 0 {
                        enc.multithread(workers).map_err(|e| Error::io("zstd", e))?;
                    }
                    let mut err = None;
                    let n = for_each_file(&a, |b| {
                        if let Err(e) = enc.write_all(b) {
                            err.get_or_insert(e);
                        }
                    })?;
                    enc.finish().map_err(|e| Error::io("zstd", e))?;
                    if let Some(e) = err {
                        return Err(Error::io("zstd", e));
                    }
                    n
                }
                _ => for_each_file(&a, |b| {
                    let _ = null.write(b);
                })?,
            };
            Ok::<_, Error>(Stage::new("compress", n, t))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??,
    );

    // The whole encoder, all layers at once, as a push runs it.
    let t = Instant::now();
    let mut encoders = Vec::new();
    for plan in plan_layers(&archive, opts.layers.max(1)) {
        let (a, c) = (archive.clone(), opts.compression);
        encoders.push(tokio::task::spawn_blocking(move || {
            encode_layer(&a, &plan, &c, Null(0)).map(|d| d.size)
        }));
    }
    let mut compressed = 0;
    for e in encoders {
        compressed += e.await.map_err(|e| Error::Internal(e.to_string()))??;
    }
    stages.push(Stage::new(
        "encode (tar+compress+2 digests, all layers)",
        total,
        t,
    ));

    // Registry ingest alone: as many streams as layers, as many bytes as the encoder made.
    let client = RegistryClient::connect(image, opts.client.clone(), Access::Push).await?;
    let streams = opts.parallel.max(1) as u64;
    let progress = Progress::new();
    progress.set_layers(&vec![compressed / streams; streams as usize]);
    let t = Instant::now();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    let uploads = (0..streams).map(|i| {
        let blob = Arc::new(NoiseBlob {
            size: compressed / streams,
            seed: seed.wrapping_add(i * 0x9E37_79B9),
        });
        let (client, progress) = (&client, &progress);
        async move { upload_blob(client, blob, i as usize, progress).await }
    });
    for r in futures::future::join_all(uploads).await {
        r?;
    }
    stages.push(Stage::new(
        "upload (registry ingest)",
        progress.snapshot().wire_bytes,
        t,
    ));

    let t = Instant::now();
    let pushed = push_archive(archive.clone(), image, opts, &Progress::new()).await?;
    stages.push(Stage::new("end to end (push)", total, t));
    Ok(BenchReport {
        archive: archive_path.to_path_buf(),
        archive_bytes: total,
        layers: pushed.layers.len(),
        compression: format!("{:?}", opts.compression),
        compressed_bytes: compressed,
        stages,
        image: pushed.image,
        digest: pushed.digest,
    })
}
