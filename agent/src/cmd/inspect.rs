//! `ms2m-agent inspect <archive|dir> [--json]`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint archive (tar) or directory in the CRI-O layout.
    pub path: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let p = args.path.clone();
    let s = tokio::task::spawn_blocking(move || ms2m_agent::inspect::inspect(&p)).await??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", ms2m_agent::inspect::render(&s));
    }
    Ok(())
}
