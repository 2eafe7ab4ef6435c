//! Annotation keys of checkpoint images.
//!
//! CRI-O keys: cri-o `pkg/annotations` (`CheckpointAnnotation*`), read from the image's
//! manifest annotations when CRI-O creates a container from a checkpoint image.
//! `org.criu.checkpoint.*`: checkpointctl `lib/annotations.go`; checkpointctl's
//! `internal/oci_image_build.go` writes them on the image index, where containerd ≥ 2.1
//! looks for `org.criu.checkpoint.container.name`.

/// Container name; CRI-O treats an image carrying it as a checkpoint image.
pub const CRIO_CHECKPOINT_NAME: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";
/// Image name as the user wrote it.
pub const CRIO_RAW_IMAGE_NAME: &str = "io.kubernetes.cri-o.annotations.checkpoint.rawImageName";
/// Resolved rootfs image name.
pub const CRIO_ROOTFS_IMAGE_NAME: &str =
    "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName";
/// Rootfs image id.
pub const CRIO_ROOTFS_IMAGE_ID: &str = "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID";
/// CRIU version used for the dump.
pub const CRIO_CRIU_VERSION: &str = "io.kubernetes.cri-o.annotations.checkpoint.criu.version";
/// CRI-O version that made the checkpoint.
pub const CRIO_CRIO_VERSION: &str = "io.kubernetes.cri-o.annotations.checkpoint.cri-o.version";

pub const CRIU_CONTAINER_NAME: &str = "org.criu.checkpoint.container.name";
pub const CRIU_POD_NAME: &str = "org.criu.checkpoint.pod.name";
pub const CRIU_POD_NAMESPACE: &str = "org.criu.checkpoint.pod.namespace";
pub const CRIU_ENGINE_NAME: &str = "org.criu.checkpoint.engine.name";
pub const CRIU_ENGINE_VERSION: &str = "org.criu.checkpoint.engine.version";
pub const CRIU_ROOTFS_IMAGE_NAME: &str = "org.criu.checkpoint.rootfsImageName";
pub const CRIU_ROOTFS_IMAGE_USER_REQUESTED: &str = "org.criu.checkpoint.rootfsImageUserRequested";
pub const CRIU_ROOTFS_IMAGE_ID: &str = "org.criu.checkpoint.rootfsImageID";
pub const CRIU_RAW_IMAGE_NAME: &str = "org.criu.checkpoint.rawImageName";
pub const CRIU_RUNTIME_NAME: &str = "org.criu.checkpoint.runtime.name";
pub const CRIU_CRIU_VERSION: &str = "org.criu.checkpoint.criu.version";
pub const CRIU_HOST_ARCH: &str = "org.criu.checkpoint.host.arch";

/// OCI image-layout tag of a manifest descriptor in `index.json`.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// OCI creation time.
pub const OCI_CREATED: &str = "org.opencontainers.image.created";

/// Manifest annotation of a split-layout image (`v1`): some files are carried as byte
/// ranges that only the ms2m agent reassembles; a runtime cannot restore it directly.
pub const MS2M_SPLIT: &str = "io.ms2m.split";
/// Layer annotation listing the parts a split layer carries:
/// `<path>:<index>/<count>@<offset>+<length>` items joined by `,` (informational; the
/// part names in the tar are self-describing).
pub const MS2M_SPLIT_PARTS: &str = "io.ms2m.split.parts";
