//! Error codes: the `code` of an error answer (`{"error": {"code", "message"}}`) and of a
//! failed job's `error`. One enum for both, because several codes are both (a Direct
//! receive answers with its job's code).

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($(#[$m:meta])* $v:ident = $s:literal,)*) => {
        /// Every code the agent sends (docs/agent-api.md, "Errors" and "Jobs").
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($(#[$m])* $v,)*
            /// A code this build does not know (a newer agent, or a body that was not
            /// the agent's): never sent.
            #[serde(other)]
            Unknown,
        }

        impl ErrorCode {
            /// Every code the agent may send.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$v,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$v => $s,)*
                    ErrorCode::Unknown => "unknown",
                }
            }
        }
    };
}

codes! {
    // Answers to a request.
    MalformedJson = "malformed_json",
    InvalidRequest = "invalid_request",
    Unauthorized = "unauthorized",
    ClientCertificateRequired = "client_certificate_required",
    Forbidden = "forbidden",
    PathNotAllowed = "path_not_allowed",
    NotFound = "not_found",
    ContainerNotFound = "container_not_found",
    MethodNotAllowed = "method_not_allowed",
    Conflict = "conflict",
    PayloadTooLarge = "payload_too_large",
    CheckpointTooLarge = "checkpoint_too_large",
    TooManyJobs = "too_many_jobs",
    UnsupportedMediaType = "unsupported_media_type",
    TransferError = "transfer_error",
    ImageStoreError = "image_store_error",
    Internal = "internal",
    NotReady = "not_ready",
    ShuttingDown = "shutting_down",
    TooManyRequests = "too_many_requests",
    TooManyConnections = "too_many_connections",
    // Only in a failed job's `error`.
    CriuFailed = "criu_failed",
    RuncFailed = "runc_failed",
    KubeletError = "kubelet_error",
    RegistryError = "registry_error",
    InvalidArchive = "invalid_archive",
    Io = "io",
    Cancelled = "cancelled",
    Aborted = "aborted",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for c in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::json!(c.as_str())
            );
            let back: ErrorCode = serde_json::from_value(serde_json::json!(c.as_str())).unwrap();
            assert_eq!(back, *c);
        }
        let other: ErrorCode = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(other, ErrorCode::Unknown);
    }

    #[test]
    fn the_error_body_has_the_documented_shape() {
        assert_eq!(
            serde_json::to_value(ErrorBody::new(ErrorCode::Conflict, "exists")).unwrap(),
            serde_json::json!({"error": {"code": "conflict", "message": "exists"}})
        );
    }
}
