//! `ms2m-agent pull <image-ref> <dest>`: download, verify and unpack a checkpoint image.

use std::path::PathBuf;

use anyhow::Context as _;
use ms2m_agent::registry::Reference;
use ms2m_agent::registry::cli::RegistryArgs;
use ms2m_agent::transfer::Progress;
use ms2m_agent::transfer::progress_bar::Bar;
use ms2m_agent::transfer::pull::{PullOptions, pull};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image to pull.
    pub image: String,
    /// Directory to create with the checkpoint archive's content (must not exist).
    pub dest: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Layers downloaded at the same time.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Also check every layer's uncompressed digest against the image config's
    /// diff_ids (the blob digests are always checked).
    #[arg(long)]
    pub verify_diff_ids: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let image = Reference::parse(&args.image)?;
    let opts = PullOptions {
        client: args.registry.client_options(),
        parallel: args.parallel.max(1),
        verify_diff_ids: args.verify_diff_ids,
        max_bytes: None,
    };
    let progress = Progress::new();
    let bar = Bar::spawn(progress.clone(), "pulling");
    let result = pull(&image, &args.dest, &opts, &progress).await;
    bar.finish().await;
    let r = result.with_context(|| format!("pulling {image} into {}", args.dest.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let secs = r.elapsed_ms as f64 / 1000.0;
        println!(
            "pulled {} ({}) into {}: {:.1} MiB downloaded, {:.1} MiB unpacked in {secs:.2} s",
            r.image,
            r.digest,
            r.path.display(),
            r.bytes_downloaded as f64 / 1048576.0,
            r.size_bytes as f64 / 1048576.0
        );
    }
    Ok(())
}
