//! `ms2m-agent` command line. Each subcommand lives in `cmd/<name>.rs` with its clap
//! `Args` and an async `run`.

mod cmd;

use std::process::ExitCode;

use clap::Parser;
use cmd::{Cli, Command, LogFormat};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MS2M_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Progress bars step aside for each log line (no stale bars in the scrollback).
        .with_writer(|| ms2m_agent::transfer::progress_bar::LogWriter)
        .with_ansi(ms2m_agent::cli::stderr_color());
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap) before anything starts.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", ms2m_agent::cli::report(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before anything that may open a TLS connection (oci-client/reqwest panic otherwise).
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_tracing(cli.log_format);
    // Socket activation: take systemd's fds while this is the only thread.
    let inherited = match &cli.command {
        Command::Serve(_) => ms2m_agent::listeners::from_systemd()?,
        _ => Default::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => cmd::serve::run(*a, inherited).await,
            Command::CriuCheck(a) => cmd::criu_check::run(a).await,
            Command::Inspect(a) => cmd::inspect::run(a).await,
            Command::Checkpoint(a) => cmd::checkpoint::run(a).await,
            Command::Restore(a) => cmd::restore::run(a).await,
            Command::Push(a) => cmd::push::run(a).await,
            Command::Pull(a) => cmd::pull::run(a).await,
            Command::Import(a) => cmd::import::run(a).await,
            Command::Bench(a) => cmd::bench::run(a).await,
            Command::Certs(a) => cmd::certs::run(a).await,
        }
    })
}
