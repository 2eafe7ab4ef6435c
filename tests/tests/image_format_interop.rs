//! Interop of the encoder's OCI layout with Debian's tools: `skopeo inspect` reads it
//! (and returns our manifest bytes, CRI-O annotation included, where CRI-O reads it),
//! and `umoci unpack` turns it into a rootfs equal to the checkpoint archive.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use ms2m_image_format::{
    Archive, CheckpointImage, Compression, EncodeOptions, ImageOptions, annotations,
    write_oci_layout,
};
use ms2m_tests::env::{require_root, tool};
use ms2m_tests::process::{run, stdout};
use sha2::{Digest, Sha256};

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File {
        mode: u32,
        uid: u32,
        size: u64,
        sha256: String,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let node = if m.file_type().is_symlink() {
                Node::Symlink {
                    target: fs::read_link(&p).unwrap().to_str().unwrap().to_owned(),
                }
            } else if m.is_dir() {
                walk(root, &p, out);
                Node::Dir {
                    mode: m.mode() & 0o7777,
                }
            } else {
                Node::File {
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    size: m.len(),
                    sha256: hex::encode(Sha256::digest(fs::read(&p).unwrap())),
                }
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Deterministic incompressible bytes (sha256 in counter mode).
fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 32);
    let mut i: u64 = 0;
    while v.len() < len {
        let mut h = Sha256::new();
        h.update([seed]);
        h.update(i.to_le_bytes());
        v.extend_from_slice(&h.finalize());
        i += 1;
    }
    v.truncate(len);
    v
}

