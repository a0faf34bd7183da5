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
use crate::state::RunFailure;
use crate::term::{escape, escape_text};

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
    /// SIGINT or SIGTERM stopped the step.
    Interrupted,
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
    /// The included file the step is written in (under the root); none for the plan file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
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
            line: info.location.as_ref().map(|l| l.line),
            file: info.location.as_ref().and_then(|l| l.file.clone()),
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

    /// Replace every secret in what the step's result shows or records; the file changes of
    /// a step that used a sensitive value show no diff, only that they changed.
    pub fn redact(&mut self, sensitive: bool) {
        use crate::redact::in_place;
        for c in &mut self.changes {
            if sensitive && c.diff.is_some() {
                c.diff = Some(format!("{} changed (sensitive)\n", c.path));
            }
            in_place(&mut c.path);
            if let Some(d) = &mut c.diff {
                in_place(d);
            }
        }
        if !crate::redact::any() {
            return;
        }
        in_place(&mut self.name);
        in_place(&mut self.target);
        for f in &mut self.failures {
            in_place(&mut f.item);
            in_place(&mut f.message);
        }
        if let Some(m) = &mut self.message {
            in_place(m);
        }
        if let Some(e) = &mut self.error {
            in_place(e);
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

    /// Entries the step's listings left out because their names are not UTF-8 (no step can
    /// name one, so none was touched): counted as `not-utf8`, named (escaped) in a warning.
    pub fn skip_unreadable(&mut self, paths: &[String]) {
        self.counters
            .0
            .push(("not-utf8".into(), paths.len() as u64));
        const SHOWN: usize = 10;
        let mut names = paths
            .iter()
            .take(SHOWN)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if paths.len() > SHOWN {
            names.push_str(&format!(" and {} more", paths.len() - SHOWN));
        }
        tracing::warn!(
            "step {}: left {} {} alone whose name is not UTF-8 (no step can name it): {names}",
            self.index,
            paths.len(),
            if paths.len() == 1 { "entry" } else { "entries" },
        );
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
        let line = e.location.as_ref().map(|l| l.line);
        let column = e.location.as_ref().map(|l| l.column);
        let clean = |s: String| crate::redact::text(&s).into_owned();
        PlanErrorReport {
            message: clean(e.message),
            file: file.to_string(),
            line,
            column,
            hint: e.hint.map(clean),
            excerpt: line
                .and_then(|l| plan_excerpt(source, l, column))
                .map(clean),
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

/// A step of the second run of `apply --verify` that failed instead of reporting, or (step
/// 0) a second run that could not start: its plan failed the checks made before any step.
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
    /// A signal stopped this run.
    pub interrupted: Option<Interrupted>,
}

/// Where a signal stopped the run, and what was done by then.
#[derive(Clone, Debug, Serialize)]
pub struct Interrupted {
    /// `SIGINT` or `SIGTERM`.
    #[serde(serialize_with = "signal_name")]
    pub signal: i32,
    /// The step it stopped in (from 1) and its name; null when it came between steps.
    pub step: Option<usize>,
    pub name: Option<String>,
    /// Steps that had finished.
    pub steps_done: usize,
    /// That step's count of items done and its total, as it last reported them (0 when
    /// unknown).
    pub done: u64,
    pub total: u64,
    /// Keys the step had marked done in its checkpoint: what the next run skips.
    pub checkpointed: u64,
}

fn signal_name<S: serde::Serializer>(signal: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(crate::signal::name(*signal))
}

impl Interrupted {
    /// The one sentence that says what happened: `interrupted (SIGINT) in step 2 (each x.csv)
    /// after 1,280 of 5,000 records; 1,280 checkpointed; checkpoints saved; re-run to resume`.
    pub fn sentence(&self, dry_run: bool) -> String {
        let signal = crate::signal::name(self.signal);
        let mut s = match (self.step, &self.name) {
            (Some(i), Some(n)) => format!("interrupted ({signal}) in step {i} ({})", escape(n)),
            _ => format!(
                "interrupted ({signal}) after {}",
                count(self.steps_done as u64, "step", "steps")
            ),
        };
        if self.step.is_some() && self.done > 0 {
            s.push_str(" after ");
            if self.total >= self.done {
                s.push_str(&format!("{} of ", thousands(self.done)));
                s.push_str(&count(self.total, "record", "records"));
            } else {
                s.push_str(&count(self.done, "record", "records"));
            }
        }
        if dry_run {
            s.push_str("; a dry run: nothing was changed");
        } else {
            if self.checkpointed > 0 {
                s.push_str(&format!("; {} checkpointed", thousands(self.checkpointed)));
            }
            s.push_str("; checkpoints saved; re-run to resume");
        }
        s
    }
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
            interrupted: None,
        }
    }

    /// A run that could not start (no plan, a root that is not there): the report's whole
    /// shape, with `message` as its error.
    pub fn not_started(mode: Mode, plan: &str, root: &Path, message: String) -> Self {
        let mut r = Report::new(mode, plan, root);
        r.error = Some(PlanErrorReport {
            message,
            file: plan.to_string(),
            line: None,
            column: None,
            hint: None,
            excerpt: None,
        });
        r
    }

    /// No plan error, no failed step or record, no interruption.
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self.fault.is_none()
            && self.interrupted.is_none()
            && self.steps.iter().all(|s| {
                !matches!(
                    s.outcome,
                    Outcome::Failed | Outcome::NotRun | Outcome::Interrupted
                )
            })
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
        if let Some(i) = &self.interrupted {
            crate::signal::exit_code(i.signal)
        } else if !self.ok() {
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
                "skipped": self.count(Outcome::Skipped),
                "interrupted": self.count(Outcome::Interrupted),
                "changes": self.change_count(),
            },
            "steps": self.steps,
            "verify": self.verify,
            "resumed": self.resumed,
            "fault": self.fault,
            "recovered_temporaries": self.recovered_temporaries,
            "interrupted": self.interrupted,
            "duration_ms": (self.duration.as_secs_f64() * 1e6).round() / 1e3,
        })
    }

    /// Why the run did not succeed, for history: the plan's error, the first failed step's
    /// error (or its first failed record), or the interruption.
    pub fn failure(&self) -> Option<RunFailure> {
        if let Some(e) = &self.error {
            let at = match e.line {
                Some(l) => format!("{}:{l}: ", e.file),
                None => String::new(),
            };
            return Some(RunFailure {
                error: format!("{at}{}", e.message),
                step: None,
                step_name: None,
            });
        }
        let failed = self
            .steps
            .iter()
            .find(|s| matches!(s.outcome, Outcome::Failed | Outcome::Interrupted));
        if let (Some(s), Some(i)) = (failed, &self.interrupted)
            && s.outcome == Outcome::Interrupted
        {
            return Some(RunFailure {
                error: i.sentence(self.mode.dry_run()),
                step: Some(s.index),
                step_name: Some(s.name.clone()),
            });
        }
        if let Some(s) = failed {
            let error = match (&s.error, s.failures.first()) {
                (Some(e), _) => e.clone(),
                (None, Some(f)) => format!(
                    "{} failed; first {}: {}",
                    count(s.failures.len() as u64, "record", "records"),
                    f.item,
                    f.message
                ),
                (None, None) => "failed".to_string(),
            };
            return Some(RunFailure {
                error,
                step: Some(s.index),
                step_name: Some(s.name.clone()),
            });
        }
        self.interrupted.as_ref().map(|i| RunFailure {
            error: i.sentence(self.mode.dry_run()),
            step: i.step,
            step_name: i.name.clone(),
        })
    }

    /// The text a person reads, all at once: the head, every step, the summary.
    pub fn render_text(&self, out: &mut dyn Write, style: &TextStyle) -> std::io::Result<()> {
        if let Some(e) = &self.error {
            return render_plan_error(out, e, style.color);
        }
        self.render_head(out)?;
        for s in &self.steps {
            self.render_step(out, s, style)?;
        }
        self.render_summary(out, style)
    }

    /// What comes before the steps: that this run resumes an interrupted one.
    pub fn render_head(&self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.resumed {
            writeln!(
                out,
                "resuming an interrupted run: records its checkpoints mark done are skipped; {} removed",
                count(
                    self.recovered_temporaries as u64,
                    "temporary file",
                    "temporary files"
                )
            )?;
        }
        Ok(())
    }

    /// One step's lines: its outcome and name, counters, error, failed records, message, and
    /// (with `verbose`, `diff`) its changes. The same whether printed as the step ends or in
    /// the report at the end. Guest-controlled text is escaped.
    pub fn render_step(
        &self,
        out: &mut dyn Write,
        s: &StepResult,
        style: &TextStyle,
    ) -> std::io::Result<()> {
        let color = style.color;
        let paint = |code: &str, text: &str| paint(color, code, text);
        let word = if self.mode.dry_run() {
            s.outcome.planned()
        } else {
            s.outcome.as_str()
        };
        let code = match s.outcome {
            Outcome::Unchanged | Outcome::NotRun | Outcome::Skipped => "2",
            Outcome::Created => "32",
            Outcome::Updated => "33",
            Outcome::Removed => "35",
            Outcome::Failed => "31;1",
            Outcome::Interrupted => "33;1",
        };
        // Escape codes take no columns: pad as if they were not there.
        let pad = 13usize.saturating_sub(word.len());
        let mut line = format!(
            "{}{} {}",
            paint(code, word),
            " ".repeat(pad),
            escape(&s.name)
        );
        if !s.counters.0.is_empty() {
            let c: Vec<String> = s
                .counters
                .0
                .iter()
                .map(|(k, v)| format!("{} {}", escape(k), thousands(*v)))
                .collect();
            line.push_str(&format!("  ({})", c.join(", ")));
        }
        writeln!(out, "{line}")?;
        const INDENT: &str = "              ";
        let block = |out: &mut dyn Write, code: &str, text: &str| -> std::io::Result<()> {
            for l in escape_text(text).lines() {
                writeln!(out, "{INDENT}{}", paint(code, l))?;
            }
            Ok(())
        };
        if let Some(e) = &s.error {
            let at = s
                .line
                .map(|l| format!("{}:{l}: ", self.plan))
                .unwrap_or_default();
            block(out, "31", &format!("{at}{e}"))?;
        }
        for f in s.failures.iter().take(20) {
            let text = format!("{}: {}", escape(&f.item), escape(&f.message));
            writeln!(out, "{INDENT}{}", paint("31", &text))?;
        }
        if s.failures.len() > 20 {
            writeln!(
                out,
                "{INDENT}... and {} more failed",
                thousands(s.failures.len() as u64 - 20)
            )?;
        }
        if let Some(m) = s.message.as_deref().filter(|m| !m.is_empty()) {
            block(out, "2", m)?;
        }
        if style.verbose {
            for c in &s.changes {
                let rows = c
                    .rows
                    .map(|r| format!(" ({})", count(r, "row", "rows")))
                    .unwrap_or_default();
                writeln!(out, "{INDENT}{} {}{rows}", c.kind.as_str(), escape(&c.path))?;
            }
        }
        if style.diff {
            for c in &s.changes {
                if let Some(d) = &c.diff {
                    for l in d.lines() {
                        let l = escape(l);
                        let l = if !color {
                            l.into_owned()
                        } else if l.starts_with('+') && !l.starts_with("+++") {
                            paint("32", &l)
                        } else if l.starts_with('-') && !l.starts_with("---") {
                            paint("31", &l)
                        } else {
                            l.into_owned()
                        };
                        writeln!(out, "    {l}")?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What comes after the steps: the totals, verification, drift, an interruption.
    pub fn render_summary(&self, out: &mut dyn Write, style: &TextStyle) -> std::io::Result<()> {
        let paint = |code: &str, text: &str| paint(style.color, code, text);
        let dry = self.mode.dry_run();
        let mut parts = Vec::new();
        for o in [
            Outcome::Created,
            Outcome::Updated,
            Outcome::Removed,
            Outcome::Unchanged,
            Outcome::Failed,
            Outcome::Interrupted,
            Outcome::NotRun,
            Outcome::Skipped,
        ] {
            let n = self.count(o);
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
            "{} {}: {}; {} in {:.2} s",
            verb,
            count(self.steps.len() as u64, "step", "steps"),
            if parts.is_empty() {
                "nothing to do".into()
            } else {
                parts.join(", ")
            },
            count(self.change_count() as u64, "change", "changes"),
            self.duration.as_secs_f64()
        )?;
        if let Some(f) = &self.fault {
            writeln!(out, "{}", paint("31;1", &format!("error: {f}")))?;
        }
        if let Some(i) = &self.interrupted {
            writeln!(out, "{}", paint("33;1", &i.sentence(dry)))?;
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
                    let what = if e.step == 0 {
                        format!(
                            "NOT VERIFIED: the second run could not start ({}): {}",
                            escape(&e.name),
                            escape_text(&e.message)
                        )
                    } else {
                        format!(
                            "NOT VERIFIED: the second run failed at step {} ({}): {}",
                            e.step,
                            escape(&e.name),
                            escape_text(&e.message)
                        )
                    };
                    writeln!(out, "{}", paint("31;1", &what))?;
                }
                for c in &v.changes {
                    writeln!(
                        out,
                        "  step {} ({}): {} {}",
                        c.step,
                        escape(&c.name),
                        c.change.kind.as_str(),
                        escape(&c.change.path)
                    )?;
                }
            }
        }
        if self.mode == Mode::Check && self.ok() {
            if self.changed() {
                writeln!(
                    out,
                    "drift: {} pending (exit {})",
                    count(self.change_count() as u64, "change", "changes"),
                    exit::DRIFT
                )?;
            } else {
                writeln!(out, "converged: nothing to change")?;
            }
        }
        Ok(())
    }
}

/// How text is shown.
#[derive(Clone, Copy, Debug, Default)]
pub struct TextStyle {
    pub color: bool,
    /// List every change under its step.
    pub verbose: bool,
    /// Show the unified diff of every file that changes.
    pub diff: bool,
}

fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// `n` with thousands separated: `8,448`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` and the noun that fits it: `1 step`, `2 steps`, `1,000 records`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
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
    writeln!(
        out,
        "{}: {}: {}",
        red("error"),
        escape(&at),
        escape_text(&e.message)
    )?;
    if let Some(x) = &e.excerpt {
        write!(out, "{}", escape_text(x))?;
    }
    if let Some(h) = &e.hint {
        writeln!(out, "  = hint: {}", escape_text(h))?;
    }
    Ok(())
}

/// The most characters of a plan line an excerpt shows: a plan written on one line (a 10 MB
/// flow-style document) would otherwise be printed whole, twice over with its caret line.
const EXCERPT_WIDTH: usize = 120;

/// Show the offending line of the plan with a caret under the column. A line longer than
/// [`EXCERPT_WIDTH`] is cut to a window around the column, with `…` where it was cut.
pub fn plan_excerpt(source: &str, line: u32, column: Option<u32>) -> Option<String> {
    let text = source.lines().nth(line.checked_sub(1)? as usize)?;
    let col = column.map(|c| c.saturating_sub(1) as usize);
    let (shown, caret) = window(text, col.unwrap_or(0));
    let gutter = format!("{line}");
    let mut s = format!("{} |\n{gutter} | {shown}\n", " ".repeat(gutter.len()));
    if col.is_some() {
        s.push_str(&format!(
            "{} | {}^\n",
            " ".repeat(gutter.len()),
            " ".repeat(caret)
        ));
    }
    Some(s)
}

/// At most [`EXCERPT_WIDTH`] characters of `text` around the character at `col` (0-based),
/// and where that character is in what is shown.
fn window(text: &str, col: usize) -> (String, usize) {
    // Counting stops just past what can be shown, so a huge line costs no more than its
    // window beyond the column.
    let long = text.chars().nth(EXCERPT_WIDTH).is_some();
    if !long {
        return (text.to_string(), col);
    }
    let start = col.saturating_sub(EXCERPT_WIDTH / 2);
    let mut shown: String = text.chars().skip(start).take(EXCERPT_WIDTH).collect();
    let mut caret = col - start;
    let cut_end = text.chars().nth(start + EXCERPT_WIDTH).is_some();
    if start > 0 {
        shown.insert(0, '…');
        caret += 1;
    }
    if cut_end {
        shown.push('…');
    }
    (shown, caret)
}
