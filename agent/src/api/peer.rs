//! Who is calling: the Unix peer's credentials (SO_PEERCRED) or the TCP peer address,
//! captured once per connection and logged with every request.

use std::net::SocketAddr;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    pub addr: Option<SocketAddr>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.uid) {
            (Some(a), _) => write!(f, "tcp:{a}"),
            (None, Some(uid)) => write!(
                f,
                "unix:uid={uid},gid={},pid={}",
                self.gid
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "?".into()),
                self.pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
            _ => f.write_str("unix:?"),
        }
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
                pid: c.pid(),
                addr: None,
            },
            Err(_) => Peer::default(),
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer {
            addr: Some(*stream.remote_addr()),
            ..Peer::default()
        }
    }
}
