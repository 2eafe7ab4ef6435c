//! Faults on real registries: a registry killed in the middle of a push (restarted in
//! time → complete correct image; not in time → clean error and no tag), and a blob
//! corrupted on its way to a pull (→ digest error, nothing unpacked).

use std::time::Duration;

use ms2m_agent::registry::{ClientOptions, Reference};
use ms2m_agent::transfer::pull::{PullOptions, pull};
use ms2m_agent::transfer::push::{PushOptions, push};
use ms2m_agent::transfer::{Progress, Snapshot};
use ms2m_tests::env;
use ms2m_tests::transfer::{
    Fault, FaultyProxy, PrivateRegistry, dir_names, synthetic_checkpoint, tree_listing,
};

/// Waits until the push has moved `bytes` on the wire (or finished).
async fn wait_for_wire(progress: &Progress, bytes: u64) -> Snapshot {
    loop {
        let s = progress.snapshot();
        if s.wire_bytes >= bytes || s.finished {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn opts(attempts: u32) -> PushOptions {
    PushOptions {
        client: ClientOptions {
            attempts,
            backoff: Duration::from_millis(300),
            ..ClientOptions::default()
        },
        ..PushOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_killed_mid_push_and_restarted_gives_a_complete_correct_image() {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = work.path().join("ckpt");
    synthetic_checkpoint(&src, "killed", 192 * 1024 * 1024);
    let mut reg = PrivateRegistry::start("", None);
    let image = Reference::parse(&format!("{}/ms2m/killed:v1", reg.addr)).unwrap();

    let progress = Progress::new();
    let push_opts = opts(10);
    let pushing = {
        let (src, image, progress) = (src.clone(), image.clone(), progress.clone());
        tokio::spawn(async move { push(&src, &image, &push_opts, &progress).await })
    };
    let s = wait_for_wire(&progress, 16 * 1024 * 1024).await;
    assert!(
        !s.finished,
        "push finished before the registry could be killed"
    );
    reg.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    reg.restart();

    let pushed = pushing
        .await
        .unwrap()
        .expect("push must survive a registry restart");
    let snap = progress.snapshot();
    assert!(
        snap.layers.iter().any(|l| l.attempts > 1),
        "no layer was retried: {snap:?}"
    );
    assert_eq!(reg.tags("ms2m/killed"), vec!["v1".to_string()]);
    let dest = work.path().join("pulled");
    let pulled = pull(&image, &dest, &PullOptions::default(), &Progress::new())
        .await
        .unwrap();
    assert_eq!(pulled.digest, pushed.digest);
    assert_eq!(tree_listing(&work.path().join("ckpt")), tree_listing(&dest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_for_good_gives_a_clean_error_and_no_tag() {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = work.path().join("ckpt");
    synthetic_checkpoint(&src, "down", 128 * 1024 * 1024);
    let mut reg = PrivateRegistry::start("", None);
    let image = Reference::parse(&format!("{}/ms2m/down:v1", reg.addr)).unwrap();

    let progress = Progress::new();
    let push_opts = opts(2);
    let pushing = {
        let (src, image, progress) = (src.clone(), image.clone(), progress.clone());
        tokio::spawn(async move { push(&src, &image, &push_opts, &progress).await })
    };
    let s = wait_for_wire(&progress, 8 * 1024 * 1024).await;
    assert!(
        !s.finished,
        "push finished before the registry could be killed"
    );
    reg.kill();
    let err = pushing
        .await
        .unwrap()
        .expect_err("push to a dead registry must fail");
    // Either a layer upload used up its retries, or the request that found the
    // registry gone failed outright: both name the registry that went away.
    let msg = format!("{err:#}");
    let retried = matches!(
        &err,
        ms2m_agent::transfer::Error::Upload { attempts: 2, .. }
    );
    let refused = matches!(&err, ms2m_agent::transfer::Error::Registry(_));
    assert!(retried || refused, "not a registry failure: {msg}");
    assert!(
        msg.contains(&reg.addr),
        "the error names no registry: {msg}"
    );

    reg.restart();
    assert!(reg.tags("ms2m/down").is_empty(), "a failed push left a tag");
}

/// Pushes a synthetic checkpoint of `mib` MiB as `ms2m-test/<name>` and puts a proxy
/// with `fault` in front of the registry for its largest layer: the push result, that
/// layer's digest, the proxy and the image's reference through the proxy.
async fn pushed_behind_a_faulty_proxy(
    work: &std::path::Path,
    name: &str,
    mib: u64,
    fault: Fault,
) -> (
    ms2m_agent::transfer::push::PushResult,
    String,
    FaultyProxy,
    Reference,
) {
    let src = work.join("ckpt");
    synthetic_checkpoint(&src, name, mib * 1024 * 1024);
    let image = Reference::parse(&format!(
        "{}/ms2m-test/{name}:{}",
        env::registry(),
        env::unique("f")
    ))
    .unwrap();
    let pushed = push(&src, &image, &PushOptions::default(), &Progress::new())
        .await
        .unwrap();
    let victim = pushed
        .layers
        .iter()
        .max_by_key(|l| l.size)
        .unwrap()
        .digest
        .clone();
    let proxy = FaultyProxy::start(&env::registry(), &victim, fault);
    let via_proxy = Reference::parse(&format!(
        "{}/{}:{}",
        proxy.addr,
        image.repository,
        image.tag.as_deref().unwrap()
    ))
    .unwrap();
    (pushed, victim, proxy, via_proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_fails_the_pull_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (_, victim, proxy, via_proxy) =
        pushed_behind_a_faulty_proxy(work.path(), "corrupt", 4, Fault::FlipByte).await;
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("pulled");
    let err = pull(&via_proxy, &dest, &PullOptions::default(), &Progress::new())
        .await
        .expect_err("a corrupted layer must fail the pull");
    let msg = format!("{err:#}");
    assert!(msg.contains("digest mismatch"), "{msg}");
    assert!(msg.contains(&victim), "{msg}");
    assert!(proxy.injected.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(!dest.exists(), "a failed pull created its destination");
    assert!(
        dir_names(&out).is_empty(),
        "a failed pull left {:?}",
        dir_names(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_download_resumes_with_a_range_request() {
    let work = tempfile::tempdir().unwrap();
    let (pushed, _, proxy, via_proxy) =
        pushed_behind_a_faulty_proxy(work.path(), "resumed", 8, Fault::CutOnce).await;
    let dest = work.path().join("pulled");
    let progress = Progress::new();
    let pulled = pull(&via_proxy, &dest, &PullOptions::default(), &progress)
        .await
        .expect("a dropped download must resume");
    assert_eq!(pulled.digest, pushed.digest);
    assert_eq!(tree_listing(&work.path().join("ckpt")), tree_listing(&dest));
    assert_eq!(proxy.injected.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        proxy.ranged.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the resumed download must ask for the rest only"
    );
    // Each compressed byte crossed the wire once: the resume did not start over.
    let snap = progress.snapshot();
    let total: u64 = pushed.layers.iter().map(|l| l.size).sum();
    assert_eq!(snap.wire_bytes, total);
}

/// An image whose config names a wrong diff_id for a layer whose blob is intact: the
/// blob digests pass, so a plain pull unpacks it; `verify_diff_ids` refuses it and
/// leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_lying_about_a_diff_id_is_caught_when_asked() {
    use ms2m_agent::registry::{Access, RegistryClient};
    use ms2m_image_format::sha256_digest;

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("ckpt");
    synthetic_checkpoint(&src, "liar", 3 * 1024 * 1024);
    let image = Reference::parse(&format!(
        "{}/ms2m-test/diffid:{}",
        env::registry(),
        env::unique("d")
    ))
    .unwrap();
    let pushed = push(&src, &image, &PushOptions::default(), &Progress::new())
        .await
        .unwrap();

    // Same layers, a config whose first diff_id is wrong, a manifest pointing at it.
    let client = RegistryClient::connect(&image, ClientOptions::default(), Access::Push)
        .await
        .unwrap();
    let manifest = client.get_manifest(&pushed.manifest_digest).await.unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&manifest.bytes).unwrap();
    let config_digest = m["config"]["digest"].as_str().unwrap().to_string();
    let mut config: serde_json::Value = serde_json::from_slice(
        &client
            .get_small_blob(&config_digest, 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    config["rootfs"]["diff_ids"][0] = sha256_digest(b"not this layer").into();
    let config = serde_json::to_vec(&config).unwrap();
    let lying_config = sha256_digest(&config);
    client.put_blob(&lying_config, &config).await.unwrap();
    m["config"]["digest"] = lying_config.into();
    m["config"]["size"] = config.len().into();
    let lying = Reference {
        tag: Some("lying".into()),
        ..image.clone()
    };
    client
        .put_manifest(
            "lying",
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&m).unwrap(),
        )
        .await
        .unwrap();

    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let strict = PullOptions {
        verify_diff_ids: true,
        ..PullOptions::default()
    };
    let err = pull(&lying, &out.join("strict"), &strict, &Progress::new())
        .await
        .expect_err("a wrong diff_id must fail a verifying pull");
    assert!(format!("{err:#}").contains("diff_id"), "{err:#}");
    assert!(dir_names(&out).is_empty(), "left {:?}", dir_names(&out));

    let dest = out.join("plain");
    pull(&lying, &dest, &PullOptions::default(), &Progress::new())
        .await
        .unwrap();
    assert_eq!(tree_listing(&src), tree_listing(&dest));
}
