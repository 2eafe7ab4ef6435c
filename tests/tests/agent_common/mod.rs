//! Shared by the `agent_*` tests: an ms2m agent served in-process on a real Unix socket
//! (and optionally TCP with a token), called through the agent client
//! (`ms2m_api::client`, blocking wrapper in `ms2m_tests::agent_http`).
//!
//! The agent is the library's own router and job registry, run on a private tokio
//! runtime; CRIU, runc, the registry and the network namespaces it drives are real.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ms2m_agent::api::{self, AppState, CancellationToken};
use ms2m_agent::config::{Config, FileConfig, Overrides};
use serde_json::Value;

pub use ms2m_tests::agent_http::Resp;
use ms2m_tests::agent_http::{AgentAddr, AgentClient};

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
        let client = AgentClient::unix(&self.socket);
        ms2m_tests::agent_http::try_call(
            &client,
            method,
            path,
            headers,
            body.map(<[u8]>::to_vec),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn call_tcp(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        let client = AgentClient::new(AgentAddr::Tcp {
            base: format!("http://{}", self.tcp.expect("agent without TCP")),
            // Empty: no Authorization header at all.
            token: token.unwrap_or_default().to_owned(),
        });
        ms2m_tests::agent_http::try_call(
            &client,
            method,
            path,
            &[],
            body.map(|b| b.as_bytes().to_vec()),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
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
