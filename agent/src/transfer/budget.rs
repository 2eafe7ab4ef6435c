//! `max_checkpoint_bytes`: a checkpoint that a pull or Direct receive unpacks may not
//! exceed this many bytes once decompressed, whatever its compressed size (a 33 KB zstd
//! layer can expand to over a GiB).
//!
//! The image-format decoder decompresses inside the library, so the count is kept by a
//! meter placed in front of it: each compressed chunk is first decompressed into a
//! scratch buffer and counted, across all layers of the checkpoint, and handed on only
//! if the total stays within the budget. The decoder therefore never writes more than
//! the budget, and the refusal comes as soon as a chunk would cross it. The price is a
//! second decompression on the layer's own thread (zstd ≈ 1 GB/s a core).

use std::io::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use ms2m_image_format::{ChunkSource, CompressionKind};
use zstd::stream::raw::Operation as _;

/// The decompressed bytes one checkpoint may still take.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
    exceeded: AtomicBool,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether some layer went over the budget (the cause of its decoder's error).
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    fn take(&self, n: u64) -> io::Result<()> {
        let used = self.used.fetch_add(n, Ordering::SeqCst) + n;
        if used > self.limit {
            self.exceeded.store(true, Ordering::SeqCst);
            return Err(io::Error::other(format!(
                "the checkpoint exceeds max_checkpoint_bytes ({} bytes) once decompressed",
                self.limit
            )));
        }
        Ok(())
    }
}

/// Counts what it is written into the budget, keeping nothing.
struct Counter(Arc<Budget>);

impl io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.take(b.len() as u64)?;
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Meter {
    Tar,
    Zstd(Box<zstd::stream::raw::Decoder<'static>>, Vec<u8>),
    Gzip(Box<flate2::write::GzDecoder<Counter>>),
    /// The stream is corrupt: the decoder behind will fail on the same bytes.
    Off,
}

/// A [`ChunkSource`] that hands a layer's compressed chunks on only while the
/// checkpoint's decompressed total stays within its [`Budget`].
pub struct Metered<S> {
    inner: S,
    meter: Meter,
    budget: Arc<Budget>,
}

impl<S: ChunkSource> Metered<S> {
    pub fn new(inner: S, media_type: &str, budget: Arc<Budget>) -> Self {
        let meter = match CompressionKind::from_media_type(media_type) {
            Some(CompressionKind::Zstd) => match zstd::stream::raw::Decoder::new() {
                Ok(d) => Meter::Zstd(Box::new(d), vec![0; 128 * 1024]),
                Err(_) => Meter::Off,
            },
            Some(CompressionKind::Gzip) => Meter::Gzip(Box::new(flate2::write::GzDecoder::new(
                Counter(budget.clone()),
            ))),
            // Unknown media types are refused by the decoder itself.
            _ => Meter::Tar,
        };
        Self {
            inner,
            meter,
            budget,
        }
    }

    fn count(&mut self, chunk: &[u8]) -> io::Result<()> {
        let r = match &mut self.meter {
            Meter::Off => return Ok(()),
            Meter::Tar => return self.budget.take(chunk.len() as u64),
            Meter::Zstd(d, buf) => {
                let mut input = chunk;
                loop {
                    let st = match d.run_on_buffers(input, buf) {
                        Ok(st) => st,
                        Err(_) => break Err(None),
                    };
                    input = &input[st.bytes_read..];
                    if let Err(e) = self.budget.take(st.bytes_written as u64) {
                        break Err(Some(e));
                    }
                    // Done with this chunk once it is consumed and the output did not
                    // fill the buffer (nothing left inside the decoder).
                    if input.is_empty() && st.bytes_written < buf.len() {
                        break Ok(());
                    }
                }
            }
            Meter::Gzip(g) => g.write_all(chunk).map_err(|e| {
                if self.budget.exceeded() {
                    Some(e)
                } else {
                    None
                }
            }),
        };
        match r {
            Ok(()) => Ok(()),
            Err(Some(over)) => Err(over),
            Err(None) => {
                self.meter = Meter::Off;
                Ok(())
            }
        }
    }
}

impl<S: ChunkSource> ChunkSource for Metered<S> {
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.budget.exceeded() {
            return Err(io::Error::other(
                "another layer exceeded max_checkpoint_bytes",
            ));
        }
        let Some(chunk) = self.inner.next_chunk()? else {
            return Ok(None);
        };
        self.count(&chunk)?;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ms2m_image_format::{MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD};

    struct Chunks(std::vec::IntoIter<Bytes>);

    impl ChunkSource for Chunks {
        fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
            Ok(self.0.next())
        }
    }

    fn drain(m: &mut Metered<Chunks>) -> io::Result<usize> {
        let mut n = 0;
        while let Some(c) = m.next_chunk()? {
            n += c.len();
        }
        Ok(n)
    }

    fn chunks(b: &[u8]) -> Chunks {
        Chunks(
            b.chunks(1000)
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }

    #[test]
    fn a_bomb_is_stopped_before_the_chunk_that_crosses_the_budget() {
        let zeros = vec![0u8; 64 << 20];
        let z = zstd::bulk::compress(&zeros, 19).unwrap();
        assert!(z.len() < 64 * 1024, "{}", z.len());
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        g.write_all(&zeros).unwrap();
        let g = g.finish().unwrap();
        for (mt, blob) in [(MEDIA_TYPE_LAYER_ZSTD, &z), (MEDIA_TYPE_LAYER_GZIP, &g)] {
            let budget = Budget::new(16 << 20);
            let mut m = Metered::new(chunks(blob), mt, budget.clone());
            let e = drain(&mut m).unwrap_err();
            assert!(e.to_string().contains("max_checkpoint_bytes"), "{mt}: {e}");
            assert!(budget.exceeded());
            // Within budget the same blob passes whole.
            let budget = Budget::new(64 << 20);
            let mut m = Metered::new(chunks(blob), mt, budget.clone());
            assert_eq!(drain(&mut m).unwrap(), blob.len(), "{mt}");
            assert!(!budget.exceeded());
        }
        // Layers share one budget; plain tar counts as is.
        let budget = Budget::new(1500);
        let mut a = Metered::new(chunks(&[1; 1000]), MEDIA_TYPE_LAYER_TAR, budget.clone());
        drain(&mut a).unwrap();
        let mut b = Metered::new(chunks(&[1; 1000]), MEDIA_TYPE_LAYER_TAR, budget.clone());
        assert!(drain(&mut b).is_err());
    }
}
