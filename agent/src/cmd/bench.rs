//! `ms2m-agent bench <registry-ref>`: this node's path to a registry, stage by stage.

use std::path::PathBuf;

use anyhow::Context as _;
use ms2m_agent::registry::Reference;
use ms2m_agent::registry::cli::RegistryArgs;
use ms2m_agent::transfer::bench;
use ms2m_agent::transfer::encode_args::EncodeArgs;
use ms2m_agent::transfer::synthetic;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image to push the benchmark checkpoint to (its blobs stay in the registry).
    pub image: String,
    /// A real checkpoint archive (tar or directory) instead of a synthetic one.
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Size of the synthetic checkpoint's memory image, MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mb: u64,
    /// Where to write the synthetic checkpoint (removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub encode: EncodeArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let image = Reference::parse(&args.image)?;
    let opts = args
        .encode
        .push_options(args.registry.client_options())
        .map_err(anyhow::Error::msg)?;
    let _tmp;
    let archive = match &args.archive {
        Some(p) => p.clone(),
        None => {
            let tmp = match &args.work_dir {
                Some(d) => tempfile::tempdir_in(d),
                None => tempfile::tempdir(),
            }
            .context("creating the work directory")?;
            let dir = tmp.path().join("checkpoint");
            let size = args.size_mb * 1024 * 1024;
            let d = dir.clone();
            tokio::task::spawn_blocking(move || {
                synthetic::write_checkpoint(&d, "ms2m-bench", size)
            })
            .await?
            .context("writing the synthetic checkpoint")?;
            _tmp = tmp;
            dir
        }
    };
    let report = bench::run(&archive, &image, &opts)
        .await
        .with_context(|| format!("benchmarking {image}"))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "archive {} ({:.1} MiB, {} layers, {}, compressed to {:.1} MiB = {:.2})",
        report.archive.display(),
        report.archive_bytes as f64 / 1048576.0,
        report.layers,
        report.compression,
        report.compressed_bytes as f64 / 1048576.0,
        report.compressed_bytes as f64 / report.archive_bytes.max(1) as f64
    );
    for s in &report.stages {
        println!(
            "{:<46} {:>9.1} MB/s  ({:.2} s)",
            s.name, s.mb_per_s, s.seconds
        );
    }
    println!("pushed {}@{}", report.image, report.digest);
    Ok(())
}
