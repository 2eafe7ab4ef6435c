//! Archive → N layers → OCI layout → verifying decoder → identical tree, for every
//! archive shape, both source forms and every compression.

mod common;

use std::fs;

use common::{SHAPES, Shape, build_archive_dir, snapshot, tar_dir};
use ms2m_image_format::{
    Archive, Compression, EncodeOptions, ExpectedLayer, ImageOptions, Staging, annotations,
    encode_layer, plan_layers, plan_split_layers, read_oci_layout, unpack_layer, write_oci_layout,
};

fn compressions() -> [Compression; 4] {
    [
        Compression::Zstd {
            level: 1,
            workers: 0,
        },
        Compression::Zstd {
            level: 3,
            workers: 2,
        },
        Compression::Gzip { level: 1 },
        Compression::None,
    ]
}

#[test]
fn every_shape_layer_count_and_compression_round_trips() {
    for (si, shape) in SHAPES.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        build_archive_dir(&src, *shape, si as u64);
        let tar = tmp.path().join("checkpoint.tar");
        tar_dir(&src, &tar);
        let want = snapshot(&src);
        for (form, path) in [("dir", &src), ("tar", &tar)] {
            let archive = Archive::open(path).unwrap();
            // Every layer count with the default compression; every compression with
            // two layers (debug-build hashing is slow; the matrix stays meaningful).
            let mut cases: Vec<(usize, usize, Compression)> = [1usize, 2, 4, 10_000]
                .iter()
                .map(|l| (*l, 0, Compression::default()))
                .collect();
            if form == "dir" {
                cases.extend(
                    compressions()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (2, i + 1, *c)),
                );
            }
            for (layers, ci, compression) in cases.iter().map(|(l, i, c)| (*l, *i, c)) {
                {
                    let case = format!("{shape:?}/{form}/{layers} layers/{compression:?}");
                    let layout = tmp.path().join(format!("layout-{form}-{layers}-{ci}"));
                    let out = tmp.path().join(format!("out-{form}-{layers}-{ci}"));
                    let opts = EncodeOptions {
                        layers,
                        compression: *compression,
                        image: ImageOptions::default(),
                        split: false,
                    };
                    let image = write_oci_layout(&archive, &layout, &opts).unwrap();
                    assert!(!image.layers.is_empty(), "{case}");
                    assert!(image.layers.len() <= layers, "{case}");
                    for l in &image.layers {
                        assert_eq!(l.media_type, compression.media_type(), "{case}");
                    }
                    let back = read_oci_layout(&layout, &out).unwrap();
                    assert_eq!(back.manifest.bytes, image.manifest.bytes, "{case}");
                    let got = snapshot(&out);
                    assert_eq!(got, want, "{case}: unpacked tree differs");
                    fs::remove_dir_all(&layout).unwrap();
                    fs::remove_dir_all(&out).unwrap();
                }
            }
        }
    }
}

#[test]
fn plan_is_balanced_whole_files_and_a_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_archive_dir(&src, Shape::ManySmall, 7);
    let archive = Archive::open(&src).unwrap();
    let plans = plan_layers(&archive, 4);
    assert_eq!(plans.len(), 4);
    // Every non-directory entry is in exactly one layer.
    let mut seen = vec![0usize; archive.entries().len()];
    for p in &plans {
        for &i in &p.entries {
            seen[i] += 1;
        }
    }
    for (i, e) in archive.entries().iter().enumerate() {
        if e.is_file() {
            assert_eq!(seen[i], 1, "{} in {} layers", e.path, seen[i]);
        } else {
            assert!(seen[i] >= 1, "{} in no layer", e.path);
        }
    }
    let total: u64 = plans.iter().map(|p| p.size).sum();
    assert_eq!(total, archive.total_size());
    // Greedy largest-first: no layer exceeds the lightest by more than the largest file.
    let largest = archive.entries().iter().map(|e| e.size).max().unwrap();
    let min = plans.iter().map(|p| p.size).min().unwrap();
    let max = plans.iter().map(|p| p.size).max().unwrap();
    assert!(
        max - min <= largest,
        "unbalanced: {min}..{max}, largest file {largest}"
    );
    // Parents before children in each layer.
    for p in &plans {
        let paths: Vec<&str> = p
            .entries
            .iter()
            .map(|i| archive.entries()[*i].path.as_str())
            .collect();
        for (k, path) in paths.iter().enumerate() {
            if let Some((parent, _)) = path.rsplit_once('/')
                && let Some(pos) = paths.iter().position(|q| *q == parent)
            {
                assert!(pos < k, "{parent} after {path}");
            }
        }
    }
    // More layers than files: no empty layer.
    let many = plan_layers(&archive, 100_000);
    assert!(many.iter().all(|p| !p.entries.is_empty()));
}

