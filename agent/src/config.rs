//! Agent configuration.
//!
//! Precedence, lowest to highest: built-in defaults < TOML file (`--config`, env
//! `MS2M_AGENT_CONFIG`, default `/etc/ms2m/agent.toml` when it exists) < environment
//! variables (`MS2M_AGENT_*`, and `MS2M_CRIU` for the CRIU binary) < command-line flags.
//! Env and flags are merged by clap (a flag beats its env variable); the file fills in
//! what neither gave. See `systemd/ms2m-agent.toml` for a commented example.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::image_store::StoreKind;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/ms2m/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid socket_mode {0:?}: expected an octal mode such as \"0660\"")]
    SocketMode(String),
    #[error(transparent)]
    ImageStore(#[from] crate::image_store::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The TOML file: every field optional, so the file may set only what it changes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket_path: Option<PathBuf>,
    pub socket_mode: Option<String>,
    pub socket_group: Option<String>,
    pub tcp_listen: Option<String>,
    pub token_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub allowed_rootfs_dirs: Option<Vec<PathBuf>>,
    pub criu_path: Option<PathBuf>,
    pub runc_path: Option<PathBuf>,
    pub runc_root: Option<PathBuf>,
    pub job_retention_seconds: Option<u64>,
    pub checkpoint_retention_seconds: Option<u64>,
    pub shutdown_grace_seconds: Option<u64>,
    pub registry_auth_file: Option<PathBuf>,
    pub registry_ca_file: Option<PathBuf>,
    pub direct_ca_file: Option<PathBuf>,
    pub image_store: Option<StoreKind>,
    pub containers_storage: Option<String>,
    pub containerd_address: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub skopeo_path: Option<PathBuf>,
    pub ctr_path: Option<PathBuf>,
    pub kubelet: Option<FileKubelet>,
    pub tcp_insecure: Option<bool>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub node_name: Option<String>,
    pub header_read_timeout_seconds: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    pub max_connections: Option<usize>,
    pub probe_connections: Option<usize>,
    pub max_concurrent_jobs: Option<usize>,
    pub max_queued_jobs: Option<usize>,
    pub max_checkpoint_bytes: Option<u64>,
    pub max_direct_layers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKubelet {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub checkpoint_dir: Option<PathBuf>,
}

/// Env/flag layer (clap fills it); `None` means "not given".
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Unix socket to serve the API on.
    #[arg(long, env = "MS2M_AGENT_SOCKET")]
    pub socket_path: Option<PathBuf>,
    /// Octal mode of the Unix socket.
    #[arg(long, env = "MS2M_AGENT_SOCKET_MODE")]
    pub socket_mode: Option<String>,
    /// Group owning the Unix socket.
    #[arg(long, env = "MS2M_AGENT_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// Also serve on this TCP address (bearer token required).
    #[arg(long, env = "MS2M_AGENT_TCP_LISTEN")]
    pub tcp_listen: Option<String>,
    /// File holding the bearer token for the TCP listener and for Direct transfers.
    #[arg(long, env = "MS2M_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Where checkpoints, bundles and work files live.
    #[arg(long, env = "MS2M_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directories a restore may take an image rootfs from (repeatable).
    #[arg(
        long = "allowed-rootfs-dir",
        env = "MS2M_AGENT_ALLOWED_ROOTFS_DIRS",
        value_delimiter = ','
    )]
    pub allowed_rootfs_dirs: Option<Vec<PathBuf>>,
    /// CRIU binary.
    #[arg(long, env = "MS2M_CRIU")]
    pub criu_path: Option<PathBuf>,
    /// runc binary.
    #[arg(long, env = "MS2M_AGENT_RUNC")]
    pub runc_path: Option<PathBuf>,
    /// runc state root (`runc --root`).
    #[arg(long, env = "MS2M_AGENT_RUNC_ROOT")]
    pub runc_root: Option<PathBuf>,
    /// Docker-style config.json with registry credentials for push/pull jobs.
    #[arg(long, env = "MS2M_AGENT_REGISTRY_AUTH_FILE")]
    pub registry_auth_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for registries.
    #[arg(long, env = "MS2M_AGENT_REGISTRY_CA_FILE")]
    pub registry_ca_file: Option<PathBuf>,
    /// CA certificates (PEM) of other agents' HTTPS listeners (Direct mode).
    #[arg(long, env = "MS2M_AGENT_DIRECT_CA_FILE")]
    pub direct_ca_file: Option<PathBuf>,
    /// Image store checkpoints are imported into (default containers-storage).
    #[arg(long, env = "MS2M_AGENT_IMAGE_STORE", value_enum)]
    pub image_store: Option<StoreKind>,
    /// containers-storage to use, `[driver@graphroot+runroot]`; empty: the system's.
    #[arg(long, env = "MS2M_AGENT_CONTAINERS_STORAGE")]
    pub containers_storage: Option<String>,
    /// containerd's socket.
    #[arg(long, env = "MS2M_AGENT_CONTAINERD_ADDRESS")]
    pub containerd_address: Option<PathBuf>,
    /// containerd namespace images are imported into (the CRI's is k8s.io).
    #[arg(long, env = "MS2M_AGENT_CONTAINERD_NAMESPACE")]
    pub containerd_namespace: Option<String>,
    /// skopeo binary (containers-storage imports).
    #[arg(long, env = "MS2M_AGENT_SKOPEO")]
    pub skopeo_path: Option<PathBuf>,
    /// ctr binary (containerd imports).
    #[arg(long, env = "MS2M_AGENT_CTR")]
    pub ctr_path: Option<PathBuf>,
    /// Serve the TCP listener in plain HTTP with the bearer token (local tests only;
    /// without it the TCP listener needs the TLS files).
    #[arg(long, env = "MS2M_AGENT_TCP_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub tcp_insecure: Option<bool>,
    /// This agent's certificate chain (PEM; cert-manager's `tls.crt`).
    #[arg(long, env = "MS2M_AGENT_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM; `tls.key`).
    #[arg(long, env = "MS2M_AGENT_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// The cluster CA that signs every shim and agent certificate (PEM; `ca.crt`).
    #[arg(long, env = "MS2M_AGENT_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This node's name: the agent's certificate must name `ms2m-agent:<node_name>`.
    #[arg(long, env = "MS2M_AGENT_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubelet base URL for the kubelet checkpoint backend.
    #[arg(long, env = "MS2M_AGENT_KUBELET_URL")]
    pub kubelet_url: Option<String>,
    /// ServiceAccount token presented to the kubelet.
    #[arg(long, env = "MS2M_AGENT_KUBELET_TOKEN_FILE")]
    pub kubelet_token_file: Option<PathBuf>,
    /// CA bundle that signed the kubelet's serving certificate.
    #[arg(long, env = "MS2M_AGENT_KUBELET_CA_FILE")]
    pub kubelet_ca_file: Option<PathBuf>,
    /// Name the kubelet's certificate is checked against, when the URL holds the node's
    /// IP but the certificate names the node (kubeadm's self-signed kubelet certificates).
    #[arg(long, env = "MS2M_AGENT_KUBELET_TLS_SERVER_NAME")]
    pub kubelet_tls_server_name: Option<String>,
    /// Directory the kubelet writes checkpoint archives to.
    #[arg(long, env = "MS2M_AGENT_KUBELET_CHECKPOINT_DIR")]
    pub kubelet_checkpoint_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub url: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    /// Checked against the certificate instead of the URL's host, which is then only
    /// where to connect (docs/deploy.md, "The kubelet's certificate").
    pub tls_server_name: Option<String>,
    pub checkpoint_dir: PathBuf,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket_path: PathBuf,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    pub tcp_listen: Option<String>,
    pub token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub allowed_rootfs_dirs: Vec<PathBuf>,
    pub criu_path: PathBuf,
    pub runc_path: PathBuf,
    pub runc_root: Option<PathBuf>,
    pub job_retention_seconds: u64,
    /// Checkpoints older than this (by their directory's mtime) and not used by a job
    /// are deleted; 0 keeps them forever.
    pub checkpoint_retention_seconds: u64,
    pub shutdown_grace_seconds: u64,
    pub registry_auth_file: Option<PathBuf>,
    pub registry_ca_file: Option<PathBuf>,
    pub direct_ca_file: Option<PathBuf>,
    pub image_store: StoreKind,
    /// `[driver@graphroot+runroot]` or empty (the system's store, which CRI-O uses).
    pub containers_storage: String,
    pub containerd_address: PathBuf,
    pub containerd_namespace: String,
    pub skopeo_path: PathBuf,
    pub ctr_path: PathBuf,
    pub kubelet: KubeletConfig,
    /// Plain HTTP + bearer token on TCP instead of mutual TLS.
    pub tcp_insecure: bool,
    pub tls: Option<TlsFiles>,
    pub node_name: Option<String>,
    pub limits: Limits,
}

