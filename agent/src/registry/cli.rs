//! Registry options shared by the `push`, `pull` and `bench` subcommands.

use std::path::PathBuf;
use std::time::Duration;

use super::{ClientOptions, Credentials};

#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Registry user (or MS2M_REGISTRY_USERNAME, or a docker config.json).
    #[arg(long, env = "MS2M_REGISTRY_USERNAME", requires = "password")]
    pub username: Option<String>,
    /// Registry password (or MS2M_REGISTRY_PASSWORD).
    #[arg(long, env = "MS2M_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Docker-style config.json with `auths` (default: $REGISTRY_AUTH_FILE,
    /// $DOCKER_CONFIG/config.json, ~/.docker/config.json).
    #[arg(long)]
    pub auth_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust besides the system ones.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Allow plain HTTP to a registry that is not on this host.
    #[arg(long)]
    pub insecure: bool,
    /// Attempts per request and per layer upload before giving up.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}

impl RegistryArgs {
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            credentials: match (&self.username, &self.password) {
                (Some(u), Some(p)) => Some(Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                _ => None,
            },
            auth_file: self.auth_file.clone(),
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
            attempts: self.retries.max(1),
            backoff: Duration::from_millis(200),
        }
    }
}
