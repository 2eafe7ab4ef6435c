//! A tiny client of the local agent's Unix socket for the `checkpoint` and `restore`
//! subcommands: they start a job through the running daemon (which owns the state dir)
//! and wait for it, so the CLI and the API behave identically.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "connecting to the agent at {} (is `ms2m-agent serve` running?)",
                socket.display()
            )
        })?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let v = if body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&body)?
    };
    Ok((status, v))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// POST `body` to `path`, then wait for the job and return its result.
pub async fn run_job(
    socket: &Path,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let (status, v) = call(socket, "POST", path, Some(&body)).await?;
    if status != 202 {
        bail!(
            "agent answered {status}: {}",
            v["error"]["message"].as_str().unwrap_or(&v.to_string())
        );
    }
    let id = v["id"].as_str().context("job without id")?.to_owned();
    loop {
        let (_, j) = call(socket, "GET", &format!("/v1/jobs/{id}?wait=60"), None).await?;
        match j["status"].as_str() {
            Some("succeeded") => return Ok(j["result"].clone()),
            Some("running") | Some("queued") => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => bail!("job {id} {}: {}", j["status"], j["error"]),
        }
    }
}
