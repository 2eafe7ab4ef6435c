//! Push → pull through a real docker-registry gives back the identical archive, and the
//! pushed image is a valid OCI image for skopeo and umoci.

use std::process::Command;

use ms2m_agent::registry::Reference;
use ms2m_agent::transfer::pull::{PullOptions, pull};
use ms2m_agent::transfer::push::{PushOptions, push};
use ms2m_agent::transfer::{LayerState, Progress};
use ms2m_image_format::sha256_digest;
use ms2m_tests::env;
use ms2m_tests::process::{run, stdout};
use ms2m_tests::transfer::{synthetic_checkpoint, tree_listing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_gives_the_identical_archive_and_a_valid_image() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("ckpt");
    synthetic_checkpoint(&src, "counter", 6 * 1024 * 1024 + 123);
    let tag = env::unique("rt");
    let image =
        Reference::parse(&format!("{}/ms2m-test/roundtrip:{tag}", env::registry())).unwrap();

    let progress = Progress::new();
    let pushed = push(&src, &image, &PushOptions::default(), &progress)
        .await
        .unwrap();
    assert!(pushed.digest.starts_with("sha256:"));
    assert_eq!(pushed.layers.len(), PushOptions::default().layers.min(6));
    let snap = progress.snapshot();
    assert!(snap.finished);
    assert!(
        snap.layers.iter().all(|l| l.state == LayerState::Done),
        "{snap:?}"
    );
    // zstd must have done its job on the half-zero page image.
    assert!(
        pushed.bytes_uploaded < pushed.archive_bytes * 7 / 10,
        "{pushed:?}"
    );

    let dest = work.path().join("pulled");
    let pulled = pull(&image, &dest, &PullOptions::default(), &Progress::new())
        .await
        .unwrap();
    assert_eq!(pulled.digest, pushed.digest);
    assert_eq!(pulled.path, dest);
    assert_eq!(tree_listing(&src), tree_listing(&dest));

    // Other tools read it: skopeo (manifest + annotations) and umoci (unpacks the layers).
    let skopeo = env::tool("skopeo", "skopeo");
    let inspect = stdout(
        Command::new(&skopeo)
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{image}")),
    );
    let index: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        index["annotations"]["org.criu.checkpoint.container.name"], "counter",
        "{inspect}"
    );
    let cfg = stdout(
        Command::new(&skopeo)
            .args(["inspect", "--tls-verify=false", "--config"])
            .arg(format!("docker://{image}")),
    );
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["rootfs"]["diff_ids"].as_array().unwrap().len(),
        pushed.layers.len()
    );

    let layout = work.path().join("layout");
    run(Command::new(&skopeo)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:ckpt", layout.display())));
    // skopeo verified every blob's digest while copying; umoci 0.4 cannot read zstd
    // layers, so it checks the gzip image in the next test.
    assert!(layout.join("index.json").is_file());

    // A zstd layer is a run of 1 MiB frames (the 6 MiB page image makes several): the
    // reference decoder and containers/image's (skopeo --dest-decompress, what CRI-O
    // runs) both read each back to exactly the tar its diff_id names.
    let zstd = env::tool("zstd", "zstd");
    let plain = work.path().join("decompressed");
    run(Command::new(&skopeo)
        .args(["copy", "--src-tls-verify=false", "--dest-decompress"])
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", plain.display())));
    for layer in &pushed.layers {
        let blob = layout.join("blobs/sha256").join(&layer.digest[7..]);
        let tar = run(Command::new(&zstd).arg("-dc").arg(&blob)).stdout;
        assert_eq!(tar.len() as u64, layer.uncompressed_size);
        assert_eq!(
            sha256_digest(&tar),
            layer.diff_id,
            "zstd -d of {}",
            layer.digest
        );
        let by_skopeo = std::fs::read(plain.join(&layer.diff_id[7..])).unwrap();
        assert!(
            by_skopeo == tar,
            "skopeo's decompression of {}",
            layer.digest
        );
    }
    let biggest = pushed.layers.iter().map(|l| l.size).max().unwrap();
    let frames = count_zstd_frames(
        &std::fs::read(
            layout.join("blobs/sha256").join(
                &pushed
                    .layers
                    .iter()
                    .find(|l| l.size == biggest)
                    .unwrap()
                    .digest[7..],
            ),
        )
        .unwrap(),
    );
    assert!(frames >= 6, "the page image's layer has {frames} frames");
}

/// Counts the frames of a zstd stream by walking frame headers and block headers.
fn count_zstd_frames(mut b: &[u8]) -> usize {
    let mut frames = 0;
    while !b.is_empty() {
        assert_eq!(&b[..4], &[0x28, 0xb5, 0x2f, 0xfd], "frame magic");
        let fhd = b[4];
        let single_segment = fhd & 0x20 != 0;
        let fcs_len = match fhd >> 6 {
            0 => usize::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let did_len = [0, 1, 2, 4][usize::from(fhd & 3)];
        let mut at = 5 + usize::from(!single_segment) + did_len + fcs_len;
        loop {
            let h = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], 0]);
            let (last, kind, size) = (h & 1 == 1, (h >> 1) & 3, (h >> 3) as usize);
            at += 3 + if kind == 1 { 1 } else { size };
            if last {
                break;
            }
        }
        if fhd & 4 != 0 {
            at += 4; // content checksum
        }
        b = &b[at..];
        frames += 1;
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_archive_pushes_with_gzip_and_pulls_back() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("ckpt");
    synthetic_checkpoint(&src, "tarred", 1024 * 1024);
    let tar = work.path().join("checkpoint.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let image = Reference::parse(&format!(
        "{}/ms2m-test/tarred:{}",
        env::registry(),
        env::unique("gz")
    ))
    .unwrap();
    let opts = PushOptions {
        compression: ms2m_image_format::Compression::Gzip { level: 1 },
        layers: 3,
        parallel: 3,
        ..PushOptions::default()
    };
    let pushed = push(&tar, &image, &opts, &Progress::new()).await.unwrap();
    assert_eq!(pushed.layers.len(), 3);
    let dest = work.path().join("pulled");
    pull(&image, &dest, &PullOptions::default(), &Progress::new())
        .await
        .unwrap();
    assert_eq!(tree_listing(&src), tree_listing(&dest));

    // umoci unpacks the gzip image to the same tree (the layers unpacked at `/`).
    let layout = work.path().join("layout");
    run(Command::new(env::tool("skopeo", "skopeo"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:ckpt", layout.display())));
    let bundle = work.path().join("bundle");
    run(Command::new(env::tool("umoci", "umoci"))
        .args(["raw", "unpack", "--rootless", "--image"])
        .arg(format!("{}:ckpt", layout.display()))
        .arg(&bundle));
    assert_eq!(tree_listing(&src), tree_listing(&bundle));
}
