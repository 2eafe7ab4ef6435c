//! The checkpoint archive model: a validated list of entries over a tar file or a
//! directory, with random access to each file's bytes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::error::{Error, IoContext, Result};
use crate::metadata::CheckpointMetadata;
use crate::tar_scan;
use crate::validate::{self, Limits};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; the target is relative and stays inside the tree.
    Symlink { target: String },
    /// A hard link to an earlier regular file (normalised archive path).
    Hardlink { target: String },
}

/// One validated archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, normalised, `/`-separated path.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including set-uid/set-gid/sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Size of the data in bytes (0 for everything but regular files).
    pub size: u64,
    pub(crate) location: Location,
}

impl Entry {
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == EntryKind::File
    }
}

/// Where an entry's bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// Offset of the data inside the tar file.
    Tar { offset: u64 },
    /// A file below the directory root, identified so a swap after validation is caught.
    Dir { dev: u64, ino: u64 },
    /// Directories, links: no bytes.
    None,
}

/// Where the archive comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveSource {
    /// An uncompressed tar file.
    Tar(PathBuf),
    /// A directory in the same layout.
    Dir(PathBuf),
}

/// A validated checkpoint archive.
#[derive(Debug, Clone)]
pub struct Archive {
    source: ArchiveSource,
    entries: Vec<Entry>,
    by_path: HashMap<String, usize>,
    metadata: CheckpointMetadata,
    limits: Limits,
}

impl Archive {
    /// Opens and validates a checkpoint archive (a tar file or a directory) with the
    /// default [`Limits`].
    pub fn open(path: impl AsRef<Path>) -> Result<Archive> {
        Self::open_with_limits(path, &Limits::default())
    }

    /// Opens and validates a checkpoint archive with explicit limits.
    pub fn open_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<Archive> {
        let path = path.as_ref();
        let meta = fs::metadata(path).ctx(|| format!("open {}", path.display()))?;
        let (source, entries) = if meta.is_dir() {
            (ArchiveSource::Dir(path.to_owned()), scan_dir(path, limits)?)
        } else {
            let mut file = File::open(path).ctx(|| format!("open {}", path.display()))?;
            (
                ArchiveSource::Tar(path.to_owned()),
                scan_tar(&mut file, limits)?,
            )
        };
        Self::from_entries(source, entries, limits)
    }

    fn from_entries(
        source: ArchiveSource,
        entries: Vec<Entry>,
        limits: &Limits,
    ) -> Result<Archive> {
        let by_path = check_tree(&entries)?;
        let mut archive = Archive {
            source,
            entries,
            by_path,
            metadata: CheckpointMetadata::default(),
            limits: limits.clone(),
        };
        if archive.entry("deleted.files").is_some_and(Entry::is_file) {
            let content = archive.read_small("deleted.files")?;
            validate::check_deleted_files("deleted.files", &content)?;
        }
        archive.metadata = CheckpointMetadata::from_archive(&archive);
        debug!(
            entries = archive.entries.len(),
            total_size = archive.total_size(),
            "checkpoint archive validated"
        );
        Ok(archive)
    }

    /// Where the archive was read from.
    pub fn source(&self) -> &ArchiveSource {
        &self.source
    }

