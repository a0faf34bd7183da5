//! `cleanup`: delete files older than an age under a directory, then optionally every
//! directory under it that is empty, except those another step of the plan makes.
//!
//! The rule does not depend on who emptied a directory: a run killed between a cleanup's
//! deletions and its removal of the directories they emptied leaves directories that the
//! re-run, finding them empty, removes too; so it ends as one clean run would.
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
use std::collections::BTreeSet;

use crate::plan::{CleanupStep, Step, SubStep};

/// Files removed per `remove-files` call.
const BATCH: usize = 1000;

/// A directory met during the walk.
struct Dir {
    path: String,
    rel: String,
    parent: Option<usize>,
    /// Entries not (yet) removed.
    remaining: usize,
}

thread_local! {
    /// The directories the loaded plan makes (components are single-threaded).
    static MADE_BY_PLAN: std::cell::RefCell<BTreeSet<String>> =
        const { std::cell::RefCell::new(BTreeSet::new()) };
}

/// Remember which directories the loaded plan makes, for its cleanups.
pub fn remember_plan(plan: &[Step]) {
    MADE_BY_PLAN.with(|m| *m.borrow_mut() = made_by_plan(plan));
}

/// Normalise a plan path as the host does (no `.`, no empty components, no trailing `/`).
fn normal(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Every directory the plan's steps make or write into, with their ancestors: a cleanup
/// keeps those even when empty, or the next step (or the next run) would make them again.
/// A templated path of `each` counts up to its first placeholder.
pub fn made_by_plan(plan: &[Step]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |path: &str, is_dir: bool| {
        let literal = match path.find('{') {
            Some(i) => path[..i].rsplit_once('/').map_or("", |(d, _)| d),
            None => path,
        };
        let p = normal(literal);
        let mut parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        // A file's own name is not a directory (a templated path was cut before it).
        if !is_dir && !path.contains('{') {
            parts.pop();
        }
        for n in 1..=parts.len() {
            out.insert(parts[..n].join("/"));
        }
    };
    for step in plan {
        match step {
            Step::Dir(s) => add(&s.dir, true),
            Step::File(s) => add(&s.file, false),
            Step::Upsert(s) => add(&s.upsert, false),
            Step::Each(e) => {
                for sub in &e.steps {
                    match sub {
                        SubStep::Dir(s) => add(&s.dir, true),
                        SubStep::File(s) => add(&s.file, false),
                        SubStep::Upsert(s) => add(&s.upsert, false),
                        SubStep::Remove(_) | SubStep::Cleanup(_) => {}
                    }
                }
            }
            Step::Remove(_) | Step::Cleanup(_) | Step::Plugin(_) => {}
        }
    }
    out
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
                            let (r, k) = flush(&mut batch, &mut owners, &mut dirs, cutoff)?;
                            removed += r;
                            kept += k;
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
    let (r, k) = flush(&mut batch, &mut owners, &mut dirs, cutoff)?;
    removed += r;
    kept += k;

    let mut dirs_removed = 0u64;
    if step.remove_empty_dirs {
        let keep = MADE_BY_PLAN.with(|m| m.borrow().clone());
        // Children were found after their parents, so going backwards visits every
        // directory after all of its descendants.
        for i in (1..dirs.len()).rev() {
            if dirs[i].remaining != 0
                || keep.contains(&normal(&dirs[i].path))
                || exclude.iter().any(|g| g.matches(&dirs[i].rel))
            {
                continue;
            }
            match fs::remove(&dirs[i].path, false) {
                Ok(change) => {
                    if change == Change::Removed {
                        dirs_removed += 1;
                    }
                    if let Some(p) = dirs[i].parent {
                        dirs[p].remaining = dirs[p].remaining.saturating_sub(1);
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
/// Remove the batched files that are still older than `cutoff` when the host comes to them;
/// returns how many were removed, and how many were left because they are fresh now (a log
/// rotated since the listing) or gone.
fn flush(
    batch: &mut Vec<String>,
    owners: &mut Vec<usize>,
    dirs: &mut [Dir],
    cutoff: (i64, u32),
) -> Result<(u64, u64), StepError> {
    if batch.is_empty() {
        return Ok((0, 0));
    }
    let older_than = crate::idem::plugin::types::Datetime {
        seconds: cutoff.0,
        nanoseconds: cutoff.1,
    };
    let changes = fs::remove_stale_files(batch, older_than).map_err(|e| {
        let first = batch.first().map_or("", String::as_str);
        fail(format!("removing {} files (from {first})", batch.len()), e)
    })?;
    let (mut removed, mut left) = (0, 0);
    for (change, &owner) in changes.iter().zip(owners.iter()) {
        if *change == Change::Removed {
            removed += 1;
            let dir = &mut dirs[owner];
            dir.remaining = dir.remaining.saturating_sub(1);
        } else {
            left += 1;
        }
    }
    batch.clear();
    owners.clear();
    Ok((removed, left))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> Vec<Step> {
        crate::plan::parse(yaml).unwrap().plan.steps
    }

    #[test]
    fn the_directories_a_plan_makes_are_kept() {
        let steps = plan(
            "steps:\n  - dir: logs/keep/\n  - file: ./logs/cur/app.log\n    content: x\n  - each: r.csv\n    key: id\n    steps:\n      - dir: \"homes/{team}/{id}\"\n      - file: \"out/fixed/{id}.txt\"\n        content: x\n",
        );
        let got: Vec<String> = made_by_plan(&steps).into_iter().collect();
        assert_eq!(
            got,
            ["homes", "logs", "logs/cur", "logs/keep", "out", "out/fixed"]
        );
    }
}
