//! Harness for cross-component tests: services, network namespaces, runc containers.
