//! The API's error answer: `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx
//! status, and the JSON body extractor that turns every body problem into one.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ms2m_api::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody::new(self.code, self.message)),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::MalformedJson,
                format!(
                    "the body is not valid JSON: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.body_text())
                ),
            ),
            JsonRejection::JsonDataError(e) => ApiError::invalid(
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text()),
            ),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "send the body with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::PayloadTooLarge,
                    format!("the body is larger than {} bytes", super::MAX_BODY),
                )
            }
            other => ApiError::new(other.status(), ErrorCode::InvalidRequest, other.body_text()),
        }
    }
}

impl From<crate::checkpoint::StoreError> for ApiError {
    fn from(e: crate::checkpoint::StoreError) -> Self {
        use crate::checkpoint::StoreError as S;
        match &e {
            S::InvalidId(_) => ApiError::invalid(e.to_string()),
            S::NotFound(_) => ApiError::not_found(e.to_string()),
            S::Exists(_) | S::InUse(_) | S::BeingWritten(_) => ApiError::conflict(e.to_string()),
            S::Io(..) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<crate::jobs::JobsError> for ApiError {
    fn from(e: crate::jobs::JobsError) -> Self {
        use crate::jobs::JobsError as J;
        match &e {
            J::NotFound(_) => ApiError::not_found(e.to_string()),
            J::Finished(_) => ApiError::conflict(format!(
                "{e}: add `?purge=true` to forget it and delete its files"
            )),
            J::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                e.to_string(),
            ),
            J::Busy { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyJobs,
                e.to_string(),
            ),
        }
    }
}

impl From<crate::restore::RestoreError> for ApiError {
    fn from(e: crate::restore::RestoreError) -> Self {
        use crate::restore::RestoreError as R;
        match &e {
            R::PathNotAllowed(..) => ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::PathNotAllowed,
                e.to_string(),
            ),
            R::NoRootfs | R::Invalid(_) => ApiError::invalid(e.to_string()),
        }
    }
}

impl From<crate::runc::RuncError> for ApiError {
    fn from(e: crate::runc::RuncError) -> Self {
        match &e {
            crate::runc::RuncError::NotFound(_) => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::ContainerNotFound,
                e.to_string(),
            ),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<crate::image_store::Error> for ApiError {
    fn from(e: crate::image_store::Error) -> Self {
        use crate::image_store::Error as I;
        match &e {
            I::Reference(_) => ApiError::invalid(e.to_string()),
            I::Spawn { .. } | I::Failed { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::ImageStoreError,
                e.to_string(),
            ),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}
