//! The streaming layer encoder: entries → tar → compressor → sink, both digests in one
//! pass, memory bounded by fixed buffers whatever the archive size.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::archive::{Archive, Entry, EntryKind};
use crate::compression::Compression;
use crate::digest::OffloadHashingWriter;
use crate::error::{Error, IoContext, Result};
use crate::plan::{FilePart, LayerPlan, split_part_name};

/// Copy buffer for file data: large enough that per-call overhead (hashing, compressor
/// bookkeeping) is negligible, small enough to be irrelevant for memory.
const COPY_BUF: usize = 1 << 20;

/// The result of encoding one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDescriptor {
    /// OCI layer media type.
    pub media_type: String,
    /// Digest of the compressed blob (`sha256:<hex>`).
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar stream (the config's `rootfs.diff_ids` entry);
    /// empty when encoded with [`LayerHashes::BlobOnly`].
    pub diff_id: String,
    /// Size of the uncompressed tar stream in bytes.
    pub uncompressed_size: u64,
    /// Layer descriptor annotations (empty for whole-file layers).
    pub annotations: BTreeMap<String, String>,
}

impl LayerDescriptor {
    /// The OCI descriptor of this layer, as it goes into the manifest.
    pub fn to_oci(&self) -> Result<oci_spec::image::Descriptor> {
        let mut d = oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::from(self.media_type.as_str()),
            self.size,
            parse_oci_digest(&self.digest)?,
        );
        if !self.annotations.is_empty() {
            d.set_annotations(Some(self.annotations.clone().into_iter().collect()));
        }
        Ok(d)
    }
}

pub(crate) fn parse_oci_digest(d: &str) -> Result<oci_spec::image::Digest> {
    crate::digest::digest_hex(d)?;
    d.parse()
        .map_err(|e| Error::Image(format!("digest `{d}`: {e}")))
}

/// Which digests the encoder computes besides the blob's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerHashes {
    /// Blob digest and diff_id: what an image needs (the config lists the diff_ids).
    BlobAndDiffId,
    /// Blob digest only, for streams that never become an image (Direct mode): the
    /// receiver checks the bytes it got against the digest of the bytes sent, and a
    /// second sha256 over the uncompressed stream would protect nothing more while
    /// costing ≈0.6 CPU s per GiB on each side.
    BlobOnly,
}

/// Encodes one layer into `sink` and returns its descriptor. `sink` receives the
/// compressed bytes; it is flushed but not closed.
pub fn encode_layer<W: Write>(
    archive: &Archive,
    plan: &LayerPlan,
    compression: &Compression,
    sink: W,
) -> Result<LayerDescriptor> {
    encode_layer_with(archive, plan, compression, LayerHashes::BlobAndDiffId, sink)
}

