//! Where an encoder's output goes: owned chunks handed on without a copy.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};

/// Receives a layer's compressed bytes as owned chunks, in order. The encoder shares
/// its own buffers (one per compressed block, up to ≈1 MiB each), so a sink that passes
/// them on (to a socket, a channel) copies nothing. Chunks are recycled once dropped:
/// a sink should not hold more than a handful.
pub trait ChunkSink {
    fn send(&mut self, chunk: Bytes) -> io::Result<()>;
}

impl<S: ChunkSink + ?Sized> ChunkSink for &mut S {
    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        (**self).send(chunk)
    }
}

/// A `Write` as a [`ChunkSink`] (files, hashers, counting sinks).
pub(crate) struct WriteSink<W>(pub(crate) W);

impl<W: Write> ChunkSink for WriteSink<W> {
    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.0.write_all(&chunk)
    }
}

/// Size of the chunks [`ChunkWriter`] hands on.
const WRITER_CHUNK: usize = 1 << 20;

/// A [`ChunkSink`] as a `Write`, for the compressors that only write (gzip, libzstd's
/// multithreaded mode): buffers into 1 MiB chunks.
pub(crate) struct ChunkWriter<'a> {
    sink: &'a mut dyn ChunkSink,
    buf: BytesMut,
}

impl<'a> ChunkWriter<'a> {
    pub(crate) fn new(sink: &'a mut dyn ChunkSink) -> Self {
        ChunkWriter {
            sink,
            buf: BytesMut::new(),
        }
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(WRITER_CHUNK);
        }
        let n = (WRITER_CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == WRITER_CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.sink.send(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_writer_cuts_and_flushes() {
        let mut got = WriteSink(Vec::new());
        let data: Vec<u8> = (0..(WRITER_CHUNK * 2 + 10)).map(|i| i as u8).collect();
        let mut w = ChunkWriter::new(&mut got);
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        w.flush().unwrap();
        assert_eq!(got.0, data);
    }
}
