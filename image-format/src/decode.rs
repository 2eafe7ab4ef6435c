//! The verifying decoder: layer bytes → digest check → decompress → diff_id check →
//! hostile-entry rules → files inside a [`Staging`] directory, renamed into place only
//! when everything verified.
//!
//! Layers are parsed with the `tar` crate in raw mode: PAX and GNU long-name meta entries
//! are handled here, so their size is checked against the limit before any of it is
//! buffered (a compressed layer can declare a gigabyte-sized header in a few kilobytes).
//! A PAX `size` that differs from the header's is refused: our encoder never writes one
//! (it uses GNU base-256 sizes), and honouring it would need the parser's cooperation.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};

use tracing::debug;

use crate::archive::EntryKind;
use crate::compression::CompressionKind;
use crate::digest::{ChunkReader, ChunkSource, OffloadHashingReader};
use crate::encode::{LayerDescriptor, LayerHashes};
use crate::error::{Error, IoContext, Result};
use crate::staging::{Item, Staging};
use crate::validate;

const COPY_BUF: usize = 1 << 20;
/// Read-side buffer in front of a decompressor (libzstd's recommended input size).
const IN_BUF: usize = 128 * 1024;

/// Where a layer's compressed bytes come from.
enum Input<'a, R> {
    /// Any reader: hashed through a copy into pooled chunks.
    Reader(R),
    /// Chunks already in memory: hashed and decompressed in place.
    Chunks(Box<dyn ChunkSource + 'a>),
}

/// The compressed side of a layer, buffered and hashed; `finish` says what it hashed to
/// (read it to its end first).
trait HashedInput: BufRead {
    fn finish(self: Box<Self>) -> io::Result<(String, u64)>;
}

impl<R: Read> HashedInput for BufReader<OffloadHashingReader<R>> {
    fn finish(self: Box<Self>) -> io::Result<(String, u64)> {
        let (_, digest, n) = self.into_inner().finish()?;
        Ok((digest, n))
    }
}

impl<S: ChunkSource> HashedInput for ChunkReader<S> {
    fn finish(self: Box<Self>) -> io::Result<(String, u64)> {
        ChunkReader::finish(*self)
    }
}

/// What a layer must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedLayer {
    pub media_type: String,
    /// Compressed digest (`sha256:<hex>`).
    pub digest: String,
    /// Compressed size.
    pub size: u64,
    /// Uncompressed digest from the config's `rootfs.diff_ids`: checked when given,
    /// not computed when `None`.
    pub diff_id: Option<String>,
}

impl ExpectedLayer {
    /// From a manifest layer descriptor and the matching config diff_id.
    pub fn new(descriptor: &oci_spec::image::Descriptor, diff_id: Option<&str>) -> Self {
        ExpectedLayer {
            media_type: descriptor.media_type().to_string(),
            digest: descriptor.digest().to_string(),
            size: descriptor.size(),
            diff_id: diff_id.map(str::to_owned),
        }
    }
}

impl From<&LayerDescriptor> for ExpectedLayer {
    fn from(d: &LayerDescriptor) -> Self {
        ExpectedLayer {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            // Empty: encoded with `LayerHashes::BlobOnly`, nothing to compare.
            diff_id: (!d.diff_id.is_empty()).then(|| d.diff_id.clone()),
        }
    }
}

/// What one layer unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerStats {
    pub entries: usize,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

/// Unpacks one layer into the staging directory, verifying compressed digest and size
/// and the diff_id while streaming. Any error marks the staging as failed (commit is
/// then refused). Safe to call from several threads on the same `Staging`.
pub fn unpack_layer<R: Read>(
    reader: R,
    expected: &ExpectedLayer,
    staging: &Staging,
) -> Result<LayerStats> {
    let r = unpack_inner(Input::Reader(reader), expected, staging);
    if r.is_err() {
        staging.fail();
    }
    r
}

/// [`unpack_layer`] for bytes that arrive as chunks already in memory (a downloader's
/// buffers): they are hashed and decompressed without a copy on the way.
pub fn unpack_layer_chunks<S: ChunkSource>(
    source: S,
    expected: &ExpectedLayer,
    staging: &Staging,
) -> Result<LayerStats> {
    let r = unpack_inner(
        Input::<io::Empty>::Chunks(Box::new(source)),
        expected,
        staging,
    );
    if r.is_err() {
        staging.fail();
    }
    r
}

fn media_kind(media_type: &str) -> Result<CompressionKind> {
    CompressionKind::from_media_type(media_type)
        .ok_or_else(|| Error::Image(format!("unsupported layer media type `{media_type}`")))
}

