//! A real checkpoint through the image format: a counting busybox container is
//! checkpointed with runc + CRIU 4.2, its images (in the CRI-O archive layout) are
//! encoded into a multi-layer OCI checkpoint image and decoded again, and the container
//! is restored from the *decoded* copy under a new id. It must carry on counting from
//! where it was checkpointed.

use std::fs;

use ms2m_image_format::{Archive, Compression, EncodeOptions, read_oci_layout, write_oci_layout};
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::counter::{COUNTER, log_lines, wait_for_lines};
use ms2m_tests::env::unique;
use ms2m_tests::netns::Netns;

fn round_trip(compression: Compression, layers: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new(&unique("ms2mif"));
    let bundle = Bundle::busybox(&tmp.path().join("bundle"), COUNTER);
    bundle.use_netns(&ns.path());
    let id = unique("ms2m-if-");
    let source = Container::run(&bundle, &id);
    wait_for_lines(&bundle.rootfs(), 20);

    // The archive in the layout CRI-O writes: CRIU images under checkpoint/, the
    // runtime spec and the container config beside them.
    let archive_dir = tmp.path().join("archive");
    let images = archive_dir.join("checkpoint");
    source.checkpoint_to_archive(
        &bundle,
        &archive_dir,
        &tmp.path().join("work"),
        &serde_json::json!({
            "id": id, "name": "counter", "rootfsImageName": "docker.io/library/busybox:latest",
            "runtime": "runc", "createdTime": "2026-11-28T00:00:00Z",
        }),
    );
    drop(source);
    let at_checkpoint = log_lines(&bundle.rootfs()).len();

    let archive = Archive::open(&archive_dir).expect("open the real checkpoint");
    let meta = archive.metadata();
    assert_eq!(meta.container_name.as_deref(), Some("counter"));
    assert!(meta.memory_size > 0, "page images must be found: {meta:?}");

    let layout = tmp.path().join("layout");
    let opts = EncodeOptions {
        layers,
        compression,
        ..EncodeOptions::default()
    };
    let image = write_oci_layout(&archive, &layout, &opts).expect("encode");
    assert_eq!(image.layers.len(), layers, "one layer per requested shard");

    let decoded = tmp.path().join("decoded");
    read_oci_layout(&layout, &decoded).expect("decode");
    // Same bytes as the images CRIU wrote, file by file.
    for entry in fs::read_dir(&images).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        assert_eq!(
            fs::read(entry.path()).unwrap(),
            fs::read(decoded.join("checkpoint").join(&name)).unwrap(),
            "{name:?} differs after the round trip"
        );
    }

    let (_restored, _) = Container::restore_keeps_counting(
        &bundle,
        &unique("ms2m-if-r-"),
        &decoded.join("checkpoint"),
        &tmp.path().join("work-restore"),
        at_checkpoint,
    );
}

#[test]
fn restore_from_decoded_zstd_image_continues_the_count() {
    round_trip(Compression::default(), 3);
}

#[test]
fn restore_from_decoded_gzip_single_layer_image_continues_the_count() {
    round_trip(Compression::Gzip { level: 1 }, 1);
}