#[test]
fn same_archive_gives_same_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_archive_dir(&src, Shape::DominantPages, 3);
    let tar = tmp.path().join("c.tar");
    tar_dir(&src, &tar);
    let a = Archive::open(&tar).unwrap();
    let opts = EncodeOptions::default();
    let one = write_oci_layout(&a, tmp.path().join("l1"), &opts).unwrap();
    let two = write_oci_layout(&a, tmp.path().join("l2"), &opts).unwrap();
    assert_eq!(one.index.bytes, two.index.bytes);
    assert_eq!(one.manifest.digest(), two.manifest.digest());
    // The directory form of the same tree encodes to the same layers too (mtime policy).
    let d = Archive::open(&src).unwrap();
    let three = write_oci_layout(&d, tmp.path().join("l3"), &opts).unwrap();
    assert_eq!(
        one.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
        three.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()
    );
}

#[test]
fn layers_decode_concurrently_from_plain_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_archive_dir(&src, Shape::ManySmall, 11);
    let archive = Archive::open(&src).unwrap();
    let compression = Compression::default();
    let blobs: Vec<(Vec<u8>, ExpectedLayer)> = plan_layers(&archive, 3)
        .iter()
        .map(|p| {
            let mut buf = Vec::new();
            let d = encode_layer(&archive, p, &compression, &mut buf).unwrap();
            assert_eq!(d.size, buf.len() as u64);
            (buf, ExpectedLayer::from(&d))
        })
        .collect();
    let dest = tmp.path().join("out");
    let staging = Staging::new(&dest).unwrap();
    std::thread::scope(|s| {
        for (bytes, exp) in &blobs {
            let staging = &staging;
            s.spawn(move || unpack_layer(bytes.as_slice(), exp, staging).unwrap());
        }
    });
    staging.commit().unwrap();
    assert_eq!(snapshot(&dest), snapshot(&src));
}

#[test]
fn metadata_and_annotations_from_a_crio_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_archive_dir(&src, Shape::DominantPages, 5);
    let archive = Archive::open(&src).unwrap();
    let m = archive.metadata();
    assert_eq!(m.container_name.as_deref(), Some("counter"));
    assert_eq!(m.pod_name.as_deref(), Some("counter-0"));
    assert_eq!(m.namespace.as_deref(), Some("default"));
    assert_eq!(m.engine.as_deref(), Some("CRI-O"));
    assert_eq!(m.runtime.as_deref(), Some("runc"));
    assert_eq!(m.criu_version.as_deref(), Some("4.2.1"));
    assert_eq!(m.rootfs_image_ref.as_deref(), Some("sha256:aaaa"));
    assert_eq!(m.checkpointed_at.as_deref(), Some("2026-11-28T23:59:00Z"));
    assert_eq!(m.memory_size, 2 << 20);
    assert!(m.has_rootfs_diff);
    assert_eq!(m.total_size, archive.total_size());
    assert_eq!(
        m.files.len(),
        archive.entries().iter().filter(|e| e.is_file()).count()
    );

    let image =
        write_oci_layout(&archive, tmp.path().join("l"), &EncodeOptions::default()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
    let ma = &manifest["annotations"];
    assert_eq!(ma[annotations::CRIO_CHECKPOINT_NAME], "counter");
    assert_eq!(ma[annotations::CRIO_CRIU_VERSION], "4.2.1");
    assert_eq!(
        ma[annotations::CRIO_ROOTFS_IMAGE_NAME],
        "docker.io/library/busybox:latest"
    );
    let index: serde_json::Value = serde_json::from_slice(&image.index.bytes).unwrap();
    assert_eq!(
        index["annotations"][annotations::CRIU_CONTAINER_NAME],
        "counter"
    );
    assert_eq!(
        index["annotations"][annotations::CRIU_POD_NAMESPACE],
        "default"
    );
    assert_eq!(index["manifests"][0]["digest"], image.manifest.digest());
    assert_eq!(
        index["manifests"][0]["annotations"][annotations::OCI_REF_NAME],
        "latest"
    );
    let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
    let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    assert_ne!(image.layers[0].digest, image.layers[0].diff_id);
}

