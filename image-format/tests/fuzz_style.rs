//! Property-style fuzzing on stable Rust: random and mutated tar bytes fed to the archive
//! parser and to the layer decoder must only ever produce errors, never panics, and
//! never write outside the destination. (The coverage-guided target is in `fuzz/`.)

mod common;

use std::io::Cursor;

use common::{RawTar, Shape, build_archive_dir, snapshot, tar_dir};
use ms2m_image_format::{
    Archive, Compression, ExpectedLayer, Limits, MEDIA_TYPE_LAYER_TAR, Staging, encode_layer,
    plan_layers, scan_tar, sha256_digest, unpack_layer,
};
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    let edits = rng.random_range(1..8);
    for _ in 0..edits {
        if v.is_empty() {
            break;
        }
        match rng.random_range(0..5) {
            // Flip bits, most often inside a header (the interesting part).
            0 | 1 => {
                let block = rng.random_range(0..v.len().div_ceil(512));
                let i = (block * 512 + rng.random_range(0..512)).min(v.len() - 1);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            // Overwrite a numeric field with junk digits.
            2 => {
                let block = rng.random_range(0..v.len().div_ceil(512)) * 512;
                let field = [100usize, 108, 116, 124, 136, 148][rng.random_range(0..6)];
                for k in 0..8 {
                    if let Some(b) = v.get_mut(block + field + k) {
                        *b = b"0123456789 \0\x80\xff"[rng.random_range(0..14)];
                    }
                }
            }
            // Change a type flag.
            3 => {
                let block = rng.random_range(0..v.len().div_ceil(512)) * 512;
                if let Some(b) = v.get_mut(block + 156) {
                    *b = b"0123456789gxLKSZ\0"[rng.random_range(0..17)];
                }
            }
            // Truncate.
            _ => {
                let n = rng.random_range(0..v.len());
                v.truncate(n);
            }
        }
    }
    v
}

fn seeds() -> Vec<Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_archive_dir(&src, Shape::EmptyDirs, 1);
    let tar = tmp.path().join("c.tar");
    tar_dir(&src, &tar);
    vec![
        std::fs::read(&tar).unwrap(),
        RawTar::default()
            .dir("a")
            .file("a/f", b"hello")
            .symlink("a/l", "f")
            .hardlink("a/h", "a/f")
            .entry(b"././@LongLink", b'L', b"long/name/here\0", b"", 0o644)
            .file("x", b"y")
            .entry(b"PaxHeaders/p", b'x', b"20 path=pax/path/y\n", b"", 0o644)
            .file("p", b"data")
            .finish(),
    ]
}

#[test]
fn random_and_mutated_tars_never_panic_the_parser() {
    let mut rng = StdRng::seed_from_u64(0x6d73326d);
    let limits = Limits::default();
    let seeds = seeds();
    let mut accepted = 0;
    for i in 0..3000 {
        let bytes = if i % 10 == 0 {
            let mut v = vec![0u8; rng.random_range(0..4096)];
            rng.fill_bytes(&mut v);
            v
        } else {
            mutate(&mut rng, &seeds[i % seeds.len()])
        };
        if scan_tar(&mut Cursor::new(&bytes), &limits).is_ok() {
            accepted += 1;
        }
    }
    // Some mutations (in file data, or truncations at an entry boundary) stay valid; if
    // none did, the mutator would only be testing the first header.
    assert!(accepted > 0, "no mutated archive was valid");
    for s in &seeds {
        scan_tar(&mut Cursor::new(s), &limits).unwrap();
    }
}

#[test]
fn mutated_layers_never_panic_the_decoder_or_escape() {
    let mut rng = StdRng::seed_from_u64(42);
    let tmp = tempfile::tempdir().unwrap();
    let seeds = seeds();
    let arch_path = tmp.path().join("seed.tar");
    std::fs::write(&arch_path, &seeds[0]).unwrap();
    let archive = Archive::open(&arch_path).unwrap();
    let plan = &plan_layers(&archive, 1)[0];
    let mut zst = Vec::new();
    let zdesc = encode_layer(&archive, plan, &Compression::default(), &mut zst).unwrap();
    let base = tmp.path().join("work");
    std::fs::create_dir(&base).unwrap();
    for i in 0..400 {
        let dest = base.join(format!("out{i}"));
        let staging = Staging::new(&dest).unwrap();
        let (bytes, exp) = if i % 2 == 0 {
            let b = mutate(&mut rng, &seeds[i % seeds.len()]);
            let d = sha256_digest(&b);
            let exp = ExpectedLayer {
                media_type: MEDIA_TYPE_LAYER_TAR.into(),
                digest: d.clone(),
                size: b.len() as u64,
                diff_id: Some(d),
            };
            (b, exp)
        } else {
            (mutate(&mut rng, &zst), ExpectedLayer::from(&zdesc))
        };
        if unpack_layer(bytes.as_slice(), &exp, &staging).is_ok() {
            staging.commit().unwrap();
        }
    }
    // Whatever was accepted sits inside `work/outN`; nothing else appeared.
    for path in snapshot(&base).keys() {
        assert!(path.starts_with("out"), "stray path {path}");
    }
}
