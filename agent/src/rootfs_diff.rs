//! The container's rootfs changes as a tar (`rootfs-diff.tar`) plus the list of removed
//! paths (`deleted.files`, a JSON array), the way CRI-O records them, and applying them
//! on a copy of the image rootfs at restore.
//!
//! runc containers have a plain directory as rootfs, so the diff is computed against
//! the pristine image directory: an entry is "changed" when its type, mode, owner, size,
//! mtime or link target differs. Applying treats the tar as hostile: absolute paths,
//! `..`, device nodes and deletions that leave the rootfs are refused.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rootfs diff entry {0:?} is not allowed: {1}")]
    Unsafe(String, &'static str),
    #[error("rootfs diff entry {0:?}: {1}")]
    Entry(String, std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiffError + '_ {
    move |source| DiffError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DiffSummary {
    pub changed: Vec<PathBuf>,
    pub deleted: Vec<PathBuf>,
}

impl DiffSummary {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty()
    }
}

fn same(a: &fs::Metadata, b: &fs::Metadata, pa: &Path, pb: &Path) -> bool {
    if a.file_type() != b.file_type()
        || a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
    {
        return false;
    }
    if a.is_dir() {
        return true;
    }
    if a.file_type().is_symlink() {
        return fs::read_link(pa).ok() == fs::read_link(pb).ok();
    }
    a.len() == b.len() && a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec()
}

fn walk(root: &Path) -> Result<BTreeSet<PathBuf>, DiffError> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let r = rel.join(e.file_name());
            if e.file_type().map_err(io(&dir))?.is_dir() {
                stack.push(r.clone());
            }
            out.insert(r);
        }
    }
    Ok(out)
}

/// Write the changes of `rootfs` relative to `image` into `tar_path` and
/// `deleted_path`. Writes nothing and returns an empty summary when nothing changed.
pub fn write_diff(
    image: &Path,
    rootfs: &Path,
    tar_path: &Path,
    deleted_path: &Path,
) -> Result<DiffSummary, DiffError> {
    let img = walk(image)?;
    let cur = walk(rootfs)?;
    let mut summary = DiffSummary::default();
    for r in &cur {
        let pc = rootfs.join(r);
        let mc = fs::symlink_metadata(&pc).map_err(io(&pc))?;
        let pi = image.join(r);
        let unchanged = match fs::symlink_metadata(&pi) {
            Ok(mi) => same(&mc, &mi, &pc, &pi),
            Err(_) => false,
        };
        if !unchanged {
            summary.changed.push(r.clone());
        }
    }
    for r in img.difference(&cur) {
        // A removed directory implies its content: record the top-most path only.
        if !r
            .ancestors()
            .skip(1)
            .any(|a| !a.as_os_str().is_empty() && !cur.contains(a) && img.contains(a))
        {
            summary.deleted.push(r.clone());
        }
    }
    if !summary.changed.is_empty() {
        let f = fs::File::create(tar_path).map_err(io(tar_path))?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        b.follow_symlinks(false);
        for r in &summary.changed {
            let p = rootfs.join(r);
            let m = fs::symlink_metadata(&p).map_err(io(&p))?;
            if m.is_dir() {
                let mut h = tar::Header::new_gnu();
                h.set_metadata(&m);
                h.set_size(0);
                b.append_data(&mut h, r, std::io::empty()).map_err(io(&p))?;
            } else {
                b.append_path_with_name(&p, r).map_err(io(&p))?;
            }
        }
        b.into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .map_err(io(tar_path))?;
    }
    if !summary.deleted.is_empty() {
        let list: Vec<String> = summary
            .deleted
            .iter()
            .map(|p| format!("/{}", p.display()))
            .collect();
        fs::write(deleted_path, serde_json::to_vec(&list).unwrap_or_default())
            .map_err(io(deleted_path))?;
    }
    Ok(summary)
}

/// A relative path without `..`, or an error naming the entry.
fn safe_relative(name: &str) -> Result<PathBuf, DiffError> {
    let p = Path::new(name.trim_start_matches('/'));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return Err(DiffError::Unsafe(name.to_owned(), "path leaves the rootfs")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(DiffError::Unsafe(name.to_owned(), "empty path"));
    }
    Ok(out)
}

