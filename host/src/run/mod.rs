//! Running things: the wasmtime engine and its linker ([`engine`]), the compiled-component
//! cache ([`cache`]), the store and the views capabilities see of it ([`store`]), the plan
//! loop ([`plan`]), plugin steps in stores of their own ([`plugin`]), and how a guest's
//! failure is worded ([`failure`]).
//!
//! Data flows one way: the CLI hands a validated [`RunConfig`]; [`Host`] builds stores with
//! the step's policy; guests call capabilities; a [`Report`](crate::report::Report) comes
//! back.

mod cache;
mod engine;
mod failure;
mod imports;
mod interrupt;
mod plan;
mod plugin;
mod stderr;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::bindings::plan::StepInfo;
use crate::bindings::report::StepReport as GuestReport;
use crate::bindings::standard;
use crate::bindings::types::Datetime;
use crate::cap::log::Progress;
use crate::policy::{Mode, Policy};
use crate::report::{Report, StepFailure};
pub use cache::Cache;
pub(crate) use plan::env_names;
use store::{Ctx, RunState, new_store};

/// The standard operations guest, built by `build.rs` from `guest/`.
const STANDARD_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/idem_guest.wasm"));
/// SHA-256 of [`STANDARD_GUEST`], computed at build time so start-up does not hash 1 MiB.
const STANDARD_GUEST_HASH: &str = include_str!(concat!(env!("OUT_DIR"), "/idem_guest.sha256"));

/// Everything a run needs, validated by the CLI.
pub struct RunConfig {
    pub mode: Mode,
    /// The root, canonical.
    pub root: PathBuf,
    /// The plan's text and the name it is shown by.
    pub plan_source: String,
    pub plan_name: String,
    /// Values for the plan's variables (`--var-file`, then `--var`), in order.
    pub vars: Vec<(String, String)>,
    /// `--only` and `--skip`: step names or tags.
    pub only: Vec<String>,
    pub skip: Vec<String>,
    /// `idem validate`: load and check the plan, run no step.
    pub validate_only: bool,
    /// The plan file, canonical, when it is a file (plugins may not touch it unless named).
    pub plan_file: Option<PathBuf>,
    /// Where the state lives, and how this run shares `each` steps' records.
    pub state: crate::state::Location,
    pub sharing: crate::state::Sharing,
    pub now: Datetime,
    pub diff: bool,
    /// The running step's meter, which the caller may show (it is written in any case).
    pub progress: Progress,
    pub lock_timeout: Duration,
    /// Per plugin step.
    pub plugin_timeout: Duration,
    pub plugin_memory: usize,
    /// For the standard operations.
    pub memory: usize,
    pub verify: bool,
}

impl RunConfig {
    /// The plan file as a path under the root, when it is there: reserved from plugins, and
    /// never removed by a `cleanup` as stale.
    fn plan_in_root(&self) -> Option<crate::policy::RelPath> {
        let rel = self.plan_file.as_ref()?.strip_prefix(&self.root).ok()?;
        Policy::new(self.mode).resolve(&rel.to_string_lossy()).ok()
    }
}

/// What the plan loop tells as it goes, for output a person or a tool can follow live. Each
/// call comes from the thread running the plan; none may fail the run. Only the recorded run
/// tells (not the second, checking run of `apply --verify`).
pub trait Events {
    /// The run is recorded and its plan loaded: `report` has its mode, plan, root and whether
    /// it resumes an interrupted run; `steps` is how many steps it has.
    fn run_started(&mut self, _report: &Report, _steps: usize) {}
    /// Step `index` (from 1) of `steps` starts.
    fn step_started(&mut self, _index: usize, _steps: usize, _info: &StepInfo) {}
    /// A step finished: it is the last of `report.steps`.
    fn step_finished(&mut self, _report: &Report) {}
    /// `apply --verify`'s second, checking run starts: its steps are metered (so a long one
    /// still shows progress) but not told one by one.
    fn verify_started(&mut self) {}
}

/// What of the world a dry run read: every path its steps named (and whether each was
/// listed), the SQLite databases and PostgreSQL databases it opened, and the environment
/// variables the plan names. A saved plan fingerprints these.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub paths: Vec<(String, bool)>,
    pub databases: Vec<String>,
    /// PostgreSQL databases, as shown (never with a password).
    pub postgres: Vec<String>,
    /// Files the plan includes, under the root.
    pub includes: Vec<String>,
}

/// A saved plan, as `apply FILE` checks it against the world under the run lock.
pub trait SavedCheck {
    /// What no longer matches the fingerprints taken when the plan was saved, one line each
    /// (empty: all match). Called under the run lock, before any step.
    fn world_changed(&self) -> Vec<String>;
    /// How the changes of `now` (a dry run made under the same lock) differ from the saved
    /// change list, one line each (empty: the same).
    fn changes_differ(&self, now: &Report) -> Vec<String>;
}

/// Events nobody follows.
pub struct NoEvents;
impl Events for NoEvents {}

/// What running one step gave: the guest's report, or why the step failed.
type StepEnd = std::result::Result<GuestReport, StepFailure>;

/// The wasmtime engine with the standard guest compiled and the host API linked.
pub struct Host {
    engine: Engine,
    linker: Linker<Ctx>,
    standard: Component,
    cache: Option<Cache>,
    /// The meter of the running step, told while a plugin's component loads.
    progress: Progress,
}

impl Host {
    /// Build the engine, link the host API and load the standard guest (from the compiled
    /// `cache` when it is there).
    pub fn new(cache: Option<Cache>) -> Result<Self> {
        let engine = engine::engine().context("starting wasmtime")?;
        let linker = store::linker(&engine)?;
        let standard = cache::load_component(
            &engine,
            cache.as_ref(),
            STANDARD_GUEST,
            STANDARD_GUEST_HASH.trim(),
            &|_| {},
        )
        .context("loading the standard operations component")?;
        Ok(Host {
            engine,
            linker,
            standard,
            cache,
            progress: Progress::default(),
        })
    }

    /// The meter the runs of this host write into: give it to [`RunConfig::progress`] and
    /// it also tells when a plugin step's time goes to loading its component.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// A plugin's component `path`, from the cache or compiled. A cold compile of a large
    /// component (Python, JS) takes seconds to a minute: the display shows it on a line of
    /// its own while it lasts, rather than a step that seems stuck.
    fn load_component(&self, path: &str, bytes: &[u8], content_hash: &str) -> Result<Component> {
        let loaded = cache::load_component(
            &self.engine,
            self.cache.as_ref(),
            bytes,
            content_hash,
            &|cached| self.progress.compiling(Some((path, cached))),
        );
        self.progress.compiling(None);
        loaded
    }

    /// The plan format's JSON Schema, from the standard guest.
    pub fn schema(&self, cfg: &RunConfig) -> Result<String> {
        let run = RunState::open(
            &cfg.root,
            &cfg.state,
            crate::state::Sharing::Alone,
            Mode::Plan,
            cfg.now,
            false,
            Progress::default(),
        )?;
        let mut store = new_store(&self.engine, run, Policy::new(Mode::Plan));
        let guest = standard::Standard::instantiate(&mut store, &self.standard, &self.linker)
            .map_err(|e| anyhow!(e))?;
        guest
            .idem_plugin_plan()
            .call_schema(&mut store)
            .map_err(|e| anyhow!(e))
    }
}
