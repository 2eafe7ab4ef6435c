//! The real `ms2m-agent serve` process (issue 13): its checkpoints are private whatever
//! umask it inherits, and a SIGKILL in the middle of a leave-running checkpoint leaves
//! no paused container and no leftovers once it is started again.
//!
//! Needs the agent binary of this build (`cargo build -p ms2m-agent`; `cargo test
//! --workspace` builds it).

mod agent_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_common::{COUNTER, Resp, eventually};
use ms2m_tests::agent_http::{AgentClient, try_call};
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::env;
use ms2m_tests::transfer::agent_binary;
use serde_json::{Value, json};

/// One agent process on a state dir that outlives it (so it can be restarted).
struct Proc {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

/// `ms2m-agent serve` on `base`, started through `sh -c 'umask 022; exec …'`: the
/// umask a DaemonSet pod or a shell typically hands down.
fn spawn(base: &Path, extra: &[&std::ffi::OsStr]) -> (Child, PathBuf, PathBuf) {
    let socket = base.join("agent.sock");
    let _ = std::fs::remove_file(&socket);
    let log = base.join("agent.log");
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(agent_binary())
        .arg("serve")
        .arg("--socket-path")
        .arg(&socket)
        .arg("--state-dir")
        .arg(base.join("state"))
        .arg("--allowed-rootfs-dir")
        .arg(base.join("images"))
        .arg("--criu-path")
        .arg(env::criu())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("start ms2m-agent");
    (child, socket, log)
}

/// `Some` once the agent on `socket` answers `/healthz` with 200.
fn healthy(socket: &Path) -> Option<()> {
    let r = try_call(
        &AgentClient::unix(socket),
        "GET",
        "/healthz",
        &[],
        None,
        Duration::from_secs(5),
    );
    (r.ok()?.status == 200).then_some(())
}

impl Proc {
    fn start(base: &Path) -> Proc {
        let (child, socket, log) = spawn(base, &[]);
        let mut p = Proc { child, socket, log };
        eventually(30, "the agent to answer /healthz", || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("agent exited ({st}): {}", p.log_text());
            }
            healthy(&p.socket)
        });
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        try_call(
            &AgentClient::unix(&self.socket),
            method,
            path,
            &[],
            body.map(|b| b.to_string().into_bytes()),
            Duration::from_secs(120),
        )
        .expect("agent socket")
    }

    fn job(&self, id: &str) -> Value {
        self.call("GET", &format!("/v1/jobs/{id}"), None).json()
    }

    fn wait_job(&self, id: &str) -> Value {
        eventually(300, "the job to end", || {
            let j = self
                .call("GET", &format!("/v1/jobs/{id}?wait=30"), None)
                .json();
            (!matches!(j["status"].as_str(), Some("running" | "queued"))).then_some(j)
        })
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A base dir others may traverse (tempdirs are 0700, which would hide the agent's own
/// modes from the `nobody` check).
fn open_base() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(t.path().join("images")).unwrap();
    t
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn checkpoints_are_private_whatever_the_umask() {
    env::require_root();
    let base = open_base();
    let agent = Proc::start(base.path());
    let work = tempfile::tempdir().unwrap();
    let bundle = Bundle::busybox(&work.path().join("b"), &["sh", "-c", COUNTER]);
    bundle.set_env(&[("DB_PASSWORD", "hunter2-not-for-nobody")]);
    let id = env::unique("ms2m-priv");
    let _c = Container::run(&bundle, &id);

    let r = agent.call(
        "POST",
        "/v1/checkpoints",
        Some(
            &json!({"backend": "runc", "container_id": id, "leave_running": true,
                     "checkpoint_id": "private"}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let job = agent.wait_job(r.json()["id"].as_str().unwrap());
    assert_eq!(job["status"], "succeeded", "{job}");

    let state = base.path().join("state");
    let ck = state.join("checkpoints/private");
    for d in [
        state.clone(),
        state.join("checkpoints"),
        state.join("work"),
        ck.clone(),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let mut files = 0;
    let mut stack = vec![ck.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                assert_eq!(mode(&e.path()), 0o700, "{}", e.path().display());
                stack.push(e.path());
            } else if t.is_file() {
                assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files > 5, "checkpoint has {files} files");

    // The secret is in there (root reads it), and `nobody` cannot read it.
    let spec = ck.join("spec.dump");
    assert!(
        std::fs::read_to_string(&spec)
            .unwrap()
            .contains("hunter2-not-for-nobody")
    );
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("hunter2"),
        "nobody read spec.dump: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A rootfs large enough that the rootfs diff (taken while the container is still
/// paused, after CRIU) lasts long enough to be caught in that phase.
fn bulky_bundle(dir: &Path, images: &Path) -> (Bundle, PathBuf) {
    let bundle = Bundle::busybox(dir, &["sh", "-c", COUNTER]);
    let data = bundle.rootfs().join("data");
    std::fs::create_dir(&data).unwrap();
    for i in 0..20_000 {
        std::fs::write(data.join(format!("f{i}")), b"x").unwrap();
    }
    let image = images.join(dir.file_name().unwrap());
    agent_common::copy_tree(&bundle.rootfs(), &image);
    (bundle, image)
}

fn leftovers(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    if let Ok(rd) = std::fs::read_dir(state.join("work/paused")) {
        v.extend(rd.map(|e| format!("paused marker {:?}", e.unwrap().file_name())));
    }
    v
}

/// SIGKILL while CRIU dumps the paused container, and after the dump while the rootfs
/// diff runs (still paused): after a restart the container runs, and no partial
/// checkpoint, staging dir or pause marker is left; the id is free again.
#[test]
fn a_killed_leave_running_checkpoint_leaves_nothing_paused_or_partial() {
    env::require_root();
    let base = open_base();
    let state = base.path().join("state");
    let work = tempfile::tempdir().unwrap();
    let (bundle, image) = bulky_bundle(&work.path().join("bulky"), &base.path().join("images"));
    let id = env::unique("ms2m-kill");
    let container = Container::run(&bundle, &id);
    let mut agent = Proc::start(base.path());

    for phase in ["dumping", "archiving"] {
        // Retried when the job ends before the kill point was seen: how long each phase
        // lasts is not ours to promise.
        let mut hit = false;
        for attempt in 0..5 {
            let ck = format!("killed-{phase}-{attempt}");
            let r = agent.call(
                "POST",
                "/v1/checkpoints",
                Some(
                    &json!({"backend": "runc", "container_id": id, "leave_running": true,
                             "checkpoint_id": ck, "rootfs_image": image}),
                ),
            );
            assert_eq!(r.status, 202, "{}", r.body);
            let job = r.json()["id"].as_str().unwrap().to_string();
            loop {
                let j = agent.job(&job);
                if j["status"] != "running" {
                    break;
                }
                if j["phase"] == phase && container.status().as_deref() == Some("paused") {
                    hit = true;
                    break;
                }
            }
            if hit {
                agent.sigkill();
                agent = Proc::start(base.path());
                assert_eq!(
                    container.status().as_deref(),
                    Some("running"),
                    "killed in `{phase}`: {}",
                    agent.log_text()
                );
                assert!(leftovers(&state).is_empty(), "{:?}", leftovers(&state));
                // The id is usable again: created, then deleted through the API.
                let r = agent.call(
                    "POST",
                    "/v1/checkpoints",
                    Some(&json!({"backend": "runc", "container_id": id,
                                 "leave_running": true, "checkpoint_id": ck})),
                );
                assert_eq!(r.status, 202, "{}", r.body);
                let j = agent.wait_job(r.json()["id"].as_str().unwrap());
                assert_eq!(j["status"], "succeeded", "{j}");
                let d = agent.call("DELETE", &format!("/v1/checkpoints/{ck}"), None);
                assert_eq!(d.status, 204, "{}", d.body);
                break;
            }
            let j = agent.wait_job(&job);
            assert_eq!(j["status"], "succeeded", "{j}");
            agent.call("DELETE", &format!("/v1/checkpoints/{ck}"), None);
        }
        assert!(
            hit,
            "never caught a checkpoint in `{phase}` with the container paused"
        );
        assert_eq!(container.status().as_deref(), Some("running"));
    }
}

/// A token file others may read is refused at start with a clear error; owner-only,
/// the same agent starts.
#[test]
fn a_token_file_readable_by_others_is_refused_at_start() {
    env::require_root();
    let base = open_base();
    let token = base.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = [
        std::ffi::OsStr::new("--tcp-listen"),
        std::ffi::OsStr::new("127.0.0.1:0"),
        // The token is the plain-HTTP listener's credential (a TLS one uses certificates).
        std::ffi::OsStr::new("--tcp-insecure"),
        std::ffi::OsStr::new("--token-file"),
        token.as_os_str(),
    ];
    let (mut child, _, log) = spawn(base.path(), &args);
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "started with a 0644 token file: {text}");
    assert!(
        text.contains("readable by group or others (mode 0644)"),
        "{text}"
    );

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (child, socket, log) = spawn(base.path(), &args);
    let mut p = Proc { child, socket, log };
    eventually(30, "the agent to answer /healthz", || {
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!("agent exited ({st}): {}", p.log_text());
        }
        healthy(&p.socket)
    });
}
