//! `serve`: bind (or inherit) the listeners, serve the API, notify systemd, and on
//! SIGTERM/SIGINT drain: refuse new jobs, let running ones finish within the grace
//! period, abort the rest (their files are removed), then stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::listeners::{self, Inherited, ListenError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("tcp_listen is set but no token: set token_file to a file holding the bearer token")]
    NoToken,
    #[error("reading token file {0}: {1}")]
    Token(std::path::PathBuf, std::io::Error),
    #[error("token file {0} is empty")]
    EmptyToken(std::path::PathBuf),
    #[error(
        "token file {0} is readable by group or others (mode {1:04o}): make it owner-only (chmod 600; a Secret volume: defaultMode 0400)"
    )]
    TokenMode(std::path::PathBuf, u32),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(
        "tcp_listen is set but neither TLS (tls_cert_file, tls_key_file, tls_ca_file) nor \
         tcp_insecure = true: the TCP listener is TLS unless plain HTTP is asked for"
    )]
    NoTls,
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("the certificate names {found}, but node_name is {node:?}")]
    WrongIdentity { found: String, node: Option<String> },
}

/// How the TCP listener is served.
enum TcpMode {
    Tls(Arc<rustls::ServerConfig>),
    Insecure(Arc<String>),
}

/// TLS unless `tcp_insecure`; the agent's certificate must name this node.
async fn tcp_mode(config: &Config) -> Result<TcpMode, DaemonError> {
    if config.tcp_insecure {
        tracing::warn!("tcp_insecure: the TCP listener speaks plain HTTP (local tests only)");
        return Ok(TcpMode::Insecure(load_token(config).await?));
    }
    let files = config.tls.as_ref().ok_or(DaemonError::NoTls)?;
    let id = crate::tls::own_identity(files)?;
    let want = config
        .node_name
        .as_ref()
        .map(|n| crate::tls::CertIdentity::Agent(n.clone()));
    if want.as_ref() != Some(&id) {
        return Err(DaemonError::WrongIdentity {
            found: id.to_string(),
            node: config.node_name.clone(),
        });
    }
    Ok(TcpMode::Tls(crate::tls::server_config(files)?))
}

async fn load_token(config: &Config) -> Result<Arc<String>, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let path = config.token_file.clone().ok_or(DaemonError::NoToken)?;
    // The mode of the file itself (a Secret volume's file is a symlink into `..data`).
    let mode = tokio::fs::metadata(&path)
        .await
        .map_err(|e| DaemonError::Token(path.clone(), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(DaemonError::TokenMode(path, mode & 0o7777));
    }
    let t = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| DaemonError::Token(path.clone(), e))?;
    let t = t.trim().to_owned();
    if t.is_empty() {
        return Err(DaemonError::EmptyToken(path));
    }
    Ok(Arc::new(t))
}

/// Deletes checkpoints older than `retention` that no job uses, at start and then a
/// tenth of the retention apart (at most every 10 minutes).
async fn expire_checkpoints(store: crate::checkpoint::CheckpointStore, retention: Duration) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.expire(retention, std::time::SystemTime::now()))
            .await
        {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    ?removed,
                    retention_s = retention.as_secs(),
                    "expired checkpoints deleted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checkpoint expiry failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Raise the soft fd limit to the hard one: every listener may hold `max_connections`
/// sockets, and jobs need fds of their own besides.
fn raise_nofile(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "could not raise RLIMIT_NOFILE");
    }
    let have = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(soft);
    let want = 2 * config.limits.max_connections as u64 + 256;
    if have < want {
        tracing::warn!(
            fds = have,
            max_connections = config.limits.max_connections,
            "RLIMIT_NOFILE is below 2 x max_connections + 256: accepts may fail with EMFILE \
             under a connection flood; lower max_connections or raise the limit"
        );
    }
}

/// A checkpoint holds the container's memory, secrets included: whatever the agent
/// writes is its own. The umask covers files written by the agent and its children
/// (runc, CRIU, skopeo); the state dirs get their mode set explicitly, since a umask
/// only ever removes bits and an existing (hostPath) dir keeps whatever it had.
pub fn private_state_dirs(config: &Config) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for d in [
        config.state_dir.clone(),
        config.checkpoints_dir(),
        config.bundles_dir(),
        config.work_dir(),
    ] {
        std::fs::create_dir_all(&d)
            .and_then(|()| std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| DaemonError::Io(format!("creating {} (mode 0700)", d.display()), e))?;
    }
    Ok(())
}