/// What the bytes of one layer turned out to be, before any comparison.
struct Read_ {
    /// Parse/unpack outcome: entries, diff_id, uncompressed size.
    inner: Result<(usize, String, u64)>,
    /// Whether the blob was read to its end.
    drained: io::Result<u64>,
    digest: String,
    size: u64,
}

fn read_layer<R: Read>(
    input: Input<'_, R>,
    kind: CompressionKind,
    hashes: LayerHashes,
    staging: &Staging,
) -> Read_ {
    // Both sha256 on helper threads, as in the encoder: this thread only decompresses,
    // parses and writes.
    let mut outer: Box<dyn HashedInput + '_> = match input {
        Input::Reader(r) => Box::new(BufReader::with_capacity(
            IN_BUF,
            OffloadHashingReader::new(r),
        )),
        Input::Chunks(c) => Box::new(ChunkReader::new(c)),
    };
    let inner = (|| -> Result<(usize, Option<(String, u64)>)> {
        if kind == CompressionKind::None {
            // The blob is the tar: one hash serves both digests.
            let entries = read_layer_tar(&mut *outer, staging)?;
            return Ok((entries, None));
        }
        let decompressed: Box<dyn Read + '_> = match kind {
            CompressionKind::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut *outer)
                    .ctx(|| "zstd decoder".into())?,
            ),
            CompressionKind::Gzip => Box::new(flate2::bufread::GzDecoder::new(&mut *outer)),
            CompressionKind::None => unreachable!("handled above"),
        };
        if hashes == LayerHashes::BlobOnly {
            let mut inner = CountingReader {
                inner: decompressed,
                count: 0,
            };
            let entries = read_layer_tar(&mut inner, staging)?;
            io::copy(&mut inner, &mut io::sink()).ctx(|| "layer: read to end".into())?;
            return Ok((entries, Some((String::new(), inner.count))));
        }
        let mut inner = OffloadHashingReader::new(decompressed);
        let entries = read_layer_tar(&mut inner, staging)?;
        // The tar parser stops at the first end block; the digest covers everything.
        io::copy(&mut inner, &mut io::sink()).ctx(|| "layer: read to end".into())?;
        let (_, diff_id, n) = inner.finish().ctx(|| "layer: hash".into())?;
        Ok((entries, Some((diff_id, n))))
    })();
    // Read the blob to its end even after an error: when the bytes are not the ones
    // the manifest names, that (not whatever the corruption made the parser trip
    // over) is the error to report.
    let mut drained = io::copy(&mut outer, &mut io::sink());
    let (digest, size) = match outer.finish() {
        Ok((d, n)) => (d, n),
        Err(e) => {
            drained = Err(e);
            (String::new(), 0)
        }
    };
    let inner = inner.map(|(entries, unpacked)| {
        let (diff_id, n) = unpacked.unwrap_or_else(|| (digest.clone(), size));
        (entries, diff_id, n)
    });
    Read_ {
        inner,
        drained,
        digest,
        size,
    }
}

fn unpack_inner<R: Read>(
    input: Input<'_, R>,
    expected: &ExpectedLayer,
    staging: &Staging,
) -> Result<LayerStats> {
    crate::digest::digest_hex(&expected.digest)?;
    let kind = media_kind(&expected.media_type)?;
    // The uncompressed sha256 is computed only to be checked: without an expected
    // diff_id it would cost ≈0.6 CPU s per GiB and verify nothing.
    let hashes = if expected.diff_id.is_some() {
        LayerHashes::BlobAndDiffId
    } else {
        LayerHashes::BlobOnly
    };
    let Read_ {
        inner,
        drained,
        digest,
        size,
    } = read_layer(input, kind, hashes, staging);
    let (entries, diff_id, uncompressed) = match inner {
        Ok(v) => v,
        Err(e) => {
            if drained.is_ok() && digest != expected.digest {
                return Err(Error::DigestMismatch {
                    what: "layer (compressed)",
                    expected: expected.digest.clone(),
                    actual: digest,
                });
            }
            return Err(e);
        }
    };
    drained.ctx(|| "layer: read to end".into())?;
    let actual = ExpectedLayer {
        media_type: expected.media_type.clone(),
        digest,
        size,
        diff_id: Some(diff_id),
    };
    check_layer(expected, &actual)?;
    debug!(digest = %expected.digest, entries, "layer verified");
    Ok(LayerStats {
        entries,
        compressed_size: size,
        uncompressed_size: uncompressed,
    })
}

