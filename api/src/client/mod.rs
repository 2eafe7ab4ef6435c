//! The one HTTP client of the node agents (API in docs/agent-api.md): over the agent's
//! Unix socket on the same node, over https with a client certificate (mutual TLS from
//! the cluster CA, the agents' certificates verified: [`tls`]), or over plain TCP with
//! a bearer token (agents run with `tcp_insecure`, local tests).
//!
//! The shim, the agent's CLI and the tests use it; requests and answers are the types
//! of this crate. [`AgentClient::raw`] is for tests that send what no typed caller
//! would (malformed bodies, unknown routes).

pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::{Serialize, de::DeserializeOwned};

use crate::job::{JobCancelQuery, MAX_WAIT_SECONDS};
use crate::{
    CheckpointList, CheckpointRequest, ContainerState, DirectSendRequest, ErrorBody, ErrorCode,
    ImportRequest, JobList, JobView, Probe, PullRequest, PushRequest, ReceiveReady, Removed,
    RestoreRequest,
};

/// Longest a single request may take (long-polls add their own wait on top).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent at {addr} unreachable: {message}")]
    Transport { addr: String, message: String },
    #[error("agent at {addr} answered {status} {code}: {message}")]
    Api {
        addr: String,
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("agent at {addr} sent an unexpected body: {message}")]
    Decode { addr: String, message: String },
    #[error("invalid agent address {0}")]
    Address(String),
}

impl AgentError {
    /// The request itself is wrong (a 4xx other than 404, 409 and 429): retrying won't
    /// help.
    pub fn is_permanent(&self) -> bool {
        match self {
            AgentError::Api { status, .. } => {
                (400..500).contains(status) && *status != 404 && *status != 409 && *status != 429
            }
            AgentError::Address(_) => true,
            _ => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            AgentError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The agent's error code, for an error answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            AgentError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Where an agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAddr {
    Unix(PathBuf),
    /// `http://host:port` and the bearer token of the agent's TCP listener.
    Tcp {
        base: String,
        token: String,
    },
    /// `https://host:port`, and the directory holding the caller's `tls.crt`, `tls.key`
    /// and the cluster's `ca.crt` (a cert-manager Secret mount).
    Tls {
        base: String,
        tls_dir: PathBuf,
    },
}

impl AgentAddr {
    /// `unix:/run/ms2m/agent.sock`, `/run/ms2m/agent.sock` or `http://host:port` (the
    /// token then comes separately).
    pub fn parse(s: &str, token: Option<String>) -> Result<Self> {
        Self::parse_with(s, token, None)
    }

    /// [`AgentAddr::parse`], also taking `https://host:port` with the TLS directory.
    pub fn parse_with(s: &str, token: Option<String>, tls_dir: Option<PathBuf>) -> Result<Self> {
        if s.starts_with("https://") {
            let tls_dir = tls_dir.ok_or_else(|| {
                AgentError::Address(format!("{s}: an https agent needs the TLS directory"))
            })?;
            return Ok(AgentAddr::Tls {
                base: s.trim_end_matches('/').to_owned(),
                tls_dir,
            });
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(AgentAddr::Unix(path.into()));
        }
        if s.starts_with('/') {
            return Ok(AgentAddr::Unix(s.into()));
        }
        if s.starts_with("http://") {
            let token = token
                .ok_or_else(|| AgentError::Address(format!("{s}: a TCP agent needs a token")))?;
            return Ok(AgentAddr::Tcp {
                base: s.trim_end_matches('/').to_owned(),
                token,
            });
        }
        Err(AgentError::Address(format!(
            "{s}: use unix:<path>, an absolute socket path, https://host:port or http://host:port"
        )))
    }
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            AgentAddr::Tcp { base, .. } | AgentAddr::Tls { base, .. } => f.write_str(base),
        }
    }
}

/// hyper-util's errors say only "client error (Connect)" and keep the reason (the
/// socket's "No such file or directory", "Connection refused") in their sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

enum Transport {
    Unix(Client<hyperlocal::UnixConnector, Full<Bytes>>),
    Tcp(Client<HttpConnector, Full<Bytes>>),
    /// Or why the TLS files could not be used (reported by every call).
    Tls(std::result::Result<HttpsClient, String>),
}

/// The https client of an agent reached over mutual TLS.
fn tls_client(dir: &std::path::Path) -> std::result::Result<HttpsClient, String> {
    let cfg = tls::client_config(dir)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// An answer as it came: for callers that check statuses and bodies themselves.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl RawAnswer {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The error code of an error answer.
    pub fn code(&self) -> Option<ErrorCode> {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .ok()
            .map(|b| b.error.code)
    }
}

