//! CRIU capability check (`ms2m-agent criu-check`, and the agent's readiness).
//!
//! What matters for ms2m: the base check (namespaces, TCP repair...), established and
//! half-closed TCP connections, dirty-memory tracking (pre-dump / iterative
//! migration), userfaultfd (lazy pages / post-copy), cgroup namespaces. One hard rule:
//! CRIU older than 4.2 cannot dump TCP sockets on kernels 6.16 and later (`Can't get
//! 1:16 opt: Operation not supported`), so that combination is refused outright.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// Parse `4.2.1`, `4.2`, `6.18.44-fc-v857` (anything after the numbers is ignored).
    pub fn parse(s: &str) -> Option<Version> {
        let mut nums = s.trim().split(['.', '-', '+', ' ']).map(|p| {
            p.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse::<u32>()
                .ok()
        });
        let major = nums.next()??;
        let minor = nums.next().flatten().unwrap_or(0);
        let patch = nums.next().flatten().unwrap_or(0);
        Some(Version {
            major,
            minor,
            patch,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("cannot run CRIU at {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected `criu --version` output: {0:?}")]
    Version(String),
}

/// `criu --version` → the version.
pub async fn criu_version(criu: &Path) -> Result<Version, CriuError> {
    let out = Command::new(criu)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| CriuError::Spawn {
            path: criu.to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Version:").and_then(Version::parse))
        .ok_or(CriuError::Version(text))
}

/// Why this CRIU cannot be used on this kernel, if it cannot.
pub fn refusal(criu: Version, kernel: Version) -> Option<String> {
    let min_tcp = Version {
        major: 4,
        minor: 2,
        patch: 0,
    };
    let k616 = Version {
        major: 6,
        minor: 16,
        patch: 0,
    };
    if criu < min_tcp && kernel >= k616 {
        return Some(format!(
            "CRIU {criu} cannot checkpoint TCP sockets on kernel {kernel} (>= 6.16 changed \
             TCP_REPAIR options; older CRIU fails with \"Can't get 1:16 opt\"): install CRIU >= 4.2"
        ));
    }
    None
}

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub needed_for: &'static str,
    pub supported: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub criu_path: PathBuf,
    pub criu_version: Option<String>,
    pub kernel: String,
    pub base_check: bool,
    pub base_check_output: String,
    pub features: Vec<Feature>,
    /// Empty when the agent can checkpoint and restore with this CRIU.
    pub problems: Vec<String>,
}

impl Report {
    pub fn usable(&self) -> bool {
        self.problems.is_empty()
    }
}

const FEATURES: &[(&str, &str)] = &[
    (
        "tcp_half_closed",
        "half-closed TCP connections (--tcp-established)",
    ),
    (
        "external_net_ns",
        "restoring into a pre-created network namespace",
    ),
    (
        "network_lock_nftables",
        "network locking with nftables (else iptables)",
    ),
    (
        "mem_dirty_track",
        "pre-dump / iterative migration (soft-dirty pages)",
    ),
    ("uffd", "lazy pages (post-copy restore)"),
    ("uffd-noncoop", "lazy pages of processes that fork"),
    ("cgroupns", "cgroup namespaces"),
    ("timens", "time namespaces"),
];

async fn output(cmd: &mut Command) -> (bool, String) {
    match cmd.kill_on_drop(true).output().await {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            // Harmless on every machine (CRIU tries to raise a limit it may not).
            let s: Vec<&str> = s.lines().filter(|l| !l.contains("RLIMIT_NOFILE")).collect();
            (o.status.success(), s.join("\n").trim().to_owned())
        }
        Err(e) => (false, e.to_string()),
    }
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Run the checks.
pub async fn check(criu: &Path) -> Report {
    let kernel = kernel_release();
    let mut problems = Vec::new();
    let version = match criu_version(criu).await {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if let (Some(v), Some(k)) = (version, Version::parse(&kernel))
        && let Some(r) = refusal(v, k)
    {
        problems.push(r);
    }
    let (base_check, base_check_output) = if version.is_some() {
        output(Command::new(criu).arg("check")).await
    } else {
        (false, String::new())
    };
    if version.is_some() && !base_check {
        problems.push(format!("`criu check` failed: {base_check_output}"));
    }
    let mut features = Vec::new();
    if version.is_some() {
        for (name, needed_for) in FEATURES {
            let (supported, detail) =
                output(Command::new(criu).args(["check", "--feature", name])).await;
            features.push(Feature {
                name,
                needed_for,
                supported,
                detail,
            });
        }
    }
    Report {
        criu_path: criu.to_owned(),
        criu_version: version.map(|v| v.to_string()),
        kernel,
        base_check,
        base_check_output,
        features,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(Version::parse("4.2.1").unwrap().to_string(), "4.2.1");
        assert_eq!(
            Version::parse("6.18.44-fc-v857").unwrap().to_string(),
            "6.18.44"
        );
        assert_eq!(Version::parse("4.2").unwrap().to_string(), "4.2.0");
        assert!(Version::parse("x").is_none());
    }

    #[test]
    fn old_criu_on_new_kernel_is_refused() {
        let v = |s| Version::parse(s).unwrap();
        assert!(refusal(v("4.1.1"), v("6.16.0")).unwrap().contains(">= 4.2"));
        assert!(refusal(v("3.17.1"), v("6.18.44")).is_some());
        assert!(refusal(v("4.1.1"), v("6.15.9")).is_none());
        assert!(refusal(v("4.2.0"), v("6.18.0")).is_none());
    }

    #[tokio::test]
    async fn real_criu_reports_version_and_features() {
        let criu = std::env::var("MS2M_CRIU").unwrap_or_else(|_| "/usr/local/sbin/criu".into());
        assert!(
            Path::new(&criu).is_file(),
            "CRIU not found at {criu}: set MS2M_CRIU or run scripts/setup.sh"
        );
        let r = check(Path::new(&criu)).await;
        assert!(r.criu_version.is_some(), "{r:?}");
        assert_eq!(r.features.len(), FEATURES.len());
        let tcp = r
            .features
            .iter()
            .find(|f| f.name == "tcp_half_closed")
            .unwrap();
        assert!(!tcp.detail.is_empty());
    }
}
