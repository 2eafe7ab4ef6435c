//! `inspect`: a checkpointctl-like summary of a checkpoint archive (a directory in the
//! CRI-O layout or its tar): container, image, runtime, CRIU version, process tree,
//! memory size, TCP connections, files.

pub mod criu_images;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ms2m_image_format::Archive;
use serde::Serialize;

use crate::crio_layout as layout;
use criu_images::{CoreEntry, FileEntry, PstreeEntry};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0}: {1}")]
    Archive(PathBuf, ms2m_image_format::Error),
    #[error("{0} is not a checkpoint archive (no config.dump and no checkpoint/ directory)")]
    NotACheckpoint(PathBuf),
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub threads: usize,
    pub comm: Option<String>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct TcpConnection {
    pub family: &'static str,
    pub local: String,
    pub remote: String,
    pub state: &'static str,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub path: String,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize, Clone)]
pub struct Summary {
    pub checkpoint_id: Option<String>,
    pub path: PathBuf,
    pub container: Container,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub image: Option<String>,
    pub runtime: Option<String>,
    pub engine: Option<String>,
    pub created: Option<String>,
    pub criu_version: Option<String>,
    pub size_bytes: u64,
    pub memory_bytes: u64,
    pub rootfs_diff: bool,
    pub processes: Vec<Process>,
    pub tcp_connections: Vec<TcpConnection>,
    pub open_files: Vec<String>,
    pub files: Vec<FileInfo>,
    /// CRIU images that could not be decoded (the rest of the summary stands).
    pub warnings: Vec<String>,
}

/// CRIU images whose content the summary needs; everything else is only listed.
fn wanted(name: &str) -> bool {
    name == "checkpoint/pstree.img"
        || name == "checkpoint/files.img"
        || (name.starts_with("checkpoint/core-") && name.ends_with(".img"))
}

/// Summarize the archive at `path` (directory or tar). The archive is opened with the
/// image-format crate's validation (hostile entries are refused, naming the entry), and
/// its metadata model supplies container, image, runtime and CRIU version.
pub fn inspect(path: &Path) -> Result<Summary, InspectError> {
    let archive = Archive::open(path).map_err(|e| InspectError::Archive(path.to_owned(), e))?;
    let meta = archive.metadata().clone();
    let has_images = archive
        .entries()
        .iter()
        .any(|e| e.path.starts_with("checkpoint/"));
    if archive.entry(layout::CONFIG_DUMP).is_none() && !has_images {
        return Err(InspectError::NotACheckpoint(path.to_owned()));
    }
    let mut files: Vec<FileInfo> = meta
        .files
        .iter()
        .map(|f| FileInfo {
            path: f.path.clone(),
            size_bytes: f.size,
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut content = BTreeMap::new();
    let mut warnings = Vec::new();
    for e in archive
        .entries()
        .iter()
        .filter(|e| e.is_file() && wanted(&e.path))
    {
        match archive.read_small(&e.path) {
            Ok(b) => {
                content.insert(e.path.clone(), b);
            }
            Err(err) => warnings.push(err.to_string()),
        }
    }
    // ms2m's runc backend records the CRIU version in config.dump as well.
    let config = archive
        .read_small(layout::CONFIG_DUMP)
        .ok()
        .and_then(|b| serde_json::from_slice::<layout::ContainerConfig>(&b).ok())
        .unwrap_or_default();
    let mut comms = BTreeMap::new();
    for (name, data) in &content {
        if let Some(pid) = name
            .strip_prefix("checkpoint/core-")
            .and_then(|r| r.strip_suffix(".img"))
            .and_then(|p| p.parse::<u32>().ok())
        {
            let core: Vec<CoreEntry> = match criu_images::entries(name, data) {
                Ok(c) => c,
                Err(e) => {
                    warnings.push(e.to_string());
                    continue;
                }
            };
            if let Some(comm) = core.into_iter().find_map(|c| c.tc.and_then(|t| t.comm)) {
                comms.insert(pid, comm);
            }
        }
    }
    let mut processes = Vec::new();
    if let Some(data) = content.get("checkpoint/pstree.img") {
        let entries = criu_images::entries::<PstreeEntry>("pstree.img", data)
            .inspect_err(|e| warnings.push(e.to_string()))
            .unwrap_or_default();
        for p in entries {
            let pid = p.pid.unwrap_or(0);
            processes.push(Process {
                pid,
                ppid: p.ppid.unwrap_or(0),
                pgid: p.pgid.unwrap_or(0),
                sid: p.sid.unwrap_or(0),
                threads: p.threads.len(),
                comm: comms.get(&pid).cloned(),
            });
        }
    }
    let mut tcp_connections = Vec::new();
    let mut open_files = Vec::new();
    if let Some(data) = content.get("checkpoint/files.img") {
        let entries = criu_images::entries::<FileEntry>("files.img", data)
            .inspect_err(|e| warnings.push(e.to_string()))
            .unwrap_or_default();
        for f in entries {
            if let Some(r) = f.reg.and_then(|r| r.name) {
                open_files.push(r);
            }
            if let Some(sk) = f.isk
                && sk.proto == Some(6)
            {
                let fam = sk.family.unwrap_or(0);
                tcp_connections.push(TcpConnection {
                    family: if fam == 10 { "ipv6" } else { "ipv4" },
                    local: criu_images::addr(fam, &sk.src_addr, sk.src_port.unwrap_or(0)),
                    remote: criu_images::addr(fam, &sk.dst_addr, sk.dst_port.unwrap_or(0)),
                    state: criu_images::tcp_state(sk.state.unwrap_or(0)),
                });
            }
        }
    }
    open_files.sort();
    open_files.dedup();
    let none_if_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(Summary {
        checkpoint_id: None,
        path: path.to_owned(),
        container: Container {
            id: meta.container_id.or(none_if_empty(config.id)),
            name: meta.container_name.or(none_if_empty(config.name)),
        },
        pod: meta.pod_name,
        namespace: meta.namespace,
        image: meta
            .rootfs_image_name
            .or(meta.rootfs_image_ref)
            .or(meta.rootfs_image),
        runtime: meta.runtime,
        engine: meta
            .engine
            .or(config.criu_version.as_ref().map(|_| "ms2m".to_owned())),
        created: meta.checkpointed_at.or(meta.created),
        criu_version: meta.criu_version.or(config.criu_version),
        size_bytes: meta.total_size,
        memory_bytes: meta.memory_size,
        rootfs_diff: meta.has_rootfs_diff,
        processes,
        tcp_connections,
        open_files,
        files,
        warnings,
    })
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// The table `ms2m-agent inspect` prints.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let d = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(o, "Checkpoint     {}", s.path.display());
    let _ = writeln!(
        o,
        "Container      {} (id {})",
        d(&s.container.name),
        d(&s.container.id)
    );
    let _ = writeln!(o, "Image          {}", d(&s.image));
    let _ = writeln!(o, "Runtime        {}", d(&s.runtime));
    let _ = writeln!(o, "Created        {}", d(&s.created));
    let _ = writeln!(o, "CRIU version   {}", d(&s.criu_version));
    let _ = writeln!(o, "Size           {}", human(s.size_bytes));
    let _ = writeln!(o, "Memory pages   {}", human(s.memory_bytes));
    let _ = writeln!(
        o,
        "Rootfs diff    {}",
        if s.rootfs_diff { "yes" } else { "no" }
    );
    let _ = writeln!(o, "\nProcess tree");
    let _ = writeln!(
        o,
        "  {:>6} {:>6} {:>6} {:>7}  COMMAND",
        "PID", "PPID", "PGID", "THREADS"
    );
    for p in &s.processes {
        let _ = writeln!(
            o,
            "  {:>6} {:>6} {:>6} {:>7}  {}",
            p.pid,
            p.ppid,
            p.pgid,
            p.threads,
            p.comm.as_deref().unwrap_or("?")
        );
    }
    let _ = writeln!(o, "\nTCP connections ({})", s.tcp_connections.len());
    for t in &s.tcp_connections {
        let _ = writeln!(o, "  {:<28} -> {:<28} {}", t.local, t.remote, t.state);
    }
    if !s.open_files.is_empty() {
        let _ = writeln!(o, "\nOpen files ({})", s.open_files.len());
        for f in &s.open_files {
            let _ = writeln!(o, "  {f}");
        }
    }
    for w in &s.warnings {
        let _ = writeln!(o, "\nWarning: {w}");
    }
    let _ = writeln!(o, "\nArchive files ({})", s.files.len());
    for f in &s.files {
        let _ = writeln!(o, "  {:>10}  {}", human(f.size_bytes), f.path);
    }
    o
}
