//! Who a request comes from, and what each caller may do.
//!
//! The Unix socket trusts its file mode; plain TCP (`tcp_insecure`, local tests) trusts
//! the bearer token; TLS names the caller by its client certificate. On TLS:
//! - no certificate: only the probes (401 otherwise);
//! - `ms2m-shim`: every verb except delivering into Direct receive;
//! - `ms2m-agent:<node>`: only Direct receive (`/v1/direct/receive/…`);
//! - anything else: 403.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ms2m_api::ErrorCode;

use super::error::ApiError;
use super::serve::PROBES;
use crate::tls::CertIdentity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A Unix socket peer.
    Local,
    /// A plain TCP peer; the bearer token decides.
    Token,
    /// A TLS peer without a client certificate.
    Anonymous,
    /// A TLS peer whose certificate (verified against the cluster CA) names this.
    Cert(CertIdentity),
    /// A TLS peer whose verified certificate names no ms2m identity.
    Unknown,
}

impl Identity {
    pub fn from_tls(conn: &rustls::ServerConnection) -> Self {
        match conn.peer_certificates().and_then(|c| c.first()) {
            None => Identity::Anonymous,
            Some(c) => crate::tls::identity_of(c)
                .map(Identity::Cert)
                .unwrap_or(Identity::Unknown),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Local => f.write_str("local"),
            Identity::Token => f.write_str("bearer-token"),
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::Cert(c) => c.fmt(f),
            Identity::Unknown => f.write_str("unknown-certificate"),
        }
    }
}

/// Whether `who` may call `path` on a TLS listener; `Err` is the refusal.
pub fn authorize(who: &Identity, path: &str) -> Result<(), ApiError> {
    if PROBES.contains(&path) {
        return Ok(());
    }
    let receive = path.starts_with(crate::transfer::direct::ROUTE_PREFIX);
    match (who, receive) {
        (Identity::Local | Identity::Token, _) => Ok(()),
        (Identity::Cert(CertIdentity::Shim), false) => Ok(()),
        (Identity::Cert(CertIdentity::Agent(_)), true) => Ok(()),
        (Identity::Anonymous, _) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::ClientCertificateRequired,
            "present a client certificate of the cluster CA",
        )),
        (who, _) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "{who} may not call {path}: the shim may call every verb but Direct receive, \
                 a peer agent only Direct receive"
            ),
        )),
    }
}

pub async fn require_identity(req: Request, next: Next) -> Response {
    let who = req
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or(Identity::Anonymous);
    if let Err(e) = authorize(&who, req.uri().path()) {
        tracing::warn!(caller = %who, path = %req.uri().path(), code = %e.code, "request refused");
        return e.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_per_caller() {
        let shim = Identity::Cert(CertIdentity::Shim);
        let agent = Identity::Cert(CertIdentity::Agent("n1".into()));
        assert!(authorize(&shim, "/v1/checkpoints").is_ok());
        assert!(authorize(&shim, "/v1/direct/sends").is_ok());
        assert_eq!(
            authorize(&shim, "/v1/direct/receive/c1")
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert!(authorize(&agent, "/v1/direct/receive/c1").is_ok());
        for p in [
            "/v1/checkpoints",
            "/v1/restores",
            "/v1/direct/sends",
            "/metrics",
        ] {
            assert_eq!(
                authorize(&agent, p).unwrap_err().status,
                StatusCode::FORBIDDEN,
                "{p}"
            );
        }
        assert!(authorize(&Identity::Anonymous, "/healthz").is_ok());
        assert_eq!(
            authorize(&Identity::Anonymous, "/v1/jobs")
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            authorize(&Identity::Unknown, "/v1/direct/receive/x")
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
    }
}
