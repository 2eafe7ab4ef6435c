//! A 4 GiB push by the `ms2m-agent push` process stays under the 64 MiB memory bound:
//! the encoder streams into the upload, nothing grows with the archive.

use std::process::Command;

use ms2m_agent::registry::{Access, ClientOptions, Reference, RegistryClient};
use ms2m_tests::env;
use ms2m_tests::transfer::{agent_binary, run_measuring_rss, sparse_checkpoint};

const GIB: u64 = 1024 * 1024 * 1024;
const BOUND: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_push_stays_under_64_mib_peak_rss() {
    let bin = agent_binary();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = work.path().join("big");
    sparse_checkpoint(&src, "big", 4 * GIB);
    let image = format!("{}/ms2m-test/big:{}", env::registry(), env::unique("m"));

    let (out, peak) = run_measuring_rss(
        Command::new(&bin)
            .arg("push")
            .arg(&src)
            .arg(&image)
            .arg("--json"),
    );
    assert!(
        out.status.success(),
        "ms2m-agent push failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        result["archive_bytes"].as_u64().unwrap() >= 4 * GIB,
        "{result}"
    );
    assert!(peak > 0, "no VmHWM sample of the push process");
    eprintln!(
        "4 GiB push: peak RSS {:.1} MiB, {} bytes uploaded, {} ms",
        peak as f64 / 1048576.0,
        result["bytes_uploaded"],
        result["elapsed_ms"]
    );
    assert!(
        peak < BOUND,
        "peak RSS {peak} bytes exceeds the 64 MiB bound"
    );

    // The tag exists and points at the complete image.
    let r = Reference::parse(&image).unwrap();
    let client = RegistryClient::connect(&r, ClientOptions::default(), Access::Pull)
        .await
        .unwrap();
    let top = client.get_manifest(r.manifest_reference()).await.unwrap();
    assert_eq!(top.digest, result["digest"].as_str().unwrap());
    for l in result["layers"].as_array().unwrap() {
        assert!(
            client
                .blob_exists(l["digest"].as_str().unwrap())
                .await
                .unwrap()
        );
    }
}
