//! rustls client configuration with an explicit ring provider.
//!
//! The provider is passed in rather than read from the process default so that this
//! code works whether or not `main` (or a test) installed one first, and can never pick
//! up aws-lc-rs by accident.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::Error;

/// System roots (through the platform verifier) plus the CA certificates in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = match ca_file {
        Some(p) => {
            let certs = CertificateDer::pem_file_iter(p)
                .map_err(|e| Error::Tls(format!("CA file {}: {e}", p.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Tls(format!("CA file {}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(Error::Tls(format!(
                    "CA file {}: no PEM certificate in it",
                    p.display()
                )));
            }
            certs
        }
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| Error::Tls(format!("certificate verifier: {e}")))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // HTTP/1.1 only: one TCP stream per blob keeps every upload at full window size.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
