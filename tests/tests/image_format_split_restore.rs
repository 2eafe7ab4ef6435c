//! The split layout on a real checkpoint: a busybox container holding a few MB of heap
//! is checkpointed with runc + CRIU 4.2, encoded with its page image cut across three
//! layers, decoded (parts written in place at their offsets), and restored under a new
//! id from the decoded copy: it keeps counting, and its heap survived.

use std::fs;

use ms2m_image_format::{
    Archive, EncodeOptions, annotations, plan_split_layers, read_oci_layout, write_oci_layout,
};
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::counter::{log_lines, wait_for_lines};
use ms2m_tests::env::{require_root, unique};
use ms2m_tests::netns::Netns;

/// `x` keeps ~2 MB in the shell's heap, so the page image dominates the checkpoint; each
/// line also records the heap's length, which a damaged restore would change.
const COUNTER: &[&str] = &[
    "sh",
    "-c",
    "x=$(seq 1 300000); i=0; while true; do i=$((i+1)); echo $i ${#x} >> /log; sleep 0.02; done",
];

#[test]
fn restore_from_a_decoded_split_image_continues_the_count() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new(&unique("ms2msp"));
    let bundle = Bundle::busybox(&tmp.path().join("bundle"), COUNTER);
    bundle.use_netns(&ns.path());
    let id = unique("ms2m-sp-");
    let source = Container::run(&bundle, &id);
    let before = wait_for_lines(&bundle.rootfs(), 10);
    let heap = before[0][1];
    assert!(heap > 1_000_000, "heap string too small: {heap}");

    let archive_dir = tmp.path().join("archive");
    let images = archive_dir.join("checkpoint");
    source.checkpoint_to_archive(
        &bundle,
        &archive_dir,
        &tmp.path().join("work"),
        &serde_json::json!({"name": "counter", "runtime": "runc"}),
    );
    drop(source);
    let at_checkpoint = log_lines(&bundle.rootfs()).len();

    let archive = Archive::open(&archive_dir).expect("open the real checkpoint");
    let plans = plan_split_layers(&archive, 3);
    // CRIU writes one page image per process; when the shell happens to have its
    // `sleep` child at dump time there are two of similar size. Whatever the shape, the
    // page images must be cut into parts spread over several layers, each split file
    // covered exactly once, in order.
    let parts: Vec<_> = plans.iter().flat_map(|p| &p.parts).collect();
    assert!(parts.len() >= 2, "no page image was split: {plans:?}");
    let mut split_files: Vec<usize> = parts.iter().map(|p| p.entry).collect();
    split_files.sort();
    split_files.dedup();
    for entry in split_files {
        let file = &archive.entries()[entry];
        assert!(
            file.path.starts_with("checkpoint/pages-"),
            "split {}",
            file.path
        );
        let mut mine: Vec<_> = parts.iter().filter(|p| p.entry == entry).collect();
        mine.sort_by_key(|p| p.offset);
        assert!(mine.len() >= 2, "{} split into one part", file.path);
        let mut next = 0;
        for p in &mine {
            assert_eq!(p.offset, next, "gap or overlap in {}", file.path);
            next += p.length;
        }
        assert_eq!(next, file.size, "parts of {} do not cover it", file.path);
        let layers_holding: std::collections::HashSet<_> = plans
            .iter()
            .filter(|l| l.parts.iter().any(|p| p.entry == entry))
            .map(|l| l.index)
            .collect();
        assert!(layers_holding.len() >= 2, "{} sits in one layer", file.path);
    }

    let layout = tmp.path().join("layout");
    let image = write_oci_layout(
        &archive,
        &layout,
        &EncodeOptions {
            layers: 3,
            split: true,
            ..EncodeOptions::default()
        },
    )
    .expect("encode");
    let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
    assert_eq!(manifest["annotations"][annotations::MS2M_SPLIT], "v1");

    let decoded = tmp.path().join("decoded");
    read_oci_layout(&layout, &decoded).expect("decode");
    for entry in fs::read_dir(&images).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        assert_eq!(
            fs::read(entry.path()).unwrap(),
            fs::read(decoded.join("checkpoint").join(&name)).unwrap(),
            "{name:?} differs after the split round trip"
        );
    }

    let (_restored, after) = Container::restore_keeps_counting(
        &bundle,
        &unique("ms2m-sp-r-"),
        &decoded.join("checkpoint"),
        &tmp.path().join("work-restore"),
        at_checkpoint,
    );
    for (k, line) in after.iter().enumerate() {
        assert_eq!(line[1], heap, "heap changed at line {k}");
    }
}
