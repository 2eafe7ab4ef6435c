//! End-to-end pieces around the reference service (`ms2m-sample-service`): its
//! static binaries, its container bundle, its `/state`, the producer and the
//! broker-side steps of a migration.
//!
//! The consumer runs as a runc container, so it must be a static binary. Only the
//! gnu target is installed, so it is built with `-C target-feature=+crt-static` and an
//! explicit `--target`: with `--target`, RUSTFLAGS reach only target artifacts, not
//! build scripts and proc-macros (which cannot be static), and the output lands in
//! `target/x86_64-unknown-linux-gnu/release`, apart from the ordinary debug build.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bundle::Bundle;
use crate::process::run;

pub mod accounting;
pub mod agents;
pub mod conformance;
pub mod nats;
mod scenario;
pub use accounting::Accounting;
pub use scenario::{
    Driver, GAP_ALLOWANCE_MS, HTTP_PORT, Migrated, Scenario, ScenarioReport, ScenarioSpec,
    Strategy, dir_size, longest_gap, migrate_by_hand, migrate_by_hand_with,
};

pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Paths of the static sample-service binaries.
#[derive(Debug, Clone)]
pub struct SampleBinaries {
    pub consumer: PathBuf,
    pub producer: PathBuf,
    pub control: PathBuf,
}

/// The ms2m workspace (this crate's parent), or `MS2M_WORKSPACE_DIR` when the harness
/// is compiled from elsewhere.
fn workspace_root() -> PathBuf {
    match std::env::var_os("MS2M_WORKSPACE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf(),
    }
}

/// Builds (once per test process) and returns the static binaries.
pub fn sample_binaries() -> SampleBinaries {
    static BINS: OnceLock<SampleBinaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .current_dir(&root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "ms2m-sample-service",
                "--target",
                STATIC_TARGET,
            ]));
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let dir = target_dir.join(STATIC_TARGET).join("release");
        let bins = SampleBinaries {
            consumer: dir.join("ms2m-sample-consumer"),
            producer: dir.join("ms2m-sample-producer"),
            control: dir.join("ms2m-sample-control"),
        };
        for b in [&bins.consumer, &bins.producer, &bins.control] {
            assert!(
                b.is_file(),
                "{} missing after the static build",
                b.display()
            );
        }
        bins
    })
    .clone()
}

/// An AMQP URL for `addr` with the credentials and vhost of `base` (the URL the
/// test runner exported, which points at 127.0.0.1).
pub fn amqp_url_at(base: &str, addr: SocketAddr) -> String {
    let rest = base.strip_prefix("amqp://").expect("amqp:// URL");
    let (auth, tail) = match rest.rsplit_once('@') {
        Some((a, t)) => (format!("{a}@"), t),
        None => (String::new(), rest),
    };
    let path = tail.find('/').map(|i| &tail[i..]).unwrap_or("/%2f");
    format!("amqp://{auth}{addr}{path}")
}

/// The port of an `amqp://` URL (5672 by default).
pub fn amqp_port(url: &str) -> u16 {
    let rest = url.strip_prefix("amqp://").expect("amqp:// URL");
    let hostport = rest.rsplit_once('@').map(|(_, t)| t).unwrap_or(rest);
    let hostport = hostport.split(['/', '?']).next().unwrap_or("");
    hostport
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5672)
}

/// Settings of one consumer container.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Pod name, written to the bundle's /etc/hostname (bind-mounted, as a runtime does).
    pub pod: String,
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub delay_ms: u64,
    pub ballast_mib: u64,
    pub http_port: u16,
    pub behaviour: ConsumerBehaviour,
}

/// Which reference consumer runs in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerKind {
    /// The static Rust sample (tests/sample-service).
    RustSample,
    /// tests/consumers/pika_consumer.py: Python + pika, never deduplicates. Runs on
    /// Debian's python3, bind-mounted read-only, with the pinned pika scripts/setup.sh
    /// installs ([`crate::env::pika_dir`]) copied into the rootfs.
    PythonPika,
}

/// How the consumer treats its broker: the reference behaviour (prefetch 1, skips
/// sequence numbers it applied, reconnects at once) or a typical third-party one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerBehaviour {
    pub kind: ConsumerKind,
    /// `basic.qos` prefetch; 0: unlimited.
    pub prefetch: u16,
    pub dedup: bool,
    pub reconnect_delay_ms: u64,
    /// Automatic acknowledgement (Python consumer only): the broker counts a delivery
    /// as done when it sends it.
    pub auto_ack: bool,
}

