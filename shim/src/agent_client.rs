//! HTTP client for the node agents (API in docs/agent-api.md): over the agent's Unix
//! socket on the same node, over https with the shim's client certificate (mutual TLS
//! from the cluster CA, the agents' certificates verified), or over plain TCP with a
//! bearer token (agents run with `tcp_insecure`, local tests).
//!
//! Only what the shim needs: start and poll jobs (checkpoint, push, direct send,
//! restore), inspect and delete checkpoints, remove imported images, and manage
//! standalone containers.

use std::path::PathBuf;
use std::time::Duration;

use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Longest a single request may take (long-polls add their own wait on top).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent at {addr} unreachable: {message}")]
    Transport { addr: String, message: String },
    #[error("agent at {addr} answered {status} {code}: {message}")]
    Api {
        addr: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("agent at {addr} sent an unexpected body: {message}")]
    Decode { addr: String, message: String },
    #[error("invalid agent address {0}")]
    Address(String),
}

impl AgentError {
    /// 4xx answers other than 404/409 mean the request itself is wrong: retrying won't help.
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
    /// `https://host:port`, and the directory holding the shim's `tls.crt`, `tls.key`
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

/// A job as the agent reports it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub status: JobStatus,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: Option<u64>,
    #[serde(default)]
    pub rate_bytes_per_second: f64,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// The agent's clock when the job ended: where a driver puts the phase boundary.
    #[serde(default)]
    pub finished_at: Option<jiff::Timestamp>,
    #[serde(default)]
    pub error: Option<JobError>,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Aborted,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub phase: Option<String>,
}

impl Job {
    /// A string field of `result`, e.g. `checkpoint_id` or `image`.
    pub fn result_str(&self, field: &str) -> Option<String> {
        self.result
            .as_ref()?
            .get(field)?
            .as_str()
            .map(str::to_owned)
    }

    /// A string anywhere in `result`, by JSON pointer, e.g. `/received/imported/reference`.
    pub fn result_at(&self, pointer: &str) -> Option<String> {
        self.result
            .as_ref()?
            .pointer(pointer)?
            .as_str()
            .map(str::to_owned)
    }

