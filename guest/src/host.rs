//! Small helpers over the host's capabilities shared by the operations: wording host errors
//! for the reader, reading a file's records in chunks, and building reports.

use crate::idem::plugin::fs;
use crate::idem::plugin::report::{Counter, StepError, StepReport};
use crate::idem::plugin::types::Error;
use crate::plan::Format;
use crate::records::{CHUNK, ChunkSource, ReadError, Records};

/// A host error in words: `not found: data/users.csv`.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Denied(s) => format!("denied: {s}"),
        Error::NotFound(s) => format!("not found: {s}"),
        Error::WrongKind(s) => format!("wrong kind: {s}"),
        Error::NotEmpty(s) => format!("not empty: {s}"),
        Error::Invalid(s) => format!("invalid: {s}"),
        Error::Sqlite(s) => format!("SQLite error {}: {}", s.code, s.message),
        Error::Io(s) => format!("I/O error: {s}"),
    }
}

/// A step error caused by the host: `writing etc/app.conf: denied: ...`, keeping the host's
/// error as the cause.
pub fn fail(context: impl std::fmt::Display, e: Error) -> StepError {
    StepError {
        message: format!("{context}: {}", describe(&e)),
        cause: Some(e),
    }
}

/// A step error of the guest's own.
pub fn error(message: impl Into<String>) -> StepError {
    StepError {
        message: message.into(),
        cause: None,
    }
}

/// A report with counters in the given order.
pub fn report(counters: &[(&str, u64)]) -> StepReport {
    StepReport {
        counters: counters
            .iter()
            .map(|(name, value)| Counter {
                name: (*name).to_owned(),
                value: *value,
            })
            .collect(),
        failures: Vec::new(),
        message: None,
    }
}

/// Records read from a file under the root, or from rows written in the plan.
pub type HostRecords = Records<HostReader>;

/// The host's `fs.reader` as a chunk source, or bytes the guest already holds.
pub enum HostReader {
    File(fs::Reader),
    /// The whole text at once, then the end.
    Memory(Option<Vec<u8>>),
}

impl ChunkSource for HostReader {
    type Error = Error;
    fn next_chunk(&mut self) -> Result<Vec<u8>, Error> {
        match self {
            HostReader::File(r) => r.next(CHUNK),
            HostReader::Memory(bytes) => Ok(bytes.take().unwrap_or_default()),
        }
    }
}

/// An `upsert`'s records: its `from` file, or its inline `rows` read as CSV text (so their
/// values are typed exactly as a CSV source's fields are), named `rows` in messages.
pub fn upsert_records(step: &crate::plan::UpsertStep) -> Result<HostRecords, StepError> {
    let Some(rows) = &step.rows else {
        return open_records(step.source(), step.format);
    };
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    let io = |e: csv::Error| error(format!("`rows`: {e}"));
    if let Some(first) = rows.first() {
        w.write_record(first.0.iter().map(|(c, _)| c)).map_err(io)?;
    }
    for row in rows {
        w.write_record(row.0.iter().map(|(_, v)| v)).map_err(io)?;
    }
    let bytes = w.into_inner().map_err(|e| error(format!("`rows`: {e}")))?;
    let mut records = Records::new(step.source(), Format::Csv, HostReader::Memory(Some(bytes)))?;
    records.inline = true;
    Ok(records)
}

impl From<ReadError<Error>> for StepError {
    fn from(e: ReadError<Error>) -> StepError {
        match e.cause {
            Some(cause) => fail(e.message, cause),
            None => error(e.message),
        }
    }
}

/// Open `path`'s records in `format`, or the format its extension implies.
pub fn open_records(path: &str, format: Option<Format>) -> Result<HostRecords, StepError> {
    let format = format.or_else(|| Format::from_path(path)).ok_or_else(|| {
        error(format!(
            "cannot tell the format of {path} from its extension; add `format: csv`, `json` or `ndjson`"
        ))
    })?;
    let reader = fs::open_reader(path).map_err(|e| fail(format!("opening {path}"), e))?;
    let mut records = Records::new(path, format, HostReader::File(reader))?;
    // The size lets progress show a total (see `Records::estimated_total`); a file it cannot
    // stat now still reads, without one.
    records.size = fs::stat(path).ok().flatten().map(|m| m.size);
    Ok(records)
}

/// The parent directory of a relative path, if it has one.
pub fn parent(path: &str) -> Option<&str> {
    let trimmed = path.trim_end_matches('/');
    let (parent, _) = trimmed.rsplit_once('/')?;
    let parent = parent.trim_end_matches('/');
    (!parent.is_empty() && parent != ".").then_some(parent)
}

/// `base/name`, where a base of `.` or nothing is the root.
pub fn join(base: &str, name: &str) -> String {
    if base.is_empty() || base == "." {
        name.to_owned()
    } else {
        format!("{}/{name}", base.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_joins() {
        assert_eq!(parent("a/b/c.txt"), Some("a/b"));
        assert_eq!(parent("c.txt"), None);
        assert_eq!(parent("./c.txt"), None);
        assert_eq!(parent("a/b/"), Some("a"));
        assert_eq!(join(".", "x"), "x");
        assert_eq!(join("logs/", "x"), "logs/x");
        assert_eq!(join("", "x"), "x");
    }
}
