//! Requests against one repository of one registry: scheme detection, authentication,
//! retries for replayable requests, and the blob/manifest operations the transfer
//! engine needs.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::RwLock;
use tracing::{debug, warn};

use super::auth::{Challenge, Credentials};
use super::{Error, Reference, tls};

/// Manifest media types we read back, best first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Explicit credentials (flags / job request); see `auth` for the other sources.
    pub credentials: Option<Credentials>,
    pub auth_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for this registry.
    pub ca_file: Option<PathBuf>,
    /// Allow plain HTTP to a registry that is not on this host.
    pub insecure: bool,
    /// Attempts for one replayable request, and for one layer upload.
    pub attempts: u32,
    /// First back-off delay; doubles per attempt, capped at 8 s.
    pub backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            credentials: None,
            auth_file: None,
            ca_file: None,
            insecure: false,
            attempts: 5,
            backoff: Duration::from_millis(200),
        }
    }
}

impl ClientOptions {
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        let d = self.backoff.saturating_mul(1 << attempt.min(6));
        d.min(Duration::from_secs(8))
    }
}

/// The token scope we ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A manifest (or index) as fetched.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

/// A blob download: the response and where in the blob its body starts.
pub struct BlobResponse {
    pub response: Response,
    pub start: u64,
}

pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    repository: String,
    scheme: Scheme,
    access: Access,
    credentials: Option<Credentials>,
    authorization: RwLock<Option<String>>,
    opts: ClientOptions,
}

