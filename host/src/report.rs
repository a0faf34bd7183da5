//! The run's report: built once by the engine, rendered once as text or JSON, and the source
//! of the exit code.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::bindings::plan::{PlanError, StepInfo};
use crate::bindings::report::StepReport as GuestReport;
use crate::bindings::types::Error;
use crate::change::{Change, Outcome};
use crate::policy::Mode;

/// Exit codes, stable and documented in the README.
pub mod exit {
    /// Applied, or nothing to change.
    pub const OK: u8 = 0;
    /// A step or record failed, or an input is invalid.
    pub const ERROR: u8 = 1;
    /// `check`: changes are pending.
    pub const DRIFT: u8 = 2;
    /// `apply --verify`: a second run would still change something.
    pub const NOT_IDEMPOTENT: u8 = 3;
    /// The command line is wrong.
    pub const USAGE: u8 = 64;
}

/// A record of `each` that failed while the others went on.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub item: String,
    pub message: String,
}

impl Failure {
    pub fn from_guest(f: crate::bindings::report::Failure) -> Self {
        Failure {
            item: f.item,
            message: f.message,
        }
    }
}

/// What kind of failure stopped a step: a stable code (`error_kind` in the JSON report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The guest trapped: a panic, an `unreachable`, a crash.
    Trap,
    /// A time or memory limit stopped it.
    Limit,
    /// A plugin could not be loaded: unreadable, not a component, or not of idem's contract.
    Load,
    /// The guest returned an error for the step.
    Guest,
    /// The host failed around the step (writing checkpoints, a transaction left open).
    Host,
}

/// Why a step failed: its kind, the message for a person, and for a guest's error the kind
/// of host error that caused it (`denied`, `not-found`, ...), when one did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepFailure {
    pub kind: FailureKind,
    pub message: String,
    pub cause: Option<&'static str>,
}

impl StepFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        StepFailure {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// A step error the guest returned.
    pub fn guest(e: crate::bindings::report::StepError) -> Self {
        StepFailure {
            kind: FailureKind::Guest,
            message: e.message,
            cause: e.cause.as_ref().map(error_code),
        }
    }
}

/// The stable code of a host error's kind, as the WIT variant names it.
pub fn error_code(e: &Error) -> &'static str {
    match e {
        Error::Denied(_) => "denied",
        Error::NotFound(_) => "not-found",
        Error::WrongKind(_) => "wrong-kind",
        Error::NotEmpty(_) => "not-empty",
        Error::Invalid(_) => "invalid",
        Error::Sqlite(_) => "sqlite",
        Error::Io(_) => "io",
    }
}

/// Named counts, serialised as a JSON object in their order.
#[derive(Clone, Debug, Default)]
pub struct Counters(pub Vec<(String, u64)>);

impl Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// One step's result.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub index: usize,
    pub op: String,
    pub name: String,
    pub target: String,
    pub line: Option<u32>,
    pub outcome: Outcome,
    pub counters: Counters,
    pub failures: Vec<Failure>,
    pub message: Option<String>,
    pub error: Option<String>,
    /// What kind of failure `error` is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<FailureKind>,
    /// For a guest's error caused by a host error, that error's kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_cause: Option<&'static str>,
    pub changes: Vec<Change>,
    #[serde(rename = "duration_ms", serialize_with = "ms")]
    pub duration: Duration,
}

impl StepResult {
    pub fn new(index: usize, info: &StepInfo) -> Self {
        StepResult {
            index,
            op: info.op.clone(),
            name: info.name.clone(),
            target: info.target.clone(),
            line: info.location.map(|l| l.line),
            outcome: Outcome::Unchanged,
            counters: Counters::default(),
            failures: Vec::new(),
            message: None,
            error: None,
            error_kind: None,
            error_cause: None,
            changes: Vec::new(),
            duration: Duration::ZERO,
        }
    }

    /// Take a successful step's own report and the changes the host saw.
    pub fn absorb(&mut self, r: GuestReport, changes: Vec<Change>) {
        self.outcome = Outcome::from_changes(&changes);
        self.counters = Counters(r.counters.into_iter().map(|c| (c.name, c.value)).collect());
        self.failures = r.failures.into_iter().map(Failure::from_guest).collect();
        if !self.failures.is_empty() {
            self.outcome = Outcome::Failed;
        }
        self.message = r.message;
        self.changes = changes;
    }

