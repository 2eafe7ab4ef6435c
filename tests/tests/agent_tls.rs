//! Issue #13, "plaintext HTTP with one cluster-wide shared token", on the real
//! `ms2m-agent serve` binaries over real TLS on loopback: certificates from
//! `ms2m-agent certs`, the shim's agent client (https, client certificate), agent-to-agent
//! Direct over mutual TLS, and every refusal: a wrong-CA peer either way, an expired
//! certificate, a Direct send to a peer that is not the named node's agent, a verb the
//! caller's identity lacks (403 JSON), no certificate (401 JSON), and a TCP listener
//! without TLS unless `tcp_insecure` is asked for.

mod agent_daemon;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agent_daemon::{Daemon, DaemonOptions, Resp, free_port, http};
use ms2m_api::client::{AgentAddr, AgentClient};
use ms2m_api::{DirectSendRequest, JobStatus, JobView};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn agent_bin() -> PathBuf {
    ms2m_tests::e2e::agents::binaries().agent
}

fn certs(args: &[&str]) {
    let out = Command::new(agent_bin())
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ms2m-agent certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster CA and every certificate the tests use, under one directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        certs(&["init", "--dir", &p("ca")]);
        certs(&["init", "--dir", &p("other-ca")]);
        certs(&[
            "issue",
            "--ca-dir",
            &p("ca"),
            "--out-dir",
            &p("shim"),
            "--shim",
        ]);
        for node in ["node-a", "node-b"] {
            certs(&[
                "issue",
                "--ca-dir",
                &p("ca"),
                "--out-dir",
                &p(node),
                "--agent",
                node,
                "--ip",
                "127.0.0.1",
            ]);
        }
        certs(&[
            "issue",
            "--ca-dir",
            &p("ca"),
            "--out-dir",
            &p("expired-shim"),
            "--shim",
            "--backdate-days",
            "10",
            "--days",
            "1",
        ]);
        certs(&[
            "issue",
            "--ca-dir",
            &p("other-ca"),
            "--out-dir",
            &p("rogue-shim"),
            "--shim",
        ]);
        // A client that trusts another CA: the agents' certificates must not pass.
        certs(&[
            "issue",
            "--ca-dir",
            &p("other-ca"),
            "--out-dir",
            &p("other-ca-client"),
            "--shim",
        ]);
        let key = std::fs::metadata(dir.path().join("shim/tls.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
            0o600,
            "a private key readable by others"
        );
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn tls_agent(pki: &Pki, node: &str) -> Daemon {
    let d = pki.path(node);
    let addr = free_port();
    Daemon::start(DaemonOptions {
        config: &format!(
            "tls_cert_file = \"{0}/tls.crt\"\ntls_key_file = \"{0}/tls.key\"\n\
             tls_ca_file = \"{0}/ca.crt\"\nnode_name = \"{node}\"\n",
            d.display()
        ),
        tcp: Some(addr),
        ..Default::default()
    })
}

/// One request over TLS as the holder of `client` (a directory with tls.crt/tls.key),
/// trusting `ca`. `Err` when the handshake (or the answer) fails.
fn tls_call(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&Path>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some(d) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(d.join("tls.crt"))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(d.join("tls.key")).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::IpAddress(addr.ip().into()))
            .unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    http(
        rustls::StreamOwned::new(conn, tcp),
        method,
        path,
        headers,
        body,
    )
}

fn shim(base: SocketAddr, tls_dir: PathBuf) -> AgentClient {
    AgentClient::new(AgentAddr::Tls {
        base: format!("https://{base}"),
        tls_dir,
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a Direct send through the shim's client and waits for its end.
fn direct_send(
    rt: &tokio::runtime::Runtime,
    source: &AgentClient,
    target: SocketAddr,
    node: &str,
    id: &str,
) -> JobView {
    rt.block_on(async {
        let job = source
            .start_direct_send(&DirectSendRequest {
                checkpoint_id: "ck".into(),
                target: format!("https://{target}"),
                target_checkpoint_id: Some(id.into()),
                target_node: Some(node.into()),
                import_reference: None,
            })
            .await
            .expect("start the Direct send");
        loop {
            let j = source
                .job(&job.id, Duration::from_secs(30))
                .await
                .unwrap()
                .expect("job known");
            if j.status.is_terminal() {
                return j;
            }
        }
    })
}

#[test]
fn mutual_tls_between_shim_and_agents_with_per_verb_identities() {
    let pki = Pki::new();
    let a = tls_agent(&pki, "node-a");
    let b = tls_agent(&pki, "node-b");
    let (a_addr, b_addr) = (a.tcp.unwrap(), b.tcp.unwrap());
    ms2m_tests::transfer::synthetic_checkpoint(&a.state().join("checkpoints/ck"), "ck", 300_000);
    let rt = rt();
    let ca = pki.path("ca/ca.crt");

    // Happy path: the shim's client over https, and A → B Direct over mutual TLS.
    let sa = shim(a_addr, pki.path("shim"));
    let sb = shim(b_addr, pki.path("shim"));
    rt.block_on(sa.ready()).expect("shim → agent over TLS");
    let j = direct_send(&rt, &sa, b_addr, "node-b", "ck-b");
    assert_eq!(j.status, JobStatus::Succeeded, "{}", j.failure());
    assert!(rt.block_on(sb.checkpoint_exists("ck-b")).unwrap());
    let log = b.log_text();
    assert!(
        log.contains("ms2m-agent:node-a"),
        "B's log names the sender's identity: {log}"
    );

    // A peer that is not the named node's agent gets nothing: B's certificate names
    // node-b, the request names node-c.
    let j = direct_send(&rt, &sa, b_addr, "node-c", "ck-c");
    assert_eq!(j.status, JobStatus::Failed);
    let why = j.failure();
    assert!(
        why.contains("ms2m-agent:node-c") && why.contains("ms2m-agent:node-b"),
        "{why}"
    );
    assert!(!rt.block_on(sb.checkpoint_exists("ck-c")).unwrap());
    // Without a node to check, no send at all.
    let r = tls_call(
        a_addr,
        &ca,
        Some(&pki.path("shim")),
        "POST",
        "/v1/direct/sends",
        &[],
        Some(format!(r#"{{"checkpoint_id":"ck","target":"https://{b_addr}"}}"#).as_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("target_node"), "{}", r.body);

    // Verbs per identity: the shim cannot deliver into Direct receive; a peer agent
    // can do nothing else (403 JSON); no certificate: only the probes (401 JSON).
    let r = tls_call(
        b_addr,
        &ca,
        Some(&pki.path("shim")),
        "PUT",
        "/v1/direct/receive/x",
        &[("Content-Type", "application/vnd.ms2m.direct.v1")],
        Some(b""),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.body
    );
    for (method, path, body) in [
        (
            "POST",
            "/v1/checkpoints",
            Some(r#"{"backend":"runc","container_id":"x","checkpoint_id":"y"}"#),
        ),
        ("GET", "/v1/jobs", None),
        ("DELETE", "/v1/checkpoints/ck", None),
        ("POST", "/v1/direct/sends", Some("{}")),
    ] {
        let r = tls_call(
            a_addr,
            &ca,
            Some(&pki.path("node-b")),
            method,
            path,
            &[],
            body.map(str::as_bytes),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "forbidden"),
            "{method} {path}: {}",
            r.body
        );
    }
    assert!(
        a.state().join("checkpoints/ck").exists(),
        "a refused DELETE deleted"
    );
    let r = tls_call(a_addr, &ca, None, "GET", "/v1/jobs", &[], None).unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "client_certificate_required"),
        "{}",
        r.body
    );
    let r = tls_call(a_addr, &ca, None, "GET", "/healthz", &[], None).unwrap();
    assert_eq!(r.status, 200, "probes need no certificate: {}", r.body);
    // A bearer token is no credential on the TLS listener.
    let r = tls_call(
        a_addr,
        &ca,
        None,
        "GET",
        "/v1/jobs",
        &[("Authorization", "Bearer hardening-token")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);

    // A certificate of another CA and an expired one are refused in the handshake;
    // the same request with the valid shim certificate passes.
    let ok = tls_call(
        a_addr,
        &ca,
        Some(&pki.path("shim")),
        "GET",
        "/v1/jobs",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    for who in ["rogue-shim", "expired-shim"] {
        let r = tls_call(
            a_addr,
            &ca,
            Some(&pki.path(who)),
            "GET",
            "/v1/jobs",
            &[],
            None,
        );
        assert!(r.is_err(), "{who} was served: {r:?}");
    }
    // And the other way: a client trusting another CA refuses the agent.
    let wrong = shim(a_addr, pki.path("other-ca-client"));
    let e = rt.block_on(wrong.ready()).unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    let log = a.log_text();
    assert!(log.contains("TLS handshake refused"), "{log}");
}

#[test]
fn a_tcp_listener_is_tls_unless_insecure_is_asked_for() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[String]| {
        Command::new(agent_bin())
            .arg("serve")
            .arg("--socket-path")
            .arg(dir.path().join("a.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--tcp-listen", &free_port().to_string()])
            .args(extra)
            .env("MS2M_AGENT_CONFIG", dir.path().join("none.toml"))
            .output()
            .unwrap()
    };
    std::fs::write(dir.path().join("none.toml"), "").unwrap();
    let out = serve(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcp_insecure"), "{err}");
    // A certificate for another node is not this agent's.
    let d = pki.path("node-b");
    let out = serve(&[
        format!("--tls-cert-file={}/tls.crt", d.display()),
        format!("--tls-key-file={}/tls.key", d.display()),
        format!("--tls-ca-file={}/ca.crt", d.display()),
        "--node-name=node-a".into(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ms2m-agent:node-b"), "{err}");
}
