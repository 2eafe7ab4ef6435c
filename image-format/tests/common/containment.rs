//! Hostile trees and the containment oracle, shared by the stable harness
//! (`tests/containment.rs`) and the cargo-fuzz targets (included with `#[path]`), so
//! both generate the same shapes and assert the same property. Depends on `std` and
//! `arbitrary` only.
//!
//! A tree is a short list of entries whose names and link targets come from a small
//! vocabulary (`d`, `e`, `sub`, `.`, `..`, `secret`, ...): small enough that symlink
//! chains, links through links and hard links to earlier symlinks turn up within a few
//! hundred cases, which random bytes almost never produce.
//!
//! The oracle does not trust the code under test: it resolves every symlink itself,
//! one `lstat`/`readlink` at a time, and counts hard links by inode.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Result, Unstructured};

/// Names of the file the attacks aim at, placed next to the destination's parent.
pub const SENTINEL: &str = "secret";

const NAMES: &[&str] = &[
    "d",
    "e",
    "f",
    "sub",
    "sub/x",
    "sub/d",
    "sub/sub",
    "x",
    "pages-1.img",
    SENTINEL,
];
const PARTS: &[&str] = &[
    ".",
    "..",
    "d",
    "e",
    "f",
    "sub",
    "x",
    SENTINEL,
    "etc",
    "pages-1.img",
];

#[derive(Debug, Clone)]
pub enum Node {
    Dir(String),
    File(String),
    Symlink(String, String),
    Hardlink(String, String),
}

#[derive(Debug, Clone)]
pub struct HostileTree(pub Vec<Node>);

fn name(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(u.choose(NAMES)?.to_string())
}

/// A relative path of 1..6 vocabulary components (balanced or not).
fn rel(u: &mut Unstructured<'_>) -> Result<String> {
    let n = u.int_in_range(1..=6)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(*u.choose(PARTS)?);
    }
    Ok(v.join("/"))
}

impl<'a> Arbitrary<'a> for Node {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=9)? {
            0 => Node::Dir(name(u)?),
            1 | 2 => Node::File(name(u)?),
            3..=6 => Node::Symlink(name(u)?, rel(u)?),
            _ => Node::Hardlink(name(u)?, rel(u)?),
        })
    }
}

impl<'a> Arbitrary<'a> for HostileTree {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = u.int_in_range(1..=8)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(Node::arbitrary(u)?);
        }
        Ok(HostileTree(v))
    }
}

