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
    Serve(Box<serve::Args>),
    /// Check that this node's CRIU and kernel can migrate containers.
    CriuCheck(criu_check::Args),
    /// Summarize a checkpoint archive or directory.
    Inspect(inspect::Args),
    /// Checkpoint a runc container through the running agent.
    Checkpoint(checkpoint::Args),
    /// Restore a checkpoint under a new container id through the running agent.
    Restore(restore::Args),
    /// Encode a checkpoint archive and push it to a registry as an OCI image.
    Push(push::Args),
    /// Pull a checkpoint image and unpack it as an archive directory.
    Pull(pull::Args),
    /// Import a checkpoint into this node's image store (containers-storage or containerd).
    Import(import::Args),
    /// Make the cluster CA and issue shim/agent certificates (mutual TLS).
    Certs(certs::Args),
    /// Measure this node's path to a registry, stage by stage (read, hash, compress, upload).
    Bench(bench::Args),
}
