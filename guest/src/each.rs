//! `each`: run sub-steps for each record, with `{field}` templates, and mark each record in a
//! checkpoint once its sub-steps have succeeded.
//!
//! By default `each` converges like every other step: a record's mark carries a fingerprint
//! of the record (every field's value) and of its outputs as they were left (kind, size,
//! mode and modification time of each path its `dir`, `file` and `remove` sub-steps name, as
//! a build tool keeps them). A record whose mark still matches is skipped; one whose values
//! changed, or whose outputs were edited or removed, is processed again, so a resumed run
//! skips what an interrupted one finished and a re-run restores what drifted. With
//! `once: true` a marked key is never looked at again, whatever its data.
//!
//! With `prune: true` a mark also names the record's outputs (the paths its `dir` and `file`
//! sub-steps made), and once every record has been read, the marks of keys no longer in the
//! source are listed a page at a time: their files are removed, their directories too when
//! empty, and their marks forgotten. A source that cannot be read to its end prunes nothing.
//!
//! Records are read a batch at a time so that the checkpoint is asked about many keys in one
//! call; marks are sent in batches too. The step's file writes are a group commit
//! (`fs.group-writes`, issue 20): they are made durable together, once per batch, at the
//! `fs.sync` barrier that follows the batch's sub-steps, instead of two fsyncs per file. A
//! record is marked only after its sub-steps returned and that barrier passed (the host also
//! settles before it takes any mark), so a crash, even a power cut, repeats at most the
//! records whose marks were not yet written: at least once, harmless for idempotent
//! sub-steps.

use crate::host::{error, fail, open_records, report};
use crate::idem::plugin::fs;
use crate::idem::plugin::report::{Failure, StepError, StepReport};
use crate::idem::plugin::types::Error;
use crate::idem::plugin::{checkpoint, log};
use crate::plan::{EachStep, Step, SubStep};
use crate::records::{OwnedRecord, Record};
use crate::yaml::Loc;
use crate::{cleanup, dir, file, remove, template, upsert};
use std::collections::HashSet;

/// Records per checkpoint look-up, and keys per `mark` call.
const BATCH: usize = 256;

/// Separates the values of a compound key in checkpoint keys (ASCII unit separator).
const KEY_SEPARATOR: char = '\u{1f}';

/// The checkpoint scope: the step's `id`, or `each:` and a hash of the step's definition
/// (without its `name`), so that editing the sub-steps processes every record again.
pub fn scope(step: &EachStep) -> String {
    if let Some(id) = &step.id {
        return id.clone();
    }
    let mut definition = step.clone();
    definition.name = None;
    // Turning pruning on or off keeps the marks (a mark without outputs is redone once).
    definition.prune = false;
    let canonical = serde_json::to_string(&definition).unwrap_or_default();
    format!("each:{:016x}", fnv1a(canonical.as_bytes()))
}

/// 64-bit FNV-1a: stable across builds and platforms, which `std`'s hasher is not.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The checkpoint key of a record and how the record is named in failures (`record id=42`).
pub fn record_key(record: Record<'_>, key: &[String]) -> Result<(String, String), String> {
    let mut checkpoint_key = String::new();
    let mut label = String::from("record ");
    for (i, k) in key.iter().enumerate() {
        let value = record
            .get(k)
            .ok_or_else(|| format!("the record has no key field `{k}`"))?;
        if value.is_empty() {
            return Err(format!("the key field `{k}` is empty"));
        }
        let text = value.to_text();
        if i > 0 {
            checkpoint_key.push(KEY_SEPARATOR);
            label.push_str(", ");
        }
        checkpoint_key.push_str(&text);
        use std::fmt::Write as _;
        let _ = write!(label, "{k}={text}");
    }
    Ok((checkpoint_key, label))
}

/// A record waiting for its checkpoint answer.
struct Pending {
    record: OwnedRecord,
    /// `row 17`, for records whose key cannot be read.
    item: String,
    key: Result<(String, String), String>,
}

