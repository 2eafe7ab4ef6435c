//! The kubelet checkpoint backend against a local HTTPS endpoint that does what the
//! kubelet's `POST /checkpoint/{ns}/{pod}/{container}` does: checks the bearer token,
//! runs a real runc + CRIU checkpoint (leave-running), writes the archive as
//! `checkpoint-<pod>_<ns>-<container>-<timestamp>.tar` in its checkpoint directory and
//! answers `{"items": [path]}`; 401 without the token, 404 for an unknown container,
//! 500 when the checkpoint fails.

mod agent_common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use agent_common::{Agent, AgentOptions, copy_tree};
use ms2m_agent::config::Overrides;
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::env;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

struct FakeKubelet {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    requests: Arc<Mutex<Vec<String>>>,
}

struct KubeletState {
    token: String,
    checkpoint_dir: PathBuf,
    /// (namespace, pod, container) → runc container id.
    containers: HashMap<(String, String, String), String>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn respond(s: &mut impl Write, status: u16, reason: &str, ctype: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.flush();
}

/// What the kubelet (through CRI-O) does for one checkpoint request.
fn checkpoint(
    st: &KubeletState,
    ns: &str,
    pod: &str,
    container: &str,
    runc_id: &str,
) -> Result<PathBuf, String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new("runc")
        .arg("--criu")
        .arg(env::criu())
        .args(["checkpoint", "--leave-running", "--image-path"])
        .arg(work.path().join("checkpoint"))
        .arg("--work-path")
        .arg(work.path())
        .arg(runc_id)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "runc checkpoint: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let state: serde_json::Value = serde_json::from_slice(
        &Command::new("runc")
            .args(["state", runc_id])
            .output()
            .map_err(|e| e.to_string())?
            .stdout,
    )
    .map_err(|e| e.to_string())?;
    let bundle = PathBuf::from(state["bundle"].as_str().unwrap_or_default());
    std::fs::copy(bundle.join("config.json"), work.path().join("spec.dump"))
        .map_err(|e| e.to_string())?;
    std::fs::write(
        work.path().join("config.dump"),
        json!({"id": runc_id, "name": container, "rootfsImageName": "docker.io/library/busybox:latest",
               "runtime": "runc", "createdTime": "2026-11-29T00:00:00Z"})
        .to_string(),
    )
    .map_err(|e| e.to_string())?;
    let stamp = humantime_stamp();
    let tar = st
        .checkpoint_dir
        .join(format!("checkpoint-{pod}_{ns}-{container}-{stamp}.tar"));
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(work.path())
        .arg(".")
        .status()
        .map_err(|e| e.to_string())?;
    if !ok.success() {
        return Err("tar failed".into());
    }
    Ok(tar)
}

fn humantime_stamp() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn serve_one(st: &KubeletState, tls: Arc<rustls::ServerConfig>, tcp: TcpStream) {
    let Ok(conn) = rustls::ServerConnection::new(tls) else {
        return;
    };
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    st.requests
        .lock()
        .unwrap()
        .push(format!("{method} {target}"));
    let auth = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("authorization")
            .then(|| v.trim().to_string())
    });
    if auth.as_deref() != Some(&format!("Bearer {}", st.token)) {
        return respond(&mut s, 401, "Unauthorized", "text/plain", "Unauthorized");
    }
    let path = target.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if method != "POST" || parts.len() != 4 || parts[0] != "checkpoint" {
        return respond(&mut s, 404, "Not Found", "text/plain", "404 page not found");
    }
    let key = (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    );
    let Some(runc_id) = st.containers.get(&key) else {
        return respond(
            &mut s,
            404,
            "Not Found",
            "text/plain",
            &format!(
                "container \"{}\" not found in pod \"{}/{}\"",
                parts[3], parts[1], parts[2]
            ),
        );
    };
    if runc_id == "HOSTILE" {
        // A compromised node or runtime: the archive tries to write outside its directory.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.dump"), "{}").unwrap();
        std::fs::write(d.path().join("escape"), "pwned").unwrap();
        let tar = st.checkpoint_dir.join(format!(
            "checkpoint-{}_{}-{}-x.tar",
            parts[2], parts[1], parts[3]
        ));
        let ok = Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-P")
            .arg("-C")
            .arg(d.path())
            .args([
                "--transform",
                "s,^escape,../escape,",
                "config.dump",
                "escape",
            ])
            .status()
            .unwrap();
        assert!(ok.success());
        return respond(
            &mut s,
            200,
            "OK",
            "application/json",
            &json!({"items": [tar]}).to_string(),
        );
    }
    match checkpoint(st, parts[1], parts[2], parts[3], runc_id) {
        Ok(tar) => respond(
            &mut s,
            200,
            "OK",
            "application/json",
            &json!({"items": [tar]}).to_string(),
        ),
        Err(e) => respond(
            &mut s,
            500,
            "Internal Server Error",
            "text/plain",
            &format!("checkpointing container: {e}"),
        ),
    }
}

