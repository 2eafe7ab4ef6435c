//! `/healthz`, `/readyz`, `/metrics` and the JSON 404/405 answers.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ms2m_api::{ErrorCode, Probe};

use crate::api::{ApiError, AppState};

pub async fn healthz() -> Response {
    axum::Json(Probe {
        status: "ok".into(),
        criu_version: None,
    })
    .into_response()
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.jobs.is_shutting_down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "the agent is shutting down",
        )
        .into_response();
    }
    let criu = match s.criu.as_ref() {
        Ok(v) => v.clone(),
        Err(why) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NotReady,
                why.clone(),
            )
            .into_response();
        }
    };
    let dir = s.store.dir().to_owned();
    let writable = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)
            .and_then(|_| tempfile::tempfile_in(&dir))
            .map(drop)
            .map_err(|e| format!("state dir {} is not writable: {e}", dir.display()))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(why) = writable {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, why)
            .into_response();
    }
    axum::Json(Probe {
        status: "ready".into(),
        criu_version: Some(criu),
    })
    .into_response()
}

/// Prometheus asks for OpenMetrics in `Accept`; anything else (curl, promtool, older
/// scrapers) gets the classic text format.
pub async fn metrics(State(s): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (body, content_type) = s.metrics.encode_for(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
