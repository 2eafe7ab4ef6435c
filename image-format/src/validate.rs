//! The hostile-input rules shared by the archive reader and the layer decoder.
//!
//! Both sides run the same checks, so an image built from an archive that passed them
//! also passes them on the way back, and a crafted image is caught even if it never came
//! from one of our archives.

use crate::error::{Error, Result};

/// Limits applied to untrusted archives and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted entry path, in bytes.
    pub max_path_len: usize,
    /// Longest accepted path component, in bytes (Linux `NAME_MAX`).
    pub max_component_len: usize,
    /// Largest PAX / GNU long-name / long-link meta header, in bytes.
    pub max_meta_header: u64,
    /// Most entries in one archive or layer.
    pub max_entries: usize,
    /// Largest metadata file (`config.dump`, `spec.dump`, `deleted.files`, ...) read
    /// into memory.
    pub max_metadata_file: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_path_len: 4096,
            max_component_len: 255,
            max_meta_header: 1 << 20,
            max_entries: 1 << 18,
            max_metadata_file: 16 << 20,
        }
    }
}

/// Prefix of OCI whiteout files; such a name would delete files when a runtime unpacks
/// the image instead of creating one.
const WHITEOUT_PREFIX: &str = ".wh.";

/// Turns a raw tar name into the normalised relative path we use everywhere, or rejects
/// it. Returns `None` for the archive root itself (`.`, `./`).
pub(crate) fn normalize_path(raw: &[u8], limits: &Limits) -> Result<Option<String>> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let name =
        std::str::from_utf8(raw).map_err(|_| Error::hostile(&shown, "name is not valid UTF-8"))?;
    if name.len() > limits.max_path_len {
        return Err(Error::limit(
            truncate(name),
            format!(
                "name is {} bytes, limit {}",
                name.len(),
                limits.max_path_len
            ),
        ));
    }
    if name.contains('\0') {
        return Err(Error::hostile(&shown, "name contains a NUL byte"));
    }
    if name.starts_with('/') {
        return Err(Error::hostile(name, "absolute path"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for comp in name.split('/') {
        match comp {
            "" | "." => continue,
            ".." => return Err(Error::hostile(name, "`..` component")),
            c => {
                if c.len() > limits.max_component_len {
                    return Err(Error::limit(
                        name,
                        format!(
                            "component is {} bytes, limit {}",
                            c.len(),
                            limits.max_component_len
                        ),
                    ));
                }
                if c.starts_with(WHITEOUT_PREFIX) {
                    return Err(Error::hostile(
                        name,
                        "name starts with `.wh.` (an OCI whiteout)",
                    ));
                }
                parts.push(c);
            }
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts.join("/")))
}

/// Checks a symlink target: relative, and resolving inside the tree from the link's
/// directory.
pub(crate) fn check_symlink_target(entry: &str, target: &[u8], limits: &Limits) -> Result<String> {
    let target = std::str::from_utf8(target)
        .map_err(|_| Error::hostile(entry, "symlink target is not valid UTF-8"))?;
    if target.is_empty() {
        return Err(Error::hostile(entry, "empty symlink target"));
    }
    if target.len() > limits.max_path_len {
        return Err(Error::limit(
            entry,
            format!("symlink target is {} bytes", target.len()),
        ));
    }
    if target.contains('\0') {
        return Err(Error::hostile(entry, "symlink target contains a NUL byte"));
    }
    if target.starts_with('/') {
        return Err(Error::hostile(
            entry,
            format!("symlink to absolute path `{target}`"),
        ));
    }
    // Depth of the link's directory below the root.
    let mut depth = entry.split('/').count() as i64 - 1;
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(Error::hostile(
                        entry,
                        format!("symlink target `{target}` points outside the tree"),
                    ));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(target.to_owned())
}

/// What a path of a tree is, for [`resolve_symlink_inside`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Looked<'a> {
    Missing,
    Dir,
    NotDir,
    Symlink(&'a str),
}

/// Most symlinks one resolution may pass through (the kernel's limit).
const MAX_HOPS: usize = 40;
/// Most path components one resolution may walk: a bound on the work a crafted chain of
/// long targets can cause.
const MAX_STEPS: usize = 1 << 16;

/// Resolves the symlink at `link` as the kernel would, through every symlink of the
/// tree (`lookup` says what a path is), and refuses it when the resolution leaves the
/// tree or loops. The per-link lexical check cannot see this: `d -> .` and
/// `e -> d/d/d/../../..` are each balanced as text, and `e` still resolves to `/`.
pub(crate) fn resolve_symlink_inside<'a>(
    link: &str,
    target: &'a str,
    lookup: &dyn Fn(&str) -> Looked<'a>,
) -> Result<()> {
    let escape = || {
        Error::hostile(
            link,
            format!("symlink target `{target}` resolves outside the tree"),
        )
    };
    let mut cur: Vec<&str> = link.split('/').collect();
    cur.pop();
    // Components still to walk, last one first.
    let mut todo: Vec<&str> = target.split('/').rev().collect();
    let (mut hops, mut steps) = (0usize, 0usize);
    while let Some(comp) = todo.pop() {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(Error::hostile(link, "symlink resolution too long"));
        }
        match comp {
            "" | "." => continue,
            ".." => {
                if cur.pop().is_none() {
                    return Err(escape());
                }
                continue;
            }
            _ => {}
        }
        if comp.starts_with('/') {
            return Err(escape());
        }
        cur.push(comp);
        match lookup(&cur.join("/")) {
            Looked::Dir => {}
            // Nothing there, or a file that the rest would step into: the kernel
            // stops here, inside.
            Looked::Missing | Looked::NotDir => return Ok(()),
            Looked::Symlink(t) => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(Error::hostile(link, "symlink loop"));
                }
                if t.starts_with('/') {
                    return Err(escape());
                }
                cur.pop();
                todo.extend(t.split('/').rev());
            }
        }
    }
    Ok(())
}

