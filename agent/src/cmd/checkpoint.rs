//! `ms2m-agent checkpoint`: start a checkpoint through the running agent and wait.

use std::path::PathBuf;

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
    let mut body = serde_json::json!({
        "backend": "runc",
        "container_id": a.container_id,
        "leave_running": !a.stop,
        "tcp_established": a.tcp_established,
    });
    if let Some(id) = a.checkpoint_id {
        body["checkpoint_id"] = id.into();
    }
    if let Some(r) = a.rootfs_image {
        body["rootfs_image"] = serde_json::json!(r);
    }
    let r = super::agent_client::run_job(&a.socket, "/v1/checkpoints", body).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "checkpoint {}: {} bytes at {} (CRIU {}, frozen {} ms)",
            r["checkpoint_id"].as_str().unwrap_or("?"),
            r["size_bytes"],
            r["path"].as_str().unwrap_or("?"),
            r["criu_version"].as_str().unwrap_or("?"),
            r["frozen_ms"]
        );
    }
    Ok(())
}
