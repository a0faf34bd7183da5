//! The plan loop: lock the root, record the run, load the plan with the standard guest, run
//! each step (plugin steps in stores of their own), close each step (transactions left open,
//! checkpoints, changes, journal), and with `--verify` prove that a second run changes
//! nothing.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use super::failure::describe_trap;
use super::store::{RunState, new_store};
use super::{Events, Host, NoEvents, Observed, RunConfig, SavedCheck, StepEnd};
use crate::bindings::plan::{LoadInput, LoadedPlan, Location, PlanError, PluginCall, StepInfo};
use crate::bindings::standard;
use crate::cap::log::Reading;
use crate::change::Outcome;
use crate::policy::{Mode, Policy};
use crate::report::{
    FailureKind, Interrupted, PlanErrorReport, Report, StepFailure, StepResult, Verify,
    VerifyChange, VerifyError,
};
use crate::state::Location as StateLocation;
use crate::state::lock::{RunLock, lock_path};
use crate::state::pg::LockMode;

impl Host {
    /// Run a plan: lock, load, run every step, record, and (with `verify`) prove that a
    /// second run would change nothing.
    pub fn run_plan(&self, cfg: &RunConfig, events: &mut dyn Events) -> Result<Report> {
        let started = Instant::now();
        let _lock = lock(cfg)?;
        let mut report = self.run_once(cfg, cfg.mode, Some(&mut *events), None)?;
        self.verify(cfg, events, &mut report)?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// `idem plan --out`: the dry run, and what of the world it read.
    pub fn plan_observed(
        &self,
        cfg: &RunConfig,
        events: &mut dyn Events,
    ) -> Result<(Report, Observed)> {
        let started = Instant::now();
        let _lock = lock(cfg)?;
        let mut observed = Observed::default();
        let mut report = self.run_once(cfg, Mode::Plan, Some(events), Some(&mut observed))?;
        report.duration = started.elapsed();
        Ok((report, observed))
    }

    /// `idem apply FILE`: under one exclusive lock, check the saved plan's fingerprints, make
    /// the dry run again and compare its changes with the saved ones, and only then apply.
    /// A refusal is a plan error of the report (exit 1) and no step runs.
    pub fn apply_saved(
        &self,
        cfg: &RunConfig,
        saved: &dyn SavedCheck,
        events: &mut dyn Events,
    ) -> Result<Report> {
        let started = Instant::now();
        let _lock = lock(cfg)?;
        let refuse = |lines: Vec<String>, what: &str, hint: &str| {
            let mut report = Report::new(Mode::Apply, &cfg.plan_name, &cfg.root);
            report.error = Some(crate::report::PlanErrorReport {
                message: crate::redact::text(&format!(
                    "the saved plan no longer matches {what}, so nothing was applied:\n  {}",
                    lines.join("\n  ")
                ))
                .into_owned(),
                file: cfg.plan_name.clone(),
                line: None,
                column: None,
                hint: Some(hint.to_owned()),
                excerpt: None,
            });
            report.duration = started.elapsed();
            report
        };
        let changed = saved.world_changed();
        if !changed.is_empty() {
            return Ok(refuse(
                changed,
                "the world",
                "make the plan again (idem plan --out) and have it approved",
            ));
        }
        // The fingerprints cannot see everything a dry run depends on (the clock of a
        // `cleanup`, PostgreSQL rows, a plugin's HTTP reads): the dry run, made again under
        // this lock, is the check that the apply makes exactly the saved changes.
        let again = self.run_once(cfg, Mode::Plan, None, None)?;
        if let Some(e) = again.error {
            let mut report = Report::new(Mode::Apply, &cfg.plan_name, &cfg.root);
            report.error = Some(e);
            return Ok(report);
        }
        let differ = saved.changes_differ(&again);
        if !differ.is_empty() {
            return Ok(refuse(
                differ,
                "what apply would change now",
                "make the plan again (idem plan --out) and have it approved",
            ));
        }
        let mut report = self.run_once(cfg, Mode::Apply, Some(&mut *events), None)?;
        let differ = saved.changes_differ(&report);
        if !differ.is_empty() && report.ok() {
            // Something outside idem changed the world between the check and the apply.
            report.fault = Some(crate::redact::text(&format!(
                "the apply's changes differ from the saved plan's (the world changed during the apply):\n  {}",
                differ.join("\n  ")
            )).into_owned());
        }
        self.verify(cfg, events, &mut report)?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// With `--verify`, after a successful apply: a second, dry run must change nothing.
    fn verify(&self, cfg: &RunConfig, events: &mut dyn Events, report: &mut Report) -> Result<()> {
        if cfg.verify && cfg.mode == Mode::Apply && report.ok() {
            events.verify_started();
            let second = self.run_once(cfg, Mode::Plan, None, None)?;
            let mut changes = Vec::new();
            let mut errors = Vec::new();
            // A second run that cannot start (the first removed an input the checks before
            // any step require) fails as surely as one whose step fails: say so.
            if let Some(e) = &second.error {
                errors.push(VerifyError {
                    step: 0,
                    name: cfg.plan_name.clone(),
                    message: e.message.clone(),
                });
            }
            for step in &second.steps {
                for c in &step.changes {
                    changes.push(VerifyChange {
                        step: step.index,
                        name: step.name.clone(),
                        change: c.clone(),
                    });
                }
                if let Some(e) = &step.error {
                    errors.push(VerifyError {
                        step: step.index,
                        name: step.name.clone(),
                        message: e.clone(),
                    });
                }
            }
            report.verify = Some(Verify {
                ok: changes.is_empty() && errors.is_empty(),
                changes,
                errors,
            });
        }
        Ok(())
    }

    /// Load and check the plan as a run would before its first step, and stop there.
    pub fn validate(&self, cfg: &RunConfig) -> Result<Report> {
        self.run_once(cfg, Mode::Plan, None, None)
    }

    /// One pass over the plan; `events` (the recorded run's) is told as it goes, and the run
    /// is recorded in the state store only then.
    fn run_once(
        &self,
        cfg: &RunConfig,
        mode: Mode,
        events: Option<&mut dyn Events>,
        observed: Option<&mut Observed>,
    ) -> Result<Report> {
        let record = events.is_some();
        let mut quiet = NoEvents;
        let events = events.unwrap_or(&mut quiet);
        let mut run = RunState::open(
            &cfg.root,
            &cfg.state,
            cfg.sharing,
            mode,
            cfg.now,
            cfg.diff,
            cfg.progress.clone(),
        )?;
        let mut report = Report::new(mode, &cfg.plan_name, &cfg.root);
        if record {
            begin_run(&mut run, cfg, mode, &mut report)?;
        }
        let mut policy = Policy::new(mode);
        policy.limits.memory = cfg.memory;
        // The standard operations may name the plan file (a `file` step may even write it),
        // but a `cleanup` never removes it as stale.
        if let Some(plan) = cfg.plan_in_root() {
            policy = policy.reserve(plan);
        }
        let mut store = new_store(&self.engine, run, policy);
        let guest = standard::Standard::instantiate(&mut store, &self.standard, &self.linker)
            .map_err(|e| anyhow!(e))
            .context("instantiating the standard operations")?;
        let input = LoadInput {
            plan_path: cfg.plan_in_root().map(|p| p.as_str().to_owned()),
            vars: cfg.vars.clone(),
            env: env_references(&cfg.plan_source),
        };
        let loaded = guest.idem_plugin_plan().call_load(
            &mut store,
            &cfg.plan_source,
            &cfg.plan_name,
            &input,
        );
        let loaded = match loaded {
            Ok(l) => l,
            Err(_) if crate::signal::requested().is_some() => {
                // Stopped while loading: the interruption below says so.
                Ok(LoadedPlan {
                    steps: Vec::new(),
                    sensitive: Vec::new(),
                    included: Vec::new(),
                })
            }
            Err(e) => {
                return Err(anyhow!(
                    describe_trap(&e, store.data(), "the plan loader", false).message
                ));
            }
        };
        let mut included = Vec::new();
        let selected = match loaded.map(|plan| {
            crate::redact::add(plan.sensitive);
            included = plan.included;
            let mut steps = plan.steps;
            for info in &mut steps {
                // What is shown of a step; its plugin call keeps the real values.
                crate::redact::in_place(&mut info.name);
                crate::redact::in_place(&mut info.target);
            }
            check_reads(&cfg.root, &steps)?;
            check_hosts(&steps)?;
            select(steps, &cfg.only, &cfg.skip)
        }) {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) | Err(e) => Err(e),
        };
        let (steps, chosen) = match selected {
            Ok(steps) => steps,
            Err(e) => {
                // An error in an included file is shown with that file's name and text.
                let file = e.location.as_ref().and_then(|l| l.file.clone());
                report.error = Some(match file {
                    Some(f) => {
                        let text = std::fs::read_to_string(cfg.root.join(&f)).unwrap_or_default();
                        PlanErrorReport::from_guest(&f, &text, e)
                    }
                    None => PlanErrorReport::from_guest(&cfg.plan_name, &cfg.plan_source, e),
                });
                if record {
                    let failure = report.failure();
                    let state = &mut store.data_mut().run().state;
                    state.finish_run("plan-error", 0, failure.as_ref())?;
                }
                return Ok(report);
            }
        };
        if cfg.validate_only {
            report.steps = steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepResult::new(i + 1, s))
                .collect();
            return Ok(report);
        }
        events.run_started(&report, steps.len());
        let mut stopped = false;
        for (i, info) in steps.iter().enumerate() {
            let mut step = StepResult::new(i + 1, info);
            if !chosen[i] {
                step.outcome = Outcome::Skipped;
                report.steps.push(step);
                continue;
            }
            if stopped || crate::signal::requested().is_some() {
                if !stopped {
                    report.interrupted = interruption(&report, None);
                    stopped = true;
                }
                step.outcome = Outcome::NotRun;
                report.steps.push(step);
                continue;
            }
            events.step_started(i + 1, steps.len(), info);
            let t = Instant::now();
            let progress = cfg.progress.clone();
            progress.start(i + 1, &info.name);
            let result = match &info.plugin {
                Some(call) => {
                    let run = store.data_mut().take_run();
                    let (run, result) = self.run_plugin(run, call, cfg);
                    store.data_mut().put_run(run);
                    result
                }
                None => match guest.idem_plugin_plan().call_run_step(&mut store, i as u32) {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(StepFailure::guest(e)),
                    Err(e) => Err(describe_trap(
                        &e,
                        store.data(),
                        "the standard operations",
                        false,
                    )),
                },
            };
            let run = store.data_mut().run();
            stopped |= finish_step(run, &mut step, result, t);
            step.redact(info.sensitive);
            let last = progress.finish();
            if crate::signal::requested().is_some() && !stopped_cleanly(&step) {
                interrupt_step(&mut step);
            }
            if record && let Err(e) = run.state.journal(step.index, &step.name, &step.changes) {
                // What the step did is done and reported; what cannot be recorded stops the
                // run here, naming the store and the step.
                step.fail(
                    StepFailure::new(FailureKind::Host, format!("{e:#}")),
                    Vec::new(),
                );
                stopped = true;
            }
            let in_step = step.outcome == Outcome::Interrupted;
            report.steps.push(step);
            if in_step {
                report.interrupted = interruption(&report, last);
                stopped = true;
            }
            events.step_finished(&report);
        }
        if steps.is_empty() && crate::signal::requested().is_some() {
            report.interrupted = interruption(&report, None);
        }
        if let Some(observed) = observed {
            let run = store.data_mut().run();
            observed.paths = run.fs.observed();
            observed.databases = run.dbs.opened();
            observed.postgres = run.pg.opened();
            observed.includes = included.clone();
        }
        if record {
            let failure = report.failure();
            let n = report.change_count();
            let state = &mut store.data_mut().run().state;
            if let Err(e) = state.finish_run(run_outcome(&report), n, failure.as_ref()) {
                report.fault = Some(format!("{e:#}"));
            }
        }
        Ok(report)
    }

