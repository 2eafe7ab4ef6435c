//! Network namespaces as nodes (and as pod sandboxes): created with `lo` up, as
//! Kubernetes does before a container starts, and deleted on drop.

use std::path::PathBuf;
use std::process::Command;

use crate::process::run;

/// A named network namespace under /run/netns, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` with the loopback interface up.
    pub fn new(name: &str) -> Netns {
        crate::env::require_root();
        crate::env::tool("ip", "iproute2");
        run(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns {
            name: name.to_string(),
        };
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, as runc's config.json wants it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Joins this namespace to the host with a veth pair: `host_addr` on the host side,
    /// `ns_addr` inside (both with `prefix`), and a default route via the host side.
    /// Only for addresses of a test-only subnet that exists in this machine alone.
    pub fn connect_to_host(&self, host_if: &str, host_addr: &str, ns_addr: &str, prefix: u8) {
        let peer = format!("{host_if}p");
        run(Command::new("ip").args([
            "link", "add", host_if, "type", "veth", "peer", "name", &peer,
        ]));
        run(Command::new("ip").args(["link", "set", &peer, "netns", &self.name]));
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{host_addr}/{prefix}"),
            "dev",
            host_if,
        ]));
        run(Command::new("ip").args(["link", "set", host_if, "up"]));
        run(Command::new("ip").args([
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{ns_addr}/{prefix}"),
            "dev",
            &peer,
        ]));
        run(Command::new("ip").args(["-n", &self.name, "link", "set", &peer, "up"]));
        run(Command::new("ip").args([
            "-n", &self.name, "route", "add", "default", "via", host_addr,
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also removes the veth pair living in it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
