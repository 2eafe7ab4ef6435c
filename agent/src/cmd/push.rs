//! `ms2m-agent push <archive.tar|dir> <image-ref>`: encode and upload a checkpoint.

use std::path::PathBuf;

use anyhow::Context as _;
use ms2m_agent::registry::Reference;
use ms2m_agent::registry::cli::RegistryArgs;
use ms2m_agent::transfer::Progress;
use ms2m_agent::transfer::encode_args::EncodeArgs;
use ms2m_agent::transfer::progress_bar::Bar;
use ms2m_agent::transfer::push::push;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint archive: a tar file (as the kubelet writes it) or a directory.
    pub source: PathBuf,
    /// Image to push, e.g. registry.local:5000/ms2m/counter:ckpt-1.
    pub image: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub encode: EncodeArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let image = Reference::parse(&args.image)?;
    let opts = args
        .encode
        .push_options(args.registry.client_options())
        .map_err(anyhow::Error::msg)?;
    let progress = Progress::new();
    let bar = Bar::spawn(progress.clone(), "pushing");
    let result = push(&args.source, &image, &opts, &progress).await;
    bar.finish().await;
    let r = result.with_context(|| format!("pushing {} to {image}", args.source.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let secs = r.elapsed.as_secs_f64();
        println!(
            "pushed {}@{} ({} layers, {:.1} MiB archive, {:.1} MiB uploaded) in {secs:.2} s, {:.0} MB/s of archive",
            r.image,
            r.digest,
            r.layers.len(),
            r.archive_bytes as f64 / 1048576.0,
            r.bytes_uploaded as f64 / 1048576.0,
            r.archive_bytes as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(())
}
