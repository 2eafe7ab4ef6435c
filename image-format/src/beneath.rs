//! File-system operations confined to one directory: every create, open and link the
//! decoder performs on an untrusted tree goes through [`TreeOps`], never through a
//! joined path.
//!
//! Why `openat2(2)` and not lexical checks or `lstat` before each write: a tree that
//! holds symlinks (`d -> .`, `e -> d/d/d/../../..`) can be balanced as text and still
//! resolve to `/`, and any "check, then use the path" leaves a window in which another
//! layer's thread (or anyone with write access to the parent) swaps a directory for a
//! symlink. Here every parent directory is opened with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so the kernel refuses (`EXDEV`, `ELOOP`)
//! to leave the root or to step through any symlink at any component, and the final
//! step (`mkdirat`, `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`, `O_CREAT|O_EXCL`)
//! acts on that pinned directory and never follows a symlink itself.
//!
//! Why nix and not cap-std: cap-std confines resolution but still follows symlinks that
//! stay inside, while a hard link *through* a symlink is exactly what must be refused
//! here; nix was already the workspace's syscall crate, and `openat2` is one call.
//! Kernels older than 5.6 have no `openat2`: unpacking then fails with a clear error
//! instead of falling back to something weaker.
//!
//! The trait is what [`crate::Staging`] holds, so tests can put a racing implementation
//! (one that swaps directories for symlinks between calls) in front of the real one.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

/// What an entry already at a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// Operations on paths relative to one root, none of which may reach outside it.
/// Paths are normalised relative paths (`a/b/c`); anything else is refused.
pub(crate) trait TreeOps: Send + Sync + Debug {
    /// `mkdir`; `AlreadyExists` when something is there.
    fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()>;
    /// A new regular file (`O_CREAT|O_EXCL`), opened for writing.
    fn create_file(&self, rel: &str, mode: u32) -> io::Result<File>;
    /// An existing regular file, opened for writing.
    fn open_write(&self, rel: &str) -> io::Result<File>;
    /// An existing directory, opened read-only (to `fchmod`/`fchown` it).
    fn open_dir(&self, rel: &str) -> io::Result<File>;
    /// A symlink at `rel` holding `target` (which is not resolved).
    fn symlink(&self, target: &str, rel: &str) -> io::Result<()>;
    /// A hard link at `rel` to the regular file at `target`. `InvalidInput` when
    /// `target` is not a regular file (a symlink, a directory).
    fn hard_link(&self, target: &str, rel: &str) -> io::Result<()>;
    /// What is at `rel`, without following a final symlink.
    fn kind(&self, rel: &str) -> io::Result<Kind>;
    /// `lchown` of a symlink (files and directories are chowned through their fd).
    fn lchown(&self, rel: &str, uid: u32, gid: u32) -> io::Result<()>;
    /// Resolves `rel` *following* symlinks, but only beneath the root: `EXDEV` when the
    /// resolution leaves it, `ELOOP` for a loop, `NotFound` for a dangling link.
    fn resolve_beneath(&self, rel: &str) -> io::Result<()>;
}

/// [`TreeOps`] on a directory file descriptor, with `openat2`.
#[derive(Debug)]
pub(crate) struct Openat2 {
    root: OwnedFd,
}

const NO_ESCAPE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_SYMLINKS);

impl Openat2 {
    /// Opens `root` (which must be a real directory, not a symlink to one).
    pub(crate) fn open(root: &Path) -> io::Result<Openat2> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let ops = Openat2 { root: fd };
        // Probe once, so an old kernel is a clear error up front.
        ops.at(".", OFlag::O_PATH | OFlag::O_DIRECTORY, 0, NO_ESCAPE)
            .map_err(|e| {
                if e.raw_os_error() == Some(Errno::ENOSYS as i32) {
                    io::Error::other("openat2(2) is unavailable: Linux >= 5.6 is required")
                } else {
                    e
                }
            })?;
        Ok(ops)
    }

    fn at(&self, rel: &str, flags: OFlag, mode: u32, resolve: ResolveFlag) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(resolve);
        loop {
            match nix::fcntl::openat2(&self.root, rel, how) {
                // The kernel asks to retry when a rename raced with the lookup.
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }

    /// The directory holding `rel`, opened beneath the root without following any
    /// symlink, and the last component.
    fn parent<'a>(&self, rel: &'a str) -> io::Result<(OwnedFd, &'a str)> {
        check_rel(rel)?;
        let (dir, name) = rel.rsplit_once('/').unwrap_or((".", rel));
        // No O_NOFOLLOW: it would turn a final symlink into ENOTDIR, while
        // RESOLVE_NO_SYMLINKS already refuses it (ELOOP) like any other component.
        let fd = self.at(dir, OFlag::O_PATH | OFlag::O_DIRECTORY, 0, NO_ESCAPE)?;
        Ok((fd, name))
    }
}

/// Normalised relative paths only: the contract with the callers, checked again here so
/// containment never rests on them alone.
fn check_rel(rel: &str) -> io::Result<()> {
    let bad = rel.is_empty()
        || rel.starts_with('/')
        || rel.contains('\0')
        || rel.split('/').any(|c| matches!(c, "" | "." | ".."));
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a normalised relative path: {rel:?}"),
        ));
    }
    Ok(())
}

