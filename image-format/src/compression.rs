//! Layer compression choices and their OCI media types.

/// OCI media type of an uncompressed tar layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip-compressed tar layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of a zstd-compressed tar layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker's gzip layer media type, accepted when decoding.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at `level`; `workers: 0` compresses in the calling thread, `n >= 1` uses
    /// libzstd's multithreaded mode with `n` worker threads.
    Zstd { level: i32, workers: u32 },
    /// gzip (deflate) at `level` 0–9.
    Gzip { level: u32 },
    /// Plain tar.
    None,
}

/// The compression family, as read from a media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionKind {
    Zstd,
    Gzip,
    None,
}

impl Default for Compression {
    /// zstd level 1 compressed in the encoder's own thread (`workers: 0`). Measured on
    /// the 2-core machines this targets (1 GiB checkpoint, both digests): the encoder
    /// thread (read, compress, hash the output) plus its uncompressed-side hashing
    /// thread fill exactly two cores; libzstd worker threads on top only add copies and
    /// contention (1.43 CPU s/GiB in-thread vs 1.64–1.84 with 1–2 workers, and slower
    /// wall time). Higher levels cost time and gain almost nothing on page images.
    fn default() -> Self {
        Compression::Zstd {
            level: 1,
            workers: 0,
        }
    }
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Zstd { .. } => MEDIA_TYPE_LAYER_ZSTD,
            Compression::Gzip { .. } => MEDIA_TYPE_LAYER_GZIP,
            Compression::None => MEDIA_TYPE_LAYER_TAR,
        }
    }

    /// The family of this compression.
    pub fn kind(&self) -> CompressionKind {
        match self {
            Compression::Zstd { .. } => CompressionKind::Zstd,
            Compression::Gzip { .. } => CompressionKind::Gzip,
            Compression::None => CompressionKind::None,
        }
    }

    /// `"zstd"`, `"gzip"` or `"none"` with default settings (the names the agent API
    /// uses).
    pub fn from_name(name: &str) -> Option<Compression> {
        match name {
            "zstd" => Some(Compression::default()),
            "gzip" => Some(Compression::Gzip { level: 1 }),
            "none" => Some(Compression::None),
            _ => None,
        }
    }
}

impl CompressionKind {
    /// The compression of a layer media type, if it is one we can decode.
    pub fn from_media_type(media_type: &str) -> Option<CompressionKind> {
        match media_type {
            MEDIA_TYPE_LAYER_ZSTD => Some(CompressionKind::Zstd),
            MEDIA_TYPE_LAYER_GZIP | MEDIA_TYPE_DOCKER_LAYER_GZIP => Some(CompressionKind::Gzip),
            MEDIA_TYPE_LAYER_TAR => Some(CompressionKind::None),
            _ => None,
        }
    }
}
