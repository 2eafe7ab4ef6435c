//! Harness for the transfer-engine tests: private docker-registry instances (htpasswd,
//! token auth, TLS, killable), a token server signing with the openssl CLI, and
//! synthetic checkpoints that do not deduplicate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::env::tool;
use crate::process::run;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// A `docker-registry serve` of our own, on a free loopback port, with its own storage.
pub struct PrivateRegistry {
    pub addr: String,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    tls: bool,
}

impl PrivateRegistry {
    /// `extra` is YAML appended to the config (e.g. an `auth:` section); `tls` gives
    /// (certificate, key) for an HTTPS listener.
    pub fn start(extra: &str, tls: Option<(&Path, &Path)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut http = format!("http:\n  addr: {addr}\n");
        if let Some((cert, key)) = tls {
            http.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{http}{extra}",
                storage.display()
            ),
        )
        .unwrap();
        let mut r = Self {
            addr,
            dir,
            config,
            child: None,
            tls: tls.is_some(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let child = Command::new(tool("docker-registry", "docker-registry"))
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {} within 20 s: {}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crashed node would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Same port, same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Repository tags as the registry lists them (empty when the repo is unknown).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "GET /v2/{repo}/tags/list HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it.
pub struct TlsMaterial {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn tls_material(dir: &Path) -> TlsMaterial {
    let openssl = tool("openssl", "openssl");
    let p = |n: &str| dir.join(n);
    run(Command::new(&openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ms2m test CA",
        ])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new(&openssl)
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.pem")));
    TlsMaterial {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
    }
}

/// An htpasswd file (bcrypt, as the registry requires) with one user.
pub fn htpasswd(dir: &Path, user: &str, pass: &str) -> PathBuf {
    let out = run(Command::new(tool("htpasswd", "apache2-utils")).args(["-Bbn", user, pass]));
    let p = dir.join("htpasswd");
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

fn b64url(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..(c.len() + 1) {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn b64std(data: &[u8]) -> String {
    let s = b64url(data).replace('-', "+").replace('_', "/");
    let pad = (4 - s.len() % 4) % 4;
    s + &"=".repeat(pad)
}

/// A token server for the registry's `auth: token:` mode: checks HTTP Basic
/// credentials and answers `{"token": <RS256 JWT>}` whose `x5c` is a self-signed
/// certificate that the registry trusts through `rootcertbundle`. Signing uses the
/// openssl CLI, one process per token.
pub struct TokenServer {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub cert: PathBuf,
    /// Requests served, successful or not.
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    pub fn start(dir: &Path, user: &str, pass: &str) -> Self {
        let openssl = tool("openssl", "openssl");
        let key = dir.join("token.key");
        let cert = dir.join("token.pem");
        run(Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=ms2m token issuer",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = run(Command::new(&openssl)
            .args(["x509", "-outform", "DER"])
            .arg("-in")
            .arg(&cert))
        .stdout;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let service = "ms2m-test-registry".to_string();
        let issuer = "ms2m-test-issuer".to_string();
        let expected = format!("Basic {}", b64std(format!("{user}:{pass}").as_bytes()));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (svc, iss, count) = (service.clone(), issuer.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut auth = String::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        auth = v.trim().to_string();
                    }
                }
                if auth != expected {
                    let _ = conn.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                let scope = target
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(|s| {
                        s.replace("%3A", ":")
                            .replace("%2F", "/")
                            .replace("%2C", ",")
                    })
                    .unwrap_or_default();
                let access = scope
                    .split_once(':')
                    .and_then(|(t, rest)| rest.rsplit_once(':').map(|(name, acts)| (t, name, acts)))
                    .map(|(t, name, acts)| serde_json::json!([{"type": t, "name": name, "actions": acts.split(',').collect::<Vec<_>>()}]))
                    .unwrap_or_else(|| serde_json::json!([]));
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header =
                    serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [b64std(&der)]});
                let claims = serde_json::json!({"iss": iss, "sub": "tester", "aud": svc, "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", count.load(std::sync::atomic::Ordering::Relaxed)), "access": access});
                let signing_input = format!(
                    "{}.{}",
                    b64url(header.to_string().as_bytes()),
                    b64url(claims.to_string().as_bytes())
                );
                let mut child = Command::new(&openssl)
                    .args(["dgst", "-sha256", "-sign"])
                    .arg(&key)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(signing_input.as_bytes())
                    .unwrap();
                let sig = child.wait_with_output().unwrap().stdout;
                let body = serde_json::json!({"token": format!("{signing_input}.{}", b64url(&sig)), "expires_in": 600}).to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            realm,
            service,
            issuer,
            cert,
            requests,
        }
    }

    /// The registry config section that trusts this server.
    pub fn registry_auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            self.realm,
            self.service,
            self.issuer,
            self.cert.display()
        )
    }
}

/// Writes a synthetic checkpoint directory in the CRI-O layout: metadata files naming
/// container `name`, and `checkpoint/pages-1.img` of `size` bytes made of alternating
/// 64 KiB random and 64 KiB zero blocks (zstd ratio ≈ 0.5, like a real heap), with a
/// fresh random seed so no two runs deduplicate.
pub fn synthetic_checkpoint(dir: &Path, name: &str, size: u64) {
    std::fs::create_dir_all(dir.join("checkpoint")).unwrap();
    std::fs::write(
        dir.join("config.dump"),
        serde_json::json!({"id": format!("{name}-id"), "name": name, "rootfsImage": "docker.io/library/busybox:latest", "rootfsImageName": "docker.io/library/busybox:latest", "runtime": "runc", "createdTime": "2026-11-28T00:00:00Z"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("spec.dump"),
        serde_json::json!({"ociVersion": "1.0.2", "annotations": {"io.container.manager": "cri-o", "io.kubernetes.cri.container-name": name, "io.kubernetes.pod.name": format!("{name}-pod"), "io.kubernetes.pod.namespace": "default"}}).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("checkpoint/inventory.img"), b"synthetic inventory").unwrap();
    std::fs::write(dir.join("checkpoint/core-1.img"), vec![7u8; 4096]).unwrap();
    std::fs::write(dir.join("dump.log"), "Version: 4.2.1\n").unwrap();
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(dir.join("checkpoint/pages-1.img")).unwrap(),
    );
    // The kernel's generator: fast even in an unoptimised test build.
    let mut rng = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    let mut block = vec![0u8; 64 * 1024];
    let zeros = vec![0u8; 64 * 1024];
    let mut left = size;
    let mut random = true;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        if random {
            rng.read_exact(&mut block[..n]).unwrap();
            f.write_all(&block[..n]).unwrap();
        } else {
            f.write_all(&zeros[..n]).unwrap();
        }
        random = !random;
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Every regular file under `root` with its content hash, symlinks with their target,
/// directories by name: equal trees give equal listings.
pub fn tree_listing(root: &Path) -> Vec<(String, String)> {
    use sha2::Digest as _;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push((rel, "dir".into()));
                stack.push(p);
            } else if ft.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                ));
            } else {
                let mut h = sha2::Sha256::new();
                let mut f = std::fs::File::open(&p).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                out.push((rel, hex::encode(h.finalize())));
            }
        }
    }
    out.sort();
    out
}

