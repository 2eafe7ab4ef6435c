//! `ms2m-agent checkpoint`: start a checkpoint through the running agent and wait.

use std::path::PathBuf;

use ms2m_api::{CheckpointRequest, CheckpointResult};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// runc container id.
    pub container_id: String,
    /// Checkpoint id (default `<container>-<millis>`).
    #[arg(long)]
    pub checkpoint_id: Option<String>,
    /// Stop the container after the dump (default: leave it running).
    #[arg(long)]
    pub stop: bool,
    /// Checkpoint established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Pristine image rootfs to compute the rootfs diff against.
    #[arg(long)]
    pub rootfs_image: Option<PathBuf>,
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
    let req = CheckpointRequest::Runc {
        container_id: a.container_id,
        leave_running: !a.stop,
        tcp_established: a.tcp_established,
        tcp_close: None,
        network_lock: None,
        checkpoint_id: a.checkpoint_id,
        rootfs_image: a.rootfs_image,
    };
    let r: CheckpointResult =
        super::agent_client::run_job(&a.socket, async |c| c.start_checkpoint(&req).await).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "checkpoint {}: {} bytes at {} (CRIU {}, frozen {} ms)",
            r.checkpoint_id,
            r.size_bytes,
            r.path.display(),
            r.criu_version.as_deref().unwrap_or("?"),
            r.frozen_ms.map_or("-".to_owned(), |m| m.to_string()),
        );
    }
    Ok(())
}
