//! What the drivers (the controller and the standalone driver) make of the errors and
//! jobs of the things they call, in one place so both judge them alike: an agent's,
//! the broker's and the Kubernetes API's errors become transient or permanent
//! [`WorldError`]s, and an agent job becomes the engine's [`JobView`] with the output
//! the engine needs, read from the job's typed result.

use ms2m_api::JobStatus;
use ms2m_api::job::JobOutput;

use crate::agent_client::AgentError;
use crate::driver::WorldError;
use crate::engine::JobView;
use crate::messaging::MessagingError;

/// A job as the agent reports it.
pub type AgentJob = ms2m_api::JobView;

/// A 4xx other than 404/409/429 is permanent (the request is wrong); the rest is
/// retried.
pub fn agent_err(e: AgentError) -> WorldError {
    if e.is_permanent() {
        WorldError::permanent(e.to_string())
    } else {
        WorldError::transient(e.to_string())
    }
}

pub fn mq_err(e: MessagingError) -> WorldError {
    if e.is_permanent() {
        WorldError::permanent(e.to_string())
    } else {
        WorldError::transient(e.to_string())
    }
}

/// The API server refusing the request itself (400 bad request, 403 forbidden, 422
/// invalid) is permanent: the same call would be refused again. Everything else
/// (conflicts, timeouts, a server that is away) is retried.
pub fn kube_err(what: &str, e: kube::Error) -> WorldError {
    match &e {
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => {
            WorldError::permanent(format!("{what}: {e}"))
        }
        _ => WorldError::transient(format!("{what}: {e}")),
    }
}

/// The engine's view of an agent job (`None`: none was started, or the agent forgot
/// it). A succeeded job's output is `output` of its result, typed as the kind's result.
pub fn job_view<T: JobOutput>(
    job: Option<&AgentJob>,
    output: impl FnOnce(T) -> Option<String>,
) -> JobView {
    let Some(job) = job else {
        return JobView::NotStarted;
    };
    match job.status {
        JobStatus::Queued | JobStatus::Running => JobView::Running,
        JobStatus::Succeeded => match job.result::<T>() {
            Ok(Some(r)) => match output(r) {
                Some(output) => JobView::Succeeded {
                    output,
                    finished_at: job.finished_at.as_deref().and_then(|t| t.parse().ok()),
                },
                None => JobView::Failed {
                    reason: format!("job {} succeeded without the expected result", job.id),
                },
            },
            Ok(None) => JobView::Failed {
                reason: format!("job {} succeeded without a result", job.id),
            },
            Err(e) => JobView::Failed {
                reason: e.to_string(),
            },
        },
        _ => JobView::Failed {
            reason: job.failure(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ms2m_api::{CheckpointResult, SendResult};

    fn job(kind: &str, status: &str, result: serde_json::Value) -> AgentJob {
        serde_json::from_value(serde_json::json!({
            "id": "job-1", "kind": kind, "status": status, "phase": "x", "bytes_done": 0,
            "bytes_total": null, "rate_bytes_per_second": 0.0,
            "created_at": "2026-11-28T23:59:01.123Z", "started_at": null,
            "finished_at": "2026-11-28T23:59:02.500Z", "duration_ms": null,
            "error": null, "result": result
        }))
        .unwrap()
    }

    #[test]
    fn an_imported_reference_is_read_from_the_direct_send_result() {
        let j = job(
            "direct_send",
            "succeeded",
            serde_json::json!({"target": "http://10.0.0.12:9411", "target_checkpoint_id": "c",
                "bytes_sent": 1, "archive_bytes": 1, "elapsed_ms": 1,
                "received": {"path": "/p", "size_bytes": 1, "bytes_received": 1, "layers": [],
                    "imported": {"reference": "localhost/ms2m/default/mig:c",
                        "store": "containers-storage", "image_id": "sha256:00",
                        "manifest_digest": "sha256:01"}}}),
        );
        let v = job_view(Some(&j), |r: SendResult| {
            r.received.imported.map(|i| i.reference)
        });
        assert_eq!(
            v,
            JobView::Succeeded {
                output: "localhost/ms2m/default/mig:c".into(),
                finished_at: Some("2026-11-28T23:59:02.500Z".parse().unwrap()),
            }
        );
    }

    #[test]
    fn a_result_of_another_shape_fails_the_job_view() {
        let j = job("checkpoint", "succeeded", serde_json::json!({"image": "x"}));
        let v = job_view(Some(&j), |r: CheckpointResult| Some(r.checkpoint_id));
        assert!(
            matches!(&v, JobView::Failed { reason } if reason.contains("does not parse")),
            "{v:?}"
        );
        assert_eq!(
            job_view(None, |r: CheckpointResult| Some(r.checkpoint_id)),
            JobView::NotStarted
        );
    }
}
