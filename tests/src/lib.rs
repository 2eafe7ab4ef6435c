//! Harness for cross-component tests on real parts: the services the test runner
//! started (registry, broker), CRIU, network namespaces, busybox bundles and runc
//! containers.
//!
//! Every prerequisite is checked up front and a missing one fails the test with a
//! message naming it: a test that silently skips would hide a broken machine.

pub mod agent_http;
pub mod bundle;
pub mod container;
pub mod counter;
pub mod e2e;
pub mod env;
pub mod image_store;
pub mod netns;
pub mod nodes;
pub mod process;
pub mod transfer;
