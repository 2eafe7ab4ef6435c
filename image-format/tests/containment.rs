//! The stable containment harness (runs in `cargo test`): a generated corpus of hostile
//! trees — symlink chains, links through links, hard links to earlier symlinks — goes
//! through the layer decoder and through `Archive::open` + `extract`; whatever is
//! accepted or refused, the 0600 sentinel next to the store keeps its single link,
//! nothing appears outside the destination, a committed tree has no symlink resolving
//! outside and no hard link to a file outside, and every refusal names an entry.
//! The same generator and oracle drive the `tree_unpack` cargo-fuzz target.

mod common;

use arbitrary::{Arbitrary, Unstructured};
use common::containment::{HostileTree, Node, Scene};
use ms2m_image_format::{
    Archive, Error, ExpectedLayer, MEDIA_TYPE_LAYER_TAR, Staging, sha256_digest, unpack_layer,
};
use rand::{RngCore, SeedableRng, rngs::StdRng};

/// Bounded: about 20 s of one core in a debug build.
const CASES: usize = 1000;

fn layer(tar: &[u8]) -> ExpectedLayer {
    let digest = sha256_digest(tar);
    ExpectedLayer {
        media_type: MEDIA_TYPE_LAYER_TAR.into(),
        digest: digest.clone(),
        size: tar.len() as u64,
        diff_id: Some(digest),
    }
}

/// The attacks the generator must keep covering, written out.
fn fixed() -> Vec<HostileTree> {
    use Node::*;
    let s = |a: &str, b: &str| Symlink(a.into(), b.into());
    let h = |a: &str, b: &str| Hardlink(a.into(), b.into());
    vec![
        HostileTree(vec![
            s("d", "."),
            s("e", "d/d/../.."),
            h("stolen", "e/secret"),
        ]),
        HostileTree(vec![
            s("e", "d/d/../.."),
            s("d", "."),
            h("stolen", "e/secret"),
        ]),
        HostileTree(vec![s("e", "d/d/../.."), s("d", ".")]),
        HostileTree(vec![File("f".into()), s("l", "f"), h("h", "l")]),
        HostileTree(vec![File("f".into()), s("d", "."), h("h", "d/f")]),
        HostileTree(vec![
            Dir("sub".into()),
            s("sub/x", ".."),
            s("e", "sub/x/.."),
        ]),
    ]
}

/// What happened to one tree on one path (decoder or archive).
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    accepted_with_symlinks: usize,
    refused: usize,
}

fn run(tree: &HostileTree, tally: &mut [Tally; 2]) {
    let tar = tree.to_tar();
    let has_symlink = tree.0.iter().any(|n| matches!(n, Node::Symlink(..)));
    let note = |t: &mut Tally, r: &Result<(), Error>| match r {
        Ok(()) => {
            t.accepted += 1;
            t.accepted_with_symlinks += usize::from(has_symlink);
        }
        Err(e) => {
            assert!(e.entry().is_some(), "{tree:?}: refusal names no entry: {e}");
            t.refused += 1;
        }
    };

    let dir = tempfile::tempdir().unwrap();
    let scene = Scene::new(dir.path()).unwrap();
    let mut staging = Staging::new(scene.dest()).unwrap();
    staging.set_preserve_ownership(false);
    let r = unpack_layer(tar.as_slice(), &layer(&tar), &staging).map(drop);
    let r = r.and_then(|()| staging.commit().map(drop));
    note(&mut tally[0], &r);
    if let Err(e) = scene.check() {
        panic!("decoder: {tree:?}: {e}");
    }

    let dir = tempfile::tempdir().unwrap();
    let scene = Scene::new(dir.path()).unwrap();
    let tar_path = dir.path().join("store/in.tar");
    std::fs::write(&tar_path, &tar).unwrap();
    let r = Archive::open(&tar_path).and_then(|a| a.extract(scene.dest()));
    std::fs::remove_file(&tar_path).unwrap();
    note(&mut tally[1], &r);
    if let Err(e) = scene.check() {
        panic!("archive: {tree:?}: {e}");
    }
}

#[test]
fn generated_hostile_trees_stay_contained() {
    let mut tally = [Tally::default(), Tally::default()];
    for tree in fixed() {
        run(&tree, &mut tally);
    }
    let mut rng = StdRng::seed_from_u64(0x6d73_326d_0013);
    let mut bytes = vec![0u8; 256];
    for _ in 0..CASES {
        rng.fill_bytes(&mut bytes);
        let tree = HostileTree::arbitrary(&mut Unstructured::new(&bytes)).unwrap();
        run(&tree, &mut tally);
    }
    eprintln!("decoder {:?}; archive {:?}", tally[0], tally[1]);
    // The corpus is only worth something if it reaches both outcomes, including
    // accepted trees that hold symlinks (in-tree ones are legal).
    for t in &tally {
        assert!(t.refused > CASES / 10, "{t:?}");
        assert!(t.accepted_with_symlinks > 0, "{t:?}");
    }
}
