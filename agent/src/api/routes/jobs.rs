//! `/v1/jobs`.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use ms2m_api::JobList;
use ms2m_api::job::{JobCancelQuery, JobGetQuery, JobListQuery, MAX_WAIT_SECONDS};

use crate::api::{ApiError, AppState};

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))
}

pub async fn list(
    State(s): State<AppState>,
    q: Result<Query<JobListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let jobs: Vec<_> = s
        .jobs
        .list()
        .into_iter()
        .filter(|j| q.status.is_none_or(|st| j.status == st))
        .filter(|j| q.kind.is_none_or(|k| j.kind == k))
        .collect();
    Ok(axum::Json(JobList { jobs }).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<JobGetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let job = match q.wait {
        Some(w) if w > MAX_WAIT_SECONDS => {
            return Err(ApiError::invalid(format!(
                "wait must be at most {MAX_WAIT_SECONDS} seconds"
            )));
        }
        Some(w) => s.jobs.wait(&id, Duration::from_secs(w)).await,
        None => s.jobs.get(&id),
    };
    job.map(|j| axum::Json(j).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

pub async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<JobCancelQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let job = s.jobs.cancel(&id, q.purge).await?;
    Ok(axum::Json(job).into_response())
}
