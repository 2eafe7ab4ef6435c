//! The systemd units pass `systemd-analyze verify`, and the agent binary serves on a
//! listener handed to it the way systemd does (fd 3, `LISTEN_FDS=1`, `LISTEN_PID`),
//! reports `READY=1` on `$NOTIFY_SOCKET`, and exits cleanly on SIGTERM.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_ms2m-agent");

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn systemd_analyze() -> PathBuf {
    let p = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(
        p.is_file(),
        "systemd-analyze not found: install the Debian package `systemd` (scripts/setup.sh does)"
    );
    p
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let t = tempfile::tempdir().unwrap();
    for unit in ["ms2m-agent.service", "ms2m-agent.socket"] {
        let text = std::fs::read_to_string(units_dir().join(unit)).unwrap();
        // The installed path does not exist on a build machine: point ExecStart at the
        // binary just built, as the verification requires an existing executable.
        let text = text.replace("/usr/local/bin/ms2m-agent", AGENT);
        std::fs::write(t.path().join(unit), text).unwrap();
    }
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg("--man=no")
        .arg(t.path().join("ms2m-agent.socket"))
        .arg(t.path().join("ms2m-agent.service"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about units that merely are not installed on this machine (dependencies
    // such as network-online.target resolve from the unit search path) are not about
    // our files; anything naming our units is.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ms2m-agent"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn serves_on_a_socket_activated_listener_and_stops_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let notify_path = t.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let lfd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    // `exec` keeps the shell's pid, so $$ is the agent's pid, as systemd sets it.
    cmd.arg("-c")
        .arg(format!("LISTEN_PID=$$ LISTEN_FDS=1 exec {AGENT} serve"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("MS2M_AGENT_STATE_DIR", t.path().join("state"))
        .env("MS2M_AGENT_SOCKET", t.path().join("not-used.sock"))
        .env("MS2M_AGENT_CONFIG", t.path().join("none.toml"))
        .env("MS2M_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    std::fs::write(t.path().join("none.toml"), "").unwrap();
    // SAFETY: between fork and exec only async-signal-safe calls are made (dup2).
    unsafe {
        cmd.pre_exec(move || {
            if libc_dup2(lfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);

    let mut buf = [0u8; 256];
    let n = notify
        .recv(&mut buf)
        .expect("no READY=1 from the agent within 30 s");
    assert_eq!(&buf[..n], b"READY=1");

    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"ok\""), "{out}");
    assert!(
        !t.path().join("not-used.sock").exists(),
        "the agent bound its own socket"
    );

    // The CLI talks to the running agent over the same socket.
    let cli = Command::new(AGENT)
        .args(["checkpoint", "no-such-container", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let cli_err = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success());
    assert!(
        cli_err.contains("answered 404") && cli_err.contains("no-such-container"),
        "{cli_err}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "agent exited with {status}: {err}");
    assert!(err.contains("inherited from systemd"), "{err}");
    // Every request is logged with the caller's credentials (SO_PEERCRED).
    let me = nix::unistd::Uid::effective().as_raw();
    assert!(err.contains(&format!("\"peer_uid\":{me}")), "{err}");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// dup2(from, to) without closing anything; `to` ends up without FD_CLOEXEC.
fn libc_dup2(from: i32, to: i32) -> i32 {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if from == to {
        // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
        // SAFETY: `from` is the listener's open fd in this process.
        let fd = unsafe { BorrowedFd::borrow_raw(from) };
        return match nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        ) {
            Ok(_) => 0,
            Err(_) => -1,
        };
    }
    // SAFETY: `from` is open in this process; `to` (3) is consumed as the target number
    // only, and the returned OwnedFd is leaked on purpose: fd 3 must stay open across
    // exec. dup2 and fcntl are async-signal-safe and nothing here allocates.
    match unsafe { nix::unistd::dup2_raw(BorrowedFd::borrow_raw(from), OwnedFd::from_raw_fd(to)) } {
        Ok(fd) => {
            std::mem::forget(fd);
            0
        }
        Err(_) => -1,
    }
}
