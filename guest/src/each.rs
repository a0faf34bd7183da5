//! `each`: run sub-steps once per record, with `{field}` templates, skipping records that a
//! checkpoint marks done and marking each record once its sub-steps have succeeded.
//!
//! Records are read a batch at a time so that the checkpoint is asked about many keys in one
//! call; marks are sent in batches too. A record is marked only after its sub-steps returned,
//! and every host mutation is durable when it returns, so a crash repeats at most the records
//! whose marks were not yet sent: at least once, harmless for idempotent sub-steps.

use crate::host::{error, fail, open_records, report};
use crate::idem::plugin::report::{Failure, StepError, StepReport};
use crate::idem::plugin::{checkpoint, log};
use crate::plan::{EachStep, SubStep};
use crate::records::{OwnedRecord, Record};
use crate::{cleanup, dir, file, remove, template, upsert};

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
        label.push_str(&format!("{k}={text}"));
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
    failures: Vec<Failure>,
    to_mark: Vec<String>,
}

/// Run an `each` step. Counters: `processed`, `skipped`, `failed`.
pub fn run(step: &EachStep) -> Result<StepReport, StepError> {
    let scope = scope(step);
    let mut records = open_records(&step.each, step.format)?;
    let mut progress = Progress::default();
    let mut pending: Vec<Pending> = Vec::with_capacity(BATCH);
    while let Some(r) = records.next_record()? {
        let record = r.to_owned();
        let key = record_key(record.as_record(), &step.key);
        pending.push(Pending {
            record,
            item: records.item(),
            key,
        });
        if pending.len() >= BATCH {
            let total = records.estimated_total(records.count());
            run_batch(step, &scope, &mut pending, &mut progress, total)?;
        }
    }
    let total = records.count();
    run_batch(step, &scope, &mut pending, &mut progress, total)?;
    mark(&scope, &mut progress.to_mark)?;

    let failed = progress.failures.len() as u64;
    let mut r = report(&[
        ("processed", progress.processed),
        ("skipped", progress.skipped),
        ("failed", failed),
    ]);
    r.failures = progress.failures;
    Ok(r)
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
    let done = checkpoint::done(scope, &keys)
        .map_err(|e| fail(format!("{}: reading checkpoint {scope}", step.each), e))?;
    if done.len() != keys.len() {
        return Err(error(format!(
            "{}: the checkpoint answered {} of {} keys",
            step.each,
            done.len(),
            keys.len()
        )));
    }
    let mut answers = done.into_iter();
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
        if answers.next().unwrap_or(false) {
            progress.skipped += 1;
            continue;
        }
        match run_record(step, p.record.as_record()) {
            Ok(()) => {
                progress.processed += 1;
                progress.to_mark.push(key);
                if progress.to_mark.len() >= BATCH {
                    mark(scope, &mut progress.to_mark)?;
                }
            }
            Err(message) => progress.failures.push(Failure {
                item: label,
                message,
            }),
        }
    }
    let done = progress.processed + progress.skipped + progress.failures.len() as u64;
    log::progress(done, total);
    Ok(())
}

fn mark(scope: &str, keys: &mut Vec<String>) -> Result<(), StepError> {
    if keys.is_empty() {
        return Ok(());
    }
    checkpoint::mark(scope, keys).map_err(|e| fail(format!("marking checkpoint {scope}"), e))?;
    keys.clear();
    Ok(())
}

/// Run every sub-step for one record; the first failure stops the record.
fn run_record(step: &EachStep, record: Record<'_>) -> Result<(), String> {
    for sub in &step.steps {
        let mut sub = sub.clone();
        sub.map_templates(&mut |field, usage, s| {
            *s = template::render(s, usage, |name| {
                record.get(name).map(|f| f.to_text().into_owned())
            })
            .map_err(|e| format!("`{field}`: {e}"))?;
            Ok(())
        })?;
        let result = match &sub {
            SubStep::Dir(s) => dir::run(s),
            SubStep::File(s) => file::run(s),
            SubStep::Remove(s) => remove::run(s),
            SubStep::Cleanup(s) => cleanup::run(s),
            SubStep::Upsert(s) => upsert::run(s),
        };
        result.map_err(|e| format!("{}: {}", sub_name(&sub), e.message))?;
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
        SubStep::Upsert(s) => s
            .name
            .clone()
            .unwrap_or_else(|| format!("upsert {} into {}:{}", s.from, s.upsert, s.table)),
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
