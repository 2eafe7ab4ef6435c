//! The layer decoder on arbitrary (uncompressed) tar bytes whose digest matches: every
//! hostile-entry rule runs against real files, inside a throw-away staging directory.
//! Beyond "no panic", it asserts containment: a 0600 sentinel next to the store keeps
//! its single link, nothing appears outside the destination, and a committed tree has
//! no symlink resolving outside and no hard link to a file outside.
#![no_main]

#[path = "../../tests/common/containment.rs"]
mod containment;

use libfuzzer_sys::fuzz_target;
use ms2m_image_format::{ExpectedLayer, MEDIA_TYPE_LAYER_TAR, Staging, sha256_digest, unpack_layer};

fuzz_target!(|data: &[u8]| unpack_and_check(data));

fn unpack_and_check(data: &[u8]) {
    let Ok(tmp) = tempdir() else { return };
    let scene = containment::Scene::new(&tmp).expect("scene");
    let digest = sha256_digest(data);
    let expected = ExpectedLayer {
        media_type: MEDIA_TYPE_LAYER_TAR.into(),
        digest: digest.clone(),
        size: data.len() as u64,
        diff_id: Some(digest),
    };
    if let Ok(staging) = Staging::new(scene.dest()) {
        if unpack_layer(data, &expected, &staging).is_ok() {
            let _ = staging.commit();
        }
    }
    if let Err(e) = scene.check() {
        panic!("containment broken: {e}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "ms2m-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
