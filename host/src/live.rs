//! Output a person or a tool can follow while the run goes: each step's result line as the
//! step ends, a progress bar on a terminal, a heartbeat line in CI logs, NDJSON events.
//!
//! The plan loop tells [`Live`] of steps through [`Events`]; progress within a step is read
//! from the run's meter ([`Progress`]) by a thread of its own, every tenth of a second, so a
//! bar moves and a heartbeat comes on time even while the guest sits in one long host call or
//! a plugin compiles. On a terminal a plugin's compile (a cold cache) gets a line of its own
//! under its step's bar while it lasts. Both sides take one lock ([`Display`]) around what
//! they print, so a progress line never lands after its step's result, and a bar is cleared
//! before a result line is printed. Result lines are rendered by [`Report::render_step`], the same code as the
//! report at the end, so the two never differ.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::bindings::plan::StepInfo;
use crate::cap::log::{Compiling, Progress, Reading};
use crate::report::{Report, TextStyle, count, thousands};
use crate::run::Events;
use crate::term::escape;

/// How the run is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Text for a person; `quiet` prints only a failed run's report, at the end.
    Text { quiet: bool },
    /// One JSON report at the end, nothing before.
    Json,
    /// JSON events, one a line, as they happen; the last carries the report.
    Ndjson,
}

/// What the settings of one run ask for.
pub struct Settings {
    pub output: Output,
    pub style: TextStyle,
    /// Colour on standard error (the bar).
    pub stderr_color: bool,
    /// Between two heartbeat lines of a running step when standard error is not a terminal;
    /// zero for none.
    pub heartbeat: Duration,
}

/// What both the plan loop's thread and the meter's thread touch, under one lock.
struct Display {
    /// Steps whose result is out; the meter's thread shows only later ones.
    finished: usize,
    steps: usize,
    /// Each step's operation, by index, to name what it counts.
    ops: Vec<String>,
    /// The terminal's lines: the running step's bar, and under it a compile under way.
    multi: MultiProgress,
    bar: Option<(usize, ProgressBar)>,
    compile: Option<ProgressBar>,
    /// The next heartbeat: (step, elapsed time it is due at).
    next_beat: (usize, Duration),
    /// The last step whose plugin compile a heartbeat or event has told (0: none).
    told_compile: usize,
    /// The last progress event: (step, done, whole seconds elapsed).
    last_event: (usize, u64, u64),
    /// The second, checking run of `apply --verify` is under way.
    verify: bool,
}

/// The live output of one run, and the thread that shows its progress.
pub struct Live {
    settings: Settings,
    display: Arc<Mutex<Display>>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    /// `run_started` came: the head and the step lines are out (text).
    started: bool,
}

/// The display of this process's run, for log lines to lift its bar.
static DISPLAY: OnceLock<Arc<Mutex<Display>>> = OnceLock::new();

/// Where log lines (tracing) go: standard error, one whole line at a time, with the progress
/// bar lifted while it is written (otherwise a line lands on the bar's and both are garbled).
pub struct LogWriter;

/// One log line, written when tracing is done with it.
pub struct LogLine(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let write = || {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&self.0);
            let _ = err.flush();
        };
        match DISPLAY.get() {
            Some(d) => {
                let d = lock(d);
                match &d.bar {
                    Some(_) => d.multi.suspend(write),
                    None => write(),
                }
            }
            None => write(),
        }
    }
}

