//! Crafted archives and layers: every hostile case is rejected with an error naming the
//! entry, on open and on decode, and nothing is written outside the destination.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use common::{RawTar, Shape, build_archive_dir, snapshot};
use ms2m_image_format::{
    Archive, EncodeOptions, Error, ExpectedLayer, MEDIA_TYPE_LAYER_TAR, Staging, read_oci_layout,
    sha256_digest, unpack_layer, write_oci_layout,
};

struct Case {
    name: &'static str,
    tar: Vec<u8>,
    /// Text the error's entry must contain.
    entry: String,
}

fn cases() -> Vec<Case> {
    let abs = format!("/tmp/ms2m-hostile-abs-{}", std::process::id());
    let long = "x/".repeat(2500);
    let mut v = vec![
        Case {
            name: "absolute path",
            tar: RawTar::default().file(&abs, b"pwned").finish(),
            entry: abs.clone(),
        },
        Case {
            name: "dotdot",
            tar: RawTar::default().file("../evil", b"pwned").finish(),
            entry: "../evil".into(),
        },
        Case {
            name: "nested dotdot",
            tar: RawTar::default()
                .dir("a")
                .file("a/../../evil", b"x")
                .finish(),
            entry: "a/../../evil".into(),
        },
        Case {
            name: "symlink to absolute",
            tar: RawTar::default().symlink("l", "/etc/shadow").finish(),
            entry: "l".into(),
        },
        Case {
            name: "symlink escaping",
            tar: RawTar::default()
                .dir("a")
                .symlink("a/l", "../../etc")
                .finish(),
            entry: "a/l".into(),
        },
        Case {
            name: "hardlink to absolute",
            tar: RawTar::default().hardlink("h", "/etc/passwd").finish(),
            entry: "h".into(),
        },
        Case {
            name: "hardlink escaping",
            tar: RawTar::default().hardlink("h", "../x").finish(),
            entry: "h".into(),
        },
        Case {
            name: "hardlink to nothing",
            tar: RawTar::default().hardlink("h", "nothere").finish(),
            entry: "h".into(),
        },
        Case {
            name: "symlink chain resolving outside, then a hard link through it",
            tar: RawTar::default()
                .symlink("d", ".")
                .symlink("e", "d/d/d/../../..")
                .hardlink("stolen", "e/etc/shadow")
                .finish(),
            entry: "e".into(),
        },
        Case {
            name: "symlink chain written before its links, then a hard link through it",
            tar: RawTar::default()
                .symlink("e", "d/d/d/../../..")
                .symlink("d", ".")
                .hardlink("stolen", "e/etc/shadow")
                .finish(),
            entry: "stolen".into(),
        },
        Case {
            name: "hard link through a symlinked directory inside the tree",
            tar: RawTar::default()
                .dir("sub")
                .file("sub/f", b"x")
                .symlink("s", "sub")
                .hardlink("h", "s/f")
                .finish(),
            entry: "h".into(),
        },
        Case {
            name: "hard link through `d -> .`",
            tar: RawTar::default()
                .file("f", b"x")
                .symlink("d", ".")
                .hardlink("h", "d/d/f")
                .finish(),
            entry: "h".into(),
        },
        Case {
            name: "hard link to a symlink entry",
            tar: RawTar::default()
                .file("f", b"x")
                .symlink("l", "f")
                .hardlink("h", "l")
                .finish(),
            entry: "h".into(),
        },
        Case {
            name: "char device",
            tar: RawTar::default()
                .entry(b"dev/null", b'3', b"", b"", 0o666)
                .finish(),
            entry: "dev/null".into(),
        },
        Case {
            name: "block device",
            tar: RawTar::default()
                .entry(b"sda", b'4', b"", b"", 0o660)
                .finish(),
            entry: "sda".into(),
        },
        Case {
            name: "fifo",
            tar: RawTar::default()
                .entry(b"fifo", b'6', b"", b"", 0o600)
                .finish(),
            entry: "fifo".into(),
        },
        Case {
            name: "unknown type",
            tar: RawTar::default()
                .entry(b"weird", b'Z', b"", b"", 0o600)
                .finish(),
            entry: "weird".into(),
        },
        Case {
            name: "duplicate",
            tar: RawTar::default().file("a", b"1").file("a", b"2").finish(),
            entry: "a".into(),
        },
        Case {
            name: "file below a file",
            tar: RawTar::default().file("a", b"1").file("a/b", b"2").finish(),
            entry: "a/b".into(),
        },
        Case {
            name: "write through a symlink",
            tar: RawTar::default()
                .dir("sub")
                .symlink("s", "sub")
                .file("s/x", b"2")
                .finish(),
            entry: "s/x".into(),
        },
        Case {
            name: "name beyond limits",
            tar: RawTar::default()
                .entry(
                    b"././@LongLink",
                    b'L',
                    format!("{long}\0").as_bytes(),
                    b"",
                    0o644,
                )
                .file("short", b"x")
                .finish(),
            entry: "x/x/x/x".into(),
        },
        Case {
            name: "huge PAX header",
            tar: RawTar::default()
                .entry(b"PaxHeaders/big", b'x', &vec![b'a'; 2 << 20], b"", 0o644)
                .file("big", b"x")
                .finish(),
            entry: "header".into(),
        },
        Case {
            name: "whiteout name",
            tar: RawTar::default().file("dir/.wh.victim", b"").finish(),
            entry: "dir/.wh.victim".into(),
        },
        Case {
            name: "deleted.files escaping",
            tar: RawTar::default()
                .file("deleted.files", br#"["/tmp/ok","/../../etc/shadow"]"#)
                .finish(),
            entry: "deleted.files: /../../etc/shadow".into(),
        },
        Case {
            name: "deleted.files root",
            tar: RawTar::default()
                .file("deleted.files", br#"["/"]"#)
                .finish(),
            entry: "deleted.files".into(),
        },
        Case {
            name: "deleted.files not a list",
            tar: RawTar::default()
                .file("deleted.files", b"rm -rf /")
                .finish(),
            entry: "deleted.files".into(),
        },
        Case {
            name: "non-UTF-8 name",
            tar: RawTar::default()
                .entry(b"bad\xff", b'0', b"", b"", 0o644)
                .finish(),
            entry: "bad".into(),
        },
    ];
    // GNU sparse needs a GNU header for the parser to get as far as the type.
    let mut sparse = RawTar::default()
        .entry(b"sparse", b'S', b"", b"", 0o644)
        .finish();
    sparse[257..265].copy_from_slice(b"ustar  \0");
    sparse[148..156].fill(b' ');
    let sum: u32 = sparse[..512].iter().map(|b| u32::from(*b)).sum();
    sparse[148..156].copy_from_slice(format!("{:06o}\0 ", sum).as_bytes());
    v.push(Case {
        name: "GNU sparse file",
        tar: sparse,
        entry: "sparse".into(),
    });
    v
}

/// Lists everything below `dir` (relative paths).
fn listing(dir: &Path) -> Vec<String> {
    snapshot(dir).into_keys().collect()
}

fn assert_names(case: &Case, err: &Error, side: &str) {
    let entry = err
        .entry()
        .unwrap_or_else(|| panic!("{} ({side}): error names no entry: {err}", case.name));
    assert!(
        entry.contains(&case.entry),
        "{} ({side}): error names `{entry}`, expected `{}`: {err}",
        case.name,
        case.entry
    );
}

#[test]
fn hostile_archives_are_rejected_on_open_naming_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, case) in cases().iter().enumerate() {
        let path = tmp.path().join(format!("case-{i}.tar"));
        fs::write(&path, &case.tar).unwrap();
        match Archive::open(&path) {
            Ok(a) => panic!("{}: accepted: {:?}", case.name, a.entries()),
            Err(e) => assert_names(case, &e, "open"),
        }
    }
    assert!(!Path::new(&format!("/tmp/ms2m-hostile-abs-{}", std::process::id())).exists());
}