/// The TLS files of the TCP listener, in cert-manager's Secret layout.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Bounds on what callers can make the agent hold (docs/agent-api.md, "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection must deliver a request's headers (and finish its TLS handshake)
    /// this soon after it opens or after its previous answer.
    pub header_read_timeout: std::time::Duration,
    /// A connection without a request in flight is closed after this long.
    pub idle_timeout: std::time::Duration,
    /// Open connections per listener; when full, the longest-idle one is closed for a
    /// new one.
    pub max_connections: usize,
    /// Of `max_connections`, how many never carry a non-probe request, so that a probe
    /// always finds a connection to take over.
    pub probe_connections: usize,
    /// Heavy jobs running at once (and, separately, Direct receives running at once).
    pub max_concurrent_jobs: usize,
    /// Jobs waiting for a slot; beyond, requests get 429.
    pub max_queued_jobs: usize,
    /// Largest checkpoint a pull or Direct receive may unpack, counted decompressed.
    pub max_checkpoint_bytes: u64,
    /// Most layers one Direct receive takes (one decoder thread each).
    pub max_direct_layers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections: 512,
            probe_connections: 16,
            max_concurrent_jobs: 2,
            max_queued_jobs: 32,
            max_checkpoint_bytes: 64 << 30,
            max_direct_layers: 16,
        }
    }
}

