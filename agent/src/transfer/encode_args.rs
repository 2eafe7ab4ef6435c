//! Encoding options shared by the `push`, `bench` and direct-send command lines.

use ms2m_image_format::Compression;

use super::push::{PushOptions, default_compression, default_layers};
use crate::registry::ClientOptions;

#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// Whole-file layers to split the archive into (default: cores, 2..4).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Layers uploaded at the same time (default: all).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Layer compression: zstd, gzip or none.
    #[arg(long, default_value = "zstd")]
    pub compression: String,
    /// Compression level (zstd 1..19, gzip 0..9; default 1).
    #[arg(long)]
    pub level: Option<i32>,
    /// libzstd worker threads per layer (default: 0, compression on the encoder thread).
    #[arg(long)]
    pub zstd_workers: Option<u32>,
}

impl EncodeArgs {
    pub fn push_options(&self, client: ClientOptions) -> Result<PushOptions, String> {
        let layers = self.layers.unwrap_or_else(default_layers).max(1);
        let compression = match self.compression.as_str() {
            "zstd" => {
                let Compression::Zstd { workers, .. } = default_compression(layers) else {
                    unreachable!("default compression is zstd")
                };
                Compression::Zstd {
                    level: self.level.unwrap_or(1),
                    workers: self.zstd_workers.unwrap_or(workers),
                }
            }
            "gzip" => Compression::Gzip {
                level: self.level.unwrap_or(1).clamp(0, 9) as u32,
            },
            "none" => Compression::None,
            other => return Err(format!("unknown compression {other:?} (zstd, gzip, none)")),
        };
        Ok(PushOptions {
            layers,
            parallel: self.parallel.unwrap_or(layers).max(1),
            compression,
            client,
        })
    }
}