fn lock(d: &Mutex<Display>) -> std::sync::MutexGuard<'_, Display> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Write one whole line to standard output and flush it: a reader of the pipe gets it now.
fn emit_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl Live {
    /// Start showing the run whose meter is `progress`.
    pub fn start(settings: Settings, progress: Progress) -> Live {
        let display = Arc::new(Mutex::new(Display {
            finished: 0,
            steps: 0,
            ops: Vec::new(),
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bar: None,
            compile: None,
            next_beat: (0, Duration::ZERO),
            told_compile: 0,
            last_event: (0, u64::MAX, 0),
            verify: false,
        }));
        let _ = DISPLAY.set(Arc::clone(&display));
        let stop = Arc::new(AtomicBool::new(false));
        let bar = matches!(settings.output, Output::Text { quiet: false })
            && std::io::stderr().is_terminal();
        let beat = matches!(settings.output, Output::Text { quiet: false })
            && !bar
            && !settings.heartbeat.is_zero();
        let events = settings.output == Output::Ndjson;
        let ticker = (bar || beat || events).then(|| {
            let display = Arc::clone(&display);
            let stop = Arc::clone(&stop);
            let color = settings.stderr_color;
            let interval = settings.heartbeat;
            std::thread::Builder::new()
                .name("idem-progress".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        let mut d = lock(&display);
                        let Some(r) = progress.read().filter(|r| r.index > d.finished) else {
                            continue;
                        };
                        if bar {
                            draw_bar(&mut d, &r, color);
                        } else if beat {
                            heartbeat(&mut d, &r, interval);
                        } else {
                            progress_event(&mut d, &r);
                        }
                    }
                })
                .ok()
        });
        Live {
            settings,
            display,
            stop,
            ticker: ticker.flatten(),
            started: false,
        }
    }

    /// The run ended: stop the meter's thread, then print the rest (text: the summary, or
    /// the whole report when nothing was shown live; JSON: the report; NDJSON: the last
    /// event).
    pub fn finish(mut self, report: &Report) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        clear_bars(&mut lock(&self.display));
        // Stdout is line-buffered: a report of 100,000 removals would be 100,000 writes.
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        match self.settings.output {
            Output::Json => {
                serde_json::to_writer_pretty(&mut out, &report.to_json())?;
                writeln!(out)?;
            }
            Output::Ndjson => {
                let e = json!({"event": "run-finished", "report": report.to_json()});
                writeln!(out, "{e}")?;
            }
            Output::Text { quiet } => {
                if self.started && !quiet && report.error.is_none() {
                    report.render_summary(&mut out, &self.settings.style)?;
                } else if !quiet || !report.ok() {
                    report.render_text(&mut out, &self.settings.style)?;
                }
            }
        }
        out.flush()
    }

    fn live_text(&self) -> bool {
        self.settings.output == Output::Text { quiet: false }
    }
}

impl Events for Live {
    fn run_started(&mut self, report: &Report, steps: usize) {
        lock(&self.display).steps = steps;
        if self.live_text() {
            self.started = true;
            let mut buf = Vec::new();
            let _ = report.render_head(&mut buf);
            if !buf.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf);
                let _ = out.flush();
            }
        } else if self.settings.output == Output::Ndjson {
            emit_line(
                &json!({
                    "event": "run-started",
                    "schema": 1,
                    "idem": env!("CARGO_PKG_VERSION"),
                    "mode": report.mode.as_str(),
                    "dry_run": report.mode.dry_run(),
                    "plan": report.plan,
                    "root": report.root,
                    "steps": steps,
                    "resumed": report.resumed,
                    "recovered_temporaries": report.recovered_temporaries,
                })
                .to_string(),
            );
        }
    }

    fn step_started(&mut self, index: usize, steps: usize, info: &StepInfo) {
        let mut d = lock(&self.display);
        d.steps = steps;
        if d.ops.len() < index {
            d.ops.resize(index, String::new());
        }
        d.ops[index - 1] = info.op.clone();
        if self.settings.output == Output::Ndjson {
            emit_line(
                &json!({
                    "event": "step-started",
                    "index": index,
                    "steps": steps,
                    "op": info.op,
                    "name": info.name,
                    "target": info.target,
                    "line": info.location.as_ref().map(|l| l.line),
                })
                .to_string(),
            );
        }
    }

    fn verify_started(&mut self) {
        let mut d = lock(&self.display);
        d.verify = true;
        d.finished = 0;
        d.next_beat = (0, Duration::ZERO);
        d.last_event = (0, u64::MAX, 0);
        clear_bars(&mut d);
    }

    fn step_finished(&mut self, report: &Report) {
        let Some(step) = report.steps.last() else {
            return;
        };
        let mut d = lock(&self.display);
        d.finished = step.index;
        clear_bars(&mut d);
        match self.settings.output {
            Output::Text { quiet: false } => {
                let mut buf = Vec::new();
                let _ = report.render_step(&mut buf, step, &self.settings.style);
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf);
                let _ = out.flush();
            }
            Output::Ndjson => {
                let step = serde_json::to_value(step).unwrap_or_default();
                emit_line(&json!({"event": "step-finished", "step": step}).to_string());
            }
            _ => {}
        }
    }
}

