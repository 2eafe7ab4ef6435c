//! Bridges between the synchronous encoder/decoder threads and async sockets: a bounded
//! channel of byte chunks, so at most `depth × chunk` bytes of a stream are in memory.

use std::io::{self, Write};

use ms2m_image_format::{ChunkSink, ChunkSource};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// Size of the chunks handed to the socket: big enough to amortise the channel hop,
/// small enough that a few in flight per layer stay well under the memory bound.
pub const CHUNK: usize = 256 * 1024;
/// Chunks in flight per stream (4 MiB): on a busy 2-core node a shallower channel makes
/// the encoder and the socket wait for each other (8 chunks measured ≈25 % slower).
pub const DEPTH: usize = 16;

/// Sending end, used from a blocking thread: a [`ChunkSink`] for the encoder (its
/// blocks pass on without a copy) and a `Write` for other producers. Discards the first
/// `skip` bytes (resuming an upload after re-encoding a deterministic stream).
pub struct ChannelSink {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    skip: u64,
}

impl ChannelSink {
    pub fn new(tx: mpsc::Sender<Bytes>, skip: u64) -> Self {
        Self {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
            skip,
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.push(chunk)
    }

    fn push(&self, chunk: Bytes) -> io::Result<()> {
        // blocking_send parks this (non-async) thread until the socket side catches up.
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "transfer stream closed"))
    }
}

impl ChunkSink for ChannelSink {
    fn send(&mut self, mut chunk: Bytes) -> io::Result<()> {
        self.send_buf()?;
        if self.skip > 0 {
            let n = self.skip.min(chunk.len() as u64) as usize;
            self.skip -= n as u64;
            bytes::Buf::advance(&mut chunk, n);
        }
        // Slices of at most CHUNK keep `DEPTH` chunks in flight the memory bound it is.
        while chunk.len() > CHUNK {
            self.push(chunk.split_to(CHUNK))?;
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.push(chunk)
    }
}

impl Write for ChannelSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut d = data;
        if self.skip > 0 {
            let n = (self.skip.min(d.len() as u64)) as usize;
            self.skip -= n as u64;
            d = &d[n..];
        }
        while !d.is_empty() {
            let room = CHUNK - self.buf.len();
            let n = room.min(d.len());
            self.buf.extend_from_slice(&d[..n]);
            d = &d[n..];
            if self.buf.len() >= CHUNK {
                self.send_buf()?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// What a downloader sends: data, or the reason the stream cannot go on.
pub enum ChannelItem {
    Data(Bytes),
    Error(String),
}

/// Receiving end as the image-format decoder's chunk source, used from a blocking
/// thread: the decoder hashes and decompresses the network's own buffers in place. The
/// end of the layer is the sender being dropped; a failed download is an error marker
/// (see `ChannelItem`), after which every call fails.
pub struct ChannelChunks {
    rx: mpsc::Receiver<ChannelItem>,
    failed: Option<String>,
}

impl ChannelChunks {
    pub fn new(rx: mpsc::Receiver<ChannelItem>) -> Self {
        Self { rx, failed: None }
    }
}

impl ChunkSource for ChannelChunks {
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.clone()));
        }
        match self.rx.blocking_recv() {
            Some(ChannelItem::Data(b)) => Ok(Some(b)),
            Some(ChannelItem::Error(e)) => {
                self.failed = Some(e.clone());
                Err(io::Error::other(e))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_chunks_skips_and_flushes() {
        let (tx, mut rx) = mpsc::channel(64);
        let data: Vec<u8> = (0..(CHUNK * 2 + 10)).map(|i| i as u8).collect();
        let writer = std::thread::spawn(move || {
            let mut s = ChannelSink::new(tx, 5);
            s.write_all(&data).unwrap();
            s.flush().unwrap();
        });
        writer.join().unwrap();
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            assert!(c.len() <= CHUNK);
            got.extend_from_slice(&c);
        }
        let want: Vec<u8> = (0..(CHUNK * 2 + 10)).skip(5).map(|i| i as u8).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sink_passes_chunks_on_in_slices_after_written_bytes() {
        let (tx, mut rx) = mpsc::channel(64);
        let block: Vec<u8> = (0..(CHUNK * 2 + 100)).map(|i| (i % 251) as u8).collect();
        let b = Bytes::from(block.clone());
        std::thread::spawn(move || {
            let mut s = ChannelSink::new(tx, 3);
            s.write_all(b"ab").unwrap();
            s.send(Bytes::from_static(b"cd")).unwrap();
            s.send(b).unwrap();
            s.send(Bytes::new()).unwrap();
        })
        .join()
        .unwrap();
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            assert!(!c.is_empty() && c.len() <= CHUNK);
            got.extend_from_slice(&c);
        }
        let mut want = b"abcd".to_vec();
        want.extend_from_slice(&block);
        assert_eq!(got, want[3..]);
    }

    #[test]
    fn sink_reports_a_closed_stream() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let r = std::thread::spawn(move || {
            let mut s = ChannelSink::new(tx, 0);
            s.write_all(&vec![0u8; CHUNK * 2])
        })
        .join()
        .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn chunks_in_order_then_errors_stick() {
        let (tx, rx) = mpsc::channel(8);
        tx.try_send(ChannelItem::Data(Bytes::from_static(b"hello ")))
            .unwrap();
        tx.try_send(ChannelItem::Data(Bytes::from_static(b"world")))
            .unwrap();
        tx.try_send(ChannelItem::Error("boom".into())).unwrap();
        drop(tx);
        let mut c = ChannelChunks::new(rx);
        std::thread::spawn(move || {
            assert_eq!(c.next_chunk().unwrap().unwrap(), &b"hello "[..]);
            assert_eq!(c.next_chunk().unwrap().unwrap(), &b"world"[..]);
            assert!(c.next_chunk().unwrap_err().to_string().contains("boom"));
            assert!(c.next_chunk().unwrap_err().to_string().contains("boom"));
        })
        .join()
        .unwrap();

        let (tx, rx) = mpsc::channel::<ChannelItem>(1);
        drop(tx);
        let mut c = ChannelChunks::new(rx);
        std::thread::spawn(move || assert!(c.next_chunk().unwrap().is_none()))
            .join()
            .unwrap();
    }
}