    /// All entries, in archive order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry with this normalised path.
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.by_path.get(path).map(|i| &self.entries[*i])
    }

    /// Sum of the sizes of all regular files.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.is_file())
            .map(|e| e.size)
            .sum()
    }

    /// What the archive says about the checkpoint.
    pub fn metadata(&self) -> &CheckpointMetadata {
        &self.metadata
    }

    /// The limits this archive was validated with (the decoder reuses them).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Reads one regular file's bytes. Each call opens its own file handle, so several
    /// threads can read different entries of the same tar at once.
    pub fn open_entry(&self, entry: &Entry) -> Result<EntryReader> {
        self.open_entry_range(entry, 0, entry.size)
    }

    /// Reads `length` bytes of a regular file from `offset` (the split layout's parts).
    pub fn open_entry_range(&self, entry: &Entry, start: u64, length: u64) -> Result<EntryReader> {
        if !entry.is_file() {
            return Err(Error::malformed(&entry.path, "not a regular file"));
        }
        if start.checked_add(length).is_none_or(|end| end > entry.size) {
            return Err(Error::malformed(
                &entry.path,
                "range beyond the end of the file",
            ));
        }
        let mut file = match (&self.source, &entry.location) {
            (ArchiveSource::Tar(tar), Location::Tar { offset }) => {
                let mut f = File::open(tar).ctx(|| format!("open {}", tar.display()))?;
                f.seek(SeekFrom::Start(*offset))
                    .ctx(|| format!("seek to `{}` in {}", entry.path, tar.display()))?;
                f
            }
            (ArchiveSource::Dir(root), Location::Dir { dev, ino }) => {
                let p = root.join(&entry.path);
                let f = File::open(&p).ctx(|| format!("open {}", p.display()))?;
                let m = f.metadata().ctx(|| format!("stat {}", p.display()))?;
                if m.dev() != *dev || m.ino() != *ino || !m.is_file() {
                    return Err(Error::hostile(
                        &entry.path,
                        "file was replaced after the archive was validated",
                    ));
                }
                f
            }
            _ => return Err(Error::malformed(&entry.path, "entry has no data location")),
        };
        file.seek(SeekFrom::Current(start as i64))
            .ctx(|| format!("seek in `{}`", entry.path))?;
        Ok(EntryReader {
            inner: file.take(length),
            path: entry.path.clone(),
            remaining: length,
        })
    }

    /// Reads a small regular file (metadata) fully, within the metadata size limit.
    pub fn read_small(&self, path: &str) -> Result<Vec<u8>> {
        let entry = self
            .entry(path)
            .ok_or_else(|| Error::malformed(path, "no such entry"))?;
        if entry.size > self.limits.max_metadata_file {
            return Err(Error::limit(
                path,
                format!(
                    "{} bytes, limit {} for metadata files",
                    entry.size, self.limits.max_metadata_file
                ),
            ));
        }
        let mut buf = Vec::with_capacity(entry.size as usize);
        self.open_entry(entry)?
            .read_to_end(&mut buf)
            .ctx(|| format!("read `{path}`"))?;
        Ok(buf)
    }

    /// Reads at most `max` bytes from the start of a regular file.
    pub(crate) fn read_head(&self, path: &str, max: u64) -> Option<Vec<u8>> {
        let entry = self.entry(path).filter(|e| e.is_file())?;
        let mut buf = Vec::new();
        self.open_entry(entry)
            .ok()?
            .take(max)
            .read_to_end(&mut buf)
            .ok()?;
        Some(buf)
    }

    /// Unpacks the whole archive into `dest` (which must not exist) with the decoder's
    /// safety rules: written into a sibling staging directory, renamed at the end.
    pub fn extract(&self, dest: impl AsRef<Path>) -> Result<()> {
        let staging = crate::staging::Staging::new(dest.as_ref())?;
        for entry in &self.entries {
            staging.write_archive_entry(self, entry)?;
        }
        staging.commit()?;
        Ok(())
    }
}

/// Reader over one file of an archive. Fails (rather than returning a short read) if the
/// file is shorter than the archive said, so a truncated source never yields a
/// well-formed but wrong tar stream.
pub struct EntryReader {
    inner: io::Take<File>,
    path: String,
    remaining: u64,
}

impl Read for EntryReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "`{}` is {} bytes shorter than declared",
                    self.path, self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Validates a tar stream and lists its entries. Exposed for fuzzing and for callers
/// that only want to check an archive.
pub fn scan_tar<R: Read + Seek>(reader: &mut R, limits: &Limits) -> Result<Vec<Entry>> {
    let start = reader.stream_position().ctx(|| "tar: position".into())?;
    tar_scan::prescan(reader, limits)?;
    reader
        .seek(SeekFrom::Start(start))
        .ctx(|| "tar: rewind".into())?;
    let mut ar = tar::Archive::new(reader);
    let mut entries: Vec<Entry> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let iter = ar.entries_with_seek().ctx(|| "tar: read entries".into())?;
    for (n, item) in iter.enumerate() {
        let entry = item.map_err(|e| Error::malformed(format!("<entry #{n}>"), e.to_string()))?;
        if entries.len() >= limits.max_entries {
            return Err(Error::limit(
                format!("<entry #{n}>"),
                format!("more than {} entries", limits.max_entries),
            ));
        }
        let header = entry.header();
        let raw_path = entry.path_bytes();
        let ty = header.entry_type();
        if ty.is_pax_global_extensions() {
            continue;
        }
        let path = match validate::normalize_path(&raw_path, limits)? {
            Some(p) => p,
            None if ty.is_dir() => continue,
            None => {
                return Err(Error::hostile(
                    String::from_utf8_lossy(&raw_path),
                    "the archive root is not a directory",
                ));
            }
        };
        let mode = header
            .mode()
            .map_err(|e| Error::malformed(&path, format!("mode: {e}")))?
            & 0o7777;
        let uid = header
            .uid()
            .map_err(|e| Error::malformed(&path, format!("uid: {e}")))?;
        let gid = header
            .gid()
            .map_err(|e| Error::malformed(&path, format!("gid: {e}")))?;
        let (kind, size, location) = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => (
                EntryKind::File,
                entry.size(),
                Location::Tar {
                    offset: entry.raw_file_position(),
                },
            ),
            tar::EntryType::Directory => (EntryKind::Dir, 0, Location::None),
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::malformed(&path, "symlink without target"))?;
                let target = validate::check_symlink_target(&path, &target, limits)?;
                (EntryKind::Symlink { target }, 0, Location::None)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::malformed(&path, "hard link without target"))?;
                let target = validate::normalize_path(&target, limits)
                    .map_err(|e| Error::hostile(&path, format!("hard link target: {e}")))?
                    .ok_or_else(|| Error::hostile(&path, "hard link to the archive root"))?;
                match seen.get(&target).map(|i| &entries[*i].kind) {
                    Some(EntryKind::File) => {}
                    _ => {
                        return Err(Error::hostile(
                            &path,
                            format!("hard link target `{target}` is not an earlier regular file"),
                        ));
                    }
                }
                (EntryKind::Hardlink { target }, 0, Location::None)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(Error::hostile(&path, "device node"));
            }
            tar::EntryType::Fifo => return Err(Error::hostile(&path, "fifo")),
            tar::EntryType::GNUSparse => {
                return Err(Error::hostile(&path, "GNU sparse file (unsupported)"));
            }
            other => {
                return Err(Error::hostile(
                    &path,
                    format!("unsupported entry type {:?}", other.as_byte() as char),
                ));
            }
        };
        if seen.insert(path.clone(), entries.len()).is_some() {
            return Err(Error::hostile(&path, "duplicate entry"));
        }
        entries.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            location,
        });
    }
    Ok(entries)
}

