//! Real node agents (`ms2m-agent serve`, one per node namespace) and the migrations
//! that go through them: the shim's standalone driver (`ms2m-shim migrate`), and a
//! stop-and-copy driven over the agents' HTTP API (the standalone driver only does
//! ShadowPod).
//!
//! Decisions:
//! - Each agent is a separate process started inside its node's network namespace, on
//!   its own Unix socket and state dir, with a TCP listener on the node address and a
//!   shared token (Direct mode), as a DaemonSet would run them. Both use the host's runc
//!   root: the harness starts the source container with plain `runc run`.
//! - The registry and broker are reached from the nodes through the cluster's services
//!   address (a relay to 127.0.0.1), so a push goes out of nodeA's namespace like on a
//!   real node; that address is not loopback, hence `insecure` plain HTTP.
//! - The pristine image rootfs (what the source bundle was made from) is copied aside
//!   before the source starts and is the one rootfs directory both agents allow.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use ms2m_api::{CheckpointRequest, PullRequest, PushRequest, RestoreRequest};
use serde_json::{Value, json};

use super::{HTTP_PORT, Migrated, Scenario, get_applied, u64_of, wait_state};
use crate::nodes::{Node, NodeId};
use crate::process::run;

/// Paths of the debug `ms2m-agent` and `ms2m-shim` binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub shim: PathBuf,
}

/// Builds (once per process) and returns the agent and shim binaries; `MS2M_AGENT_BIN`
/// and `MS2M_SHIM_BIN` name prebuilt ones instead (the benchmark uses release builds).
pub fn binaries() -> Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        if let (Some(agent), Some(shim)) = (
            std::env::var_os("MS2M_AGENT_BIN"),
            std::env::var_os("MS2M_SHIM_BIN"),
        ) {
            let b = Binaries {
                agent: agent.into(),
                shim: shim.into(),
            };
            for p in [&b.agent, &b.shim] {
                assert!(
                    p.is_file(),
                    "{} (MS2M_AGENT_BIN/MS2M_SHIM_BIN) is missing",
                    p.display()
                );
            }
            return b;
        }
        let root = super::workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo).current_dir(&root).args([
            "build",
            "--quiet",
            "-p",
            "ms2m-agent",
            "-p",
            "ms2m-shim",
        ]));
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let b = Binaries {
            agent: target_dir.join("debug/ms2m-agent"),
            shim: target_dir.join("debug/ms2m-shim"),
        };
        for p in [&b.agent, &b.shim] {
            assert!(p.is_file(), "{} missing after the build", p.display());
        }
        b
    })
    .clone()
}

/// One agent process in a node's network namespace.
pub struct NodeAgent {
    child: Child,
    pub socket: PathBuf,
    /// `http://<node addr>:9411` (bearer token).
    pub url: String,
    pub log: PathBuf,
}