/// Counts kept while going.
#[derive(Default)]
struct Progress {
    processed: u64,
    skipped: u64,
    /// Records that needed work and that another runner took (cooperating or sharded).
    elsewhere: u64,
    failures: Vec<Failure>,
    to_mark: Vec<String>,
    /// With fingerprints (the default, converging semantics), or outputs (`prune`).
    to_mark_values: Vec<(String, String)>,
    /// With `prune`: every key in the source.
    seen: HashSet<String>,
}

/// Run an `each` step. Counters: `processed`, `skipped`, `failed`.
pub fn run(step: &EachStep) -> Result<StepReport, StepError> {
    let scope = scope(step);
    let mut records = open_records(&step.each, step.format)?;
    fs::group_writes();
    if let Some(header) = records.header() {
        check_fields(step, header).map_err(error)?;
    }
    let mut progress = Progress::default();
    let mut pending: Vec<Pending> = Vec::with_capacity(BATCH);
    while let Some(r) = records.next_record()? {
        let record = r.to_owned();
        let key = record_key(record.as_record(), &step.key);
        // How the record is named when its key cannot be read (formatted only then).
        let item = if key.is_err() {
            records.item()
        } else {
            String::new()
        };
        pending.push(Pending { record, item, key });
        if pending.len() >= BATCH {
            let total = records.estimated_total(records.count());
            run_batch(step, &scope, &mut pending, &mut progress, total)?;
        }
    }
    let total = records.count();
    run_batch(step, &scope, &mut pending, &mut progress, total)?;
    mark(&scope, &mut progress.to_mark)?;
    mark_values(&scope, &mut progress.to_mark_values)?;
    let pruned = if step.prune {
        prune(step, &scope, &progress.seen, &mut progress.failures)?
    } else {
        0
    };

    let failed = progress.failures.len() as u64;
    let mut counters = vec![
        ("processed", progress.processed),
        ("skipped", progress.skipped),
        ("failed", failed),
    ];
    if step.prune {
        counters.push(("pruned", pruned));
    }
    // Only a runner that shares the records has any: the counters of a lone run stay as
    // they were.
    if progress.elsewhere > 0 {
        counters.push(("elsewhere", progress.elsewhere));
    }
    let mut r = report(&counters);
    r.failures = progress.failures;
    Ok(r)
}

/// At load, before any step runs (so `idem validate` too): every `each` whose CSV records
/// exist now and that no earlier step writes or removes has its templates checked against
/// their header, with the line and column of the misspelt field when the plan's text shows
/// it. Records written by an earlier step are checked when the step opens them.
pub fn check_headers(
    loaded: &crate::plan::Loaded,
    source: &str,
) -> Result<(), crate::plan::PlanError> {
    let norm = |p: &str| {
        p.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect::<Vec<_>>()
            .join("/")
    };
    let steps = &loaded.plan.steps;
    for (i, step) in steps.iter().enumerate() {
        let Step::Each(each) = step else { continue };
        let path = norm(&each.each);
        let touched = steps[..i].iter().any(|s| {
            let t = norm(&s.target());
            t == path || t.is_empty() || path.starts_with(&format!("{t}/"))
        });
        if touched || !matches!(crate::idem::plugin::fs::stat(&each.each), Ok(Some(_))) {
            continue;
        }
        // A source that cannot be read is the step's error, as it was.
        let Ok(records) = open_records(&each.each, each.format) else {
            continue;
        };
        let Some(header) = records.header() else {
            continue;
        };
        if let Err(message) = check_fields(each, header) {
            let start = loaded.locations[i];
            let end = loaded.locations.get(i + 1).map(|l| l.line);
            let loc = field_in_source(source, &message, start, end).unwrap_or(start);
            return Err(crate::plan::PlanError {
                message,
                loc: Some(loc),
                hint: Some(format!(
                    "the columns of {} are its header's: {}",
                    each.each,
                    header.join(", ")
                )),
            });
        }
    }
    Ok(())
}

