//! Subcommands, one file each.

mod agent_client;
pub mod bench;
pub mod certs;
pub mod checkpoint;
pub mod criu_check;
pub mod import;
pub mod inspect;
pub mod pull;
pub mod push;
pub mod restore;
pub mod serve;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "ms2m-agent",
    version,
    about = "ms2m node agent: checkpoint, transfer, restore"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "MS2M_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (HTTP API on a Unix socket, optionally TCP).
    #[command(after_help = "EXAMPLES:
  ms2m-agent serve --config /etc/ms2m/agent.toml
  # Without a config file, a private socket and state directory:
  ms2m-agent serve --socket-path /tmp/ms2m/agent.sock --state-dir /tmp/ms2m/state
  # Also on TCP for peers and the shim (bearer token from a file):
  ms2m-agent serve --tcp-listen 0.0.0.0:9411 --token-file /etc/ms2m/token")]
    Serve(Box<serve::Args>),
    /// Check that this node's CRIU and kernel can migrate containers.
    #[command(after_help = "EXAMPLES:
  ms2m-agent criu-check
  ms2m-agent criu-check --criu /opt/criu/sbin/criu --json")]
    CriuCheck(criu_check::Args),
    /// Summarize a checkpoint archive or directory.
    #[command(after_help = "EXAMPLES:
  ms2m-agent inspect /var/lib/kubelet/checkpoints/checkpoint-counter-0_default-app-2026.tar
  ms2m-agent inspect /var/lib/ms2m-agent/checkpoints/counter-1-ckpt --json")]
    Inspect(inspect::Args),
    /// Checkpoint a runc container through the running agent.
    #[command(after_help = "EXAMPLES:
  ms2m-agent checkpoint counter-1
  ms2m-agent checkpoint counter-1 --checkpoint-id counter-1-ckpt --tcp-established --json")]
    Checkpoint(checkpoint::Args),
    /// Restore a checkpoint under a new container id through the running agent.
    #[command(after_help = "EXAMPLES:
  ms2m-agent restore counter-1-ckpt counter-2
  ms2m-agent restore counter-1-ckpt counter-2 --netns /run/netns/nodeB --tcp-established")]
    Restore(restore::Args),
    /// Encode a checkpoint archive and push it to a registry as an OCI image.
    #[command(after_help = "EXAMPLES:
  ms2m-agent push /var/lib/ms2m-agent/checkpoints/counter-1-ckpt registry.local:5000/ms2m/counter:ckpt-1
  ms2m-agent push checkpoint.tar 127.0.0.1:5000/ms2m/counter:ckpt-1 --json")]
    Push(push::Args),
    /// Pull a checkpoint image and unpack it as an archive directory.
    #[command(after_help = "EXAMPLES:
  ms2m-agent pull registry.local:5000/ms2m/counter:ckpt-1 /tmp/counter-ckpt
  ms2m-agent pull registry.local:5000/ms2m/counter:ckpt-1 /tmp/counter-ckpt --verify-diff-ids --json")]
    Pull(pull::Args),
    /// Import a checkpoint into this node's image store (containers-storage or containerd).
    #[command(after_help = "EXAMPLES:
  ms2m-agent import /tmp/counter-ckpt localhost/ms2m/counter:ckpt-1
  ms2m-agent import /tmp/counter-ckpt localhost/ms2m/counter:ckpt-1 --store containerd")]
    Import(import::Args),
    /// Make the cluster CA and issue shim/agent certificates (mutual TLS).
    Certs(certs::Args),
    /// Measure this node's path to a registry, stage by stage (read, hash, compress, upload).
    #[command(after_help = "EXAMPLES:
  ms2m-agent bench 127.0.0.1:5000/ms2m/bench:1 --size-mb 256
  ms2m-agent bench registry.local:5000/ms2m/bench:1 --archive checkpoint.tar --json")]
    Bench(bench::Args),
}
