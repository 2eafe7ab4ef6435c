//! The harness's own check on real parts: a busybox container counting in a
//! pre-created network namespace is checkpointed with runc + CRIU and restored under
//! a new id; the restored process continues the count instead of starting over.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::env::{criu, unique};
use ms2m_tests::netns::Netns;
use ms2m_tests::process::run;

/// Counts into /log, one line per tick, so a restart (a second "1") is visible.
pub const COUNTER: &[&str] = &[
    "sh",
    "-c",
    "i=0; while true; do i=$((i+1)); echo $i >> /log; sleep 0.02; done",
];

fn lines(rootfs: &Path) -> Vec<u64> {
    fs::read_to_string(rootfs.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_for_lines(rootfs: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = lines(rootfs);
        if l.len() >= n {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "counter reached only {} lines",
            l.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn counter_survives_checkpoint_and_restore_under_new_id() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new(&unique("ms2mh"));
    let bundle = Bundle::busybox(&tmp.path().join("bundle"), COUNTER);
    bundle.use_netns(&ns.path());
    let id = unique("ms2m-h-");
    let source = Container::run(&bundle, &id);
    let before = wait_for_lines(&bundle.rootfs(), 20);
    assert_eq!(before[0], 1);

    let images = tmp.path().join("images");
    let work = tmp.path().join("work");
    run(Command::new("runc")
        .arg("--criu")
        .arg(criu())
        .args(["checkpoint", "--image-path"])
        .arg(&images)
        .arg("--work-path")
        .arg(&work)
        .arg(&id));
    assert_eq!(
        source.status(),
        None,
        "checkpoint without --leave-running removes the container"
    );
    let at_checkpoint = lines(&bundle.rootfs());
    assert!(images.join("inventory.img").is_file());

    let restored_id = unique("ms2m-h-r-");
    let restored = Container::restore(&bundle, &restored_id, &images, &work, &[]);
    assert_eq!(
        restored.status().as_deref(),
        Some("running"),
        "{}",
        restored.output()
    );
    let after = wait_for_lines(&bundle.rootfs(), at_checkpoint.len() + 20);
    // One continuous count: the restored shell carried on from its in-memory `i`.
    for (k, v) in after.iter().enumerate() {
        assert_eq!(
            *v,
            k as u64 + 1,
            "count broke at line {k}: {:?}",
            &after[k.saturating_sub(3)..(k + 3).min(after.len())]
        );
    }
    drop(source);
}
