//! `file`: ensure a file's content (inline or copied from another file) and mode.

use std::borrow::Cow;

use crate::host::{error, fail, parent, report};
use crate::idem::plugin::fs::{self, Kind};
use crate::idem::plugin::report::{StepError, StepReport};
use crate::plan::FileStep;

/// Run a `file` step. The current content is compared first so that an unchanged file is
/// not even offered to `write-atomic` (which would compare again); missing parents are
/// created through `create-dir`, so they are reported as changes of their own.
pub fn run(step: &FileStep) -> Result<StepReport, StepError> {
    let path = step.file.as_str();
    let mode = step.mode.map(|m| m.0);
    let existing = fs::stat(path).map_err(|e| fail(format!("checking {path}"), e))?;
    if let Some(meta) = &existing {
        if meta.kind == Kind::Directory {
            return Err(error(format!("{path} is a directory, not a file")));
        }
        if step.if_missing {
            let mut r = report(&[]);
            r.message = Some(format!("{path} exists; left as it is (if-missing)"));
            return Ok(r);
        }
    }
    if let (None, Some(source)) = (&step.content, &step.source) {
        // Copied by the host in chunks: a source of any size is never held by the guest.
        if existing.is_none() {
            make_parent(path)?;
        }
        fs::copy_file(source, path, mode)
            .map_err(|e| fail(format!("copying {source} to {path}"), e))?;
        return Ok(report(&[]));
    }
    let content: Cow<'_, [u8]> = match &step.content {
        Some(text) => Cow::Borrowed(text.as_bytes()),
        None => return Err(error(format!("{path}: no content or source given"))),
    };
    match &existing {
        Some(meta) if meta.kind == Kind::File => {
            let mode_matches = mode.is_none_or(|m| meta.mode & 0o7777 == m);
            if mode_matches && meta.size == content.len() as u64 {
                let current = fs::read(path).map_err(|e| fail(format!("reading {path}"), e))?;
                if current == *content {
                    return Ok(report(&[]));
                }
            }
        }
        Some(_) => {}
        None => make_parent(path)?,
    }
    fs::write_atomic(path, &content, mode).map_err(|e| fail(format!("writing {path}"), e))?;
    Ok(report(&[]))
}

/// A missing parent directory is created through `create-dir`, so it is a change of its own.
fn make_parent(path: &str) -> Result<(), StepError> {
    if let Some(dir) = parent(path) {
        let there = fs::stat(dir).map_err(|e| fail(format!("checking {dir}"), e))?;
        if there.is_none() {
            fs::create_dir(dir, None).map_err(|e| fail(format!("creating directory {dir}"), e))?;
        }
    }
    Ok(())
}
