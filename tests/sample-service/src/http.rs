//! A deliberately tiny HTTP/1.1 endpoint: `GET /state` (JSON), `GET /applied`
//! (`[[seq, unix_ms], …]` of recent applies) and `GET /healthz`.
//! One request per connection; enough for probes and tests without an HTTP stack
//! in a static binary.

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::debug;

use crate::consumer::SharedState;

pub async fn serve(listener: TcpListener, state: SharedState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &state).await {
                debug!(error = %e, "http connection");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, state: &SharedState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/state") => {
            let guard = state.lock().unwrap_or_else(|p| p.into_inner());
            ("200 OK", serde_json::to_string(&*guard).unwrap_or_default())
        }
        ("GET", "/applied") => {
            let log: Vec<(u64, u64)> = state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .applied_log
                .iter()
                .copied()
                .collect();
            ("200 OK", serde_json::to_string(&log).unwrap_or_default())
        }
        ("GET", "/healthz") => ("200 OK", "\"ok\"".to_owned()),
        _ => ("404 Not Found", "\"not found\"".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