/// Where the `{field}` a message of [`check_fields`] names first appears in the step's lines
/// of the plan file (not of an included file, whose text is not at hand).
fn field_in_source(source: &str, message: &str, start: Loc, end: Option<u32>) -> Option<Loc> {
    if start.file.is_some() {
        return None;
    }
    let field = message.strip_prefix('`')?.split('`').next()?;
    for (n, line) in source.lines().enumerate() {
        let n = n as u32 + 1;
        if n < start.line || end.is_some_and(|e| n >= e) {
            continue;
        }
        if let Some(at) = line.find(field) {
            return Some(Loc {
                line: n,
                column: line[..at].chars().count() as u32 + 1,
                file: None,
            });
        }
    }
    None
}

/// Every `{field}` of the sub-steps must be a column of a CSV header: a misspelt field is one
/// error naming it (with the nearest column), not a failure of every record.
pub fn check_fields(step: &EachStep, header: &[String]) -> Result<(), String> {
    let columns: Vec<&str> = header.iter().map(String::as_str).collect();
    for (i, sub) in step.steps.iter().enumerate() {
        let mut sub = sub.clone();
        let mut missing = None;
        // Only reads each template; a parse error was refused at load.
        let _ = sub.map_templates(&mut |field, _, text| {
            if missing.is_none()
                && let Ok(segments) = template::parse(text)
            {
                missing = segments.into_iter().find_map(|s| match s {
                    template::Segment::Field { name, .. } if !columns.contains(&name) => {
                        Some((field, name.to_owned()))
                    }
                    _ => None,
                });
            }
            Ok(())
        });
        if let Some((field, name)) = missing {
            let near = match crate::plan::closest(&name, &columns) {
                Some(c) => format!("; did you mean `{{{c}}}`?"),
                None => format!("; its columns are {}", columns.join(", ")),
            };
            return Err(format!(
                "`{{{name}}}` in `{field}` of sub-step {} is not a column of {}{near}",
                i + 1,
                step.each
            ));
        }
    }
    Ok(())
}