#[test]
fn hostile_layers_are_rejected_on_decode_and_nothing_escapes() {
    for case in cases() {
        let base = tempfile::tempdir().unwrap();
        let parent = base.path().join("sub");
        fs::create_dir(&parent).unwrap();
        let dest = parent.join("out");
        let digest = sha256_digest(&case.tar);
        let expected = ExpectedLayer {
            media_type: MEDIA_TYPE_LAYER_TAR.into(),
            digest: digest.clone(),
            size: case.tar.len() as u64,
            diff_id: Some(digest),
        };
        let staging = Staging::new(&dest).unwrap();
        let err = unpack_layer(case.tar.as_slice(), &expected, &staging)
            .expect_err(&format!("{}: layer accepted", case.name));
        assert_names(&case, &err, "decode");
        assert!(
            staging.commit().is_err(),
            "{}: commit after failure",
            case.name
        );
        assert!(!dest.exists(), "{}", case.name);
        assert_eq!(
            listing(base.path()),
            vec!["sub".to_owned()],
            "{}",
            case.name
        );
    }
    assert!(!Path::new(&format!("/tmp/ms2m-hostile-abs-{}", std::process::id())).exists());
}

#[test]
fn a_bad_second_layer_leaves_nothing_behind() {
    let base = tempfile::tempdir().unwrap();
    let dest = base.path().join("out");
    let good = RawTar::default().dir("d").file("d/ok", b"fine").finish();
    let bad = RawTar::default().file("../escape", b"no").finish();
    let staging = Staging::new(&dest).unwrap();
    for (tar, ok) in [(&good, true), (&bad, false)] {
        let d = sha256_digest(tar);
        let exp = ExpectedLayer {
            media_type: MEDIA_TYPE_LAYER_TAR.into(),
            digest: d.clone(),
            size: tar.len() as u64,
            diff_id: Some(d),
        };
        assert_eq!(unpack_layer(tar.as_slice(), &exp, &staging).is_ok(), ok);
    }
    assert!(staging.commit().is_err());
    assert!(listing(base.path()).is_empty());
}

