//! Serving connections with bounds: every listener (Unix socket, TCP, TLS) goes through
//! this accept loop instead of `axum::serve`, which has no header-read timeout, no idle
//! timeout and no cap on connections.
//!
//! - A connection must finish its TLS handshake and deliver a request's headers within
//!   `header_read_timeout` (hyper's timer restarts it for each request on a kept-alive
//!   connection).
//! - A connection with no request in flight for `idle_timeout` is closed.
//! - At most `max_connections` are open per listener. When a new one arrives and all
//!   are taken, the one idle the longest (waiting for headers, or kept alive between
//!   requests) is closed to make room; if none is idle, the newcomer gets a 503 JSON
//!   answer (plain listeners) or is closed (TLS).
//! - At most `max_connections - probe_connections` requests other than the probes are
//!   in flight; more get 503 `too_many_requests`. So at least `probe_connections`
//!   connections are always idle or serving a probe, and a kubelet probe can always
//!   take one over, whatever a flood of idle or half-sent connections does.

use ms2m_api::{ErrorBody, ErrorCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Peer;
use super::identity::Identity;
use crate::config::Limits;

/// Paths served whatever the request bound says: the kubelet's probes.
pub const PROBES: &[&str] = &["/healthz", "/readyz"];

/// A listener this loop serves.
pub enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Box<dyn Io>, Peer)> {
        match self {
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let peer = match s.peer_cred() {
                    Ok(c) => Peer {
                        uid: Some(c.uid()),
                        gid: Some(c.gid()),
                        pid: c.pid(),
                        addr: None,
                    },
                    Err(_) => Peer::default(),
                };
                Ok((Box::new(s), peer))
            }
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((
                    Box::new(s),
                    Peer {
                        addr: Some(addr),
                        ..Peer::default()
                    },
                ))
            }
        }
    }
}

/// One open connection as the gate sees it.
#[derive(Debug)]
struct Conn {
    /// Requests in flight on it.
    busy: AtomicUsize,
    /// When its last request ended (or it opened).
    idle_since: Mutex<Instant>,
    evict: CancellationToken,
}

impl Conn {
    fn idle_for(&self) -> Option<Duration> {
        (self.busy.load(Ordering::SeqCst) == 0).then(|| lock(&self.idle_since).elapsed())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The open connections of one listener.
#[derive(Debug)]
struct Gate {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    max: usize,
    /// Non-probe requests in flight.
    requests: Arc<Semaphore>,
}

/// A connection's place in the gate, given back when the connection ends.
struct Slot {
    gate: Arc<Gate>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.gate.conns).remove(&self.id);
    }
}

impl Gate {
    fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            max: limits.max_connections,
            requests: Arc::new(Semaphore::new(
                limits.max_connections - limits.probe_connections,
            )),
        })
    }

    /// A place for a new connection, closing the longest-idle one when all are taken;
    /// `None` when every connection has a request in flight.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut conns = lock(&self.conns);
        if conns.len() >= self.max {
            let victim = conns
                .iter()
                .filter_map(|(id, c)| c.idle_for().map(|d| (d, *id)))
                .max()
                .map(|(_, id)| id)?;
            if let Some(c) = conns.remove(&victim) {
                c.evict.cancel();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            evict: CancellationToken::new(),
        });
        conns.insert(id, conn.clone());
        Some(Slot {
            gate: self.clone(),
            id,
            conn,
        })
    }

    fn open(&self) -> usize {
        lock(&self.conns).len()
    }
}

/// Marks its connection busy while a request is in flight.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(c: &Arc<Conn>) -> Self {
        c.busy.fetch_add(1, Ordering::SeqCst);
        Self(c.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *lock(&self.0.idle_since) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The answer to a connection the gate has no room for, written before closing it.
fn refusal_bytes() -> Vec<u8> {
    let body = serde_json::to_string(&ErrorBody::new(
        ErrorCode::TooManyConnections,
        "every connection of this listener has a request in flight: retry later",
    ))
    .expect("error bodies serialize");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn too_many_requests() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut r = super::ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::TooManyRequests,
        "too many requests in flight on this listener: retry later",
    )
    .into_response();
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    r
}

/// How a listener authenticates its connections.
#[derive(Clone)]
pub enum Transport {
    /// Unix socket or plain TCP: identity comes from the router's own checks.
    Plain(Identity),
    /// TLS; the client certificate (if any) names the caller.
    Tls(tokio_rustls::TlsAcceptor),
}

