//! Sharding an archive into whole-file layers balanced by size.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};

use crate::archive::{Archive, EntryKind};

/// The entries one layer carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LayerPlan {
    /// Position of the layer in the image (0 = bottom).
    pub index: usize,
    /// Indices into [`Archive::entries`], parents before children.
    pub entries: Vec<usize>,
    /// Byte ranges of large files (split layout only; empty for whole-file layers).
    pub parts: Vec<FilePart>,
    /// Sum of the regular-file bytes in this layer.
    pub size: u64,
}

/// One byte range of a regular file that the split layout carries as its own tar entry
/// (see [`split_part_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePart {
    /// Index into [`Archive::entries`] of the whole file.
    pub entry: usize,
    /// Part number, `0..count`.
    pub index: u32,
    pub count: u32,
    pub offset: u64,
    pub length: u64,
}

/// Marker inside part names; reserved (archives may not use it).
pub(crate) const SPLIT_MARKER: &str = ".ms2m-part.";

/// The tar name of a part: `<path>.ms2m-part.<index>-of-<count>.<offset>.<total>`. Only
/// our decoder reassembles these (into `<path>`, by `pwrite` at the offset).
pub fn split_part_name(path: &str, part: &FilePart, total: u64) -> String {
    format!(
        "{path}{SPLIT_MARKER}{}-of-{}.{}.{}",
        part.index, part.count, part.offset, total
    )
}

/// Parsed part name: (whole-file path, index, count, offset, total).
pub(crate) fn parse_part_name(name: &str) -> Option<(&str, u32, u32, u64, u64)> {
    let at = name.rfind(SPLIT_MARKER)?;
    let (base, rest) = (&name[..at], &name[at + SPLIT_MARKER.len()..]);
    let (idx, rest) = rest.split_once("-of-")?;
    let mut it = rest.split('.');
    let count = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    let total = it.next()?.parse().ok()?;
    if it.next().is_some() || base.is_empty() || base.ends_with('/') {
        return None;
    }
    Some((base, idx.parse().ok()?, count, offset, total))
}

/// Splits the archive into at most `n` layers of whole files, balanced by size
/// (largest first, each to the lightest layer so far). `n` is clamped to the number of
/// files and symlinks (at least 1), so no layer is empty. Directories go with the files
/// below them; empty directories go to layer 0.
pub fn plan_layers(archive: &Archive, n: usize) -> Vec<LayerPlan> {
    plan(archive, n, false)
}

/// The split layout: like [`plan_layers`], but a file larger than an even share of the
/// archive (`total / n`) is cut into `min(n, ceil(size / share))` equal byte ranges that
/// are balanced like files, so one dominant page image spreads over all layers and the
/// layers upload in parallel. Only our decoder can reassemble such an image (a runtime
/// would see part files): opt-in, never the Registry-mode default.
pub fn plan_split_layers(archive: &Archive, n: usize) -> Vec<LayerPlan> {
    plan(archive, n, true)
}

/// A unit of balancing: whole entries (a file and its hard links, a symlink) or a part.
struct Unit {
    size: u64,
    entries: Vec<usize>,
    part: Option<FilePart>,
    key: String,
}

