//! OCI bundles for test containers: a busybox-static rootfs (plus any extra files,
//! such as a static service binary) and a config.json made by `runc spec` and
//! adjusted for non-interactive, pipe-stdio containers.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::process::run;

/// Applets linked into the rootfs; the test programs are shell loops.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "ls", "seq", "expr", "test", "[", "true", "false", "mkdir", "rm",
    "wc", "tail", "head", "dd", "hostname", "ip", "nc", "wget", "grep",
];

/// A bundle directory: `<dir>/config.json` and `<dir>/rootfs`.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// Creates a bundle in `dir` (which must not exist or be empty) whose process runs
    /// `args` in a busybox rootfs.
    pub fn busybox(dir: &Path, args: &[&str]) -> Bundle {
        let busybox = crate::env::tool("busybox", "busybox-static");
        crate::env::tool("runc", "runc");
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "run", "var"] {
            fs::create_dir_all(rootfs.join(d)).expect("create rootfs dirs");
        }
        fs::copy(&busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).expect("link applet");
        }
        fs::write(rootfs.join("etc/hostname"), "ms2m-test\n").unwrap();
        run(Command::new("runc").arg("spec").current_dir(dir));
        let bundle = Bundle {
            dir: dir.to_path_buf(),
        };
        bundle.edit_config(|c| {
            c["process"]["args"] = json!(args);
            c["process"]["terminal"] = json!(false);
            c["process"]["env"] = json!(["PATH=/bin", "HOME=/"]);
            c["root"]["readonly"] = json!(false);
        });
        bundle
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Copies `src` into the rootfs at `dest` (absolute inside the container).
    pub fn add_file(&self, src: &Path, dest: &str) {
        let target = self.rootfs().join(dest.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(src, &target)
            .unwrap_or_else(|e| panic!("copy {} into rootfs: {e}", src.display()));
    }

    /// Makes the container join an existing network namespace (a pre-created pod
    /// sandbox, `lo` up) instead of getting a fresh, empty one from runc.
    pub fn use_netns(&self, path: &Path) {
        self.edit_config(|c| {
            let namespaces = c["linux"]["namespaces"].as_array_mut().unwrap();
            for ns in namespaces.iter_mut() {
                if ns["type"] == "network" {
                    ns["path"] = json!(path);
                }
            }
        });
    }

    /// Sets environment variables of the container's process.
    pub fn set_env(&self, vars: &[(&str, &str)]) {
        self.edit_config(|c| {
            let env = c["process"]["env"].as_array_mut().unwrap();
            for (k, v) in vars {
                env.push(json!(format!("{k}={v}")));
            }
        });
    }

    pub fn edit_config(&self, f: impl FnOnce(&mut Value)) {
        let path = self.dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        f(&mut config);
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }
}
