//! The `criu-check` and `inspect` subcommands of the built binary, on the real CRIU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const AGENT: &str = env!("CARGO_BIN_EXE_ms2m-agent");

fn criu() -> PathBuf {
    let p =
        PathBuf::from(std::env::var("MS2M_CRIU").unwrap_or_else(|_| "/usr/local/sbin/criu".into()));
    assert!(
        p.is_file(),
        "CRIU not found at {} (set MS2M_CRIU or run scripts/setup.sh)",
        p.display()
    );
    p
}

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (CRIU)"
    );
}

#[test]
fn criu_check_reports_features_of_the_real_criu() {
    require_root();
    let out = Command::new(AGENT)
        .args(["criu-check", "--json", "--criu"])
        .arg(criu())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success(),
        "{v} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(v["criu_version"].as_str().unwrap().starts_with('4'), "{v}");
    assert_eq!(v["base_check"], true, "{v}");
    let names: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for f in ["tcp_half_closed", "mem_dirty_track", "uffd", "cgroupns"] {
        assert!(names.contains(&f), "{f} not reported: {v}");
    }
}

#[test]
fn criu_check_refuses_criu_older_than_4_2_on_new_kernels() {
    let kernel = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = kernel
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (6, 16),
        "this test needs a kernel >= 6.16 (found {kernel}) to exercise the refusal"
    );
    // CRIU 4.1 cannot be installed next to 4.2 here; the agent decides from
    // `criu --version`, which is all a 4.1.1 binary would be asked before the refusal.
    let t = tempfile::tempdir().unwrap();
    let old = t.path().join("criu");
    std::fs::write(&old, "#!/bin/sh\necho 'Version: 4.1.1'\n").unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(AGENT)
        .args(["criu-check", "--criu"])
        .arg(&old)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "old CRIU accepted");
    assert!(
        err.contains("CRIU 4.1.1 cannot checkpoint TCP sockets") && err.contains(">= 4.2"),
        "{err}"
    );
}

/// A real CRIU dump of a `sleep` process, laid out as a checkpoint archive.
fn dump_sleep(dir: &Path) {
    let mut child = Command::new("setsid")
        .args(["sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let images = dir.join("checkpoint");
    std::fs::create_dir_all(&images).unwrap();
    let out = Command::new(criu())
        .args(["dump", "--shell-job", "-t"])
        .arg(child.id().to_string())
        .arg("-D")
        .arg(&images)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "criu dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        dir.join("config.dump"),
        r#"{"id":"abc123","name":"sleeper","rootfsImageName":"docker.io/library/busybox:latest","runtime":"runc"}"#,
    )
    .unwrap();
}

#[test]
fn inspect_summarizes_a_real_dump_as_dir_and_tar() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("ck");
    dump_sleep(&dir);
    let tar = t.path().join("ck.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    for p in [&dir, &tar] {
        let out = Command::new(AGENT)
            .arg("inspect")
            .arg("--json")
            .arg(p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["container"]["name"], "sleeper", "{v}");
        assert_eq!(v["image"], "docker.io/library/busybox:latest");
        assert_eq!(v["processes"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["processes"][0]["comm"], "sleep", "{v}");
        assert!(v["memory_bytes"].as_u64().unwrap() > 0);
        assert!(
            v["open_files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f.as_str().unwrap().ends_with("sleep")),
            "{v}"
        );
        assert_eq!(v["warnings"], serde_json::json!([]));
        let table = Command::new(AGENT).arg("inspect").arg(p).output().unwrap();
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            text.contains("Process tree") && text.contains("sleep"),
            "{text}"
        );
    }
    // Not a checkpoint: a clear error.
    let out = Command::new(AGENT)
        .arg("inspect")
        .arg(t.path().join("nothing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
