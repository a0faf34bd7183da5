//! What a capability changed (or, under a dry run, would change), as the host saw it.
//!
//! Capabilities record a [`Change`] at the single point where they write; the engine drains
//! them after each step. A step's outcome is derived from these, never from the guest's word.

use serde::Serialize;

/// The kind of one change. The serialised names are stable codes for machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    CreateDir,
    CreateFile,
    UpdateFile,
    SetMode,
    RemoveFile,
    RemoveDir,
    CreateDatabase,
    WriteRows,
    AlterSchema,
    /// A plugin's HTTP request with a method other than GET, HEAD or OPTIONS: not sent under
    /// a dry run, sent (with its status recorded) under apply.
    HttpRequest,
}

impl ChangeKind {
    /// The stable code, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::CreateDir => "create-dir",
            ChangeKind::CreateFile => "create-file",
            ChangeKind::UpdateFile => "update-file",
            ChangeKind::SetMode => "set-mode",
            ChangeKind::RemoveFile => "remove-file",
            ChangeKind::RemoveDir => "remove-dir",
            ChangeKind::CreateDatabase => "create-database",
            ChangeKind::WriteRows => "write-rows",
            ChangeKind::AlterSchema => "alter-schema",
            ChangeKind::HttpRequest => "http-request",
        }
    }
}

/// One change to a path or a database.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The path under the root (the database file for database changes).
    pub path: String,
    /// Rows changed, for `write-rows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// SHA-256 of the content before, for file updates and removals (journal only).
    #[serde(skip)]
    pub before: Option<String>,
    /// SHA-256 of the content after, for file writes (journal only).
    #[serde(skip)]
    pub after: Option<String>,
    /// A unified diff, when `--diff` asked for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// For `http-request`: what was (or would be) sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo>,
}

/// An HTTP request a plugin made, as reported. The URL has credentials in its query and
/// every secret header value replaced by `<redacted>`; headers are never reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpInfo {
    pub method: String,
    pub url: String,
    /// SHA-256 of the request body (what a dry run read and did not send; what an apply
    /// sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// The request body's size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
    /// The response status, under apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl Change {
    /// How the journal names the target: the path, and for a request sent its status and
    /// its body's size and SHA-256 (`PUT https://x/a -> 200 (8 bytes, sha256 9f86…)`).
    pub fn journal_target(&self) -> String {
        let Some(h) = &self.http else {
            return self.path.clone();
        };
        let mut out = self.path.clone();
        if let Some(status) = h.status {
            out.push_str(&format!(" -> {status}"));
        }
        if let (Some(n), Some(sha)) = (h.body_bytes, &h.body_sha256) {
            let unit = if n == 1 { "byte" } else { "bytes" };
            out.push_str(&format!(" ({n} {unit}, sha256 {sha})"));
        }
        out
    }

    pub fn new(kind: ChangeKind, path: impl Into<String>) -> Self {
        Change {
            kind,
            path: path.into(),
            rows: None,
            before: None,
            after: None,
            diff: None,
            http: None,
        }
    }
}

/// The outcome of a step, as reported. Stable codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Unchanged,
    Created,
    Updated,
    Removed,
    Failed,
    NotRun,
    /// Left out by `--only` or `--skip`.
    Skipped,
    /// A signal stopped the run during this step (its checkpoints were saved).
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Removed => "removed",
            Outcome::Failed => "failed",
            Outcome::NotRun => "not-run",
            Outcome::Skipped => "skipped",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// How a dry run words it: `would create`.
    pub fn planned(self) -> &'static str {
        match self {
            Outcome::Created => "would create",
            Outcome::Updated => "would update",
            Outcome::Removed => "would remove",
            other => other.as_str(),
        }
    }

    /// A step's outcome from the changes seen at the capability layer: nothing changed is
    /// `unchanged`; only creations (rows and schema of a database created in the same step
    /// count as creation) is `created`; only removals is `removed`; anything else `updated`.
    pub fn from_changes(changes: &[Change]) -> Outcome {
        if changes.is_empty() {
            return Outcome::Unchanged;
        }
        let created_db = |path: &str| {
            changes
                .iter()
                .any(|c| c.kind == ChangeKind::CreateDatabase && c.path == path)
        };
        let mut all_created = true;
        let mut all_removed = true;
        for c in changes {
            let created = match c.kind {
                ChangeKind::CreateDir | ChangeKind::CreateFile | ChangeKind::CreateDatabase => true,
                ChangeKind::WriteRows | ChangeKind::AlterSchema => created_db(&c.path),
                _ => false,
            };
            let removed = matches!(c.kind, ChangeKind::RemoveFile | ChangeKind::RemoveDir);
            all_created &= created;
            all_removed &= removed;
        }
        if all_created {
            Outcome::Created
        } else if all_removed {
            Outcome::Removed
        } else {
            Outcome::Updated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: ChangeKind, path: &str) -> Change {
        Change::new(kind, path)
    }

    #[test]
    fn outcome_follows_the_changes_seen() {
        use ChangeKind::*;
        let table: &[(&[Change], Outcome)] = &[
            (&[], Outcome::Unchanged),
            (&[c(CreateDir, "a"), c(CreateFile, "a/b")], Outcome::Created),
            (&[c(UpdateFile, "a")], Outcome::Updated),
            (&[c(SetMode, "a")], Outcome::Updated),
            (&[c(RemoveFile, "a"), c(RemoveDir, "b")], Outcome::Removed),
            (&[c(CreateDir, "a"), c(RemoveFile, "b")], Outcome::Updated),
            (
                &[
                    c(CreateDatabase, "d.db"),
                    c(AlterSchema, "d.db"),
                    c(WriteRows, "d.db"),
                ],
                Outcome::Created,
            ),
            (&[c(WriteRows, "d.db")], Outcome::Updated),
            (
                &[c(CreateDatabase, "e.db"), c(WriteRows, "d.db")],
                Outcome::Updated,
            ),
        ];
        for (changes, want) in table {
            assert_eq!(Outcome::from_changes(changes), *want, "{changes:?}");
        }
    }
}
