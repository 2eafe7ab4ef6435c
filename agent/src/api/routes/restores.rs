//! `/v1/restores`.

use axum::extract::State;
use axum::response::Response;
use ms2m_api::RestoreRequest;

use crate::api::error::ApiJson;
use crate::api::{ApiError, AppState};
use crate::checkpoint::validate_id;
use crate::jobs::JobKind;
use crate::restore::{self, RestoreSpec};

pub async fn create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<Response, ApiError> {
    let checkpoint = s.store.existing(&req.checkpoint_id)?;
    validate_id(&req.container_id)
        .map_err(|_| ApiError::invalid(format!("invalid container_id {:?}", req.container_id)))?;
    let bundle = s.config.bundles_dir().join(&req.container_id);
    if s.runc.state(&req.container_id).await?.is_some() || bundle.exists() {
        return Err(ApiError::conflict(format!(
            "container {} already exists",
            req.container_id
        )));
    }
    let netns = req
        .netns_path
        .as_deref()
        .map(restore::check_netns)
        .transpose()?;
    let rootfs_image = restore::resolve_rootfs(
        req.rootfs.as_deref(),
        &checkpoint,
        &s.config.allowed_rootfs_dirs,
    )?;
    let hostname = req
        .hostname
        .clone()
        .unwrap_or_else(|| req.container_id.to_ascii_lowercase().replace('_', "-"));
    restore::check_hostname(&hostname)?;
    let spec = RestoreSpec {
        checkpoint,
        container_id: req.container_id,
        bundle,
        rootfs_image,
        netns,
        tcp_established: req.tcp_established,
        tcp_close: req.tcp_close,
        hostname,
    };
    let in_use = s.store.acquire(&req.checkpoint_id);
    let runc = s.runc.clone();
    let job = s
        .jobs
        .spawn(JobKind::Restore, "preparing", move |ctx| async move {
            let _in_use = in_use;
            restore::run(runc, spec, ctx).await
        })?;
    Ok(super::accepted(job))
}