/// [`encode_layer`] choosing the digests. With [`LayerHashes::BlobOnly`] the
/// descriptor's `diff_id` is empty (unless the blob is the tar itself, when both are
/// the same hash anyway).
pub fn encode_layer_with<W: Write>(
    archive: &Archive,
    plan: &LayerPlan,
    compression: &Compression,
    hashes: LayerHashes,
    sink: W,
) -> Result<LayerDescriptor> {
    let diff_id_wanted = hashes == LayerHashes::BlobAndDiffId;
    // Both sha256 run on helper threads (one per stream): hashing costs ≈0.6–0.9 CPU s
    // per GiB here, as much as zstd -1 itself, so on two cores the encoder thread only
    // reads, frames and compresses while the digests are computed beside it.
    let (digest, size, diff_id, uncompressed_size) = std::thread::scope(|s| -> Result<_> {
        Ok(match *compression {
            Compression::Zstd { level, workers } => {
                let outer = OffloadHashingWriter::new(s, sink);
                let mut enc = zstd::stream::write::Encoder::new(outer, level)
                    .ctx(|| format!("zstd level {level}"))?;
                if workers > 0 {
                    enc.multithread(workers)
                        .ctx(|| format!("zstd with {workers} workers"))?;
                }
                let (enc, diff_id, usize_) = tar_through(s, enc, archive, plan, diff_id_wanted)?;
                let mut outer = enc.finish().ctx(|| "zstd: finish frame".into())?;
                outer.flush().ctx(|| "flush layer sink".into())?;
                let (_, digest, size) = outer.finish().ctx(|| "hash layer".into())?;
                (digest, size, diff_id, usize_)
            }
            Compression::Gzip { level } => {
                let outer = OffloadHashingWriter::new(s, sink);
                let enc =
                    flate2::write::GzEncoder::new(outer, flate2::Compression::new(level.min(9)));
                let (enc, diff_id, usize_) = tar_through(s, enc, archive, plan, diff_id_wanted)?;
                let mut outer = enc.finish().ctx(|| "gzip: finish stream".into())?;
                outer.flush().ctx(|| "flush layer sink".into())?;
                let (_, digest, size) = outer.finish().ctx(|| "hash layer".into())?;
                (digest, size, diff_id, usize_)
            }
            Compression::None => {
                // Uncompressed: the blob is the tar, one hash serves both digests.
                let mut w = OffloadHashingWriter::new(s, sink);
                write_tar(archive, plan, &mut w)?;
                w.flush().ctx(|| "flush layer sink".into())?;
                let (_, digest, size) = w.finish().ctx(|| "hash layer".into())?;
                (digest.clone(), size, digest, size)
            }
        })
    })?;
    debug!(
        layer = plan.index,
        %digest,
        size,
        uncompressed_size,
        "layer encoded"
    );
    let mut annotations = BTreeMap::new();
    if !plan.parts.is_empty() {
        let list: Vec<String> = plan
            .parts
            .iter()
            .map(|p| {
                let e = &archive.entries()[p.entry];
                format!(
                    "{}:{}/{}@{}+{}",
                    e.path, p.index, p.count, p.offset, p.length
                )
            })
            .collect();
        annotations.insert(
            crate::annotations::MS2M_SPLIT_PARTS.to_owned(),
            list.join(","),
        );
    }
    Ok(LayerDescriptor {
        media_type: compression.media_type().to_owned(),
        digest,
        size,
        diff_id,
        uncompressed_size,
        annotations,
    })
}

