//! Reference stateful consumer (see docs/sample-service.md).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use ms2m_sample_service::{
    ballast::Ballast,
    consumer::{self, ConsumerConfig},
    http, nats,
    state::ServiceState,
};

#[derive(Parser, Debug)]
#[command(version, about = "MS2M reference stateful consumer")]
struct Args {
    /// Broker URL, `amqp://` (RabbitMQ) or `nats://` (NATS JetStream); use an IP
    /// address (containers have no resolver).
    #[arg(long, env = "MS2M_AMQP_URL")]
    amqp_url: String,
    /// Fanout exchange the producers publish to.
    #[arg(long, env = "MS2M_EXCHANGE", default_value = "ms2m-sample")]
    exchange: String,
    /// Primary queue.
    #[arg(long, env = "MS2M_QUEUE", default_value = "ms2m-sample")]
    queue: String,
    /// Processing time per message.
    #[arg(long, env = "MS2M_DELAY_MS", default_value_t = 50)]
    delay_ms: u64,
    #[arg(long, env = "MS2M_PREFETCH", default_value_t = 1)]
    prefetch: u16,
    /// Skip sequence numbers already applied; `false` applies every delivery, like a
    /// consumer that does not deduplicate.
    #[arg(long, env = "MS2M_DEDUP", default_value_t = true, action = clap::ArgAction::Set)]
    dedup: bool,
    /// Pause before reconnecting after a lost connection.
    #[arg(long, env = "MS2M_RECONNECT_DELAY_MS", default_value_t = 0)]
    reconnect_delay_ms: u64,
    /// MiB of state to allocate and write (emulates a large in-memory state).
    #[arg(long, env = "MS2M_BALLAST_MIB", default_value_t = 0)]
    ballast_mib: u64,
    #[arg(long, env = "MS2M_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    #[arg(long, env = "MS2M_HTTP_ADDR", default_value = "0.0.0.0")]
    http_addr: String,
    /// Fixed pod name; by default read from --hostname-file, which survives migration.
    #[arg(long, env = "MS2M_POD_NAME")]
    pod_name: Option<String>,
    #[arg(long, env = "MS2M_HOSTNAME_FILE", default_value = "/etc/hostname")]
    hostname_file: PathBuf,
    /// How often to look for a checkpoint restore while idle.
    #[arg(long, env = "MS2M_RESTORE_CHECK_MS", default_value_t = 100)]
    restore_check_ms: u64,
}

async fn run(cfg: ConsumerConfig, state: consumer::SharedState) -> ms2m_sample_service::Result<()> {
    if nats::is_nats_url(&cfg.amqp_url) {
        nats::consumer::run(cfg, state).await
    } else {
        consumer::run(cfg, state).await
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let cfg = ConsumerConfig {
        amqp_url: args.amqp_url,
        exchange: args.exchange,
        queue: args.queue,
        delay: Duration::from_millis(args.delay_ms),
        prefetch: args.prefetch.max(1),
        pod_name: args.pod_name,
        hostname_file: args.hostname_file,
        restore_check: Duration::from_millis(args.restore_check_ms.max(1)),
        dedup: args.dedup,
        reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
    };
    let pod = cfg.pod_name().context("pod name")?;
    // Kept alive (and thus in every checkpoint) until the process ends.
    let ballast = Ballast::new(args.ballast_mib);
    let mut initial = ServiceState::new(pod);
    initial.dedup = cfg.dedup;
    initial.ballast_mib = args.ballast_mib;
    initial.ballast_checksum = ballast.checksum();
    let state = Arc::new(Mutex::new(initial));

    let listener = tokio::net::TcpListener::bind((args.http_addr.as_str(), args.http_port))
        .await
        .with_context(|| format!("bind {}:{}", args.http_addr, args.http_port))?;
    tokio::spawn(http::serve(listener, state.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = run(cfg, state.clone()) => r.context("consumer")?,
        _ = term.recv() => tracing::info!("SIGTERM: exiting"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting"),
    }
    drop(ballast);
    Ok(())
}
