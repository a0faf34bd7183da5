//! An example idem plugin: keep a manifest of a directory, one line per file with its size,
//! so a release job can publish it, or a later job can tell whether anything changed.
//!
//! It shows the shape every plugin has: bindings generated from idem's WIT (world `plugin`),
//! one export (`step.run`) that reads its JSON config, looks at the current state through the
//! host, and makes its one change with an ensure-style call (`fs.write-atomic`), which
//! reports `unchanged` when the content is already right. That is what makes it converge, and
//! the host makes it safe under a dry run: the same code runs, and the host does not write.
//!
//! The logic that does not touch the host lives in [`manifest`], tested natively with
//! `cargo test`.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

pub mod manifest;

use exports::idem::plugin::step::Guest;
use idem::plugin::fs::{self, Change, Kind};
use idem::plugin::log::{self, Level};
use idem::plugin::report::{Counter, StepError, StepReport};
use idem::plugin::types::Error;

use manifest::{Config, Item};

/// The component: the `step` export.
#[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
struct Plugin;

impl Guest for Plugin {
    fn run(config: String) -> Result<StepReport, StepError> {
        let config = Config::parse(&config).map_err(|message| StepError {
            message,
            cause: None,
        })?;
        let output = config.output();
        let mut items = Vec::new();
        collect(&config.dir, "", config.recursive, &output, &mut items)?;
        let text = manifest::render(&config.dir, &mut items);
        if let Some((parent, _)) = output.rsplit_once('/') {
            fs::create_dir(parent, None).map_err(|e| fail(&format!("creating {parent}"), e))?;
        }
        let change = fs::write_atomic(&output, text.as_bytes(), None)
            .map_err(|e| fail(&format!("writing {output}"), e))?;
        let what = match change {
            Change::Unchanged => "up to date",
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Removed => "removed",
        };
        log::log(Level::Debug, &format!("manifest {output}: {what}"));
        let bytes = items.iter().map(|i| i.size).sum();
        Ok(StepReport {
            counters: vec![
                Counter {
                    name: "files".into(),
                    value: items.len() as u64,
                },
                Counter {
                    name: "bytes".into(),
                    value: bytes,
                },
            ],
            failures: Vec::new(),
            message: Some(format!("{output} {what}")),
        })
    }
}

/// Every file under `dir/sub`, with paths relative to `dir`; the manifest itself is left out,
/// and symbolic links are not followed (the host would refuse one leading out of the root).
fn collect(
    dir: &str,
    sub: &str,
    recursive: bool,
    output: &str,
    out: &mut Vec<Item>,
) -> Result<(), StepError> {
    let here = manifest::join(dir, sub);
    let entries = fs::list_dir(&here).map_err(|e| fail(&format!("listing {here}"), e))?;
    for entry in entries {
        let rel = manifest::join(sub, &entry.name);
        match entry.metadata.kind {
            Kind::File if manifest::join(dir, &rel) != output => out.push(Item {
                path: rel,
                size: entry.metadata.size,
            }),
            Kind::Directory if recursive => collect(dir, &rel, recursive, output, out)?,
            _ => {}
        }
    }
    Ok(())
}

/// A step error that keeps the host's error as its cause.
fn fail(context: &str, e: Error) -> StepError {
    let detail = match &e {
        Error::Denied(s) => format!("denied: {s}"),
        Error::NotFound(s) => format!("not found: {s}"),
        Error::WrongKind(s) | Error::NotEmpty(s) | Error::Invalid(s) | Error::Io(s) => s.clone(),
        Error::Sqlite(s) => s.message.clone(),
    };
    StepError {
        message: format!("{context}: {detail}"),
        cause: Some(e),
    }
}

// Only for the component: the export symbols' names (`idem:plugin/step@0.1.0#run`) are not
// valid in a native linker's version script, and a native build is only for `cargo test`.
#[cfg(target_family = "wasm")]
export!(Plugin);
