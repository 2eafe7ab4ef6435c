//! `/v1/containers/{id}`: state and removal of standalone (runc) containers, for the
//! shim's rollback (delete the target) and finalization (remove the source).

use ms2m_api::ErrorCode;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::{ApiError, AppState};
use crate::checkpoint::validate_id;

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::ContainerNotFound,
        format!("runc has no container {id}"),
    )
}

pub async fn state(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    validate_id(&id).map_err(|_| not_found(&id))?;
    let st = s.runc.state(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(ms2m_api::ContainerState {
        id: st.id,
        status: st.status,
        pid: Some(st.pid),
        bundle: st.bundle,
    })
    .into_response())
}

pub async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    validate_id(&id).map_err(|_| not_found(&id))?;
    let st = s.runc.state(&id).await?.ok_or_else(|| not_found(&id))?;
    if st.status != "stopped" {
        // Already exiting containers make `kill` fail; `delete --force` covers them.
        let _ = s.runc.kill(&id, "KILL").await;
        for _ in 0..50 {
            match s.runc.state(&id).await? {
                Some(x) if x.status != "stopped" => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => break,
            }
        }
    }
    s.runc.delete(&id, true).await?;
    let ours = s.config.bundles_dir().join(&id);
    if st.bundle == ours
        && let Err(e) = tokio::fs::remove_dir_all(&ours).await
    {
        tracing::warn!(bundle = %ours.display(), error = %e, "could not remove bundle");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
