//! sha256 while streaming, on either side of a compressor.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc::{SyncSender, sync_channel};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::pool::BufferPool;

/// Formats a finished hash as an OCI digest string.
pub(crate) fn format_digest(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// sha256 of a byte slice as an OCI digest string.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format_digest(h)
}

/// Checks that a digest is `sha256:` + 64 lowercase hex digits and returns the hex part
/// (safe to use as a file name).
pub fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::Image(format!("unsupported digest `{digest}` (only sha256)")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::Image(format!("malformed digest `{digest}`")));
    }
    Ok(hex)
}

/// Chunk handed to the hashing thread.
const OFFLOAD_CHUNK: usize = 1 << 20;
/// Chunks waiting for the hashing thread (bounds memory to a few MiB whatever the
/// stream size).
const OFFLOAD_CHUNKS: usize = 4;

/// Hashes and counts everything written through it, with the sha256 on a
/// [`HashThread`]: the writer's own thread only copies, so on a 2-core machine hashing
/// overlaps with reading and compressing instead of adding to them. Bytes travel in
/// pooled 1 MiB chunks, so memory stays bounded; the wrapped writer stays on the
/// caller's thread and needs no `Send`.
pub(crate) struct OffloadHashingWriter<W> {
    inner: W,
    pool: BufferPool,
    chunk: Vec<u8>,
    hash: HashThread,
}

impl<W: Write> OffloadHashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        let pool = BufferPool::new(OFFLOAD_CHUNK, OFFLOAD_CHUNKS + 2);
        let mut chunk = pool.take();
        chunk.clear();
        OffloadHashingWriter {
            inner,
            pool,
            chunk,
            hash: HashThread::spawn(OFFLOAD_CHUNKS),
        }
    }

    fn ship(&mut self) -> io::Result<()> {
        let mut next = self.pool.take();
        next.clear();
        let full = std::mem::replace(&mut self.chunk, next);
        self.hash.feed(self.pool.share(full))
    }

    fn hash(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = (OFFLOAD_CHUNK - self.chunk.len()).min(buf.len());
            self.chunk.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.chunk.len() == OFFLOAD_CHUNK {
                self.ship()?;
            }
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> io::Result<(W, String, u64)> {
        if !self.chunk.is_empty() {
            self.ship()?;
        }
        let (digest, count) = self.hash.finish()?;
        Ok((self.inner, digest, count))
    }
}

fn hasher_gone() -> io::Error {
    io::Error::other("hashing thread stopped")
}

impl<W: Write> Write for OffloadHashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash(&buf[..n])?;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.hash(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes and counts everything read through it, with the sha256 on a helper thread
/// (the decoder's counterpart of [`OffloadHashingWriter`]): the reading thread only
/// copies each chunk once more, so decompressing, unpacking and the two digests of a
/// layer use two cores instead of one.
pub(crate) struct OffloadHashingReader<R> {
    inner: R,
    hasher: OffloadHashingWriter<io::Sink>,
}

impl<R: Read> OffloadHashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        OffloadHashingReader {
            inner,
            hasher: OffloadHashingWriter::new(io::sink()),
        }
    }

    pub(crate) fn finish(self) -> io::Result<(R, String, u64)> {
        let (_, digest, n) = self.hasher.finish()?;
        Ok((self.inner, digest, n))
    }
}

impl<R: Read> Read for OffloadHashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.hash(&buf[..n])?;
        Ok(n)
    }
}

/// A layer's bytes as chunks already in memory, in order: a network receiver's own
/// buffers. Read through [`ChunkReader`], they are hashed and decompressed without
/// being copied on the way.
pub trait ChunkSource {
    /// The next chunk; `Ok(None)` at the end of the layer.
    fn next_chunk(&mut self) -> io::Result<Option<bytes::Bytes>>;
}

impl<S: ChunkSource + ?Sized> ChunkSource for Box<S> {
    fn next_chunk(&mut self) -> io::Result<Option<bytes::Bytes>> {
        (**self).next_chunk()
    }
}

/// sha256 of a sequence of shared chunks, on a thread of its own: each chunk is a
/// reference-counted handle to the producer's buffer, so nothing is copied for the hash.
/// At most `depth` chunks wait for it before `feed` blocks, so memory stays bounded.
pub(crate) struct HashThread {
    tx: Option<SyncSender<bytes::Bytes>>,
    handle: Option<std::thread::JoinHandle<Sha256>>,
    count: u64,
}

