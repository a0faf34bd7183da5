//! Secrets kept out of everything idem shows or records.
//!
//! The loader hands back the values of the plan's sensitive variables; they are added here
//! once, and every boundary where text leaves the process passes through [`text`]: a step's
//! result as the run closes it (so the live lines, the text and JSON reports, the journal and
//! history all get the redacted copy), the log formatter (the guest's log lines and the
//! host's own), plan errors, and the error `main` prints. Nothing redacts "at each print": a
//! new output reads the report or logs through tracing, and both are already clean.
//!
//! The set is process-wide because the log subscriber is, and a value once sensitive stays
//! so for the life of the process (a `--verify` second pass, the error printed at exit).

use std::borrow::Cow;
use std::sync::RwLock;

/// What a sensitive value is shown as.
pub const SHOWN: &str = "(sensitive)";

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Treat every one of `values` as a secret from now on (empty ones hide nothing, and are
/// ignored).
pub fn add(values: impl IntoIterator<Item = String>) {
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for v in values {
        if !v.is_empty() && !secrets.contains(&v) {
            secrets.push(v);
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Whether any secret is known (to skip work on the common path).
pub fn any() -> bool {
    !SECRETS.read().unwrap_or_else(|e| e.into_inner()).is_empty()
}

/// `s` with every known secret replaced by [`SHOWN`].
pub fn text(s: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    redact_with(s, &secrets)
}

/// Redact `s` in place.
pub fn in_place(s: &mut String) {
    if let Cow::Owned(clean) = text(s) {
        *s = clean;
    }
}

fn redact_with<'a>(s: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(s);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), SHOWN));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_replaced_longest_first() {
        let secrets = vec!["hunter22".to_string(), "hunter".to_string()];
        assert_eq!(
            redact_with("a hunter22 b hunter", &secrets),
            "a (sensitive) b (sensitive)"
        );
        assert!(matches!(redact_with("clean", &secrets), Cow::Borrowed(_)));
    }
}
