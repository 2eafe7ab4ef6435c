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

/// `202 Accepted` with the job and its `Location`.
pub fn accepted(job: JobView) -> Response {
    let loc = format!("/v1/jobs/{}", job.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, loc)],
        axum::Json(job),
    )
        .into_response()
}