/// The `ms2m-agent` binary of this build (`target/<profile>/ms2m-agent`), which
/// `cargo test --workspace` / `cargo build -p ms2m-agent` produce.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("ms2m-agent");
    assert!(
        bin.is_file(),
        "{} not found: build it first with `cargo build -p ms2m-agent` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A checkpoint whose `pages-1.img` is `size` bytes of mostly holes with 4 KiB of fresh
/// random data every 64 KiB: ≈16:1 compressible, unique per run, cheap to create.
pub fn sparse_checkpoint(dir: &Path, name: &str, size: u64) {
    use std::os::unix::fs::FileExt as _;
    synthetic_checkpoint(dir, name, 0);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dir.join("checkpoint/pages-1.img"))
        .unwrap();
    f.set_len(size).unwrap();
    let mut rng = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    let mut buf = vec![0u8; 4096];
    let mut off = 0;
    while off < size {
        rng.read_exact(&mut buf).unwrap();
        let n = (size - off).min(4096) as usize;
        f.write_all_at(&buf[..n], off).unwrap();
        off += 64 * 1024;
    }
}

/// Peak resident set (VmHWM) of a running process, in bytes, while it is readable.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Runs `cmd` to completion while sampling its VmHWM; returns (output, peak RSS bytes).
pub fn run_measuring_rss(cmd: &mut Command) -> (std::process::Output, u64) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let mut peak = 0;
    let status = loop {
        if let Some(h) = vm_hwm(pid) {
            peak = peak.max(h);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = std::process::Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    };
    (output, peak)
}

/// What a [`FaultyProxy`] does to the blob it targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Flip one byte in the middle of every response body: corrupted data.
    FlipByte,
    /// Close the connection halfway through the first response body: a dropped
    /// download; later requests pass untouched.
    CutOnce,
}

/// A one-request-per-connection HTTP proxy in front of a registry that injects `fault`
/// into `GET .../blobs/<digest>` for one digest.
pub struct FaultyProxy {
    pub addr: String,
    /// Faults injected so far.
    pub injected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Requests for the target blob that carried a `Range` header.
    pub ranged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultyProxy {
    pub fn start(upstream: &str, digest: &str, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let injected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ranged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (up, dg, inj, rng) = (
            upstream.to_string(),
            digest.to_string(),
            injected.clone(),
            ranged.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let (up, dg, inj, rng) = (up.clone(), dg.clone(), inj.clone(), rng.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, &up, &dg, fault, &inj, &rng);
                });
            }
        });
        Self {
            addr,
            injected,
            ranged,
        }
    }
}

fn proxy_one(
    mut conn: TcpStream,
    upstream: &str,
    digest: &str,
    fault: Fault,
    injected: &std::sync::atomic::AtomicUsize,
    ranged: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = Vec::new();
    let mut first = String::new();
    reader.read_line(&mut first)?;
    // Anything that is not plain HTTP (a TLS ClientHello probing for HTTPS) is dropped.
    if !first.ends_with("HTTP/1.1\r\n") {
        return Ok(());
    }
    let target = first.starts_with("GET ") && first.contains(&format!("/blobs/{digest}"));
    head.extend_from_slice(first.as_bytes());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("host:") {
            continue;
        }
        if target && lower.starts_with("range:") {
            ranged.fetch_add(1, Relaxed);
        }
        head.extend_from_slice(h.as_bytes());
    }
    head.extend_from_slice(format!("Host: {upstream}\r\nConnection: close\r\n\r\n").as_bytes());
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let body_at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    if target
        && let Some(body_at) = body_at
        && resp.len() > body_at + 1
    {
        let mid = body_at + (resp.len() - body_at) / 2;
        match fault {
            Fault::FlipByte => {
                resp[mid] ^= 0x5a;
                injected.fetch_add(1, Relaxed);
            }
            Fault::CutOnce if injected.compare_exchange(0, 1, Relaxed, Relaxed).is_ok() => {
                conn.write_all(&resp[..mid])?;
                conn.flush()?;
                return conn.shutdown(std::net::Shutdown::Both);
            }
            Fault::CutOnce => {}
        }
    }
    conn.write_all(&resp)?;
    Ok(())
}

/// Names in a directory (to check that a failed pull left nothing beside its target).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}
