//! Bearer-token check for the TCP listener. The Unix socket relies on its file mode.

use ms2m_api::ErrorCode;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Paths open without a token: kubelet probes cannot carry one.
const OPEN: &[&str] = &["/healthz", "/readyz"];

/// Comparison time independent of where the first difference is and of the lengths:
/// both sides are hashed to 32 bytes first (so a length mismatch no longer returns
/// early and tells a prober the token's length), then compared with `subtle`.
fn same(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest as _;
    use subtle::ConstantTimeEq as _;
    let (ha, hb) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    ha.as_slice().ct_eq(hb.as_slice()).into()
}

pub async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    if OPEN.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(given) = given else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing `Authorization: Bearer <token>` header",
        )
        .into_response();
    };
    let ok = given
        .strip_prefix("Bearer ")
        .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "wrong bearer token",
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn comparison() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"ab"));
    }
}