    /// Run one plugin component as a whole run (`idem run`).
    pub fn run_plugin_file(
        &self,
        cfg: &RunConfig,
        call: PluginCall,
        events: &mut dyn Events,
    ) -> Result<Report> {
        let started = Instant::now();
        let _lock = lock(cfg)?;
        let mut run = RunState::open(
            &cfg.root,
            &cfg.state,
            cfg.sharing,
            cfg.mode,
            cfg.now,
            cfg.diff,
            cfg.progress.clone(),
        )?;
        let mut report = Report::new(cfg.mode, &cfg.plan_name, &cfg.root);
        begin_run(&mut run, cfg, cfg.mode, &mut report)?;
        let info = StepInfo {
            op: "plugin".into(),
            name: format!("plugin {}", call.path),
            target: call.path.clone(),
            location: None,
            plugin: Some(call.clone()),
            tags: Vec::new(),
            sensitive: false,
            reads: Vec::new(),
        };
        events.run_started(&report, 1);
        let mut step = StepResult::new(1, &info);
        events.step_started(1, 1, &info);
        let t = Instant::now();
        cfg.progress.start(1, &info.name);
        let (mut run, result) = self.run_plugin(run, &call, cfg);
        finish_step(&mut run, &mut step, result, t);
        let last = cfg.progress.finish();
        if crate::signal::requested().is_some() && !stopped_cleanly(&step) {
            interrupt_step(&mut step);
        }
        if let Err(e) = run.state.journal(1, &step.name, &step.changes) {
            step.fail(
                StepFailure::new(FailureKind::Host, format!("{e:#}")),
                Vec::new(),
            );
        }
        let in_step = step.outcome == Outcome::Interrupted;
        report.steps.push(step);
        if in_step {
            report.interrupted = interruption(&report, last);
        }
        events.step_finished(&report);
        let failure = report.failure();
        let n = report.change_count();
        if let Err(e) = run
            .state
            .finish_run(run_outcome(&report), n, failure.as_ref())
        {
            report.fault = Some(format!("{e:#}"));
        }
        report.duration = started.elapsed();
        Ok(report)
    }
}

