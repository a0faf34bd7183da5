//! The log capability: the guest's messages and progress, routed by the host.
//!
//! Messages go to `tracing` (shown with `-v` or `RUST_LOG`), their control characters escaped
//! so a guest cannot drive the terminal. Progress goes into the run's [`Progress`], a meter
//! the guest's calls, the checkpoint store and the plan loop write into and the command line's
//! display reads from its own thread (a bar on a terminal, a heartbeat line in CI logs,
//! progress events in NDJSON): a guest inside one long host call, or a plugin being compiled,
//! still gets its heartbeat. Nothing here draws.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bindings::log::{Host, Level};
use crate::term::escape_text;

/// What the `log` interface sees of the store: the run's progress meter.
pub struct LogView<'a> {
    pub progress: &'a Progress,
}

/// The running step's meter, shared between the run and whoever shows it. Cloning shares it.
#[derive(Clone, Default)]
pub struct Progress(Arc<Mutex<Option<StepMeter>>>);

struct StepMeter {
    index: usize,
    name: String,
    started: Instant,
    done: u64,
    total: u64,
    skipped: u64,
    checkpointed: u64,
    compiling: Option<(String, bool, Instant)>,
    /// Whether a reading has shown the compile under way.
    compile_read: bool,
    /// A compile that ended before any reading saw it (a small component compiles in less
    /// than the display's tick): the next reading still shows it, once, so that every
    /// compile is told.
    compile_unread: Option<Compiling>,
}

/// What the meter says of the running step at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The step's index (from 1) and name.
    pub index: usize,
    pub name: String,
    pub elapsed: Duration,
    /// The guest's count of items done and its total (0 when unknown); for the standard
    /// operations, records read (skipped ones too) and an estimate from the bytes read.
    pub done: u64,
    pub total: u64,
    /// Keys the checkpoint answered as done already (records skipped on a resume).
    pub skipped: u64,
    /// Keys marked done by this step so far (what an interrupt keeps).
    pub checkpointed: u64,
    /// A plugin's component being compiled for the step (a cold cache: its first run), and
    /// for how long so far: the display shows it on a line of its own.
    pub compiling: Option<Compiling>,
}

/// A compile under way, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiling {
    /// The component, as the plan names it (`plugins/x.wasm`).
    pub path: String,
    /// Its compiled code will be cached (a later run loads it), or not (`--no-cache`, or a
    /// cache idem does not use).
    pub cached: bool,
    pub elapsed: Duration,
}

impl Reading {
    /// Items per second among those actually worked on: skipped records are counted out, so
    /// the rate after a resume is not inflated by records that cost nothing.
    pub fn rate(&self) -> f64 {
        let worked = self.done.saturating_sub(self.skipped) as f64;
        worked / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// The time left at the current rate, when the total is known and work has started.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        if self.total == 0 || rate <= 0.0 {
            return None;
        }
        let left = self.total.saturating_sub(self.done) as f64;
        Some(Duration::from_secs_f64(left / rate))
    }
}

impl Progress {
    fn with<R>(&self, f: impl FnOnce(&mut Option<StepMeter>) -> R) -> R {
        // A poisoned meter only means a display thread panicked: the counts are still fine.
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut m)
    }

    /// Step `index` (from 1) called `name` starts.
    pub fn start(&self, index: usize, name: &str) {
        self.with(|m| {
            *m = Some(StepMeter {
                index,
                name: name.to_string(),
                started: Instant::now(),
                done: 0,
                total: 0,
                skipped: 0,
                checkpointed: 0,
                compiling: None,
                compile_read: false,
                compile_unread: None,
            })
        });
    }

    /// The step ended: its last reading, and nothing running until the next starts.
    pub fn finish(&self) -> Option<Reading> {
        let last = self.read();
        self.with(|m| *m = None);
        last
    }

    /// The running step, if one is.
    pub fn read(&self) -> Option<Reading> {
        self.with(|m| {
            m.as_mut().map(|s| {
                let compiling = match &s.compiling {
                    Some((path, cached, at)) => {
                        s.compile_read = true;
                        Some(Compiling {
                            path: path.clone(),
                            cached: *cached,
                            elapsed: at.elapsed(),
                        })
                    }
                    None => s.compile_unread.take(),
                };
                Reading {
                    index: s.index,
                    name: s.name.clone(),
                    elapsed: s.started.elapsed(),
                    done: s.done,
                    total: s.total,
                    skipped: s.skipped,
                    checkpointed: s.checkpointed,
                    compiling,
                }
            })
        })
    }

    /// The guest's own count.
    pub fn update(&self, done: u64, total: u64) {
        self.with(|m| {
            if let Some(s) = m {
                s.done = done;
                s.total = total;
            }
        });
    }

    /// The running step's component `path` is being compiled, its result cached or not;
    /// `None`: the compile is over.
    pub fn compiling(&self, what: Option<(&str, bool)>) {
        self.with(|m| {
            if let Some(s) = m {
                if let Some((path, cached, at)) = s.compiling.take()
                    && !s.compile_read
                {
                    s.compile_unread = Some(Compiling {
                        path,
                        cached,
                        elapsed: at.elapsed(),
                    });
                }
                s.compile_read = false;
                s.compiling = what.map(|(path, cached)| (path.to_owned(), cached, Instant::now()));
            }
        });
    }

    /// The checkpoint answered `skipped` keys as done and took `marked` new marks.
    pub fn count_checkpoints(&self, skipped: u64, marked: u64) {
        self.with(|m| {
            if let Some(s) = m {
                s.skipped += skipped;
                s.checkpointed += marked;
            }
        });
    }
}

impl Host for LogView<'_> {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = escape_text(&message);
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

    fn skipped(&mut self, count: u64) -> wasmtime::Result<()> {
        self.progress.count_checkpoints(count, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_leaves_skipped_records_out_and_the_eta_needs_a_total() {
        let r = Reading {
            index: 1,
            name: "each".into(),
            elapsed: Duration::from_secs(10),
            done: 1_500,
            total: 3_500,
            skipped: 1_000,
            checkpointed: 500,
            compiling: None,
        };
        assert_eq!(r.rate(), 50.0);
        assert_eq!(r.eta(), Some(Duration::from_secs(40)));
        assert_eq!(Reading { total: 0, ..r }.eta(), None);
    }

    #[test]
    fn a_finished_step_reads_as_nothing_running() {
        let p = Progress::default();
        p.start(2, "each data.csv");
        p.update(10, 100);
        p.count_checkpoints(3, 7);
        let last = p.finish().expect("a reading");
        assert_eq!((last.done, last.total, last.skipped), (10, 100, 3));
        assert_eq!(p.read(), None);
        p.update(11, 100);
        assert_eq!(p.read(), None, "an update after the end is dropped");
    }
}
