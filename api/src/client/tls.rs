//! The caller's side of mutual TLS with the agents (the shim's, or a test's) (docs/deploy.md, "TLS and
//! identities"): it presents its certificate (the shim's is `ms2m-shim`), and accepts an agent only if
//! its certificate chains to the cluster CA (valid now, for server use) and names an
//! agent identity, `spiffe://ms2m/agent/<node>`. As for agent-to-agent sends, the
//! address dialled (a pod IP that changes on every restart) is not compared with the
//! certificate's names: the identity is.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;

/// URI SAN prefix of an agent's identity.
const AGENT_URI: &str = "spiffe://ms2m/agent/";

/// Client configuration from a directory holding `tls.crt`, `tls.key` and `ca.crt`.
pub fn client_config(dir: &Path) -> Result<rustls::ClientConfig, String> {
    let certs = |name: &str| {
        let p = dir.join(name);
        CertificateDer::pem_file_iter(&p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut roots = RootCertStore::empty();
    for c in certs("ca.crt")? {
        roots.add(c).map_err(|e| format!("ca.crt: {e}"))?;
    }
    let key = PrivateKeyDer::from_pem_file(dir.join("tls.key"))
        .map_err(|e| format!("{}: {e}", dir.join("tls.key").display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AgentVerifier {
        roots: Arc::new(roots),
        algs: provider.signature_verification_algorithms,
    });
    // ALPN is left to the connector (hyper-rustls sets http/1.1 and refuses a preset).
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs("tls.crt")?, key)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

#[derive(Debug)]
struct AgentVerifier {
    roots: Arc<RootCertStore>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AgentVerifier {
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
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("agent certificate: {e}")))?;
        if ee.valid_uri_names().any(|u| {
            u.strip_prefix(AGENT_URI)
                .is_some_and(|n| !n.is_empty() && !n.contains('/'))
        }) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the peer's certificate names no ms2m agent identity".into(),
            ))
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
