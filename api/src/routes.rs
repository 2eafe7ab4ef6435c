//! The agent's routes: what it serves, and what docs/agent-api.md documents (a test
//! holds the two together).

/// `(method, path)`; path parameters as `{name}`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("POST", "/v1/checkpoints"),
    ("GET", "/v1/checkpoints"),
    ("GET", "/v1/checkpoints/{id}"),
    ("DELETE", "/v1/checkpoints/{id}"),
    ("POST", "/v1/pushes"),
    ("POST", "/v1/pulls"),
    ("POST", "/v1/direct/sends"),
    ("GET", "/v1/direct/receive/{checkpoint_id}"),
    ("PUT", "/v1/direct/receive/{checkpoint_id}"),
    ("POST", "/v1/images"),
    ("DELETE", "/v1/images"),
    ("POST", "/v1/restores"),
    ("GET", "/v1/containers/{id}"),
    ("DELETE", "/v1/containers/{id}"),
];

/// `Location` of a job.
pub fn job_path(id: &str) -> String {
    format!("/v1/jobs/{id}")
}
