//! `ms2m-shim`: the StatefulMigration controller, the standalone migration driver, and
//! the CRD generator.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ms2m_shim::agent_client::AgentAddr;
use ms2m_shim::controller::{self, AgentDiscovery};
use ms2m_shim::engine::{ReplayMode, TransferMode};
use ms2m_shim::standalone::{self, Settings};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "ms2m-shim",
    version,
    about = "Live migration of queue-consuming services (MS2M)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the StatefulMigration controller (in-cluster or with a kubeconfig).
    Controller {
        /// Namespace of the agent DaemonSet and its token Secret.
        #[arg(long, env = "MS2M_AGENT_NAMESPACE", default_value = "ms2m-system")]
        agent_namespace: String,
        #[arg(
            long,
            env = "MS2M_AGENT_SELECTOR",
            default_value = "app.kubernetes.io/name=ms2m-agent"
        )]
        agent_selector: String,
        #[arg(long, env = "MS2M_AGENT_PORT", default_value_t = 9411)]
        agent_port: u16,
        #[arg(
            long,
            env = "MS2M_AGENT_TOKEN_SECRET",
            default_value = "ms2m-agent-token"
        )]
        agent_token_secret: String,
        /// Directory of the shim's TLS Secret (tls.crt, tls.key, ca.crt): reach the
        /// agents over https with mutual TLS instead of the token.
        #[arg(long, env = "MS2M_AGENT_TLS_DIR")]
        agent_tls_dir: Option<PathBuf>,
    },
    /// Migrate a runc container between two agents, without Kubernetes.
    Migrate(Box<MigrateArgs>),
    /// Print the CustomResourceDefinition (deploy/crd.yaml).
    Crdgen,
}

#[derive(Clone, Copy, ValueEnum)]
enum Transfer {
    Registry,
    Direct,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Cutoff,
    Drain,
}

#[derive(Parser)]
struct MigrateArgs {
    /// Source agent: unix:<socket>, <socket path>, or http://host:port.
    #[arg(long)]
    source_agent: String,
    /// Target agent, same forms.
    #[arg(long)]
    target_agent: String,
    /// File holding the bearer token for TCP agents.
    #[arg(long, env = "MS2M_AGENT_TOKEN_FILE")]
    agent_token_file: Option<PathBuf>,
    /// Directory with the shim's tls.crt, tls.key and the cluster ca.crt, for
    /// https:// agents (mutual TLS).
    #[arg(long, env = "MS2M_AGENT_TLS_DIR")]
    agent_tls_dir: Option<PathBuf>,
    /// Node of the Direct target agent, which its certificate must name (mutual TLS).
    #[arg(long)]
    direct_target_node: Option<String>,
    /// The runc container to migrate (on the source agent).
    #[arg(long)]
    container: String,
    /// Id of the restored container (default: <container>-ms2m).
    #[arg(long)]
    target_container: Option<String>,
    /// Network namespace the target is restored into (e.g. /run/netns/nodeB).
    #[arg(long)]
    target_netns: Option<String>,
    /// Image rootfs the source runs on, recorded in the checkpoint.
    #[arg(long)]
    rootfs_image: Option<String>,
    /// Image rootfs on the target node (default: the one recorded in the checkpoint).
    #[arg(long)]
    rootfs: Option<String>,
    /// Checkpoint established TCP connections (the broker connection, for instance).
    #[arg(long)]
    tcp_established: bool,
    #[arg(long, value_enum, default_value = "registry")]
    transfer: Transfer,
    /// Registry mode: image reference to push the checkpoint to.
    #[arg(long)]
    image: Option<String>,
    /// Registry mode: allow plain HTTP to a non-loopback registry.
    #[arg(long)]
    insecure_registry: bool,
    /// Direct mode: the target agent's URL as the source agent reaches it.
    #[arg(long)]
    direct_target: Option<String>,
    /// AMQP URL of the broker.
    #[arg(long, env = "MS2M_BROKER_URL")]
    broker_url: String,
    /// The service's primary queue.
    #[arg(long)]
    queue: String,
    /// Fanout exchange the producers publish to.
    #[arg(long)]
    exchange: String,
    #[arg(long, default_value = "")]
    routing_key: String,
    /// Name the restored consumer uses for its control queue (ms2m.control.<name>);
    /// default: the target container id.
    #[arg(long)]
    control_name: Option<String>,
    #[arg(long, value_enum, default_value = "cutoff")]
    replay_mode: Mode,
    #[arg(long, default_value_t = 60)]
    replay_cutoff_seconds: u64,
    #[arg(long, default_value_t = 300)]
    phase_timeout_seconds: u64,
    /// Checkpoint id on the agents (default: <container>-<unix millis>).
    #[arg(long)]
    checkpoint_id: Option<String>,
    /// Print the result as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Where progress is recorded before every side effect. Running the command again
    /// with the same file resumes the migration it records (see docs/shim.md).
    #[arg(long)]
    state_file: Option<PathBuf>,
}

fn settings(a: Box<MigrateArgs>) -> anyhow::Result<Settings> {
    let token = match &a.agent_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let target_container = a
        .target_container
        .unwrap_or_else(|| format!("{}-ms2m", a.container));
    let millis = jiff::Timestamp::now().as_millisecond();
    Ok(Settings {
        source_agent: AgentAddr::parse_with(
            &a.source_agent,
            token.clone(),
            a.agent_tls_dir.clone(),
        )?,
        target_agent: AgentAddr::parse_with(&a.target_agent, token, a.agent_tls_dir.clone())?,
        control_name: a.control_name.unwrap_or_else(|| target_container.clone()),
        checkpoint_id: a
            .checkpoint_id
            .unwrap_or_else(|| format!("{}-{millis}", a.container)),
        container: a.container,
        target_container,
        target_netns: a.target_netns,
        rootfs_image: a.rootfs_image,
        rootfs: a.rootfs,
        tcp_established: a.tcp_established,
        transfer: match a.transfer {
            Transfer::Registry => TransferMode::Registry,
            Transfer::Direct => TransferMode::Direct,
        },
        image: a.image,
        insecure_registry: a.insecure_registry,
        direct_target: a.direct_target,
        direct_target_node: a.direct_target_node,
        broker_url: a.broker_url,
        queue: a.queue,
        exchange: a.exchange,
        routing_key: a.routing_key,
        replay_mode: match a.replay_mode {
            Mode::Cutoff => ReplayMode::Cutoff,
            Mode::Drain => ReplayMode::Drain,
        },
        replay_cutoff: Duration::from_secs(a.replay_cutoff_seconds),
        phase_timeout: Duration::from_secs(a.phase_timeout_seconds),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before any TLS use: kube's rustls client needs a process-wide provider, and ring is
    // the only one in the tree.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        bail!("a rustls crypto provider was already installed");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crdgen => {
            print!("{}", ms2m_shim::crd::crd_yaml());
        }
        Cmd::Controller {
            agent_namespace,
            agent_selector,
            agent_port,
            agent_token_secret,
            agent_tls_dir,
        } => {
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
            let discovery = AgentDiscovery {
                namespace: agent_namespace,
                selector: agent_selector,
                port: agent_port,
                token_secret: agent_token_secret,
                tls_dir: agent_tls_dir,
            };
            controller::run(client, discovery).await?;
        }
        Cmd::Migrate(args) => {
            let json = args.json;
            let state_file = args.state_file.clone();
            let s = settings(args)?;
            let report = standalone::migrate_with_state(s, !json, state_file).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprint!("{}", standalone::timing_table(&report));
            }
            if !report.succeeded {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
