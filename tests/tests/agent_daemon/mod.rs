//! Shared by the hardening tests: the real `ms2m-agent serve` binary as a child process,
//! configured by a TOML file, with a raw HTTP/1.1 client for its socket and TCP port.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// One request on `s` (`Connection: close`), the answer read to its end.
pub fn http<S: Read + Write>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
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
    // A refusal may come before the body is read: the answer is what counts.
    let _ = s.write_all(&bytes);
    let mut raw = Vec::new();
    let r = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return Err(r.err().unwrap_or_else(|| {
            std::io::Error::other(format!("malformed answer to {method} {path}: {text:?}"))
        }));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(Resp { status, body })
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

/// A free loopback port (bound and released: the agent binds it right after).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Raise this process's soft fd limit to the hard one; returns it.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}

pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub log: PathBuf,
}

#[derive(Default)]
pub struct DaemonOptions<'a> {
    /// Lines of the agent's TOML config (the harness adds paths).
    pub config: &'a str,
    /// Serve TCP on this address.
    pub tcp: Option<SocketAddr>,
    pub args: Vec<String>,
    /// Soft and hard RLIMIT_NOFILE of the agent.
    pub nofile: Option<u64>,
}

impl Daemon {
    pub fn start(o: DaemonOptions<'_>) -> Daemon {
        ms2m_tests::env::require_root();
        let bin = ms2m_tests::e2e::agents::binaries().agent;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let log = dir.path().join("agent.log");
        let cfg = dir.path().join("agent.toml");
        std::fs::write(&cfg, o.config).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "hardening-token\n").unwrap();
        // The agent refuses a token file others may read.
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--allowed-rootfs-dir")
            .arg(dir.path().join("images"))
            .arg("--criu-path")
            .arg(ms2m_tests::env::criu())
            .arg("--token-file")
            .arg(&token)
            .args(&o.args)
            .env("MS2M_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        if let Some(a) = o.tcp {
            cmd.arg("--tcp-listen").arg(a.to_string());
        }
        if let Some(n) = o.nofile {
            // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe
            // and touches no memory the parent's other threads could hold locked.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd.spawn().expect("start ms2m-agent");
        let mut d = Daemon {
            child,
            dir,
            socket,
            tcp: o.tcp,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = d.try_call("GET", "/readyz", &[], None)
                && r.status == 200
            {
                break;
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("ms2m-agent exited ({st}): {}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "ms2m-agent not ready: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Resp> {
        let s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        http(s, method, path, headers, body)
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let b = body.map(|b| b.to_string());
        self.try_call(method, path, &[], b.as_deref().map(str::as_bytes))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn call_tcp(&self, method: &str, path: &str) -> std::io::Result<Resp> {
        let s = TcpStream::connect(self.tcp.expect("agent without TCP"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        http(
            s,
            method,
            path,
            &[("Authorization", "Bearer hardening-token")],
            None,
        )
    }

    /// Waits for a job to end; its final view.
    pub fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let j = self
                .call("GET", &format!("/v1/jobs/{id}?wait=30"), None)
                .json();
            let st = j["status"].as_str().unwrap_or("");
            if st != "running" && st != "queued" {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} still running: {j}");
        }
    }

    /// Names of the files and directories in `dir`.
    pub fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
