//! Where the services and tools the tests need are. `scripts/test.sh` (the README's
//! test command) starts the services and exports these variables.

use std::path::PathBuf;

fn required(var: &str, what: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: {what} is needed. Run the suite with `make test` \
             (scripts/test.sh starts the services and exports it)"
        ),
    }
}

/// `host:port` of the plain-HTTP docker-registry started for the test run.
pub fn registry() -> String {
    required("MS2M_TEST_REGISTRY", "a docker-registry on loopback")
}

/// AMQP URL of the rabbitmq-server started for the test run.
pub fn amqp_url() -> String {
    required("MS2M_TEST_AMQP_URL", "a rabbitmq-server on loopback")
}

/// URL of the nats-server (JetStream, file storage) started for the test run.
pub fn nats_url() -> String {
    required("MS2M_NATS_URL", "a nats-server with JetStream on loopback")
}

/// The same rabbitmq-server's `amqps://` listener.
pub fn amqps_url() -> String {
    required(
        "MS2M_TEST_AMQPS_URL",
        "the rabbitmq-server's TLS listener on loopback",
    )
}

/// `ca.crt`, `tls.crt` and `tls.key` for the test broker's TLS listener.
pub fn broker_tls_dir() -> PathBuf {
    required(
        "MS2M_TEST_BROKER_TLS_DIR",
        "the test broker's CA and a client certificate",
    )
    .into()
}

/// The CRIU (>= 4.2) binary.
pub fn criu() -> PathBuf {
    let p =
        PathBuf::from(std::env::var("MS2M_CRIU").unwrap_or_else(|_| "/usr/local/sbin/criu".into()));
    assert!(
        p.is_file(),
        "CRIU not found at {} (set MS2M_CRIU or run scripts/setup.sh)",
        p.display()
    );
    p
}

/// Panics unless running as root: CRIU, runc and network namespaces need it.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (CRIU, runc and network namespaces)"
    );
}

/// A tool from Debian's packages, found on PATH; panics naming the package otherwise.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found on PATH: install the Debian package `{package}` (scripts/setup.sh does)"))
}

/// A name unique to this process and call, for namespaces, containers and queues
/// of tests that run in parallel against shared services.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The management API of the test broker, as `scripts/services.sh` exports it
/// (`MS2M_MANAGEMENT_URL`, which `ms2m-shim` reads too).
pub fn management() -> ms2m_shim::messaging::ManagementConfig {
    ms2m_shim::messaging::ManagementConfig {
        url: Some(required(
            "MS2M_MANAGEMENT_URL",
            "the rabbitmq-server's management API on loopback",
        )),
    }
}

/// A shim broker session on the test broker, with its management API.
pub fn messaging(amqp_url: &str, prefix: &str) -> ms2m_shim::messaging::Messaging {
    ms2m_shim::messaging::Messaging::with_management(amqp_url, prefix, &management())
        .expect("the test broker's URLs parse")
}

/// The pinned pika scripts/setup.sh installs for the Python reference consumer
/// (`MS2M_PIKA_DIR`, default `/var/cache/ms2m/pika-1.3.2`): a `--target` dir holding
/// the `pika` package.
pub fn pika_dir() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("MS2M_PIKA_DIR").unwrap_or_else(|_| "/var/cache/ms2m/pika-1.3.2".into()),
    );
    assert!(
        p.join("pika/__init__.py").is_file(),
        "pika not found in {} (set MS2M_PIKA_DIR or run scripts/setup.sh, which installs \
         the pinned pika from PyPI there)",
        p.display()
    );
    p
}