    /// The step failed as a whole; what it changed before failing is still reported.
    pub fn fail(&mut self, failure: StepFailure, changes: Vec<Change>) {
        self.outcome = Outcome::Failed;
        self.error = Some(failure.message);
        self.error_kind = Some(failure.kind);
        self.error_cause = failure.cause;
        self.changes.extend(changes);
    }
}

/// A plan that could not be loaded.
#[derive(Clone, Debug, Serialize)]
pub struct PlanErrorReport {
    pub message: String,
    pub file: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub hint: Option<String>,
    /// The offending line with a caret, for the text report.
    #[serde(skip)]
    pub excerpt: Option<String>,
}

impl PlanErrorReport {
    pub fn from_guest(file: &str, source: &str, e: PlanError) -> Self {
        let line = e.location.map(|l| l.line);
        let column = e.location.map(|l| l.column);
        PlanErrorReport {
            message: e.message,
            file: file.to_string(),
            line,
            column,
            hint: e.hint,
            excerpt: line.and_then(|l| plan_excerpt(source, l, column)),
        }
    }
}

/// A change a second run would still make, after `apply --verify`.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyChange {
    pub step: usize,
    pub name: String,
    #[serde(flatten)]
    pub change: Change,
}

/// A step of the second run of `apply --verify` that failed instead of reporting.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyError {
    pub step: usize,
    pub name: String,
    pub message: String,
}

/// The result of `apply --verify`.
#[derive(Clone, Debug, Serialize)]
pub struct Verify {
    pub ok: bool,
    pub changes: Vec<VerifyChange>,
    /// Steps whose second run failed: then nothing proves convergence.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<VerifyError>,
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct Report {
    pub mode: Mode,
    pub plan: String,
    pub root: String,
    pub steps: Vec<StepResult>,
    pub error: Option<PlanErrorReport>,
    pub verify: Option<Verify>,
    pub duration: Duration,
    /// Temporary files of an interrupted run that this run removed first.
    pub recovered_temporaries: usize,
    /// The run before this one was interrupted (killed, or the machine went away): this run
    /// finishes its work, skipping what its checkpoints say is done.
    pub resumed: bool,
    /// A failure of idem's own bookkeeping after the steps ran (the state store could not
    /// record the run's end): the steps' results stand, but the run did not end cleanly.
    pub fault: Option<String>,
}

/// A host error as one line for a person.
pub fn error_text(e: &Error) -> String {
    match e {
        Error::Denied(m) => format!("denied: {m}"),
        Error::NotFound(m)
        | Error::WrongKind(m)
        | Error::NotEmpty(m)
        | Error::Invalid(m)
        | Error::Io(m) => m.clone(),
        Error::Sqlite(s) => format!("{} (SQLite code {})", s.message, s.code),
    }
}

impl Report {
    pub fn new(mode: Mode, plan: &str, root: &Path) -> Self {
        Report {
            mode,
            plan: plan.to_string(),
            root: root.display().to_string(),
            steps: Vec::new(),
            error: None,
            verify: None,
            duration: Duration::ZERO,
            recovered_temporaries: 0,
            resumed: false,
            fault: None,
        }
    }

    /// No plan error and no failed step or record.
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self.fault.is_none()
            && self
                .steps
                .iter()
                .all(|s| !matches!(s.outcome, Outcome::Failed | Outcome::NotRun))
    }