impl FakeKubelet {
    fn start(cert: &Path, key: &Path, st: KubeletState) -> FakeKubelet {
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let tls = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = st.requests.clone();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    serve_one(&st, tls.clone(), c);
                }
            }
        });
        FakeKubelet {
            addr,
            stop,
            thread: Some(thread),
            requests,
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn kubelet_backend_checkpoints_through_the_kubelet_api() {
    let work = tempfile::tempdir().unwrap();
    let tls = ms2m_tests::transfer::tls_material(work.path());
    let kubelet_dir = work.path().join("kubelet-checkpoints");
    std::fs::create_dir_all(&kubelet_dir).unwrap();
    let token_file = work.path().join("sa-token");
    std::fs::write(&token_file, "sa-token-value\n").unwrap();

    let b = Bundle::busybox(&work.path().join("b"), &["sh", "-c", agent_common::COUNTER]);
    let image = work.path().join("pristine");
    copy_tree(&b.rootfs(), &image);
    let runc_id = env::unique("ms2m-agkub");
    let c = Container::run(&b, &runc_id);

    let mut containers = HashMap::new();
    containers.insert(
        ("default".into(), "counter-0".into(), "counter".into()),
        runc_id.clone(),
    );
    containers.insert(
        ("default".into(), "ghost-0".into(), "ghost".into()),
        env::unique("ms2m-ghost"),
    );
    containers.insert(
        ("default".into(), "evil-0".into(), "evil".into()),
        "HOSTILE".into(),
    );
    let kubelet = FakeKubelet::start(
        &tls.cert,
        &tls.key,
        KubeletState {
            token: "sa-token-value".into(),
            checkpoint_dir: kubelet_dir.clone(),
            containers,
            requests: Arc::default(),
        },
    );
    let agent = Agent::start(AgentOptions {
        kubelet: Some((
            format!("https://127.0.0.1:{}", kubelet.addr.port()),
            token_file.clone(),
            tls.ca.clone(),
            kubelet_dir.clone(),
        )),
        ..Default::default()
    });

    // The counter has counted a few before the checkpoint: a restored copy that
    // started over would print numbers below this.
    let counted_before = agent_common::eventually(30, "the source counter to reach 3", || {
        let n: u64 = std::fs::read_to_string(b.rootfs().join("count"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (n >= 3).then_some(n)
    });

    // Success: the archive is taken from the kubelet's directory into the store.
    let done = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "kubelet", "namespace": "default", "pod": "counter-0", "container": "counter",
                "timeout_seconds": 30, "checkpoint_id": "kube-ck"}),
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["backend"], "kubelet");
    assert!(done["bytes_done"].as_u64().unwrap() > 0);
    let reqs = kubelet.requests.lock().unwrap().clone();
    assert_eq!(
        reqs,
        vec!["POST /checkpoint/default/counter-0/counter?timeout=30".to_string()]
    );
    let dir = agent.checkpoints_dir().join("kube-ck");
    for f in [
        "config.dump",
        "spec.dump",
        "checkpoint/pstree.img",
        "checkpoint/pages-1.img",
        "dump.log",
    ] {
        assert!(
            dir.join(f).is_file(),
            "{f} missing from the stored checkpoint"
        );
    }
    assert_eq!(
        std::fs::read_dir(&kubelet_dir).unwrap().count(),
        0,
        "the kubelet's archive was left behind"
    );
    assert_eq!(c.status().as_deref(), Some("running"));
    let info = agent.call("GET", "/v1/checkpoints/kube-ck", None).json();
    assert_eq!(info["container"]["name"], "counter", "{info}");
    assert_eq!(info["image"], "docker.io/library/busybox:latest");
    assert_eq!(info["processes"][0]["comm"], "sh", "{info}");

    // The same restore path serves this backend's checkpoints.
    let rootfs = agent.images_dir().join("busybox");
    copy_tree(&image, &rootfs);
    let new_id = env::unique("ms2m-agkubr");
    let r = agent.run_job(
        "/v1/restores",
        &json!({"checkpoint_id": "kube-ck", "container_id": new_id, "rootfs": rootfs}),
    );
    let restored = Container::adopt(&new_id);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(restored.status().as_deref(), Some("running"));
    // Running is not enough: the restored process continues the count it was
    // checkpointed with.
    let bundle = agent.config.bundles_dir().join(&new_id);
    let log = agent_common::eventually(10, "the restored counter to print", || {
        let l = std::fs::read_to_string(bundle.join("container.log")).ok()?;
        (agent_common::numbers(&l).len() >= 3).then_some(l)
    });
    let got = agent_common::numbers(&log);
    assert!(
        got[0] >= counted_before,
        "the restored counter started at {} although the source had counted to {counted_before} before the checkpoint: {log}",
        got[0]
    );
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "not consecutive: {got:?}"
    );

    // 404: unknown container → the job fails with container_not_found.
    let nf = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "kubelet", "namespace": "default", "pod": "nosuch-0", "container": "app"}),
    );
    assert_eq!(nf["status"], "failed", "{nf}");
    assert_eq!(nf["error"]["code"], "container_not_found", "{nf}");

    // 500: the kubelet's checkpoint fails (runc has no such container).
    let e = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "kubelet", "namespace": "default", "pod": "ghost-0", "container": "ghost"}),
    );
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["error"]["code"], "kubelet_error", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("500"),
        "{e}"
    );

    // A hostile archive is refused, naming the entry; nothing escapes the store.
    let h = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "kubelet", "namespace": "default", "pod": "evil-0", "container": "evil"}),
    );
    assert_eq!(h["status"], "failed", "{h}");
    assert_eq!(h["error"]["code"], "invalid_archive", "{h}");
    assert!(
        h["error"]["message"].as_str().unwrap().contains("escape"),
        "{h}"
    );
    assert!(!agent.checkpoints_dir().join("escape").exists());
    assert!(
        !agent
            .checkpoints_dir()
            .parent()
            .unwrap()
            .join("escape")
            .exists()
    );

    // 401: wrong ServiceAccount token.
    std::fs::write(&token_file, "stale-token").unwrap();
    let u = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "kubelet", "namespace": "default", "pod": "counter-0", "container": "counter"}),
    );
    assert_eq!(u["status"], "failed", "{u}");
    assert_eq!(u["error"]["code"], "kubelet_error", "{u}");
    assert!(
        u["error"]["message"].as_str().unwrap().contains("401"),
        "{u}"
    );
    let names: Vec<_> = std::fs::read_dir(agent.checkpoints_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "failed checkpoints left files: {names:?}");

    // kubeadm's self-signed kubelet certificates name the node, not its IP: with
    // tls_server_name the agent still connects to the URL's IP but checks the name. The
    // stand-in's certificate names `localhost`; a 404 proves the handshake passed.
    std::fs::write(&token_file, "sa-token-value\n").unwrap();
    let named = |name: &str| {
        let a = Agent::start(AgentOptions {
            kubelet: Some((
                format!("https://127.0.0.1:{}", kubelet.addr.port()),
                token_file.clone(),
                tls.ca.clone(),
                kubelet_dir.clone(),
            )),
            overrides: Overrides {
                kubelet_tls_server_name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        });
        a.run_job(
            "/v1/checkpoints",
            &json!({"backend": "kubelet", "namespace": "default", "pod": "nosuch-0", "container": "app"}),
        )
    };
    let ok = named("localhost");
    assert_eq!(ok["error"]["code"], "container_not_found", "{ok}");
    let wrong = named("node-a");
    assert_eq!(wrong["error"]["code"], "kubelet_error", "{wrong}");
    assert!(
        wrong["error"]["message"]
            .as_str()
            .unwrap()
            .contains("node-a"),
        "{wrong}"
    );
}

