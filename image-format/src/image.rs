//! Config, manifest and index of a checkpoint image, as bytes with their descriptors.

use std::collections::BTreeMap;

use oci_spec::image::{
    Arch, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder,
    MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use serde::Serialize;
use serde_json::Value;

use crate::annotations as ann;
use crate::digest::sha256_digest;
use crate::encode::{LayerDescriptor, parse_oci_digest};
use crate::error::{Error, Result};
use crate::metadata::CheckpointMetadata;

/// Choices that are not in the checkpoint itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// Tag recorded as `org.opencontainers.image.ref.name` on the manifest descriptor of
    /// the index (an OCI layout needs it for `skopeo oci:<dir>:<tag>` / `umoci`).
    pub tag: Option<String>,
    /// Image creation time (RFC 3339) for the config and the manifest; `None` keeps the
    /// bytes deterministic.
    pub created: Option<String>,
    /// Go architecture name (`amd64`, `arm64`); default: the host's.
    pub architecture: String,
    /// Go OS name; default `linux`.
    pub os: String,
    /// Container name to use when the archive does not record one.
    pub container_name: Option<String>,
    /// Version of the engine that made the checkpoint (CRI-O version annotation).
    pub engine_version: Option<String>,
    /// Extra manifest annotations (override ours on conflict).
    pub manifest_annotations: BTreeMap<String, String>,
    /// Extra index annotations (override ours on conflict).
    pub index_annotations: BTreeMap<String, String>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            tag: Some("latest".to_owned()),
            created: None,
            architecture: Arch::default().to_string(),
            os: Os::default().to_string(),
            container_name: None,
            engine_version: None,
            manifest_annotations: BTreeMap::new(),
            index_annotations: BTreeMap::new(),
        }
    }
}

/// A JSON document of the image with its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new<T: Serialize>(media_type: MediaType, doc: &T) -> Result<Blob> {
        let bytes = canonical_json(doc)?;
        let digest = parse_oci_digest(&sha256_digest(&bytes))?;
        Ok(Blob {
            descriptor: Descriptor::new(media_type, bytes.len() as u64, digest),
            bytes,
        })
    }

    /// `sha256:<hex>` of the bytes.
    pub fn digest(&self) -> String {
        self.descriptor.digest().to_string()
    }
}

/// Everything a registry or an OCI layout needs besides the layer blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointImage {
    pub config: Blob,
    pub manifest: Blob,
    /// Image index pointing at the manifest (push it as the tag).
    pub index: Blob,
    pub layers: Vec<LayerDescriptor>,
}

/// Builds config, manifest (CRI-O annotations) and index (`org.criu.checkpoint.*`
/// annotations). Fails without a container name: neither runtime would restore it.
pub fn build_image(
    meta: &CheckpointMetadata,
    layers: &[LayerDescriptor],
    opts: &ImageOptions,
) -> Result<CheckpointImage> {
    let name = meta
        .container_name
        .clone()
        .or_else(|| opts.container_name.clone())
        .ok_or_else(|| {
            Error::MissingMetadata(
                "container name (not in the archive and not in ImageOptions)".into(),
            )
        })?;
    if layers.is_empty() {
        return Err(Error::Image("an image needs at least one layer".into()));
    }
    let oci_err = |e: oci_spec::OciSpecError| Error::Image(e.to_string());

    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
        .build()
        .map_err(oci_err)?;
    let mut config = ImageConfigurationBuilder::default()
        .architecture(Arch::from(opts.architecture.as_str()))
        .os(Os::from(opts.os.as_str()))
        .rootfs(rootfs);
    if let Some(created) = &opts.created {
        config = config.created(created.clone());
    }
    let config = Blob::new(MediaType::ImageConfig, &config.build().map_err(oci_err)?)?;

    let criu = criu_annotations(meta, &name, opts);
    let mut manifest_ann = criu.clone();
    manifest_ann.insert(ann::CRIO_CHECKPOINT_NAME.into(), name.clone());
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            manifest_ann.insert(k.to_owned(), v.clone());
        }
    };
    put(ann::CRIO_RAW_IMAGE_NAME, &meta.rootfs_image);
    put(ann::CRIO_ROOTFS_IMAGE_NAME, &meta.rootfs_image_name);
    put(ann::CRIO_ROOTFS_IMAGE_ID, &meta.rootfs_image_ref);
    put(ann::CRIO_CRIU_VERSION, &meta.criu_version);
    put(ann::CRIO_CRIO_VERSION, &opts.engine_version);
    put(ann::OCI_CREATED, &opts.created);
    if layers
        .iter()
        .any(|l| l.annotations.contains_key(ann::MS2M_SPLIT_PARTS))
    {
        manifest_ann.insert(ann::MS2M_SPLIT.to_owned(), "v1".to_owned());
    }
    manifest_ann.extend(opts.manifest_annotations.clone());

    let layer_descs = layers
        .iter()
        .map(LayerDescriptor::to_oci)
        .collect::<Result<Vec<_>>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor.clone())
        .layers(layer_descs)
        .annotations(
            manifest_ann
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .map_err(oci_err)?;
    let manifest = Blob::new(MediaType::ImageManifest, &manifest)?;

    let mut manifest_ref = manifest.descriptor.clone();
    manifest_ref.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::from(opts.architecture.as_str()))
            .os(Os::from(opts.os.as_str()))
            .build()
            .map_err(oci_err)?,
    ));
    if let Some(tag) = &opts.tag {
        manifest_ref.set_annotations(Some(
            [(ann::OCI_REF_NAME.to_owned(), tag.clone())]
                .into_iter()
                .collect(),
        ));
    }
    let mut index_ann = criu;
    index_ann.extend(opts.index_annotations.clone());
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_ref])
        .annotations(
            index_ann
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .map_err(oci_err)?;
    let index = Blob::new(MediaType::ImageIndex, &index)?;

    Ok(CheckpointImage {
        config,
        manifest,
        index,
        layers: layers.to_vec(),
    })
}

fn criu_annotations(
    meta: &CheckpointMetadata,
    name: &str,
    opts: &ImageOptions,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(ann::CRIU_CONTAINER_NAME.to_owned(), name.to_owned());
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v.clone());
        }
    };
    put(ann::CRIU_POD_NAME, &meta.pod_name);
    put(ann::CRIU_POD_NAMESPACE, &meta.namespace);
    put(ann::CRIU_ENGINE_NAME, &meta.engine);
    put(ann::CRIU_ENGINE_VERSION, &opts.engine_version);
    put(ann::CRIU_ROOTFS_IMAGE_NAME, &meta.rootfs_image_name);
    put(ann::CRIU_ROOTFS_IMAGE_USER_REQUESTED, &meta.rootfs_image);
    put(ann::CRIU_ROOTFS_IMAGE_ID, &meta.rootfs_image_ref);
    put(ann::CRIU_RAW_IMAGE_NAME, &meta.rootfs_image);
    put(ann::CRIU_RUNTIME_NAME, &meta.runtime);
    put(ann::CRIU_CRIU_VERSION, &meta.criu_version);
    put(ann::CRIU_HOST_ARCH, &Some(opts.architecture.clone()));
    m
}

/// JSON with object keys sorted at every level, so the same image gives the same bytes
/// (oci-spec keeps annotations in `HashMap`s, whose order changes from run to run).
pub(crate) fn canonical_json<T: Serialize>(doc: &T) -> Result<Vec<u8>> {
    let v = serde_json::to_value(doc).map_err(|e| Error::Image(format!("serialise: {e}")))?;
    serde_json::to_vec(&sorted(v)).map_err(|e| Error::Image(format!("serialise: {e}")))
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