#[test]
fn corrupted_byte_gives_a_digest_error_and_no_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_archive_dir(&src, Shape::DominantPages, 21);
    let archive = Archive::open(&src).unwrap();
    let layout = tmp.path().join("layout");
    let image = write_oci_layout(&archive, &layout, &EncodeOptions::default()).unwrap();
    let biggest = image.layers.iter().max_by_key(|l| l.size).unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(biggest.digest.strip_prefix("sha256:").unwrap());
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::File::create(&blob).unwrap().write_all(&bytes).unwrap();

    let parent = tmp.path().join("restore");
    fs::create_dir(&parent).unwrap();
    let dest = parent.join("out");
    let err = read_oci_layout(&layout, &dest).unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { .. }),
        "expected a digest error, got {err}"
    );
    assert!(!dest.exists());
    assert!(listing(&parent).is_empty(), "staging left behind");

    // A tampered manifest-side document is caught too.
    let cfg = layout
        .join("blobs/sha256")
        .join(image.config.digest().strip_prefix("sha256:").unwrap());
    fs::write(&cfg, b"{}").unwrap();
    let err = read_oci_layout(&layout, &dest).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!dest.exists());
}

#[test]
fn digest_strings_never_become_paths_outside_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../etc/passwd","size":10}]}"#,
    )
    .unwrap();
    let dest = tmp.path().join("out");
    // Refused as a malformed digest while index.json is parsed, before any path is
    // built from it: not, say, a missing file after a lookup outside blobs/.
    let err = read_oci_layout(&layout, &dest).unwrap_err();
    assert!(
        matches!(&err, Error::Image(m) if m.contains("index.json")
            && m.contains("Invalid encoded value ../../../../etc/passwd")),
        "{err:?}"
    );
    assert!(!dest.exists());
}

fn layer(tar: &[u8]) -> ExpectedLayer {
    let d = sha256_digest(tar);
    ExpectedLayer {
        media_type: MEDIA_TYPE_LAYER_TAR.into(),
        digest: d.clone(),
        size: tar.len() as u64,
        diff_id: Some(d),
    }
}

/// (name, layers, `Some(entry)` when unpacking must fail naming it, `None` when commit must).
type SplitCase = (&'static str, Vec<Vec<u8>>, Option<&'static str>);

