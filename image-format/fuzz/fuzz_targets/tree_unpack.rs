//! Structured hostile trees (symlink chains, links through links, hard links to earlier
//! symlinks; generator shared with `tests/containment.rs`) through the layer decoder,
//! asserting containment: the sentinel next to the store keeps its single link, nothing
//! appears outside the destination, and a committed tree has no symlink resolving
//! outside and no hard link to a file outside.
#![no_main]

#[path = "../../tests/common/containment.rs"]
mod containment;

use containment::{HostileTree, Scene};
use libfuzzer_sys::fuzz_target;
use ms2m_image_format::{ExpectedLayer, MEDIA_TYPE_LAYER_TAR, Staging, sha256_digest, unpack_layer};

fuzz_target!(|tree: HostileTree| {
    let tar = tree.to_tar();
    let tmp = std::env::temp_dir().join(format!("ms2m-fuzz-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let scene = Scene::new(&tmp).expect("scene");
    let digest = sha256_digest(&tar);
    let expected = ExpectedLayer {
        media_type: MEDIA_TYPE_LAYER_TAR.into(),
        digest: digest.clone(),
        size: tar.len() as u64,
        diff_id: Some(digest),
    };
    if let Ok(staging) = Staging::new(scene.dest()) {
        if unpack_layer(tar.as_slice(), &expected, &staging).is_ok() {
            let _ = staging.commit();
        }
    }
    if let Err(e) = scene.check() {
        panic!("containment broken for {tree:?}: {e}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
});
