//! The contract between the node agent and its callers (the shim, the agent's own CLI,
//! the tests), written once. docs/agent-api.md describes it for people; a test in this
//! crate (`tests/doc_matches_types.rs`) holds the two together.
//!
//! Serde types only, no I/O: the agent serves these types, the client sends and reads
//! them.
//!
//! - [`error`]: the `{"error": {"code", "message"}}` body and every [`ErrorCode`];
//! - [`job`]: [`JobKind`], [`JobStatus`], [`JobView`] and the job error;
//! - [`requests`] and [`results`]: the bodies of each route and each job kind's result;
//! - [`ids`]: which checkpoint and container ids the agent accepts, and the defaults;
//! - [`wire`]: the Direct transfer's framing (encoder and incremental decoder);
//! - [`control`]: the MS2M control messages (`START_REPLAY`, `END_REPLAY`);
//! - [`routes`]: the route table;
//! - `client` (feature `client`): the one agent client.

#[cfg(feature = "client")]
pub mod client;
pub mod control;
pub mod error;
pub mod ids;
pub mod job;
pub mod requests;
pub mod results;
pub mod routes;
pub mod wire;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use job::{JobError, JobKind, JobList, JobStatus, JobView};
pub use requests::*;
pub use results::*;
