//! `ms2m-shim`: the StatefulMigration controller, the standalone migration driver, and
//! the CRD generator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ms2m_shim::agent_client::{AgentAddr, AgentClient};
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
    #[command(after_help = "EXAMPLES:
  # In the cluster (deploy/base/shim.yaml runs exactly this):
  ms2m-shim controller
  # From a workstation, against the current kubeconfig context:
  RUST_LOG=ms2m_shim=debug ms2m-shim controller --agent-namespace ms2m-system")]
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
        /// Where to serve Prometheus metrics (`GET /metrics`).
        #[arg(long, env = "MS2M_METRICS_LISTEN", default_value = "0.0.0.0:9412")]
        metrics_listen: std::net::SocketAddr,
        /// Directory of the shim's TLS Secret (tls.crt, tls.key, ca.crt): reach the
        /// agents over https with mutual TLS instead of the token.
        #[arg(long, env = "MS2M_AGENT_TLS_DIR")]
        agent_tls_dir: Option<PathBuf>,
    },
    /// Migrate a runc container between two agents, without Kubernetes.
    #[command(after_help = "EXAMPLES:
  # Through a registry, both agents on this machine's Unix sockets:
  ms2m-shim migrate --source-agent /run/ms2m/a.sock --target-agent /run/ms2m/b.sock \\
    --container counter --image 127.0.0.1:5000/ms2m/counter:ckpt \\
    --broker-url amqp://guest:guest@127.0.0.1:5672/%2f --queue orders --exchange orders.fanout
  # Agent to agent, no registry; resumable with a state file:
  ms2m-shim migrate --source-agent http://10.0.0.1:9411 --target-agent http://10.0.0.2:9411 \\
    --agent-token-file token --transfer direct --direct-target http://10.0.0.2:9411 \\
    --container counter --broker-url amqp://... --queue orders --exchange orders.fanout \\
    --state-file counter.migration.json --json")]
    Migrate(Box<MigrateArgs>),
    /// Print the CustomResourceDefinition (deploy/base/crd.yaml).
    #[command(after_help = "EXAMPLES:
  ms2m-shim crdgen > deploy/base/crd.yaml
  ms2m-shim crdgen | kubectl apply -f -")]
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
    /// Broker URL: `amqp://...` (RabbitMQ) or `nats://host:port` (NATS JetStream; then
    /// --exchange is the stream and --queue the service's durable consumer).
    #[arg(long, env = "MS2M_BROKER_URL")]
    broker_url: String,
    /// RabbitMQ management API, http(s)://host:port (default: the broker's host, port
    /// 15672, the broker URL's credentials). The protocol reads unacknowledged counts and
    /// bindings there.
    #[arg(long, env = "MS2M_MANAGEMENT_URL")]
    management_url: Option<String>,
    /// For an amqps:// broker: a directory with ca.crt (the broker's CA; default: the
    /// system's roots) and optionally tls.crt + tls.key (a client certificate).
    #[arg(long, env = "MS2M_BROKER_TLS_DIR")]
    broker_tls_dir: Option<std::path::PathBuf>,
    /// The service's prefetch on its primary queue. The checkpoint waits until this many
    /// post-binding messages reached the source, which proves it acknowledged every
    /// earlier one. Too high only waits longer. 0 (unlimited or auto-ack) is refused:
    /// nothing bounds what such a consumer holds unapplied at the checkpoint.
    #[arg(long, default_value_t = ms2m_shim::crd::DEFAULT_SOURCE_PREFETCH)]
    source_prefetch: u16,
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
    /// Cutoff mode: longest time the source keeps serving while the target replays;
    /// 0: no cutoff (the source stops once the target caught up).
    #[arg(long, default_value_t = 60)]
    replay_cutoff_seconds: u64,
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    phase_timeout_seconds: u64,
    /// How long to wait for each agent to answer before anything starts.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    connect_timeout_seconds: u64,
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
        management: ms2m_shim::messaging::ManagementConfig {
            url: a.management_url,
        },
        broker_tls: a
            .broker_tls_dir
            .as_deref()
            .map(ms2m_shim::messaging::BrokerTls::from_dir)
            .transpose()?,
        source_prefetch: a.source_prefetch,
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

/// Both agents must answer before the migration touches anything; otherwise the first
/// phase would retry for its whole timeout (300 s by default) and say little.
async fn agents_answer(s: &Settings, within: Duration) -> anyhow::Result<()> {
    for (role, addr) in [("source", &s.source_agent), ("target", &s.target_agent)] {
        let client = AgentClient::new(addr.clone());
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match tokio::time::timeout(left, client.ready()).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_owned(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the {role} agent at {addr} did not answer within {} s ({err}); is `ms2m-agent serve` running there?",
                    within.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250).min(left)).await;
        }
    }
    Ok(())
}

/// What clap's attributes cannot say: which arguments a transfer mode needs (clap's
/// `required_if_eq` ignores default values, and `registry` is the default).
fn check_usage(cli: &Cli) -> Result<(), clap::Error> {
    use clap::CommandFactory;
    use clap::error::ErrorKind;
    if let Cmd::Migrate(a) = &cli.cmd {
        let missing = match a.transfer {
            Transfer::Registry if a.image.is_none() => {
                Some("--image <IMAGE> (with --transfer registry, the default)")
            }
            Transfer::Direct if a.direct_target.is_none() => {
                Some("--direct-target <URL> (with --transfer direct)")
            }
            _ => None,
        };
        if a.source_prefetch == 0 {
            // The standalone driver only does ShadowPod.
            let mut cmd = Cli::command();
            let sub = cmd
                .find_subcommand_mut("migrate")
                .expect("migrate subcommand")
                .clone();
            return Err(sub.bin_name("ms2m-shim migrate").error(
                ErrorKind::ValueValidation,
                format!(
                    "--source-prefetch 0: {}",
                    ms2m_shim::crd::UNBOUNDED_PREFETCH_REFUSED
                ),
            ));
        }
        if let Some(m) = missing {
            let mut cmd = Cli::command();
            let sub = cmd
                .find_subcommand_mut("migrate")
                .expect("migrate subcommand")
                .clone();
            return Err(sub.bin_name("ms2m-shim migrate").error(
                ErrorKind::MissingRequiredArgument,
                format!("the following required argument was not provided:\n  {m}"),
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap) before anything starts.
    let cli = Cli::parse();
    if let Err(e) = check_usage(&cli) {
        e.exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ms2m_shim::cli::stderr_color())
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}", ms2m_shim::cli::report(&e));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", ms2m_shim::cli::report(&*e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Before any TLS use: kube's rustls client needs a process-wide provider, and ring is
    // the only one in the tree.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        bail!("a rustls crypto provider was already installed");
    }
    match cli.cmd {
        Cmd::Crdgen => {
            print!("{}", ms2m_shim::crd::crd_yaml());
        }
        Cmd::Controller {
            agent_namespace,
            agent_selector,
            agent_port,
            agent_token_secret,
            metrics_listen,
            agent_tls_dir,
        } => {
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
            let metrics = tokio::net::TcpListener::bind(metrics_listen)
                .await
                .with_context(|| format!("serving metrics on {metrics_listen}"))?;
            tokio::spawn(async move {
                if let Err(e) = ms2m_shim::metrics::serve(metrics).await {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
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
            let connect = Duration::from_secs(args.connect_timeout_seconds);
            let s = settings(args)?;
            agents_answer(&s, connect).await?;
            let report = standalone::migrate_with_state(s, !json, state_file).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprint!("{}", standalone::timing_table(&report));
            }
            if !report.succeeded {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
