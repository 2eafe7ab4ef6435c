//! Direct mode, agent to agent over real HTTP: the sender's encoder streams into the
//! receiver, which verifies and commits the archive; a stream that is cut short or
//! whose digests do not match leaves nothing behind.

use std::path::PathBuf;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use ms2m_agent::transfer::Progress;
use ms2m_agent::transfer::direct::{DirectOptions, check_destination, receive, send};
use ms2m_agent::transfer::push::open_archive;
use ms2m_api::wire::{self, FrameKind};
use ms2m_image_format::Compression;
use ms2m_tests::agent_http::{AgentAddr, AgentClient, try_call};
use ms2m_tests::transfer::{dir_names, synthetic_checkpoint, tree_listing};

const TOKEN: &str = "direct-test-token";

/// The receive route as the daemon mounts it: bearer token, then `receive`.
async fn serve(dir: PathBuf) -> String {
    async fn handler(
        State(dir): State<PathBuf>,
        Path(id): Path<String>,
        req: Request,
    ) -> (StatusCode, String) {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"));
        if !ok {
            return (StatusCode::UNAUTHORIZED, "missing or wrong token".into());
        }
        let (parts, body) = req.into_parts();
        match receive(&dir.join(id), &parts.headers, body).await {
            Ok(r) => (StatusCode::OK, serde_json::to_string(&r).unwrap()),
            Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
        }
    }
    async fn preflight(
        State(dir): State<PathBuf>,
        Path(id): Path<String>,
        headers: axum::http::HeaderMap,
    ) -> (StatusCode, String) {
        let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"));
        if !ok {
            return (StatusCode::UNAUTHORIZED, "missing or wrong token".into());
        }
        match check_destination(&dir.join(id)) {
            Ok(()) => (StatusCode::OK, "{}".into()),
            Err(e) => (StatusCode::CONFLICT, e.to_string()),
        }
    }
    let app = axum::Router::new()
        .route(
            "/v1/direct/receive/{id}",
            put(handler).merge(get(preflight)),
        )
        .with_state(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_send_delivers_the_identical_archive() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("ckpt");
    synthetic_checkpoint(&src, "direct", 24 * 1024 * 1024 + 5);
    let target_dir = work.path().join("target-node");
    std::fs::create_dir(&target_dir).unwrap();
    let url = serve(target_dir.clone()).await;

    let archive = open_archive(&src).await.unwrap();
    let opts = DirectOptions {
        token: Some(TOKEN.into()),
        ..DirectOptions::default()
    };
    let progress = Progress::new();
    let r = send(archive, &url, "direct-ckpt-1", &opts, &progress)
        .await
        .unwrap();
    assert_eq!(r.received.path, target_dir.join("direct-ckpt-1"));
    assert_eq!(r.received.bytes_received, r.bytes_sent);
    assert_eq!(progress.snapshot().wire_bytes, r.bytes_sent);
    assert_eq!(tree_listing(&src), tree_listing(&r.received.path));
    // Spool files are gone.
    assert_eq!(dir_names(&target_dir), vec!["direct-ckpt-1".to_string()]);

    // Without the token the target refuses, and nothing is created.
    let archive = open_archive(&src).await.unwrap();
    let err = send(
        archive,
        &url,
        "direct-ckpt-2",
        &DirectOptions::default(),
        &Progress::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(dir_names(&target_dir), vec!["direct-ckpt-1".to_string()]);

    // An id that exists is refused before anything is encoded.
    let archive = open_archive(&src).await.unwrap();
    let err = send(archive, &url, "direct-ckpt-1", &opts, &Progress::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

/// Two layers of about the same size stream at once, uncompressed and with zstd, so
/// their frames interleave on the wire. (That a DATA frame's header and payload cannot
/// be separated by another layer's frame is a property of the channel item, checked by
/// `frame_sink_cuts_data_frames_with_lengths`; a race here would only show it
/// sometimes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_big_layers_interleave_cleanly_compressed_or_not() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("ckpt");
    synthetic_checkpoint(&src, "direct", 16 * 1024 * 1024 + 77);
    let mut other = vec![0u8; 15 * 1024 * 1024 + 3];
    for (i, b) in other.iter_mut().enumerate() {
        *b = (i * 31 % 253) as u8;
    }
    std::fs::write(src.join("checkpoint/pages-3.img"), other).unwrap();
    let target_dir = work.path().join("target-node");
    std::fs::create_dir(&target_dir).unwrap();
    let url = serve(target_dir.clone()).await;
    for (i, compression) in [Compression::None, Compression::default()]
        .into_iter()
        .enumerate()
    {
        let opts = DirectOptions {
            token: Some(TOKEN.into()),
            layers: 2,
            compression,
            ..DirectOptions::default()
        };
        let id = format!("interleaved-{i}");
        let archive = open_archive(&src).await.unwrap();
        let progress = Progress::new();
        let r = send(archive, &url, &id, &opts, &progress).await.unwrap();
        assert_eq!(r.received.layers.len(), 2, "{compression:?}");
        assert_eq!(progress.snapshot().wire_bytes, r.bytes_sent);
        assert_eq!(tree_listing(&src), tree_listing(&r.received.path));
    }
}

fn frame(kind: FrameKind, layer: u16, payload: &[u8]) -> Vec<u8> {
    wire::frame(kind, layer, payload).to_vec()
}

/// A hand-made request: what a broken or lying sender would send.
fn raw_put(base: &str, id: &str, body: &[u8]) -> (u16, String) {
    let client = AgentClient::new(AgentAddr::Tcp {
        base: base.to_owned(),
        token: TOKEN.to_owned(),
    });
    let r = try_call(
        &client,
        "PUT",
        &format!("{}{id}", wire::ROUTE_PREFIX),
        &[("Content-Type", wire::CONTENT_TYPE)],
        Some(body.to_vec()),
        std::time::Duration::from_secs(120),
    )
    .expect("the receiving agent answers");
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_or_truncated_stream_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let target_dir = work.path().join("target-node");
    std::fs::create_dir(&target_dir).unwrap();
    let url = serve(target_dir.clone()).await;

    // An empty tar (two zero blocks) as an uncompressed layer, announced with a digest
    // that is not its own.
    let tar = vec![0u8; 1024];
    let desc = serde_json::json!({
        "media_type": "application/vnd.oci.image.layer.v1.tar",
        "digest": format!("sha256:{}", "ab".repeat(32)),
        "size": tar.len(),
        "diff_id": format!("sha256:{}", "ab".repeat(32)),
        "uncompressed_size": tar.len(),
        "annotations": {},
    });
    let mut body = frame(FrameKind::Data, 0, &tar);
    body.extend(frame(FrameKind::End, 0, desc.to_string().as_bytes()));
    body.extend(wire::done_frame(1).to_vec());
    let u = url.clone();
    let (status, msg) = tokio::task::spawn_blocking(move || raw_put(&u, "lying", &body))
        .await
        .unwrap();
    assert_eq!(status, 422, "{msg}");
    assert!(msg.contains("digest mismatch"), "{msg}");
    assert!(
        dir_names(&target_dir).is_empty(),
        "left {:?}",
        dir_names(&target_dir)
    );

    // Cut short: no END, no DONE.
    let body = frame(FrameKind::Data, 0, &[0u8; 512]);
    let u = url.clone();
    let (status, msg) = tokio::task::spawn_blocking(move || raw_put(&u, "cut", &body))
        .await
        .unwrap();
    assert_eq!(status, 422, "{msg}");
    assert!(msg.contains("without DONE"), "{msg}");
    assert!(
        dir_names(&target_dir).is_empty(),
        "left {:?}",
        dir_names(&target_dir)
    );
}

/// The receiver unpacks a layer while it streams and learns its digests only from the
/// END frame after the body: a real zstd layer whose announced digest (or diff_id) is
/// not its own must be refused and leave nothing, the same layer announced truthfully
/// must be committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_announced_after_the_body_are_enforced() {
    use ms2m_image_format::{Compression, encode_layer, plan_layers};

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("ckpt");
    synthetic_checkpoint(&src, "late-digest", 3 * 1024 * 1024 + 7);
    let target_dir = work.path().join("target-node");
    std::fs::create_dir(&target_dir).unwrap();
    let url = serve(target_dir.clone()).await;

    let archive = open_archive(&src).await.unwrap();
    let (layer, desc) = tokio::task::spawn_blocking(move || {
        let plan = plan_layers(&archive, 1).remove(0);
        let mut out = Vec::new();
        let compression = Compression::Zstd {
            level: 1,
            workers: 0,
        };
        let desc = encode_layer(&archive, &plan, &compression, &mut out).unwrap();
        (out, desc)
    })
    .await
    .unwrap();
    let body_with = |desc: &ms2m_image_format::LayerDescriptor| {
        let mut body = Vec::new();
        for c in layer.chunks(100_000) {
            body.extend(frame(FrameKind::Data, 0, c));
        }
        body.extend(frame(FrameKind::End, 0, &serde_json::to_vec(desc).unwrap()));
        body.extend(wire::done_frame(1).to_vec());
        body
    };

    let mut wrong_digest = desc.clone();
    wrong_digest.digest = format!("sha256:{}", "cd".repeat(32));
    // Direct streams are verified by their blob digest and size (no image, so no
    // diff_id is computed on either side: docs/transfer.md).
    let mut wrong_size = desc.clone();
    wrong_size.size += 1;
    for (id, lie) in [("lie-digest", wrong_digest), ("lie-size", wrong_size)] {
        let (u, body) = (url.clone(), body_with(&lie));
        let (status, msg) = tokio::task::spawn_blocking(move || raw_put(&u, id, &body))
            .await
            .unwrap();
        assert_eq!(status, 422, "{id}: {msg}");
        assert!(msg.contains("mismatch"), "{id}: {msg}");
        assert!(
            dir_names(&target_dir).is_empty(),
            "{id} left {:?}",
            dir_names(&target_dir)
        );
    }

    let (u, body) = (url.clone(), body_with(&desc));
    let (status, msg) = tokio::task::spawn_blocking(move || raw_put(&u, "truthful", &body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{msg}");
    assert_eq!(dir_names(&target_dir), vec!["truthful".to_string()]);
    assert_eq!(
        tree_listing(&src),
        tree_listing(&target_dir.join("truthful"))
    );
}
