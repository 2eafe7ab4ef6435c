//! The layer decoder on arbitrary (uncompressed) tar bytes whose digest matches: every
//! hostile-entry rule runs against real files, inside a throw-away staging directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ms2m_image_format::{ExpectedLayer, MEDIA_TYPE_LAYER_TAR, Staging, sha256_digest, unpack_layer};

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempdir() else { return };
    let dest = tmp.join("out");
    let digest = sha256_digest(data);
    let expected = ExpectedLayer {
        media_type: MEDIA_TYPE_LAYER_TAR.into(),
        digest: digest.clone(),
        size: data.len() as u64,
        diff_id: Some(digest),
    };
    if let Ok(staging) = Staging::new(&dest) {
        if unpack_layer(data, &expected, &staging).is_ok() {
            let _ = staging.commit();
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
});

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