#[test]
fn extract_unpacks_a_tar_archive_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_archive_dir(&src, Shape::Symlinks, 9);
    let tar = tmp.path().join("c.tar");
    tar_dir(&src, &tar);
    let out = tmp.path().join("x");
    Archive::open(&tar).unwrap().extract(&out).unwrap();
    assert_eq!(snapshot(&out), snapshot(&src));
    // The destination must not exist beforehand.
    assert!(Archive::open(&tar).unwrap().extract(&out).is_err());
}

#[test]
fn split_layout_spreads_the_dominant_file_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_archive_dir(&src, Shape::DominantPages, 13);
    let tar = tmp.path().join("c.tar");
    tar_dir(&src, &tar);
    let want = snapshot(&src);
    for (form, path) in [("dir", &src), ("tar", &tar)] {
        let archive = Archive::open(path).unwrap();
        for layers in [2usize, 3, 4] {
            let case = format!("{form}/{layers}");
            let plans = plan_split_layers(&archive, layers);
            assert_eq!(plans.len(), layers, "{case}");
            // The page image is cut into one part per layer; layers are near-equal.
            let pages_parts: usize = plans.iter().map(|p| p.parts.len()).sum();
            assert_eq!(pages_parts, layers, "{case}");
            let max = plans.iter().map(|p| p.size).max().unwrap();
            let min = plans.iter().map(|p| p.size).min().unwrap();
            let small: u64 = archive
                .entries()
                .iter()
                .filter(|e| e.path != "checkpoint/pages-1.img")
                .map(|e| e.size)
                .sum();
            assert!(max - min <= small + layers as u64, "{case}: {min}..{max}");
            let layout = tmp.path().join(format!("split-{form}-{layers}"));
            let image = write_oci_layout(
                &archive,
                &layout,
                &EncodeOptions {
                    layers,
                    split: true,
                    ..EncodeOptions::default()
                },
            )
            .unwrap();
            let manifest: serde_json::Value =
                serde_json::from_slice(&image.manifest.bytes).unwrap();
            assert_eq!(
                manifest["annotations"][annotations::MS2M_SPLIT],
                "v1",
                "{case}"
            );
            assert!(
                image
                    .layers
                    .iter()
                    .all(|l| l.annotations.contains_key(annotations::MS2M_SPLIT_PARTS)),
                "{case}"
            );
            let out = tmp.path().join(format!("split-out-{form}-{layers}"));
            read_oci_layout(&layout, &out).unwrap();
            assert_eq!(snapshot(&out), want, "{case}: reassembled tree differs");
        }
    }
    // The whole-file layout of the same archive carries no split marker.
    let archive = Archive::open(&src).unwrap();
    let image = write_oci_layout(
        &archive,
        tmp.path().join("whole"),
        &EncodeOptions::default(),
    )
    .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
    assert!(
        manifest["annotations"]
            .get(annotations::MS2M_SPLIT)
            .is_none()
    );
}