fn run_batch(
    step: &EachStep,
    scope: &str,
    pending: &mut Vec<Pending>,
    progress: &mut Progress,
    total: u64,
) -> Result<(), StepError> {
    if pending.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = pending
        .iter()
        .filter_map(|p| p.key.as_ref().ok().map(|(k, _)| k.clone()))
        .collect();
    // `once`: whether each key is marked; by default, what it was marked with.
    let marks: Vec<Option<String>> = if step.once {
        checkpoint::done(scope, &keys).map(|d| d.into_iter().map(|m| m.then(String::new)).collect())
    } else {
        checkpoint::values(scope, &keys)
    }
    .map_err(|e| fail(format!("{}: reading checkpoint {scope}", step.each), e))?;
    if marks.len() != keys.len() {
        return Err(error(format!(
            "{}: the checkpoint answered {} of {} keys",
            step.each,
            marks.len(),
            keys.len()
        )));
    }
    // Render every record first, so that the outputs of all the records whose marks are to
    // be checked are stat'ed in one host call; then what needs work, then which of that this
    // runner takes (runners that cooperate each take a part, a runner alone takes it all),
    // then the work.
    let mut answers = marks.into_iter();
    // Records skipped because their fingerprint matched: `checkpoint.values` cannot tell the
    // live display, as `done` does for `once`.
    let matched_before = progress.skipped;
    let mut ready: Vec<Ready> = Vec::with_capacity(pending.len());
    for p in pending.drain(..) {
        let (key, label) = match p.key {
            Ok(k) => k,
            Err(message) => {
                progress.failures.push(Failure {
                    item: p.item,
                    message,
                });
                continue;
            }
        };
        let mark_now = answers.next().flatten();
        if step.prune {
            progress.seen.insert(key.clone());
        }
        let subs = match rendered(step, p.record.as_record()) {
            Ok(s) => s,
            Err(message) => {
                progress.failures.push(Failure {
                    item: label,
                    message,
                });
                continue;
            }
        };
        ready.push(Ready {
            record: p.record,
            key,
            label,
            mark_now,
            subs,
        });
    }
    let to_check: Vec<&Ready> = ready
        .iter()
        .filter(|r| !step.once && r.mark_now.as_deref().is_some_and(|m| !m.is_empty()))
        .collect();
    let mut now = mark_values_now(step, &to_check)?.into_iter();
    let mut work: Vec<Ready> = Vec::new();
    let mut offered: Vec<(String, Option<String>)> = Vec::new();
    for r in ready {
        if step.once {
            if r.mark_now.is_some() {
                progress.skipped += 1;
                continue;
            }
        } else if let Some(was) = r.mark_now.as_deref().filter(|m| !m.is_empty())
            && now.next().as_deref() == Some(was)
        {
            progress.skipped += 1;
            continue;
        }
        offered.push((r.key.clone(), r.mark_now.clone()));
        work.push(r);
    }
    let taken = if offered.is_empty() {
        Vec::new()
    } else {
        checkpoint::claim(scope, &offered)
            .map_err(|e| fail(format!("{}: claiming records of {scope}", step.each), e))?
    };
    if taken.len() != offered.len() {
        return Err(error(format!(
            "{}: the checkpoint answered {} of {} claims",
            step.each,
            taken.len(),
            offered.len()
        )));
    }
    let bare = step.once && !step.prune;
    let mut done: Vec<Ready> = Vec::new();
    for (r, mine) in work.into_iter().zip(taken) {
        if !mine {
            progress.elsewhere += 1;
            continue;
        }
        // A record whose effects are all in one PostgreSQL database runs in one transaction
        // there, which carries its mark when the state store is that database.
        let with_effect = match pg_effect_database(&r.subs) {
            Some(name) if !step.prune => match run_in_pg(step, scope, &r, name, bare) {
                Ok(Some(marked)) => Some(Ok(marked)),
                Ok(None) => None,
                Err(m) => Some(Err(m)),
            },
            _ => None,
        };
        let outcome = match with_effect {
            Some(r) => r,
            None => run_subs(&r.subs).map(|()| false),
        };
        match outcome {
            Ok(true) => progress.processed += 1,
            Ok(false) => {
                progress.processed += 1;
                if bare {
                    progress.to_mark.push(r.key.clone());
                    if progress.to_mark.len() >= BATCH {
                        mark(scope, &mut progress.to_mark)?;
                    }
                } else {
                    done.push(r);
                }
            }
            Err(message) => progress.failures.push(Failure {
                item: r.label,
                message,
            }),
        }
    }
    // The batch's writes durable and in place, before any of its records is marked and
    // before their outputs are stat'ed for the marks.
    if !done.is_empty() || bare {
        fs::sync()
            .map_err(|e| fail(format!("{}: writing the outputs of a batch", step.each), e))?;
    }
    if !bare {
        // What the records left, as it is now, after all their sub-steps returned: the next
        // run compares with this.
        let left: Vec<&Ready> = done.iter().collect();
        for (r, value) in left.iter().zip(mark_values_now(step, &left)?) {
            progress.to_mark_values.push((r.key.clone(), value));
        }
        if progress.to_mark_values.len() >= BATCH {
            mark_values(scope, &mut progress.to_mark_values)?;
        }
    }
    if !step.once && progress.skipped > matched_before {
        log::skipped(progress.skipped - matched_before);
    }
    let done =
        progress.processed + progress.skipped + progress.elsewhere + progress.failures.len() as u64;
    log::progress(done, total);
    Ok(())
}