impl Default for ConsumerBehaviour {
    fn default() -> Self {
        Self {
            kind: ConsumerKind::RustSample,
            prefetch: 1,
            dedup: true,
            reconnect_delay_ms: 0,
            auto_ack: false,
        }
    }
}

impl ConsumerBehaviour {
    /// What the protocol issue tried: prefetch 50, no deduplication, 3 s before a
    /// reconnect.
    pub fn third_party() -> Self {
        Self {
            prefetch: 50,
            dedup: false,
            reconnect_delay_ms: 3000,
            ..Self::default()
        }
    }

    /// The Python + pika consumer: no deduplication, 3 s before a reconnect, manual ack
    /// with `prefetch` (0: unlimited) or automatic ack.
    pub fn python(prefetch: u16, auto_ack: bool) -> Self {
        Self {
            kind: ConsumerKind::PythonPika,
            prefetch,
            dedup: false,
            reconnect_delay_ms: 3000,
            auto_ack,
        }
    }

    /// The prefetch ms2m must be told (`--source-prefetch`): 0 when nothing bounds
    /// what the consumer holds (unlimited, or automatic ack).
    pub fn declared_prefetch(&self) -> u16 {
        if self.auto_ack { 0 } else { self.prefetch }
    }

    /// A short name for tables: `rust-dedup`, `py-p50`, `py-unlimited`, `py-autoack`.
    pub fn label(&self) -> String {
        match (self.kind, self.auto_ack, self.prefetch) {
            (ConsumerKind::RustSample, _, _) if self.dedup => "rust-dedup".into(),
            (ConsumerKind::RustSample, _, p) => format!("rust-nodedup-p{p}"),
            (ConsumerKind::PythonPika, true, _) => "py-autoack".into(),
            (ConsumerKind::PythonPika, false, 0) => "py-unlimited".into(),
            (ConsumerKind::PythonPika, false, p) => format!("py-p{p}"),
        }
    }
}

/// The Python reference consumer's script in this workspace.
pub fn pika_consumer_script() -> PathBuf {
    workspace_root().join("tests/consumers/pika_consumer.py")
}

/// A bundle running the consumer `spec` asks for as PID 1, in `netns`, with
/// `/etc/hostname` bind-mounted from a file holding `spec.pod`.
pub fn consumer_bundle(dir: &Path, spec: &ConsumerSpec, netns: &Path) -> Bundle {
    let bundle = match spec.behaviour.kind {
        ConsumerKind::RustSample => {
            let bins = sample_binaries();
            let bundle = Bundle::busybox(&dir.join("bundle"), &["/bin/ms2m-sample-consumer"]);
            bundle.add_file(&bins.consumer, "/bin/ms2m-sample-consumer");
            bundle
        }
        ConsumerKind::PythonPika => python_bundle(&dir.join("bundle")),
    };
    bundle.use_netns(netns);
    let hostname = dir.join("hostname");
    std::fs::write(&hostname, format!("{}\n", spec.pod)).unwrap();
    bundle.set_env(&[
        ("MS2M_AMQP_URL", &spec.amqp_url),
        ("MS2M_EXCHANGE", &spec.exchange),
        ("MS2M_QUEUE", &spec.queue),
        ("MS2M_DELAY_MS", &spec.delay_ms.to_string()),
        ("MS2M_BALLAST_MIB", &spec.ballast_mib.to_string()),
        ("MS2M_HTTP_PORT", &spec.http_port.to_string()),
        ("MS2M_PREFETCH", &spec.behaviour.prefetch.to_string()),
        ("MS2M_DEDUP", &spec.behaviour.dedup.to_string()),
        (
            "MS2M_RECONNECT_DELAY_MS",
            &spec.behaviour.reconnect_delay_ms.to_string(),
        ),
        (
            "MS2M_ACK",
            if spec.behaviour.auto_ack {
                "auto"
            } else {
                "manual"
            },
        ),
        ("RUST_LOG", "info"),
    ]);
    bundle.edit_config(|c| {
        c["hostname"] = json!(spec.pod);
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc/hostname",
            "type": "bind",
            "source": hostname,
            "options": ["bind", "ro"]
        }));
    });
    bundle
}

