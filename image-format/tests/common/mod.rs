//! Synthetic checkpoint archives and tree comparison for the integration tests.
#![allow(dead_code)]

pub mod containment;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};

/// What we compare of every path in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        mode: u32,
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

/// Every path below `root` (not following symlinks) with type, mode, size and content hash.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
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
            let bytes = fs::read(&p).unwrap();
            Node::File {
                mode: m.mode() & 0o7777,
                size: m.len(),
                sha256: hex::encode(Sha256::digest(&bytes)),
            }
        };
        out.insert(rel, node);
    }
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Alternating random / zero blocks, like the benchmark's page image.
pub fn page_bytes(rng: &mut StdRng, size: usize, block: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    for (i, chunk) in v.chunks_mut(block).enumerate() {
        if i % 2 == 0 {
            rng.fill_bytes(chunk);
        }
    }
    v
}

/// The small files every CRI-O style archive has.
fn crio_metadata(root: &Path) {
    write(
        root,
        "config.dump",
        br#"{"id":"0123456789abcdef","name":"k8s_counter_counter-0_default_uid_0","rootfsImage":"docker.io/library/busybox:latest","rootfsImageRef":"sha256:aaaa","rootfsImageName":"docker.io/library/busybox:latest","runtime":"runc","createdTime":"2026-11-28T23:00:00Z","checkpointedTime":"2026-11-28T23:59:00Z"}"#,
        0o600,
    );
    write(
        root,
        "spec.dump",
        br#"{"ociVersion":"1.0.2","annotations":{"io.container.manager":"cri-o","io.kubernetes.cri-o.Metadata":"{\"name\":\"counter\"}","io.kubernetes.pod.name":"counter-0","io.kubernetes.pod.namespace":"default"}}"#,
        0o600,
    );
    write(root, "status", b"{}", 0o600);
    write(
        root,
        "dump.log",
        b"(00.000000) Version: 4.2.1 (gitid 0)\n(00.000001) done\n",
        0o644,
    );
    write(
        root,
        "deleted.files",
        br#"["/tmp/gone","var/cache/x"]"#,
        0o600,
    );
    write(root, "checkpoint/inventory.img", &[1, 2, 3, 4], 0o600);
    write(root, "checkpoint/pagemap-1.img", &[9u8; 700], 0o600);
}

/// The archive shapes of the round-trip tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    DominantPages,
    ManySmall,
    EmptyDirs,
    SparseZeros,
    Symlinks,
}

pub const SHAPES: [Shape; 5] = [
    Shape::DominantPages,
    Shape::ManySmall,
    Shape::EmptyDirs,
    Shape::SparseZeros,
    Shape::Symlinks,
];

/// Builds a synthetic checkpoint directory of the given shape under `root`.
pub fn build_archive_dir(root: &Path, shape: Shape, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    fs::create_dir_all(root).unwrap();
    crio_metadata(root);
    match shape {
        Shape::DominantPages => {
            let pages = page_bytes(&mut rng, 2 << 20, 64 << 10);
            write(root, "checkpoint/pages-1.img", &pages, 0o600);
            write(root, "checkpoint/core-1.img", &[7u8; 3000], 0o600);
            let diff = page_bytes(&mut rng, 100_000, 4096);
            write(root, "rootfs-diff.tar", &diff, 0o600);
        }
        Shape::ManySmall => {
            for i in 0..300 {
                let len = rng.random_range(0..5000);
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                let mode = [0o600, 0o644, 0o755, 0o640][i % 4];
                write(
                    root,
                    &format!("checkpoint/d{}/f{}.img", i % 7, i),
                    &data,
                    mode,
                );
            }
            // A name longer than the 100-byte tar field.
            let long = format!("volumes/{}/{}", "v".repeat(120), "data-".repeat(30));
            write(root, &long, b"long name", 0o644);
        }
        Shape::EmptyDirs => {
            mkdir(root, "volumes", 0o755);
            mkdir(root, "volumes/empty/nested/deeper", 0o700);
            mkdir(root, "checkpoint/empty", 0o750);
            mkdir(root, "readonly", 0o555);
            write(root, "checkpoint/pages-1.img", &[5u8; 8192], 0o600);
        }
        Shape::SparseZeros => {
            let mut data = vec![0u8; 3 << 20];
            data[1 << 20] = 1;
            data[(3 << 20) - 1] = 2;
            write(root, "checkpoint/pages-1.img", &data, 0o600);
            write(root, "checkpoint/pages-2.img", &vec![0u8; 1 << 20], 0o600);
            write(root, "empty-file", b"", 0o644);
        }
        Shape::Symlinks => {
            write(
                root,
                "checkpoint/pages-1.img",
                &page_bytes(&mut rng, 1 << 20, 4096),
                0o600,
            );
            symlink("pages-1.img", root.join("checkpoint/pages-link.img")).unwrap();
            mkdir(root, "a/b", 0o755);
            symlink("../../config.dump", root.join("a/b/up")).unwrap();
            symlink("b", root.join("a/dirlink")).unwrap();
            symlink("nowhere-but-inside", root.join("dangling")).unwrap();
        }
    }
}

/// Packs a directory into an uncompressed tar (symlinks kept as symlinks), like the
/// kubelet's checkpoint archive.
pub fn tar_dir(dir: &Path, tar_path: &Path) {
    let f = fs::File::create(tar_path).unwrap();
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A hand-made ustar header, so tests can write names the `tar` crate refuses to write.
pub fn raw_header(name: &[u8], typeflag: u8, size: u64, link: &[u8], mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let octal = |v: u64, width: usize| format!("{:0w$o}\0", v, w = width - 1).into_bytes();
    h[100..108].copy_from_slice(&octal(u64::from(mode), 8));
    h[108..116].copy_from_slice(&octal(0, 8));
    h[116..124].copy_from_slice(&octal(0, 8));
    h[124..136].copy_from_slice(&octal(size, 12));
    h[136..148].copy_from_slice(&octal(0, 12));
    h[156] = typeflag;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{:06o}\0 ", sum).as_bytes());
    h
}

/// Raw tar builder for crafted archives.
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

impl RawTar {
    pub fn entry(
        &mut self,
        name: &[u8],
        typeflag: u8,
        data: &[u8],
        link: &[u8],
        mode: u32,
    ) -> &mut Self {
        self.bytes
            .extend_from_slice(&raw_header(name, typeflag, data.len() as u64, link, mode));
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), b'0', data, b"", 0o644)
    }
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name.as_bytes(), b'5', b"", b"", 0o755)
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name.as_bytes(), b'2', b"", target.as_bytes(), 0o777)
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name.as_bytes(), b'1', b"", target.as_bytes(), 0o644)
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let mut v = self.bytes.clone();
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}