/// Compares what a layer hashed to (`actual`, from the bytes) with what it should
/// (`expected`, from a manifest or the sender).
fn check_layer(expected: &ExpectedLayer, actual: &ExpectedLayer) -> Result<()> {
    if actual.digest != expected.digest {
        return Err(Error::DigestMismatch {
            what: "layer (compressed)",
            expected: expected.digest.clone(),
            actual: actual.digest.clone(),
        });
    }
    if actual.size != expected.size {
        return Err(Error::SizeMismatch {
            what: "layer",
            expected: expected.size,
            actual: actual.size,
        });
    }
    if actual.media_type != expected.media_type {
        return Err(Error::Image(format!(
            "layer {}: media type `{}`, announced `{}`",
            expected.digest, actual.media_type, expected.media_type
        )));
    }
    if let (Some(want), Some(got)) = (&expected.diff_id, &actual.diff_id)
        && want != got
    {
        return Err(Error::DigestMismatch {
            what: "layer diff_id (uncompressed)",
            expected: want.clone(),
            actual: got.clone(),
        });
    }
    Ok(())
}

/// Layers whose digests are known only once their last byte has been read (Direct mode:
/// the sender's encoder learns them at the end of the stream). The hostile-entry rules
/// apply while streaming as for [`unpack_layer`]; the digests are checked afterwards by
/// [`Staging::confirm_layer`], and [`Staging::commit`] refuses while any layer unpacked
/// this way is unconfirmed, so unverified bytes are never committed.
impl Staging {
    /// Unpacks a layer of `media_type` into the staging directory without knowing its
    /// digests, and returns what they are (digest, size, and the diff_id unless `hashes`
    /// is [`LayerHashes::BlobOnly`]) with the unpack figures. Call
    /// [`Staging::confirm_layer`] with the announced digests before committing. Any
    /// error marks the staging as failed.
    pub fn unpack_layer_unverified<R: Read>(
        &self,
        reader: R,
        media_type: &str,
        hashes: LayerHashes,
    ) -> Result<(ExpectedLayer, LayerStats)> {
        self.unverified(Input::Reader(reader), media_type, hashes)
    }

    /// [`Staging::unpack_layer_unverified`] for chunks already in memory (a network
    /// receiver's buffers), hashed and decompressed without a copy on the way.
    pub fn unpack_layer_chunks_unverified<S: ChunkSource>(
        &self,
        source: S,
        media_type: &str,
        hashes: LayerHashes,
    ) -> Result<(ExpectedLayer, LayerStats)> {
        self.unverified(
            Input::<io::Empty>::Chunks(Box::new(source)),
            media_type,
            hashes,
        )
    }

    fn unverified<R: Read>(
        &self,
        input: Input<'_, R>,
        media_type: &str,
        hashes: LayerHashes,
    ) -> Result<(ExpectedLayer, LayerStats)> {
        self.begin_unverified();
        let r = (|| {
            let kind = media_kind(media_type)?;
            let Read_ {
                inner,
                drained,
                digest,
                size,
            } = read_layer(input, kind, hashes, self);
            let (entries, diff_id, uncompressed) = inner?;
            drained.ctx(|| "layer: read to end".into())?;
            Ok((
                ExpectedLayer {
                    media_type: media_type.to_owned(),
                    digest,
                    size,
                    diff_id: (!diff_id.is_empty()).then_some(diff_id),
                },
                LayerStats {
                    entries,
                    compressed_size: size,
                    uncompressed_size: uncompressed,
                },
            ))
        })();
        if r.is_err() {
            self.fail();
        }
        r
    }

