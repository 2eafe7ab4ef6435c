//! `ms2m-agent criu-check`: exit status 0 when this node can checkpoint and restore.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// CRIU binary to check.
    #[arg(long, env = "MS2M_CRIU", default_value = "/usr/local/sbin/criu")]
    pub criu: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let r = ms2m_agent::criu_check::check(&args.criu).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "CRIU      {} ({})",
            r.criu_version.as_deref().unwrap_or("?"),
            r.criu_path.display()
        );
        println!("Kernel    {}", r.kernel);
        println!("Base      {}", if r.base_check { "ok" } else { "FAILED" });
        for f in &r.features {
            println!(
                "  {:<22} {:<4} {}",
                f.name,
                if f.supported { "yes" } else { "no" },
                f.needed_for
            );
        }
    }
    if !r.usable() {
        anyhow::bail!(
            "this node cannot migrate containers: {}",
            r.problems.join("; ")
        );
    }
    Ok(())
}