#[test]
fn split_parts_are_checked() {
    let p =
        |i: u32, n: u32, off: u64, total: u64| format!("big.ms2m-part.{i}-of-{n}.{off}.{total}");
    // (layers, expected failure at unpack (Some(entry)) or at commit (None)).
    let cases: Vec<SplitCase> = vec![
        (
            "missing part",
            vec![RawTar::default().file(&p(0, 2, 0, 8), b"1234").finish()],
            None,
        ),
        (
            "overlapping parts",
            vec![
                RawTar::default().file(&p(0, 2, 0, 8), b"1234").finish(),
                RawTar::default().file(&p(1, 2, 2, 8), b"5678").finish(),
            ],
            None,
        ),
        (
            "part beyond the end",
            vec![RawTar::default().file(&p(0, 1, 6, 8), b"1234").finish()],
            Some("big.ms2m-part"),
        ),
        (
            "parts disagree on size",
            vec![
                RawTar::default().file(&p(0, 2, 0, 8), b"1234").finish(),
                RawTar::default().file(&p(1, 2, 4, 9), b"5678").finish(),
            ],
            Some("big.ms2m-part.1"),
        ),
        (
            "part and whole file",
            vec![
                RawTar::default().file("big", b"whole").finish(),
                RawTar::default().file(&p(0, 1, 0, 4), b"1234").finish(),
            ],
            Some("big.ms2m-part"),
        ),
        (
            "part then symlink over it",
            vec![
                RawTar::default().file(&p(0, 2, 0, 8), b"1234").finish(),
                RawTar::default().symlink("big", "elsewhere").finish(),
            ],
            Some("big"),
        ),
    ];
    for (name, layers, at_unpack) in cases {
        let base = tempfile::tempdir().unwrap();
        let dest = base.path().join("out");
        let staging = Staging::new(&dest).unwrap();
        let mut failed = None;
        for tar in &layers {
            if let Err(e) = unpack_layer(tar.as_slice(), &layer(tar), &staging) {
                failed = Some(e);
                break;
            }
        }
        match (at_unpack, failed) {
            (Some(entry), Some(e)) => {
                assert!(e.entry().is_some_and(|x| x.contains(entry)), "{name}: {e}");
                assert!(staging.commit().is_err(), "{name}");
            }
            (None, None) => {
                let e = staging.commit().expect_err(name);
                assert_eq!(e.entry(), Some("big"), "{name}: {e}");
            }
            (want, got) => panic!("{name}: expected failure at unpack={want:?}, got {got:?}"),
        }
        assert!(!dest.exists(), "{name}");
        assert!(listing(base.path()).is_empty(), "{name}");
    }
    // A complete set reassembles.
    let base = tempfile::tempdir().unwrap();
    let dest = base.path().join("out");
    let staging = Staging::new(&dest).unwrap();
    for tar in [
        RawTar::default().file(&p(1, 2, 4, 8), b"5678").finish(),
        RawTar::default().file(&p(0, 2, 0, 8), b"1234").finish(),
    ] {
        unpack_layer(tar.as_slice(), &layer(&tar), &staging).unwrap();
    }
    staging.commit().unwrap();
    assert_eq!(fs::read(dest.join("big")).unwrap(), b"12345678");
}

#[test]
fn archives_may_not_use_the_part_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.tar");
    fs::write(
        &path,
        RawTar::default()
            .file("x.ms2m-part.0-of-1.0.1", b"1")
            .finish(),
    )
    .unwrap();
    let e = Archive::open(&path).unwrap_err();
    assert_eq!(e.entry(), Some("x.ms2m-part.0-of-1.0.1"), "{e}");
}

/// The attack from issue 13, aimed at a real file next to the destination: `d -> .`,
/// `e -> d/d/../..` (balanced as text, resolves to the destination's grandparent), and a
/// hard link `stolen -> e/secret`. In either order of the symlinks, on decode and on
/// `Archive::open` + `extract`, it is refused naming the entry, the 0600 sentinel keeps
/// its single link, and nothing appears outside the destination.
#[test]
fn symlink_chains_cannot_link_a_file_outside() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let orders: [(&str, Vec<u8>, &str); 3] = [
        (
            "links first",
            RawTar::default()
                .symlink("d", ".")
                .symlink("e", "d/d/../..")
                .hardlink("stolen", "e/secret")
                .finish(),
            "e",
        ),
        (
            "chain first",
            RawTar::default()
                .symlink("e", "d/d/../..")
                .symlink("d", ".")
                .hardlink("stolen", "e/secret")
                .finish(),
            "stolen",
        ),
        (
            // No hard link: the escaping symlink alone must not be committed either.
            "chain only",
            RawTar::default()
                .symlink("e", "d/d/../..")
                .symlink("d", ".")
                .file("pages-1.img", b"x")
                .finish(),
            "e",
        ),
    ];
    for (what, tar, named) in orders {
        let base = tempfile::tempdir().unwrap();
        let secret = base.path().join("secret");
        fs::write(&secret, "host secret").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let parent = base.path().join("store");
        fs::create_dir(&parent).unwrap();
        let before = listing(base.path());

        let dest = parent.join("ck");
        let staging = Staging::new(&dest).unwrap();
        let err = unpack_layer(tar.as_slice(), &layer(&tar), &staging)
            .and_then(|_| staging.commit().map(drop))
            .expect_err(&format!("{what}: accepted"));
        assert!(matches!(err, Error::Hostile { .. }), "{what}: {err}");
        assert_eq!(err.entry(), Some(named), "{what}: {err}");

        let tar_path = base.path().join("in.tar");
        fs::write(&tar_path, &tar).unwrap();
        let err = Archive::open(&tar_path)
            .and_then(|a| a.extract(parent.join("ck2")))
            .expect_err(&format!("{what}: archive accepted"));
        assert!(err.entry().is_some(), "{what}: {err}");
        fs::remove_file(&tar_path).unwrap();

        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1, "{what}");
        assert_eq!(listing(base.path()), before, "{what}");
    }
}
