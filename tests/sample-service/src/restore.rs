//! Noticing that this process was restored from a checkpoint.
//!
//! CRIU restores memory bit for bit, so nothing inside the process changes by itself;
//! the kernel task does. A restored process is a new task created at restore time,
//! so its start time (`/proc/self/stat`, field 22, clock ticks since boot) differs
//! from the one recorded at start, and on another machine the boot id differs too.
//! Neither depends on the network: it works whether the broker connection died with
//! the old network namespace or was carried over with `--tcp-established`.
//! (A time namespace offset could in theory hide a change of start time; runc does
//! not create one and CRIU only restores one that existed at dump time.)

use std::fs;

/// Identity of the running kernel task: changes exactly when the process is restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIdentity {
    start_ticks: u64,
    boot_id: String,
}

impl TaskIdentity {
    pub fn current() -> std::io::Result<Self> {
        let stat = fs::read_to_string("/proc/self/stat")?;
        let start_ticks = parse_start_ticks(&stat).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "unparsable /proc/self/stat",
            )
        })?;
        // Missing on exotic kernels: the start time alone still works on one machine.
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Ok(Self {
            start_ticks,
            boot_id,
        })
    }
}

/// Field 22 of `/proc/<pid>/stat`; the command name (field 2) may contain spaces and
/// parentheses, so count from the last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3.. ; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Remembers the task identity and reports each restore once.
#[derive(Debug)]
pub struct RestoreWatch {
    known: Option<TaskIdentity>,
}

impl RestoreWatch {
    pub fn new() -> Self {
        Self {
            known: TaskIdentity::current().ok(),
        }
    }

    /// True once after each restore.
    pub fn check(&mut self) -> bool {
        let Ok(now) = TaskIdentity::current() else {
            return false;
        };
        match &self.known {
            Some(known) if *known == now => false,
            Some(_) => {
                self.known = Some(now);
                true
            }
            None => {
                self.known = Some(now);
                false
            }
        }
    }
}

impl Default for RestoreWatch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_even_with_odd_command_names() {
        let stat = "1234 (my (weird) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn own_identity_is_stable_without_restore() {
        let a = TaskIdentity::current().unwrap();
        assert_eq!(a, TaskIdentity::current().unwrap());
        let mut w = RestoreWatch::new();
        assert!(!w.check());
    }

    #[test]
    fn a_changed_identity_is_reported_once() {
        let mut w = RestoreWatch {
            known: Some(TaskIdentity {
                start_ticks: 1,
                boot_id: "elsewhere".into(),
            }),
        };
        assert!(w.check());
        assert!(!w.check());
    }
}
