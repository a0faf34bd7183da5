//! Text for a terminal: whether a stream gets colour, and guest-controlled strings made safe to
//! print.
//!
//! Record values, plugin messages and errors, and paths built from them come from outside idem.
//! Printed raw, an escape sequence in one could move the cursor, recolour or clear the
//! terminal, or retitle its window; a carriage return could overwrite the line it is on. So
//! every such string is passed through [`escape`] (one line) or [`escape_text`] (newlines
//! kept) before it reaches a text stream. JSON needs none of this: serde escapes control
//! characters itself.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::IsTerminal;

/// The user's `--color` choice.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Whether a stream that `is_terminal` gets colour under `choice`, with `env` reading the
/// environment: `--color always`/`never` decide alone; under `auto`, a non-empty `NO_COLOR`
/// turns colour off, then a `CLICOLOR_FORCE` other than `0` turns it on, then a terminal
/// (whose `TERM` is not `dumb`) gets it. The order is anstream's, which most Rust tools share.
pub fn color_for(
    choice: ColorChoice,
    is_terminal: bool,
    env: impl Fn(&str) -> Option<String>,
) -> bool {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            if set("NO_COLOR").is_some() {
                false
            } else if set("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
                true
            } else {
                is_terminal && set("TERM").is_none_or(|t| t != "dumb")
            }
        }
    }
}

/// Whether standard output (`stderr` false) or standard error gets colour.
pub fn color(choice: ColorChoice, stderr: bool) -> bool {
    let tty = if stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    color_for(choice, tty, |n| std::env::var(n).ok())
}

fn needs_escape(c: char, keep_newlines: bool) -> bool {
    if keep_newlines && (c == '\n' || c == '\t') {
        return false;
    }
    // C0 controls, DEL and the C1 controls (U+0080..U+009F, which some terminals take as
    // escape sequences of one character, CSI among them).
    c.is_control()
}

fn escape_with(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c, keep_newlines) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` as one line a terminal shows as it is: every control character (newlines too) written
/// as an escape, `\x1b` as `\u{1b}`.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, false)
}

/// `s` with its control characters escaped but its newlines and tabs kept, for messages of
/// several lines (a plugin's stderr tail).
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape_with(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape("plain text é"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("x\ry\nz\u{9b}"), "x\\ry\\nz\\u{9b}");
        assert_eq!(escape_text("one\n\ttwo\x07"), "one\n\ttwo\\u{7}");
    }

    #[test]
    fn colour_follows_the_flag_then_no_color_then_clicolor_force_then_the_terminal() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        use ColorChoice::*;
        type Vars = &'static [(&'static str, &'static str)];
        let table: &[(ColorChoice, bool, Vars, bool)] = &[
            (Always, false, &[("NO_COLOR", "1")], true),
            (Never, true, &[("CLICOLOR_FORCE", "1")], false),
            (Auto, true, &[], true),
            (Auto, false, &[], false),
            (Auto, true, &[("NO_COLOR", "1")], false),
            (Auto, true, &[("NO_COLOR", "")], true),
            (Auto, false, &[("CLICOLOR_FORCE", "1")], true),
            (Auto, false, &[("CLICOLOR_FORCE", "0")], false),
            (
                Auto,
                false,
                &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
                false,
            ),
            (Auto, true, &[("TERM", "dumb")], false),
        ];
        for (choice, tty, vars, want) in table {
            assert_eq!(
                color_for(*choice, *tty, env(vars)),
                *want,
                "{choice:?} tty={tty} {vars:?}"
            );
        }
    }
}