/// A client for one agent.
pub struct AgentClient {
    addr: AgentAddr,
    transport: Transport,
}

impl AgentClient {
    pub fn new(addr: AgentAddr) -> Self {
        let builder = Client::builder(TokioExecutor::new());
        let transport = match &addr {
            AgentAddr::Unix(_) => Transport::Unix(builder.build(hyperlocal::UnixConnector)),
            AgentAddr::Tcp { .. } => Transport::Tcp(builder.build(HttpConnector::new())),
            AgentAddr::Tls { tls_dir, .. } => Transport::Tls(tls_client(tls_dir)),
        };
        Self { addr, transport }
    }

    /// A client of the agent's Unix socket.
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        Self::new(AgentAddr::Unix(socket.into()))
    }

    pub fn addr(&self) -> &AgentAddr {
        &self.addr
    }

    /// One request, `headers` added as given and `body` sent as is (with
    /// `Content-Type: application/json` unless `headers` name another). Error answers
    /// are answers here, not errors.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<RawAnswer> {
        let uri: hyper::Uri = match &self.addr {
            AgentAddr::Unix(sock) => hyperlocal::Uri::new(sock, path).into(),
            AgentAddr::Tcp { base, .. } | AgentAddr::Tls { base, .. } => format!("{base}{path}")
                .parse()
                .map_err(|e| AgentError::Address(format!("{base}{path}: {e}")))?,
        };
        let mut req = Request::builder().method(method).uri(uri);
        // An empty token sends none (tests of the listener's refusal).
        if let AgentAddr::Tcp { token, .. } = &self.addr
            && !token.trim().is_empty()
        {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let typed = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !typed {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let bytes = body.unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| AgentError::Address(e.to_string()))?;
        let transport = |e: String| AgentError::Transport {
            addr: self.addr.to_string(),
            message: e,
        };
        let fut = async {
            let resp = match &self.transport {
                Transport::Unix(c) => c.request(req).await,
                Transport::Tcp(c) => c.request(req).await,
                Transport::Tls(Ok(c)) => c.request(req).await,
                Transport::Tls(Err(e)) => return Err(transport(format!("TLS files: {e}"))),
            }
            .map_err(|e| transport(error_chain(&e)))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok::<_, AgentError>(RawAnswer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| transport(format!("no answer within {} s", timeout.as_secs())))?
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T> {
        let body = body.map(|b| serde_json::to_vec(b).expect("requests serialize"));
        let a = self.raw(method, path, &[], body, timeout).await?;
        if !a.status.is_success() {
            return Err(self.api_error(&a));
        }
        serde_json::from_slice(&a.body).map_err(|e| AgentError::Decode {
            addr: self.addr.to_string(),
            message: format!("{e}: {}", String::from_utf8_lossy(&a.body)),
        })
    }

    fn api_error(&self, a: &RawAnswer) -> AgentError {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&a.body) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                ErrorCode::Unknown,
                String::from_utf8_lossy(&a.body).into_owned(),
            ),
        };
        AgentError::Api {
            addr: self.addr.to_string(),
            status: a.status.as_u16(),
            code,
            message,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(Method::GET, path, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.json(Method::POST, path, Some(body), REQUEST_TIMEOUT)
            .await
    }

    /// `None` for a 404.
    async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn healthz(&self) -> Result<Probe> {
        self.get("/healthz").await
    }

    pub async fn ready(&self) -> Result<Probe> {
        self.get("/readyz").await
    }

    /// `GET /metrics`: the exposition text.
    pub async fn metrics(&self) -> Result<String> {
        let a = self
            .raw(Method::GET, "/metrics", &[], None, REQUEST_TIMEOUT)
            .await?;
        if !a.status.is_success() {
            return Err(self.api_error(&a));
        }
        Ok(String::from_utf8_lossy(&a.body).into_owned())
    }

    pub async fn start_checkpoint(&self, req: &CheckpointRequest) -> Result<JobView> {
        self.post("/v1/checkpoints", req).await
    }

    pub async fn start_push(&self, req: &PushRequest) -> Result<JobView> {
        self.post("/v1/pushes", req).await
    }

    pub async fn start_pull(&self, req: &PullRequest) -> Result<JobView> {
        self.post("/v1/pulls", req).await
    }

    pub async fn start_direct_send(&self, req: &DirectSendRequest) -> Result<JobView> {
        self.post("/v1/direct/sends", req).await
    }

    pub async fn start_restore(&self, req: &RestoreRequest) -> Result<JobView> {
        self.post("/v1/restores", req).await
    }

    pub async fn start_import(&self, req: &ImportRequest) -> Result<JobView> {
        self.post("/v1/images", req).await
    }

    /// The job, waiting up to `wait` for it to finish; `None` when the agent does not know
    /// it (it restarted: jobs live in memory).
    pub async fn job(&self, id: &str, wait: Duration) -> Result<Option<JobView>> {
        let secs = wait.as_secs().min(MAX_WAIT_SECONDS);
        let path = format!("{}?wait={secs}", crate::routes::job_path(id));
        match self
            .json(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT + wait)
            .await
        {
            Ok(job) => Ok(Some(job)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Long-polls the job until it ends (however it ends).
    pub async fn wait_job(&self, id: &str) -> Result<JobView> {
        loop {
            match self.job(id, Duration::from_secs(60)).await? {
                Some(j) if j.status.is_terminal() => return Ok(j),
                Some(_) => {}
                None => {
                    return Err(AgentError::Api {
                        addr: self.addr.to_string(),
                        status: 404,
                        code: ErrorCode::NotFound,
                        message: format!("no job {id}"),
                    });
                }
            }
        }
    }

    pub async fn jobs(&self) -> Result<JobList> {
        self.get("/v1/jobs").await
    }

    /// `DELETE /v1/jobs/{id}`: cancels a running job, or with `purge` forgets a finished
    /// one and its files.
    pub async fn cancel_job(&self, id: &str, purge: bool) -> Result<JobView> {
        let q = JobCancelQuery { purge };
        let path = if q.purge {
            format!("{}?purge=true", crate::routes::job_path(id))
        } else {
            crate::routes::job_path(id)
        };
        self.json(Method::DELETE, &path, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    pub async fn checkpoints(&self) -> Result<CheckpointList> {
        self.get("/v1/checkpoints").await
    }

    /// `GET /v1/checkpoints/{id}`: the inspect summary; `None` when there is no such
    /// checkpoint.
    pub async fn inspect_checkpoint(&self, id: &str) -> Result<Option<serde_json::Value>> {
        self.get_opt(&format!("/v1/checkpoints/{id}")).await
    }

    /// Whether the agent holds a complete checkpoint with this id.
    pub async fn checkpoint_exists(&self, id: &str) -> Result<bool> {
        Ok(self.inspect_checkpoint(id).await?.is_some())
    }

    /// `GET /v1/direct/receive/{id}`: would a Direct receive into `id` start?
    pub async fn receive_ready(&self, id: &str) -> Result<ReceiveReady> {
        self.get(&format!("{}{id}", crate::wire::ROUTE_PREFIX))
            .await
    }

    pub async fn container(&self, id: &str) -> Result<Option<ContainerState>> {
        self.get_opt(&format!("/v1/containers/{id}")).await
    }

    /// Kills and deletes a standalone container; one that is already gone is fine.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/containers/{id}")).await
    }

    /// Deletes a checkpoint; one that is already gone is fine (`409` while a job uses it).
    pub async fn delete_checkpoint(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/checkpoints/{id}")).await
    }

    /// Removes an image the agent imported into its node's image store; an absent one is
    /// fine.
    pub async fn delete_image(&self, reference: &str) -> Result<Removed> {
        self.json(
            Method::DELETE,
            &images_path(reference),
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let a = self
            .raw(Method::DELETE, path, &[], None, REQUEST_TIMEOUT)
            .await?;
        if a.status.is_success() || a.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.api_error(&a))
    }
}

/// `/v1/images?reference=<reference>`, the reference form-urlencoded (it holds `/` and
/// `:`, and may hold `@`).
fn images_path(reference: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("reference", reference)
        .finish();
    format!("/v1/images?{q}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_are_encoded_in_the_query() {
        assert_eq!(
            images_path("localhost/ms2m/default/mig:default.mig-0c5e9a7d"),
            "/v1/images?reference=localhost%2Fms2m%2Fdefault%2Fmig%3Adefault.mig-0c5e9a7d"
        );
        assert_eq!(
            images_path("r/x@sha256:ab"),
            "/v1/images?reference=r%2Fx%40sha256%3Aab"
        );
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            AgentAddr::parse("unix:/run/ms2m/agent.sock", None).unwrap(),
            AgentAddr::Unix("/run/ms2m/agent.sock".into())
        );
        assert!(AgentAddr::parse("http://10.0.0.1:9411", None).is_err());
        assert!(matches!(
            AgentAddr::parse("http://10.0.0.1:9411/", Some("t".into())).unwrap(),
            AgentAddr::Tcp { base, .. } if base == "http://10.0.0.1:9411"
        ));
        assert!(AgentAddr::parse("ftp://x", None).is_err());
    }
}
