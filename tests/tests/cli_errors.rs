//! Every CLI mistake and failure a newcomer meets first, run against the built binaries:
//! the exit code (2 for usage, 1 for a failure), a message that names the cause once, and
//! nothing a terminal would interpret. Needs `ms2m-agent` and `ms2m-shim` built (cargo
//! test --workspace builds them).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn binary(name: &str) -> PathBuf {
    let agent = ms2m_tests::transfer::agent_binary();
    let bin = agent.with_file_name(name);
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p ms2m-shim -p ms2m-agent` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(binary(bin))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        // `make test` exports the CRIU it built; criu-check would take it over PATH.
        .env_remove("MS2M_CRIU")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // Off a terminal: never an escape sequence, never a control character but newlines.
    assert!(
        !r.stderr.chars().any(|c| c.is_control() && c != '\n'),
        "{bin} {args:?} wrote control characters to a pipe: {:?}",
        r.stderr
    );
    r
}

const BROKER: [&str; 6] = [
    "--broker-url",
    "amqp://guest:guest@127.0.0.1:1/%2f",
    "--queue",
    "q",
    "--exchange",
    "e",
];

fn migrate_args<'a>(dir: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "migrate".into(),
        "--source-agent".into(),
        format!("{dir}/a.sock"),
        "--target-agent".into(),
        format!("{dir}/b.sock"),
        "--container".into(),
        "counter".into(),
    ];
    v.extend(BROKER.iter().map(|s| s.to_string()));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn migrate_without_what_its_transfer_mode_needs_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = run("ms2m-shim", &strs(&migrate_args(d, &[])), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--image <IMAGE>"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Usage: ms2m-shim migrate"),
        "{}",
        r.stderr
    );

    let r = run(
        "ms2m-shim",
        &strs(&migrate_args(d, &["--transfer", "direct"])),
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--direct-target"), "{}", r.stderr);

    let r = run(
        "ms2m-shim",
        &strs(&migrate_args(
            d,
            &["--image", "r/x:1", "--phase-timeout-seconds", "0"],
        )),
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--phase-timeout-seconds"), "{}", r.stderr);
}

/// The agents are checked before the migration starts: an unreachable one fails within
/// the connect timeout, not after a phase's 300 s of retries, and says where and why.
#[test]
fn migrate_with_an_unreachable_agent_fails_fast_and_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = run(
        "ms2m-shim",
        &strs(&migrate_args(
            d,
            &[
                "--image",
                "127.0.0.1:5000/ms2m/x:1",
                "--connect-timeout-seconds",
                "1",
            ],
        )),
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the source agent at unix:{d}/a.sock did not answer within 1 s"
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("ms2m-agent serve"), "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "the cause is said once: {}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

#[test]
fn controller_without_an_api_server_does_not_blame_the_crd() {
    let dir = tempfile::tempdir().unwrap();
    // No kubeconfig at all (and no in-cluster environment).
    let r = run(
        "ms2m-shim",
        &["controller"],
        &[("KUBECONFIG", dir.path().join("none").to_str().unwrap())],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no Kubernetes configuration"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("crd"), "{}", r.stderr);

    // A kubeconfig whose API server is not there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let r = run(
        "ms2m-shim",
        &["controller", "--metrics-listen", "127.0.0.1:0"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("error: listing StatefulMigrations through the Kubernetes API"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("install"), "{}", r.stderr);
}

#[test]
fn every_subcommand_help_has_examples() {
    for (bin, subs) in [
        ("ms2m-shim", &["controller", "migrate", "crdgen"][..]),
        (
            "ms2m-agent",
            &[
                "serve",
                "criu-check",
                "inspect",
                "checkpoint",
                "restore",
                "push",
                "pull",
                "import",
                "bench",
            ][..],
        ),
    ] {
        let top = run(bin, &["--help"], &[]);
        assert_eq!(top.code, 0);
        for s in subs {
            assert!(top.stdout.contains(s), "{bin} --help lacks {s}");
            let r = run(bin, &[s, "--help"], &[]);
            assert_eq!(r.code, 0, "{bin} {s} --help: {}", r.stderr);
            let examples = r
                .stdout
                .split_once("EXAMPLES:")
                .unwrap_or_else(|| panic!("{bin} {s} --help has no EXAMPLES:\n{}", r.stdout))
                .1;
            assert!(
                examples.contains(&format!("{bin} {s}")),
                "{bin} {s}: the examples run the subcommand:\n{examples}"
            );
        }
    }
}

/// Hostile bytes in an error (a random file's "entry name") come out escaped and cut.
#[test]
fn inspect_on_a_random_file_shows_the_garbage_escaped_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("random.tar");
    let mut bytes = vec![0u8; 8192];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    // An escape sequence at the start of the would-be entry name, and bytes that are
    // not UTF-8.
    bytes[..8].copy_from_slice(b"\x1b[31m\xff\xfe\x07");
    std::fs::write(&f, &bytes).unwrap();
    let r = run("ms2m-agent", &["inspect", f.to_str().unwrap()], &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    assert!(r.stderr.contains(f.to_str().unwrap()), "{}", r.stderr);
    assert!(r.stderr.contains("\\u{1b}[31m"), "{}", r.stderr);
    assert!(
        r.stderr.len() < 2000,
        "{} bytes: {}",
        r.stderr.len(),
        r.stderr
    );
    assert!(!r.stderr.contains("Stack backtrace"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

#[test]
fn checkpoint_without_a_running_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let r = run(
        "ms2m-agent",
        &["checkpoint", "counter", "--socket", sock.to_str().unwrap()],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("connecting to the agent at {}", sock.display()))
            && r.stderr.contains("is `ms2m-agent serve` running?"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        r.stderr
    );
}

#[test]
fn criu_check_finds_criu_on_path() {
    ms2m_tests::env::require_root();
    let real = ms2m_tests::env::criu();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("criu")).unwrap();
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let r = run("ms2m-agent", &["criu-check", "--json"], &[("PATH", &path)]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", r.stdout, r.stderr));
    assert_eq!(
        Path::new(v["criu_path"].as_str().unwrap()),
        dir.path().join("criu"),
        "{v}"
    );
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A second `serve` on a socket a live agent answers on refuses, and the first agent
/// keeps its socket.
#[test]
fn serve_refuses_a_socket_a_live_agent_answers_on() {
    ms2m_tests::env::require_root();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let serve = |state: &str| {
        Command::new(binary("ms2m-agent"))
            .args(["serve", "--socket-path"])
            .arg(&sock)
            .arg("--state-dir")
            .arg(dir.path().join(state))
            .env("MS2M_CRIU", ms2m_tests::env::criu())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let _first = Daemon(serve("state-1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "the first agent never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&sock);

    let second = serve("state-2").wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "an agent is already serving on {}",
            sock.display()
        )),
        "{stderr}"
    );
    assert_eq!(inode(&sock), before, "the live agent's socket was replaced");
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
}
