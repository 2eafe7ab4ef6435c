//! ms2m-shim: sequences live migrations of queue-consuming services and switches their
//! message queues. The node agents do all node work; this crate only decides and asks.

/// The agent client lives in the API crate, shared with the agent's CLI and the tests.
pub use ms2m_api::client as agent_client;
pub mod adapters;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod driver;
pub mod engine;
pub mod messaging;
pub mod metrics;
pub mod standalone;
