//! What the binaries share at their edge: whether to colour, and how an error is shown.

use std::io::IsTerminal;

/// Colour (ANSI escapes) only on a terminal, and never with `NO_COLOR` set to anything
/// non-empty (<https://no-color.org>).
pub fn use_color(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether log lines on stderr may carry escapes.
pub fn stderr_color() -> bool {
    use_color(std::io::stderr().is_terminal())
}

/// An error and its causes, each said once. Library errors often repeat their source in
/// their own message (`"... ({0})"` next to `#[source]`); a cause whose text the lines
/// above already contain adds nothing and is left out.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut cause = Some(err);
    while let Some(e) = cause {
        let text = printable(e.to_string().trim());
        if !text.is_empty() && !lines.iter().any(|l| l.contains(&text)) {
            lines.push(text);
        }
        cause = e.source();
    }
    let mut out = format!(
        "error: {}",
        lines.first().map(String::as_str).unwrap_or("?")
    );
    for l in lines.iter().skip(1) {
        out.push_str("\n  caused by: ");
        out.push_str(l);
    }
    out
}

/// Longest a cause is shown: errors quote hostile input (a random file's "entry name").
const MAX_CAUSE_CHARS: usize = 300;

/// `text` safe for a terminal: control characters (escape sequences, NULs) and the
/// replacement characters of undecodable bytes are escaped, and the result is cut after
/// [`MAX_CAUSE_CHARS`] characters with a note of how much was left out.
pub fn printable(text: &str) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for (i, c) in text.char_indices() {
        if shown >= MAX_CAUSE_CHARS {
            out.push_str(&format!("… ({} more bytes)", text.len() - i));
            break;
        }
        if c.is_control() || c == char::REPLACEMENT_CHARACTER {
            let escaped: String = c.escape_default().collect();
            shown += escaped.chars().count();
            out.push_str(&escaped);
        } else {
            shown += 1;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connecting: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("migration failed")]
    struct Outer(#[source] Repeats);

    #[test]
    fn each_cause_is_said_once() {
        let e = Outer(Repeats(std::io::Error::other("connection refused")));
        assert_eq!(
            report(&e),
            "error: migration failed\n  caused by: connecting: connection refused"
        );
    }

    #[test]
    fn binary_is_escaped_and_cut() {
        let garbage = format!("entry `\u{1b}[31m\0{}`", "\u{fffd}x".repeat(400));
        let shown = printable(&garbage);
        assert!(
            shown.starts_with("entry `\\u{1b}[31m\\u{0}\\u{fffd}x"),
            "{shown}"
        );
        assert!(!shown.contains('\u{1b}') && !shown.contains('\0'));
        assert!(shown.ends_with("more bytes)"), "{shown}");
        assert!(shown.chars().count() < 2 * MAX_CAUSE_CHARS, "{shown}");
    }

    #[test]
    fn no_colour_off_a_terminal() {
        assert!(!use_color(false));
    }
}
