//! `cleanup`: delete files older than an age under a directory, then optionally the
//! directories that this left empty.
//!
//! One `list-dir` per directory and one `remove-files` per thousand files keep the number
//! of host calls small on large trees. Symbolic links are judged by their own time and
//! removed themselves, never followed (`list-dir` does not follow them).

use crate::glob::Glob;
use crate::host::{error, fail, join, report};
use crate::idem::plugin::fs::{self, Change, Kind};
use crate::idem::plugin::report::{StepError, StepReport};
use crate::idem::plugin::types::Error;
use crate::idem::plugin::{clock, log};
use crate::plan::CleanupStep;

/// Files removed per `remove-files` call.
const BATCH: usize = 1000;

/// A directory met during the walk.
struct Dir {
    path: String,
    rel: String,
    parent: Option<usize>,
    /// Entries not (yet) removed.
    remaining: usize,
    /// Something in it was removed by this cleanup: only such directories count as "left
    /// empty", so a directory that a plan keeps empty on purpose is not removed and
    /// recreated on every run.
    emptied: bool,
}

/// Run a `cleanup` step. Counters: `removed`, `kept` (files that the patterns select but
/// that are not old enough), `dirs-removed`.
pub fn run(step: &CleanupStep) -> Result<StepReport, StepError> {
    let root = step.cleanup.trim_end_matches('/');
    let root = if root.is_empty() { "." } else { root };
    match fs::stat(root).map_err(|e| fail(format!("checking {root}"), e))? {
        None => {
            return Ok(report(&[("removed", 0), ("kept", 0), ("dirs-removed", 0)]));
        }
        Some(meta) if meta.kind != Kind::Directory => {
            return Err(error(format!("{root} is not a directory")));
        }
        Some(_) => {}
    }
    let compile = |patterns: &[String]| {
        patterns
            .iter()
            .map(|p| Glob::new(p).map_err(error))
            .collect::<Result<Vec<_>, _>>()
    };
    let include = compile(&step.include)?;
    let exclude = compile(&step.exclude)?;

    let now = clock::now();
    let age = i64::try_from(step.older_than.seconds).unwrap_or(i64::MAX);
    let cutoff = (now.seconds.saturating_sub(age), now.nanoseconds);

    let mut dirs = vec![Dir {
        path: root.to_owned(),
        rel: String::new(),
        parent: None,
        remaining: 0,
        emptied: false,
    }];
    let mut stack = vec![0usize];
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let mut owners: Vec<usize> = Vec::with_capacity(BATCH);
    let (mut removed, mut kept) = (0u64, 0u64);

    while let Some(i) = stack.pop() {
        let entries = fs::list_dir(&dirs[i].path)
            .map_err(|e| fail(format!("listing {}", dirs[i].path), e))?;
        dirs[i].remaining = entries.len();
        for entry in entries {
            let rel = join(&dirs[i].rel, &entry.name);
            let path = join(&dirs[i].path, &entry.name);
            match entry.metadata.kind {
                Kind::Directory => {
                    dirs.push(Dir {
                        path,
                        rel,
                        parent: Some(i),
                        remaining: 0,
                        emptied: false,
                    });
                    stack.push(dirs.len() - 1);
                }
                Kind::File | Kind::Symlink => {
                    let selected = (include.is_empty() || include.iter().any(|g| g.matches(&rel)))
                        && !exclude.iter().any(|g| g.matches(&rel));
                    if !selected {
                        continue;
                    }
                    let m = &entry.metadata.modified;
                    if (m.seconds, m.nanoseconds) < cutoff {
                        batch.push(path);
                        owners.push(i);
                        if batch.len() >= BATCH {
                            removed += flush(&mut batch, &mut owners, &mut dirs)?;
                            log::progress(removed, 0);
                        }
                    } else {
                        kept += 1;
                    }
                }
                Kind::Other => {}
            }
        }
    }
    removed += flush(&mut batch, &mut owners, &mut dirs)?;

    let mut dirs_removed = 0u64;
    if step.remove_empty_dirs {
        // Children were found after their parents, so going backwards visits every
        // directory after all of its descendants.
        for i in (1..dirs.len()).rev() {
            if dirs[i].remaining != 0 || !dirs[i].emptied {
                continue;
            }
            match fs::remove(&dirs[i].path, false) {
                Ok(change) => {
                    if change == Change::Removed {
                        dirs_removed += 1;
                    }
                    if let Some(p) = dirs[i].parent {
                        dirs[p].remaining = dirs[p].remaining.saturating_sub(1);
                        dirs[p].emptied = true;
                    }
                }
                // Something appeared meanwhile: the directory is not empty, keep it.
                Err(Error::NotEmpty(_)) => {}
                Err(e) => return Err(fail(format!("removing directory {}", dirs[i].path), e)),
            }
        }
    }
    Ok(report(&[
        ("removed", removed),
        ("kept", kept),
        ("dirs-removed", dirs_removed),
    ]))
}

/// Remove the batched files; returns how many were removed (absent ones were already gone).
fn flush(
    batch: &mut Vec<String>,
    owners: &mut Vec<usize>,
    dirs: &mut [Dir],
) -> Result<u64, StepError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let changes = fs::remove_files(batch).map_err(|e| {
        let first = batch.first().map_or("", String::as_str);
        fail(format!("removing {} files (from {first})", batch.len()), e)
    })?;
    let mut removed = 0;
    for (change, &owner) in changes.iter().zip(owners.iter()) {
        if *change == Change::Removed {
            removed += 1;
        }
        let dir = &mut dirs[owner];
        dir.remaining = dir.remaining.saturating_sub(1);
        dir.emptied = true;
    }
    batch.clear();
    owners.clear();
    Ok(removed)
}
