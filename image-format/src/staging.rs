//! The staging directory a checkpoint is unpacked into: every create, open and link
//! goes through [`TreeOps`] (resolved beneath the staging root with `openat2`, never
//! through a symlink; see `beneath.rs`), files are created with `O_EXCL`, directory
//! modes, split-layout completeness and symlink containment are settled at commit, and
//! it is renamed onto the destination only then; dropped uncommitted, it is removed.
//!
//! The lexical rules of `validate.rs` still run first: they give the clearer error for
//! the common hostile names, and containment never rests on one layer of checks alone.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use crate::archive::{Archive, Entry, EntryKind};
use crate::beneath::{Kind, Openat2, TreeOps, escape_reason};
use crate::error::{Error, IoContext, Result};
use crate::plan::parse_part_name;
use crate::validate::{self, Limits};

const COPY_BUF: usize = 1 << 20;

/// One validated entry to write (data comes separately).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item<'a> {
    pub(crate) path: &'a str,
    pub(crate) kind: &'a EntryKind,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
}

impl<'a> Item<'a> {
    fn of(e: &'a Entry, size: u64) -> Self {
        Item {
            path: &e.path,
            kind: &e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Non-directory paths written so far (across layers).
    files: HashSet<String>,
    /// Directory modes/owners, applied at commit (so read-only dirs can be filled).
    dirs: BTreeMap<String, (u32, u64, u64)>,
    /// Files of the split layout being assembled from parts.
    splits: BTreeMap<String, Split>,
    /// Symlinks written so far: each must resolve beneath the root at commit.
    symlinks: Vec<String>,
    entries: usize,
}

/// A file arriving as byte ranges (split layout), written in place with `pwrite`.
#[derive(Debug)]
struct Split {
    total: u64,
    count: u32,
    /// Part index → (offset, length).
    seen: BTreeMap<u32, (u64, u64)>,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// Most parts one file may be cut into.
const MAX_PARTS: u32 = 1 << 16;

/// A temporary directory next to the destination; renamed onto it by [`Staging::commit`],
/// removed when dropped uncommitted.
#[derive(Debug)]
pub struct Staging {
    dest: PathBuf,
    root: PathBuf,
    /// Every file-system operation inside `root`.
    ops: Box<dyn TreeOps>,
    pub(crate) limits: Limits,
    preserve_ownership: bool,
    state: Mutex<State>,
    failed: AtomicBool,
    /// Layers unpacked before their digests were known and not yet confirmed.
    unverified: AtomicUsize,
    chown_warned: AtomicBool,
    committed: bool,
}

impl Staging {
    /// Creates the staging directory beside `dest` (which must not exist yet; its parent
    /// is created if needed).
    pub fn new(dest: impl AsRef<Path>) -> Result<Staging> {
        Self::with_limits(dest, &Limits::default())
    }

    /// Same, with explicit limits.
    pub fn with_limits(dest: impl AsRef<Path>, limits: &Limits) -> Result<Staging> {
        let dest = dest.as_ref().to_owned();
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(Error::Staging {
                path: dest,
                reason: "destination already exists".into(),
            });
        }
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Staging {
                path: dest.clone(),
                reason: "destination has no file name".into(),
            })?
            .to_string_lossy()
            .into_owned();
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        fs::create_dir_all(&parent).ctx(|| format!("create {}", parent.display()))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let root = parent.join(format!(
            ".{name}.ms2m-staging-{}-{nanos}",
            std::process::id()
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .ctx(|| format!("create staging dir {}", root.display()))?;
        let ops = match Openat2::open(&root) {
            Ok(ops) => ops,
            Err(e) => {
                let _ = fs::remove_dir(&root);
                return Err(Error::io(format!("open staging dir {}", root.display()), e));
            }
        };
        Ok(Staging {
            dest,
            root,
            ops: Box::new(ops),
            limits: limits.clone(),
            preserve_ownership: true,
            state: Mutex::new(State::default()),
            failed: AtomicBool::new(false),
            unverified: AtomicUsize::new(0),
            chown_warned: AtomicBool::new(false),
            committed: false,
        })
    }

    /// Whether to `lchown` entries to their recorded uid/gid (default: yes; ignored with
    /// one warning where the process may not).
    pub fn set_preserve_ownership(&mut self, preserve: bool) {
        self.preserve_ownership = preserve;
    }

    /// The staging directory (contents are not final until commit).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Puts another [`TreeOps`] in front (tests: a racing implementation).
    #[cfg(test)]
    pub(crate) fn wrap_ops(&mut self, f: impl FnOnce(Box<dyn TreeOps>) -> Box<dyn TreeOps>) {
        let placeholder: Box<dyn TreeOps> = Box::new(Openat2::open(&self.root).unwrap());
        let ops = std::mem::replace(&mut self.ops, placeholder);
        self.ops = f(ops);
    }

    /// The final destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Applies directory modes and renames the staging directory to the destination.
    /// Refused if any layer failed.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Staging {
                path: self.dest.clone(),
                reason: "a layer failed; refusing to commit".into(),
            });
        }
        let unverified = self.unverified.load(Ordering::SeqCst);
        if unverified > 0 {
            return Err(Error::Staging {
                path: self.dest.clone(),
                reason: format!(
                    "{unverified} layer(s) unpacked but not verified; refusing to commit"
                ),
            });
        }
        let (dirs, splits, symlinks) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let dirs: Vec<(String, (u32, u64, u64))> =
                st.dirs.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (
                dirs,
                std::mem::take(&mut st.splits),
                std::mem::take(&mut st.symlinks),
            )
        };
        // Only now is the tree complete: a link that looked harmless when written can
        // resolve outside through one that came later (`e -> d/../..` before `d -> .`).
        for link in &symlinks {
            self.check_symlink_contained(link)?;
        }
        for (path, split) in &splits {
            let mut next = 0u64;
            for (off, len) in split.seen.values() {
                if *off != next {
                    break;
                }
                next += len;
            }
            if split.seen.len() != split.count as usize || next != split.total {
                return Err(Error::malformed(
                    path,
                    format!(
                        "split file incomplete: {} of {} parts, {next} of {} bytes contiguous",
                        split.seen.len(),
                        split.count,
                        split.total
                    ),
                ));
            }
            let f = self
                .ops
                .open_write(path)
                .map_err(|e| self.op_err(path, "open", e))?;
            self.chown_file(&f, path, split.uid, split.gid)?;
            f.set_permissions(fs::Permissions::from_mode(split.mode & 0o777))
                .ctx(|| format!("chmod {}", self.root.join(path).display()))?;
        }
        // Deepest first, so restricting a parent never blocks its children.
        for (path, (mode, uid, gid)) in dirs.iter().rev() {
            let d = self
                .ops
                .open_dir(path)
                .map_err(|e| self.op_err(path, "open", e))?;
            self.chown_file(&d, path, *uid, *gid)?;
            d.set_permissions(fs::Permissions::from_mode(mode & 0o777))
                .ctx(|| format!("chmod {}", self.root.join(path).display()))?;
        }
        if fs::symlink_metadata(&self.dest).is_ok() {
            return Err(Error::Staging {
                path: self.dest.clone(),
                reason: "destination appeared while unpacking".into(),
            });
        }
        fs::rename(&self.root, &self.dest)
            .ctx(|| format!("rename {} to {}", self.root.display(), self.dest.display()))?;
        self.committed = true;
        debug!(dest = %self.dest.display(), "staging committed");
        Ok(self.dest.clone())
    }

    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn begin_unverified(&self) {
        self.unverified.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn end_unverified(&self) {
        // Never below zero, whatever a caller confirms.
        let _ = self
            .unverified
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// `chown` through an open file or directory (no path, so no symlink to follow).
    fn chown_file(&self, f: &File, entry: &str, uid: u64, gid: u64) -> Result<()> {
        self.chown_with(entry, uid, gid, |u, g| {
            std::os::unix::fs::fchown(f, Some(u), Some(g))
        })
    }

    fn chown_with(
        &self,
        entry: &str,
        uid: u64,
        gid: u64,
        chown: impl FnOnce(u32, u32) -> io::Result<()>,
    ) -> Result<()> {
        if !self.preserve_ownership {
            return Ok(());
        }
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(Error::malformed(entry, "uid/gid out of range"));
        };
        match chown(uid, gid) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                if !self.chown_warned.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, "cannot preserve ownership (not root?); keeping ours");
                }
                Ok(())
            }
            Err(e) => Err(Error::io(
                format!("chown {}", self.root.join(entry).display()),
                e,
            )),
        }
    }

    /// The error for a failed [`TreeOps`] call on `entry`: hostile when the kernel
    /// refused to leave the root or to step through a symlink, I/O otherwise.
    fn op_err(&self, entry: &str, what: &str, e: io::Error) -> Error {
        match escape_reason(&e) {
            Some(reason) => Error::hostile(entry, format!("{what}: the path {reason}")),
            // Duplicates are caught before; this is an implicit parent directory of an
            // earlier entry that this one wants to replace.
            None if e.kind() == io::ErrorKind::AlreadyExists => Error::hostile(
                entry,
                format!("{what}: a directory of an earlier entry is already there"),
            ),
            None => Error::io(format!("{what} {}", self.root.join(entry).display()), e),
        }
    }

    /// A symlink must resolve beneath the root however the links it passes through
    /// are arranged; a dangling one is fine (its resolution stops inside).
    fn check_symlink_contained(&self, link: &str) -> Result<()> {
        match self.ops.resolve_beneath(link) {
            Ok(()) => Ok(()),
            // Resolution stopped inside the tree: at a missing name or at a file the
            // rest of the target would step into.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(())
            }
            Err(e) if escape_reason(&e).is_some() => Err(Error::hostile(
                link,
                "symlink resolves outside the tree (or loops)",
            )),
            Err(e) => Err(self.op_err(link, "resolve", e)),
        }
    }

    /// Makes sure every ancestor of `path` is a real directory inside the staging root,
    /// creating missing ones; never follows a symlink.
    fn ensure_parents(&self, path: &str) -> Result<()> {
        let mut idx = 0;
        while let Some(off) = path[idx..].find('/') {
            let parent = &path[..idx + off];
            let not_dir = || Error::hostile(path, format!("parent `{parent}` is not a directory"));
            match self.ops.kind(parent) {
                Ok(Kind::Dir) => {}
                Ok(_) => return Err(not_dir()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match self.ops.mkdir(parent, 0o755) {
                        Ok(()) => {}
                        // Another layer's thread made it; re-check its type.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            match self.ops.kind(parent) {
                                Ok(Kind::Dir) => {}
                                Ok(_) => return Err(not_dir()),
                                Err(e) => return Err(self.op_err(parent, "stat", e)),
                            }
                        }
                        Err(e) => return Err(self.op_err(parent, "mkdir", e)),
                    }
                }
                Err(e) => return Err(self.op_err(parent, "stat", e)),
            }
            idx += off + 1;
        }
        Ok(())
    }

    /// Writes one validated entry. `data` yields exactly `size` bytes for files.
    pub(crate) fn write(&self, item: Item<'_>, data: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
        let Item {
            path,
            kind,
            mode,
            uid,
            gid,
            size,
        } = item;
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Staging {
                path: self.dest.clone(),
                reason: "an earlier layer failed".into(),
            });
        }
        if *kind == EntryKind::File
            && let Some((base, index, count, offset, total)) = parse_part_name(path)
        {
            return self.write_part(item, base, (index, count, offset, total), data, buf);
        }
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.entries += 1;
            if st.entries > self.limits.max_entries {
                return Err(Error::limit(
                    path,
                    format!("more than {} entries", self.limits.max_entries),
                ));
            }
            match kind {
                EntryKind::Dir => {
                    if st.files.contains(path) {
                        return Err(Error::hostile(path, "directory over an existing file"));
                    }
                    st.dirs.entry(path.to_owned()).or_insert((mode, uid, gid));
                }
                _ => {
                    if st.dirs.contains_key(path) || !st.files.insert(path.to_owned()) {
                        return Err(Error::hostile(path, "duplicate entry"));
                    }
                }
            }
        }
        self.ensure_parents(path)?;
        let full = self.root.join(path);
        match kind {
            EntryKind::Dir => match self.ops.kind(path) {
                Ok(Kind::Dir) => {}
                Ok(_) => return Err(Error::hostile(path, "directory over an existing file")),
                Err(_) => match self.ops.mkdir(path, 0o755) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        match self.ops.kind(path) {
                            Ok(Kind::Dir) => {}
                            Ok(_) => {
                                return Err(Error::hostile(
                                    path,
                                    "directory over an existing file",
                                ));
                            }
                            Err(e) => return Err(self.op_err(path, "stat", e)),
                        }
                    }
                    Err(e) => return Err(self.op_err(path, "mkdir", e)),
                },
            },
            EntryKind::File => {
                let content_check = path == "deleted.files";
                if content_check && size > self.limits.max_metadata_file {
                    return Err(Error::limit(path, format!("{size} bytes")));
                }
                // O_CREAT|O_EXCL: never overwrites, never follows a symlink.
                let mut file = self
                    .ops
                    .create_file(path, 0o600)
                    .map_err(|e| self.op_err(path, "create", e))?;
                if content_check {
                    let mut content = Vec::with_capacity(size as usize);
                    data.take(size)
                        .read_to_end(&mut content)
                        .ctx(|| format!("read `{path}`"))?;
                    validate::check_deleted_files(path, &content)?;
                    file.write_all(&content)
                        .ctx(|| format!("write {}", full.display()))?;
                } else {
                    copy_exact(data, &mut file, size, buf)
                        .ctx(|| format!("write {}", full.display()))?;
                }
                self.chown_file(&file, path, uid, gid)?;
                // Set-uid/set-gid/sticky dropped: nothing in a checkpoint needs them and
                // a staging dir must not grow privileged binaries.
                file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
                    .ctx(|| format!("chmod {}", full.display()))?;
            }
            EntryKind::Symlink { target } => {
                self.ops
                    .symlink(target, path)
                    .map_err(|e| self.op_err(path, "symlink", e))?;
                self.state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .symlinks
                    .push(path.to_owned());
                // Early refusal when the links written so far already lead out; the
                // complete check is at commit.
                self.check_symlink_contained(path)?;
                self.chown_with(path, uid, gid, |u, g| self.ops.lchown(path, u, g))?;
            }
            EntryKind::Hardlink { target } => {
                // Resolved beneath the root with no symlink at any component, and the
                // target itself must be a regular file (not a symlink to one).
                self.ops.hard_link(target, path).map_err(|e| {
                    if let Some(reason) = escape_reason(&e) {
                        return Error::hostile(
                            path,
                            format!("hard link target `{target}`: the path {reason}"),
                        );
                    }
                    match e.kind() {
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Error::hostile(
                            path,
                            format!("hard link target `{target}` does not exist"),
                        ),
                        io::ErrorKind::InvalidInput => {
                            Error::hostile(path, format!("hard link target `{target}` is {e}"))
                        }
                        _ => Error::io(format!("link {}", full.display()), e),
                    }
                })?;
            }
        }
        Ok(())
    }

    /// One byte range of a split-layout file: registered under the lock (the first part
    /// creates the file at its full size), then written in place with `pwrite`, so parts
    /// from different layers land concurrently. Completeness is checked at commit.
    fn write_part(
        &self,
        item: Item<'_>,
        base: &str,
        (index, count, offset, total): (u32, u32, u64, u64),
        data: &mut dyn Read,
        buf: &mut [u8],
    ) -> Result<()> {
        let path = item.path;
        let length = item.size;
        if count == 0 || count > MAX_PARTS || index >= count {
            return Err(Error::hostile(path, "bad part numbering"));
        }
        if offset.checked_add(length).is_none_or(|end| end > total) {
            return Err(Error::hostile(path, "part beyond the end of its file"));
        }
        let full = self.root.join(base);
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.entries += 1;
            if st.entries > self.limits.max_entries {
                return Err(Error::limit(
                    path,
                    format!("more than {} entries", self.limits.max_entries),
                ));
            }
            if st.dirs.contains_key(base) {
                return Err(Error::hostile(path, "part of a path that is a directory"));
            }
            match st.splits.get_mut(base) {
                Some(sp) => {
                    if sp.total != total || sp.count != count {
                        return Err(Error::hostile(path, "parts disagree on the file's size"));
                    }
                    if sp.seen.insert(index, (offset, length)).is_some() {
                        return Err(Error::hostile(path, "duplicate part"));
                    }
                }
                None => {
                    if !st.files.insert(base.to_owned()) {
                        return Err(Error::hostile(path, "part of a file that is also an entry"));
                    }
                    self.ensure_parents(base)?;
                    let f = self
                        .ops
                        .create_file(base, 0o600)
                        .map_err(|e| self.op_err(path, "create", e))?;
                    f.set_len(total)
                        .ctx(|| format!("size {}", full.display()))?;
                    st.splits.insert(
                        base.to_owned(),
                        Split {
                            total,
                            count,
                            seen: [(index, (offset, length))].into_iter().collect(),
                            mode: item.mode,
                            uid: item.uid,
                            gid: item.gid,
                        },
                    );
                }
            }
        }
        // Registered above as a split target, so nothing else (no symlink) can be at
        // this path: opening without O_CREAT only ever finds the file we created.
        let file = self
            .ops
            .open_write(base)
            .map_err(|e| self.op_err(path, "open", e))?;
        let mut at = offset;
        let mut left = length;
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            let n = match fill(data, &mut buf[..want]) {
                Ok(0) => {
                    return Err(Error::io(
                        format!("read `{path}`"),
                        io::Error::new(io::ErrorKind::UnexpectedEof, "layer ended inside a part"),
                    ));
                }
                Ok(n) => n,
                Err(e) => return Err(Error::io(format!("read `{path}`"), e)),
            };
            file.write_all_at(&buf[..n], at)
                .ctx(|| format!("write {}", full.display()))?;
            at += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    /// Used by [`Archive::extract`].
    pub(crate) fn write_archive_entry(&self, archive: &Archive, entry: &Entry) -> Result<()> {
        let mut buf = vec![0u8; if entry.size > 0 { COPY_BUF } else { 0 }];
        let r = if entry.is_file() {
            let mut reader = archive.open_entry(entry)?;
            self.write(Item::of(entry, entry.size), &mut reader, &mut buf)
        } else {
            self.write(Item::of(entry, 0), &mut io::empty(), &mut buf)
        };
        if r.is_err() {
            self.fail();
        }
        r
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = fs::remove_dir_all(&self.root)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.root.display(), error = %e, "cannot remove staging dir");
        }
    }
}