/// A ustar header written by hand: the `tar` crate refuses to write `..` names, and
/// writing them is the point.
fn header(name: &str, typeflag: u8, size: usize, link: &str, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    let (name, link) = (name.as_bytes(), link.as_bytes());
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let octal = |v: u64, width: usize| format!("{:0w$o}\0", v, w = width - 1).into_bytes();
    h[100..108].copy_from_slice(&octal(u64::from(mode), 8));
    h[108..116].copy_from_slice(&octal(0, 8));
    h[116..124].copy_from_slice(&octal(0, 8));
    h[124..136].copy_from_slice(&octal(size as u64, 12));
    h[136..148].copy_from_slice(&octal(0, 12));
    h[156] = typeflag;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

impl HostileTree {
    /// The tree as an uncompressed tar layer.
    pub fn to_tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for node in &self.0 {
            let (h, data): ([u8; 512], &[u8]) = match node {
                Node::Dir(n) => (header(n, b'5', 0, "", 0o755), b""),
                Node::File(n) => (header(n, b'0', 4, "", 0o644), b"data"),
                Node::Symlink(n, t) => (header(n, b'2', 0, t, 0o777), b""),
                Node::Hardlink(n, t) => (header(n, b'1', 0, t, 0o644), b""),
            };
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// A scene for one case: `base/secret` (0600, the file attacks aim at) and
/// `base/store/` (the destination's parent).
pub struct Scene {
    pub base: PathBuf,
    pub store: PathBuf,
    sentinel_ino: u64,
}

impl Scene {
    pub fn new(base: &Path) -> std::io::Result<Scene> {
        use std::os::unix::fs::PermissionsExt;
        let store = base.join("store");
        fs::create_dir_all(&store)?;
        let s = base.join(SENTINEL);
        fs::write(&s, "host secret")?;
        fs::set_permissions(&s, fs::Permissions::from_mode(0o600))?;
        let sentinel_ino = fs::metadata(&s)?.ino();
        Ok(Scene {
            base: base.to_owned(),
            store,
            sentinel_ino,
        })
    }

    pub fn dest(&self) -> PathBuf {
        self.store.join("ck")
    }

    /// The property: the sentinel kept its one link, nothing but `store/` (and what is
    /// in it) appeared next to it, and whatever was committed at `dest` is contained.
    pub fn check(&self) -> std::result::Result<(), String> {
        let s = fs::symlink_metadata(self.base.join(SENTINEL)).map_err(|e| e.to_string())?;
        if s.ino() != self.sentinel_ino || s.nlink() != 1 {
            return Err(format!(
                "sentinel touched: ino {} nlink {}",
                s.ino(),
                s.nlink()
            ));
        }
        let mut names: Vec<String> = fs::read_dir(&self.base)
            .map_err(|e| e.to_string())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| e.to_string())?;
        names.sort();
        if names != [SENTINEL, "store"] {
            return Err(format!("entries appeared outside the store: {names:?}"));
        }
        for e in fs::read_dir(&self.store).map_err(|e| e.to_string())? {
            let n = e.map_err(|e| e.to_string())?.file_name();
            if n != "ck" {
                return Err(format!("left behind in the store: {n:?}"));
            }
        }
        if self.dest().exists() {
            check_contained(&self.dest())?;
        }
        Ok(())
    }
}

/// Every symlink under `root` resolves beneath it (or dangles inside it), and every
/// hard-linked file has all its links under `root`.
pub fn check_contained(root: &Path) -> std::result::Result<(), String> {
    let mut inodes: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let r = rel.join(e.file_name());
            let m = fs::symlink_metadata(root.join(&r)).map_err(|e| e.to_string())?;
            if m.file_type().is_symlink() {
                resolve_inside(root, &r)?;
            } else if m.is_dir() {
                stack.push(r);
            } else if m.is_file() {
                let seen = inodes.entry((m.dev(), m.ino())).or_insert((m.nlink(), 0));
                seen.1 += 1;
            } else {
                return Err(format!("{}: not a file, dir or symlink", r.display()));
            }
        }
    }
    for ((_, ino), (nlink, found)) in inodes {
        if nlink != found {
            return Err(format!(
                "inode {ino} has {nlink} links but {found} inside the tree"
            ));
        }
    }
    Ok(())
}

/// Resolves the symlink at `root/link` one component at a time, as the kernel would.
fn resolve_inside(root: &Path, link: &Path) -> std::result::Result<(), String> {
    let mut cur: Vec<String> = link
        .parent()
        .map(|p| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let first = fs::read_link(root.join(link)).map_err(|e| e.to_string())?;
    let mut todo: Vec<String> = first
        .to_string_lossy()
        .split('/')
        .rev()
        .map(str::to_owned)
        .collect();
    if first.is_absolute() {
        return Err(format!("{}: absolute symlink {first:?}", link.display()));
    }
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                if cur.pop().is_none() {
                    return Err(format!("{}: resolves outside the tree", link.display()));
                }
                continue;
            }
            _ => {}
        }
        cur.push(c);
        let p = root.join(cur.join("/"));
        match fs::symlink_metadata(&p) {
            Err(_) => return Ok(()),
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("{}: symlink loop", link.display()));
                }
                let t = fs::read_link(&p).map_err(|e| e.to_string())?;
                if t.is_absolute() {
                    return Err(format!("{}: through an absolute symlink", link.display()));
                }
                cur.pop();
                todo.extend(t.to_string_lossy().split('/').rev().map(str::to_owned));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(()),
        }
    }
    Ok(())
}
