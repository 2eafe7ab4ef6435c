//! Mutual TLS between the shim and the agents, and between agents (Direct mode), from
//! one cluster CA (see docs/deploy.md, "TLS and identities").
//!
//! Identities are URI SANs, so one certificate says who its holder is independently of
//! the address it is reached at:
//! - `spiffe://ms2m/shim` — the shim (`ms2m-shim`): may call every verb but Direct
//!   receive;
//! - `spiffe://ms2m/agent/<node>` — the agent of `<node>` (`ms2m-agent:<node>`): may only
//!   deliver into Direct receive, and is the only kind of peer a Direct send goes to.
//!
//! Files are cert-manager's Secret layout: `tls.crt` (chain), `tls.key`, `ca.crt`. The
//! ring provider is passed explicitly, as in `registry::tls`.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;

use crate::config::TlsFiles;

pub use ms2m_api::client::tls::URI_PREFIX;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(p: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: p.display().to_string(),
        message: e.to_string(),
    }
}

pub use ms2m_api::client::tls::{CertIdentity, identity_of, valid_node_name};
use ms2m_api::client::tls::{IdentityVerifier, PeerWanted};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(p)
        .map_err(|e| file_err(p, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(p, e))?;
    if certs.is_empty() {
        return Err(file_err(p, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn load_key(p: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(p).map_err(|e| file_err(p, e))
}

fn roots(p: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(p)? {
        store.add(c).map_err(|e| file_err(p, e))?;
    }
    Ok(Arc::new(store))
}

/// The identity in this agent's own certificate.
pub fn own_identity(files: &TlsFiles) -> Result<CertIdentity, TlsError> {
    let certs = load_certs(&files.cert)?;
    identity_of(&certs[0]).ok_or_else(|| {
        file_err(
            &files.cert,
            format!("the certificate names no single {URI_PREFIX}... identity"),
        )
    })
}

/// The TCP listener's configuration: this agent's certificate, and client
/// certificates verified against the cluster CA. A client may come without one (the
/// kubelet's probes do); the router then serves it only the probes.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client configuration of a Direct send to the agent of `node`: the peer's certificate
/// must chain to the cluster CA (valid now, for server use) and name
/// `ms2m-agent:<node>`; this agent presents its own certificate (never a token). The
/// address dialled is not compared with the certificate's IP/DNS names: agents are
/// reached at pod addresses that change with every restart, and the identity is what
/// the send must be sure of.
pub fn peer_client_config(files: &TlsFiles, node: &str) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(IdentityVerifier::new(
        roots(&files.ca)?,
        &provider,
        PeerWanted::Agent(node.to_owned()),
    ));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
