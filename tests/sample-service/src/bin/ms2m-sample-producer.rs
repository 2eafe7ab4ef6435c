//! Reference producer: prints one JSON summary line on stdout when done.

use std::time::Duration;

use clap::Parser;
use ms2m_sample_service::{
    nats,
    producer::{self, ProducerConfig},
};

#[derive(Parser, Debug)]
#[command(version, about = "MS2M reference producer")]
struct Args {
    /// Broker URL, `amqp://` (RabbitMQ) or `nats://` (NATS JetStream).
    #[arg(long, env = "MS2M_AMQP_URL")]
    amqp_url: String,
    #[arg(long, env = "MS2M_EXCHANGE", default_value = "ms2m-sample")]
    exchange: String,
    /// Primary queue to declare and bind (skip with --no-queue).
    #[arg(long, env = "MS2M_QUEUE", default_value = "ms2m-sample")]
    queue: String,
    #[arg(long)]
    no_queue: bool,
    /// Messages per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration_secs: Option<f64>,
    #[arg(long, default_value_t = 1)]
    start_seq: u64,
    #[arg(long, default_value_t = 30)]
    confirm_timeout_secs: u64,
    /// Bursty load: this many messages back to back, then --pause-ms (ignores --rate).
    #[arg(long)]
    burst: Option<u64>,
    #[arg(long, default_value_t = 1000)]
    pause_ms: u64,
    /// Write `[[seq, unix_ms], …]` of every publish to this file when done.
    #[arg(long)]
    publish_log: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(args.start_seq > 0, "--start-seq must be at least 1");
    let cfg = ProducerConfig {
        amqp_url: args.amqp_url,
        exchange: args.exchange,
        queue: (!args.no_queue).then_some(args.queue),
        rate: args.rate,
        count: args.count,
        duration: args.duration_secs.map(Duration::from_secs_f64),
        start_seq: args.start_seq,
        confirm_timeout: Duration::from_secs(args.confirm_timeout_secs),
        burst: args
            .burst
            .filter(|n| *n > 0)
            .map(|n| (n, Duration::from_millis(args.pause_ms))),
        publish_log: args.publish_log,
    };
    let stop = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let summary = if nats::is_nats_url(&cfg.amqp_url) {
        nats::producer::run(cfg, stop).await?
    } else {
        producer::run(cfg, stop).await?
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