/// A record rendered and with its checkpoint answer, ready to be skipped or run.
struct Ready {
    record: OwnedRecord,
    key: String,
    label: String,
    /// Its mark: `Some("")` for a key marked without values (or under `once`).
    mark_now: Option<String>,
    subs: Vec<SubStep>,
}

/// The fingerprint of each record as it is now, its outputs stat'ed in one host call.
fn fingerprints(records: &[&Ready]) -> Result<Vec<String>, StepError> {
    let paths: Vec<String> = records
        .iter()
        .flat_map(|r| output_paths(&r.subs).map(str::to_string))
        .collect();
    if paths.is_empty() && records.is_empty() {
        return Ok(Vec::new());
    }
    let stats = if paths.is_empty() {
        Vec::new()
    } else {
        fs::stat_many(&paths)
    };
    if stats.len() != paths.len() {
        return Err(error(format!(
            "the host answered {} of {} stats",
            stats.len(),
            paths.len()
        )));
    }
    let mut stats = stats.into_iter();
    records
        .iter()
        .map(|r| {
            let mine: Vec<_> = stats.by_ref().take(output_paths(&r.subs).count()).collect();
            fingerprint(r.record.as_record(), &r.subs, mine)
                .map_err(|m| error(format!("{}: {m}", r.label)))
        })
        .collect()
}

fn mark(scope: &str, keys: &mut Vec<String>) -> Result<(), StepError> {
    if keys.is_empty() {
        return Ok(());
    }
    checkpoint::mark(scope, keys).map_err(|e| fail(format!("marking checkpoint {scope}"), e))?;
    keys.clear();
    Ok(())
}

fn mark_values(scope: &str, entries: &mut Vec<(String, String)>) -> Result<(), StepError> {
    if entries.is_empty() {
        return Ok(());
    }
    checkpoint::mark_values(scope, entries)
        .map_err(|e| fail(format!("marking checkpoint {scope}"), e))?;
    entries.clear();
    Ok(())
}

/// The record's sub-steps with its values in their templates.
fn rendered(step: &EachStep, record: Record<'_>) -> Result<Vec<SubStep>, String> {
    step.steps
        .iter()
        .map(|sub| {
            let mut sub = sub.clone();
            sub.map_templates(&mut |field, usage, s| {
                *s = template::render(s, usage, |name| {
                    record.get(name).map(|f| f.to_text().into_owned())
                })
                .map_err(|e| format!("`{field}`: {e}"))?;
                Ok(())
            })?;
            Ok(sub)
        })
        .collect()
}

/// What each done record is marked with, as it is now: its fingerprint (`once` needs none),
/// and with `prune` a newline and its outputs as JSON (`[["f", "out/1.html"], ["d", "out/1"]]`).
fn mark_values_now(step: &EachStep, records: &[&Ready]) -> Result<Vec<String>, StepError> {
    let mut values = if step.once {
        vec![String::from("once"); records.len()]
    } else {
        fingerprints(records)?
    };
    if step.prune {
        for (value, r) in values.iter_mut().zip(records) {
            let outputs: Vec<(&str, &str)> = r
                .subs
                .iter()
                .filter_map(|sub| match sub {
                    SubStep::Dir(s) => Some(("d", s.dir.as_str())),
                    SubStep::File(s) => Some(("f", s.file.as_str())),
                    _ => None,
                })
                .collect();
            value.push('\n');
            value.push_str(
                &serde_json::to_string(&outputs).map_err(|e| error(format!("{}: {e}", r.label)))?,
            );
        }
    }
    Ok(values)
}

/// Marks read per `list` call while pruning.
const PRUNE_PAGE: u32 = 1024;