/// Refuse a path whose existing parent directories resolve outside `root` (a symlink
/// planted by the diff itself, for instance).
fn inside(root: &Path, rel: &Path, name: &str) -> Result<(), DiffError> {
    let root_c = fs::canonicalize(root).map_err(io(root))?;
    let mut parent = root.join(rel);
    parent.pop();
    while !parent.exists() {
        if !parent.pop() {
            break;
        }
    }
    let pc = fs::canonicalize(&parent).map_err(io(&parent))?;
    if !pc.starts_with(&root_c) {
        return Err(DiffError::Unsafe(
            name.to_owned(),
            "a parent directory leads out of the rootfs",
        ));
    }
    Ok(())
}

/// Apply `rootfs-diff.tar` (if present) and `deleted.files` (if present) onto `rootfs`.
pub fn apply(
    tar_path: Option<&Path>,
    deleted_path: Option<&Path>,
    rootfs: &Path,
) -> Result<(), DiffError> {
    if let Some(dp) = deleted_path {
        let list: Vec<String> =
            serde_json::from_slice(&fs::read(dp).map_err(io(dp))?).map_err(|e| DiffError::Io {
                path: dp.to_owned(),
                source: std::io::Error::other(e),
            })?;
        for name in list {
            let rel = safe_relative(&name)?;
            inside(rootfs, &rel, &name)?;
            let p = rootfs.join(&rel);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p).map_err(io(&p))?,
                Ok(_) => fs::remove_file(&p).map_err(io(&p))?,
                Err(_) => {}
            }
        }
    }
    if let Some(tp) = tar_path {
        let f = fs::File::open(tp).map_err(io(tp))?;
        let mut ar = tar::Archive::new(std::io::BufReader::new(f));
        ar.set_preserve_permissions(true);
        ar.set_preserve_mtime(true);
        ar.set_overwrite(true);
        ar.set_unpack_xattrs(false);
        for e in ar.entries().map_err(io(tp))? {
            let mut e = e.map_err(io(tp))?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let rel = safe_relative(&name)?;
            let et = e.header().entry_type();
            if et.is_block_special() || et.is_character_special() {
                return Err(DiffError::Unsafe(name, "device node"));
            }
            if et.is_hard_link() {
                let target = e
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                safe_relative(&target)?;
            }
            inside(rootfs, &rel, &name)?;
            let ok = e
                .unpack_in(rootfs)
                .map_err(|err| DiffError::Entry(name.clone(), err))?;
            if !ok {
                return Err(DiffError::Unsafe(name, "path leaves the rootfs"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::create_dir_all(dir.join("var/lib")).unwrap();
        fs::write(dir.join("etc/conf"), "a").unwrap();
        fs::write(dir.join("var/lib/db"), "b").unwrap();
        std::os::unix::fs::symlink("conf", dir.join("etc/link")).unwrap();
    }

    fn copy(src: &Path, dst: &Path) {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(src)
            .arg(dst)
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn diff_then_apply_reproduces_the_rootfs() {
        let t = tempfile::tempdir().unwrap();
        let image = t.path().join("image");
        let rootfs = t.path().join("rootfs");
        tree(&image);
        copy(&image, &rootfs);
        fs::write(rootfs.join("count"), "42\n").unwrap();
        fs::write(rootfs.join("etc/conf"), "changed").unwrap();
        fs::remove_dir_all(rootfs.join("var/lib")).unwrap();
        let tarp = t.path().join("rootfs-diff.tar");
        let delp = t.path().join("deleted.files");
        let s = write_diff(&image, &rootfs, &tarp, &delp).unwrap();
        assert!(s.changed.contains(&PathBuf::from("count")));
        assert!(s.changed.contains(&PathBuf::from("etc/conf")));
        assert!(!s.changed.contains(&PathBuf::from("etc/link")));
        assert_eq!(s.deleted, vec![PathBuf::from("var/lib")]);

        let target = t.path().join("target");
        copy(&image, &target);
        apply(Some(&tarp), Some(&delp), &target).unwrap();
        assert_eq!(fs::read_to_string(target.join("count")).unwrap(), "42\n");
        assert_eq!(
            fs::read_to_string(target.join("etc/conf")).unwrap(),
            "changed"
        );
        assert!(!target.join("var/lib").exists());
        assert!(target.join("var").exists());
    }

    #[test]
    fn unchanged_rootfs_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let image = t.path().join("image");
        let rootfs = t.path().join("rootfs");
        tree(&image);
        copy(&image, &rootfs);
        let tarp = t.path().join("d.tar");
        let s = write_diff(&image, &rootfs, &tarp, &t.path().join("del")).unwrap();
        assert!(s.is_empty());
        assert!(!tarp.exists());
    }

    #[test]
    fn hostile_entries_are_refused_with_their_name() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let delp = t.path().join("deleted.files");
        fs::write(&delp, r#"["/../../etc/passwd"]"#).unwrap();
        let e = apply(None, Some(&delp), &rootfs).unwrap_err();
        assert!(e.to_string().contains("../../etc/passwd"), "{e}");

        // A symlink to outside followed by a file "through" it.
        let tarp = t.path().join("evil.tar");
        {
            let mut b = tar::Builder::new(fs::File::create(&tarp).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "esc", t.path()).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            b.append_data(&mut h, "esc/pwned", &b"x"[..]).unwrap();
            b.finish().unwrap();
        }
        let e = apply(Some(&tarp), None, &rootfs).unwrap_err();
        assert!(e.to_string().contains("esc/pwned"), "{e}");
        assert!(!t.path().join("pwned").exists());
    }

    /// The symlink chain of issue 13 in a rootfs diff: `d -> .`, `e -> d/d/../..`
    /// (balanced as text, resolving to the rootfs's parent) and a hard link
    /// `stolen -> e/secret`: refused, and the 0600 file next to the rootfs keeps its
    /// single link. tar's `unpack_in` canonicalizes every parent and hard-link source
    /// (following symlinks) before using it, and restore applies the diff alone, on a
    /// fresh copy in a 0700 bundle, so nothing can swap a path between check and use.
    #[test]
    fn symlink_chains_cannot_link_a_file_outside_the_rootfs() {
        use std::os::unix::fs::PermissionsExt;
        fn header(name: &str, typeflag: u8, link: &str) -> [u8; 512] {
            let mut h = tar::Header::new_ustar();
            h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
            h.as_mut_bytes()[157..157 + link.len()].copy_from_slice(link.as_bytes());
            h.set_mode(0o777);
            h.set_size(0);
            h.set_entry_type(tar::EntryType::new(typeflag));
            h.set_cksum();
            *h.as_bytes()
        }
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        fs::write(&secret, "host").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let rootfs = t.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let tarp = t.path().join("chain.tar");
        let mut bytes = Vec::new();
        for h in [
            header("d", b'2', "."),
            header("e", b'2', "d/d/../.."),
            header("stolen", b'1', "e/secret"),
        ] {
            bytes.extend_from_slice(&h);
        }
        bytes.extend_from_slice(&[0u8; 1024]);
        fs::write(&tarp, &bytes).unwrap();
        let e = apply(Some(&tarp), None, &rootfs).unwrap_err();
        assert!(e.to_string().contains("\"stolen\""), "{e}");
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
        assert!(!rootfs.join("stolen").exists());
    }
}

/// A diff is peer input: a checkpoint from another node. The #13 attack on layers (a
/// symlink the archive plants, then a hard link through it) must not work here either.
#[cfg(test)]
mod hostile {
    use super::*;

    #[test]
    fn a_hard_link_through_a_planted_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let secret_dir = t.path().join("host");
        fs::create_dir_all(&secret_dir).unwrap();
        fs::write(secret_dir.join("secret"), "host secret").unwrap();
        let tarp = t.path().join("rootfs-diff.tar");
        {
            let mut b = tar::Builder::new(fs::File::create(&tarp).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "d", &secret_dir).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            h.set_mode(0o644);
            b.append_link(&mut h, "stolen", "d/secret").unwrap();
            b.finish().unwrap();
        }
        let err = apply(Some(&tarp), None, &rootfs).unwrap_err();
        // tar's own error chain says why: the link source resolves outside the rootfs.
        let why = format!("{err:?}");
        assert!(err.to_string().contains("\"stolen\""), "{err}");
        assert!(why.contains("outside of destination"), "{why}");
        assert!(
            fs::symlink_metadata(rootfs.join("stolen")).is_err(),
            "the host file was linked into the rootfs"
        );
    }
}
