//! Checkpoint archives and OCI checkpoint images: model, validation, layout, streaming
//! encoder and verifying decoder. Pure `Read`/`Write`; no network.
//!
//! The contract other crates build on is described in `docs/image-format.md`.

pub mod annotations;
mod archive;
mod beneath;
mod compression;
mod decode;
mod digest;
mod encode;
mod error;
mod image;
mod layout;
mod metadata;
mod plan;
mod pool;
mod sink;
mod staging;
mod tar_scan;
mod validate;

pub use archive::{Archive, ArchiveSource, Entry, EntryKind, EntryReader, scan_tar};
pub use compression::{
    Compression, CompressionKind, MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD,
};
pub use decode::{ExpectedLayer, LayerStats, unpack_layer, unpack_layer_chunks};
pub use digest::{ChunkSource, digest_hex, sha256_digest};
pub use encode::{
    LayerDescriptor, LayerHashes, encode_layer, encode_layer_chunks, encode_layer_with,
};
pub use error::{Error, Result};
pub use image::{Blob, CheckpointImage, ImageOptions, build_image};
pub use layout::{EncodeOptions, read_oci_layout, write_oci_layout};
pub use metadata::{CheckpointMetadata, FileInfo, is_page_image};
pub use plan::{FilePart, LayerPlan, plan_layers, plan_split_layers, split_part_name};
pub use sink::ChunkSink;
pub use staging::Staging;
pub use validate::Limits;