impl Config {
    /// Load the file (if any) and apply env/flag overrides on top.
    pub fn load(file: Option<&Path>, o: &Overrides) -> Result<Self, ConfigError> {
        let fc = match file {
            Some(p) => read_file(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                read_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileConfig::default(),
        };
        Self::merge(fc, o)
    }

    pub fn merge(fc: FileConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let fk = fc.kubelet.unwrap_or_default();
        let state_dir = o
            .state_dir
            .clone()
            .or(fc.state_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/ms2m-agent"));
        let mode = o
            .socket_mode
            .clone()
            .or(fc.socket_mode)
            .unwrap_or_else(|| "0660".into());
        let socket_mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or(ConfigError::SocketMode(mode.clone()))?;
        let allowed_rootfs_dirs = o
            .allowed_rootfs_dirs
            .clone()
            .or(fc.allowed_rootfs_dirs)
            .unwrap_or_else(|| vec![state_dir.join("rootfs")]);
        let containers_storage = o
            .containers_storage
            .clone()
            .or(fc.containers_storage)
            .unwrap_or_default();
        crate::image_store::validate_storage_spec(&containers_storage)?;
        let d = Limits::default();
        let secs = std::time::Duration::from_secs;
        let limits = Limits {
            header_read_timeout: fc
                .header_read_timeout_seconds
                .map(secs)
                .unwrap_or(d.header_read_timeout),
            idle_timeout: fc.idle_timeout_seconds.map(secs).unwrap_or(d.idle_timeout),
            max_connections: fc.max_connections.unwrap_or(d.max_connections),
            probe_connections: fc.probe_connections.unwrap_or(d.probe_connections),
            max_concurrent_jobs: fc.max_concurrent_jobs.unwrap_or(d.max_concurrent_jobs),
            max_queued_jobs: fc.max_queued_jobs.unwrap_or(d.max_queued_jobs),
            max_checkpoint_bytes: fc.max_checkpoint_bytes.unwrap_or(d.max_checkpoint_bytes),
            max_direct_layers: fc.max_direct_layers.unwrap_or(d.max_direct_layers),
        };
        if limits.header_read_timeout.is_zero() || limits.idle_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "header_read_timeout_seconds and idle_timeout_seconds must be at least 1".into(),
            ));
        }
        if limits.probe_connections == 0 || limits.max_connections <= limits.probe_connections {
            return Err(ConfigError::Invalid(format!(
                "max_connections ({}) must exceed probe_connections ({}), which must be at least 1",
                limits.max_connections, limits.probe_connections
            )));
        }
        if limits.max_concurrent_jobs == 0 || limits.max_direct_layers == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_jobs and max_direct_layers must be at least 1".into(),
            ));
        }
        let tls = match (
            o.tls_cert_file.clone().or(fc.tls_cert_file),
            o.tls_key_file.clone().or(fc.tls_key_file),
            o.tls_ca_file.clone().or(fc.tls_ca_file),
        ) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
            (None, None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "tls_cert_file, tls_key_file and tls_ca_file go together".into(),
                ));
            }
        };
        Ok(Self {
            tcp_insecure: o.tcp_insecure.or(fc.tcp_insecure).unwrap_or(false),
            tls,
            node_name: o.node_name.clone().or(fc.node_name),
            limits,
            socket_path: o
                .socket_path
                .clone()
                .or(fc.socket_path)
                .unwrap_or_else(|| PathBuf::from("/run/ms2m/agent.sock")),
            socket_mode,
            socket_group: o.socket_group.clone().or(fc.socket_group),
            tcp_listen: o.tcp_listen.clone().or(fc.tcp_listen),
            token_file: o.token_file.clone().or(fc.token_file),
            allowed_rootfs_dirs,
            criu_path: o
                .criu_path
                .clone()
                .or(fc.criu_path)
                .unwrap_or_else(|| PathBuf::from("/usr/local/sbin/criu")),
            runc_path: o
                .runc_path
                .clone()
                .or(fc.runc_path)
                .unwrap_or_else(|| PathBuf::from("runc")),
            runc_root: o.runc_root.clone().or(fc.runc_root),
            job_retention_seconds: fc.job_retention_seconds.unwrap_or(3600),
            checkpoint_retention_seconds: fc.checkpoint_retention_seconds.unwrap_or(86_400),
            shutdown_grace_seconds: fc.shutdown_grace_seconds.unwrap_or(30),
            registry_auth_file: o.registry_auth_file.clone().or(fc.registry_auth_file),
            registry_ca_file: o.registry_ca_file.clone().or(fc.registry_ca_file),
            direct_ca_file: o.direct_ca_file.clone().or(fc.direct_ca_file),
            image_store: o.image_store.or(fc.image_store).unwrap_or_default(),
            containers_storage,
            containerd_address: o
                .containerd_address
                .clone()
                .or(fc.containerd_address)
                .unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock")),
            containerd_namespace: o
                .containerd_namespace
                .clone()
                .or(fc.containerd_namespace)
                .unwrap_or_else(|| "k8s.io".into()),
            skopeo_path: o
                .skopeo_path
                .clone()
                .or(fc.skopeo_path)
                .unwrap_or_else(|| PathBuf::from("skopeo")),
            ctr_path: o
                .ctr_path
                .clone()
                .or(fc.ctr_path)
                .unwrap_or_else(|| PathBuf::from("ctr")),
            kubelet: KubeletConfig {
                url: o
                    .kubelet_url
                    .clone()
                    .or(fk.url)
                    .unwrap_or_else(|| "https://127.0.0.1:10250".into()),
                token_file: o
                    .kubelet_token_file
                    .clone()
                    .or(fk.token_file)
                    .unwrap_or_else(|| {
                        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
                    }),
                ca_file: o.kubelet_ca_file.clone().or(fk.ca_file).unwrap_or_else(|| {
                    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
                }),
                tls_server_name: o
                    .kubelet_tls_server_name
                    .clone()
                    .or(fk.tls_server_name)
                    .filter(|n| !n.is_empty()),
                checkpoint_dir: o
                    .kubelet_checkpoint_dir
                    .clone()
                    .or(fk.checkpoint_dir)
                    .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet/checkpoints")),
            },
            state_dir,
        })
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.state_dir.join("checkpoints")
    }

    pub fn bundles_dir(&self) -> PathBuf {
        self.state_dir.join("bundles")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.state_dir.join("work")
    }
}

