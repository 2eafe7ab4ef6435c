//! Standalone restore: recreate a bundle from a checkpoint and `runc restore` it under
//! a new id, optionally into a pre-created network namespace.
//!
//! The bundle (`<state_dir>/bundles/<id>/`) gets a copy of the image rootfs with the
//! checkpoint's `rootfs-diff.tar` and `deleted.files` applied, and a `config.json` made
//! from `spec.dump` with the root path, network namespace and cgroup path rewritten: the
//! source may still be running on this node, and two containers must never share a
//! cgroup (freezing one would freeze both).
//!
//! Decisions for a restore into another pod:
//! - `/etc/hostname`: a runtime bind-mounts a file holding the pod name, and services
//!   read it to name themselves (the MS2M reference consumer names its control queue
//!   `ms2m.control.<pod>` after it). `spec.dump` carries the *source's* file, so the
//!   agent writes `<bundle>/hostname` with the target's name (the request's `hostname`,
//!   default the new container id) and points the checkpoint's `/etc/hostname` mount
//!   at it. A checkpoint without such a mount keeps its image's file: CRIU restores the
//!   mount tree it dumped, so a mount cannot be added at restore time.
//! - `tcp_close`: a pod restored elsewhere gets a new IP, and CRIU cannot bind an
//!   established connection back to an address the namespace lacks. Unless the request
//!   says, the agent closes the connections (the service reconnects) exactly when one
//!   of the dumped connections' local addresses is missing in the target namespace.
//! - A stale `org.criu.config` annotation in `spec.dump` names a file on the source
//!   node (with the source's CRIU options): it is dropped, CRIU options come from the
//!   request.

use ms2m_api::ErrorCode;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::crio_layout as layout;
use crate::jobs::{JobCtx, JobFailure};
use crate::runc::Runc;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("path {0} is outside the agent's directories ({1})")]
    PathNotAllowed(PathBuf, String),
    #[error("checkpoint has no rootfs image recorded in config.dump: give `rootfs`")]
    NoRootfs,
    #[error("{0}")]
    Invalid(String),
}

/// Where a network namespace may come from: named netns or a process's netns.
pub fn check_netns(p: &Path) -> Result<PathBuf, RestoreError> {
    let s = p.to_string_lossy();
    let named = ["/run/netns/", "/var/run/netns/"]
        .iter()
        .any(|d| s.starts_with(d) && !s[d.len()..].contains('/') && s.len() > d.len());
    let proc_ns = s
        .strip_prefix("/proc/")
        .and_then(|r| r.strip_suffix("/ns/net"))
        .is_some_and(|pid| !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()));
    if !(named || proc_ns) || s.contains("..") {
        return Err(RestoreError::PathNotAllowed(
            p.to_owned(),
            "/run/netns/<name>, /var/run/netns/<name> or /proc/<pid>/ns/net".into(),
        ));
    }
    if !p.exists() {
        return Err(RestoreError::Invalid(format!(
            "network namespace {} does not exist",
            p.display()
        )));
    }
    Ok(p.to_owned())
}

/// The rootfs to restore onto: the request's, else the one recorded in config.dump;
/// it must resolve inside one of `allowed`.
pub fn resolve_rootfs(
    requested: Option<&Path>,
    checkpoint: &Path,
    allowed: &[PathBuf],
) -> Result<PathBuf, RestoreError> {
    let p = match requested {
        Some(p) => p.to_owned(),
        None => layout::read_config_dump(checkpoint)
            .ok()
            .and_then(|c| c.rootfs_image)
            .map(PathBuf::from)
            .ok_or(RestoreError::NoRootfs)?,
    };
    let allowed_list = allowed
        .iter()
        .map(|a| a.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let canon = std::fs::canonicalize(&p)
        .map_err(|_| RestoreError::PathNotAllowed(p.clone(), allowed_list.clone()))?;
    let ok = allowed.iter().any(|a| {
        std::fs::canonicalize(a)
            .map(|a| canon.starts_with(&a) && canon != a)
            .unwrap_or(false)
    });
    if !ok {
        return Err(RestoreError::PathNotAllowed(p, allowed_list));
    }
    if !canon.is_dir() {
        return Err(RestoreError::Invalid(format!(
            "rootfs {} is not a directory",
            p.display()
        )));
    }
    Ok(canon)
}

#[derive(Debug, Clone)]
pub struct RestoreSpec {
    pub checkpoint: PathBuf,
    pub container_id: String,
    pub bundle: PathBuf,
    pub rootfs_image: PathBuf,
    pub netns: Option<PathBuf>,
    pub tcp_established: bool,
    /// `None`: decided from the checkpoint's connections and the target namespace.
    pub tcp_close: Option<bool>,
    /// Written to the bundle's `/etc/hostname` file.
    pub hostname: String,
}

/// A name a pod (or its hostname file) may carry: a DNS subdomain.
pub fn check_hostname(h: &str) -> Result<(), RestoreError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        && !h.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(RestoreError::Invalid(format!(
            "hostname {h:?} is not a DNS name (lowercase letters, digits, '-', '.')"
        )))
    }
}

