//! `/v1/jobs`.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::{ApiError, AppState};
use crate::jobs::{JobKind, JobStatus};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<JobStatus>,
    kind: Option<JobKind>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    wait: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))
}

pub async fn list(
    State(s): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let jobs: Vec<_> = s
        .jobs
        .list()
        .into_iter()
        .filter(|j| q.status.is_none_or(|st| j.status == st))
        .filter(|j| q.kind.is_none_or(|k| j.kind == k))
        .collect();
    Ok(axum::Json(serde_json::json!({ "jobs": jobs })).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let job = match q.wait {
        Some(w) if w > 300 => return Err(ApiError::invalid("wait must be at most 300 seconds")),
        Some(w) => s.jobs.wait(&id, Duration::from_secs(w)).await,
        None => s.jobs.get(&id),
    };
    job.map(|j| axum::Json(j).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

pub async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let job = s.jobs.cancel(&id, q.purge).await?;
    Ok(axum::Json(job).into_response())
}
