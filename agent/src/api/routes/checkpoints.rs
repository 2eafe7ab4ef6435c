//! `/v1/checkpoints`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ms2m_api::{CheckpointList, CheckpointRequest, ErrorCode, NetworkLock};

use crate::api::error::ApiJson;
use crate::api::{ApiError, AppState};
use crate::checkpoint::kubelet::KubeletBackend;
use crate::checkpoint::runc::RuncBackend;
use crate::checkpoint::{self, validate_id};
use crate::jobs::JobKind;

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn dns1123_label(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Namespaces and container names are DNS-1123 labels, pod names DNS-1123 subdomains
/// (labels joined by `.`, at most 253). Checked before the names go anywhere: they
/// become kubelet URL path segments, and `..` there would be normalised into another
/// route called with the agent's service-account token.
fn k8s_name(what: &str, v: &str) -> Result<(), ApiError> {
    let ok = match what {
        "pod" => v.len() <= 253 && v.split('.').all(dns1123_label),
        _ => dns1123_label(v),
    };
    if ok {
        Ok(())
    } else {
        let rule = if what == "pod" {
            "a DNS-1123 subdomain"
        } else {
            "a DNS-1123 label"
        };
        Err(ApiError::invalid(format!(
            "{what} {v:?} is not a Kubernetes name ({rule})"
        )))
    }
}

pub async fn create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CheckpointRequest>,
) -> Result<Response, ApiError> {
    match req {
        CheckpointRequest::Runc {
            container_id,
            leave_running,
            tcp_established,
            tcp_close,
            network_lock,
            checkpoint_id,
            rootfs_image,
        } => {
            let tcp_close = tcp_close.unwrap_or(!leave_running && !tcp_established);
            if tcp_close && tcp_established {
                return Err(ApiError::invalid(
                    "tcp_close and tcp_established exclude each other",
                ));
            }
            let network_lock =
                network_lock.or((tcp_close && !leave_running).then_some(NetworkLock::Skip));
            validate_id(&container_id)
                .map_err(|_| ApiError::invalid(format!("invalid container_id {container_id:?}")))?;
            if s.runc.state(&container_id).await?.is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::ContainerNotFound,
                    format!("runc has no container {container_id}"),
                ));
            }
            if let Some(img) = &rootfs_image {
                crate::restore::resolve_rootfs(
                    Some(img),
                    std::path::Path::new("/nonexistent"),
                    &s.config.allowed_rootfs_dirs,
                )?;
            }
            let id =
                checkpoint_id.unwrap_or_else(|| format!("{container_id}-{}", super::unix_millis()));
            s.store.ensure_new(&id)?;
            let backend = RuncBackend {
                runc: s.runc.clone(),
                criu: s.config.criu_path.clone(),
                container_id,
                leave_running,
                tcp_established,
                tcp_close,
                network_lock,
                rootfs_image,
                pause_markers: crate::recovery::markers_dir(&s.config),
            };
            let store = s.store.clone();
            let job = s.jobs.spawn(JobKind::Checkpoint, "preparing", move |ctx| {
                checkpoint::run_job(backend, store, id, ctx)
            })?;
            Ok(super::accepted(job))
        }
        CheckpointRequest::Kubelet {
            namespace,
            pod,
            container,
            timeout_seconds,
            checkpoint_id,
        } => {
            k8s_name("namespace", &namespace)?;
            k8s_name("pod", &pod)?;
            k8s_name("container", &container)?;
            let id = checkpoint_id
                .unwrap_or_else(|| format!("{pod}-{container}-{}", super::unix_millis()));
            s.store.ensure_new(&id)?;
            let backend = KubeletBackend {
                config: s.config.kubelet.clone(),
                namespace,
                pod,
                container,
                timeout: Duration::from_secs(
                    timeout_seconds
                        .unwrap_or(ms2m_api::DEFAULT_KUBELET_TIMEOUT_SECONDS)
                        .clamp(1, ms2m_api::MAX_KUBELET_TIMEOUT_SECONDS),
                ),
            };
            let store = s.store.clone();
            let job = s.jobs.spawn(JobKind::Checkpoint, "preparing", move |ctx| {
                checkpoint::run_job(backend, store, id, ctx)
            })?;
            Ok(super::accepted(job))
        }
    }
}

pub async fn list(State(s): State<AppState>) -> Response {
    let store = s.store.clone();
    let list = tokio::task::spawn_blocking(move || store.list())
        .await
        .unwrap_or_default();
    axum::Json(CheckpointList { checkpoints: list }).into_response()
}

pub async fn inspect(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let dir = s.store.existing(&id)?;
    let mut summary = tokio::task::spawn_blocking(move || crate::inspect::inspect(&dir))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    summary.checkpoint_id = Some(id);
    Ok(axum::Json(summary).into_response())
}

pub async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = s.store.clone();
    tokio::task::spawn_blocking(move || store.delete(&id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_are_dns_1123() {
        for ok in ["default", "kube-system", "a", "x1"] {
            k8s_name("namespace", ok).unwrap();
            k8s_name("container", ok).unwrap();
        }
        k8s_name("pod", "web-0.shard.a").unwrap();
        for bad in [
            "..",
            ".",
            "a.b",
            "-a",
            "a-",
            "A",
            "a_b",
            "",
            &"a".repeat(64),
            "a/b",
        ] {
            assert!(k8s_name("namespace", bad).is_err(), "{bad:?}");
        }
        for bad in ["..", "a..b", ".a", "a.", "-a.b", &"a.".repeat(127)] {
            assert!(k8s_name("pod", bad).is_err(), "{bad:?}");
        }
    }
}
