//! The store's data and the views each capability sees of it.
//!
//! [`RunState`] is what a run carries from step to step: the file capability (with its
//! overlay under a dry run), the databases, the state store, the progress display, the clock.
//! It lives in the standard guest's store for the whole run, and moves into a plugin step's
//! own store for that step and back. Everything else in a [`Ctx`] (the WASI context and its
//! stderr, the resource table, the memory limiter, the step's policy) belongs to one store:
//! for a plugin step, it ends with the step. The [`linker`] joins each WIT interface to its
//! view.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::engine::Limiter;
use super::stderr::TailPipe;
use crate::bindings::types::Datetime;
use crate::bindings::{checkpoint, clock, fs, log, policy, postgres, report, sqlite, types};
use crate::cap::checkpoint::CheckpointView;
use crate::cap::clock::ClockView;
use crate::cap::fs::{Disk, FsCap, FsView, Overlay, Sink};
use crate::cap::http::NetCap;
use crate::cap::log::{LogView, Progress};
use crate::cap::policy::PolicyView;
use crate::cap::postgres::{Connections, PgView};
use crate::cap::sqlite::{Backing, Databases, SqliteView};
use crate::policy::{Mode, Policy};
use crate::state::{Location, Sharing, StateStore};

/// What a run carries from step to step, whichever store runs the step.
pub struct RunState {
    pub fs: FsCap,
    /// HTTP requests plugin steps made (or, under a dry run, declined to send) that change
    /// something: taken with the step's other changes.
    pub http_changes: Vec<crate::change::Change>,
    pub dbs: Databases,
    /// PostgreSQL connections, the run's (under a dry run, each in one transaction).
    pub pg: Connections,
    pub state: StateStore,
    pub progress: Progress,
    pub now: Datetime,
}

impl RunState {
    /// Open the run's state over `root`. The one place where the run's mode chooses how
    /// changes are made: to disk and to the database files under apply, to an overlay and
    /// private database copies under a dry run.
    pub fn open(
        root: &Path,
        state: &Location,
        sharing: Sharing,
        mode: Mode,
        now: Datetime,
        diffs: bool,
        progress: Progress,
    ) -> Result<Self> {
        let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
            .with_context(|| format!("opening the root {}", root.display()))?;
        let protected_paths = match state {
            Location::File(state_path) => {
                let in_state_dir = refuse_linked_state_dir(root, state_path)?;
                protected(root, state_path, in_state_dir)
            }
            // Nothing of it is under the root; the state directory is kept off limits all
            // the same, as steps expect.
            Location::Postgres { .. } => vec![root.join(crate::policy::STATE_DIR)],
        };
        let (sink, backing): (Box<dyn Sink + Send>, Backing) = if mode.dry_run() {
            (Box::new(Overlay::new()), Backing::PrivateCopy)
        } else {
            (Box::new(Disk::default()), Backing::File)
        };
        let state = StateStore::open_at(state, mode.dry_run(), sharing)?;
        let mut fs = FsCap::new(dir, sink, diffs);
        fs.protect(protected_paths);
        let mut pg = Connections::new(mode.dry_run());
        if let Some(home) = state.pg_home() {
            pg.set_state_home(home);
        }
        Ok(RunState {
            fs,
            http_changes: Vec::new(),
            dbs: Databases::new(root.to_path_buf(), backing),
            pg,
            state: state.metered(progress.clone()),
            progress,
            now,
        })
    }
}

/// Refuse a state directory under the root that is a symbolic link (before anything, the run
/// lock included, is opened through it). Returns whether the state store lies in it.
pub fn refuse_linked_state_dir(root: &Path, state_path: &Path) -> Result<bool> {
    let state_dir = root.join(crate::policy::STATE_DIR);
    let in_state_dir = state_path.starts_with(&state_dir);
    if in_state_dir
        && std::fs::symlink_metadata(&state_dir).is_ok_and(|m| m.file_type().is_symlink())
    {
        anyhow::bail!(
            "{} is a symbolic link; idem keeps its state there and does not follow links \
             for it (a repository shipping `.idem` as a link could send the state anywhere). \
             Remove the link, or keep the state elsewhere with --state",
            state_dir.display()
        );
    }
    Ok(in_state_dir)
}

