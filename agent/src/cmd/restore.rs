//! `ms2m-agent restore`: restore a stored checkpoint through the running agent.

use std::path::PathBuf;

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
    let mut body = serde_json::json!({
        "checkpoint_id": a.checkpoint_id,
        "container_id": a.container_id,
        "tcp_established": a.tcp_established,
    });
    if let Some(n) = a.netns {
        body["netns_path"] = serde_json::json!(n);
    }
    if let Some(r) = a.rootfs {
        body["rootfs"] = serde_json::json!(r);
    }
    let r = super::agent_client::run_job(&a.socket, "/v1/restores", body).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "restored {} (pid {}, hostname {}) in {} ms",
            r["container_id"].as_str().unwrap_or("?"),
            r["pid"],
            r["hostname"].as_str().unwrap_or("?"),
            r["restore_ms"]
        );
    }
    Ok(())
}
