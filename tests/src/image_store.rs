//! Private image stores for the image-import tests: a containers-storage under a temp
//! directory (driven by skopeo, as CRI-O's store would be) and a containerd of our own
//! (own root, state and socket, no CRI plugin), both removed with everything they
//! mounted when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::env::tool;
use crate::process::run;

/// Lazily unmounts every mount point under `dir`, deepest first. containers-storage's
/// overlay driver bind-mounts its home onto itself and leaves it mounted, and a temp
/// dir cannot be removed through a mount.
pub fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

/// A containers-storage in a temp directory: `[overlay@<dir>/root+<dir>/runroot]`.
pub struct PrivateStorage {
    pub dir: tempfile::TempDir,
    /// The storage spec for `containers-storage:<spec><reference>`.
    pub spec: String,
    skopeo: PathBuf,
}

impl PrivateStorage {
    pub fn new() -> Self {
        let skopeo = tool("skopeo", "skopeo");
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = format!(
            "[overlay@{}+{}]",
            dir.path().join("root").display(),
            dir.path().join("runroot").display()
        );
        Self { dir, spec, skopeo }
    }

    pub fn transport_ref(&self, reference: &str) -> String {
        format!("containers-storage:{}{reference}", self.spec)
    }

    /// `skopeo inspect [--raw]` of an image in this store; `None` when it is absent.
    pub fn inspect(&self, reference: &str, raw: bool) -> Option<Value> {
        let mut c = Command::new(&self.skopeo);
        c.arg("inspect");
        if raw {
            c.arg("--raw");
        }
        let out = c.arg(self.transport_ref(reference)).output().unwrap();
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("skopeo inspect prints JSON"))
    }

    /// `skopeo copy` of an image in this store to an OCI layout at `dest`.
    pub fn copy_to_layout(&self, reference: &str, dest: &Path) {
        run(Command::new(&self.skopeo)
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(self.transport_ref(reference))
            .arg(format!("oci:{}:out", dest.display())));
    }

    /// Image ids the store records (`overlay-images/images.json`).
    pub fn image_ids(&self) -> Vec<String> {
        let p = self.dir.path().join("root/overlay-images/images.json");
        let Ok(bytes) = std::fs::read(&p) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for PrivateStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateStorage {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}

/// A containerd of our own, on a socket in a temp directory, killed on drop.
pub struct PrivateContainerd {
    pub dir: tempfile::TempDir,
    pub address: PathBuf,
    ctr: PathBuf,
    child: Option<Child>,
}

impl PrivateContainerd {
    pub fn start() -> Self {
        let containerd = tool("containerd", "containerd");
        let ctr = tool("ctr", "containerd");
        let dir = tempfile::tempdir().expect("tempdir");
        let address = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        // No CRI plugin (it would want CNI and a runtime); everything else is stock, with
        // every path in the temp dir (the `opt` plugin would create /opt/containerd).
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}\"\n",
                dir.path().join("root").display(),
                dir.path().join("state").display(),
                address.display(),
                address.display(),
                dir.path().join("opt").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning containerd");
        let mut c = Self {
            dir,
            address,
            ctr,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.address.exists() && c.ctr(&["version"]).status.success() {
                return c;
            }
            if let Some(Ok(Some(st))) = c.child.as_mut().map(|ch| ch.try_wait()) {
                panic!("containerd exited with {st}: {}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not serve {} within 30 s: {}",
                c.address.display(),
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr -a <socket> -n k8s.io <args>`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.address)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("running ctr")
    }

    /// `ctr images ls` as (reference, digest) pairs.
    pub fn images(&self) -> Vec<(String, String)> {
        let out = self.ctr(&["images", "ls"]);
        assert!(
            out.status.success(),
            "ctr images ls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next()?.to_owned();
                let _media_type = w.next()?;
                Some((name, w.next()?.to_owned()))
            })
            .collect()
    }

    /// A blob of the content store, parsed as JSON (a manifest, an index).
    pub fn content_json(&self, digest: &str) -> Value {
        let out = self.ctr(&["content", "get", digest]);
        assert!(
            out.status.success(),
            "ctr content get {digest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON blob")
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first: containerd unmounts its snapshots on a clean stop.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount_under(self.dir.path());
    }
}