/// Where no step may lead, however it spells the path: the state directory under the root,
/// or (for a `--state` elsewhere under the root) the state store's own files.
fn protected(root: &Path, state_path: &Path, in_state_dir: bool) -> Vec<std::path::PathBuf> {
    if in_state_dir {
        return vec![root.join(crate::policy::STATE_DIR)];
    }
    let (Some(dir), Some(name)) = (state_path.parent(), state_path.file_name()) else {
        return Vec::new();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    if !dir.starts_with(root) {
        return Vec::new();
    }
    let name = name.to_string_lossy();
    ["", "-wal", "-shm", "-journal", ".lock"]
        .iter()
        .map(|side| dir.join(format!("{name}{side}")))
        .collect()
}

/// The `T` in `Store<T>`: one store's own state, the step's policy, and (while a guest of
/// this store runs) the run's state.
pub struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    /// The guest's standard error, kept for error messages.
    pub stderr: TailPipe,
    pub policy: Policy,
    pub limiter: Limiter,
    /// When the step's time runs out, from its policy's limit (none for the standard
    /// operations). Epoch interruption stops compiled code then; waits in the host are
    /// clamped to it.
    pub deadline: Option<std::time::Instant>,
    /// The guest's monotonic clock counts from here.
    clock_start: std::time::Instant,
    /// Set when a wait of the guest was cut short at the deadline: where the time ran out.
    pub cut_short: Option<&'static str>,
    http: WasiHttpCtx,
    /// The step's network (`wasi:http`): its policy, counters and requests.
    pub net: NetCap,
    run: Option<RunState>,
}

impl Ctx {
    /// The run's state. It is absent only while a plugin step has it, when this store's guest
    /// is not running: reaching for it then is a host bug.
    pub fn run(&mut self) -> &mut RunState {
        self.run
            .as_mut()
            .expect("the run's state is in this store while its guest runs")
    }

    /// Hand the run's state to another store (a plugin step's).
    pub fn take_run(&mut self) -> RunState {
        self.run.take().expect("the run's state is in this store")
    }

    /// Take the run's state back.
    pub fn put_run(&mut self, run: RunState) {
        self.run = Some(run);
    }

    /// Give up the store's data, keeping the run's state.
    pub fn into_run(mut self) -> RunState {
        self.take_run()
    }

    pub fn fs_view(&mut self) -> FsView<'_> {
        let run = self.run.as_mut().expect("the run's state is in this store");
        FsView {
            fs: &mut run.fs,
            policy: &self.policy,
            table: &mut self.table,
        }
    }

    pub fn sqlite_view(&mut self) -> SqliteView<'_> {
        let run = self.run.as_mut().expect("the run's state is in this store");
        SqliteView {
            dbs: &mut run.dbs,
            paths: &mut run.fs,
            policy: &self.policy,
            table: &mut self.table,
        }
    }

    pub fn postgres_view(&mut self) -> PgView<'_> {
        let run = self.run.as_mut().expect("the run's state is in this store");
        PgView {
            pg: &mut run.pg,
            policy: &self.policy,
            table: &mut self.table,
        }
    }

    pub fn checkpoint_view(&mut self) -> CheckpointView<'_> {
        let run = self.run.as_mut().expect("the run's state is in this store");
        CheckpointView {
            marks: &mut run.state,
            policy: &self.policy,
            files: &mut run.fs,
        }
    }

    pub fn log_view(&mut self) -> LogView<'_> {
        LogView {
            progress: &self.run().progress,
        }
    }

    pub fn clock_view(&mut self) -> ClockView {
        ClockView {
            now: self.run().now,
        }
    }

    pub fn policy_view(&mut self) -> PolicyView<'_> {
        PolicyView {
            policy: &self.policy,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.net,
        }
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The WASI monotonic clock a guest sees: nanoseconds since its store was made.
struct StepClock(std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for StepClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// A guest's sleep, ending at `at`: a wait the host can cut short at the step's deadline.
struct Sleep(tokio::time::Instant);

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for Sleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await;
    }
}

impl Ctx {
    /// A pollable for a sleep of `wanted`, ending no later than the step's deadline.
    fn subscribe(
        &mut self,
        wanted: std::time::Duration,
    ) -> wasmtime::Result<wasmtime::component::Resource<wasmtime_wasi::p2::DynPollable>> {
        let now = std::time::Instant::now();
        let mut end = now
            .checked_add(wanted)
            .unwrap_or(now + std::time::Duration::from_secs(1 << 40));
        if let Some(deadline) = self.deadline
            && end > deadline
        {
            end = deadline.max(now);
            self.cut_short = Some("a sleep or wait (wasi:clocks)");
        }
        let sleep = self
            .table
            .push(Sleep(tokio::time::Instant::from_std(end)))?;
        wasmtime_wasi::p2::subscribe(&mut self.table, sleep)
    }
}

/// The WASI wall clock a guest sees: the run's one instant.
struct FixedClock(Datetime);

impl wasmtime_wasi::HostWallClock for FixedClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::new(self.0.seconds.max(0) as u64, self.0.nanoseconds)
    }
}

/// A store of its own for one guest under `policy`, holding the run's state: a fresh WASI
/// context (no files, no network, no environment; its own stderr), a fresh resource table,
/// the policy's memory limit and, when it has one, its time limit, in force from
/// instantiation on.
/// The most resource handles a step may hold at once: file readers, databases, statements
/// and WASI's own streams and pollables. A runtime holds a handful; without a bound a guest
/// could open readers until the host ran out of descriptors or memory.
pub const MAX_HANDLES: usize = 1024;