/// Walks a directory archive without following symlinks.
fn scan_dir(root: &Path, limits: &Limits) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    // Explicit stack: a hostile tree's depth must not become our recursion depth.
    let mut stack: Vec<String> = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        let mut names: Vec<_> = fs::read_dir(&dir)
            .ctx(|| format!("read dir {}", dir.display()))?
            .map(|r| r.map(|d| d.file_name()))
            .collect::<io::Result<_>>()
            .ctx(|| format!("read dir {}", dir.display()))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let name_bytes = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str());
            let mut raw = rel.as_bytes().to_vec();
            if !raw.is_empty() {
                raw.push(b'/');
            }
            raw.extend_from_slice(name_bytes);
            let Some(path) = validate::normalize_path(&raw, limits)? else {
                continue;
            };
            if entries.len() >= limits.max_entries {
                return Err(Error::limit(
                    &path,
                    format!("more than {} entries", limits.max_entries),
                ));
            }
            let full = root.join(&path);
            let m = fs::symlink_metadata(&full).ctx(|| format!("stat {}", full.display()))?;
            let ft = m.file_type();
            let (kind, size, location) = if ft.is_file() {
                (
                    EntryKind::File,
                    m.len(),
                    Location::Dir {
                        dev: m.dev(),
                        ino: m.ino(),
                    },
                )
            } else if ft.is_dir() {
                subdirs.push(path.clone());
                (EntryKind::Dir, 0, Location::None)
            } else if ft.is_symlink() {
                let target = fs::read_link(&full).ctx(|| format!("readlink {}", full.display()))?;
                let target = validate::check_symlink_target(
                    &path,
                    std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()),
                    limits,
                )?;
                (EntryKind::Symlink { target }, 0, Location::None)
            } else {
                return Err(Error::hostile(&path, "device node, fifo or socket"));
            };
            entries.push(Entry {
                path,
                kind,
                mode: m.mode() & 0o7777,
                uid: u64::from(m.uid()),
                gid: u64::from(m.gid()),
                size,
                location,
            });
        }
        // Reverse so that popping visits subdirectories in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(entries)
}

/// Tree-wide rules: no duplicates, nothing below a non-directory.
fn check_tree(entries: &[Entry]) -> Result<HashMap<String, usize>> {
    let mut by_path = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if by_path.insert(e.path.clone(), i).is_some() {
            return Err(Error::hostile(&e.path, "duplicate entry"));
        }
    }
    for e in entries {
        if e.path.contains(crate::plan::SPLIT_MARKER) {
            return Err(Error::hostile(
                &e.path,
                "name reserved for ms2m split-layout parts",
            ));
        }
        let mut idx = 0;
        while let Some(off) = e.path[idx..].find('/') {
            let parent = &e.path[..idx + off];
            if let Some(p) = by_path.get(parent)
                && entries[*p].kind != EntryKind::Dir
            {
                return Err(Error::hostile(
                    &e.path,
                    format!("parent `{parent}` is not a directory"),
                ));
            }
            idx += off + 1;
        }
    }
    let lookup = |p: &str| match by_path.get(p).map(|i| &entries[*i].kind) {
        None => validate::Looked::Missing,
        Some(EntryKind::Dir) => validate::Looked::Dir,
        Some(EntryKind::Symlink { target }) => validate::Looked::Symlink(target),
        Some(_) => validate::Looked::NotDir,
    };
    for e in entries {
        if let EntryKind::Symlink { target } = &e.kind {
            validate::resolve_symlink_inside(&e.path, target, &lookup)?;
        }
    }
    Ok(by_path)
}
