//! The agent's HTTP API (see docs/agent-api.md): an axum router served on the Unix
//! socket and, optionally, on TCP behind a bearer token.

pub mod auth;
pub mod error;
pub mod identity;
pub mod peer;
mod routes;
pub mod serve;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post, put};

use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::runc::Runc;

pub use error::ApiError;
pub use identity::Identity;
pub use peer::Peer;
/// Stops `serve_unix` / `serve_tcp` gracefully.
pub use tokio_util::sync::CancellationToken;

/// Largest JSON body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub jobs: Jobs,
    pub metrics: Metrics,
    pub runc: Runc,
    pub store: CheckpointStore,
    /// `criu --version` at start, or why CRIU is unusable.
    pub criu: Arc<Result<String, String>>,
}

impl AppState {
    pub fn new(config: Config, criu: Result<String, String>) -> Self {
        let metrics = Metrics::new();
        let jobs = Jobs::with_limits(
            metrics.clone(),
            std::time::Duration::from_secs(config.job_retention_seconds),
            config.limits.max_concurrent_jobs,
            config.limits.max_queued_jobs,
        );
        let runc = Runc::new(&config.runc_path)
            .root(config.runc_root.clone())
            .criu(&config.criu_path);
        Self {
            store: CheckpointStore::new(config.checkpoints_dir()),
            config: Arc::new(config),
            jobs,
            metrics,
            runc,
            criu: Arc::new(criu),
        }
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    let caller = req
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or(Identity::Local);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        %method, %path, status = resp.status().as_u16(), peer = %peer, %caller,
        peer_uid = peer.uid, peer_pid = peer.pid,
        ms = started.elapsed().as_millis() as u64, "request"
    );
    resp
}

/// How a listener's callers are checked.
#[derive(Clone)]
pub enum Access {
    /// The Unix socket: its file mode.
    Local,
    /// Plain TCP (`tcp_insecure`): the bearer token.
    Token(Arc<String>),
    /// TLS: the client certificate's identity, per verb.
    Mtls,
}

/// The router; `token` set means "TCP listener: require the bearer token".
pub fn router(state: AppState, token: Option<Arc<String>>) -> Router {
    router_for(
        state,
        match token {
            Some(t) => Access::Token(t),
            None => Access::Local,
        },
    )
}

pub fn router_for(state: AppState, access: Access) -> Router {
    let r = Router::new()
        .route("/healthz", get(routes::probes::healthz))
        .route("/readyz", get(routes::probes::readyz))
        .route("/metrics", get(routes::probes::metrics))
        .route("/v1/jobs", get(routes::jobs::list))
        .route(
            "/v1/jobs/{id}",
            get(routes::jobs::get).delete(routes::jobs::cancel),
        )
        .route(
            "/v1/checkpoints",
            post(routes::checkpoints::create).get(routes::checkpoints::list),
        )
        .route(
            "/v1/checkpoints/{id}",
            get(routes::checkpoints::inspect).delete(routes::checkpoints::remove),
        )
        .route("/v1/restores", post(routes::restores::create))
        .route(
            "/v1/containers/{id}",
            get(routes::containers::state).merge(delete(routes::containers::remove)),
        )
        .route("/v1/pushes", post(routes::transfer::push))
        .route("/v1/pulls", post(routes::transfer::pull))
        .route("/v1/direct/sends", post(routes::transfer::direct_send))
        .route(
            "/v1/images",
            post(routes::images::import).delete(routes::images::remove),
        )
        .route(
            "/v1/direct/receive/{id}",
            put(routes::transfer::direct_receive)
                .get(routes::transfer::direct_check)
                // The stream is the body: no size limit on this route.
                .layer(DefaultBodyLimit::disable()),
        )
        .fallback(routes::probes::not_found)
        .method_not_allowed_fallback(routes::probes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    let r = match access {
        Access::Local => r,
        Access::Token(token) => r.layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        )),
        Access::Mtls => r.layer(axum::middleware::from_fn(identity::require_identity)),
    };
    r.layer(axum::middleware::from_fn(log_request))
}

/// Serve the API on a Unix listener until `stop` fires (used by `serve` and by tests
/// that run an agent in-process).
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    state: AppState,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let limits = state.config.limits.clone();
    serve::serve(
        serve::Listener::Unix(listener),
        router_for(state, Access::Local),
        serve::Transport::Plain(Identity::Local),
        limits,
        stop,
    )
    .await
}

/// Serve the API on plain TCP, bearer token required, until `stop` fires (the
/// `tcp_insecure` setting: local tests only).
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    state: AppState,
    token: Arc<String>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let limits = state.config.limits.clone();
    serve::serve(
        serve::Listener::Tcp(listener),
        router_for(state, Access::Token(token)),
        serve::Transport::Plain(Identity::Token),
        limits,
        stop,
    )
    .await
}

/// Serve the API on TCP with TLS, callers named by their client certificates.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: AppState,
    tls: Arc<rustls::ServerConfig>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let limits = state.config.limits.clone();
    serve::serve(
        serve::Listener::Tcp(listener),
        router_for(state, Access::Mtls),
        serve::Transport::Tls(tokio_rustls::TlsAcceptor::from(tls)),
        limits,
        stop,
    )
    .await
}