fn read_file(p: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: p.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let fc: FileConfig = toml::from_str(
            r#"
            state_dir = "/srv/ms2m"
            criu_path = "/opt/criu"
            socket_mode = "0600"
            [kubelet]
            checkpoint_dir = "/k/checkpoints"
            "#,
        )
        .unwrap();
        let o = Overrides {
            criu_path: Some("/flag/criu".into()),
            ..Default::default()
        };
        let c = Config::merge(fc, &o).unwrap();
        assert_eq!(c.criu_path, PathBuf::from("/flag/criu"));
        assert_eq!(c.state_dir, PathBuf::from("/srv/ms2m"));
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(
            c.allowed_rootfs_dirs,
            vec![PathBuf::from("/srv/ms2m/rootfs")]
        );
        assert_eq!(c.kubelet.checkpoint_dir, PathBuf::from("/k/checkpoints"));
        assert_eq!(c.socket_path, PathBuf::from("/run/ms2m/agent.sock"));
    }

    #[test]
    fn unknown_keys_and_bad_modes_are_rejected() {
        assert!(toml::from_str::<FileConfig>("stat_dir = \"/x\"").is_err());
        let fc: FileConfig = toml::from_str("socket_mode = \"rw\"").unwrap();
        assert!(matches!(
            Config::merge(fc, &Overrides::default()),
            Err(ConfigError::SocketMode(_))
        ));
    }

    #[test]
    fn image_store_settings_layer_like_the_rest() {
        let c = Config::merge(FileConfig::default(), &Overrides::default()).unwrap();
        assert_eq!(c.image_store, StoreKind::ContainersStorage);
        assert_eq!(c.containers_storage, "");
        assert_eq!(
            c.containerd_address,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(c.containerd_namespace, "k8s.io");
        let fc: FileConfig = toml::from_str(
            r#"
            image_store = "containerd"
            containers_storage = "[overlay@/s+/r]"
            containerd_namespace = "ms2m"
            ctr_path = "/opt/ctr"
            "#,
        )
        .unwrap();
        let o = Overrides {
            image_store: Some(StoreKind::ContainersStorage),
            ..Default::default()
        };
        let c = Config::merge(fc, &o).unwrap();
        assert_eq!(c.image_store, StoreKind::ContainersStorage);
        assert_eq!(c.containers_storage, "[overlay@/s+/r]");
        assert_eq!(c.containerd_namespace, "ms2m");
        assert_eq!(c.ctr_path, PathBuf::from("/opt/ctr"));
        assert_eq!(c.skopeo_path, PathBuf::from("skopeo"));
        assert!(toml::from_str::<FileConfig>("image_store = \"docker\"").is_err());
        let fc: FileConfig = toml::from_str("containers_storage = \"overlay@/s\"").unwrap();
        assert!(matches!(
            Config::merge(fc, &Overrides::default()),
            Err(ConfigError::ImageStore(_))
        ));
    }

    #[test]
    fn example_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/ms2m-agent.toml");
        let c = Config::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.socket_path, PathBuf::from("/run/ms2m/agent.sock"));
    }
}
