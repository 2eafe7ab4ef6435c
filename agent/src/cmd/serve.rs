//! `ms2m-agent serve`.

use std::path::PathBuf;

use ms2m_agent::config::{Config, Overrides};
use ms2m_agent::listeners::Inherited;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML config file (default /etc/ms2m/agent.toml when it exists).
    #[arg(long, env = "MS2M_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

pub async fn run(args: Args, inherited: Inherited) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), &args.overrides)?;
    tracing::debug!(?config, "configuration");
    ms2m_agent::daemon::run(config, inherited).await?;
    Ok(())
}