impl RegistryClient {
    /// Connects to the registry of `reference`: picks the scheme, checks `/v2/` and
    /// authenticates for `access` on its repository up front, so that streamed uploads
    /// (which cannot be replayed after a 401) start with a valid token.
    pub async fn connect(
        reference: &Reference,
        opts: ClientOptions,
        access: Access,
    ) -> Result<Self, Error> {
        let host = reference.api_host().to_string();
        let credentials = Credentials::resolve(
            &reference.registry,
            opts.credentials.clone(),
            opts.auth_file.as_deref(),
        )?;
        let tls = tls::client_config(opts.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(15))
            .tcp_keepalive(Duration::from_secs(20))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(16)
            .user_agent(concat!("ms2m-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Tls(format!("HTTP client: {e}")))?;
        let plain_ok = reference.is_loopback() || opts.insecure;
        let (scheme, ping) = probe(&http, &host, plain_ok).await?;
        let client = Self {
            http,
            base: format!(
                "{}://{host}",
                if scheme == Scheme::Https {
                    "https"
                } else {
                    "http"
                }
            ),
            repository: reference.repository.clone(),
            scheme,
            access,
            credentials,
            authorization: RwLock::new(None),
            opts,
        };
        match ping.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => client.authenticate(ping.headers()).await?,
            s => {
                return Err(status_error("GET", &format!("{}/v2/", client.base), s, ping).await);
            }
        }
        debug!(base = %client.base, repo = %client.repository, ?scheme, "registry connected");
        Ok(client)
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    /// Upload locations may be relative (distribution) or absolute (most others).
    fn resolve_location(&self, headers: &HeaderMap) -> Result<String, Error> {
        let loc = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Protocol("upload response without Location".into()))?;
        if loc.starts_with("http://") || loc.starts_with("https://") {
            Ok(loc.to_string())
        } else {
            Ok(format!(
                "{}{}",
                self.base,
                if loc.starts_with('/') { "" } else { "/" }
            ) + loc)
        }
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<(), Error> {
        let header = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(Challenge::parse)
            .max_by_key(|c| matches!(c, Challenge::Bearer { .. }));
        let value = match header {
            None => {
                return Err(Error::Auth(
                    "401 without a Basic or Bearer WWW-Authenticate challenge".into(),
                ));
            }
            Some(Challenge::Basic) => match &self.credentials {
                Some(c) => c.basic_header(),
                None => {
                    return Err(Error::Auth(format!(
                        "{} wants credentials: pass --username/--password, set {}/{} or add it to a docker config.json",
                        self.base,
                        super::ENV_USERNAME,
                        super::ENV_PASSWORD
                    )));
                }
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                self.fetch_token(&realm, service.as_deref()).await?
            }
        };
        *self.authorization.write().await = Some(value);
        Ok(())
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>) -> Result<String, Error> {
        let actions = match self.access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        let scope = format!("repository:{}:{actions}", self.repository);
        let mut url = format!(
            "{realm}{}scope={}",
            if realm.contains('?') { '&' } else { '?' },
            query_escape(&scope)
        );
        if let Some(s) = service {
            url.push_str(&format!("&service={}", query_escape(s)));
        }
        let mut req = self.http.get(&url);
        if let Some(c) = &self.credentials {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|e| http_error("GET", realm, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(Error::Auth(format!(
                "token server {realm} answered {status}: {}",
                truncate(&body)
            )));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Auth(format!("token server {realm}: {e}")))?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| Error::Auth(format!("token server {realm}: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Auth(format!("token server {realm}: no token in answer")))?;
        Ok(format!("Bearer {token}"))
    }

    async fn authorized(&self, req: RequestBuilder) -> RequestBuilder {
        match self.authorization.read().await.as_deref() {
            Some(v) => req.header(AUTHORIZATION, v),
            None => req,
        }
    }

    /// Sends a replayable request built by `make`, re-authenticating once on 401 and
    /// retrying transport errors, 5xx and 429 with back-off.
    async fn send(
        &self,
        method: Method,
        url: &str,
        make: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, Error> {
        let mut reauthed = false;
        let mut attempt = 0;
        loop {
            let req = self
                .authorized(make(self.http.request(method.clone(), url)))
                .await;
            let err = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    self.authenticate(resp.headers()).await?;
                    continue;
                }
                Ok(resp) if is_retryable_status(resp.status()) => {
                    status_error(method.as_str(), url, resp.status(), resp).await
                }
                Ok(resp) => return Ok(resp),
                Err(e) => http_error(method.as_str(), url, e),
            };
            attempt += 1;
            if attempt >= self.opts.attempts || !err.is_transient() {
                return Err(err);
            }
            let delay = self.opts.backoff_for(attempt - 1);
            warn!(%err, attempt, ?delay, "registry request failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends a request whose body cannot be replayed (a streamed PATCH): one attempt;
    /// the caller resumes or restarts the upload.
    async fn send_once(
        &self,
        req: RequestBuilder,
        method: &str,
        url: &str,
    ) -> Result<Response, Error> {
        self.authorized(req)
            .await
            .send()
            .await
            .map_err(|e| http_error(method, url, e))
    }

    pub async fn blob_exists(&self, digest: &str) -> Result<bool, Error> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send(Method::HEAD, &url, |r| r).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(status_error("HEAD", &url, s, resp).await),
        }
    }

    /// Opens an upload session; returns its location.
    pub async fn start_upload(&self) -> Result<String, Error> {
        let url = self.url("blobs/uploads/");
        let resp = self
            .send(Method::POST, &url, |r| r.header(CONTENT_LENGTH, "0"))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error("POST", &url, resp.status(), resp).await);
        }
        self.resolve_location(resp.headers())
    }

    /// How many bytes of an upload session the registry holds (for resuming).
    pub async fn upload_offset(&self, location: &str) -> Result<u64, Error> {
        let resp = self.send(Method::GET, location, |r| r).await?;
        if resp.status() != StatusCode::NO_CONTENT && !resp.status().is_success() {
            return Err(status_error("GET", location, resp.status(), resp).await);
        }
        // `Range: 0-<last>`; distribution reports an empty upload as `0-0` too, so `0-0`
        // is read as 0 (resuming one byte early only costs a restart if ever wrong).
        let range = resp
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0-0");
        let end = range
            .rsplit('-')
            .next()
            .and_then(|e| e.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::Protocol(format!("bad upload Range {range:?}")))?;
        Ok(if end == 0 { 0 } else { end + 1 })
    }

    /// Streams `body` into the upload at `location` (appending at the registry's current
    /// offset); returns the next location.
    pub async fn patch_stream(&self, location: &str, body: reqwest::Body) -> Result<String, Error> {
        let req = self
            .http
            .patch(location)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let resp = self.send_once(req, "PATCH", location).await?;
        if resp.status() != StatusCode::ACCEPTED && resp.status() != StatusCode::NO_CONTENT {
            return Err(status_error("PATCH", location, resp.status(), resp).await);
        }
        self.resolve_location(resp.headers())
    }

    /// Closes an upload session, naming the digest the registry must verify.
    pub async fn finish_upload(&self, location: &str, digest: &str) -> Result<(), Error> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let resp = self
            .send(Method::PUT, &url, |r| r.header(CONTENT_LENGTH, "0"))
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp.status(), resp).await);
        }
        Ok(())
    }

    /// Best effort: frees an abandoned upload session on the registry.
    pub async fn cancel_upload(&self, location: &str) {
        if let Err(e) = self.send(Method::DELETE, location, |r| r).await {
            debug!(%e, "cancelling upload session");
        }
    }

    /// Monolithic upload of a small blob (config), skipped when present.
    pub async fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<bool, Error> {
        if self.blob_exists(digest).await? {
            return Ok(false);
        }
        let location = self.start_upload().await?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let body = bytes.to_vec();
        let resp = self
            .send(Method::PUT, &url, |r| {
                r.header(CONTENT_TYPE, "application/octet-stream")
                    .body(body.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp.status(), resp).await);
        }
        Ok(true)
    }

    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let url = self.url(&format!("manifests/{reference}"));
        let body = bytes.to_vec();
        let resp = self
            .send(Method::PUT, &url, |r| {
                r.header(CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp.status(), resp).await);
        }
        Ok(())
    }

    /// Fetches a manifest or index and checks it against its digest when the reference
    /// (or the registry's `Docker-Content-Digest`) names one.
    pub async fn get_manifest(&self, reference: &str) -> Result<Manifest, Error> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .send(Method::GET, &url, |r| r.header(ACCEPT, MANIFEST_ACCEPT))
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("GET", &url, resp.status(), resp).await);
        }
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let claimed = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.map_err(|e| http_error("GET", &url, e))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            claimed.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(want) = expected
            && want != digest
        {
            return Err(Error::Protocol(format!(
                "manifest {reference}: digest {digest} does not match {want}"
            )));
        }
        Ok(Manifest {
            media_type,
            digest,
            bytes: bytes.to_vec(),
        })
    }

    /// Starts a blob download at byte `offset` (a range request when > 0).
    pub async fn get_blob(&self, digest: &str, offset: u64) -> Result<BlobResponse, Error> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self
            .send(Method::GET, &url, |r| {
                if offset > 0 {
                    r.header(RANGE, format!("bytes={offset}-"))
                } else {
                    r
                }
            })
            .await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => Ok(BlobResponse {
                response: resp,
                start: offset,
            }),
            s if s.is_success() => Ok(BlobResponse {
                response: resp,
                start: 0,
            }),
            s => Err(status_error("GET", &url, s, resp).await),
        }
    }

    /// Fetches a whole small blob (config) and verifies its digest.
    pub async fn get_small_blob(&self, digest: &str, max: u64) -> Result<Vec<u8>, Error> {
        let b = self.get_blob(digest, 0).await?;
        if b.response.content_length().is_some_and(|l| l > max) {
            return Err(Error::Protocol(format!(
                "blob {digest} larger than {max} bytes"
            )));
        }
        let bytes = b
            .response
            .bytes()
            .await
            .map_err(|e| http_error("GET", digest, e))?;
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if got != digest {
            return Err(Error::Protocol(format!(
                "blob {digest}: content has digest {got}"
            )));
        }
        Ok(bytes.to_vec())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

/// Decides between HTTPS and plain HTTP and returns the `/v2/` answer.
///
/// HTTPS is always tried first. Plain HTTP is only tried when allowed (loopback or the
/// insecure option) and the HTTPS attempt failed to connect; a 400 to plain HTTP means
/// the server speaks TLS after all, so the TLS error is the one worth reporting.
async fn probe(
    http: &reqwest::Client,
    host: &str,
    plain_ok: bool,
) -> Result<(Scheme, Response), Error> {
    let https = format!("https://{host}/v2/");
    let tls_err = match http.get(&https).send().await {
        Ok(r) => return Ok((Scheme::Https, r)),
        Err(e) => e,
    };
    if !plain_ok {
        return Err(http_error("GET", &https, tls_err));
    }
    let http_url = format!("http://{host}/v2/");
    match http.get(&http_url).send().await {
        Ok(r) if r.status() != StatusCode::BAD_REQUEST => Ok((Scheme::Http, r)),
        _ => Err(http_error("GET", &https, tls_err)),
    }
}

impl Error {
    /// A transport error with its whole cause chain in the message.
    pub fn from_reqwest(method: &str, url: &str, source: reqwest::Error) -> Error {
        http_error(method, url, source)
    }
}

pub(super) fn http_error(method: &str, url: &str, source: reqwest::Error) -> Error {
    Error::Http {
        method: method.to_string(),
        url: url.to_string(),
        detail: reqwest_error_chain(&source),
        source,
    }
}

fn reqwest_error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

async fn status_error(method: &str, url: &str, status: StatusCode, resp: Response) -> Error {
    let body = resp.text().await.unwrap_or_default();
    Error::Status {
        method: method.into(),
        url: url.into(),
        status: status.as_u16(),
        body: truncate(&body),
    }
}

fn truncate(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
