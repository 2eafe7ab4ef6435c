//! Shared by the `agent_*` tests: an ms2m agent served in-process on a real Unix socket
//! (and optionally TCP with a token), and a small blocking HTTP/1.1 client.
//!
//! The agent is the library's own router and job registry, run on a private tokio
//! runtime; CRIU, runc, the registry and the network namespaces it drives are real.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ms2m_agent::api::{self, AppState, CancellationToken};
use ms2m_agent::config::{Config, FileConfig, Overrides};
use serde_json::Value;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The `error.code` of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// One request on a fresh connection. `headers` are sent as given; with a body and no
/// explicit content type, `application/json` is added.
pub fn http<S: Read + Write>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    // The server may answer (413) and close before reading a large body: a failed
    // write is fine as long as the answer arrives.
    let _ = s.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP answer to {method} {path}: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Resp {
        status,
        head: head.to_string(),
        body,
    }
}

#[derive(Default)]
pub struct AgentOptions {
    pub tcp: bool,
    /// Where the TCP listener binds (and that there is one); default with `tcp`: a free
    /// port on 127.0.0.1. Agents found through the API share one port, as DaemonSet pods
    /// do, so each needs its own loopback address.
    pub tcp_addr: Option<SocketAddr>,
    pub runc_root: Option<PathBuf>,
    pub kubelet: Option<(String, PathBuf, PathBuf, PathBuf)>,
    /// More settings (e.g. the image store); the harness's own paths win.
    pub overrides: Overrides,
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub token: String,
    pub config: Config,
    rt: Option<tokio::runtime::Runtime>,
    stop: CancellationToken,
    state: AppState,
}

impl Agent {
    pub fn start(opts: AgentOptions) -> Agent {
        ms2m_tests::env::require_root();
        let criu = ms2m_tests::env::criu();
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let mut o = Overrides {
            socket_path: Some(socket.clone()),
            state_dir: Some(dir.path().join("state")),
            allowed_rootfs_dirs: Some(vec![images]),
            criu_path: Some(criu.clone()),
            runc_root: opts.runc_root.clone(),
            ..opts.overrides.clone()
        };
        if let Some((url, token, ca, ckdir)) = &opts.kubelet {
            o.kubelet_url = Some(url.clone());
            o.kubelet_token_file = Some(token.clone());
            o.kubelet_ca_file = Some(ca.clone());
            o.kubelet_checkpoint_dir = Some(ckdir.clone());
        }
        // Every agent of a test process shares one token, as agents share one Secret.
        let token = format!("test-token-{}", std::process::id());
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        o.token_file = Some(token_file);
        let config = Config::merge(FileConfig::default(), &o).expect("agent config");
        for d in [
            config.checkpoints_dir(),
            config.bundles_dir(),
            config.work_dir(),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let criu_version = rt
            .block_on(ms2m_agent::criu_check::criu_version(&criu))
            .map(|v| v.to_string())
            .map_err(|e| e.to_string());
        let state = AppState::new(config.clone(), criu_version);
        let stop = CancellationToken::new();
        let (s2, st2, sock2) = (state.clone(), stop.clone(), socket.clone());
        rt.block_on(async {
            let l =
                ms2m_agent::listeners::bind_unix(&sock2, 0o660, None).expect("bind agent socket");
            tokio::spawn(api::serve_unix(l, s2, st2));
        });
        let tcp = if opts.tcp || opts.tcp_addr.is_some() {
            let (s3, st3, tok) = (state.clone(), stop.clone(), Arc::new(token.clone()));
            let addr = opts
                .tcp_addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            Some(rt.block_on(async {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .unwrap_or_else(|e| panic!("binding the agent's TCP listener on {addr}: {e}"));
                let a = l.local_addr().unwrap();
                tokio::spawn(api::serve_tcp(l, s3, tok, st3));
                a
            }))
        } else {
            None
        };
        Agent {
            dir,
            socket,
            tcp,
            token,
            config,
            rt: Some(rt),
            stop,
            state,
        }
    }

    /// Where restores may take a rootfs from.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.config.checkpoints_dir()
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.call_with(method, path, &[], body.map(str::as_bytes))
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let s = UnixStream::connect(&self.socket).expect("connect to the agent socket");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        http(s, method, path, headers, body)
    }

    pub fn call_tcp(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        let s = TcpStream::connect(self.tcp.expect("agent without TCP")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h = vec![];
        if let Some(a) = &auth {
            h.push(("Authorization", a.as_str()));
        }
        http(s, method, path, &h, body.map(str::as_bytes))
    }

    /// POST a job request, expect 202, and wait for the job to end.
    pub fn run_job(&self, path: &str, body: &Value) -> Value {
        let r = self.call("POST", path, Some(&body.to_string()));
        assert_eq!(r.status, 202, "POST {path} {body}: {} {}", r.status, r.body);
        let id = r.json()["id"].as_str().unwrap().to_string();
        self.wait_job(&id)
    }

    pub fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let j = self
                .call("GET", &format!("/v1/jobs/{id}?wait=30"), None)
                .json();
            let st = j["status"].as_str().unwrap_or("").to_string();
            if st != "running" && st != "queued" {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} still running: {j}");
        }
    }

    /// Jobs' shutdown as on SIGTERM (abort after `grace`).
    pub fn shutdown_jobs(&self, grace: Duration) {
        let jobs = self.state.jobs.clone();
        self.rt.as_ref().unwrap().block_on(jobs.shutdown(grace));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Waits until `f` returns Some, or panics with `what` after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cp -a src dst`.
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// The counting program: increments, records the value in /count, prints it.
pub const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /count; echo $i; sleep 0.1; done";

/// Numbers printed by a counter, in order.
pub fn numbers(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.trim().parse().ok()).collect()
}