/// A busybox bundle running the pika consumer on the host's Debian python3: `/usr`
/// bind-mounted read-only (`/lib`, `/lib64` are links into it, as on merged-/usr
/// Debian), pika and the script copied into the rootfs (so the image rootfs the agents
/// restore from carries them). No byte-code is written: the rootfs stays as imaged.
fn python_bundle(dir: &Path) -> Bundle {
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.is_file(),
        "{} missing: install the Debian package python3 (scripts/setup.sh does)",
        python.display()
    );
    let pika = crate::env::pika_dir();
    let bundle = Bundle::busybox(dir, &["/usr/bin/python3", "-B", "/app/pika_consumer.py"]);
    let rootfs = bundle.rootfs();
    bundle.add_file(&pika_consumer_script(), "/app/pika_consumer.py");
    std::fs::create_dir_all(rootfs.join("opt")).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(pika.join("pika"))
        .arg(rootfs.join("opt/pika")));
    std::fs::create_dir_all(rootfs.join("usr")).unwrap();
    for link in ["lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{link}"), rootfs.join(link)).unwrap();
    }
    bundle.set_env(&[
        ("PYTHONPATH", "/opt"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
    ]);
    bundle.edit_config(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/usr",
            "type": "bind",
            "source": "/usr",
            "options": ["rbind", "ro"]
        }));
    });
    bundle
}

/// `GET http://addr:port/state` of a consumer; `None` while it does not answer.
pub fn get_state(addr: Ipv4Addr, port: u16) -> Option<Value> {
    http_get_json(addr, port, "/state")
}

/// `GET /applied`: `(seq, unix ms)` of the consumer's recent applies.
pub fn get_applied(addr: Ipv4Addr, port: u16) -> Option<Vec<(u64, u64)>> {
    serde_json::from_value(http_get_json(addr, port, "/applied")?).ok()
}

fn http_get_json(addr: Ipv4Addr, port: u16, path: &str) -> Option<Value> {
    let sock = SocketAddr::from((addr, port));
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// Polls `/state` until `pred` holds; panics with the last state and `what` after `timeout`.
pub fn wait_state(
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(v) = get_state(addr, port) {
            if pred(&v) {
                return v;
            }
            last = Some(v);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last /state of {addr}: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("/state has no integer {key:?}: {v}"))
}

/// The shape of the producer's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// One message every `1/rate` s.
    Steady,
    /// `burst` messages back to back, then `pause_ms` (the 10, then 1 s).
    Bursty { burst: u64, pause_ms: u64 },
}

impl Load {
    pub fn bursty() -> Load {
        Load::Bursty {
            burst: 10,
            pause_ms: 1000,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Load::Steady => "steady",
            Load::Bursty { .. } => "bursty",
        }
    }
}

/// A producer process publishing `{seq, value}` at `rate` for `count` messages.
pub struct Producer {
    child: Child,
}

impl Producer {
    pub fn start(amqp_url: &str, exchange: &str, queue: &str, rate: f64, count: u64) -> Producer {
        Producer::start_with(amqp_url, exchange, queue, rate, count, Load::Steady, None)
    }