fn kind_of(mode: u32) -> Kind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

impl TreeOps for Openat2 {
    fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(mode)).map_err(io::Error::from)
    }

    fn create_file(&self, rel: &str, mode: u32) -> io::Result<File> {
        check_rel(rel)?;
        let fd = self.at(
            rel,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
            mode,
            NO_ESCAPE,
        )?;
        Ok(File::from(fd))
    }

    fn open_write(&self, rel: &str) -> io::Result<File> {
        check_rel(rel)?;
        let f = File::from(self.at(rel, OFlag::O_WRONLY | OFlag::O_NOFOLLOW, 0, NO_ESCAPE)?);
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(f)
    }

    fn open_dir(&self, rel: &str) -> io::Result<File> {
        check_rel(rel)?;
        let fd = self.at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0, NO_ESCAPE)?;
        Ok(File::from(fd))
    }

    fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        nix::unistd::symlinkat(target, &dir, name).map_err(io::Error::from)
    }

    fn hard_link(&self, target: &str, rel: &str) -> io::Result<()> {
        let (src_dir, src_name) = self.parent(target)?;
        let st = nix::sys::stat::fstatat(&src_dir, src_name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(io::Error::from)?;
        let kind = kind_of(st.st_mode);
        if kind != Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a regular file ({kind:?})").to_lowercase(),
            ));
        }
        let (dst_dir, dst_name) = self.parent(rel)?;
        // No AT_SYMLINK_FOLLOW: even if the name were swapped for a symlink after the
        // stat above, linkat would link the symlink itself, never what it points to.
        nix::unistd::linkat(&src_dir, src_name, &dst_dir, dst_name, AtFlags::empty())
            .map_err(io::Error::from)
    }

    fn kind(&self, rel: &str) -> io::Result<Kind> {
        let (dir, name) = self.parent(rel)?;
        let st = nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(io::Error::from)?;
        Ok(kind_of(st.st_mode))
    }

    fn lchown(&self, rel: &str, uid: u32, gid: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        nix::unistd::fchownat(
            &dir,
            name,
            Some(uid.into()),
            Some(gid.into()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
    }

    fn resolve_beneath(&self, rel: &str) -> io::Result<()> {
        check_rel(rel)?;
        self.at(
            rel,
            OFlag::O_PATH,
            0,
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
        .map(drop)
    }
}

/// Whether an error from [`TreeOps`] means "the path passes through a symlink"
/// (`ELOOP` under `RESOLVE_NO_SYMLINKS`) or "leaves the root" (`EXDEV`).
pub(crate) fn escape_reason(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(c) if c == Errno::ELOOP as i32 => Some("passes through a symlink"),
        Some(c) if c == Errno::EXDEV as i32 => Some("leads outside the tree"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, Openat2) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "host").unwrap();
        let ops = Openat2::open(&root).unwrap();
        (t, root, ops)
    }

    #[test]
    fn nothing_resolves_through_a_symlink() {
        let (t, root, ops) = setup();
        symlink(".", root.join("d")).unwrap();
        symlink("d/d/d/../../..", root.join("e")).unwrap();
        symlink(t.path(), root.join("abs")).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/f"), "x").unwrap();

        for (what, r) in [
            ("link via e", ops.hard_link("e/secret", "stolen")),
            ("link via abs", ops.hard_link("abs/secret", "stolen")),
            ("link via d", ops.hard_link("d/real/f", "stolen")),
            ("link to a symlink", ops.hard_link("e", "stolen")),
            ("create via e", ops.create_file("e/new", 0o600).map(drop)),
            ("mkdir via abs", ops.mkdir("abs/newdir", 0o700)),
            ("symlink via d", ops.symlink("x", "d/l")),
            ("open via e", ops.open_write("e/secret").map(drop)),
            ("dotdot", ops.create_file("../escape", 0o600).map(drop)),
            ("absolute", ops.create_file("/tmp/escape", 0o600).map(drop)),
        ] {
            assert!(r.is_err(), "{what} succeeded");
        }
        assert_eq!(
            std::fs::metadata(t.path().join("secret")).unwrap().nlink(),
            1
        );
        assert!(!t.path().join("new").exists() && !t.path().join("newdir").exists());
        assert!(!t.path().join("escape").exists());
        let e = ops.hard_link("e/secret", "stolen").unwrap_err();
        assert_eq!(escape_reason(&e), Some("passes through a symlink"));
        let e = ops.resolve_beneath("e").unwrap_err();
        assert_eq!(escape_reason(&e), Some("leads outside the tree"));
        assert!(ops.resolve_beneath("d").is_ok());

        // The honest operations work.
        ops.hard_link("real/f", "h").unwrap();
        assert_eq!(std::fs::metadata(root.join("real/f")).unwrap().nlink(), 2);
        ops.mkdir("real/sub", 0o700).unwrap();
        ops.create_file("real/sub/g", 0o600).unwrap();
        assert_eq!(ops.kind("real/sub/g").unwrap(), Kind::File);
        assert_eq!(ops.kind("d").unwrap(), Kind::Symlink);
    }
}
