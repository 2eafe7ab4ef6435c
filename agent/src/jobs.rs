//! Asynchronous jobs: every long operation (checkpoint, push, pull, restore, direct
//! send/receive, image import) runs as a job the API reports on.
//!
//! A job is a tokio task owned by the [`Jobs`] registry, not by the HTTP request that
//! started it, so it survives a client disconnect. Cancellation drops the job's future
//! (child processes are spawned with `kill_on_drop`) and then removes the paths the job
//! registered with [`JobCtx::clean_on_failure`]; the same happens to jobs still running
//! when the shutdown grace period ends, which are marked `aborted`.
//!
//! Every job kind is heavy (CRIU, skopeo/ctr, whole-checkpoint encode or decode), so at
//! most `max_concurrent_jobs` run at once; the next `max_queued_jobs` wait as `queued`
//! (first come, first served) and any more are refused with [`JobsError::Busy`] (429).
//! Direct receives have a pool of their own of the same size: a receive is the far end
//! of another agent's send, and if both shared one pool, two agents sending to each
//! other could fill it with sends that wait for receives that wait for a slot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

pub use ms2m_api::{ErrorCode, JobError, JobKind, JobStatus, JobView};

/// What a job's work returns on failure: a machine-readable code and a message. The
/// phase is filled in by the registry from the job's current phase.
#[derive(Debug, Clone)]
pub struct JobFailure {
    pub code: ErrorCode,
    pub message: String,
}

impl JobFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug)]
struct JobState {
    status: JobStatus,
    phase: String,
    bytes_done: u64,
    bytes_total: Option<u64>,
    created_at: SystemTime,
    started: Option<(SystemTime, Instant)>,
    finished: Option<(SystemTime, Instant)>,
    error: Option<JobError>,
    result: Option<serde_json::Value>,
    /// Paths removed when the job fails, is cancelled or aborted.
    cleanup: Vec<PathBuf>,
    /// Paths that make up the job's product; removed by a purge.
    outputs: Vec<PathBuf>,
}

#[derive(Debug)]
struct JobEntry {
    id: String,
    kind: JobKind,
    state: Mutex<JobState>,
    cancel: CancellationToken,
    /// Set when the job was cancelled by a client (as opposed to aborted at shutdown).
    cancelled_by_client: std::sync::atomic::AtomicBool,
    done_tx: watch::Sender<bool>,
}

impl JobEntry {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self) -> JobView {
        let s = self.lock();
        let elapsed = match (s.started, s.finished) {
            (Some((_, a)), Some((_, b))) => Some(b.duration_since(a)),
            (Some((_, a)), None) => Some(a.elapsed()),
            _ => None,
        };
        let rate = match elapsed {
            Some(d) if d.as_secs_f64() > 0.0 => s.bytes_done as f64 / d.as_secs_f64(),
            _ => 0.0,
        };
        JobView {
            id: self.id.clone(),
            kind: self.kind,
            status: s.status,
            phase: s.phase.clone(),
            bytes_done: s.bytes_done,
            bytes_total: s.bytes_total,
            rate_bytes_per_second: rate,
            created_at: rfc3339(s.created_at),
            started_at: s.started.map(|(t, _)| rfc3339(t)),
            finished_at: s.finished.map(|(t, _)| rfc3339(t)),
            duration_ms: match (s.started, s.finished) {
                (Some((_, a)), Some((_, b))) => Some(b.duration_since(a).as_millis() as u64),
                _ => None,
            },
            error: s.error.clone(),
            result: s.result.clone(),
        }
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Handle given to a job's work: progress reporting, cancellation, cleanup registration.
#[derive(Debug, Clone)]
pub struct JobCtx {
    entry: Arc<JobEntry>,
    metrics: Metrics,
}

impl JobCtx {
    pub fn id(&self) -> &str {
        &self.entry.id
    }

    pub fn set_phase(&self, phase: &str) {
        tracing::debug!(job = %self.entry.id, phase, "job phase");
        self.entry.lock().phase = phase.to_owned();
    }

    pub fn phase(&self) -> String {
        self.entry.lock().phase.clone()
    }

    pub fn add_bytes(&self, n: u64) {
        self.entry.lock().bytes_done += n;
        self.metrics.bytes_moved(self.entry.kind, n);
    }

