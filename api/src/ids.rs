//! Ids the agent takes: checkpoint ids name directories in its store and container ids
//! name runc containers and bundles, so both are single safe path components.

/// Longest id.
pub const MAX_ID_LEN: usize = 128;

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`: checkpoint and container ids.
pub fn is_valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= MAX_ID_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An id made of `parts` joined by `.`, cut to [`MAX_ID_LEN`]: the shim names a
/// migration's checkpoint `<namespace>.<name>-<suffix>` (both DNS names, so valid).
pub fn joined_id(parts: &[&str]) -> String {
    parts.join(".").chars().take(MAX_ID_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("counter-1.ckpt_2"));
        assert!(is_valid_id(&"a".repeat(128)));
        for bad in ["", ".x", "-x", "a/b", "..", "a b", &"a".repeat(129), "é"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
        assert_eq!(joined_id(&["ns", "mig-1"]), "ns.mig-1");
        assert_eq!(joined_id(&[&"a".repeat(200)]).len(), 128);
    }
}