    /// [`Producer::start`] with a load shape, writing `[[seq, unix_ms], …]` of every
    /// publish to `publish_log` when done.
    pub fn start_with(
        amqp_url: &str,
        exchange: &str,
        queue: &str,
        rate: f64,
        count: u64,
        load: Load,
        publish_log: Option<&Path>,
    ) -> Producer {
        let bins = sample_binaries();
        let mut cmd = Command::new(&bins.producer);
        cmd.args([
            "--amqp-url",
            amqp_url,
            "--exchange",
            exchange,
            "--queue",
            queue,
        ])
        .args(["--rate", &rate.to_string(), "--count", &count.to_string()]);
        if let Load::Bursty { burst, pause_ms } = load {
            cmd.args(["--burst", &burst.to_string()])
                .args(["--pause-ms", &pause_ms.to_string()]);
        }
        if let Some(p) = publish_log {
            cmd.arg("--publish-log").arg(p);
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start producer");
        Producer { child }
    }

    /// Waits for the end and returns its JSON summary.
    pub fn finish(mut self) -> Value {
        let out = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("spawn true"),
        )
        .wait_with_output()
        .expect("wait producer");
        assert!(
            out.status.success(),
            "producer failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "producer summary: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker-side steps of a migration, by hand, through `ms2m-sample-control`.
pub struct Broker {
    pub amqp_url: String,
}

impl Broker {
    fn control(&self, args: &[&str]) -> String {
        let bins = sample_binaries();
        crate::process::stdout(
            Command::new(&bins.control)
                .args(["--amqp-url", &self.amqp_url])
                .args(args),
        )
    }

    /// Declares and binds `<queue>.ms2m-replay`; returns its name.
    pub fn prepare_replay(&self, exchange: &str, queue: &str) -> String {
        self.control(&["prepare-replay", "--exchange", exchange, "--queue", queue])
    }

    pub fn start_replay(&self, pod: &str, replay_queue: &str) {
        self.control(&["start-replay", "--pod", pod, "--replay-queue", replay_queue]);
    }

    pub fn end_replay(&self, pod: &str) {
        self.control(&["end-replay", "--pod", pod]);
    }

    pub fn depth(&self, queue: &str) -> u64 {
        self.control(&["depth", "--queue", queue])
            .parse()
            .expect("depth")
    }

    /// Waits until the source has applied everything published before the replay
    /// queue was bound — the precondition of an exact target state
    /// (docs/sample-service.md). With prefetch 1, ack-after-apply and FIFO delivery,
    /// "the primary queue has fewer ready messages than the replay queue" proves the
    /// source already took a post-binding message, hence acked every earlier one.
    pub fn wait_pre_binding_backlog_applied(&self, primary: &str, replay: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.depth(primary) >= self.depth(replay) {
            assert!(
                Instant::now() < deadline,
                "the source never worked off the backlog published before the binding"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `queue` exists (a passive declare succeeds).
    pub fn queue_exists(&self, queue: &str) -> bool {
        let bins = sample_binaries();
        Command::new(&bins.control)
            .args(["--amqp-url", &self.amqp_url, "depth", "--queue", queue])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn delete_queue(&self, queue: &str) {
        self.control(&["delete-queue", "--queue", queue]);
    }
}

/// Queues and exchanges a test declared, deleted on drop so runs don't accumulate
/// them in the shared broker.
pub struct QueueCleanup {
    pub broker: Broker,
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Drop for QueueCleanup {
    fn drop(&mut self) {
        if self.broker.amqp_url.starts_with("nats://") {
            let control: Vec<String> = self
                .queues
                .iter()
                .filter(|q| q.starts_with("ms2m.control."))
                .cloned()
                .collect();
            return nats::cleanup(&self.broker.amqp_url, &control, &self.exchanges);
        }
        let bins = sample_binaries();
        let targets = self
            .queues
            .iter()
            .map(|q| ("delete-queue", "--queue", q))
            .chain(
                self.exchanges
                    .iter()
                    .map(|e| ("delete-exchange", "--exchange", e)),
            );
        for (cmd, flag, name) in targets {
            let _ = Command::new(&bins.control)
                .args(["--amqp-url", &self.broker.amqp_url, cmd, flag, name])
                .output();
        }
    }
}

/// `Container::restore`, but a failure also shows the end of CRIU's restore.log,
/// which says why (runc only says "criu failed").
pub fn restore_with_log(
    bundle: &Bundle,
    id: &str,
    images: &Path,
    work: &Path,
    extra: &[&str],
) -> crate::container::Container {
    match std::panic::catch_unwind(|| {
        crate::container::Container::restore(bundle, id, images, work, extra)
    }) {
        Ok(c) => c,
        Err(e) => {
            let log = std::fs::read_to_string(work.join("restore.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{msg}\n--- end of {}/restore.log ---\n{}",
                work.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// CRIU options for this bundle's checkpoints and restores: runc reads a CRIU config
/// file named by the `org.criu.config` annotation (one long option per line, no dashes).
pub fn criu_config(bundle: &Bundle, options: &[&str]) {
    let conf = bundle.dir().join("criu.conf");
    std::fs::write(&conf, options.join("\n") + "\n").unwrap();
    bundle.edit_config(|c| {
        if !c["annotations"].is_object() {
            c["annotations"] = json!({});
        }
        c["annotations"]["org.criu.config"] = json!(conf);
    });
}

/// For a bundle that is *restored* into a pod with a new IP: established connections
/// come back closed (`tcp-close`). CRIU cannot re-bind a socket to the old pod's address
/// ("Can't bind inet socket back: Cannot assign requested address"); the service
/// reconnects, as after any Kubernetes migration.
pub fn criu_tcp_close(bundle: &Bundle) {
    criu_config(bundle, &["tcp-close"]);
}

/// For a source that a plain (stop-and-copy) checkpoint ends: connections are not
/// dumped (`tcp-close`) and the network is not locked (`network-lock skip`). CRIU
/// otherwise leaves its iptables DROP rules in the pod netns after killing the task, the
/// broker never sees the connection close, and the source's unacked message stays
/// unacked until the heartbeat timeout — later than the target's catch-up, so the
/// target skips it as an old sequence number: one message lost for the target.
pub fn criu_stop_and_copy_source(bundle: &Bundle) {
    criu_config(bundle, &["tcp-close", "network-lock skip"]);
}