    /// Set the absolute progress (for engines that keep their own counters).
    pub fn set_bytes_done(&self, n: u64) {
        let delta = {
            let mut s = self.entry.lock();
            let d = n.saturating_sub(s.bytes_done);
            s.bytes_done = s.bytes_done.max(n);
            d
        };
        if delta > 0 {
            self.metrics.bytes_moved(self.entry.kind, delta);
        }
    }

    pub fn set_bytes_total(&self, total: Option<u64>) {
        self.entry.lock().bytes_total = total;
    }

    /// Fires when the job is cancelled or aborted; long loops may poll it to stop early.
    pub fn cancellation(&self) -> CancellationToken {
        self.entry.cancel.clone()
    }

    /// Remove `path` (file or directory) if the job does not succeed.
    pub fn clean_on_failure(&self, path: impl Into<PathBuf>) {
        self.entry.lock().cleanup.push(path.into());
    }

    /// Keep `path` whatever happens to the job from now on (undoes
    /// [`JobCtx::clean_on_failure`]): a step that already succeeded stays done.
    pub fn keep(&self, path: &std::path::Path) {
        self.entry.lock().cleanup.retain(|p| p != path);
    }

    /// Record `path` as part of the job's product (removed by `DELETE ...?purge=true`).
    pub fn output(&self, path: impl Into<PathBuf>) {
        self.entry.lock().outputs.push(path.into());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("no job {0}")]
    NotFound(String),
    #[error("job {0} already finished")]
    Finished(String),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error(
        "{running} {kind} job(s) running and {queued} queued, the most this agent takes: retry later"
    )]
    Busy {
        kind: &'static str,
        running: usize,
        queued: usize,
    },
}

/// A bounded set of job slots with a bounded FIFO queue in front.
#[derive(Debug)]
struct Pool {
    slots: Arc<Semaphore>,
    size: usize,
    max_queued: usize,
    queued: std::sync::atomic::AtomicUsize,
}

