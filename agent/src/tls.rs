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

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;

use crate::config::TlsFiles;

/// Prefix of every ms2m identity URI.
pub const URI_PREFIX: &str = "spiffe://ms2m/";

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

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    Shim,
    Agent(String),
}

impl CertIdentity {
    pub fn uri(&self) -> String {
        match self {
            CertIdentity::Shim => format!("{URI_PREFIX}shim"),
            CertIdentity::Agent(node) => format!("{URI_PREFIX}agent/{node}"),
        }
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        if rest == "shim" {
            return Some(CertIdentity::Shim);
        }
        let node = rest.strip_prefix("agent/")?;
        valid_node_name(node).then(|| CertIdentity::Agent(node.to_owned()))
    }
}

impl std::fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertIdentity::Shim => f.write_str("ms2m-shim"),
            CertIdentity::Agent(n) => write!(f, "ms2m-agent:{n}"),
        }
    }
}

/// Kubernetes node names: DNS-1123 subdomains.
pub fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The ms2m identity in a (verified) end-entity certificate, if it names exactly one.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<CertIdentity> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = ee.valid_uri_names().filter_map(CertIdentity::from_uri);
    let first = ids.next()?;
    ids.next().is_none().then_some(first)
}

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
    let verifier = Arc::new(IdentityVerifier {
        roots: roots(&files.ca)?,
        algs: provider.signature_verification_algorithms,
        want: CertIdentity::Agent(node.to_owned()),
    });
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

/// The chain to the cluster CA (WebPKI path building, validity, server usage), then
/// the peer's ms2m identity in place of a host name.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
    want: CertIdentity,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        match identity_of(end_entity) {
            Some(id) if id == self.want => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "the peer is {}, not {}",
                other
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "no ms2m identity".into()),
                self.want
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris() {
        assert_eq!(
            CertIdentity::from_uri("spiffe://ms2m/shim"),
            Some(CertIdentity::Shim)
        );
        assert_eq!(
            CertIdentity::from_uri("spiffe://ms2m/agent/node-a.x"),
            Some(CertIdentity::Agent("node-a.x".into()))
        );
        for bad in [
            "spiffe://ms2m/agent/",
            "spiffe://ms2m/agent/A",
            "spiffe://ms2m/agent/a/b",
            "spiffe://other/shim",
            "spiffe://ms2m/shim2",
        ] {
            assert_eq!(CertIdentity::from_uri(bad), None, "{bad}");
        }
        assert_eq!(
            CertIdentity::Agent("n1".into()).to_string(),
            "ms2m-agent:n1"
        );
    }
}