    pub fn failure(&self) -> String {
        match &self.error {
            Some(e) => format!(
                "{} ({}): {}",
                e.code,
                e.phase.as_deref().unwrap_or("-"),
                e.message
            ),
            None => format!("job {} ended {:?}", self.id, self.status),
        }
    }
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum CheckpointRequest {
    Runc {
        container_id: String,
        leave_running: bool,
        tcp_established: bool,
        checkpoint_id: String,
        /// The image rootfs the container runs on, recorded so a restore can find it.
        #[serde(skip_serializing_if = "Option::is_none")]
        rootfs_image: Option<String>,
    },
    Kubelet {
        namespace: String,
        pod: String,
        container: String,
        timeout_seconds: u32,
        checkpoint_id: String,
    },
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct PushRequest {
    pub checkpoint_id: String,
    pub image: String,
    pub compression: String,
    pub insecure: bool,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct DirectSendRequest {
    pub checkpoint_id: String,
    pub target: String,
    pub target_checkpoint_id: String,
    /// The target's node: over mutual TLS the source agent sends only to a peer whose
    /// certificate names `ms2m-agent:<target_node>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// The target agent imports the received checkpoint into its node's image store under
    /// this reference (Kubernetes: the runtime restores only from an image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_reference: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RestoreRequest {
    pub checkpoint_id: String,
    pub container_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    pub tcp_established: bool,
    /// The restored `/etc/hostname` (the agent's default is `container_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub pid: Option<i64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
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

/// The https client of an agent reached over mutual TLS (`crate::agent_tls`).
fn tls_client(dir: &std::path::Path) -> std::result::Result<HttpsClient, String> {
    let cfg = crate::agent_tls::client_config(dir)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
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

    pub fn addr(&self) -> &AgentAddr {
        &self.addr
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        let uri: hyper::Uri = match &self.addr {
            AgentAddr::Unix(sock) => hyperlocal::Uri::new(sock, path).into(),
            AgentAddr::Tcp { base, .. } | AgentAddr::Tls { base, .. } => format!("{base}{path}")
                .parse()
                .map_err(|e| AgentError::Address(format!("{base}{path}: {e}")))?,
        };
        let mut req = Request::builder().method(method).uri(uri);
        if let AgentAddr::Tcp { token, .. } = &self.addr {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let has_body = body.is_some();
        if has_body {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
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
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok::<_, AgentError>((status, bytes))
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
        let (status, bytes) = self.call(method, path, body, timeout).await?;
        if !status.is_success() {
            return Err(self.api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Decode {
            addr: self.addr.to_string(),
            message: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
        })
    }

    fn api_error(&self, status: StatusCode, bytes: &[u8]) -> AgentError {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                "unknown".into(),
                String::from_utf8_lossy(bytes).into_owned(),
            ),
        };
        AgentError::Api {
            addr: self.addr.to_string(),
            status: status.as_u16(),
            code,
            message,
        }
    }

    pub async fn ready(&self) -> Result<()> {
        let _: serde_json::Value = self
            .json(Method::GET, "/readyz", None::<&()>, REQUEST_TIMEOUT)
            .await?;
        Ok(())
    }

    pub async fn start_checkpoint(&self, req: &CheckpointRequest) -> Result<Job> {
        self.json(Method::POST, "/v1/checkpoints", Some(req), REQUEST_TIMEOUT)
            .await
    }

    pub async fn start_push(&self, req: &PushRequest) -> Result<Job> {
        self.json(Method::POST, "/v1/pushes", Some(req), REQUEST_TIMEOUT)
            .await
    }

    pub async fn start_direct_send(&self, req: &DirectSendRequest) -> Result<Job> {
        self.json(Method::POST, "/v1/direct/sends", Some(req), REQUEST_TIMEOUT)
            .await
    }

    /// `POST /v1/pulls`: `{"image", "checkpoint_id", "insecure"}`.
    pub async fn start_pull(&self, req: &serde_json::Value) -> Result<Job> {
        self.json(Method::POST, "/v1/pulls", Some(req), REQUEST_TIMEOUT)
            .await
    }

    pub async fn start_restore(&self, req: &RestoreRequest) -> Result<Job> {
        self.json(Method::POST, "/v1/restores", Some(req), REQUEST_TIMEOUT)
            .await
    }

    /// The job, waiting up to `wait` for it to finish; `None` when the agent does not know
    /// it (it restarted: jobs live in memory).
    pub async fn job(&self, id: &str, wait: Duration) -> Result<Option<Job>> {
        let secs = wait.as_secs().min(300);
        let path = format!("/v1/jobs/{id}?wait={secs}");
        match self
            .json(Method::GET, &path, None::<&()>, REQUEST_TIMEOUT + wait)
            .await
        {
            Ok(job) => Ok(Some(job)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the agent holds a complete checkpoint with this id.
    pub async fn checkpoint_exists(&self, id: &str) -> Result<bool> {
        match self
            .json::<serde_json::Value>(
                Method::GET,
                &format!("/v1/checkpoints/{id}"),
                None::<&()>,
                REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn container(&self, id: &str) -> Result<Option<ContainerState>> {
        match self
            .json(
                Method::GET,
                &format!("/v1/containers/{id}"),
                None::<&()>,
                REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
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
    pub async fn delete_image(&self, reference: &str) -> Result<()> {
        self.delete(&images_path(reference)).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (status, bytes) = self
            .call(Method::DELETE, path, None, REQUEST_TIMEOUT)
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.api_error(status, &bytes))
    }
}

/// `/v1/images?reference=<reference>`, the reference percent-encoded (it holds `/` and
/// `:`, and may hold `@`).
fn images_path(reference: &str) -> String {
    let mut path = String::from("/v1/images?reference=");
    for b in reference.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_serialize_as_the_agent_api_documents() {
        let r = CheckpointRequest::Runc {
            container_id: "counter-1".into(),
            leave_running: true,
            tcp_established: false,
            checkpoint_id: "counter-1-ckpt".into(),
            rootfs_image: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"backend": "runc", "container_id": "counter-1", "leave_running": true,
                "tcp_established": false, "checkpoint_id": "counter-1-ckpt"})
        );
        let k = CheckpointRequest::Kubelet {
            namespace: "default".into(),
            pod: "counter-0".into(),
            container: "counter".into(),
            timeout_seconds: 60,
            checkpoint_id: "c".into(),
        };
        assert_eq!(serde_json::to_value(&k).unwrap()["backend"], "kubelet");
    }

    #[test]
    fn a_direct_send_names_the_import_only_when_there_is_one() {
        let mut r = DirectSendRequest {
            checkpoint_id: "c".into(),
            target: "http://10.0.0.12:9411".into(),
            target_checkpoint_id: "c".into(),
            target_node: None,
            import_reference: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"checkpoint_id": "c", "target": "http://10.0.0.12:9411",
                "target_checkpoint_id": "c"}),
            "the standalone driver's request is unchanged"
        );
        r.import_reference = Some("localhost/ms2m/default/mig:c".into());
        assert_eq!(
            serde_json::to_value(&r).unwrap()["import_reference"],
            "localhost/ms2m/default/mig:c"
        );
    }

    #[test]
    fn image_references_are_percent_encoded_in_the_query() {
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
    fn an_imported_reference_is_read_from_the_direct_send_result() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "id": "job-1", "kind": "direct_send", "status": "succeeded",
            "result": {"target": "http://10.0.0.12:9411", "target_checkpoint_id": "c",
                "received": {"path": "/p", "size_bytes": 1, "bytes_received": 1, "layers": [],
                    "imported": {"reference": "localhost/ms2m/default/mig:c",
                        "store": "containers-storage", "image_id": "sha256:00"}}}
        }))
        .unwrap();
        assert_eq!(
            job.result_at("/received/imported/reference").as_deref(),
            Some("localhost/ms2m/default/mig:c")
        );
        assert_eq!(job.result_at("/received/imported/missing"), None);
    }

    #[test]
    fn jobs_parse_from_the_documented_shape() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "id": "job-3f9c1a7b2e6d4c05", "kind": "checkpoint", "status": "failed", "phase": "dumping",
            "bytes_done": 0, "bytes_total": null, "rate_bytes_per_second": 0.0,
            "created_at": "2026-11-28T23:59:01.123Z", "started_at": null, "finished_at": null,
            "duration_ms": null,
            "error": {"code": "criu_failed", "message": "boom", "phase": "dumping"}, "result": null
        }))
        .unwrap();
        assert!(job.status.is_terminal());
        assert_eq!(job.failure(), "criu_failed (dumping): boom");
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
