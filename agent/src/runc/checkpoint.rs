//! `runc checkpoint` builder.

use std::path::PathBuf;

use super::{Runc, RuncError};

pub use ms2m_api::NetworkLock;

#[derive(Debug, Clone)]
pub struct CheckpointCmd {
    runc: Runc,
    id: String,
    image_path: Option<PathBuf>,
    work_path: Option<PathBuf>,
    leave_running: bool,
    tcp_established: bool,
    tcp_close: bool,
    network_lock: Option<NetworkLock>,
    file_locks: bool,
}

impl CheckpointCmd {
    pub(super) fn new(runc: Runc, id: &str) -> Self {
        Self {
            runc,
            id: id.to_owned(),
            image_path: None,
            work_path: None,
            leave_running: false,
            tcp_established: false,
            tcp_close: false,
            network_lock: None,
            file_locks: false,
        }
    }

    /// CRIU `tcp-close`: established connections are not dumped; a restore gets them
    /// closed.
    pub fn tcp_close(mut self, yes: bool) -> Self {
        self.tcp_close = yes;
        self
    }

    /// CRIU `network-lock <method>`; `None` keeps CRIU's default (iptables).
    pub fn network_lock(mut self, method: Option<NetworkLock>) -> Self {
        self.network_lock = method;
        self
    }

    /// Options runc has no flag for, for the CRIU configuration file. `skip-in-flight`
    /// always: a connection still in a listening socket's accept queue (a health probe,
    /// a client arriving mid-dump) would otherwise fail the whole checkpoint; dropping
    /// it is what the client sees on any restart, and it retries.
    pub fn criu_options(&self) -> Vec<String> {
        let mut o = vec!["skip-in-flight".to_owned()];
        if self.tcp_close {
            o.push("tcp-close".to_owned());
        }
        if let Some(m) = self.network_lock {
            o.push(format!("network-lock {}", m.as_str()));
        }
        o
    }

    /// Where CRIU writes its images (`--image-path`).
    pub fn image_path(mut self, p: impl Into<PathBuf>) -> Self {
        self.image_path = Some(p.into());
        self
    }

    /// Where CRIU writes `dump.log` and `stats-dump` (`--work-path`).
    pub fn work_path(mut self, p: impl Into<PathBuf>) -> Self {
        self.work_path = Some(p.into());
        self
    }

    pub fn leave_running(mut self, yes: bool) -> Self {
        self.leave_running = yes;
        self
    }

    pub fn tcp_established(mut self, yes: bool) -> Self {
        self.tcp_established = yes;
        self
    }

    pub fn file_locks(mut self, yes: bool) -> Self {
        self.file_locks = yes;
        self
    }

    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["checkpoint".into()];
        if let Some(p) = &self.image_path {
            a.push("--image-path".into());
            a.push(p.into());
        }
        if let Some(p) = &self.work_path {
            a.push("--work-path".into());
            a.push(p.into());
        }
        if self.leave_running {
            a.push("--leave-running".into());
        }
        if self.tcp_established {
            a.push("--tcp-established".into());
        }
        if self.file_locks {
            a.push("--file-locks".into());
        }
        a.push(self.id.clone().into());
        a
    }

    pub async fn run(self) -> Result<(), RuncError> {
        let mut c = self.runc.command();
        c.args(self.args());
        super::criu_config::apply(
            &mut c,
            self.work_path.as_deref(),
            &self.id,
            &self.criu_options(),
        )?;
        self.runc.run("checkpoint", &self.id, c).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_follow_runc_cli() {
        let c = Runc::new("runc")
            .checkpoint("c1")
            .image_path("/i")
            .work_path("/w")
            .leave_running(true)
            .tcp_established(true);
        let a: Vec<String> = c
            .args()
            .iter()
            .map(|s| s.to_string_lossy().into())
            .collect();
        assert_eq!(
            a,
            [
                "checkpoint",
                "--image-path",
                "/i",
                "--work-path",
                "/w",
                "--leave-running",
                "--tcp-established",
                "c1"
            ]
        );
        assert_eq!(c.criu_options(), ["skip-in-flight"]);
        let c = Runc::new("runc")
            .checkpoint("c1")
            .tcp_close(true)
            .network_lock(Some(NetworkLock::Skip));
        assert_eq!(
            c.criu_options(),
            ["skip-in-flight", "tcp-close", "network-lock skip"]
        );
    }
}
