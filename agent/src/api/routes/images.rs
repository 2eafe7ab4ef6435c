//! `/v1/images`: a stored checkpoint imported into the node's image store as a
//! checkpoint image (`crate::image_store`), and removed again (the shim's rollback).

use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use ms2m_api::{ImageDeleteQuery, ImportRequest, ImportResult};

use crate::api::error::ApiJson;
use crate::api::{ApiError, AppState};
use crate::image_store::{ImageRef, ImageStore};
use crate::jobs::{JobFailure, JobKind};

pub fn import_failure(e: crate::image_store::Error) -> JobFailure {
    JobFailure::new(e.code(), e.to_string())
}

/// `POST /v1/images` → `202` job (`kind: image_import`).
pub async fn import(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> Result<Response, ApiError> {
    let source = s.store.existing(&req.checkpoint_id)?;
    ImageRef::parse(&req.reference)?;
    let store = ImageStore::from_config(&s.config);
    let in_use = s.store.acquire(&req.checkpoint_id);
    let (id, reference) = (req.checkpoint_id, req.reference);
    let job = s
        .jobs
        .spawn(JobKind::ImageImport, "importing", move |_ctx| async move {
            let _in_use = in_use;
            let started = Instant::now();
            let imported = store
                .import(&source, &reference)
                .await
                .map_err(import_failure)?;
            Ok(ImportResult {
                checkpoint_id: id,
                imported,
                elapsed_ms: started.elapsed().as_millis() as u64,
            })
        })?;
    Ok(super::accepted(job))
}

/// `DELETE /v1/images?reference=<ref>` → `200`, also when the image was not there.
pub async fn remove(
    State(s): State<AppState>,
    q: Result<Query<ImageDeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::invalid(format!(
            "bad query string: {} (expected `?reference=<image reference>`)",
            e.body_text()
        ))
    })?;
    let removed = ImageStore::from_config(&s.config)
        .remove(&q.reference)
        .await?;
    Ok(axum::Json(removed).into_response())
}
