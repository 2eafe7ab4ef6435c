//! Mutual TLS with the agents, the callers' side (the shim's, a peer agent's Direct
//! send, a test's), and the identity model both sides share (docs/deploy.md, "TLS and
//! identities").
//!
//! Identities are URI SANs, so one certificate says who its holder is independently of
//! the address it is reached at:
//! - `spiffe://ms2m/shim`: the shim (`ms2m-shim`);
//! - `spiffe://ms2m/agent/<node>`: the agent of `<node>` (`ms2m-agent:<node>`).
//!
//! A caller accepts an agent only if its certificate chains to the cluster CA (valid
//! now, for server use) and names an agent identity ([`PeerWanted::AnyAgent`], the
//! shim) or the agent of one node ([`PeerWanted::Agent`], a Direct send). The address
//! dialled (a pod IP that changes on every restart) is not compared with the
//! certificate's names: the identity is.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;

/// Prefix of every ms2m identity URI.
pub const URI_PREFIX: &str = "spiffe://ms2m/";

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

/// Which agent a caller will talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerWanted {
    /// Any agent of the cluster (the shim, which reaches agents by node).
    AnyAgent,
    /// Only the agent of this node (a Direct send).
    Agent(String),
}

/// The chain to the cluster CA (WebPKI path building, validity, server usage), then
/// the peer's ms2m identity in place of a host name.
#[derive(Debug)]
pub struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
    want: PeerWanted,
}

impl IdentityVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: &rustls::crypto::CryptoProvider,
        want: PeerWanted,
    ) -> Self {
        Self {
            roots,
            algs: provider.signature_verification_algorithms,
            want,
        }
    }
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
        let found = identity_of(end_entity);
        let ok = match (&self.want, &found) {
            (PeerWanted::AnyAgent, Some(CertIdentity::Agent(_))) => true,
            (PeerWanted::Agent(n), Some(CertIdentity::Agent(m))) => n == m,
            _ => false,
        };
        if ok {
            return Ok(ServerCertVerified::assertion());
        }
        let wanted = match &self.want {
            PeerWanted::AnyAgent => "an ms2m agent".to_owned(),
            PeerWanted::Agent(n) => CertIdentity::Agent(n.clone()).to_string(),
        };
        Err(rustls::Error::General(format!(
            "the peer is {}, not {wanted}",
            found
                .map(|i| i.to_string())
                .unwrap_or_else(|| "no ms2m identity".into()),
        )))
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

/// Certificates of a PEM file (at least one).
pub fn load_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(p)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", p.display()));
    }
    Ok(certs)
}

pub fn load_key(p: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// The CA certificates of a PEM file as trust anchors.
pub fn roots(p: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for c in load_certs(p)? {
        store.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(Arc::new(store))
}

/// Client configuration presenting `cert`/`key`, accepting the agent `want` names.
/// ALPN is left to the caller (hyper-rustls sets http/1.1 and refuses a preset).
pub fn identity_client_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
    want: PeerWanted,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(IdentityVerifier::new(roots(ca)?, &provider, want));
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| format!("{}: {e}", cert.display()))
}

/// Client configuration from a directory holding `tls.crt`, `tls.key` and `ca.crt`
/// (a cert-manager Secret mount): any agent of the cluster.
pub fn client_config(dir: &Path) -> Result<rustls::ClientConfig, String> {
    identity_client_config(
        &dir.join("tls.crt"),
        &dir.join("tls.key"),
        &dir.join("ca.crt"),
        PeerWanted::AnyAgent,
    )
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