/// Kubernetes names are DNS-1123 before anything is sent (issue 13): a namespace `..`
/// would be normalised into another kubelet route, called with the agent's
/// service-account token. Every such name is a 400 naming the rule, and the kubelet
/// sees no request at all.
#[test]
fn names_that_are_not_dns_1123_never_reach_the_kubelet() {
    let work = tempfile::tempdir().unwrap();
    let tls = ms2m_tests::transfer::tls_material(work.path());
    let kubelet_dir = work.path().join("kubelet-checkpoints");
    std::fs::create_dir_all(&kubelet_dir).unwrap();
    let token_file = work.path().join("sa-token");
    std::fs::write(&token_file, "sa-token-value\n").unwrap();
    let kubelet = FakeKubelet::start(
        &tls.cert,
        &tls.key,
        KubeletState {
            token: "sa-token-value".into(),
            checkpoint_dir: kubelet_dir.clone(),
            containers: HashMap::new(),
            requests: Arc::default(),
        },
    );
    let agent = Agent::start(AgentOptions {
        kubelet: Some((
            format!("https://127.0.0.1:{}", kubelet.addr.port()),
            token_file,
            tls.ca.clone(),
            kubelet_dir,
        )),
        ..Default::default()
    });
    for (ns, pod, container) in [
        ("..", "p", "c"),
        (".", "p", "c"),
        ("default", "..", "c"),
        ("default", "a..b", "c"),
        ("default", "p", ".."),
        ("kube.system", "p", "c"),
        ("-x", "p", "c"),
        ("Default", "p", "c"),
        ("default", "p", "c-"),
    ] {
        let body = json!({"backend": "kubelet", "namespace": ns, "pod": pod,
                          "container": container, "timeout_seconds": 5});
        let r = agent.call("POST", "/v1/checkpoints", Some(&body.to_string()));
        assert_eq!(r.status, 400, "{body}: {} {}", r.status, r.body);
        assert_eq!(r.code(), "invalid_request", "{}", r.body);
        assert!(r.body.contains("DNS-1123"), "{}", r.body);
    }
    assert!(
        kubelet.requests.lock().unwrap().is_empty(),
        "{:?}",
        kubelet.requests.lock().unwrap()
    );
}
