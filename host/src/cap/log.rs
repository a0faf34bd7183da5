//! The log capability: the guest's messages and progress, routed by the host.
//!
//! Messages go to `tracing` (shown with `-v` or `RUST_LOG`). Progress is drawn as one line on
//! standard error only when it is a terminal and the report is text, and at most ten times a
//! second; CI logs and JSON output get nothing extra.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::bindings::log::{Host, Level};

/// What the `log` interface sees of the store: the run's progress display.
pub struct LogView<'a> {
    pub progress: &'a mut Progress,
}

/// Progress display state for the current step.
pub struct Progress {
    enabled: bool,
    label: String,
    started: Instant,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl Progress {
    /// Progress drawing, on when `wanted` and standard error is a terminal.
    pub fn new(wanted: bool) -> Self {
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            label: String::new(),
            started: Instant::now(),
            last_draw: None,
            drawn: false,
        }
    }

    /// A new step starts.
    pub fn start(&mut self, label: &str) {
        self.label = label.to_string();
        self.started = Instant::now();
        self.last_draw = None;
    }

    fn update(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        // Nothing for quick steps; then at most ten frames a second.
        if now.duration_since(self.started) < Duration::from_millis(300)
            || self
                .last_draw
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(now);
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let line = if total > 0 {
            let pct = (done as f64 / total as f64 * 100.0).min(100.0);
            let filled = (pct / 5.0) as usize;
            format!(
                "{} [{}{}] {done}/{total} {pct:.0}% {rate:.0}/s",
                self.label,
                "#".repeat(filled),
                "-".repeat(20 - filled.min(20))
            )
        } else {
            format!("{} {done} {rate:.0}/s", self.label)
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clear the line when the step ends.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

impl Host for LogView<'_> {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        match level {
            Level::Trace => tracing::trace!(target: "idem::guest", "{message}"),
            Level::Debug => tracing::debug!(target: "idem::guest", "{message}"),
            Level::Info => tracing::info!(target: "idem::guest", "{message}"),
            Level::Warn => tracing::warn!(target: "idem::guest", "{message}"),
            Level::Error => tracing::error!(target: "idem::guest", "{message}"),
        }
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        self.progress.update(done, total);
        Ok(())
    }
}