/// The environment variables the plan's text names as `${env.NAME}` and that are set: all
/// the loader gets to see of the environment.
pub(crate) fn env_references(source: &str) -> Vec<(String, String)> {
    env_names(source)
        .into_iter()
        .filter_map(|n| Some((n.clone(), std::env::var(&n).ok()?)))
        .collect()
}

/// Every environment variable the plan's text names as `${env.NAME}`, once, sorted.
pub(crate) fn env_names(source: &str) -> Vec<String> {
    let mut names: Vec<String> = source
        .match_indices("${env.")
        .filter_map(|(i, m)| {
            let rest = &source[i + m.len()..];
            let end = rest.find('}')?;
            Some(rest[..end].trim().to_owned())
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Before any step runs: every file a step reads exists, or is written by an earlier step,
/// and a plugin's file is a component. A missing one is named with the nearest existing
/// name beside it.
fn check_reads(root: &std::path::Path, steps: &[StepInfo]) -> std::result::Result<(), PlanError> {
    let normal = |p: &str| {
        p.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect::<Vec<_>>()
            .join("/")
    };
    for (i, step) in steps.iter().enumerate() {
        for read in &step.reads {
            let path = normal(&read.path);
            let on_disk = root.join(&path);
            let written_before = steps[..i].iter().any(|s| {
                let t = normal(&s.target);
                t == path || path.starts_with(&format!("{t}/"))
            });
            if written_before {
                continue;
            }
            let err = |message: String, hint: String| PlanError {
                message,
                location: read.location.clone(),
                hint: Some(hint),
            };
            let Ok(meta) = std::fs::metadata(&on_disk) else {
                return Err(err(
                    format!("`{}` does not exist (step {}, {})", read.path, i + 1, step.name),
                    match nearest(root, &path) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => "paths are relative to the root (-C); create the file, or write it in an earlier step".into(),
                    },
                ));
            };
            if read.component && meta.is_file() {
                let mut head = [0u8; 8];
                let n = std::fs::File::open(&on_disk)
                    .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                    .unwrap_or(0);
                // `\0asm`, then a version and a layer: 1 for components, 0 for core modules.
                let what = match (n, &head[..4], head[6..8] == [1, 0]) {
                    (8, b"\0asm", true) => None,
                    (8, b"\0asm", false) => Some("a core WebAssembly module, not a component"),
                    _ => Some("not a WebAssembly component"),
                };
                if let Some(what) = what {
                    return Err(err(
                        format!("plugin `{}` is {what}", read.path),
                        "build it for wasm32-wasip2 (a component), or wrap a module with `wasm-tools component new`".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Every plugin step's `hosts:` entries have the form the network policy takes: a
/// malformed one (`http://`, `*.`, port 0, a path) is a plan error at the entry, before any
/// step runs, rather than the failure of its step mid-run.
fn check_hosts(steps: &[StepInfo]) -> std::result::Result<(), PlanError> {
    for step in steps {
        let Some(call) = &step.plugin else { continue };
        let net = &call.network;
        for (i, host) in net.hosts.iter().enumerate() {
            if let Err(why) = crate::netpolicy::HostRule::parse_entry(host) {
                return Err(PlanError {
                    message: why,
                    location: net
                        .host_locations
                        .get(i)
                        .cloned()
                        .or_else(|| step.location.clone()),
                    hint: Some(crate::netpolicy::HOSTS_HINT.to_owned()),
                });
            }
        }
    }
    Ok(())
}

/// The existing entry beside a missing path whose name is nearest to the one written.
fn nearest(root: &std::path::Path, path: &str) -> Option<String> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let entries = std::fs::read_dir(root.join(dir)).ok()?;
    let names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let best = names
        .iter()
        .map(|n| (strsim::levenshtein(n, name), n))
        .filter(|(d, n)| *d <= (name.len().max(n.len()) / 3).max(2))
        .min()?;
    Some(if dir.is_empty() {
        best.1.clone()
    } else {
        format!("{dir}/{}", best.1)
    })
}

/// Which steps `--only` and `--skip` leave in, by name or tag; a name or tag no step has is
/// a plan error listing those the plan has.
fn select(
    steps: Vec<StepInfo>,
    only: &[String],
    skip: &[String],
) -> std::result::Result<(Vec<StepInfo>, Vec<bool>), PlanError> {
    let matches =
        |info: &StepInfo, want: &str| info.name == want || info.tags.iter().any(|t| t == want);
    for (flag, wanted) in [("--only", only), ("--skip", skip)] {
        if let Some(unknown) = wanted.iter().find(|w| !steps.iter().any(|s| matches(s, w))) {
            let mut names: Vec<String> = steps.iter().map(|s| format!("{:?}", s.name)).collect();
            let mut tags: Vec<&str> = steps
                .iter()
                .flat_map(|s| s.tags.iter().map(String::as_str))
                .collect();
            tags.sort_unstable();
            tags.dedup();
            names.dedup();
            let tags = if tags.is_empty() {
                "no tags".to_string()
            } else {
                format!("tags {}", tags.join(", "))
            };
            return Err(PlanError {
                message: format!("{flag} {unknown:?} names no step and no tag of the plan"),
                location: None::<Location>,
                hint: Some(format!(
                    "the plan has steps {} and {tags}",
                    names.join(", ")
                )),
            });
        }
    }
    let chosen = steps
        .iter()
        .map(|s| {
            (only.is_empty() || only.iter().any(|w| matches(s, w)))
                && !skip.iter().any(|w| matches(s, w))
        })
        .collect();
    Ok((steps, chosen))
}

/// The outcome history records.
fn run_outcome(report: &Report) -> &'static str {
    if report.interrupted.is_some() {
        "interrupted"
    } else if report.ok() {
        "ok"
    } else {
        "failed"
    }
}

/// Whether a step that ended after a signal arrived ended on its own: it returned its
/// report, so the signal only stops the run before the next step. A step the signal cut
/// short failed with the epoch trap instead.
fn stopped_cleanly(step: &StepResult) -> bool {
    step.error_kind != Some(FailureKind::Limit) && step.error_kind != Some(FailureKind::Trap)
}

/// A step cut short by a signal: interrupted, not failed (what it changed is still reported,
/// its checkpoints were flushed by `finish_step`).
fn interrupt_step(step: &mut StepResult) {
    let signal = crate::signal::requested().unwrap_or(libc::SIGINT);
    step.outcome = Outcome::Interrupted;
    step.error = Some(format!("stopped by {}", crate::signal::name(signal)));
    step.error_kind = Some(FailureKind::Interrupted);
    step.error_cause = None;
}

/// The interruption as the report keeps it: in the last step of `report` when `last` (that
/// step's last meter reading) is given, else between steps.
fn interruption(report: &Report, last: Option<Reading>) -> Option<Interrupted> {
    let signal = crate::signal::requested()?;
    let done_steps = report
        .steps
        .iter()
        .filter(|s| !matches!(s.outcome, Outcome::NotRun | Outcome::Interrupted))
        .count();
    let step = report
        .steps
        .last()
        .filter(|s| s.outcome == Outcome::Interrupted);
    Some(Interrupted {
        signal,
        step: step.map(|s| s.index),
        name: step.map(|s| s.name.clone()),
        steps_done: done_steps,
        done: last.as_ref().map_or(0, |r| r.done),
        total: last.as_ref().map_or(0, |r| r.total),
        checkpointed: last.as_ref().map_or(0, |r| r.checkpointed),
    })
}

/// Take the run lock: exclusive for an apply, shared for a dry run; with the state in
/// PostgreSQL, shared among applies that share their records (`--cooperate`, `--shard`).
fn lock(cfg: &RunConfig) -> Result<RunLock> {
    match &cfg.state {
        StateLocation::File(state_path) => {
            super::store::refuse_linked_state_dir(&cfg.root, state_path)?;
            let lock_file = lock_path(state_path);
            if cfg.mode.dry_run() {
                RunLock::shared(&lock_file, cfg.lock_timeout, &cfg.root)
            } else {
                RunLock::exclusive(&lock_file, cfg.lock_timeout, &cfg.root)
            }
        }
        StateLocation::Postgres { target, key } => {
            let mode = if cfg.mode.dry_run() {
                LockMode::DryRun
            } else if cfg.sharing.shared() {
                LockMode::SharedApply
            } else {
                LockMode::Exclusive
            };
            RunLock::postgres(target, key, mode, cfg.lock_timeout, &cfg.root)
        }
    }
}

/// Record the run's start; after an interrupted run (a plan's or a plugin's), first remove the
/// temporary files it left.
fn begin_run(run: &mut RunState, cfg: &RunConfig, mode: Mode, report: &mut Report) -> Result<()> {
    let plan_hash = crate::cap::fs::hash(cfg.plan_source.as_bytes());
    let interrupted = run
        .state
        .begin_run(mode.as_str(), &cfg.plan_name, &plan_hash)?;
    if interrupted {
        let n = run
            .fs
            .sweep_temporaries()
            .context("removing temporary files of an interrupted run")?;
        tracing::info!(
            removed = n,
            "an earlier run was interrupted; removed its temporary files"
        );
        report.recovered_temporaries = n;
        report.resumed = true;
    }
    Ok(())
}

/// Close a step: roll back a transaction it left open, write its checkpoints, take the
/// changes the host saw, and settle its outcome. True when the run must stop here.
fn finish_step(
    run: &mut RunState,
    step: &mut StepResult,
    result: StepEnd,
    started: Instant,
) -> bool {
    let mut left_open = run.dbs.abandon_open_transactions();
    left_open.extend(run.pg.abandon_open_transactions());
    if result.is_err() {
        run.dbs.discard_failed_creations(&mut run.fs);
    }
    // A group commit's last writes are durable and in place before the step's marks are
    // written and its changes taken.
    let settled = run.fs.end_group();
    let flushed = match &settled {
        Ok(()) => run.state.flush(),
        Err(e) => Err(anyhow::anyhow!(
            "{}; the marks of the step's last records were not written",
            crate::report::error_text(e)
        )),
    };
    let mut changes = run.fs.take_changes();
    changes.extend(run.dbs.take_changes());
    let unreadable = run.fs.take_unreadable();
    changes.append(&mut run.http_changes);
    changes.extend(run.pg.take_changes());
    step.duration = started.elapsed();
    let mut stop = true;
    match result {
        Ok(r) => {
            step.absorb(r, changes);
            stop = false;
        }
        Err(failure) => step.fail(failure, changes),
    }
    if !unreadable.is_empty() {
        step.skip_unreadable(&unreadable);
    }
    if !left_open.is_empty() && step.error.is_none() {
        step.fail(
            StepFailure::new(
                FailureKind::Host,
                format!(
                    "the step left a transaction open on {}; it was rolled back",
                    left_open.join(", ")
                ),
            ),
            Vec::new(),
        );
        stop = true;
    }
    if let Err(e) = flushed {
        step.fail(
            StepFailure::new(
                FailureKind::Host,
                format!("could not write checkpoints: {e:#}"),
            ),
            Vec::new(),
        );
        stop = true;
    }
    stop
}
