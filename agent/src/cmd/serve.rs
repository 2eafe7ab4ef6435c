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
    // Binding removes a stale socket file; a live agent's socket must not be taken over
    // (its clients would silently talk to this one, with another state). With socket
    // activation systemd owns the socket and hands it over.
    if inherited.unix.is_none()
        && tokio::net::UnixStream::connect(&config.socket_path)
            .await
            .is_ok()
    {
        anyhow::bail!(
            "an agent is already serving on {}: stop it first, or give this one another --socket-path",
            config.socket_path.display()
        );
    }
    tracing::debug!(?config, "configuration");
    ms2m_agent::daemon::run(config, inherited).await?;
    Ok(())
}
