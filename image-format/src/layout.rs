//! OCI image layout directories: write one from an archive, read one back into a tree.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use tracing::info;

use crate::archive::Archive;
use crate::compression::Compression;
use crate::decode::{ExpectedLayer, unpack_layer};
use crate::digest::{digest_hex, sha256_digest};
use crate::encode::{LayerDescriptor, encode_layer};
use crate::error::{Error, IoContext, Result};
use crate::image::{Blob, CheckpointImage, ImageOptions, build_image};
use crate::plan::{plan_layers, plan_split_layers};
use crate::staging::Staging;

/// Largest JSON document (index, manifest, config) we read.
const MAX_JSON: u64 = 16 << 20;

/// How to encode an archive into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Number of whole-file layers (clamped to the number of files).
    pub layers: usize,
    pub compression: Compression,
    pub image: ImageOptions,
    /// Split layout ([`crate::plan_split_layers`]): large files cut across layers. Only
    /// the ms2m agent can restore such an image.
    pub split: bool,
}

impl Default for EncodeOptions {
    /// Two layers: the local registry ingests about twice as fast on two streams as on
    /// one, and more layers only help archives with several large files.
    fn default() -> Self {
        EncodeOptions {
            layers: 2,
            compression: Compression::default(),
            image: ImageOptions::default(),
            split: false,
        }
    }
}