fn copy_exact(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    size: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut left = size;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = match fill(src, &mut buf[..want])? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "layer ended inside a file",
                ));
            }
            n => n,
        };
        dst.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads until `buf` is full or the source ends: decompressors and network chunks hand
/// out a few hundred KiB at a time, and one write per full buffer halves the syscalls.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beneath::Kind;
    use std::os::unix::fs::MetadataExt;

    /// Swaps the directory `sub` for a symlink to `outside` just before the file at
    /// `trigger` is created or linked: what another writer could do between a
    /// check and a use.
    #[derive(Debug)]
    struct Racing {
        inner: Box<dyn TreeOps>,
        root: PathBuf,
        outside: PathBuf,
        trigger: &'static str,
    }

    impl Racing {
        fn race(&self, rel: &str) {
            if rel == self.trigger && !self.root.join("moved").exists() {
                fs::rename(self.root.join("sub"), self.root.join("moved")).unwrap();
                std::os::unix::fs::symlink(&self.outside, self.root.join("sub")).unwrap();
            }
        }
    }

    impl TreeOps for Racing {
        fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
            self.inner.mkdir(rel, mode)
        }
        fn create_file(&self, rel: &str, mode: u32) -> io::Result<File> {
            self.race(rel);
            self.inner.create_file(rel, mode)
        }
        fn open_write(&self, rel: &str) -> io::Result<File> {
            self.inner.open_write(rel)
        }
        fn open_dir(&self, rel: &str) -> io::Result<File> {
            self.inner.open_dir(rel)
        }
        fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
            self.inner.symlink(target, rel)
        }
        fn hard_link(&self, target: &str, rel: &str) -> io::Result<()> {
            self.race(rel);
            self.inner.hard_link(target, rel)
        }
        fn kind(&self, rel: &str) -> io::Result<Kind> {
            self.inner.kind(rel)
        }
        fn lchown(&self, rel: &str, uid: u32, gid: u32) -> io::Result<()> {
            self.inner.lchown(rel, uid, gid)
        }
        fn resolve_beneath(&self, rel: &str) -> io::Result<()> {
            self.inner.resolve_beneath(rel)
        }
    }

    fn archive(t: &Path) -> Archive {
        let src = t.join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/a"), "a").unwrap();
        fs::write(src.join("sub/b"), "b").unwrap();
        fs::hard_link(src.join("sub/a"), src.join("sub/h")).unwrap();
        Archive::open(&src).unwrap()
    }

    /// A directory swapped for a symlink after its parent check passed still cannot be
    /// written or linked through: the kernel refuses the symlink when the file is
    /// created, and nothing lands outside.
    #[test]
    fn a_directory_swapped_for_a_symlink_mid_unpack_is_not_followed() {
        for trigger in ["sub/b", "sub/h"] {
            let t = tempfile::tempdir().unwrap();
            let outside = t.path().join("outside");
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("a"), "host").unwrap();
            let ar = archive(t.path());
            let names: Vec<_> = ar.entries().iter().map(|e| e.path.clone()).collect();
            assert!(names.contains(&trigger.to_string()), "{names:?}");
            let mut st = Staging::new(t.path().join("out")).unwrap();
            st.set_preserve_ownership(false);
            let root = st.path().to_owned();
            let out2 = outside.clone();
            st.wrap_ops(move |inner| {
                Box::new(Racing {
                    inner,
                    root,
                    outside: out2,
                    trigger,
                })
            });
            let err = ar
                .entries()
                .iter()
                .try_for_each(|e| st.write_archive_entry(&ar, e))
                .expect_err(trigger);
            assert_eq!(err.entry(), Some(trigger), "{err}");
            assert!(err.to_string().contains("symlink"), "{err}");
            let left: Vec<_> = fs::read_dir(&outside)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from("a")], "{trigger}");
            assert_eq!(fs::metadata(outside.join("a")).unwrap().nlink(), 1);
            assert!(st.commit().is_err());
        }
    }
}
