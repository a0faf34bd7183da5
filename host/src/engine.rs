//! The component host: wasmtime's engine, the compiled-component cache, the store's data, and
//! the loop that runs a plan's steps one by one through the standard guest (and plugin steps
//! through their own components, in the same store, so they share the run's planned state).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::plan::{PluginCall, StepInfo};
use crate::bindings::report::StepReport as GuestReport;
use crate::bindings::types::Datetime;
use crate::bindings::{plugin, standard};
use crate::change::{Change, Outcome};
use crate::fs::FsCap;
use crate::lock::{RunLock, lock_path};
use crate::log::Progress;
use crate::policy::{Mode, Policy};
use crate::report::{Failure, PlanErrorReport, Report, StepResult, Verify, VerifyChange};
use crate::sqlite::Databases;
use crate::state::StateStore;

/// The standard operations guest, built by `build.rs` from `guest/`.
const STANDARD_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/idem_guest.wasm"));
/// SHA-256 of [`STANDARD_GUEST`], computed at build time so start-up does not hash 1 MiB.
const STANDARD_GUEST_HASH: &str = include_str!(concat!(env!("OUT_DIR"), "/idem_guest.sha256"));

/// How often the epoch advances: the granularity of step timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// What a guest's standard error keeps for error messages.
const STDERR_CAPACITY: usize = 64 * 1024;

/// Memory limits, switched by the host around each call into a guest.
pub struct Limits {
    /// The most one linear memory may grow to, in bytes.
    pub memory: usize,
    /// Set when a guest asked for more.
    pub memory_hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.memory_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The `T` in `Store<T>`: each capability's state for one run, the policy, and the limits.
pub struct Ctx {
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    /// The guests' standard error, kept for error messages.
    pub stderr: MemoryOutputPipe,
    pub fs: FsCap,
    pub dbs: Databases,
    pub state: StateStore,
    pub policy: Policy,
    pub now: Datetime,
    pub limits: Limits,
    /// Prefix of checkpoint scopes: who is asking.
    pub scope_prefix: String,
    pub progress: Progress,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Everything a run needs, validated by the CLI.
pub struct RunConfig {
    pub mode: Mode,
    /// The root, canonical.
    pub root: PathBuf,
    /// The plan's text and the name it is shown by.
    pub plan_source: String,
    pub plan_name: String,
    pub state_path: PathBuf,
    pub now: Datetime,
    pub diff: bool,
    pub progress: bool,
    pub lock_timeout: Duration,
    /// Per plugin step.
    pub plugin_timeout: Duration,
    pub plugin_memory: usize,
    /// For the standard operations.
    pub memory: usize,
    pub verify: bool,
}

/// The wasmtime engine with the standard guest compiled and the host API linked.
pub struct Host {
    engine: Engine,
    linker: Linker<Ctx>,
    standard: Component,
    cache_dir: Option<PathBuf>,
}

/// What the host knows of a guest failure. `plugin` adds which flag raises the limit hit.
fn describe_trap(
    err: &wasmtime::Error,
    ctx: &Ctx,
    what: &str,
    limits: (Duration, usize),
    plugin: bool,
) -> String {
    if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        let hint = if plugin {
            " (raise it with --plugin-timeout)"
        } else {
            ""
        };
        return format!(
            "{what} ran longer than its time limit of {} s and was stopped{hint}",
            limits.0.as_secs()
        );
    }
    if ctx.limits.memory_hit {
        // The guest's own account (an allocation failure, a backtrace) adds nothing here.
        let hint = if plugin {
            " (raise it with --plugin-memory)"
        } else {
            ""
        };
        return format!(
            "{what} ran out of memory: it asked for more than its limit of {} MiB{hint}",
            limits.1 >> 20
        );
    }
    let stderr = String::from_utf8_lossy(&ctx.stderr.contents())
        .trim()
        .to_string();
    let tail: String = stderr
        .lines()
        .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    if tail.is_empty() {
        format!("{what} crashed: {err:#}")
    } else {
        format!("{what} crashed: {tail}")
    }
}

/// Why `bytes` cannot be a plugin, when the first eight bytes already tell: not WebAssembly
/// at all, or a core module (what `wasm32-unknown-unknown` or `wasm32-wasip1` builds give).
fn not_a_component(bytes: &[u8]) -> Option<&'static str> {
    if !bytes.starts_with(b"\0asm") {
        return Some(
            "is not a WebAssembly file (it lacks the `\\0asm` header); give the path of a component built for wasm32-wasip2",
        );
    }
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Some(
            "is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target \
             (or wrap a wasip1 module with `wasm-tools component new`)",
        );
    }
    None
}

