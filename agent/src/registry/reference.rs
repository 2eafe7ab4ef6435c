//! Image references (`host[:port]/repo[:tag][@digest]`), parsed the way `docker` and
//! `skopeo` read them so that an operator's muscle memory works unchanged.

use std::fmt;
use std::net::IpAddr;

use super::Error;

/// Docker Hub's public name and the host its API actually lives on.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port), as the user wrote it (`docker.io` for Hub).
    pub registry: String,
    /// Repository path inside the registry, e.g. `ms2m/checkpoints`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Reference(format!("{input:?}: {why}"));
        let s = input.strip_prefix("docker://").unwrap_or(input);
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let valid = d
                    .split_once(':')
                    .is_some_and(|(alg, hex)| !alg.is_empty() && !hex.is_empty());
                if !valid {
                    return Err(bad("digest must look like sha256:<hex>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/', otherwise the ':' is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag
            && (t.is_empty()
                || t.len() > 128
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
        {
            return Err(bad("invalid tag"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
            });
        if !repo_ok {
            return Err(bad(
                "repository must be lowercase [a-z0-9._-] path components",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Host (and port) to open connections to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to put after `/manifests/`: the digest wins over the tag when both are given.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// True when the registry is on this host, where plain HTTP is acceptable.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.api_host())
    }
}

/// `localhost`, 127.0.0.0/8 and ::1, with or without a port.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host_port.matches(':').count() == 1 {
        host_port.split(':').next().unwrap_or(host_port)
    } else {
        host_port
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_repo_tag() {
        let r = Reference::parse("127.0.0.1:5000/ms2m/ckpt:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "ms2m/ckpt");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_loopback());
    }

    #[test]
    fn port_is_not_a_tag_and_tag_defaults_to_latest() {
        let r = Reference::parse("localhost:5000/a").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.manifest_reference(), "latest");
    }

    #[test]
    fn digest_reference_and_hub_defaults() {
        let r = Reference::parse("busybox@sha256:abcd").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.manifest_reference(), "sha256:abcd");
        assert!(!r.is_loopback());
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Reg.io/UPPER:x",
            "r.io/a:",
            "r.io/a@nodigest",
            "r.io//a",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "127.0.0.1:5000",
            "127.9.9.9",
            "[::1]:443",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["10.0.0.1:5000", "registry.example.com", "[fe80::1]:5000"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