/// What a step counts, by its operation.
fn noun(op: &str, n: u64) -> String {
    match op {
        "each" | "upsert" => count(n, "record", "records"),
        "cleanup" => count(n, "file", "files"),
        _ => count(n, "item", "items"),
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The words shown for a running step: counts, percentage, rate, elapsed, ETA.
fn describe(r: &Reading, op: &str) -> String {
    let mut parts = Vec::new();
    if r.done > 0 || r.total > 0 {
        if r.total > 0 {
            let pct = (r.done as f64 / r.total as f64 * 100.0).min(100.0);
            parts.push(format!(
                "{}/{} ({pct:.0}%)",
                thousands(r.done),
                noun(op, r.total)
            ));
        } else {
            parts.push(noun(op, r.done));
        }
        if r.skipped > 0 {
            parts.push(format!("{} skipped", thousands(r.skipped)));
        }
        parts.push(format!("{}/s", thousands(r.rate().round() as u64)));
    } else {
        parts.push("running".to_string());
    }
    parts.push(format!("elapsed {}", secs(r.elapsed)));
    if let Some(eta) = r.eta() {
        parts.push(format!("ETA {}", secs(eta)));
    }
    parts.join(", ")
}

fn op_of(d: &Display, index: usize) -> String {
    d.ops.get(index - 1).cloned().unwrap_or_default()
}

/// `step 2/3`, or `verify step 2/3` during `apply --verify`'s second run.
fn step_label(d: &Display, index: usize) -> String {
    let verify = if d.verify { "verify " } else { "" };
    format!("{verify}step {index}/{}", d.steps)
}

/// `compiling plugins/x.wasm (first run; cached afterwards), 12s`: the line of a compile.
fn compile_line(c: &Compiling) -> String {
    let why = if c.cached {
        "first run; cached afterwards"
    } else {
        "not cached"
    };
    format!("compiling {} ({why}), {}", escape(&c.path), secs(c.elapsed))
}

/// Take the terminal's lines away (a step ended, or the run).
fn clear_bars(d: &mut Display) {
    for bar in [d.compile.take(), d.bar.take().map(|(_, b)| b)]
        .into_iter()
        .flatten()
    {
        bar.finish_and_clear();
        d.multi.remove(&bar);
    }
}

/// The terminal's bar for the running step, made once it has run 300 ms (quick steps never
/// flicker one), and under it, while the step's plugin compiles, a line saying so.
fn draw_bar(d: &mut Display, r: &Reading, color: bool) {
    // A step shorter than this shows no bar; a compile is shown however soon it comes (its
    // reading may be the only one that tells of it).
    if r.elapsed < Duration::from_millis(300) && r.compiling.is_none() {
        return;
    }
    let op = op_of(d, r.index);
    if d.bar.as_ref().is_none_or(|(i, _)| *i != r.index) {
        clear_bars(d);
        let bar = d.multi.add(ProgressBar::hidden());
        bar.set_prefix(format!("{} {}", step_label(d, r.index), escape(&r.name)));
        d.bar = Some((r.index, bar));
    }
    if let Some((_, bar)) = &d.bar {
        let template = match (r.total > 0, color) {
            (true, true) => "{prefix} [{bar:25.cyan/blue}] {msg}",
            (true, false) => "{prefix} [{bar:25}] {msg}",
            (false, _) => "{spinner} {prefix} {msg}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        if r.total > 0 {
            bar.set_length(r.total);
            bar.set_position(r.done.min(r.total));
        }
        bar.set_message(describe(r, &op));
    }
    match (&r.compiling, &d.compile) {
        (Some(c), Some(line)) => line.set_message(compile_line(c)),
        (Some(c), None) => {
            let line = d.multi.add(ProgressBar::hidden());
            if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg}") {
                line.set_style(style);
            }
            line.set_message(compile_line(c));
            d.compile = Some(line);
        }
        (None, Some(_)) => {
            if let Some(line) = d.compile.take() {
                line.finish_and_clear();
                d.multi.remove(&line);
            }
        }
        (None, None) => {}
    }
    if let Some((_, bar)) = &d.bar {
        bar.tick();
    }
    if let Some(line) = &d.compile {
        line.tick();
    }
}