/// Remove the outputs of the records marked in `scope` whose keys were not in the source, and
/// forget their marks. Returns how many records were pruned; a record whose outputs could not
/// be removed keeps its mark (the next run tries again) and is reported as failed.
fn prune(
    step: &EachStep,
    scope: &str,
    seen: &HashSet<String>,
    failures: &mut Vec<Failure>,
) -> Result<u64, StepError> {
    let mut pruned = 0;
    let mut after: Option<String> = None;
    loop {
        let page = checkpoint::list(scope, after.as_deref(), PRUNE_PAGE)
            .map_err(|e| fail(format!("{}: listing checkpoint {scope}", step.each), e))?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        let mut gone = Vec::new();
        for (key, value) in page {
            if seen.contains(&key) {
                continue;
            }
            let label = key_label(&key, &step.key);
            let outputs = value
                .split_once('\n')
                .and_then(|(_, json)| serde_json::from_str::<Vec<(String, String)>>(json).ok());
            let Some(outputs) = outputs else {
                log::log(
                    log::Level::Warn,
                    &format!(
                        "{}: {label} left the source, but it was done before `prune` was set, so \
                     its outputs are not known: they are kept (remove them by hand)",
                        step.each
                    ),
                );
                gone.push(key);
                continue;
            };
            match remove_outputs(&outputs) {
                Ok(()) => {
                    pruned += 1;
                    gone.push(key);
                }
                Err(message) => failures.push(Failure {
                    item: label,
                    message: format!("pruning: {message}"),
                }),
            }
        }
        if !gone.is_empty() {
            checkpoint::unmark(scope, &gone)
                .map_err(|e| fail(format!("forgetting checkpoints in {scope}"), e))?;
        }
    }
    Ok(pruned)
}

/// Remove a pruned record's outputs, latest first: its files, then its directories that are
/// empty (a directory holding anything else is kept, as `rmdir` would).
fn remove_outputs(outputs: &[(String, String)]) -> Result<(), String> {
    for (kind, path) in outputs.iter().rev() {
        if kind != "f" {
            continue;
        }
        match fs::stat(path)
            .map_err(|e| format!("checking {path}: {}", crate::host::describe(&e)))?
        {
            // Something else took its place since: not this record's to remove.
            Some(m) if m.kind == fs::Kind::Directory => continue,
            None => continue,
            Some(_) => {}
        }
        fs::remove(path, false)
            .map_err(|e| format!("removing {path}: {}", crate::host::describe(&e)))?;
    }
    for (kind, path) in outputs.iter().rev() {
        if kind != "d" {
            continue;
        }
        match fs::remove(path, false) {
            Ok(_) | Err(Error::NotEmpty(_)) | Err(Error::WrongKind(_)) => {}
            Err(e) => return Err(format!("removing {path}: {}", crate::host::describe(&e))),
        }
    }
    Ok(())
}

/// How a checkpoint key is named in messages: `record id=42`.
fn key_label(key: &str, fields: &[String]) -> String {
    let values = key.split(KEY_SEPARATOR);
    let parts: Vec<String> = fields
        .iter()
        .zip(values)
        .map(|(f, v)| format!("{f}={v}"))
        .collect();
    format!("record {}", parts.join(", "))
}

/// The paths a record's `dir`, `file` and `remove` sub-steps name: its outputs.
fn output_paths(subs: &[SubStep]) -> impl Iterator<Item = &str> {
    subs.iter().filter_map(|sub| match sub {
        SubStep::Dir(s) => Some(s.dir.as_str()),
        SubStep::File(s) => Some(s.file.as_str()),
        SubStep::Remove(s) => Some(s.remove.as_str()),
        SubStep::Cleanup(_) | SubStep::Upsert(_) => None,
    })
}