impl Pool {
    fn new(size: usize, max_queued: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(size)),
            size,
            max_queued,
            queued: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

/// A place in a pool's queue, given back however the wait ends.
struct QueuePlace(Arc<Pool>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0
            .queued
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A job's way to a slot: one at once, or a place in the queue.
enum Admission {
    Now(OwnedSemaphorePermit),
    Queued(QueuePlace),
}

/// The registry of jobs.
#[derive(Debug, Clone)]
pub struct Jobs {
    inner: Arc<Mutex<HashMap<String, Arc<JobEntry>>>>,
    tracker: TaskTracker,
    shutting_down: CancellationToken,
    metrics: Metrics,
    retention: Duration,
    jobs_pool: Arc<Pool>,
    receive_pool: Arc<Pool>,
}

impl Jobs {
    /// A registry without practical bounds (tools and unit tests).
    pub fn new(metrics: Metrics, retention: Duration) -> Self {
        Self::with_limits(metrics, retention, 1024, 1024)
    }

    /// At most `max_running` jobs at once (and as many Direct receives), `max_queued`
    /// waiting for each.
    pub fn with_limits(
        metrics: Metrics,
        retention: Duration,
        max_running: usize,
        max_queued: usize,
    ) -> Self {
        let max_running = max_running.max(1);
        Self {
            inner: Arc::default(),
            tracker: TaskTracker::new(),
            shutting_down: CancellationToken::new(),
            metrics,
            retention,
            jobs_pool: Pool::new(max_running, max_queued),
            receive_pool: Pool::new(max_running, max_queued),
        }
    }

    fn admit(&self, kind: JobKind) -> Result<Admission, JobsError> {
        use std::sync::atomic::Ordering::SeqCst;
        let pool = match kind {
            JobKind::DirectReceive => &self.receive_pool,
            _ => &self.jobs_pool,
        };
        if let Ok(p) = pool.slots.clone().try_acquire_owned() {
            return Ok(Admission::Now(p));
        }
        let queued = pool.queued.fetch_add(1, SeqCst);
        let place = QueuePlace(pool.clone());
        if queued >= pool.max_queued {
            drop(place);
            return Err(JobsError::Busy {
                kind: if kind == JobKind::DirectReceive {
                    "direct_receive"
                } else {
                    "heavy"
                },
                running: pool.size,
                queued,
            });
        }
        Ok(Admission::Queued(place))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JobEntry>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.is_cancelled()
    }

    /// Start `work` as a job of `kind`. The job is registered (and visible) before the
    /// work starts.
    /// `R` is the kind's result type (`ms2m_api::results`).
    pub fn spawn<F, Fut, R>(
        &self,
        kind: JobKind,
        phase: &str,
        work: F,
    ) -> Result<JobView, JobsError>
    where
        F: FnOnce(JobCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, JobFailure>> + Send + 'static,
        R: serde::Serialize + Send + 'static,
    {
        if self.is_shutting_down() {
            return Err(JobsError::ShuttingDown);
        }
        self.expire();
        let admission = self.admit(kind)?;
        let queued = matches!(admission, Admission::Queued(_));
        let id = format!("job-{:016x}", rand::random::<u64>());
        let (done_tx, _) = watch::channel(false);
        let entry = Arc::new(JobEntry {
            id: id.clone(),
            kind,
            state: Mutex::new(JobState {
                status: if queued {
                    JobStatus::Queued
                } else {
                    JobStatus::Running
                },
                phase: if queued {
                    "queued".to_owned()
                } else {
                    phase.to_owned()
                },
                bytes_done: 0,
                bytes_total: None,
                created_at: SystemTime::now(),
                started: (!queued).then(|| (SystemTime::now(), Instant::now())),
                finished: None,
                error: None,
                result: None,
                cleanup: Vec::new(),
                outputs: Vec::new(),
            }),
            cancel: CancellationToken::new(),
            cancelled_by_client: std::sync::atomic::AtomicBool::new(false),
            done_tx,
        });
        self.map().insert(id.clone(), entry.clone());
        let ctx = JobCtx {
            entry: entry.clone(),
            metrics: self.metrics.clone(),
        };
        let metrics = self.metrics.clone();
        metrics.job_started(kind);
        tracing::info!(job = %id, kind = kind.as_str(), queued, "job started");
        let view = entry.view();
        let phase = phase.to_owned();
        let slots = match kind {
            JobKind::DirectReceive => self.receive_pool.slots.clone(),
            _ => self.jobs_pool.slots.clone(),
        };
        self.tracker.spawn(async move {
            let e = entry.clone();
            let run = async move {
                // Held until the work ends, whichever way.
                let _slot = match admission {
                    Admission::Now(p) => p,
                    Admission::Queued(place) => {
                        let p = slots.acquire_owned().await.map_err(|_| {
                            JobFailure::new(ErrorCode::Internal, "job slots closed")
                        })?;
                        drop(place);
                        let mut s = e.lock();
                        s.status = JobStatus::Running;
                        s.phase = phase;
                        s.started = Some((SystemTime::now(), Instant::now()));
                        p
                    }
                };
                let r = work(ctx).await?;
                serde_json::to_value(r)
                    .map_err(|e| JobFailure::new(ErrorCode::Internal, format!("result: {e}")))
            };
            let outcome = tokio::select! {
                r = run => Some(r),
                _ = entry.cancel.cancelled() => None,
            };
            let (status, cleanup) = {
                let mut s = entry.lock();
                let now = (SystemTime::now(), Instant::now());
                s.finished = Some(now);
                // A job cancelled in the queue ran for no time.
                s.started.get_or_insert(now);
                match outcome {
                    Some(Ok(result)) => {
                        s.status = JobStatus::Succeeded;
                        s.result = Some(result);
                        s.cleanup.clear();
                    }
                    Some(Err(f)) => {
                        s.status = JobStatus::Failed;
                        s.error = Some(JobError {
                            code: f.code,
                            message: f.message,
                            phase: s.phase.clone(),
                        });
                    }
                    None => {
                        let by_client = entry
                            .cancelled_by_client
                            .load(std::sync::atomic::Ordering::SeqCst);
                        s.status = if by_client {
                            JobStatus::Cancelled
                        } else {
                            JobStatus::Aborted
                        };
                        s.error = Some(JobError {
                            code: if by_client {
                                ErrorCode::Cancelled
                            } else {
                                ErrorCode::Aborted
                            },
                            message: if by_client {
                                "cancelled by a client".to_owned()
                            } else {
                                "the agent shut down before the job finished".to_owned()
                            },
                            phase: s.phase.clone(),
                        });
                    }
                }
                (s.status, std::mem::take(&mut s.cleanup))
            };
            for p in cleanup.iter().rev() {
                remove_path(p).await;
            }
            let v = entry.view();
            metrics.job_finished(kind, status, &v.phase, v.duration_ms.unwrap_or(0));
            match &v.error {
                None => tracing::info!(job = %v.id, status = status.as_str(), "job finished"),
                Some(e) => tracing::warn!(
                    job = %v.id, status = status.as_str(), phase = %e.phase, code = %e.code,
                    error = %e.message, "job finished"
                ),
            }
            entry.done_tx.send_replace(true);
        });
        Ok(view)
    }

    pub fn get(&self, id: &str) -> Option<JobView> {
        self.map().get(id).map(|e| e.view())
    }

    pub fn list(&self) -> Vec<JobView> {
        let mut v: Vec<JobView> = self.map().values().map(|e| e.view()).collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        v
    }

    /// Wait until the job is terminal or `timeout` has passed; returns its view then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<JobView> {
        let entry = self.map().get(id).cloned()?;
        let mut rx = entry.done_tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|d| *d)).await;
        Some(entry.view())
    }

