//! runc containers for tests, started detached with pipe stdio.
//!
//! CRIU can only dump stdio that is a pipe (a host file fails with "Can't lookup
//! mount"), and `runc run -d` with pipes keeps the caller's read end busy until the
//! container exits, so stdout/stderr are drained by threads into buffers the test
//! can read, and runc's own exit tells whether the start worked.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::bundle::Bundle;

/// A running runc container, killed and deleted on drop.
#[derive(Debug)]
pub struct Container {
    id: String,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Container {
    /// `runc run -d` of `bundle` as `id`.
    pub fn run(bundle: &Bundle, id: &str) -> Container {
        let mut cmd = Command::new("runc");
        cmd.args(["run", "-d", "--bundle"])
            .arg(bundle.dir())
            .arg(id);
        Container::spawn(cmd, id)
    }

    /// `runc checkpoint` of this container (which then exits) into the archive layout
    /// CRI-O writes: CRIU images under `<archive>/checkpoint/`, the runtime spec
    /// (`spec.dump`) and the container config (`config.dump`) beside them.
    pub fn checkpoint_to_archive(
        &self,
        bundle: &Bundle,
        archive: &Path,
        work: &Path,
        config_dump: &serde_json::Value,
    ) {
        crate::process::run(
            Command::new("runc")
                .arg("--criu")
                .arg(crate::env::criu())
                .args(["checkpoint", "--image-path"])
                .arg(archive.join("checkpoint"))
                .arg("--work-path")
                .arg(work)
                .arg(&self.id),
        );
        std::fs::copy(bundle.dir().join("config.json"), archive.join("spec.dump")).unwrap();
        std::fs::write(
            archive.join("config.dump"),
            serde_json::to_vec(config_dump).unwrap(),
        )
        .unwrap();
    }

    /// Restores `bundle` as `id` from `images` and checks that the counter runs on
    /// from where the checkpoint (`at_checkpoint` lines) left it; returns the log lines
    /// seen then.
    pub fn restore_keeps_counting(
        bundle: &Bundle,
        id: &str,
        images: &Path,
        work: &Path,
        at_checkpoint: usize,
    ) -> (Container, Vec<Vec<u64>>) {
        let restored = Container::restore(bundle, id, images, work, &[]);
        assert_eq!(
            restored.status().as_deref(),
            Some("running"),
            "{}",
            restored.output()
        );
        let after = crate::counter::wait_for_lines(&bundle.rootfs(), at_checkpoint + 20);
        crate::counter::assert_continuous(&after);
        (restored, after)
    }

    /// `runc restore -d` of `bundle` as `id` from CRIU images in `images`.
    /// `extra` are more restore flags (e.g. `--tcp-established`).
    pub fn restore(
        bundle: &Bundle,
        id: &str,
        images: &Path,
        work: &Path,
        extra: &[&str],
    ) -> Container {
        let criu = crate::env::criu();
        let mut cmd = Command::new("runc");
        cmd.arg("--criu")
            .arg(criu)
            .args(["restore", "-d", "--image-path"])
            .arg(images);
        cmd.arg("--work-path")
            .arg(work)
            .arg("--bundle")
            .arg(bundle.dir());
        cmd.args(extra).arg(id);
        Container::spawn(cmd, id)
    }

    /// Adopts a container that something else (e.g. the agent) started, so the test
    /// cleans it up.
    pub fn adopt(id: &str) -> Container {
        Container {
            id: id.to_string(),
            output: Arc::default(),
        }
    }

    fn spawn(mut cmd: Command, id: &str) -> Container {
        crate::env::require_root();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let output: Arc<Mutex<Vec<u8>>> = Arc::default();
        for mut stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = Arc::clone(&output);
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        // The container keeps stdin's read end; closing ours is fine for programs that
        // don't read stdin, and keeps the pipe (which CRIU can dump) as fd 0.
        drop(child.stdin.take());
        let status = child.wait().expect("wait for runc");
        let container = Container {
            id: id.to_string(),
            output,
        };
        assert!(
            status.success(),
            "{cmd:?} failed with {status}: {}",
            container.output()
        );
        container
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the container (and runc) wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// `runc state`'s status: "running", "stopped", ... or None when runc has no such
    /// container.
    pub fn status(&self) -> Option<String> {
        let out = Command::new("runc")
            .args(["state", &self.id])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(str::to_string)
    }

    /// The container's init PID on the host.
    pub fn pid(&self) -> Option<u32> {
        let out = Command::new("runc")
            .args(["state", &self.id])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_u64().map(|p| p as u32).filter(|p| *p != 0)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["kill", &self.id, "KILL"])
            .output();
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.id])
            .output();
    }
}
