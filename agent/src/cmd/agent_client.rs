//! The `checkpoint` and `restore` subcommands start a job through the running daemon
//! (which owns the state dir) with the agent client and wait for it, so the CLI and the
//! API behave identically.

use std::path::Path;

use anyhow::{Context, bail};
use ms2m_api::client::{AgentClient, AgentError};
use ms2m_api::job::JobOutput;
use ms2m_api::{JobStatus, JobView};

/// Starts a job with `start`, waits for it and returns its typed result.
pub async fn run_job<T: JobOutput>(
    socket: &Path,
    start: impl AsyncFnOnce(&AgentClient) -> Result<JobView, AgentError>,
) -> anyhow::Result<T> {
    let client = AgentClient::unix(socket);
    let connecting = || {
        format!(
            "connecting to the agent at {} (is `ms2m-agent serve` running?)",
            socket.display()
        )
    };
    let job = match start(&client).await {
        Ok(j) => j,
        Err(e @ AgentError::Transport { .. }) => return Err(e).with_context(connecting),
        Err(e) => return Err(e.into()),
    };
    let job = client.wait_job(&job.id).await?;
    if job.status != JobStatus::Succeeded {
        bail!("job {} {}: {}", job.id, job.status, job.failure());
    }
    job.result::<T>()?
        .with_context(|| format!("job {} succeeded without a result", job.id))
}
