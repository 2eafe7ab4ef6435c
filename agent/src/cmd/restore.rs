//! `ms2m-agent restore`: restore a stored checkpoint through the running agent.

use std::path::PathBuf;

use ms2m_api::{RestoreRequest, RestoreResult};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint id in the agent's store.
    pub checkpoint_id: String,
    /// New container id.
    pub container_id: String,
    /// Pre-created network namespace to restore into.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Image rootfs (default: the one recorded in the checkpoint).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// The checkpoint holds established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// The agent's Unix socket.
    #[arg(
        long,
        env = "MS2M_AGENT_SOCKET",
        default_value = "/run/ms2m/agent.sock"
    )]
    pub socket: PathBuf,
    /// Print the agent's result as JSON on stdout instead of a summary line.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let req = RestoreRequest {
        checkpoint_id: a.checkpoint_id,
        container_id: a.container_id,
        netns_path: a.netns,
        rootfs: a.rootfs,
        tcp_established: a.tcp_established,
        ..Default::default()
    };
    let r: RestoreResult =
        super::agent_client::run_job(&a.socket, async |c| c.start_restore(&req).await).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "restored {} (pid {}, hostname {}) in {} ms",
            r.container_id, r.pid, r.hostname, r.restore_ms
        );
    }
    Ok(())
}
