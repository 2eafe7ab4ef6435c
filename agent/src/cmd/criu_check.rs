//! `ms2m-agent criu-check`: exit status 0 when this node can checkpoint and restore.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// CRIU binary to check (default: `criu` on PATH, then /usr/local/sbin, /usr/sbin).
    #[arg(long, env = "MS2M_CRIU")]
    pub criu: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `criu` as a shell would find it; sbin directories too, which a user's PATH often lacks.
fn find_criu() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/local/sbin".into(), "/usr/sbin".into(), "/sbin".into()])
        .collect();
    dirs.iter()
        .map(|d| d.join("criu"))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no `criu` on PATH ({}) nor in /usr/local/sbin, /usr/sbin: install CRIU >= 4.2 (scripts/setup.sh builds it) or pass --criu <path>",
                path.to_string_lossy()
            )
        })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let criu = match args.criu {
        Some(p) => p,
        None => find_criu()?,
    };
    let r = ms2m_agent::criu_check::check(&criu).await;
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
