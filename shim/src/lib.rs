//! ms2m-shim: sequences live migrations of queue-consuming services and switches their
//! message queues. The node agents do all node work; this crate only decides and asks.

pub mod agent_client;
pub mod agent_tls;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod driver;
pub mod engine;
pub mod messaging;
pub mod metrics;
pub mod standalone;