fn put(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A CRI-O style checkpoint archive with the awkward parts: a dominant page image,
/// many small files, empty dirs, a name longer than 100 bytes, symlinks, odd modes and
/// a non-root owner.
fn build_archive(root: &Path) {
    put(
        root,
        "config.dump",
        br#"{"id":"c0ffee","name":"k8s_counter","rootfsImageName":"docker.io/library/busybox:latest","rootfsImageRef":"sha256:bbbb","runtime":"runc"}"#,
        0o600,
    );
    put(
        root,
        "spec.dump",
        br#"{"annotations":{"io.container.manager":"cri-o","io.kubernetes.cri-o.Metadata":"{\"name\":\"counter\"}","io.kubernetes.pod.name":"counter-0","io.kubernetes.pod.namespace":"team-a"}}"#,
        0o600,
    );
    put(root, "deleted.files", br#"["/tmp/x"]"#, 0o600);
    let mut pages = vec![0u8; 3 << 20];
    for (i, c) in pages.chunks_mut(64 << 10).enumerate() {
        if i % 2 == 0 {
            c.copy_from_slice(&noise(c.len(), i as u8));
        }
    }
    put(root, "checkpoint/pages-1.img", &pages, 0o600);
    for i in 0..40 {
        put(
            root,
            &format!("checkpoint/f{i}.img"),
            &noise(i * 37, 200),
            0o640,
        );
    }
    put(root, "rootfs-diff.tar", &noise(20_000, 9), 0o600);
    let long = format!("volumes/{}/file", "l".repeat(150));
    put(root, &long, b"long", 0o644);
    fs::create_dir_all(root.join("volumes/empty/nested")).unwrap();
    fs::set_permissions(
        root.join("volumes/empty"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    symlink("pages-1.img", root.join("checkpoint/pages-link")).unwrap();
    symlink("../config.dump", root.join("checkpoint/cfg")).unwrap();
    std::os::unix::fs::chown(root.join("checkpoint/f3.img"), Some(1234), Some(4321)).unwrap();
}

fn layout(archive: &Archive, dir: &Path, compression: Compression) -> CheckpointImage {
    write_oci_layout(
        archive,
        dir,
        &EncodeOptions {
            layers: 3,
            compression,
            image: ImageOptions {
                tag: Some("ckpt".into()),
                ..ImageOptions::default()
            },
            ..EncodeOptions::default()
        },
    )
    .expect("write OCI layout")
}

fn skopeo_checks(dir: &Path, image: &CheckpointImage) {
    let skopeo = tool("skopeo", "skopeo");
    let reference = format!("oci:{}:ckpt", dir.display());
    let raw = stdout(Command::new(&skopeo).args(["inspect", "--raw", &reference]));
    assert_eq!(
        raw.as_bytes(),
        image.manifest.bytes.as_slice(),
        "skopeo inspect --raw does not return our manifest"
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["annotations"][annotations::CRIO_CHECKPOINT_NAME],
        "counter",
        "CRI-O reads the checkpoint name from the manifest annotations"
    );
    assert_eq!(
        manifest["annotations"][annotations::CRIO_ROOTFS_IMAGE_NAME],
        "docker.io/library/busybox:latest"
    );
    let info: serde_json::Value =
        serde_json::from_str(&stdout(Command::new(&skopeo).args(["inspect", &reference]))).unwrap();
    let layers: Vec<&str> = info["Layers"]
        .as_array()
        .expect("skopeo inspect lists layers")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, ours);
    assert_eq!(info["Digest"], image.manifest.digest());
    assert_eq!(info["Os"], "linux");
    // The index (what containerd reads) carries the org.criu annotations.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["annotations"][annotations::CRIU_CONTAINER_NAME],
        "counter"
    );
    assert_eq!(
        index["annotations"][annotations::CRIU_POD_NAMESPACE],
        "team-a"
    );
}

fn umoci_unpack(dir: &Path, bundle: &Path) -> std::process::Output {
    Command::new(tool("umoci", "umoci"))
        .args(["unpack", "--image"])
        .arg(format!("{}:ckpt", dir.display()))
        .arg(bundle)
        .output()
        .expect("run umoci")
}

#[test]
fn skopeo_reads_zstd_and_gzip_layouts_and_umoci_unpacks_them() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    build_archive(&src);
    let want = snapshot(&src);
    let tar = tmp.path().join("checkpoint.tar");
    // The kubelet hands us a tar; encode from the tar, compare with the tree.
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let archive = Archive::open(&tar).unwrap();

    // gzip: both tools.
    let gz = tmp.path().join("layout-gzip");
    let image = layout(&archive, &gz, Compression::Gzip { level: 1 });
    skopeo_checks(&gz, &image);
    let bundle = tmp.path().join("bundle-gzip");
    let out = umoci_unpack(&gz, &bundle);
    assert!(
        out.status.success(),
        "umoci unpack (gzip) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        snapshot(&bundle.join("rootfs")),
        want,
        "umoci rootfs (gzip) differs"
    );

    // zstd (our default): skopeo must read it; umoci 0.4 may not know zstd layers.
    let zst = tmp.path().join("layout-zstd");
    let image = layout(&archive, &zst, Compression::default());
    skopeo_checks(&zst, &image);
    let bundle = tmp.path().join("bundle-zstd");
    let out = umoci_unpack(&zst, &bundle);
    if out.status.success() {
        assert_eq!(
            snapshot(&bundle.join("rootfs")),
            want,
            "umoci rootfs (zstd) differs"
        );
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("umoci 0.4 refuses zstd layers (expected): {err}");
        // Only an unsupported-media-type refusal is acceptable here.
        assert!(
            err.contains("zstd") || err.contains("media type") || err.contains("mediatype"),
            "umoci failed on the zstd layout for another reason: {err}"
        );
    }
}

#[test]
fn uncompressed_layout_unpacks_with_umoci() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    build_archive(&src);
    let archive = Archive::open(&src).unwrap();
    let dir = tmp.path().join("layout");
    let image = layout(&archive, &dir, Compression::None);
    skopeo_checks(&dir, &image);
    let bundle = tmp.path().join("bundle");
    let out = umoci_unpack(&dir, &bundle);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(&bundle.join("rootfs")), snapshot(&src));
}