    /// Whether anything changed (or would).
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| !s.changes.is_empty())
    }

    pub fn change_count(&self) -> usize {
        self.steps.iter().map(|s| s.changes.len()).sum()
    }

    /// The exit code this report calls for.
    pub fn exit_code(&self) -> u8 {
        if !self.ok() {
            exit::ERROR
        } else if self.verify.as_ref().is_some_and(|v| !v.ok) {
            exit::NOT_IDEMPOTENT
        } else if self.mode == Mode::Check && self.changed() {
            exit::DRIFT
        } else {
            exit::OK
        }
    }

    fn count(&self, o: Outcome) -> usize {
        self.steps.iter().filter(|s| s.outcome == o).count()
    }

    /// The stable JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "schema": 1,
            "idem": env!("CARGO_PKG_VERSION"),
            "mode": self.mode.as_str(),
            "dry_run": self.mode.dry_run(),
            "plan": self.plan,
            "root": self.root,
            "ok": self.ok(),
            "changed": self.changed(),
            "exit_code": self.exit_code(),
            "error": self.error,
            "summary": {
                "steps": self.steps.len(),
                "unchanged": self.count(Outcome::Unchanged),
                "created": self.count(Outcome::Created),
                "updated": self.count(Outcome::Updated),
                "removed": self.count(Outcome::Removed),
                "failed": self.count(Outcome::Failed),
                "not_run": self.count(Outcome::NotRun),
                "changes": self.change_count(),
            },
            "steps": self.steps,
            "verify": self.verify,
            "resumed": self.resumed,
            "fault": self.fault,
            "recovered_temporaries": self.recovered_temporaries,
            "duration_ms": (self.duration.as_secs_f64() * 1e6).round() / 1e3,
        })
    }

    /// The text a person reads. `verbose` lists every change under its step.
    pub fn render_text(
        &self,
        out: &mut dyn Write,
        color: bool,
        verbose: bool,
        diff: bool,
    ) -> std::io::Result<()> {
        let paint = |code: &str, text: &str| {
            if color {
                format!("\x1b[{code}m{text}\x1b[0m")
            } else {
                text.to_string()
            }
        };
        if let Some(e) = &self.error {
            return render_plan_error(out, e, color);
        }
        let dry = self.mode.dry_run();
        if self.resumed {
            let skipped: u64 = self
                .steps
                .iter()
                .flat_map(|s| s.counters.0.iter())
                .filter(|(k, _)| k == "skipped")
                .map(|(_, v)| v)
                .sum();
            writeln!(
                out,
                "resuming an interrupted run: {skipped} records already done are skipped, {} temporary files removed",
                self.recovered_temporaries
            )?;
        }
        for s in &self.steps {
            let word = if dry {
                s.outcome.planned()
            } else {
                s.outcome.as_str()
            };
            let code = match s.outcome {
                Outcome::Unchanged | Outcome::NotRun => "2",
                Outcome::Created => "32",
                Outcome::Updated => "33",
                Outcome::Removed => "35",
                Outcome::Failed => "31;1",
            };
            let mut line = format!("{:<13} {}", paint(code, word), s.name);
            if color {
                // Escape codes take no columns: pad as if they were not there.
                let pad = 13usize.saturating_sub(word.len());
                line = format!("{}{} {}", paint(code, word), " ".repeat(pad), s.name);
            }
            if !s.counters.0.is_empty() {
                let c: Vec<String> = s
                    .counters
                    .0
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                line.push_str(&format!("  ({})", c.join(", ")));
            }
            writeln!(out, "{line}")?;
            if let Some(e) = &s.error {
                let at = s
                    .line
                    .map(|l| format!("{}:{l}: ", self.plan))
                    .unwrap_or_default();
                writeln!(out, "              {}", paint("31", &format!("{at}{e}")))?;
            }
            for f in s.failures.iter().take(20) {
                writeln!(
                    out,
                    "              {}",
                    paint("31", &format!("{}: {}", f.item, f.message))
                )?;
            }
            if s.failures.len() > 20 {
                writeln!(
                    out,
                    "              ... and {} more failed",
                    s.failures.len() - 20
                )?;
            }
            if verbose {
                for c in &s.changes {
                    let rows = c.rows.map(|r| format!(" ({r} rows)")).unwrap_or_default();
                    writeln!(out, "              {} {}{rows}", c.kind.as_str(), c.path)?;
                }
            }
            if diff {
                for c in &s.changes {
                    if let Some(d) = &c.diff {
                        for l in d.lines() {
                            let l = if !color {
                                l.to_string()
                            } else if l.starts_with('+') && !l.starts_with("+++") {
                                paint("32", l)
                            } else if l.starts_with('-') && !l.starts_with("---") {
                                paint("31", l)
                            } else {
                                l.to_string()
                            };
                            writeln!(out, "    {l}")?;
                        }
                    }
                }
            }
        }
        let mut parts = Vec::new();
        for (o, n) in [
            (Outcome::Created, self.count(Outcome::Created)),
            (Outcome::Updated, self.count(Outcome::Updated)),
            (Outcome::Removed, self.count(Outcome::Removed)),
            (Outcome::Unchanged, self.count(Outcome::Unchanged)),
            (Outcome::Failed, self.count(Outcome::Failed)),
            (Outcome::NotRun, self.count(Outcome::NotRun)),
        ] {
            if n > 0 {
                parts.push(format!(
                    "{n} {}",
                    if dry { o.planned() } else { o.as_str() }
                ));
            }
        }
        let verb = match self.mode {
            Mode::Apply => "applied",
            Mode::Plan => "planned",
            Mode::Check => "checked",
        };
        writeln!(
            out,
            "{} {} steps: {}; {} changes in {:.2} s",
            verb,
            self.steps.len(),
            if parts.is_empty() {
                "nothing to do".into()
            } else {
                parts.join(", ")
            },
            self.change_count(),
            self.duration.as_secs_f64()
        )?;
        if let Some(f) = &self.fault {
            writeln!(out, "{}", paint("31;1", &format!("error: {f}")))?;
        }
        if let Some(v) = &self.verify {
            if v.ok {
                writeln!(
                    out,
                    "{}",
                    paint("32", "verified: a second run changes nothing")
                )?;
            } else {
                if !v.changes.is_empty() {
                    writeln!(
                        out,
                        "{}",
                        paint("31;1", "NOT IDEMPOTENT: a second run would still change:")
                    )?;
                }
                for e in &v.errors {
                    writeln!(
                        out,
                        "{}",
                        paint(
                            "31;1",
                            &format!(
                                "NOT VERIFIED: the second run failed at step {} ({}): {}",
                                e.step, e.name, e.message
                            )
                        )
                    )?;
                }
                for c in &v.changes {
                    writeln!(
                        out,
                        "  step {} ({}): {} {}",
                        c.step,
                        c.name,
                        c.change.kind.as_str(),
                        c.change.path
                    )?;
                }
            }
        }
        if self.mode == Mode::Check && self.ok() {
            if self.changed() {
                writeln!(
                    out,
                    "drift: {} changes pending (exit {})",
                    self.change_count(),
                    exit::DRIFT
                )?;
            } else {
                writeln!(out, "converged: nothing to change")?;
            }
        }
        Ok(())
    }
}