    /// Cancel a running job and wait for its cleanup; with `purge`, forget a finished
    /// job and delete what it produced.
    pub async fn cancel(&self, id: &str, purge: bool) -> Result<JobView, JobsError> {
        let entry = self
            .map()
            .get(id)
            .cloned()
            .ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
        let terminal = entry.lock().status.is_terminal();
        if !terminal {
            entry
                .cancelled_by_client
                .store(true, std::sync::atomic::Ordering::SeqCst);
            entry.cancel.cancel();
            let mut rx = entry.done_tx.subscribe();
            let _ = rx.wait_for(|d| *d).await;
        } else if !purge {
            return Err(JobsError::Finished(id.to_owned()));
        }
        if purge {
            let outputs = std::mem::take(&mut entry.lock().outputs);
            for p in outputs {
                remove_path(&p).await;
            }
            self.map().remove(id);
        }
        Ok(entry.view())
    }

    /// Stop accepting jobs, let running ones finish for up to `grace`, then abort the
    /// rest (their files are cleaned) and wait for that cleanup.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            let running: Vec<Arc<JobEntry>> = self.map().values().cloned().collect();
            tracing::warn!(
                count = running.len(),
                "aborting jobs still running at shutdown"
            );
            for e in running {
                e.cancel.cancel();
            }
            self.tracker.wait().await;
        }
    }

    fn expire(&self) {
        let retention = self.retention;
        self.map().retain(|_, e| {
            let s = e.lock();
            match s.finished {
                Some((_, at)) => at.elapsed() < retention,
                None => true,
            }
        });
    }

    /// Number of jobs not yet finished.
    pub fn in_flight(&self) -> usize {
        self.map()
            .values()
            .filter(|e| !e.lock().status.is_terminal())
            .count()
    }
}