pub fn new_store(engine: &Engine, run: RunState, policy: Policy) -> Store<Ctx> {
    let stderr = TailPipe::default();
    let clock_start = std::time::Instant::now();
    let wasi = WasiCtxBuilder::new()
        .stderr(stderr.clone())
        .wall_clock(FixedClock(run.now))
        .monotonic_clock(StepClock(clock_start))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let limits = policy.limits;
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HANDLES);
    let deadline = limits.time.map(|t| clock_start + t);
    let net = NetCap::new(policy.network.clone(), policy.mode.dry_run(), deadline);
    let ctx = Ctx {
        table,
        wasi,
        stderr,
        policy,
        limiter: Limiter::new(limits.memory),
        deadline,
        clock_start,
        cut_short: None,
        http: WasiHttpCtx::new(),
        net,
        run: Some(run),
    };
    let mut store = Store::new(engine, ctx);
    store.limiter(|c| &mut c.limiter);
    super::interrupt::arm(&mut store, limits.time);
    store
}

/// The monotonic clock interface as wasmtime-wasi defines it (a component importing any
/// 0.2.x version links to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

// The `D` of each interface's `add_to_linker`: which view of the store it sees.
struct HasFs;
impl HasData for HasFs {
    type Data<'a> = FsView<'a>;
}
struct HasSqlite;
impl HasData for HasSqlite {
    type Data<'a> = SqliteView<'a>;
}
struct HasPostgres;
impl HasData for HasPostgres {
    type Data<'a> = PgView<'a>;
}
struct HasCheckpoint;
impl HasData for HasCheckpoint {
    type Data<'a> = CheckpointView<'a>;
}
struct HasLog;
impl HasData for HasLog {
    type Data<'a> = LogView<'a>;
}
struct HasClock;
impl HasData for HasClock {
    type Data<'a> = ClockView;
}
struct HasPolicy;
impl HasData for HasPolicy {
    type Data<'a> = PolicyView<'a>;
}

// Interfaces with types only: nothing to implement, nothing to see.
impl types::Host for Ctx {}
impl report::Host for Ctx {}

/// The host API, each interface linked to its view of the store, and the sandboxed WASI that
/// language runtimes need. One linker serves both worlds (`standard` and `plugin` import the
/// same interfaces).
pub fn linker(engine: &Engine) -> Result<Linker<Ctx>> {
    let mut l: Linker<Ctx> = Linker::new(engine);
    let e = |e: wasmtime::Error| anyhow!(e);
    types::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut l, |c| c).map_err(e)?;
    report::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut l, |c| c).map_err(e)?;
    fs::add_to_linker::<Ctx, HasFs>(&mut l, Ctx::fs_view).map_err(e)?;
    sqlite::add_to_linker::<Ctx, HasSqlite>(&mut l, Ctx::sqlite_view).map_err(e)?;
    postgres::add_to_linker::<Ctx, HasPostgres>(&mut l, Ctx::postgres_view).map_err(e)?;
    checkpoint::add_to_linker::<Ctx, HasCheckpoint>(&mut l, Ctx::checkpoint_view).map_err(e)?;
    log::add_to_linker::<Ctx, HasLog>(&mut l, Ctx::log_view).map_err(e)?;
    clock::add_to_linker::<Ctx, HasClock>(&mut l, Ctx::clock_view).map_err(e)?;
    policy::add_to_linker::<Ctx, HasPolicy>(&mut l, Ctx::policy_view).map_err(e)?;
    wasmtime_wasi::p2::add_to_linker_sync(&mut l).map_err(e)?;
    // Outgoing HTTP for every guest; each request passes its step's network policy (none
    // for the standard operations and for a plugin without `hosts:`: all denied).
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut l).map_err(e)?;
    // A guest's sleeps are cut short at its step's deadline: epoch interruption only stops
    // compiled code, and a guest blocked in the host's poll would otherwise outlast its limit.
    l.allow_shadowing(true);
    let mut clocks = l.instance(MONOTONIC_CLOCK).map_err(e)?;
    clocks
        .func_wrap("subscribe-duration", |mut s, (ns,): (u64,)| {
            Ok((s
                .data_mut()
                .subscribe(std::time::Duration::from_nanos(ns))?,))
        })
        .map_err(e)?;
    clocks
        .func_wrap("subscribe-instant", |mut s, (at,): (u64,)| {
            let ctx: &mut Ctx = s.data_mut();
            let now = ctx.clock_start.elapsed().as_nanos() as u64;
            Ok((ctx.subscribe(std::time::Duration::from_nanos(at.saturating_sub(now)))?,))
        })
        .map_err(e)?;
    l.allow_shadowing(false);
    Ok(l)
}