/// A plan error as a compiler shows one: file, line and column, the line with a caret, the
/// hint.
fn render_plan_error(out: &mut dyn Write, e: &PlanErrorReport, color: bool) -> std::io::Result<()> {
    let red = |t: &str| {
        if color {
            format!("\x1b[31;1m{t}\x1b[0m")
        } else {
            t.to_string()
        }
    };
    let at = match (e.line, e.column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", e.file),
        (Some(l), None) => format!("{}:{l}", e.file),
        _ => e.file.clone(),
    };
    writeln!(out, "{}: {at}: {}", red("error"), e.message)?;
    if let Some(x) = &e.excerpt {
        write!(out, "{x}")?;
    }
    if let Some(h) = &e.hint {
        writeln!(out, "  = hint: {h}")?;
    }
    Ok(())
}

/// Show the offending line of the plan with a caret under the column.
pub fn plan_excerpt(source: &str, line: u32, column: Option<u32>) -> Option<String> {
    let text = source.lines().nth(line.checked_sub(1)? as usize)?;
    let gutter = format!("{line}");
    let mut s = format!("{} |\n{gutter} | {text}\n", " ".repeat(gutter.len()));
    if let Some(c) = column {
        s.push_str(&format!(
            "{} | {}^\n",
            " ".repeat(gutter.len()),
            " ".repeat(c.saturating_sub(1) as usize)
        ));
    }
    Some(s)
}
