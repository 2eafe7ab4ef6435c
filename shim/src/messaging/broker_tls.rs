//! TLS to the broker, for `amqps://` URLs (and the management API beside it).
//!
//! The material is the Kubernetes TLS Secret layout, so a cert-manager Certificate's
//! Secret can be named as is: `ca.crt` (the CA that signed the broker's certificate;
//! without it the system's roots are used), and optionally `tls.crt` + `tls.key` (a
//! client certificate, for brokers that require one or authenticate with
//! `EXTERNAL`). The controller reads it from `messageQueueConfig.tlsSecretRef`, the
//! standalone driver from `--broker-tls-dir`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls_pki_types::pem::PemObject as _;

use super::{MessagingError, Result};

/// PEM material for a TLS connection to the broker.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BrokerTls {
    pub ca_pem: Option<Vec<u8>>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for BrokerTls {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.cert_pem.is_some())
            .finish()
    }
}

fn bad(m: impl std::fmt::Display) -> MessagingError {
    MessagingError::Tls(m.to_string())
}

impl BrokerTls {
    /// `ca.crt`, `tls.crt`, `tls.key` from a directory (a mounted Secret); each optional,
    /// the client pair together.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Option<Vec<u8>>> {
            match std::fs::read(dir.join(name)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(bad(format!("reading {}: {e}", dir.join(name).display()))),
            }
        };
        let tls = Self {
            ca_pem: read("ca.crt")?,
            cert_pem: read("tls.crt")?,
            key_pem: read("tls.key")?,
        };
        if tls == Self::default() {
            return Err(bad(format!(
                "{} holds none of ca.crt, tls.crt, tls.key",
                dir.display()
            )));
        }
        tls.checked(&dir.display().to_string())
    }

    /// The same keys from a Secret's data.
    pub fn from_secret(name: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Self> {
        let tls = Self {
            ca_pem: data.get("ca.crt").cloned(),
            cert_pem: data.get("tls.crt").cloned(),
            key_pem: data.get("tls.key").cloned(),
        };
        if tls == Self::default() {
            return Err(bad(format!(
                "Secret {name} has none of the keys ca.crt, tls.crt, tls.key"
            )));
        }
        tls.checked(&format!("Secret {name}"))
    }

    fn checked(self, from: &str) -> Result<Self> {
        if self.cert_pem.is_some() != self.key_pem.is_some() {
            return Err(bad(format!(
                "{from}: a client certificate needs both tls.crt and tls.key"
            )));
        }
        // Parse now, so a bad Secret fails the migration in Pending with its name.
        self.client_config()
            .map_err(|e| bad(format!("{from}: {e}")))?;
        Ok(self)
    }

    /// A rustls client configuration (ring, TLS 1.2 and 1.3) trusting `ca.crt`, or the
    /// system's roots without one, and presenting the client certificate if there is one.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(bad)?;
        let builder = match &self.ca_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                let mut n = 0;
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| bad(format!("ca.crt: {e}")))?;
                    roots.add(cert).map_err(|e| bad(format!("ca.crt: {e}")))?;
                    n += 1;
                }
                if n == 0 {
                    return Err(bad("ca.crt holds no PEM certificate"));
                }
                builder.with_root_certificates(roots)
            }
            None => {
                let verifier = rustls_platform_verifier::Verifier::new(provider)
                    .map_err(|e| bad(format!("the system's CA roots: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
            }
        };
        match (&self.cert_pem, &self.key_pem) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad(format!("tls.crt: {e}")))?;
                if chain.is_empty() {
                    return Err(bad("tls.crt holds no PEM certificate"));
                }
                let key =
                    PrivateKeyDer::from_pem_slice(key).map_err(|e| bad(format!("tls.key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(format!("client certificate: {e}")))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a leaf it signed, made with the openssl CLI the test services use too.
    fn pems(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs (scripts/setup.sh installs it)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=client",
        ]);
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "client.ext",
            "-out",
            "tls.crt",
            "-days",
            "2",
        ]);
        let r = |n: &str| std::fs::read(dir.join(n)).unwrap();
        (r("ca.crt"), r("tls.crt"), r("tls.key"))
    }

    #[test]
    fn material_reads_from_a_dir_and_from_secret_data() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pems(dir.path());
        let tls = BrokerTls::from_dir(dir.path()).unwrap();
        assert_eq!(tls.ca_pem.as_deref(), Some(&ca[..]));
        let data = BTreeMap::from([
            ("ca.crt".to_owned(), ca.clone()),
            ("tls.crt".to_owned(), cert),
            ("tls.key".to_owned(), key),
        ]);
        assert_eq!(BrokerTls::from_secret("rabbit-tls", &data).unwrap(), tls);
        let ca_only = BTreeMap::from([("ca.crt".to_owned(), ca)]);
        let tls = BrokerTls::from_secret("rabbit-ca", &ca_only).unwrap();
        assert!(tls.cert_pem.is_none());
        assert!(!format!("{tls:?}").contains("BEGIN"), "no PEM in logs");
    }

    #[test]
    fn bad_material_is_refused_with_its_origin() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, _key) = pems(dir.path());
        let half = BTreeMap::from([("ca.crt".to_owned(), ca), ("tls.crt".to_owned(), cert)]);
        let e = BrokerTls::from_secret("rabbit-tls", &half)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Secret rabbit-tls") && e.contains("tls.key"),
            "{e}"
        );
        let junk = BTreeMap::from([("ca.crt".to_owned(), b"not a certificate".to_vec())]);
        let e = BrokerTls::from_secret("x", &junk).unwrap_err().to_string();
        assert!(e.contains("ca.crt"), "{e}");
        let e = BrokerTls::from_secret("empty", &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("none of the keys"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        assert!(BrokerTls::from_dir(empty.path()).is_err());
    }
}
