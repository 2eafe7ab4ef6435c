//! `ms2m-agent import <checkpoint-dir-or-tar> <reference>`: a checkpoint into this node's
//! image store (containers-storage or containerd) as a checkpoint image, without a
//! registry and without the daemon.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use ms2m_agent::image_store::{
    Backend, Containerd, ContainersStorage, Ctr, ImageStore, Skopeo, StoreKind,
    validate_storage_spec,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint archive: a directory or a tar file (as the kubelet writes it).
    pub source: PathBuf,
    /// Image reference to store it under, e.g. localhost/ms2m/counter:ckpt-1.
    pub reference: String,
    /// Image store.
    #[arg(long, env = "MS2M_AGENT_IMAGE_STORE", value_enum, default_value_t = StoreKind::ContainersStorage)]
    pub store: StoreKind,
    /// containers-storage to use, `[driver@graphroot+runroot]`; default: the system's.
    #[arg(long, env = "MS2M_AGENT_CONTAINERS_STORAGE", default_value = "")]
    pub storage: String,
    /// containerd's socket.
    #[arg(
        long,
        env = "MS2M_AGENT_CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_address: PathBuf,
    /// containerd namespace (the CRI's is k8s.io).
    #[arg(
        long,
        env = "MS2M_AGENT_CONTAINERD_NAMESPACE",
        default_value = "k8s.io"
    )]
    pub namespace: String,
    /// skopeo binary.
    #[arg(long, env = "MS2M_AGENT_SKOPEO", default_value = "skopeo")]
    pub skopeo_path: PathBuf,
    /// ctr binary.
    #[arg(long, env = "MS2M_AGENT_CTR", default_value = "ctr")]
    pub ctr_path: PathBuf,
    /// Where the temporary OCI layout is written (default: the system's temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let backend = match args.store {
        StoreKind::ContainersStorage => {
            validate_storage_spec(&args.storage)?;
            Backend::ContainersStorage(ContainersStorage::new(
                Skopeo::new(&args.skopeo_path),
                args.storage.clone(),
            ))
        }
        StoreKind::Containerd => Backend::Containerd(Containerd::new(Ctr::new(
            &args.ctr_path,
            &args.containerd_address,
            &args.namespace,
        ))),
    };
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let started = Instant::now();
    let imported = ImageStore::new(backend, work_dir)
        .import(&args.source, &args.reference)
        .await
        .with_context(|| {
            format!(
                "importing {} as {} into {}",
                args.source.display(),
                args.reference,
                args.store
            )
        })?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if args.json {
        let mut v = serde_json::to_value(&imported)?;
        v["elapsed_ms"] = serde_json::json!(elapsed_ms);
        println!("{v}");
    } else {
        println!(
            "imported {} as {} into {} (image id {}) in {:.2} s",
            args.source.display(),
            imported.reference,
            imported.store,
            imported.image_id,
            elapsed_ms as f64 / 1000.0
        );
    }
    Ok(())
}
