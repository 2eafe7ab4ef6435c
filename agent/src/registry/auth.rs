//! Registry credentials and the `WWW-Authenticate` challenge.
//!
//! Where credentials come from, first match wins: explicit options (CLI flags / job
//! request), the environment (`MS2M_REGISTRY_USERNAME` + `MS2M_REGISTRY_PASSWORD`), then
//! a docker-style `config.json` (`--auth-file`, `$REGISTRY_AUTH_FILE`,
//! `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`) whose `auths.<host>.auth` is
//! base64 `user:password`. No credentials at all means anonymous access.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::Error;

pub const ENV_USERNAME: &str = "MS2M_REGISTRY_USERNAME";
pub const ENV_PASSWORD: &str = "MS2M_REGISTRY_PASSWORD";

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Passwords must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", STANDARD.encode(raw))
    }

    /// Resolves credentials for `registry` (host[:port]) from the sources above.
    pub fn resolve(
        registry: &str,
        explicit: Option<Credentials>,
        auth_file: Option<&Path>,
    ) -> Result<Option<Credentials>, Error> {
        if explicit.is_some() {
            return Ok(explicit);
        }
        if let (Ok(username), Ok(password)) =
            (std::env::var(ENV_USERNAME), std::env::var(ENV_PASSWORD))
        {
            return Ok(Some(Credentials { username, password }));
        }
        let candidates: Vec<PathBuf> = match auth_file {
            Some(p) => vec![p.to_path_buf()],
            None => default_auth_files(),
        };
        for path in candidates {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    if let Some(c) = from_docker_config(&bytes, registry)
                        .map_err(|e| Error::Auth(format!("{}: {e}", path.display())))?
                    {
                        return Ok(Some(c));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && auth_file.is_none() => {}
                Err(e) => return Err(Error::Auth(format!("{}: {e}", path.display()))),
            }
        }
        Ok(None)
    }
}

fn default_auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        v.push(PathBuf::from(d).join("config.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".docker/config.json"));
    }
    v
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Looks `registry` up in a docker `config.json`; keys may carry a scheme or a path
/// (`https://index.docker.io/v1/`), so they are compared by host only.
pub fn from_docker_config(bytes: &[u8], registry: &str) -> Result<Option<Credentials>, String> {
    let cfg: DockerConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let want = normalize_host(registry);
    for (key, entry) in cfg.auths {
        if normalize_host(&key) != want {
            continue;
        }
        if let Some(a) = entry.auth.filter(|a| !a.is_empty()) {
            let raw = STANDARD
                .decode(a.trim())
                .map_err(|e| format!("auths.{key}.auth: {e}"))?;
            let raw = String::from_utf8(raw).map_err(|_| format!("auths.{key}.auth: not UTF-8"))?;
            let (u, p) = raw
                .split_once(':')
                .ok_or_else(|| format!("auths.{key}.auth: expected user:password"))?;
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
        if let (Some(username), Some(password)) = (entry.username, entry.password) {
            return Ok(Some(Credentials { username, password }));
        }
    }
    Ok(None)
}

fn normalize_host(s: &str) -> String {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Self> {
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Self::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `k="v", k2=v2` with quoted values that may contain commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas_in_scope() {
        let h = r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push""#;
        assert_eq!(
            Challenge::parse(h),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn docker_config_lookup_by_host() {
        let cfg = br#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYTpzcw=="},"other":{"auth":""}}}"#;
        let c = from_docker_config(cfg, "reg.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "user");
        assert_eq!(c.password, "pa:ss");
        assert_eq!(from_docker_config(cfg, "other.example").unwrap(), None);
        assert!(from_docker_config(b"{", "x").is_err());
    }

    #[test]
    fn basic_header_is_base64_user_colon_password() {
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        assert_eq!(c.basic_header(), "Basic dTpw");
        let secret = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