/// One plain line on standard error every `interval` of a running step, so a CI log is never
/// silent for long.
fn heartbeat(d: &mut Display, r: &Reading, interval: Duration) {
    if d.next_beat.0 != r.index {
        d.next_beat = (r.index, interval);
    }
    // A compile is told as it starts (the wait that follows is its), not at the next beat.
    let new_compile = r.compiling.is_some() && d.told_compile != r.index;
    if r.elapsed < d.next_beat.1 && !new_compile {
        return;
    }
    if r.compiling.is_some() {
        d.told_compile = r.index;
    }
    if r.elapsed >= d.next_beat.1 {
        d.next_beat.1 += interval;
    }
    let op = op_of(d, r.index);
    let doing = match &r.compiling {
        Some(c) => format!("{}, elapsed {}", compile_line(c), secs(r.elapsed)),
        None => describe(r, &op),
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "idem: {} {}: {doing}",
        step_label(d, r.index),
        escape(&r.name),
    );
    let _ = err.flush();
}

/// A `progress` event, at most once a second, and only when something moved or another
/// second went by.
fn progress_event(d: &mut Display, r: &Reading) {
    let second = r.elapsed.as_secs();
    // A compile is told as it starts, like the heartbeat's.
    let new_compile = r.compiling.is_some() && d.told_compile != r.index;
    if new_compile {
        d.told_compile = r.index;
    } else if r.elapsed < Duration::from_secs(1)
        || d.last_event == (r.index, r.done, second)
        || (d.last_event.0 == r.index && d.last_event.2 == second)
    {
        return;
    }
    d.last_event = (r.index, r.done, second);
    emit_line(
        &json!({
            "event": "progress",
            "verify": d.verify,
            "index": r.index,
            "name": r.name,
            "done": r.done,
            "total": r.total,
            "skipped": r.skipped,
            "checkpointed": r.checkpointed,
            "elapsed_ms": r.elapsed.as_millis() as u64,
            "eta_ms": r.eta().map(|e| e.as_millis() as u64),
            "compiling": r.compiling.as_ref().map(|c| &c.path),
        })
        .to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checking_run_of_verify_is_labelled_as_such() {
        let mut d = Display {
            finished: 0,
            steps: 3,
            ops: Vec::new(),
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            bar: None,
            compile: None,
            next_beat: (0, Duration::ZERO),
            told_compile: 0,
            last_event: (0, 0, 0),
            verify: false,
        };
        assert_eq!(step_label(&d, 2), "step 2/3");
        d.verify = true;
        assert_eq!(step_label(&d, 2), "verify step 2/3");
    }

    #[test]
    fn a_running_step_is_described_with_total_percentage_rate_and_eta() {
        let r = Reading {
            index: 2,
            name: "each x.csv".into(),
            elapsed: Duration::from_secs(10),
            done: 1_500,
            total: 3_500,
            skipped: 1_000,
            checkpointed: 500,
            compiling: None,
        };
        assert_eq!(
            describe(&r, "each"),
            "1,500/3,500 records (43%), 1,000 skipped, 50/s, elapsed 10s, ETA 40s"
        );
        let idle = Reading {
            done: 0,
            total: 0,
            skipped: 0,
            ..r
        };
        assert_eq!(describe(&idle, "plugin"), "running, elapsed 10s");
    }

    #[test]
    fn a_compile_is_named_with_what_it_compiles_and_for_how_long() {
        let mut c = Compiling {
            path: "plugins/x\x1b.wasm".into(),
            cached: true,
            elapsed: Duration::from_secs(75),
        };
        assert_eq!(
            compile_line(&c),
            "compiling plugins/x\\u{1b}.wasm (first run; cached afterwards), 1m15s"
        );
        c.cached = false;
        assert!(compile_line(&c).contains("(not cached)"));
    }
}