impl Host {
    /// Build the engine, link the host API and load the standard guest (from the compiled
    /// cache in `cache_dir` when it is there).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config)
            .map_err(|e| anyhow!(e))
            .context("starting wasmtime")?;
        let ticker = engine.weak();
        std::thread::spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
        let mut linker: Linker<Ctx> = Linker::new(&engine);
        standard::Standard::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)
            .map_err(|e| anyhow!(e))?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow!(e))?;
        let standard = load_component(
            &engine,
            cache_dir.as_deref(),
            STANDARD_GUEST,
            STANDARD_GUEST_HASH.trim(),
        )
        .context("loading the standard operations component")?;
        Ok(Host {
            engine,
            linker,
            standard,
            cache_dir,
        })
    }

    fn load_component(&self, bytes: &[u8], content_hash: &str) -> Result<Component> {
        load_component(&self.engine, self.cache_dir.as_deref(), bytes, content_hash)
    }

    fn store(&self, cfg: &RunConfig, mode: Mode) -> Result<Store<Ctx>> {
        let dir = cap_std::fs::Dir::open_ambient_dir(&cfg.root, cap_std::ambient_authority())
            .with_context(|| format!("opening the root {}", cfg.root.display()))?;
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let now = cfg.now;
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(FixedClock(now))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let ctx = Ctx {
            table: ResourceTable::new(),
            wasi,
            stderr,
            fs: FsCap::new(dir, mode.dry_run(), now, cfg.diff),
            dbs: Databases::new(cfg.root.clone(), mode.dry_run()),
            state: StateStore::open(&cfg.state_path, mode.dry_run())?,
            policy: Policy::new(mode),
            now,
            limits: Limits {
                memory: cfg.memory,
                memory_hit: false,
            },
            scope_prefix: "std/".into(),
            progress: Progress::new(cfg.progress),
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|c| &mut c.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        store.epoch_deadline_trap();
        Ok(store)
    }

    /// The plan format's JSON Schema, from the standard guest.
    pub fn schema(&self, cfg: &RunConfig) -> Result<String> {
        let mut store = self.store(cfg, Mode::Plan)?;
        let guest = standard::Standard::instantiate(&mut store, &self.standard, &self.linker)
            .map_err(|e| anyhow!(e))?;
        guest
            .idem_plugin_plan()
            .call_schema(&mut store)
            .map_err(|e| anyhow!(e))
    }

    /// Run a plan: lock, load, run every step, record, and (with `verify`) prove that a
    /// second run would change nothing.
    pub fn run_plan(&self, cfg: &RunConfig) -> Result<Report> {
        let started = Instant::now();
        let _lock = lock(cfg)?;
        let mut report = self.run_once(cfg, cfg.mode, true)?;
        if cfg.verify && cfg.mode == Mode::Apply && report.ok() {
            let second = self.run_once(cfg, Mode::Plan, false)?;
            let mut changes = Vec::new();
            for step in &second.steps {
                for c in &step.changes {
                    changes.push(VerifyChange {
                        step: step.index,
                        name: step.name.clone(),
                        change: c.clone(),
                    });
                }
                if let Some(e) = &step.error {
                    changes.push(VerifyChange {
                        step: step.index,
                        name: step.name.clone(),
                        change: Change::new(
                            crate::change::ChangeKind::UpdateFile,
                            format!("(second run failed: {e})"),
                        ),
                    });
                }
            }
            report.verify = Some(Verify {
                ok: changes.is_empty(),
                changes,
            });
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    fn run_once(&self, cfg: &RunConfig, mode: Mode, record: bool) -> Result<Report> {
        let mut store = self.store(cfg, mode)?;
        let mut report = Report::new(mode, &cfg.plan_name, &cfg.root);
        if record {
            begin_run(store.data_mut(), cfg, mode, &mut report)?;
        }
        let guest = standard::Standard::instantiate(&mut store, &self.standard, &self.linker)
            .map_err(|e| anyhow!(e))
            .context("instantiating the standard operations")?;
        let loaded = guest
            .idem_plugin_plan()
            .call_load(&mut store, &cfg.plan_source, &cfg.plan_name)
            .map_err(|e| {
                anyhow!(describe_trap(
                    &e,
                    store.data(),
                    "the plan loader",
                    (Duration::ZERO, cfg.memory),
                    false
                ))
            })?;
        let steps = match loaded {
            Ok(steps) => steps,
            Err(e) => {
                report.error = Some(PlanErrorReport::from_guest(
                    &cfg.plan_name,
                    &cfg.plan_source,
                    e,
                ));
                if record {
                    store.data_mut().state.finish_run("plan-error", 0)?;
                }
                return Ok(report);
            }
        };
        let mut stopped = false;
        for (i, info) in steps.iter().enumerate() {
            let mut step = StepResult::new(i + 1, info);
            if stopped {
                step.outcome = Outcome::NotRun;
                report.steps.push(step);
                continue;
            }
            let t = Instant::now();
            store.data_mut().progress.start(&info.name);
            let result = match &info.plugin {
                Some(call) => self.run_plugin(&mut store, call, mode, cfg),
                None => guest
                    .idem_plugin_plan()
                    .call_run_step(&mut store, i as u32)
                    .map_err(|e| {
                        describe_trap(
                            &e,
                            store.data(),
                            "the standard operations",
                            (Duration::ZERO, cfg.memory),
                            false,
                        )
                    }),
            };
            let ctx = store.data_mut();
            ctx.progress.finish();
            stopped |= finish_step(ctx, &mut step, result, t);
            if record {
                ctx.state.journal(step.index, &step.name, &step.changes)?;
            }
            report.steps.push(step);
        }
        if record {
            let outcome = if report.ok() { "ok" } else { "failed" };
            let n = report.change_count();
            store.data_mut().state.finish_run(outcome, n)?;
        }
        Ok(report)
    }

    /// Run one plugin step in the run's store, under the plugin's narrower policy and limits.
    fn run_plugin(
        &self,
        store: &mut Store<Ctx>,
        call: &PluginCall,
        mode: Mode,
        cfg: &RunConfig,
    ) -> StepResultOf {
        let policy = Policy::for_plugin(mode, &call.paths, &call.databases)
            .map_err(|e| format!("plugin {}: {e}", call.path))?;
        let bytes = {
            let ctx = store.data();
            let rel = crate::fs::resolve(&ctx.policy, &call.path)
                .map_err(|e| format!("plugin {}: {}", call.path, crate::report::error_text(&e)))?;
            ctx.fs
                .read(&rel)
                .map_err(|e| format!("plugin {}: {}", call.path, crate::report::error_text(&e)))?
        };
        if let Some(problem) = not_a_component(&bytes) {
            return Err(format!("plugin {} {problem}", call.path));
        }
        let component = self
            .load_component(&bytes, &crate::fs::hash(&bytes))
            .map_err(|e| {
                format!(
                    "plugin {} is not a WebAssembly component idem can load: {e:#}",
                    call.path
                )
            })?;
        // The plugin's policy, checkpoint scope and limits hold from instantiation on: a
        // component's start-up code (data segments, start functions) runs inside them too.
        let saved_policy = std::mem::replace(&mut store.data_mut().policy, policy);
        let saved_prefix = std::mem::replace(
            &mut store.data_mut().scope_prefix,
            format!("plugin:{}/", call.path),
        );
        let saved_memory =
            std::mem::replace(&mut store.data_mut().limits.memory, cfg.plugin_memory);
        store.data_mut().limits.memory_hit = false;
        let ticks = (cfg.plugin_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let what = format!("plugin {}", call.path);
        let limits = (cfg.plugin_timeout, cfg.plugin_memory);
        let result = match plugin::Plugin::instantiate(&mut *store, &component, &self.linker) {
            Ok(instance) => instance
                .idem_plugin_step()
                .call_run(&mut *store, &call.config)
                .map_err(|e| describe_trap(&e, store.data(), &what, limits, true)),
            // A trap while starting up is the plugin's failure like any other.
            Err(e)
                if e.downcast_ref::<wasmtime::Trap>().is_some()
                    || store.data().limits.memory_hit =>
            {
                Err(describe_trap(&e, store.data(), &what, limits, true))
            }
            // Anything else is a mismatch of imports or exports, which wasmtime names.
            Err(e) => Err(format!(
                "{what} does not fit idem's contract (idem:plugin@0.1.0, world `plugin`): {e:#}"
            )),
        };
        store.set_epoch_deadline(u64::MAX / 2);
        let ctx = store.data_mut();
        ctx.policy = saved_policy;
        ctx.scope_prefix = saved_prefix;
        ctx.limits.memory = saved_memory;
        ctx.limits.memory_hit = false;
        result
    }

    /// Run one plugin component as a whole run (`idem run`).
    pub fn run_plugin_file(&self, cfg: &RunConfig, call: PluginCall) -> Result<Report> {
        let started = Instant::now();
        let _lock = lock(cfg)?;
        let mut store = self.store(cfg, cfg.mode)?;
        let mut report = Report::new(cfg.mode, &cfg.plan_name, &cfg.root);
        begin_run(store.data_mut(), cfg, cfg.mode, &mut report)?;
        let info = StepInfo {
            op: "plugin".into(),
            name: format!("plugin {}", call.path),
            target: call.path.clone(),
            location: None,
            plugin: Some(call.clone()),
        };
        let mut step = StepResult::new(1, &info);
        let t = Instant::now();
        let result = self.run_plugin(&mut store, &call, cfg.mode, cfg);
        let ctx = store.data_mut();
        finish_step(ctx, &mut step, result, t);
        ctx.state.journal(1, &step.name, &step.changes)?;
        report.steps.push(step);
        let outcome = if report.ok() { "ok" } else { "failed" };
        let n = report.change_count();
        store.data_mut().state.finish_run(outcome, n)?;
        report.duration = started.elapsed();
        Ok(report)
    }
}

/// What running one step gave: the guest's report or its error, or the host's account of a
/// trap, a timeout or a plugin that could not be loaded.
type StepResultOf = std::result::Result<
    std::result::Result<GuestReport, crate::bindings::report::StepError>,
    String,
>;

/// Take the run lock: exclusive for an apply, shared for a dry run.
fn lock(cfg: &RunConfig) -> Result<RunLock> {
    let lock_file = lock_path(&cfg.state_path);
    if cfg.mode.dry_run() {
        RunLock::shared(&lock_file, cfg.lock_timeout, &cfg.root)
    } else {
        RunLock::exclusive(&lock_file, cfg.lock_timeout, &cfg.root)
    }
}

/// Record the run's start; after an interrupted run (a plan's or a plugin's), first remove the
/// temporary files it left.
fn begin_run(ctx: &mut Ctx, cfg: &RunConfig, mode: Mode, report: &mut Report) -> Result<()> {
    let plan_hash = crate::fs::hash(cfg.plan_source.as_bytes());
    let interrupted = ctx
        .state
        .begin_run(mode.as_str(), &cfg.plan_name, &plan_hash)?;
    if interrupted {
        let n = ctx
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
    ctx: &mut Ctx,
    step: &mut StepResult,
    result: StepResultOf,
    started: Instant,
) -> bool {
    let left_open = ctx.dbs.abandon_open_transactions();
    let flushed = ctx.state.flush();
    let mut changes = ctx.fs.take_changes();
    changes.extend(ctx.dbs.take_changes());
    step.duration = started.elapsed();
    let mut stop = true;
    match result {
        Ok(Ok(r)) => {
            step.absorb(r, changes);
            stop = false;
        }
        Ok(Err(e)) => step.fail(e.message, changes),
        Err(msg) => step.fail(msg, changes),
    }
    if !left_open.is_empty() && step.error.is_none() {
        step.fail(
            format!(
                "the step left a transaction open on {}; it was rolled back",
                left_open.join(", ")
            ),
            Vec::new(),
        );
        stop = true;
    }
    if let Err(e) = flushed {
        step.fail(format!("could not write checkpoints: {e:#}"), Vec::new());
        stop = true;
    }
    stop
}

/// Compile a component, or load it from the cache, keyed by the content's hash and the
/// engine's configuration so that a changed engine never loads an incompatible artefact.
fn load_component(
    engine: &Engine,
    cache_dir: Option<&Path>,
    bytes: &[u8],
    content_hash: &str,
) -> Result<Component> {
    let compile = || {
        let started = Instant::now();
        let component = Component::new(engine, bytes).map_err(|e| anyhow!(e))?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "compiled a component"
        );
        Ok::<_, anyhow::Error>(component)
    };
    let Some(dir) = cache_dir else {
        return compile();
    };
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    let path = dir.join(format!(
        "{}-{:016x}.cwasm",
        &content_hash[..32.min(content_hash.len())],
        h.finish()
    ));
    if path.exists() {
        // SAFETY: the file is one this host wrote (named by content and engine hash) in
        // the user's own cache directory; a corrupt one fails to load and is replaced.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring an unusable compiled component: {e}")
            }
        }
    }
    let component = compile()?;
    if let Err(e) = store_cached(dir, &path, &component) {
        tracing::debug!("not caching the compiled component: {e:#}");
    }
    Ok(component)
}

fn store_cached(dir: &Path, path: &Path, component: &Component) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(|e| anyhow!(e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.persist(path)?;
    Ok(())
}

/// The WASI wall clock a guest sees: the run's one instant.
struct FixedClock(Datetime);

impl wasmtime_wasi::HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::new(self.0.seconds.max(0) as u64, self.0.nanoseconds)
    }
}

impl Failure {
    pub fn from_guest(f: crate::bindings::report::Failure) -> Self {
        Failure {
            item: f.item,
            message: f.message,
        }
    }
}