    /// Checks a layer unpacked by [`Staging::unpack_layer_unverified`] (`actual`, as it
    /// returned it) against the digests announced for it. A mismatch marks the staging
    /// as failed; a match releases the layer for commit.
    pub fn confirm_layer(&self, announced: &ExpectedLayer, actual: &ExpectedLayer) -> Result<()> {
        let r = crate::digest::digest_hex(&announced.digest)
            .map(drop)
            .and_then(|()| check_layer(announced, actual));
        match &r {
            Ok(()) => {
                self.end_unverified();
                debug!(digest = %announced.digest, "layer verified after unpacking");
            }
            Err(_) => self.fail(),
        }
        r
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Pending meta entries for the next real entry.
#[derive(Default)]
struct Meta {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

fn read_layer_tar<R: Read>(reader: R, staging: &Staging) -> Result<usize> {
    let limits = &staging.limits;
    let mut ar = tar::Archive::new(reader);
    let iter = ar.entries().ctx(|| "layer: read tar".into())?.raw(true);
    let mut meta = Meta::default();
    let mut in_layer: HashMap<String, ()> = HashMap::new();
    let mut count = 0usize;
    let mut buf = vec![0u8; COPY_BUF];
    for (n, item) in iter.enumerate() {
        let mut entry =
            item.map_err(|e| Error::malformed(format!("<layer entry #{n}>"), e.to_string()))?;
        let ty = entry.header().entry_type();
        let declared = entry.size();
        let shown = || String::from_utf8_lossy(&entry_path_guess(&meta)).into_owned();
        if matches!(
            ty,
            tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            if declared > limits.max_meta_header {
                return Err(Error::limit(
                    format!("<meta header before layer entry #{}> {}", count, shown()),
                    format!(
                        "meta header of {declared} bytes, limit {}",
                        limits.max_meta_header
                    ),
                ));
            }
            let mut v = Vec::with_capacity(declared as usize);
            entry
                .read_to_end(&mut v)
                .ctx(|| "layer: read meta header".into())?;
            let slot = match ty {
                tar::EntryType::XHeader => &mut meta.pax,
                tar::EntryType::GNULongName => {
                    trim_nul(&mut v);
                    &mut meta.long_name
                }
                tar::EntryType::GNULongLink => {
                    trim_nul(&mut v);
                    &mut meta.long_link
                }
                _ => continue,
            };
            if slot.replace(v).is_some() {
                return Err(Error::malformed(
                    format!("<layer entry #{count}>"),
                    "two meta headers of the same kind for one entry",
                ));
            }
            continue;
        }

        let pending = std::mem::take(&mut meta);
        let header = entry.header();
        let mut raw_path = header.path_bytes().into_owned();
        let mut raw_link = header.link_name_bytes().map(|c| c.into_owned());
        if let Some(v) = pending.long_name {
            raw_path = v;
        }
        if let Some(v) = pending.long_link {
            raw_link = Some(v);
        }
        let mut uid = header
            .uid()
            .map_err(|e| Error::malformed(String::from_utf8_lossy(&raw_path), e.to_string()))?;
        let mut gid = header
            .gid()
            .map_err(|e| Error::malformed(String::from_utf8_lossy(&raw_path), e.to_string()))?;
        let mut pax_size = None;
        if let Some(pax) = &pending.pax {
            for ext in tar::PaxExtensions::new(pax) {
                let ext = ext.map_err(|e| {
                    Error::malformed(String::from_utf8_lossy(&raw_path), format!("PAX: {e}"))
                })?;
                match ext.key_bytes() {
                    b"path" => raw_path = ext.value_bytes().to_vec(),
                    b"linkpath" => raw_link = Some(ext.value_bytes().to_vec()),
                    b"uid" => uid = parse_pax_num(ext.value_bytes(), &raw_path)?,
                    b"gid" => gid = parse_pax_num(ext.value_bytes(), &raw_path)?,
                    b"size" => pax_size = Some(parse_pax_num(ext.value_bytes(), &raw_path)?),
                    _ => {}
                }
            }
        }
        let Some(path) = validate::normalize_path(&raw_path, limits)? else {
            if ty.is_dir() {
                continue;
            }
            return Err(Error::hostile(
                String::from_utf8_lossy(&raw_path),
                "the layer root is not a directory",
            ));
        };
        if pax_size.is_some_and(|s| s != declared) {
            return Err(Error::malformed(
                &path,
                "PAX size override is not supported",
            ));
        }
        let mode = header
            .mode()
            .map_err(|e| Error::malformed(&path, e.to_string()))?
            & 0o7777;
        let kind = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => {
                let t =
                    raw_link.ok_or_else(|| Error::malformed(&path, "symlink without target"))?;
                EntryKind::Symlink {
                    target: validate::check_symlink_target(&path, &t, limits)?,
                }
            }
            tar::EntryType::Link => {
                let t =
                    raw_link.ok_or_else(|| Error::malformed(&path, "hard link without target"))?;
                let target = validate::normalize_path(&t, limits)
                    .map_err(|e| Error::hostile(&path, format!("hard link target: {e}")))?
                    .ok_or_else(|| Error::hostile(&path, "hard link to the layer root"))?;
                EntryKind::Hardlink { target }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(Error::hostile(&path, "device node"));
            }
            tar::EntryType::Fifo => return Err(Error::hostile(&path, "fifo")),
            tar::EntryType::GNUSparse => {
                return Err(Error::hostile(&path, "GNU sparse file (unsupported)"));
            }
            other => {
                return Err(Error::hostile(
                    &path,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ));
            }
        };
        if in_layer.insert(path.clone(), ()).is_some() {
            return Err(Error::hostile(&path, "duplicate entry in layer"));
        }
        let size = if kind == EntryKind::File { declared } else { 0 };
        let item = Item {
            path: &path,
            kind: &kind,
            mode,
            uid,
            gid,
            size,
        };
        staging.write(item, &mut entry, &mut buf)?;
        count += 1;
    }
    if meta.long_name.is_some() || meta.long_link.is_some() || meta.pax.is_some() {
        return Err(Error::malformed(
            "<end of layer>",
            "meta header without a following entry",
        ));
    }
    Ok(count)
}

fn entry_path_guess(meta: &Meta) -> Vec<u8> {
    meta.long_name.clone().unwrap_or_default()
}

fn trim_nul(v: &mut Vec<u8>) {
    while v.last() == Some(&0) {
        v.pop();
    }
}

fn parse_pax_num(v: &[u8], path: &[u8]) -> Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| Error::malformed(String::from_utf8_lossy(path), "bad PAX number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

    fn one_file_layer() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "pages-1.img", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn staging(dir: &std::path::Path, name: &str) -> Staging {
        let mut s = Staging::new(dir.join(name)).unwrap();
        s.set_preserve_ownership(false);
        s
    }

    #[test]
    fn deferred_digest_commits_only_after_confirmation() {
        let dir = tempfile::tempdir().unwrap();
        let layer = one_file_layer();

        let s = staging(dir.path(), "unconfirmed");
        s.unpack_layer_unverified(&layer[..], TAR, LayerHashes::BlobAndDiffId)
            .unwrap();
        let e = s.commit().unwrap_err();
        assert!(e.to_string().contains("not verified"), "{e}");

        let s = staging(dir.path(), "ok");
        let (actual, stats) = s
            .unpack_layer_unverified(&layer[..], TAR, LayerHashes::BlobAndDiffId)
            .unwrap();
        assert_eq!(actual.digest, crate::digest::sha256_digest(&layer));
        assert_eq!(actual.size, layer.len() as u64);
        assert_eq!(stats.entries, 1);
        s.confirm_layer(&actual.clone(), &actual).unwrap();
        let out = s.commit().unwrap();
        assert_eq!(std::fs::read(out.join("pages-1.img")).unwrap(), b"hello");

        let s = staging(dir.path(), "lied");
        let (actual, _) = s
            .unpack_layer_unverified(&layer[..], TAR, LayerHashes::BlobAndDiffId)
            .unwrap();
        let mut announced = actual.clone();
        announced.digest = format!("sha256:{}", "ab".repeat(32));
        let e = s.confirm_layer(&announced, &actual).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        assert!(s.commit().is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["ok".to_string()]);
    }

    /// Chunks already in memory go through the same checks as a reader: a zstd and a
    /// plain layer in uneven chunks unpack and verify (diff_id included), and one
    /// flipped byte is a digest error with nothing committed.
    #[test]
    fn chunked_layers_verify_like_read_ones() {
        struct Chunks(Vec<bytes::Bytes>);
        impl ChunkSource for Chunks {
            fn next_chunk(&mut self) -> io::Result<Option<bytes::Bytes>> {
                Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
            }
        }
        let cut = |b: &[u8]| {
            Chunks(
                b.chunks(3)
                    .take(2)
                    .chain([&b[6.min(b.len())..]])
                    .map(bytes::Bytes::copy_from_slice)
                    .collect(),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let tar = one_file_layer();
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        let diff_id = crate::digest::sha256_digest(&tar);
        for (name, blob, media_type) in [
            ("zstd", &zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
            ("tar", &tar, TAR),
        ] {
            let expected = ExpectedLayer {
                media_type: media_type.into(),
                digest: crate::digest::sha256_digest(blob),
                size: blob.len() as u64,
                diff_id: Some(diff_id.clone()),
            };
            let s = staging(dir.path(), name);
            let stats = unpack_layer_chunks(cut(blob), &expected, &s).unwrap();
            assert_eq!(stats.compressed_size, blob.len() as u64, "{name}");
            let out = s.commit().unwrap();
            assert_eq!(std::fs::read(out.join("pages-1.img")).unwrap(), b"hello");

            let mut bad = blob.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let s = staging(dir.path(), &format!("{name}-bad"));
            let e = unpack_layer_chunks(cut(&bad), &expected, &s).unwrap_err();
            assert!(matches!(e, Error::DigestMismatch { .. }), "{name}: {e}");
            assert!(s.commit().is_err());
            assert!(!dir.path().join(format!("{name}-bad")).exists());
        }
    }
}
