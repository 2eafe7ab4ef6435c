//! Jobs as the API shows them (`GET /v1/jobs/{id}`).

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::ErrorCode;

macro_rules! names {
    ($(#[$m:meta])* $name:ident { $($v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($v,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// What a job does.
    JobKind {
        Checkpoint = "checkpoint",
        Push = "push",
        Pull = "pull",
        Restore = "restore",
        DirectSend = "direct_send",
        DirectReceive = "direct_receive",
        ImageImport = "image_import",
    }
}

names! {
    /// `queued` (waiting for a job slot) → `running` → a terminal status.
    JobStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
        Aborted = "aborted",
    }
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// Why a job failed: its `error` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
    /// The step that failed.
    pub phase: String,
}

/// A job. `result` is the kind's result type (see [`crate::results`]), read with
/// [`JobView::result`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub rate_bytes_per_second: f64,
    /// RFC 3339, milliseconds, UTC (the agent's clock).
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub error: Option<JobError>,
    pub result: Option<serde_json::Value>,
}

/// A job kind's result type.
pub trait JobOutput: Serialize + DeserializeOwned {
    /// The kinds whose jobs produce it.
    const KINDS: &'static [JobKind];
}

/// A result that is not what its kind produces.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("job {id} is a {kind} job, whose result is not a {wanted}")]
    Kind {
        id: String,
        kind: JobKind,
        wanted: &'static str,
    },
    #[error("job {id}: its result does not parse as a {wanted}: {source}")]
    Shape {
        id: String,
        wanted: &'static str,
        source: serde_json::Error,
    },
}

impl JobView {
    /// The result, typed; `Ok(None)` while the job has none (not `succeeded`).
    pub fn result<T: JobOutput>(&self) -> Result<Option<T>, ResultError> {
        let wanted = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("result");
        if !T::KINDS.contains(&self.kind) {
            return Err(ResultError::Kind {
                id: self.id.clone(),
                kind: self.kind,
                wanted,
            });
        }
        self.result
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|source| ResultError::Shape {
                id: self.id.clone(),
                wanted,
                source,
            })
    }

    /// `code (phase): message`, or how the job ended without an error.
    pub fn failure(&self) -> String {
        match &self.error {
            Some(e) => format!("{} ({}): {}", e.code, e.phase, e.message),
            None => format!("job {} ended {}", self.id, self.status),
        }
    }
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
}

/// Query of `GET /v1/jobs/{id}`: long-poll up to `wait` seconds (at most
/// [`MAX_WAIT_SECONDS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobGetQuery {
    pub wait: Option<u64>,
}

pub const MAX_WAIT_SECONDS: u64 = 300;

/// Query of `DELETE /v1/jobs/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCancelQuery {
    #[serde(default)]
    pub purge: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::CheckpointResult;

    fn documented() -> serde_json::Value {
        serde_json::json!({
            "id": "job-3f9c1a7b2e6d4c05", "kind": "checkpoint", "status": "failed",
            "phase": "dumping", "bytes_done": 0, "bytes_total": null,
            "rate_bytes_per_second": 0.0, "created_at": "2026-11-28T23:59:01.123Z",
            "started_at": null, "finished_at": null, "duration_ms": null,
            "error": {"code": "criu_failed", "message": "boom", "phase": "dumping"},
            "result": null
        })
    }

    #[test]
    fn jobs_round_trip_the_documented_shape() {
        let job: JobView = serde_json::from_value(documented()).unwrap();
        assert!(job.status.is_terminal());
        assert_eq!(job.failure(), "criu_failed (dumping): boom");
        assert_eq!(serde_json::to_value(&job).unwrap(), documented());
    }

    #[test]
    fn results_are_read_as_their_kind_s_type() {
        let mut v = documented();
        v["status"] = "succeeded".into();
        v["error"] = serde_json::Value::Null;
        v["result"] = serde_json::json!({"checkpoint_id": "c", "path": "/p", "size_bytes": 1,
            "backend": "runc", "criu_version": null, "dump_ms": 3, "frozen_ms": null});
        let job: JobView = serde_json::from_value(v).unwrap();
        let r: CheckpointResult = job.result().unwrap().unwrap();
        assert_eq!((r.checkpoint_id.as_str(), r.dump_ms), ("c", 3));
        let wrong = job.result::<crate::results::PushResult>().unwrap_err();
        assert!(matches!(wrong, ResultError::Kind { .. }), "{wrong}");
    }

    #[test]
    fn kinds_are_listed_once() {
        let names: std::collections::BTreeSet<_> =
            JobKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), JobKind::ALL.len());
        for k in JobKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }
}
