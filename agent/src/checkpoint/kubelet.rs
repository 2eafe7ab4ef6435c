//! Kubelet backend: `POST https://<node>:10250/checkpoint/{ns}/{pod}/{container}`.
//!
//! The kubelet (with CRI-O or containerd >= 2.1) writes
//! `checkpoint-<pod>_<ns>-<container>-<timestamp>.tar` into its checkpoint directory
//! and answers `{"items": ["<path>"]}`. The path is the kubelet's view of the host; the
//! agent only trusts its file name and takes the file from its own mount of that
//! directory (`kubelet.checkpoint_dir`), unpacks it with the archive safety rules,
//! and removes it: the kubelet never garbage-collects these archives.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{Backend, BackendError, CheckpointInfo};
use crate::config::KubeletConfig;
use crate::jobs::JobCtx;

#[derive(Debug, Clone)]
pub struct KubeletBackend {
    pub config: KubeletConfig,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
struct CheckpointAnswer {
    items: Vec<String>,
}

fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, BackendError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| {
        BackendError::Kubelet(format!("reading CA file {}: {e}", ca_file.display()))
    })?;
    for c in certs {
        let c = c.map_err(|e| {
            BackendError::Kubelet(format!("reading CA file {}: {e}", ca_file.display()))
        })?;
        roots
            .add(c)
            .map_err(|e| BackendError::Kubelet(format!("CA file {}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(BackendError::Kubelet(format!(
            "CA file {} holds no certificate",
            ca_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendError::Kubelet(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Percent-encode a path segment (Kubernetes names are DNS labels, but be strict).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `url` with its host replaced by `name`, and the socket address the original host
/// (which must be an IP: a name would need its own DNS lookup) and port stand for.
fn with_server_name(url: &str, name: &str) -> Result<(String, SocketAddr), BackendError> {
    let mut u = reqwest::Url::parse(url)
        .map_err(|e| BackendError::Kubelet(format!("kubelet URL {url:?}: {e}")))?;
    let host = u.host_str().unwrap_or_default();
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            BackendError::Kubelet(format!(
                "kubelet.tls_server_name needs an IP address in kubelet.url, not {url:?}"
            ))
        })?;
    let port = u.port_or_known_default().unwrap_or(10250);
    u.set_host(Some(name))
        .map_err(|e| BackendError::Kubelet(format!("kubelet.tls_server_name {name:?}: {e}")))?;
    Ok((u.to_string(), SocketAddr::new(ip, port)))
}

impl KubeletBackend {
    fn url(&self) -> String {
        format!(
            "{}/checkpoint/{}/{}/{}?timeout={}",
            self.config.url.trim_end_matches('/'),
            segment(&self.namespace),
            segment(&self.pod),
            segment(&self.container),
            self.timeout.as_secs().max(1)
        )
    }

    /// Ask the kubelet for a checkpoint; returns the archive's path in our mount.
    async fn request(&self) -> Result<PathBuf, BackendError> {
        let token = tokio::fs::read_to_string(&self.config.token_file)
            .await
            .map_err(|e| {
                BackendError::Kubelet(format!(
                    "reading token file {}: {e}",
                    self.config.token_file.display()
                ))
            })?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(&self.config.ca_file)?)
            .timeout(self.timeout + Duration::from_secs(30));
        let mut url = self.url();
        if let Some(name) = &self.config.tls_server_name {
            // reqwest checks the certificate against the URL's host: put the name there
            // and pin it to the address the configured URL points at.
            let (named, addr) = with_server_name(&url, name)?;
            builder = builder.resolve(name, addr);
            url = named;
        }
        let client = builder
            .build()
            .map_err(|e| BackendError::Kubelet(e.to_string()))?;
        tracing::info!(%url, "asking the kubelet for a checkpoint");
        let resp = client
            .post(&url)
            .bearer_auth(token.trim())
            .send()
            .await
            .map_err(|e| BackendError::Kubelet(format!("POST {url}: {e}")))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        match status.as_u16() {
            200..=299 => {}
            404 => {
                return Err(BackendError::ContainerNotFound(format!(
                    "{}/{}/{} (kubelet: {})",
                    self.namespace,
                    self.pod,
                    self.container,
                    body.trim()
                )));
            }
            401 | 403 => {
                return Err(BackendError::Kubelet(format!(
                    "the kubelet refused the agent's credentials ({status}): {}; the \
                     ServiceAccount needs `create` on `nodes/checkpoint`",
                    body.trim()
                )));
            }
            _ => {
                return Err(BackendError::Kubelet(format!(
                    "checkpoint failed ({status}): {}",
                    body.trim()
                )));
            }
        }
        let answer: CheckpointAnswer = serde_json::from_str(&body)
            .map_err(|e| BackendError::Kubelet(format!("unexpected answer {body:?}: {e}")))?;
        let item = answer
            .items
            .first()
            .ok_or_else(|| BackendError::Kubelet(format!("answer without items: {body}")))?;
        let name = Path::new(item)
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.starts_with("checkpoint-") && n.ends_with(".tar"))
            .ok_or_else(|| {
                BackendError::Kubelet(format!("unexpected checkpoint archive path {item:?}"))
            })?;
        Ok(self.config.checkpoint_dir.join(name))
    }
}

impl Backend for KubeletBackend {
    fn name(&self) -> &'static str {
        "kubelet"
    }

    async fn checkpoint(&self, ctx: &JobCtx, dest: &Path) -> Result<CheckpointInfo, BackendError> {
        ctx.set_phase("dumping");
        let archive = self.request().await?;
        ctx.set_phase("fetching");
        let size = tokio::fs::metadata(&archive)
            .await
            .map_err(BackendError::io(format!(
                "the kubelet's archive {} (is kubelet.checkpoint_dir the kubelet's checkpoint directory?)",
                archive.display()
            )))?
            .len();
        ctx.set_bytes_total(Some(size));
        let (a, d) = (archive.clone(), dest.to_owned());
        // The image-format crate validates the archive as hostile input (absolute paths,
        // `..`, links out, devices, escaping deleted.files) before anything is written,
        // then extracts through a staging directory into `dest`, which must not exist.
        let written = tokio::task::spawn_blocking(move || {
            let archive = ms2m_image_format::Archive::open(&a)
                .map_err(|e| BackendError::InvalidArchive(format!("{}: {e}", a.display())))?;
            std::fs::remove_dir(&d)
                .map_err(BackendError::io(format!("preparing {}", d.display())))?;
            archive
                .extract(&d)
                .map_err(|e| BackendError::InvalidArchive(format!("{}: {e}", a.display())))?;
            Ok::<u64, BackendError>(archive.total_size())
        })
        .await
        .map_err(|e| BackendError::Io {
            context: "unpacking".into(),
            source: std::io::Error::other(e),
        })??;
        ctx.add_bytes(written);
        if let Err(e) = tokio::fs::remove_file(&archive).await {
            tracing::warn!(path = %archive.display(), error = %e, "could not remove the kubelet's archive");
        }
        let criu_version = crate::crio_layout::read_config_dump(dest)
            .ok()
            .and_then(|c| c.criu_version);
        Ok(CheckpointInfo {
            criu_version,
            frozen_ms: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_name_replaces_the_host_and_pins_the_address() {
        let (url, addr) = with_server_name(
            "https://10.0.0.1:10250/checkpoint/a/b/c?timeout=5",
            "node-a",
        )
        .unwrap();
        assert_eq!(url, "https://node-a:10250/checkpoint/a/b/c?timeout=5");
        assert_eq!(addr, "10.0.0.1:10250".parse().unwrap());
        let e = with_server_name("https://node-a:10250/", "node-a").unwrap_err();
        assert!(e.to_string().contains("needs an IP address"), "{e}");
    }

    #[test]
    fn url_is_the_kubelet_route() {
        let b = KubeletBackend {
            config: KubeletConfig {
                url: "https://10.0.0.1:10250/".into(),
                token_file: "/t".into(),
                ca_file: "/c".into(),
                tls_server_name: None,
                checkpoint_dir: "/k".into(),
            },
            namespace: "default".into(),
            pod: "counter-0".into(),
            container: "app".into(),
            timeout: Duration::from_secs(60),
        };
        assert_eq!(
            b.url(),
            "https://10.0.0.1:10250/checkpoint/default/counter-0/app?timeout=60"
        );
    }
}