async fn remove_path(p: &std::path::Path) {
    let r = match tokio::fs::symlink_metadata(p).await {
        Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(p).await,
        Ok(_) => tokio::fs::remove_file(p).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!(path = %p.display(), error = %e, "could not remove a job's file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> Jobs {
        Jobs::new(Metrics::new(), Duration::from_secs(3600))
    }

    #[tokio::test]
    async fn cancel_removes_registered_files_and_reports_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        let jobs = jobs();
        let p = partial.clone();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let v = jobs
            .spawn(JobKind::Push, "uploading", move |ctx| async move {
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("blob"), b"half").unwrap();
                ctx.clean_on_failure(&p);
                ctx.add_bytes(4);
                started_tx.send(()).unwrap();
                std::future::pending::<()>().await;
                Ok(serde_json::Value::Null)
            })
            .unwrap();
        started_rx.await.unwrap();
        assert!(partial.join("blob").exists());
        let done = jobs.cancel(&v.id, false).await.unwrap();
        assert_eq!(done.status, JobStatus::Cancelled);
        assert_eq!(done.error.as_ref().unwrap().phase, "uploading");
        assert_eq!(done.bytes_done, 4);
        assert!(!partial.exists(), "cancelled job left its files");
    }

    #[tokio::test]
    async fn failure_keeps_phase_and_code_and_success_keeps_files() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = jobs();
        let out = dir.path().join("out");
        let o = out.clone();
        let ok = jobs
            .spawn(JobKind::Checkpoint, "dumping", move |ctx| async move {
                std::fs::write(&o, b"x").unwrap();
                ctx.clean_on_failure(&o);
                ctx.output(&o);
                Ok(serde_json::json!({"checkpoint_id": "c1"}))
            })
            .unwrap();
        let ok = jobs.wait(&ok.id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(ok.status, JobStatus::Succeeded);
        assert_eq!(ok.result.unwrap()["checkpoint_id"], "c1");
        assert!(out.exists());
        assert!(matches!(
            jobs.cancel(&ok.id, false).await,
            Err(JobsError::Finished(_))
        ));
        let purged = jobs.cancel(&ok.id, true).await.unwrap();
        assert_eq!(purged.status, JobStatus::Succeeded);
        assert!(!out.exists(), "purge left the job's output");
        assert!(jobs.get(&ok.id).is_none());

        let bad = jobs
            .spawn(JobKind::Restore, "preparing", |ctx| async move {
                ctx.set_phase("restoring");
                Err::<(), _>(JobFailure::new(ErrorCode::RuncFailed, "boom"))
            })
            .unwrap();
        let bad = jobs.wait(&bad.id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(bad.status, JobStatus::Failed);
        let e = bad.error.unwrap();
        assert_eq!(
            (e.code.as_str(), e.phase.as_str()),
            ("runc_failed", "restoring")
        );
    }

    #[tokio::test]
    async fn a_kept_path_survives_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, partial) = (dir.path().join("received"), dir.path().join("partial"));
        let jobs = jobs();
        let (k, p) = (kept.clone(), partial.clone());
        let v = jobs
            .spawn(JobKind::DirectReceive, "receiving", move |ctx| async move {
                for f in [&k, &p] {
                    std::fs::write(f, b"x").unwrap();
                    ctx.clean_on_failure(f);
                }
                ctx.keep(&k);
                ctx.set_phase("importing");
                Err::<(), _>(JobFailure::new(ErrorCode::ImageStoreError, "boom"))
            })
            .unwrap();
        let v = jobs.wait(&v.id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(v.status, JobStatus::Failed);
        assert!(kept.exists(), "a kept path was removed");
        assert!(!partial.exists());
    }

    #[tokio::test]
    async fn at_most_n_run_the_next_queue_and_the_rest_are_refused() {
        let jobs = Jobs::with_limits(Metrics::new(), Duration::from_secs(3600), 2, 1);
        let release = CancellationToken::new();
        let hold = |r: CancellationToken| {
            move |_ctx: JobCtx| async move {
                r.cancelled().await;
                Ok(serde_json::Value::Null)
            }
        };
        let a = jobs
            .spawn(JobKind::Push, "x", hold(release.clone()))
            .unwrap();
        let b = jobs
            .spawn(JobKind::Checkpoint, "x", hold(release.clone()))
            .unwrap();
        let c = jobs
            .spawn(JobKind::Pull, "x", hold(release.clone()))
            .unwrap();
        assert_eq!(
            (a.status, b.status, c.status),
            (JobStatus::Running, JobStatus::Running, JobStatus::Queued)
        );
        assert!(c.started_at.is_none());
        assert!(matches!(
            jobs.spawn(JobKind::ImageImport, "x", hold(release.clone())),
            Err(JobsError::Busy { queued: 1, .. })
        ));
        // Receives have their own slots.
        let r = jobs
            .spawn(JobKind::DirectReceive, "x", hold(release.clone()))
            .unwrap();
        assert_eq!(r.status, JobStatus::Running);
        // A queued job can be cancelled, and gives its place back.
        let c = jobs.cancel(&c.id, false).await.unwrap();
        assert_eq!(c.status, JobStatus::Cancelled);
        let d = jobs
            .spawn(JobKind::Pull, "x", hold(release.clone()))
            .unwrap();
        assert_eq!(d.status, JobStatus::Queued);
        release.cancel();
        for id in [&a.id, &b.id, &d.id, &r.id] {
            let v = jobs.wait(id, Duration::from_secs(10)).await.unwrap();
            assert_eq!(v.status, JobStatus::Succeeded, "{v:?}");
        }
    }

    #[tokio::test]
    async fn shutdown_aborts_running_jobs_and_cleans_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("partial");
        let jobs = jobs();
        let p = f.clone();
        let v = jobs
            .spawn(JobKind::Pull, "downloading", move |ctx| async move {
                std::fs::write(&p, b"x").unwrap();
                ctx.clean_on_failure(&p);
                std::future::pending::<()>().await;
                Ok(serde_json::Value::Null)
            })
            .unwrap();
        while !f.exists() {
            tokio::task::yield_now().await;
        }
        jobs.shutdown(Duration::from_millis(50)).await;
        let v = jobs.get(&v.id).unwrap();
        assert_eq!(v.status, JobStatus::Aborted);
        assert!(!f.exists());
        assert!(matches!(
            jobs.spawn(JobKind::Pull, "x", |_| async {
                Ok(serde_json::Value::Null)
            }),
            Err(JobsError::ShuttingDown)
        ));
    }
}