/// Serve `router` on `listener` until `stop` fires, within `limits`.
pub async fn serve(
    listener: Listener,
    router: Router,
    transport: Transport,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let gate = Gate::new(&limits);
    let conns = tokio_util::task::TaskTracker::new();
    let mut accept_errors = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        let (io, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: the gate keeps fds for probes, but other parts of
                // the agent may have taken them; back off instead of spinning.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(slot) = gate.admit() else {
            let tls = matches!(transport, Transport::Tls(_));
            conns.spawn(async move {
                if !tls {
                    let mut io = io;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        io.write_all(&refusal_bytes()),
                    )
                    .await;
                }
            });
            continue;
        };
        let (router, transport, limits, stop, gate) = (
            router.clone(),
            transport.clone(),
            limits.clone(),
            stop.clone(),
            gate.clone(),
        );
        conns.spawn(async move {
            let evicted = slot.conn.evict.clone();
            tokio::select! {
                _ = connection(io, peer, &slot, router, transport, &limits, &gate, stop) => {}
                _ = evicted.cancelled() => {
                    tracing::debug!(open = gate.open(), "idle connection closed for a new one");
                }
            }
        });
    }
    conns.close();
    // Long-polls end with their jobs; give the rest a moment to finish their answers.
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    io: Box<dyn Io>,
    peer: Peer,
    slot: &Slot,
    router: Router,
    transport: Transport,
    limits: &Limits,
    gate: &Arc<Gate>,
    stop: CancellationToken,
) {
    let (io, identity): (Box<dyn Io>, Identity) = match transport {
        Transport::Plain(id) => (io, id),
        Transport::Tls(acceptor) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => {
                    let identity = Identity::from_tls(tls.get_ref().1);
                    (Box::new(tls), identity)
                }
                Ok(Err(e)) => {
                    tracing::info!(peer = %peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let conn = slot.conn.clone();
    let requests = gate.requests.clone();
    let shown = peer.to_string();
    let service = hyper::service::service_fn(move |mut req: axum::http::Request<Incoming>| {
        let in_flight = InFlight::new(&conn);
        let probe = PROBES.contains(&req.uri().path());
        let permit = if probe {
            None
        } else {
            requests.clone().try_acquire_owned().ok()
        };
        let refused = !probe && permit.is_none();
        req.extensions_mut().insert(ConnectInfo(peer.clone()));
        req.extensions_mut().insert(identity.clone());
        let mut router = router.clone();
        async move {
            let _in_flight = in_flight;
            let _permit = permit;
            if refused {
                return Ok::<_, std::convert::Infallible>(too_many_requests());
            }
            tower_service::Service::call(&mut router, req.map(axum::body::Body::new)).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let wake = match slot.conn.idle_for() {
            Some(d) => limits.idle_timeout.saturating_sub(d),
            None => limits.idle_timeout,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %shown, error = %e, "connection ended");
                }
                return;
            }
            _ = stop.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tokio::time::sleep(wake.max(Duration::from_millis(100))) => {
                if slot.conn.idle_for().is_some_and(|d| d >= limits.idle_timeout) {
                    tracing::debug!(peer = %shown, "idle connection closed");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, probes: usize) -> Limits {
        Limits {
            max_connections: max,
            probe_connections: probes,
            ..Limits::default()
        }
    }

    #[test]
    fn a_full_gate_closes_the_longest_idle_connection_and_never_a_busy_one() {
        let gate = Gate::new(&limits(3, 1));
        let a = gate.admit().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = gate.admit().unwrap();
        let c = gate.admit().unwrap();
        // `a` has a request in flight: `b` is the longest idle.
        let busy = InFlight::new(&a.conn);
        let d = gate.admit().unwrap();
        assert!(b.conn.evict.is_cancelled());
        assert!(!a.conn.evict.is_cancelled() && !c.conn.evict.is_cancelled());
        assert_eq!(gate.open(), 3);
        // Every connection busy: no room, nobody closed.
        let _busy = [InFlight::new(&c.conn), InFlight::new(&d.conn)];
        assert!(gate.admit().is_none());
        assert!(!c.conn.evict.is_cancelled() && !d.conn.evict.is_cancelled());
        // A request that ends makes its connection the first to go.
        drop(busy);
        let _e = gate.admit().unwrap();
        assert!(a.conn.evict.is_cancelled());
        drop(b);
        assert_eq!(gate.open(), 3, "an evicted slot is not counted twice");
    }

    #[test]
    fn probe_headroom_is_what_non_probe_requests_cannot_take() {
        let gate = Gate::new(&limits(10, 3));
        let permits: Vec<_> = (0..7)
            .map(|_| gate.requests.clone().try_acquire_owned().unwrap())
            .collect();
        assert!(gate.requests.clone().try_acquire_owned().is_err());
        drop(permits);
    }
}
