//! Registry and Direct transfer routes: the transfer engine (`crate::transfer`) does the
//! work inside agent jobs; this file validates requests and reports progress.

use ms2m_api::ErrorCode;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ms2m_api::{
    DirectSendRequest, PullRequest, PullResult, PushRequest, ReceiveQuery, ReceiveReady,
    ReceiveResult,
};

use crate::api::error::ApiJson;
use crate::api::{ApiError, AppState};
use crate::image_store::{ImageRef, ImageStore};
use crate::jobs::{JobCtx, JobFailure, JobKind};
use crate::registry::{ClientOptions, Reference};
use crate::transfer::Progress;
use crate::transfer::direct::{self, DirectOptions};
use crate::transfer::encode_args::EncodeArgs;

fn receive_query(
    q: Result<Query<ReceiveQuery>, QueryRejection>,
) -> Result<Option<ImageRef>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))?;
    Ok(q.import.as_deref().map(ImageRef::parse).transpose()?)
}

fn client_options(s: &AppState, insecure: bool) -> ClientOptions {
    ClientOptions {
        insecure,
        auth_file: s.config.registry_auth_file.clone(),
        ca_file: s.config.registry_ca_file.clone(),
        ..ClientOptions::default()
    }
}

/// Mirror the engine's counters into the job until `done` fires.
fn follow(progress: Progress, ctx: JobCtx) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let s = progress.snapshot();
            if s.planned_bytes > 0 {
                ctx.set_bytes_total(Some(s.planned_bytes));
            }
            ctx.set_bytes_done(s.wire_bytes);
            if s.finished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

fn transfer_failure(e: crate::transfer::Error) -> JobFailure {
    let code = match &e {
        crate::transfer::Error::Registry(_) => ErrorCode::RegistryError,
        crate::transfer::Error::Image(_) => ErrorCode::InvalidArchive,
        crate::transfer::Error::TooLarge { .. } => ErrorCode::CheckpointTooLarge,
        _ => ErrorCode::TransferError,
    };
    JobFailure::new(code, e.to_string())
}

pub async fn push(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<Response, ApiError> {
    let source = s.store.existing(&req.checkpoint_id)?;
    let image = Reference::parse(&req.image)
        .map_err(|e| ApiError::invalid(format!("image {:?}: {e}", req.image)))?;
    let opts = EncodeArgs {
        layers: req.layers,
        parallel: req.parallel,
        compression: req.compression.unwrap_or_else(|| "zstd".into()),
        level: None,
        zstd_workers: None,
    }
    .push_options(client_options(&s, req.insecure))
    .map_err(ApiError::invalid)?;
    let in_use = s.store.acquire(&req.checkpoint_id);
    let job = s
        .jobs
        .spawn(JobKind::Push, "uploading", move |ctx| async move {
            let _in_use = in_use;
            let progress = Progress::new();
            let follower = follow(progress.clone(), ctx.clone());
            let r = crate::transfer::push::push(&source, &image, &opts, &progress).await;
            follower.abort();
            let r = r.map_err(transfer_failure)?;
            ctx.set_bytes_done(r.bytes_uploaded);
            Ok(ms2m_api::PushResult::from(r))
        })?;
    Ok(super::accepted(job))
}

pub async fn pull(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<PullRequest>,
) -> Result<Response, ApiError> {
    let image = Reference::parse(&req.image)
        .map_err(|e| ApiError::invalid(format!("image {:?}: {e}", req.image)))?;
    let id = req
        .checkpoint_id
        .unwrap_or_else(|| format!("pull-{}", super::unix_millis()));
    s.store.ensure_new(&id)?;
    let opts = crate::transfer::pull::PullOptions {
        client: client_options(&s, req.insecure),
        parallel: req.parallel.unwrap_or(4).max(1),
        verify_diff_ids: req.verify_diff_ids,
        max_bytes: Some(s.config.limits.max_checkpoint_bytes),
    };
    let store = s.store.clone();
    let job = s.jobs.spawn(JobKind::Pull, "downloading", move |ctx| {
        pull_job(store, id, image, opts, ctx)
    })?;
    Ok(super::accepted(job))
}

/// Aborts the spawned task when the job is cancelled (its future dropped).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn pull_job(
    store: crate::checkpoint::CheckpointStore,
    id: String,
    image: Reference,
    opts: crate::transfer::pull::PullOptions,
    ctx: JobCtx,
) -> Result<PullResult, JobFailure> {
    let partial = store.partial_path(&id);
    let final_path = store.path(&id);
    ctx.clean_on_failure(&partial);
    let progress = Progress::new();
    let follower = AbortOnDrop(follow(progress.clone(), ctx.clone()));
    // The engine's pull future is not provably `Send` for every lifetime the job
    // registry's signature asks of it; a task of its own sidesteps that.
    let (p, pr) = (partial.clone(), progress.clone());
    let mut task = AbortOnDrop(tokio::spawn(async move {
        crate::transfer::pull::pull(&image, &p, &opts, &pr).await
    }));
    let r = (&mut task.0)
        .await
        .map_err(|e| JobFailure::new(ErrorCode::Internal, e.to_string()))?;
    drop(follower);
    let r = r.map_err(transfer_failure)?;
    ctx.set_bytes_done(r.bytes_downloaded);
    tokio::fs::rename(&partial, &final_path)
        .await
        .map_err(|e| JobFailure::new(ErrorCode::Io, format!("{}: {e}", final_path.display())))?;
    ctx.output(&final_path);
    Ok(PullResult {
        checkpoint_id: id,
        path: final_path,
        digest: r.digest,
        size_bytes: r.size_bytes,
        bytes_downloaded: r.bytes_downloaded,
        elapsed_ms: r.elapsed_ms,
    })
}