/// Checks the JSON list in `deleted.files`: every path must stay inside the container's
/// rootfs once the runtime joins it to the rootfs directory.
pub(crate) fn check_deleted_files(entry: &str, content: &[u8]) -> Result<Vec<String>> {
    let list: Vec<String> = serde_json::from_slice(content)
        .map_err(|e| Error::malformed(entry, format!("not a JSON array of strings: {e}")))?;
    for item in &list {
        if item.contains('\0') {
            return Err(Error::hostile(
                format!("{entry}: {item:?}"),
                "NUL byte in deleted path",
            ));
        }
        let mut depth: i64 = 0;
        let mut any = false;
        for comp in item.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(Error::hostile(
                            format!("{entry}: {item}"),
                            "deleted path escapes the rootfs",
                        ));
                    }
                }
                _ => {
                    depth += 1;
                    any = true;
                }
            }
        }
        if !any || depth == 0 {
            return Err(Error::hostile(
                format!("{entry}: {item:?}"),
                "deleted path is the rootfs itself",
            ));
        }
    }
    Ok(list)
}

/// Names in errors stay readable even for megabyte-long hostile names.
fn truncate(name: &str) -> String {
    if name.len() <= 120 {
        return name.to_owned();
    }
    let mut end = 120;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<Option<String>> {
        normalize_path(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn normalises_harmless_spellings() {
        assert_eq!(norm("./a/b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(norm("a//./b").unwrap().as_deref(), Some("a/b"));
        assert_eq!(norm("./").unwrap(), None);
        assert_eq!(norm(".").unwrap(), None);
    }

    #[test]
    fn rejects_traversal_and_absolute() {
        for bad in ["/etc/passwd", "a/../../b", "..", "a/..", "checkpoint/.wh.x"] {
            let err = norm(bad).unwrap_err();
            assert!(err.entry().is_some(), "{bad}: {err}");
        }
        let long = "a/".repeat(3000);
        assert!(matches!(norm(&long), Err(Error::Limit { .. })));
        let comp = "x".repeat(256);
        assert!(matches!(norm(&comp), Err(Error::Limit { .. })));
        assert!(normalize_path(b"a\xff", &Limits::default()).is_err());
    }

    #[test]
    fn symlink_targets() {
        let l = Limits::default();
        assert_eq!(check_symlink_target("a/b/l", b"../c", &l).unwrap(), "../c");
        assert!(check_symlink_target("a/l", b"../c", &l).is_ok());
        assert!(check_symlink_target("a/l", b"../../c", &l).is_err());
        assert!(check_symlink_target("l", b"/etc/shadow", &l).is_err());
        assert!(check_symlink_target("l", b"x/../../y", &l).is_err());
        assert!(check_symlink_target("l", b"", &l).is_err());
    }

    #[test]
    fn symlink_chains_are_resolved_through_the_tree() {
        let tree: std::collections::HashMap<&str, Looked<'static>> = [
            ("d", Looked::Symlink(".")),
            ("e", Looked::Symlink("d/d/d/../../..")),
            ("sub", Looked::Dir),
            ("sub/up", Looked::Symlink("..")),
            ("sub/f", Looked::NotDir),
            ("loop1", Looked::Symlink("loop2")),
            ("loop2", Looked::Symlink("loop1")),
        ]
        .into_iter()
        .collect();
        let lookup = |p: &str| tree.get(p).copied().unwrap_or(Looked::Missing);
        let ok = |l: &str, t: &'static str| resolve_symlink_inside(l, t, &lookup);
        // Each of these passes check_symlink_target on its own.
        for (l, t) in [
            ("e", "d/d/d/../../.."),
            ("x", "sub/up/.."),
            ("sub/y", "../d/.."),
        ] {
            assert!(check_symlink_target(l, t.as_bytes(), &Limits::default()).is_ok());
            let err = ok(l, t).unwrap_err();
            assert_eq!(err.entry(), Some(l), "{err}");
        }
        assert!(ok("loop1", "loop2").is_err());
        assert!(ok("d", ".").is_ok());
        assert!(ok("sub/g", "f").is_ok());
        assert!(ok("sub/g", "../sub/up/sub/f").is_ok());
        assert!(ok("dangling", "nothere/../../..").is_ok());
    }

    #[test]
    fn deleted_files() {
        assert_eq!(
            check_deleted_files("deleted.files", br#"["/tmp/x","etc/y"]"#).unwrap(),
            vec!["/tmp/x", "etc/y"]
        );
        for bad in [
            r#"["/../etc/shadow"]"#,
            r#"["/"]"#,
            r#"["a/../.."]"#,
            r#"[""]"#,
            r#"{"a":1}"#,
        ] {
            let err = check_deleted_files("deleted.files", bad.as_bytes()).unwrap_err();
            assert!(err.entry().unwrap().starts_with("deleted.files"), "{err}");
        }
    }
}
