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

/// `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` (a registry host name component).
fn domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The registry part of the distribution grammar: host components joined by `.` (or a
/// bracketed IPv6 address), then an optional numeric port. Anything else (a leading
/// `-` a tool would take for an option, spaces, control characters) is refused here,
/// before a reference reaches a subprocess's command line.
fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (r, None),
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
        None => host.split('.').all(domain_component),
    };
    port_ok && host_ok
}

/// A repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let x = b[i];
        if x.is_ascii_lowercase() || x.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or any number of `-`.
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if sep.is_empty() || !ok {
            return false;
        }
    }
    true
}

/// `algorithm:encoded` with the grammar's alphabets (sha256: 64 lowercase hex).
fn valid_digest(d: &str) -> bool {
    let Some((alg, enc)) = d.split_once(':') else {
        return false;
    };
    let alg_ok = !alg.is_empty()
        && alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        && alg.as_bytes()[0].is_ascii_alphanumeric();
    let enc_ok = !enc.is_empty()
        && enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
    let sha_ok = alg != "sha256"
        || (enc.len() == 64
            && enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    alg_ok && enc_ok && sha_ok
}

impl Reference {
    pub fn parse(input: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Reference(format!("{input:?}: {why}"));
        let s = input.strip_prefix("docker://").unwrap_or(input);
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        if s.len() > 1024 {
            return Err(bad("longer than 1024 bytes"));
        }
        if s.starts_with('-') {
            return Err(bad("starts with `-` (would read as an option)"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(&format!("contains {c:?}")));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(bad("digest must look like sha256:<64 hex>"));
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
                || t.starts_with(['.', '-'])
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
        if !valid_registry(&registry) {
            return Err(bad(
                "registry must be a host name or address, with an optional port",
            ));
        }
        let repo_ok = !repository.is_empty() && repository.split('/').all(path_component);
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
        let r = Reference::parse(
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(
            r.manifest_reference(),
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
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
            // What reached `ctr` as an option before (issue 13), and friends.
            "--sync.x/x:t",
            "-r.io/a:t",
            "r.io/a:-t",
            "r.io/a:.t",
            "r.io/a b:t",
            "r.io/a:t\n--x",
            "r.io/a:t\u{7f}",
            "r.io/a\t:t",
            "-x.io:5000/a",
            "r.io:50a0/a",
            "r_x.io/a:t",
            "r.io/_a",
            "r.io/a__-b",
            "r.io/a..b",
            "r.io/a@sha256:xyz",
            "r.io/a@sha256:0123\n",
            "r.io/a@sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        for ok in [
            "r.io/a_b/c__d/e-f/g--h/i.j:v1.2-rc_3",
            "[::1]:5000/x/y:t",
            "127.0.0.1:5000/ms2m-test/c:ck",
            "localhost/ms2m/ns/mig:ckpt-1",
            "r.io/a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(Reference::parse(ok).is_ok(), "{ok:?} refused");
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