/// A fingerprint of a record as done: every field's value, and the state of each path its
/// `dir`, `file` and `remove` sub-steps name (kind, size, mode, modification time; or
/// absent), given in `stats` in the order of [`output_paths`]. Two 64-bit FNV-1a hashes of
/// the same bytes with different offsets, in hex.
fn fingerprint(
    record: Record<'_>,
    subs: &[SubStep],
    stats: Vec<Result<Option<fs::Metadata>, fs::Error>>,
) -> Result<String, String> {
    let mut bytes: Vec<u8> = Vec::new();
    for name in record.names() {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        if let Some(v) = record.get(&name) {
            bytes.extend_from_slice(v.to_text().as_bytes());
        }
        bytes.push(0x1e);
    }
    for (path, stat) in output_paths(subs).zip(stats) {
        bytes.extend_from_slice(path.as_bytes());
        bytes.push(0);
        match stat.map_err(|e| format!("checking {path}: {}", crate::host::describe(&e)))? {
            None => bytes.extend_from_slice(b"absent"),
            Some(m) => {
                let kind = match m.kind {
                    fs::Kind::File => 'f',
                    fs::Kind::Directory => 'd',
                    fs::Kind::Symlink => 'l',
                    fs::Kind::Other => 'o',
                };
                // A directory's own mtime moves with its entries, which other records and
                // steps add: only its kind and mode say whether it is as left.
                let (size, modified) = if kind == 'd' {
                    (0, (0, 0))
                } else {
                    (m.size, (m.modified.seconds, m.modified.nanoseconds))
                };
                bytes.extend_from_slice(
                    format!("{kind} {size} {:o} {}.{}", m.mode, modified.0, modified.1).as_bytes(),
                );
            }
        }
        bytes.push(0x1e);
    }
    let a = fnv1a(&bytes);
    let b = bytes.iter().fold(0x84222325cbf29ce4u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{a:016x}{b:016x}"))
}

/// The one PostgreSQL database a record's sub-steps all write, when they are all `upsert`s
/// into it (named alike).
fn pg_effect_database(subs: &[SubStep]) -> Option<&str> {
    let mut name = None;
    for sub in subs {
        let SubStep::Upsert(u) = sub else {
            return None;
        };
        if !crate::pg_upsert::names_postgres(&u.upsert) || name.is_some_and(|n| n != u.upsert) {
            return None;
        }
        name = Some(u.upsert.as_str());
    }
    name
}

/// Run a record's upserts into the PostgreSQL database `name` in one transaction, committed
/// with the record's mark when the state store is that database (exactly once: the effect and
/// the mark are durable together). `Some(true)` when the mark went with it, `Some(false)`
/// when it is still to be made through `checkpoint`, `None` when `name` is a file after all.
fn run_in_pg(
    step: &EachStep,
    scope: &str,
    r: &Ready,
    name: &str,
    bare: bool,
) -> Result<Option<bool>, String> {
    use crate::idem::plugin::postgres::{self, PgError};
    let conn = match postgres::open(name) {
        Ok(c) => c,
        Err(PgError::NotPostgres(_)) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "opening {}: {}",
                crate::pg_upsert::redact(name),
                crate::pg_upsert::describe(&e)
            ));
        }
    };
    let shown = conn.shown();
    let value = if bare {
        None
    } else {
        let values = mark_values_now(step, &[r]).map_err(|e| e.message)?;
        values.into_iter().next()
    };
    conn.begin().map_err(|e| {
        format!(
            "{shown}: beginning a transaction: {}",
            crate::pg_upsert::describe(&e)
        )
    })?;
    for sub in &r.subs {
        let SubStep::Upsert(u) = sub else { continue };
        if let Err(e) = crate::pg_upsert::run_in(&conn, u) {
            let _ = conn.rollback();
            return Err(format!("{}: {}", sub_name(sub), e.message));
        }
    }
    conn.commit_with_marks(scope, &[(r.key.clone(), value)])
        .map(Some)
        .map_err(|e| format!("{shown}: committing: {}", crate::pg_upsert::describe(&e)))
}

