//! The operators' benchmark runs every stage against a real registry and leaves a
//! complete image behind.

use ms2m_agent::registry::Reference;
use ms2m_agent::transfer::pull::{PullOptions, pull};
use ms2m_agent::transfer::push::PushOptions;
use ms2m_agent::transfer::{Progress, bench, synthetic};
use ms2m_tests::env;
use ms2m_tests::transfer::tree_listing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_every_stage_and_pushes_a_pullable_image() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("ckpt");
    synthetic::write_checkpoint(&src, "bench", 16 * 1024 * 1024).unwrap();
    let image = Reference::parse(&format!(
        "{}/ms2m-test/bench:{}",
        env::registry(),
        env::unique("b")
    ))
    .unwrap();
    let report = bench::run(&src, &image, &PushOptions::default())
        .await
        .unwrap();
    let names: Vec<&str> = report.stages.iter().map(|s| s.name).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    for s in &report.stages {
        assert!(s.bytes > 0 && s.mb_per_s > 0.0, "{s:?}");
    }
    // Half of the synthetic memory image is random: it cannot compress below that.
    let ratio = report.compressed_bytes as f64 / report.archive_bytes as f64;
    assert!((0.45..0.6).contains(&ratio), "compression ratio {ratio}");

    let dest = work.path().join("pulled");
    let pulled = pull(&image, &dest, &PullOptions::default(), &Progress::new())
        .await
        .unwrap();
    assert_eq!(pulled.digest, report.digest);
    assert_eq!(tree_listing(&src), tree_listing(&dest));
}