/// Writes the layer's tar into `enc` (a compressor), hashing the tar on the way when
/// the diff_id is wanted and only counting it otherwise. Returns the compressor, the
/// diff_id (empty when not computed) and the tar's size.
fn tar_through<'scope, 'env, W: Write>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    enc: W,
    archive: &Archive,
    plan: &LayerPlan,
    diff_id_wanted: bool,
) -> Result<(W, String, u64)> {
    if diff_id_wanted {
        let mut inner = OffloadHashingWriter::new(s, enc);
        write_tar(archive, plan, &mut inner)?;
        inner.finish().ctx(|| "hash layer".into())
    } else {
        let mut inner = CountingWriter {
            inner: enc,
            count: 0,
        };
        write_tar(archive, plan, &mut inner)?;
        Ok((inner.inner, String::new(), inner.count))
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.count += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the layer's tar stream: deterministic GNU headers, file data, end marker.
fn write_tar<W: Write>(archive: &Archive, plan: &LayerPlan, out: &mut W) -> Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    for &i in &plan.entries {
        let entry = archive
            .entries()
            .get(i)
            .ok_or_else(|| Error::Image(format!("layer plan refers to entry #{i}")))?;
        write_entry(archive, entry, out, &mut buf)?;
    }
    for part in &plan.parts {
        let entry = archive
            .entries()
            .get(part.entry)
            .ok_or_else(|| Error::Image(format!("layer plan refers to entry #{}", part.entry)))?;
        write_part(archive, entry, part, out, &mut buf)?;
    }
    out.write_all(&[0u8; 1024])
        .ctx(|| "tar: end of archive".into())?;
    Ok(())
}

fn write_entry<W: Write>(
    archive: &Archive,
    entry: &Entry,
    out: &mut W,
    buf: &mut [u8],
) -> Result<()> {
    let ctx = || format!("tar: write `{}`", entry.path);
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(0);
    let mut name = entry.path.clone();
    let (ty, size) = match &entry.kind {
        EntryKind::File => (tar::EntryType::Regular, entry.size),
        EntryKind::Dir => {
            name.push('/');
            (tar::EntryType::Directory, 0)
        }
        EntryKind::Symlink { target } => {
            write_long(out, tar::EntryType::GNULongLink, target)
                .map_err(|e| Error::io(ctx(), e))?;
            set_field(&mut header.as_old_mut().linkname, target);
            (tar::EntryType::Symlink, 0)
        }
        EntryKind::Hardlink { target } => {
            write_long(out, tar::EntryType::GNULongLink, target)
                .map_err(|e| Error::io(ctx(), e))?;
            set_field(&mut header.as_old_mut().linkname, target);
            (tar::EntryType::Link, 0)
        }
    };
    write_long(out, tar::EntryType::GNULongName, &name).map_err(|e| Error::io(ctx(), e))?;
    set_field(&mut header.as_old_mut().name, &name);
    header.set_entry_type(ty);
    header.set_size(size);
    header.set_cksum();
    out.write_all(header.as_bytes()).ctx(ctx)?;
    if size > 0 {
        let reader = archive.open_entry(entry)?;
        copy_data(reader, size, out, buf).map_err(|e| Error::io(ctx(), e))?;
    }
    Ok(())
}

/// One byte range of a file, as a regular entry with the part name.
fn write_part<W: Write>(
    archive: &Archive,
    entry: &Entry,
    part: &FilePart,
    out: &mut W,
    buf: &mut [u8],
) -> Result<()> {
    let name = split_part_name(&entry.path, part, entry.size);
    let ctx = || format!("tar: write `{name}`");
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(0);
    write_long(out, tar::EntryType::GNULongName, &name).map_err(|e| Error::io(ctx(), e))?;
    set_field(&mut header.as_old_mut().name, &name);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(part.length);
    header.set_cksum();
    out.write_all(header.as_bytes()).ctx(ctx)?;
    let reader = archive.open_entry_range(entry, part.offset, part.length)?;
    copy_data(reader, part.length, out, buf).map_err(|e| Error::io(ctx(), e))?;
    Ok(())
}

/// Copies exactly `size` bytes and the tar padding after them.
fn copy_data<R: Read, W: Write>(
    mut reader: R,
    size: u64,
    out: &mut W,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut left = size;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while encoding",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let pad = (512 - (size % 512) as usize) % 512;
    out.write_all(&[0u8; 512][..pad])
}

/// Emits a GNU long-name (`L`) or long-link (`K`) entry when `value` does not fit the
/// 100-byte header field.
fn write_long<W: Write>(out: &mut W, ty: tar::EntryType, value: &str) -> io::Result<()> {
    if value.len() < 100 {
        return Ok(());
    }
    let mut h = tar::Header::new_gnu();
    set_field(&mut h.as_old_mut().name, "././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(ty);
    let len = value.len() as u64 + 1;
    h.set_size(len);
    h.set_cksum();
    out.write_all(h.as_bytes())?;
    out.write_all(value.as_bytes())?;
    out.write_all(&[0])?;
    let pad = (512 - (len % 512) as usize) % 512;
    out.write_all(&[0u8; 512][..pad])
}

/// Copies as much of `value` as fits into a fixed header field, NUL-filling the rest.
fn set_field(field: &mut [u8], value: &str) {
    let b = value.as_bytes();
    let n = b.len().min(field.len());
    field[..n].copy_from_slice(&b[..n]);
    field[n..].fill(0);
}