pub async fn direct_send(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<DirectSendRequest>,
) -> Result<Response, ApiError> {
    let source = s.store.existing(&req.checkpoint_id)?;
    if !(req.target.starts_with("http://") || req.target.starts_with("https://")) {
        return Err(ApiError::invalid(format!(
            "target {:?} must be an http(s) URL of the receiving agent",
            req.target
        )));
    }
    let target_id = req
        .target_checkpoint_id
        .clone()
        .unwrap_or_else(|| req.checkpoint_id.clone());
    crate::checkpoint::validate_id(&target_id)?;
    if let Some(r) = &req.import_reference {
        ImageRef::parse(r)?;
    }
    let opts = match &s.config.tls {
        // Mutual TLS: only to the agent of the named node, with this agent's own
        // certificate and no bearer token.
        Some(files) => {
            let node = req.target_node.as_deref().ok_or_else(|| {
                ApiError::invalid(
                    "target_node is required: the target must prove to be the agent of that node",
                )
            })?;
            if !crate::tls::valid_node_name(node) {
                return Err(ApiError::invalid(format!(
                    "target_node {node:?} is not a node name"
                )));
            }
            if !req.target.starts_with("https://") {
                return Err(ApiError::invalid(format!(
                    "target {:?} must be https:// (this agent sends only over mutual TLS)",
                    req.target
                )));
            }
            let tls = crate::tls::peer_client_config(files, node)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            DirectOptions {
                tls: Some(tls),
                import_reference: req.import_reference.clone(),
                ..DirectOptions::default()
            }
        }
        // Plain listeners (tcp_insecure): the shared bearer token, as every agent's
        // TCP listener checks it.
        None => {
            let token = match &s.config.token_file {
                Some(p) => Some(
                    tokio::fs::read_to_string(p)
                        .await
                        .map_err(|e| {
                            ApiError::internal(format!("reading token file {}: {e}", p.display()))
                        })?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            DirectOptions {
                token,
                ca_file: s.config.direct_ca_file.clone(),
                import_reference: req.import_reference.clone(),
                ..DirectOptions::default()
            }
        }
    };
    let in_use = s.store.acquire(&req.checkpoint_id);
    let target = req.target;
    let job = s.jobs.spawn(JobKind::DirectSend, "encoding", move |ctx| {
        direct_send_job(source, target, target_id, opts, ctx, in_use)
    })?;
    Ok(super::accepted(job))
}

async fn direct_send_job(
    source: std::path::PathBuf,
    target: String,
    target_id: String,
    opts: DirectOptions,
    ctx: JobCtx,
    _in_use: crate::checkpoint::InUse,
) -> Result<ms2m_api::SendResult, JobFailure> {
    let progress = Progress::new();
    let follower = AbortOnDrop(follow(progress.clone(), ctx.clone()));
    let pr = progress.clone();
    let c = ctx.clone();
    let mut task = AbortOnDrop(tokio::spawn(async move {
        let archive = crate::transfer::push::open_archive(&source).await?;
        c.set_phase("sending");
        direct::send(archive, &target, &target_id, &opts, &pr).await
    }));
    let r = (&mut task.0)
        .await
        .map_err(|e| JobFailure::new(ErrorCode::Internal, e.to_string()))?;
    drop(follower);
    let r = r.map_err(transfer_failure)?;
    ctx.set_bytes_done(r.bytes_sent);
    Ok(r)
}

/// Preflight of a Direct transfer: would a receive into `id` start?
pub async fn direct_check(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<ReceiveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    // A bad reference is refused here, before the sender encodes anything.
    receive_query(q)?;
    s.store.ensure_new(&id)?;
    let dest = s.store.path(&id);
    direct::check_destination(&dest).map_err(|e| ApiError::conflict(e.to_string()))?;
    Ok(axum::Json(ReceiveReady {
        checkpoint_id: id,
        ready: true,
    })
    .into_response())
}

/// The receiving end: the request body is the stream. The work runs as a
/// `direct_receive` job (visible in `/v1/jobs`, cancellable) and the answer waits for it.
/// With `?import=<reference>`, the job then imports the received checkpoint into the
/// image store before answering.
pub async fn direct_receive(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<ReceiveQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let import = receive_query(q)?;
    s.store.ensure_new(&id)?;
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != ms2m_api::wire::CONTENT_TYPE {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be {}", ms2m_api::wire::CONTENT_TYPE),
        ));
    }
    let dest = s.store.path(&id);
    let cid = id.clone();
    let images = import.map(|r| (ImageStore::from_config(&s.config), r, s.store.clone()));
    let limits = direct::ReceiveLimits {
        max_layers: s.config.limits.max_direct_layers,
        max_bytes: Some(s.config.limits.max_checkpoint_bytes),
        stall: s.config.limits.idle_timeout,
    };
    let job = s
        .jobs
        .spawn(JobKind::DirectReceive, "receiving", move |ctx| async move {
            ctx.clean_on_failure(&dest);
            let mut r = direct::receive_limited(&dest, &headers, body, &limits)
                .await
                .map_err(transfer_failure)?;
            ctx.set_bytes_done(r.bytes_received);
            ctx.output(&dest);
            if let Some((store, reference, checkpoints)) = images {
                // The checkpoint is verified and committed: it stays whatever happens to
                // the import, which can be retried with `POST /v1/images`.
                ctx.keep(&dest);
                let _in_use = checkpoints.acquire(&cid);
                ctx.set_phase("importing");
                let imported = store
                    .import(&dest, &reference.to_string())
                    .await
                    .map_err(|e| {
                        let f = super::images::import_failure(e);
                        JobFailure::new(
                            f.code,
                            format!(
                                "checkpoint {cid} was received and stays stored, but importing it as {reference} failed: {}",
                                f.message
                            ),
                        )
                    })?;
                r.imported = Some(imported);
            }
            Ok(ReceiveResult {
                checkpoint_id: cid,
                received: r,
            })
        })?;
    let done = s
        .jobs
        .wait(&job.id, Duration::from_secs(24 * 3600))
        .await
        .ok_or_else(|| ApiError::internal("receive job vanished"))?;
    match (done.status, done.result, done.error) {
        (crate::jobs::JobStatus::Succeeded, Some(r), _) => Ok(axum::Json(r).into_response()),
        (_, _, Some(e)) if e.phase == "importing" => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ImageStoreError,
            e.message,
        )),
        (_, _, Some(e)) if e.code == ErrorCode::CheckpointTooLarge => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::CheckpointTooLarge,
            e.message,
        )),
        (_, _, Some(e))
            if e.code == ErrorCode::TransferError || e.code == ErrorCode::InvalidArchive =>
        {
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::TransferError,
                e.message,
            ))
        }
        (_, _, Some(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.message,
        )),
        _ => Err(ApiError::internal("receive ended without a result")),
    }
}