/// Local addresses of the checkpoint's established TCP connections.
fn established_local_addrs(checkpoint: &Path) -> Vec<std::net::IpAddr> {
    let Ok(summary) = crate::inspect::inspect(checkpoint) else {
        return Vec::new();
    };
    summary
        .tcp_connections
        .iter()
        .filter(|t| t.state == "established")
        .filter_map(|t| t.local.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip())
        .collect()
}

/// The addresses configured in a network namespace (`ip -o addr` run inside it).
async fn netns_addrs(netns: &Path) -> Option<Vec<std::net::IpAddr>> {
    let out = tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "addr", "show"])
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(parse_ip_addr_output(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ip_addr_output(text: &str) -> Vec<std::net::IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// Whether established connections must come back closed (see the module docs).
async fn decide_tcp_close(spec: &RestoreSpec) -> bool {
    if let Some(explicit) = spec.tcp_close {
        return explicit;
    }
    let (Some(netns), true) = (&spec.netns, spec.tcp_established) else {
        return false;
    };
    let ck = spec.checkpoint.clone();
    let wanted = tokio::task::spawn_blocking(move || established_local_addrs(&ck))
        .await
        .unwrap_or_default();
    if wanted.is_empty() {
        return false;
    }
    match netns_addrs(netns).await {
        Some(have) => wanted.iter().any(|a| !have.contains(a)),
        None => {
            tracing::warn!(netns = %netns.display(), "cannot list the namespace's addresses; keeping connections");
            false
        }
    }
}

fn fail(code: ErrorCode) -> impl Fn(String) -> JobFailure {
    move |m| JobFailure::new(code, m)
}

/// Rewrite spec.dump into the new bundle's config.json. `hostname_file`: the file the
/// checkpoint's `/etc/hostname` bind mount now comes from.
pub fn bundle_config(
    spec: &serde_json::Value,
    rootfs: &Path,
    container_id: &str,
    netns: Option<&Path>,
    hostname_file: &Path,
) -> serde_json::Value {
    let mut c = spec.clone();
    c["root"]["path"] = serde_json::json!(rootfs);
    c["process"]["terminal"] = serde_json::json!(false);
    if let Some(a) = c.get_mut("annotations").and_then(|a| a.as_object_mut()) {
        a.remove("org.criu.config");
    }
    if let Some(mounts) = c.get_mut("mounts").and_then(|m| m.as_array_mut()) {
        for m in mounts.iter_mut() {
            if m["destination"] == "/etc/hostname" {
                m["source"] = serde_json::json!(hostname_file);
            }
        }
    }
    if let Some(linux) = c.get_mut("linux").and_then(|l| l.as_object_mut()) {
        linux.insert(
            "cgroupsPath".into(),
            serde_json::json!(format!("/ms2m/{container_id}")),
        );
        if let (Some(ns), Some(list)) = (
            netns,
            linux.get_mut("namespaces").and_then(|n| n.as_array_mut()),
        ) {
            for n in list.iter_mut() {
                if n["type"] == "network" {
                    n["path"] = serde_json::json!(ns);
                }
            }
        }
    }
    c
}

/// Removes a half-restored container when the job is cancelled mid-restore (its
/// future dropped while runc was working).
struct DeleteOnDrop {
    runc: Runc,
    id: String,
    armed: bool,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut c = self.runc.command().into_std();
        c.args(["delete", "--force"]).arg(&self.id);
        // Blocking for the few ms runc takes: a leftover container would keep the id.
        if let Err(e) = c.output() {
            tracing::error!(container = %self.id, error = %e, "could not delete half-restored container");
        }
    }
}

pub async fn run(
    runc: Runc,
    spec: RestoreSpec,
    ctx: JobCtx,
) -> Result<ms2m_api::RestoreResult, JobFailure> {
    ctx.set_phase("preparing");
    let bundle = spec.bundle.clone();
    ctx.clean_on_failure(&bundle);
    let rootfs = bundle.join("rootfs");
    tokio::fs::create_dir_all(&bundle).await.map_err(|e| {
        JobFailure::new(ErrorCode::Io, format!("creating {}: {e}", bundle.display()))
    })?;
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(&spec.rootfs_image)
        .arg(&rootfs)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| JobFailure::new(ErrorCode::Io, format!("cp: {e}")))?;
    if !out.status.success() {
        return Err(JobFailure::new(
            ErrorCode::Io,
            format!(
                "copying the rootfs {}: {}",
                spec.rootfs_image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let (ck, rf) = (spec.checkpoint.clone(), rootfs.clone());
    tokio::task::spawn_blocking(move || {
        let t = ck.join(layout::ROOTFS_DIFF);
        let d = ck.join(layout::DELETED_FILES);
        crate::rootfs_diff::apply(
            t.exists().then_some(t.as_path()),
            d.exists().then_some(d.as_path()),
            &rf,
        )
    })
    .await
    .map_err(|e| JobFailure::new(ErrorCode::Internal, e.to_string()))?
    .map_err(|e| JobFailure::new(ErrorCode::InvalidArchive, e.to_string()))?;
    let spec_dump = tokio::fs::read(spec.checkpoint.join(layout::SPEC_DUMP))
        .await
        .map_err(|e| JobFailure::new(ErrorCode::InvalidArchive, format!("spec.dump: {e}")))?;
    let spec_json: serde_json::Value = serde_json::from_slice(&spec_dump)
        .map_err(|e| JobFailure::new(ErrorCode::InvalidArchive, format!("spec.dump: {e}")))?;
    let hostname_file = bundle.join("hostname");
    tokio::fs::write(&hostname_file, format!("{}\n", spec.hostname))
        .await
        .map_err(|e| JobFailure::new(ErrorCode::Io, format!("hostname file: {e}")))?;
    let config = bundle_config(
        &spec_json,
        &rootfs,
        &spec.container_id,
        spec.netns.as_deref(),
        &hostname_file,
    );
    let tcp_close = decide_tcp_close(&spec).await;
    tokio::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )
    .await
    .map_err(|e| JobFailure::new(ErrorCode::Io, format!("config.json: {e}")))?;
    let work = bundle.join("restore-work");
    tokio::fs::create_dir_all(&work)
        .await
        .map_err(|e| JobFailure::new(ErrorCode::Io, e.to_string()))?;

    ctx.set_phase("restoring");
    let mut guard = DeleteOnDrop {
        runc: runc.clone(),
        id: spec.container_id.clone(),
        armed: true,
    };
    let started = Instant::now();
    let r = runc
        .restore(&spec.container_id)
        .bundle(&bundle)
        .image_path(spec.checkpoint.join(layout::CHECKPOINT_DIR))
        .work_path(&work)
        .tcp_established(spec.tcp_established)
        .tcp_close(tcp_close)
        .run(&bundle.join("container.log"))
        .await;
    if let Err(e) = r {
        guard.armed = false;
        let _ = runc.delete(&spec.container_id, true).await;
        let log = std::fs::read_to_string(work.join("restore.log"))
            .map(|l| {
                l.lines()
                    .filter(|x| x.contains("Error"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        return Err(fail(ErrorCode::CriuFailed)(format!("{e}\n{log}")));
    }
    guard.armed = false;
    let restore_ms = started.elapsed().as_millis() as u64;
    let state = runc
        .state(&spec.container_id)
        .await
        .map_err(|e| JobFailure::new(ErrorCode::RuncFailed, e.to_string()))?
        .ok_or_else(|| JobFailure::new(ErrorCode::RuncFailed, "restored container vanished"))?;
    Ok(ms2m_api::RestoreResult {
        container_id: spec.container_id,
        pid: state.pid,
        bundle,
        restore_ms,
        hostname: spec.hostname,
        tcp_close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_paths_are_limited() {
        assert!(matches!(
            check_netns(Path::new("/etc/passwd")),
            Err(RestoreError::PathNotAllowed(..))
        ));
        assert!(matches!(
            check_netns(Path::new("/run/netns/../../etc/x")),
            Err(RestoreError::PathNotAllowed(..))
        ));
        assert!(matches!(
            check_netns(Path::new("/proc/self/ns/net")),
            Err(RestoreError::PathNotAllowed(..))
        ));
        let me = format!("/proc/{}/ns/net", std::process::id());
        check_netns(Path::new(&me)).unwrap();
    }

    #[test]
    fn rootfs_must_be_inside_allowed_dirs() {
        let t = tempfile::tempdir().unwrap();
        let allowed = t.path().join("rootfs");
        std::fs::create_dir_all(allowed.join("busybox")).unwrap();
        std::fs::create_dir_all(t.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), allowed.join("sneaky")).unwrap();
        let a = vec![allowed.clone()];
        resolve_rootfs(Some(&allowed.join("busybox")), t.path(), &a).unwrap();
        for bad in [
            t.path().join("elsewhere"),
            allowed.join("sneaky"),
            allowed.clone(),
        ] {
            assert!(matches!(
                resolve_rootfs(Some(&bad), t.path(), &a),
                Err(RestoreError::PathNotAllowed(..))
            ));
        }
        assert!(matches!(
            resolve_rootfs(None, t.path(), &a),
            Err(RestoreError::NoRootfs)
        ));
    }

    #[test]
    fn bundle_config_rewrites_root_netns_and_cgroup() {
        let spec = serde_json::json!({
            "process": {"terminal": true, "args": ["sh"]},
            "root": {"path": "rootfs"},
            "annotations": {"org.criu.config": "/src/criu.conf", "keep": "me"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hostname", "type": "bind", "source": "/src/hostname", "options": ["bind", "ro"]}
            ],
            "linux": {"cgroupsPath": "/src", "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/a"}]}
        });
        let c = bundle_config(
            &spec,
            Path::new("/b/rootfs"),
            "c2",
            Some(Path::new("/run/netns/b")),
            Path::new("/b/hostname"),
        );
        assert_eq!(c["root"]["path"], "/b/rootfs");
        assert_eq!(c["mounts"][1]["source"], "/b/hostname");
        assert_eq!(c["mounts"][1]["options"], serde_json::json!(["bind", "ro"]));
        assert_eq!(c["mounts"][0]["source"], "proc");
        assert_eq!(c["annotations"], serde_json::json!({"keep": "me"}));
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["linux"]["cgroupsPath"], "/ms2m/c2");
        assert_eq!(c["linux"]["namespaces"][1]["path"], "/run/netns/b");
    }

    #[test]
    fn ip_addr_output_is_parsed() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                    1: lo    inet6 ::1/128 scope host \\       valid_lft forever\n\
                    2: eth0    inet 10.231.3.70/30 scope global eth0\n";
        let a = parse_ip_addr_output(text);
        assert_eq!(
            a,
            ["127.0.0.1", "::1", "10.231.3.70"].map(|s| s.parse::<std::net::IpAddr>().unwrap())
        );
    }

    #[test]
    fn hostnames_are_dns_names() {
        check_hostname("consumer-0.ms2m").unwrap();
        for bad in ["", "Upper", "a/b", "a\nb", "-x", &"x".repeat(254)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }
}
