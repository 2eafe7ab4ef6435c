//! The per-operation CRIU configuration file (see the module docs of `runc`).

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::RuncError;

/// Writes `options` (CRIU long options without the dashes, one per line) into
/// `<work>/ms2m-criu-<id>.conf` (the system temp dir without a work dir) and points
/// `cmd`'s CRIU at it. Nothing is written when there are no options, so the node's
/// defaults apply unchanged.
pub fn apply(
    cmd: &mut Command,
    work: Option<&Path>,
    id: &str,
    options: &[String],
) -> Result<(), RuncError> {
    if options.is_empty() {
        return Ok(());
    }
    let dir = work.map(Path::to_owned).unwrap_or_else(std::env::temp_dir);
    let path: PathBuf = dir.join(format!("ms2m-criu-{id}.conf"));
    let body = options.join("\n") + "\n";
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, body))
        .map_err(|source| RuncError::CriuConfig {
            path: path.clone(),
            source,
        })?;
    cmd.env("CRIU_CONFIG_FILE", &path);
    Ok(())
}
