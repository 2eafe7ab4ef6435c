//! Route handlers, one file per resource.

pub mod checkpoints;
pub mod containers;
pub mod images;
pub mod jobs;
pub mod probes;
pub mod restores;
pub mod transfer;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::jobs::JobView;

/// Milliseconds since the epoch: the suffix of default checkpoint ids.
pub fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// `202 Accepted` with the job and its `Location`.
pub fn accepted(job: JobView) -> Response {
    let loc = ms2m_api::routes::job_path(&job.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, loc)],
        axum::Json(job),
    )
        .into_response()
}
