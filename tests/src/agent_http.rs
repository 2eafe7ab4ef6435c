//! The agent client (`ms2m_api::client`) for the synchronous tests: each call runs on a
//! runtime thread of its own, so it works from plain test threads and from inside a
//! tokio runtime alike.

use std::sync::OnceLock;
use std::time::Duration;

pub use ms2m_api::client::{AgentAddr, AgentClient, RawAnswer};
use serde::Serialize;
use serde_json::Value;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the agent client's runtime")
    })
}

/// Runs `f` to its end on the shared client runtime.
pub fn block_on<F: Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| runtime().block_on(f))
            .join()
            .expect("agent client thread")
    })
}

/// An answer as the tests look at it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The `error.code` of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl From<RawAnswer> for Resp {
    fn from(a: RawAnswer) -> Self {
        Resp {
            status: a.status.as_u16(),
            headers: a.headers,
            body: String::from_utf8_lossy(&a.body).into_owned(),
        }
    }
}

/// One request through `client`; `Err` when the agent cannot be reached.
pub fn try_call(
    client: &AgentClient,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Resp, ms2m_api::client::AgentError> {
    let method: http::Method = method.parse().expect("an HTTP method");
    block_on(client.raw(method, path, headers, body, timeout)).map(Resp::from)
}

/// A request body as JSON bytes.
pub fn body(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("request bodies serialize")
}