/// Writes `archive` as an OCI image layout in `dir` (created if missing). Layers are
/// encoded in parallel threads, each into a temp file renamed to its digest;
/// `index.json` is written last.
pub fn write_oci_layout(
    archive: &Archive,
    dir: impl AsRef<Path>,
    opts: &EncodeOptions,
) -> Result<CheckpointImage> {
    let dir = dir.as_ref();
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).ctx(|| format!("create {}", blobs.display()))?;
    let plans = if opts.split {
        plan_split_layers(archive, opts.layers)
    } else {
        plan_layers(archive, opts.layers)
    };
    let layers: Vec<LayerDescriptor> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .map(|plan| {
                let blobs = &blobs;
                s.spawn(move || -> Result<LayerDescriptor> {
                    let tmp =
                        blobs.join(format!(".tmp-layer-{}-{}", plan.index, std::process::id()));
                    let file = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
                    let res = encode_layer(archive, plan, &opts.compression, file).and_then(|d| {
                        let hex = digest_hex(&d.digest)?;
                        let to = blobs.join(hex);
                        fs::rename(&tmp, &to).ctx(|| format!("rename to {}", to.display()))?;
                        Ok(d)
                    });
                    if res.is_err() {
                        let _ = fs::remove_file(&tmp);
                    }
                    res
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Image("layer encoder thread panicked".into())))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let image = build_image(archive.metadata(), &layers, &opts.image)?;
    for blob in [&image.config, &image.manifest, &image.index] {
        write_blob(&blobs, blob)?;
    }
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write_atomic(&dir.join("index.json"), &image.index.bytes)?;
    info!(
        dir = %dir.display(),
        layers = layers.len(),
        manifest = %image.manifest.digest(),
        "OCI layout written"
    );
    Ok(image)
}

fn write_blob(blobs: &Path, blob: &Blob) -> Result<()> {
    let hex = digest_hex(&blob.digest())?.to_owned();
    write_atomic(&blobs.join(hex), &blob.bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".tmp-{name}-{}", std::process::id()));
    let mut f = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("write {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).ctx(|| format!("rename to {}", path.display()))
}

/// Reads an OCI image layout (written by us or another tool), verifies every blob, and
/// unpacks the image's layers into `dest` (which must not exist) through a staging
/// directory: on any error nothing is left at `dest`.
pub fn read_oci_layout(dir: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<CheckpointImage> {
    let dir = dir.as_ref();
    let blobs = dir.join("blobs").join("sha256");
    let index_bytes = read_limited(&dir.join("index.json"))?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes)
        .map_err(|e| Error::Image(format!("index.json: {e}")))?;
    let index_blob = Blob {
        descriptor: Descriptor::new(
            MediaType::ImageIndex,
            index_bytes.len() as u64,
            crate::encode::parse_oci_digest(&sha256_digest(&index_bytes))?,
        ),
        bytes: index_bytes.clone(),
    };
    let mut manifest_desc = first_manifest(&index)?.clone();
    // One level of nesting: index.json → image index → manifest.
    if *manifest_desc.media_type() == MediaType::ImageIndex {
        let nested_bytes = read_blob(&blobs, &manifest_desc)?;
        let nested: ImageIndex = serde_json::from_slice(&nested_bytes)
            .map_err(|e| Error::Image(format!("nested index: {e}")))?;
        manifest_desc = first_manifest(&nested)?.clone();
    }
    if *manifest_desc.media_type() != MediaType::ImageManifest {
        return Err(Error::Image(format!(
            "expected an image manifest, found `{}`",
            manifest_desc.media_type()
        )));
    }
    let manifest_bytes = read_blob(&blobs, &manifest_desc)?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::Image(format!("manifest: {e}")))?;
    let config_bytes = read_blob(&blobs, manifest.config())?;
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|e| Error::Image(format!("config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Image(format!(
            "{} layers but {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let expected: Vec<ExpectedLayer> = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(d, id)| ExpectedLayer::new(d, Some(id)))
        .collect();
    let paths: Vec<PathBuf> = expected
        .iter()
        .map(|e| digest_hex(&e.digest).map(|h| blobs.join(h)))
        .collect::<Result<_>>()?;

    let staging = Staging::new(dest.as_ref())?;
    let stats = std::thread::scope(|s| {
        let handles: Vec<_> = expected
            .iter()
            .zip(&paths)
            .map(|(exp, path)| {
                let staging = &staging;
                s.spawn(move || -> Result<_> {
                    let f = File::open(path).ctx(|| format!("open {}", path.display()))?;
                    unpack_layer(BufReader::with_capacity(256 << 10, f), exp, staging)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Image("layer decoder thread panicked".into())))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    staging.commit()?;

    let layers = expected
        .iter()
        .zip(stats)
        .map(|(e, st)| LayerDescriptor {
            media_type: e.media_type.clone(),
            digest: e.digest.clone(),
            size: e.size,
            diff_id: e.diff_id.clone().unwrap_or_default(),
            uncompressed_size: st.uncompressed_size,
            annotations: Default::default(),
        })
        .collect();
    Ok(CheckpointImage {
        config: Blob {
            descriptor: manifest.config().clone(),
            bytes: config_bytes,
        },
        manifest: Blob {
            descriptor: manifest_desc,
            bytes: manifest_bytes,
        },
        index: index_blob,
        layers,
    })
}

fn first_manifest(index: &ImageIndex) -> Result<&Descriptor> {
    index
        .manifests()
        .first()
        .ok_or_else(|| Error::Image("index lists no manifest".into()))
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let f = File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut v = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut v)
        .ctx(|| format!("read {}", path.display()))?;
    if v.len() as u64 > MAX_JSON {
        return Err(Error::Image(format!(
            "{} is larger than {MAX_JSON} bytes",
            path.display()
        )));
    }
    Ok(v)
}

/// Reads a small blob and checks it against its descriptor.
fn read_blob(blobs: &Path, desc: &Descriptor) -> Result<Vec<u8>> {
    let digest = desc.digest().to_string();
    let hex = digest_hex(&digest)?;
    if desc.size() > MAX_JSON {
        return Err(Error::Image(format!(
            "blob {digest} is too large to be a document"
        )));
    }
    let bytes = read_limited(&blobs.join(hex))?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(Error::DigestMismatch {
            what: "blob",
            expected: digest,
            actual,
        });
    }
    if bytes.len() as u64 != desc.size() {
        return Err(Error::SizeMismatch {
            what: "blob",
            expected: desc.size(),
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}