/// Serve until SIGTERM/SIGINT.
pub async fn run(config: Config, inherited: Inherited) -> Result<(), DaemonError> {
    private_state_dirs(&config)?;
    crate::image_store::remove_stale_layouts(&config.work_dir());
    {
        let runc = crate::runc::Runc::new(&config.runc_path)
            .root(config.runc_root.clone())
            .criu(&config.criu_path);
        let r = crate::recovery::recover(&config, &runc).await;
        if !r.resumed.is_empty() || !r.removed.is_empty() || !r.orphans_killed.is_empty() {
            tracing::warn!(recovered = ?r, "repaired what an interrupted agent left");
        }
    }
    let criu = match crate::criu_check::criu_version(&config.criu_path).await {
        Ok(v) => {
            let kernel = crate::criu_check::kernel_release();
            match crate::criu_check::Version::parse(&kernel)
                .and_then(|k| crate::criu_check::refusal(v, k))
            {
                Some(why) => Err(why),
                None => Ok(v.to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(why) = &criu {
        tracing::warn!(%why, "CRIU unusable: /readyz will fail");
    }
    let unix = match inherited.unix {
        Some(l) => {
            tracing::info!("serving on the Unix socket inherited from systemd");
            l.set_nonblocking(true)
                .map_err(|e| DaemonError::Io("inherited socket".into(), e))?;
            tokio::net::UnixListener::from_std(l)
                .map_err(|e| DaemonError::Io("inherited socket".into(), e))?
        }
        None => {
            let l = listeners::bind_unix(
                &config.socket_path,
                config.socket_mode,
                config.socket_group.as_deref(),
            )?;
            tracing::info!(path = %config.socket_path.display(), "serving on Unix socket");
            l
        }
    };
    let tcp = match (inherited.tcp, &config.tcp_listen) {
        (Some(l), _) => {
            l.set_nonblocking(true)
                .map_err(|e| DaemonError::Io("inherited TCP socket".into(), e))?;
            Some(
                tokio::net::TcpListener::from_std(l)
                    .map_err(|e| DaemonError::Io("inherited TCP socket".into(), e))?,
            )
        }
        (None, Some(addr)) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Io(format!("binding {addr}"), e))?,
        ),
        (None, None) => None,
    };
    let mode = match &tcp {
        Some(_) => Some(tcp_mode(&config).await?),
        None => None,
    };
    raise_nofile(&config);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let retention = Duration::from_secs(config.checkpoint_retention_seconds);
    let state = AppState::new(config, criu);
    let jobs = state.jobs.clone();
    let stop = CancellationToken::new();

    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(api::serve_unix(unix, state.clone(), stop.clone()));
    match (tcp, mode) {
        (Some(tcp), Some(TcpMode::Insecure(token))) => {
            if let Ok(a) = tcp.local_addr() {
                tracing::info!(addr = %a, "serving on TCP, plain HTTP (bearer token required)");
            }
            servers.spawn(api::serve_tcp(tcp, state.clone(), token, stop.clone()));
        }
        (Some(tcp), Some(TcpMode::Tls(tls))) => {
            if let Ok(a) = tcp.local_addr() {
                tracing::info!(addr = %a, "serving on TCP with mutual TLS");
            }
            servers.spawn(api::serve_tls(tcp, state.clone(), tls, stop.clone()));
        }
        _ => {}
    }
    if !retention.is_zero() {
        tokio::spawn(expire_checkpoints(state.store.clone(), retention));
    }
    match crate::sd_notify::notify("READY=1") {
        Ok(true) => tracing::info!("notified systemd: READY=1"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "sd_notify failed"),
    }

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Io("SIGTERM".into(), e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::Io("SIGINT".into(), e))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        r = servers.join_next() => {
            tracing::error!(?r, "a listener stopped unexpectedly");
        }
    }
    let _ = crate::sd_notify::notify("STOPPING=1");
    jobs.shutdown(grace).await;
    stop.cancel();
    // Long-polls end with their jobs; give idle connections a moment to close.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}