fn plan(archive: &Archive, n: usize, split: bool) -> Vec<LayerPlan> {
    let entries = archive.entries();
    let n = n.max(1);
    let share = archive.total_size().div_ceil(n as u64).max(1);
    // A file with hard links stays whole: its links travel in the same layer.
    let linked: HashSet<&str> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Hardlink { target } => Some(target.as_str()),
            _ => None,
        })
        .collect();
    let mut unit_of_path: HashMap<&str, usize> = HashMap::new();
    let mut units: Vec<Unit> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match &e.kind {
            EntryKind::File
                if split && n > 1 && e.size > share && !linked.contains(e.path.as_str()) =>
            {
                let count = e.size.div_ceil(share).min(n as u64) as u32;
                let len = e.size.div_ceil(u64::from(count));
                for k in 0..count {
                    let offset = u64::from(k) * len;
                    let length = len.min(e.size - offset);
                    units.push(Unit {
                        size: length,
                        entries: Vec::new(),
                        part: Some(FilePart {
                            entry: i,
                            index: k,
                            count,
                            offset,
                            length,
                        }),
                        key: format!("{}#{k:010}", e.path),
                    });
                }
            }
            EntryKind::File | EntryKind::Symlink { .. } => {
                unit_of_path.insert(&e.path, units.len());
                units.push(Unit {
                    size: e.size,
                    entries: vec![i],
                    part: None,
                    key: e.path.clone(),
                });
            }
            EntryKind::Hardlink { .. } | EntryKind::Dir => {}
        }
    }
    for (i, e) in entries.iter().enumerate() {
        // The archive guarantees the target is an earlier regular file, never split.
        if let EntryKind::Hardlink { target } = &e.kind
            && let Some(u) = unit_of_path.get(target.as_str())
        {
            units[*u].entries.push(i);
        }
    }

    let layers = n.clamp(1, units.len().max(1));
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|a, b| {
        units[*b]
            .size
            .cmp(&units[*a].size)
            .then_with(|| units[*a].key.cmp(&units[*b].key))
    });
    let mut members: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); layers];
    let mut parts: Vec<Vec<FilePart>> = vec![Vec::new(); layers];
    let mut sizes = vec![0u64; layers];
    for u in order {
        let (lightest, _) = sizes
            .iter()
            .enumerate()
            .min_by_key(|(i, s)| (**s, *i))
            .expect("at least one layer");
        sizes[lightest] += units[u].size;
        members[lightest].extend(units[u].entries.iter().copied());
        if let Some(p) = units[u].part {
            parts[lightest].push(p);
        }
    }

    // Directories: the ancestors of each layer's entries and parts; the rest (empty
    // dirs and their ancestors) to layer 0.
    let dir_index: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EntryKind::Dir)
        .map(|(i, e)| (e.path.as_str(), i))
        .collect();
    let mut used_dirs = BTreeSet::new();
    for (set, layer_parts) in members.iter_mut().zip(&parts) {
        let ancestors: Vec<usize> = set
            .iter()
            .copied()
            .chain(layer_parts.iter().map(|p| p.entry))
            .flat_map(|i| ancestors(&entries[i].path))
            .filter_map(|p| dir_index.get(p).copied())
            .collect();
        used_dirs.extend(ancestors.iter().copied());
        set.extend(ancestors);
    }
    for (i, e) in entries.iter().enumerate() {
        if e.kind == EntryKind::Dir && !used_dirs.contains(&i) {
            members[0].insert(i);
            let anc: Vec<usize> = ancestors(&e.path)
                .filter_map(|p| dir_index.get(p).copied())
                .collect();
            members[0].extend(anc);
        }
    }

    members
        .into_iter()
        .zip(parts)
        .zip(sizes)
        .enumerate()
        .map(|(index, ((set, mut parts), size))| {
            let mut list: Vec<usize> = set.into_iter().collect();
            list.sort_by(|a, b| path_order(&entries[*a].path, &entries[*b].path));
            parts.sort_by(|a, b| {
                path_order(&entries[a.entry].path, &entries[b.entry].path)
                    .then(a.index.cmp(&b.index))
            });
            LayerPlan {
                index,
                entries: list,
                parts,
                size,
            }
        })
        .collect()
}

/// Component-wise order: `a` < `a/b` < `a.b`, so parents precede children.
pub(crate) fn path_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_round_trip() {
        let p = FilePart {
            entry: 0,
            index: 2,
            count: 3,
            offset: 200,
            length: 100,
        };
        let name = split_part_name("checkpoint/pages-1.img", &p, 300);
        assert_eq!(
            parse_part_name(&name),
            Some(("checkpoint/pages-1.img", 2, 3, 200, 300))
        );
        assert_eq!(parse_part_name("a.ms2m-part.x-of-2.0.1"), None);
        assert_eq!(parse_part_name("plain"), None);
    }

    #[test]
    fn order_puts_parents_first() {
        let mut v = vec!["a.b", "a/b", "a", "a/b/c", "b"];
        v.sort_by(|x, y| path_order(x, y));
        assert_eq!(v, vec!["a", "a/b", "a/b/c", "a.b", "b"]);
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a", "a/b"]);
    }
}
