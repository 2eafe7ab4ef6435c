//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, validating, encoding or decoding a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// An entry that is dangerous to unpack (path traversal, device node, ...).
    #[error("rejected entry `{entry}`: {reason}")]
    Hostile { entry: String, reason: String },
    /// An entry or file that cannot be parsed.
    #[error("malformed entry `{entry}`: {reason}")]
    Malformed { entry: String, reason: String },
    /// A configured limit was exceeded.
    #[error("entry `{entry}`: {reason}")]
    Limit { entry: String, reason: String },
    /// A digest computed while streaming differs from the expected one.
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// A size computed while streaming differs from the expected one.
    #[error("{what} size mismatch: expected {expected}, got {actual}")]
    SizeMismatch {
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    /// An OCI layout, manifest, config or descriptor that we cannot use.
    #[error("invalid OCI image: {0}")]
    Image(String),
    /// The checkpoint lacks what an image needs (e.g. a container name).
    #[error("missing metadata: {0}")]
    MissingMetadata(String),
    /// A staging directory was used after a failure, or its destination exists.
    #[error("staging {path}: {reason}")]
    Staging { path: PathBuf, reason: String },
}

impl Error {
    /// The archive or layer entry this error is about, when it is about one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Error::Hostile { entry, .. }
            | Error::Malformed { entry, .. }
            | Error::Limit { entry, .. } => Some(entry),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn hostile(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Hostile {
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn malformed(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Malformed {
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn limit(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Limit {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
}

/// Adds a context string to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