/// Run a record's rendered sub-steps; the first failure stops the record.
fn run_subs(subs: &[SubStep]) -> Result<(), String> {
    for sub in subs {
        let result = match sub {
            SubStep::Dir(s) => dir::run(s),
            SubStep::File(s) => file::run(s),
            SubStep::Remove(s) => remove::run(s),
            SubStep::Cleanup(s) => cleanup::run(s),
            SubStep::Upsert(s) => upsert::run(s),
        };
        result.map_err(|e| format!("{}: {}", sub_name(sub), e.message))?;
    }
    Ok(())
}

fn sub_name(sub: &SubStep) -> String {
    match sub {
        SubStep::Dir(s) => s.name.clone().unwrap_or_else(|| format!("dir {}", s.dir)),
        SubStep::File(s) => s.name.clone().unwrap_or_else(|| format!("file {}", s.file)),
        SubStep::Remove(s) => s
            .name
            .clone()
            .unwrap_or_else(|| format!("remove {}", s.remove)),
        SubStep::Cleanup(s) => s
            .name
            .clone()
            .unwrap_or_else(|| format!("cleanup {}", s.cleanup)),
        SubStep::Upsert(s) => s.name.clone().unwrap_or_else(|| {
            format!(
                "upsert {} into {}:{}",
                s.source(),
                crate::pg_upsert::redact(&s.upsert),
                s.table
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, Step};

    fn each(src: &str) -> EachStep {
        match plan::parse(src).unwrap().plan.steps.remove(0) {
            Step::Each(e) => e,
            _ => panic!("not each"),
        }
    }

    /// Issue 18: a misspelt field is one error naming the nearest column.
    #[test]
    fn template_fields_are_checked_against_the_csv_header() {
        let step = each(
            "steps:\n  - each: a.csv\n    key: id\n    steps:\n      - file: \"out/{id}\"\n        content: \"{nmae}\"\n",
        );
        let header = ["id".to_string(), "name".to_string()];
        let e = check_fields(&step, &header).unwrap_err();
        assert_eq!(
            e,
            "`{nmae}` in `content` of sub-step 1 is not a column of a.csv; did you mean `{name}`?"
        );
        let fine = each(
            "steps:\n  - each: a.csv\n    key: id\n    steps:\n      - file: \"out/{path:name}\"\n        content: \"{{x}} {id}\"\n",
        );
        assert!(check_fields(&fine, &header).is_ok());
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn scope_follows_the_definition_not_the_name() {
        let a = each("steps:\n  - each: u.csv\n    key: id\n    steps:\n      - dir: \"h/{id}\"\n");
        let named = each(
            "steps:\n  - each: u.csv\n    name: homes\n    key: id\n    steps:\n      - dir: \"h/{id}\"\n",
        );
        let edited =
            each("steps:\n  - each: u.csv\n    key: id\n    steps:\n      - dir: \"home/{id}\"\n");
        let with_id = each(
            "steps:\n  - each: u.csv\n    key: id\n    id: homes\n    steps:\n      - dir: \"h/{id}\"\n",
        );
        assert!(scope(&a).starts_with("each:"));
        assert_eq!(scope(&a).len(), "each:".len() + 16);
        assert_eq!(scope(&a), scope(&named));
        assert_ne!(scope(&a), scope(&edited));
        assert_eq!(scope(&with_id), "homes");
    }

    #[test]
    fn keys_join_fields_and_name_the_record() {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"org": "acme", "login": "ada", "n": 7, "e": ""}"#).unwrap();
        let record = Record::Json(&map);
        let (key, label) = record_key(record, &["org".into(), "login".into()]).unwrap();
        assert_eq!(key, "acme\u{1f}ada");
        assert_eq!(label, "record org=acme, login=ada");
        assert_eq!(record_key(record, &["n".into()]).unwrap().1, "record n=7");
        assert!(
            record_key(record, &["x".into()])
                .unwrap_err()
                .contains("no key field `x`")
        );
        assert!(
            record_key(record, &["e".into()])
                .unwrap_err()
                .contains("empty")
        );
    }
}
