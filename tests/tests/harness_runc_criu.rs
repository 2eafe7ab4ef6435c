//! The harness's own check on real parts: a busybox container counting in a
//! pre-created network namespace is checkpointed with runc + CRIU and restored under
//! a new id; the restored process continues the count instead of starting over.

use std::process::Command;

use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::counter::{COUNTER, assert_continuous, log_lines, wait_for_lines};
use ms2m_tests::env::{criu, unique};
use ms2m_tests::netns::Netns;
use ms2m_tests::process::run;

#[test]
fn counter_survives_checkpoint_and_restore_under_new_id() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new(&unique("ms2mh"));
    let bundle = Bundle::busybox(&tmp.path().join("bundle"), COUNTER);
    bundle.use_netns(&ns.path());
    let id = unique("ms2m-h-");
    let source = Container::run(&bundle, &id);
    let before = wait_for_lines(&bundle.rootfs(), 20);
    assert_eq!(before[0][0], 1);

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
    let at_checkpoint = log_lines(&bundle.rootfs());
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
    assert_continuous(&after);
    drop(source);
}