impl NodeAgent {
    pub fn start(node: &Node, dir: &Path, allowed_rootfs: &Path, token_file: &Path) -> NodeAgent {
        let bins = binaries();
        std::fs::create_dir_all(dir).expect("agent dir");
        let socket = dir.join("agent.sock");
        let log = dir.join("agent.log");
        let listen = format!("{}:9411", node.addr());
        let logf = std::fs::File::create(&log).expect("agent log");
        let child = node
            .daemon_command(bins.agent.as_os_str())
            .arg("serve")
            .arg("--socket-path")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--allowed-rootfs-dir")
            .arg(allowed_rootfs)
            .arg("--criu-path")
            .arg(crate::env::criu())
            .args(["--tcp-listen", &listen])
            // Plain HTTP with the shared token: these scenarios test migration, not the
            // transport (agent_tls.rs covers mutual TLS on the real binaries).
            .arg("--tcp-insecure")
            .arg("--token-file")
            .arg(token_file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .expect("start ms2m-agent");
        let mut agent = NodeAgent {
            child,
            socket,
            url: format!("http://{listen}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = agent.try_call("GET", "/readyz", None) {
                break;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("ms2m-agent exited ({status}): {}", agent.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "ms2m-agent not ready after 30 s: {}",
                agent.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ms2m_api::client::AgentError> {
        let client = crate::agent_http::AgentClient::unix(&self.socket);
        let r = crate::agent_http::try_call(
            &client,
            method,
            path,
            &[],
            body.map(crate::agent_http::body),
            Duration::from_secs(330),
        )?;
        Ok((
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        ))
    }

    /// One API call; panics when the agent cannot be reached.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("agent {method} {path}: {e}"))
    }

    /// Starts a job (`POST path`), waits for its end; `Ok(result)` or `Err(job)`.
    pub fn job(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<Value, Value> {
        let body = serde_json::to_value(body).expect("request bodies serialize");
        let (status, job) = self.call("POST", path, Some(&body));
        assert_eq!(status, 202, "POST {path} {body}: {job}");
        let job = self.wait_job(job["id"].as_str().expect("job id"), timeout);
        if job["status"] == "succeeded" {
            Ok(job["result"].clone())
        } else {
            Err(job)
        }
    }

    /// Long-polls a job until it is terminal.
    pub fn wait_job(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, job) = self.call("GET", &format!("/v1/jobs/{id}?wait=10"), None);
            let st = job["status"].as_str().unwrap_or("");
            if !matches!(st, "queued" | "running") {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} still {st}: {job}");
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        // SIGTERM lets it drain; `nsenter` execs the agent, so the child is it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two agents of a scenario and where checkpoint images go.
pub struct Agents {
    pub a: NodeAgent,
    pub b: NodeAgent,
    /// Registry `host:port` as the nodes reach it.
    pub registry: String,
    pub token_file: PathBuf,
}

impl Agents {
    /// Starts one agent per node; `registry_port`: the loopback registry the nodes
    /// reach through the services address (default: the shared one).
    pub fn start(sc: &Scenario, registry_port: Option<u16>) -> Agents {
        let port = registry_port.unwrap_or_else(|| {
            let r = crate::env::registry();
            r.rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or_else(|| panic!("MS2M_TEST_REGISTRY {r:?} has no port"))
        });
        let registry = sc.cluster.forward(port, port).to_string();
        let dir = sc.tmp.path().join("agents");
        std::fs::create_dir_all(&dir).expect("agents dir");
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{}\n", crate::env::unique("tok-"))).unwrap();
        // Owner-only, as the agent demands of a token file.
        std::fs::set_permissions(
            &token_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let allowed = sc.rootfs_images();
        Agents {
            a: NodeAgent::start(
                sc.cluster.node(NodeId::A),
                &dir.join("a"),
                &allowed,
                &token_file,
            ),
            b: NodeAgent::start(
                sc.cluster.node(NodeId::B),
                &dir.join("b"),
                &allowed,
                &token_file,
            ),
            registry,
            token_file,
        }
    }
}

/// How the shim moves the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    Cutoff,
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Registry,
    Direct,
}

#[derive(Debug, Clone)]
pub struct ShimOptions {
    pub replay_mode: ReplayMode,
    pub transfer: Transfer,
    pub replay_cutoff_seconds: u64,
    pub phase_timeout_seconds: u64,
    /// `--rootfs`: the image rootfs on the target node (default: the recorded one).
    pub target_rootfs: Option<PathBuf>,
}

impl Default for ShimOptions {
    fn default() -> Self {
        ShimOptions {
            replay_mode: ReplayMode::Cutoff,
            transfer: Transfer::Registry,
            replay_cutoff_seconds: 30,
            phase_timeout_seconds: 120,
            target_rootfs: None,
        }
    }
}

/// Keeps a copy of the source's apply log while it lives (the driver kills it, and
/// the downtime needs its last applies).
struct ApplyRecorder {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(u64, u64)>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ApplyRecorder {
    fn start(addr: std::net::Ipv4Addr) -> ApplyRecorder {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let (s, l) = (Arc::clone(&stop), Arc::clone(&log));
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(v) = get_applied(addr, HTTP_PORT) {
                    *l.lock().unwrap() = v;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        ApplyRecorder {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// What one run of `ms2m-shim migrate` did.
pub struct ShimRun {
    pub succeeded: bool,
    /// The driver's `--json` report.
    pub report: Value,
    pub stderr: String,
    pub checkpoint_id: String,
    pub target_pod: Arc<crate::nodes::Pod>,
}

/// Runs the shim's standalone driver for `sc` (ShadowPod); `during` runs in parallel
/// with it (fault injection) and gets the source agent.
pub fn run_shim(
    sc: &mut Scenario,
    agents: &Agents,
    opts: &ShimOptions,
    during: impl FnOnce(&NodeAgent) + Send,
) -> ShimRun {
    let target_pod = sc.cluster.pod(NodeId::B, "dst");
    let checkpoint_id = crate::env::unique("ck-");
    let mut cmd = shim_command(sc, agents, opts, &checkpoint_id, &target_pod);
    let out = thread::scope(|s| {
        let child = cmd.spawn().expect("start ms2m-shim");
        s.spawn(|| during(&agents.a));
        child.wait_with_output().expect("wait for ms2m-shim")
    });
    shim_run(out, checkpoint_id, target_pod)
}

fn shim_run(
    out: std::process::Output,
    checkpoint_id: String,
    target_pod: Arc<crate::nodes::Pod>,
) -> ShimRun {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ms2m-shim printed no JSON report ({e}, {}): {}\n{stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        )
    });
    ShimRun {
        succeeded: out.status.success() && report["succeeded"] == true,
        report,
        stderr,
        checkpoint_id,
        target_pod,
    }
}

/// The `ms2m-shim migrate --json` command line for `sc`.
fn shim_command(
    sc: &Scenario,
    agents: &Agents,
    opts: &ShimOptions,
    checkpoint_id: &str,
    target_pod: &crate::nodes::Pod,
) -> Command {
    let bins = binaries();
    let source_id = sc.source.as_ref().expect("source running").id().to_string();
    let image = format!("{}/ms2m-e2e/{}:{checkpoint_id}", agents.registry, sc.queue);
    let mut cmd = Command::new(&bins.shim);
    cmd.arg("migrate")
        .arg("--source-agent")
        .arg(format!("unix:{}", agents.a.socket.display()))
        .arg("--target-agent")
        .arg(format!("unix:{}", agents.b.socket.display()))
        .args(["--container", &source_id])
        .args(["--target-container", &sc.target_name])
        .arg("--target-netns")
        .arg(target_pod.netns_path())
        .arg("--rootfs-image")
        .arg(sc.rootfs_image())
        .arg("--tcp-established")
        .args(["--broker-url", &sc.amqp_url])
        .args(["--queue", &sc.queue, "--exchange", &sc.exchange])
        .args(["--checkpoint-id", checkpoint_id])
        .args([
            "--source-prefetch",
            &sc.source_spec.behaviour.declared_prefetch().to_string(),
        ])
        .args([
            "--replay-mode",
            match opts.replay_mode {
                ReplayMode::Cutoff => "cutoff",
                ReplayMode::Drain => "drain",
            },
        ])
        .args([
            "--replay-cutoff-seconds",
            &opts.replay_cutoff_seconds.to_string(),
        ])
        .args([
            "--phase-timeout-seconds",
            &opts.phase_timeout_seconds.to_string(),
        ])
        .arg("--json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(r) = &opts.target_rootfs {
        cmd.arg("--rootfs").arg(r);
    }
    match opts.transfer {
        Transfer::Registry => {
            cmd.args([
                "--transfer",
                "registry",
                "--image",
                &image,
                "--insecure-registry",
            ]);
        }
        Transfer::Direct => {
            cmd.args(["--transfer", "direct", "--direct-target", &agents.b.url]);
        }
    }
    cmd
}

/// Runs the shim with `--state-file`, SIGKILLs it as soon as the state file records
/// `kill_in` (e.g. "Replaying"), then runs the same command again, which resumes from
/// the state file. Returns the second run, and the progress the first one left.
pub fn run_shim_killed_in(
    sc: &mut Scenario,
    agents: &Agents,
    opts: &ShimOptions,
    kill_in: &str,
) -> (ShimRun, Value) {
    let target_pod = sc.cluster.pod(NodeId::B, "dst");
    let checkpoint_id = crate::env::unique("ck-");
    let state_dir = std::env::temp_dir().join(crate::env::unique("ms2m-shim-state-"));
    std::fs::create_dir_all(&state_dir).expect("create the state file's directory");
    let state_file = state_dir.join("migration.json");
    let mut cmd = shim_command(sc, agents, opts, &checkpoint_id, &target_pod);
    cmd.arg("--state-file").arg(&state_file);
    let mut first = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ms2m-shim");
    let deadline = Instant::now() + Duration::from_secs(opts.phase_timeout_seconds * 5);
    let killed_at = loop {
        // The file is replaced by rename: every read sees one whole state.
        let state: Option<Value> = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(st) = state.filter(|st| st["progress"]["phase"] == kill_in) {
            first.kill().expect("SIGKILL ms2m-shim");
            let _ = first.wait();
            break st;
        }
        if let Some(status) = first.try_wait().expect("poll ms2m-shim") {
            let _ = std::fs::remove_dir_all(&state_dir);
            panic!("ms2m-shim ended ({status}) before the state file said {kill_in}");
        }
        if Instant::now() > deadline {
            let _ = first.kill();
            let _ = first.wait();
            let _ = std::fs::remove_dir_all(&state_dir);
            panic!("the state file never said {kill_in}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    // Same command, same state file: the second run resumes.
    let mut cmd = shim_command(sc, agents, opts, &checkpoint_id, &target_pod);
    cmd.arg("--state-file").arg(&state_file);
    let out = cmd.output().expect("run ms2m-shim again");
    let _ = std::fs::remove_dir_all(&state_dir);
    (shim_run(out, checkpoint_id, target_pod), killed_at)
}

/// [`migrate_with_shim`] with the shim SIGKILLed once in phase `kill_in` and restarted on
/// its state file; panics when the resumed driver does not complete. Also returns the
/// state the killed run left and the resumed run's `--json` report.
pub fn migrate_with_shim_killed_in(
    sc: &mut Scenario,
    agents: &Agents,
    opts: &ShimOptions,
    kill_in: &str,
) -> (Migrated, Value, Value) {
    let recorder = ApplyRecorder::start(sc.source_pod.addr());
    let (r, killed_at) = run_shim_killed_in(sc, agents, opts, kill_in);
    let resumed = r.report.clone();
    (
        finish_shim_migration(sc, agents, recorder, r),
        killed_at,
        resumed,
    )
}

/// The migration through the agents with the shim's standalone driver (ShadowPod);
/// panics when the driver does not complete.
pub fn migrate_with_shim(sc: &mut Scenario, agents: &Agents, opts: &ShimOptions) -> Migrated {
    let recorder = ApplyRecorder::start(sc.source_pod.addr());
    let r = run_shim(sc, agents, opts, |_| {});
    finish_shim_migration(sc, agents, recorder, r)
}

fn finish_shim_migration(
    sc: &mut Scenario,
    agents: &Agents,
    recorder: ApplyRecorder,
    r: ShimRun,
) -> Migrated {
    let source_applied = recorder.finish();
    assert!(
        r.succeeded,
        "the standalone driver did not complete: {}\n{}\n--- source agent ---\n{}\n--- target agent ---\n{}\n--- target container ---\n{}",
        r.report,
        r.stderr,
        tail(&agents.a.log_text()),
        tail(&agents.b.log_text()),
        tail(&container_logs(&sc.tmp.path().join("agents/b")))
    );
    // The driver removed the source container; keep what it applied.
    if let Some(src) = sc.source.take() {
        std::mem::forget(src);
    }
    sc.source_applied = source_applied;
    let target = crate::container::Container::adopt(&sc.target_name);
    let progress = &r.report["progress"];
    let phases = progress["phaseRecords"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["phase"].as_str().unwrap_or("?").to_lowercase(),
                        Duration::from_millis(t["durationMs"].as_u64().unwrap_or(0)),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let (checkpoint_bytes, transfer) = checkpoint_and_transfer(agents, progress);
    Migrated {
        target_pod: r.target_pod,
        target,
        phases,
        checkpoint_bytes,
        details: json!({
            "driver": "ms2m-shim migrate (standalone)",
            "target": sc.target_name,
            "transfer": transfer,
            "replay": progress["replay"],
        }),
    }
}

/// The checkpoint's size (from its job: the finished migration deleted the checkpoint
/// itself) and the transfer's figures.
fn checkpoint_and_transfer(agents: &Agents, progress: &Value) -> (u64, Value) {
    let bytes = progress["checkpointJob"]
        .as_str()
        .map(|id| agents.a.call("GET", &format!("/v1/jobs/{id}"), None).1)
        .and_then(|job| job["result"]["size_bytes"].as_u64())
        .unwrap_or(0);
    let transfer = progress["transferJob"]
        .as_str()
        .map(|id| agents.a.call("GET", &format!("/v1/jobs/{id}"), None).1)
        .map(|job| transfer_figures(&job))
        .unwrap_or(Value::Null);
    (bytes, transfer)
}

/// Bytes on the wire, duration and rate of a push or direct-send job.
fn transfer_figures(job: &Value) -> Value {
    let r = &job["result"];
    let wire = r["bytes_uploaded"]
        .as_u64()
        .or_else(|| r["bytes_sent"].as_u64())
        .or_else(|| job["bytes_done"].as_u64())
        .unwrap_or(0);
    let ms = job["duration_ms"].as_u64().unwrap_or(0);
    json!({
        "kind": job["kind"],
        "archive_bytes": r["archive_bytes"],
        "wire_bytes": wire,
        "ms": ms,
        "archive_mb_per_s": r["archive_bytes"].as_u64().filter(|_| ms > 0)
            .map(|b| (b as f64 / 1e6) / (ms as f64 / 1e3)),
    })
}

/// The output of the containers an agent started (`<bundle>/container.log` under its
/// state dir), for diagnosis.
fn container_logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "container.log") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Stop-and-copy through the agents' API (checkpoint that ends the source, push, pull,
/// restore, `END_REPLAY`): the baseline of the papers' comparison, on the same path.
pub fn migrate_stop_and_copy_via_agents(sc: &mut Scenario, agents: &Agents) -> Migrated {
    let recorder = ApplyRecorder::start(sc.source_pod.addr());
    let t = Duration::from_secs(300);
    let mut phases = Vec::new();
    let source_id = sc.source.as_ref().expect("source running").id().to_string();
    let ck = crate::env::unique("ck-");
    let image = format!("{}/ms2m-e2e/{}:{ck}", agents.registry, sc.queue);
    let fail = |what: &str, job: Value| -> ! {
        panic!(
            "{what} failed: {job}\n--- source agent ---\n{}\n--- target agent ---\n{}",
            tail(&agents.a.log_text()),
            tail(&agents.b.log_text())
        )
    };

    let started = Instant::now();
    agents
        .a
        .job(
            "/v1/checkpoints",
            &CheckpointRequest::Runc {
                container_id: source_id.clone(),
                leave_running: false,
                tcp_established: false,
                tcp_close: None,
                network_lock: None,
                checkpoint_id: Some(ck.clone()),
                rootfs_image: Some(sc.rootfs_image()),
            },
            t,
        )
        .unwrap_or_else(|j| fail("checkpoint", j));
    phases.push(("checkpointing".to_string(), started.elapsed()));
    // What CRIU left in the dead source's namespace: its lock rules would keep the
    // broker from seeing the connection close.
    let out = sc
        .source_pod
        .command("iptables-save")
        .output()
        .expect("run iptables-save in the source's namespace");
    assert!(
        out.status.success(),
        "iptables-save in the source's namespace failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8_lossy(&out.stdout).into_owned();
    let criu_rules_left = rules.contains(":CRIU");
    sc.source_applied = recorder.finish();
    // The dump ended the source.
    sc.source.take();

    let s = Instant::now();
    let push = agents
        .a
        .job(
            "/v1/pushes",
            &PushRequest {
                checkpoint_id: ck.clone(),
                image: image.clone(),
                insecure: true,
                ..Default::default()
            },
            t,
        )
        .unwrap_or_else(|j| fail("push", j));
    agents
        .b
        .job(
            "/v1/pulls",
            &PullRequest {
                image: image.clone(),
                checkpoint_id: Some(ck.clone()),
                insecure: true,
                ..Default::default()
            },
            t,
        )
        .unwrap_or_else(|j| fail("pull", j));
    let transfer_ms = s.elapsed();
    phases.push(("transferring".to_string(), transfer_ms));

    let s = Instant::now();
    let target_pod = sc.cluster.pod(NodeId::B, "dst");
    agents
        .b
        .job(
            "/v1/restores",
            &RestoreRequest {
                checkpoint_id: ck.clone(),
                container_id: sc.target_name.clone(),
                netns_path: Some(target_pod.netns_path()),
                tcp_established: true,
                tcp_close: Some(true),
                ..Default::default()
            },
            t,
        )
        .unwrap_or_else(|j| fail("restore", j));
    let target = crate::container::Container::adopt(&sc.target_name);
    wait_state(
        target_pod.addr(),
        HTTP_PORT,
        Duration::from_secs(60),
        "the restored target to await replay",
        |v| v["mode"] == "awaiting_replay" && u64_of(v, "connections") >= 1,
    );
    phases.push(("restoring".to_string(), s.elapsed()));

    let s = Instant::now();
    sc.broker.end_replay(&sc.target_name);
    wait_state(
        target_pod.addr(),
        HTTP_PORT,
        Duration::from_secs(60),
        "the target on the primary queue",
        |v| v["mode"] == "primary",
    );
    phases.push(("finalizing".to_string(), s.elapsed()));
    let (_, info) = agents.a.call("GET", &format!("/v1/checkpoints/{ck}"), None);
    let archive = push["archive_bytes"].as_u64().unwrap_or(0);
    Migrated {
        target_pod,
        target,
        phases,
        checkpoint_bytes: info["size_bytes"].as_u64().unwrap_or(0),
        details: json!({
            "driver": "harness over the agents' HTTP API (stop-and-copy)",
            "criu_rules_left_in_source_netns": criu_rules_left,
            "transfer": {
                "kind": "push+pull",
                "archive_bytes": archive,
                "wire_bytes": push["bytes_uploaded"],
                "ms": transfer_ms.as_millis() as u64,
                "archive_mb_per_s": (archive as f64 / 1e6) / transfer_ms.as_secs_f64().max(1e-3),
            },
        }),
    }
}