impl HashThread {
    pub(crate) fn spawn(depth: usize) -> Self {
        let (tx, rx) = sync_channel::<bytes::Bytes>(depth);
        let handle = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for chunk in rx {
                h.update(&chunk);
            }
            h
        });
        HashThread {
            tx: Some(tx),
            handle: Some(handle),
            count: 0,
        }
    }

    pub(crate) fn feed(&mut self, chunk: bytes::Bytes) -> io::Result<()> {
        self.count += chunk.len() as u64;
        self.tx
            .as_ref()
            .ok_or_else(hasher_gone)?
            .send(chunk)
            .map_err(|_| hasher_gone())
    }

    /// The digest and size of everything fed.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        drop(self.tx.take());
        let hasher = self
            .handle
            .take()
            .ok_or_else(hasher_gone)?
            .join()
            .map_err(|_| hasher_gone())?;
        Ok((format_digest(hasher), self.count))
    }
}

/// Chunks handed to the hashing thread before the reader waits for it.
const CHUNKS_IN_FLIGHT: usize = 32;

/// `BufRead` over a [`ChunkSource`] that hashes every chunk on a [`HashThread`]: unlike
/// [`OffloadHashingReader`] nothing is copied for the hash, and a decompressor reading
/// through `fill_buf` decodes straight out of the receiver's buffers.
pub(crate) struct ChunkReader<S> {
    source: S,
    cur: bytes::Bytes,
    ended: bool,
    hash: HashThread,
}

impl<S: ChunkSource> ChunkReader<S> {
    pub(crate) fn new(source: S) -> Self {
        ChunkReader {
            source,
            cur: bytes::Bytes::new(),
            ended: false,
            hash: HashThread::spawn(CHUNKS_IN_FLIGHT),
        }
    }

    /// The digest and size of every byte the source gave (read the source to its end
    /// first).
    pub(crate) fn finish(self) -> io::Result<(String, u64)> {
        self.hash.finish()
    }
}

impl<S: ChunkSource> BufRead for ChunkReader<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.cur.is_empty() && !self.ended {
            match self.source.next_chunk()? {
                Some(chunk) => {
                    self.hash.feed(chunk.clone())?;
                    self.cur = chunk;
                }
                None => self.ended = true,
            }
        }
        Ok(&self.cur)
    }

    fn consume(&mut self, amt: usize) {
        bytes::Buf::advance(&mut self.cur, amt);
    }
}

impl<S: ChunkSource> Read for ChunkReader<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloaded_hash_matches() {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = OffloadHashingWriter::new(Vec::new());
        for piece in data.chunks(777_777) {
            w.write_all(piece).unwrap();
        }
        let (out, d, n) = w.finish().unwrap();
        assert_eq!(out, data);
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, sha256_digest(&data));
    }

    #[test]
    fn offloaded_reader_hash_matches() {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let mut r = OffloadHashingReader::new(&data[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let (_, d, n) = r.finish().unwrap();
        assert_eq!(out, data);
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, sha256_digest(&data));
    }

    #[test]
    fn chunk_reader_hashes_what_it_hands_out() {
        struct Chunks(std::vec::IntoIter<bytes::Bytes>);
        impl ChunkSource for Chunks {
            fn next_chunk(&mut self) -> io::Result<Option<bytes::Bytes>> {
                Ok(self.0.next())
            }
        }
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 17 % 251) as u8).collect();
        // Uneven chunks, an empty one among them.
        let mut chunks = Vec::new();
        let mut at = 0;
        for (i, size) in [1usize, 0, 7, 65536, 1 << 20].iter().cycle().enumerate() {
            if at >= data.len() || i > 10_000 {
                break;
            }
            let end = (at + size).min(data.len());
            chunks.push(bytes::Bytes::copy_from_slice(&data[at..end]));
            at = end;
        }
        let mut r = ChunkReader::new(Chunks(chunks.into_iter()));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let (d, n) = r.finish().unwrap();
        assert_eq!(out, data);
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, sha256_digest(&data));
    }

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut w = OffloadHashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (v, d, n) = w.finish().unwrap();
        assert_eq!(v, b"abc");
        assert_eq!(n, 3);
        assert_eq!(d, sha256_digest(b"abc"));
        assert!(digest_hex(&d).is_ok());
        assert!(digest_hex("sha256:../../etc/passwd").is_err());
        assert!(digest_hex("md5:abc").is_err());
    }
}
