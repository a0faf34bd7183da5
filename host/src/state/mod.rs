//! The state store: the runs, a journal of every change applied, and checkpoints. Two
//! backends sit behind [`StateStore`]: a SQLite database per root (the default,
//! `.idem/state.db`, in WAL mode), or a PostgreSQL database shared by many jobs and runners,
//! each job under its own state key ([`pg`]). Which one is the [`Location`] the command line
//! gives. Buffering of marks, the dry-run rule and the meter are the same for both; only the
//! reads and writes differ.
//!
//! It is idem's own bookkeeping, never reachable by a step (the policy denies `.idem/`). Under
//! a dry run it is opened read-only, if it exists at all, and checkpoint marks are kept in
//! memory, so a dry run writes nothing anywhere.
//!
//! Checkpoint marks are buffered and written in one transaction per batch: when
//! [`MARK_BATCH`] marks are waiting, when the oldest has waited [`MARK_INTERVAL`], and at the
//! end of every step. A crash loses at most the marks of the last batch, whose records are
//! then processed again (at least once).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::cap::checkpoint::Marks;
use crate::cap::log::Progress;
use crate::change::Change;

pub mod lock;
pub mod pg;

use crate::dbname::PgTarget;

/// Where the state lives.
#[derive(Clone, Debug)]
pub enum Location {
    /// A SQLite file.
    File(PathBuf),
    /// A PostgreSQL database, and the job's state key within it.
    Postgres { target: Box<PgTarget>, key: String },
}

impl Location {
    /// How the state is named to a person: the path, or the URL without its password and
    /// the state key.
    pub fn shown(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Postgres { target, key } => format!("{} (state key {key:?})", target.shown()),
        }
    }
}

/// The open database behind a store.
enum Db {
    Sqlite(Connection),
    Pg(Box<pg::PgStore>),
}

/// Marks buffered before they are written in one transaction.
const MARK_BATCH: usize = 4096;
/// The longest a mark waits to be written. Without it a step of fewer than [`MARK_BATCH`]
/// records wrote no mark before it ended, so a run killed after an hour of slow records
/// resumed nothing. A write costs no fsync (WAL, `synchronous=NORMAL`), so a few a second are
/// cheap.
const MARK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started TEXT NOT NULL,
    ended TEXT,
    mode TEXT NOT NULL,
    plan TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    outcome TEXT,
    changes INTEGER,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    ci_run_id TEXT,
    ci_run_attempt TEXT
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    step_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    rows INTEGER,
    hash_before TEXT,
    hash_after TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_run ON journal(run_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
";

/// The schema's changes since the first release, in order; `PRAGMA user_version` counts those
/// applied. Each only adds (columns with `ALTER TABLE`), so a store written by an older idem
/// opens as it is and an older idem can still read a newer store.
const MIGRATIONS: &[&str] = &[
    // 1: why a run failed, and at which step ("what broke last night").
    "ALTER TABLE runs ADD COLUMN error TEXT;
     ALTER TABLE runs ADD COLUMN failed_step INTEGER;
     ALTER TABLE runs ADD COLUMN failed_step_name TEXT;",
    // 2: a mark may carry a value: what the record was when it was done (a fingerprint of
    // its data and outputs), so `each` can tell a changed record from a done one.
    "ALTER TABLE checkpoints ADD COLUMN value TEXT;",
];

/// Apply the migrations `c` has not had, in one transaction.
fn migrate(c: &mut Connection, path: &Path) -> Result<()> {
    let tx = c.transaction()?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(m).with_context(|| {
            format!(
                "upgrading the state store {} to version {}",
                path.display(),
                i + 1
            )
        })?;
    }
    if version < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    }
    tx.commit()?;
    Ok(())
}

/// Why a run did not succeed, as history keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunFailure {
    /// For a person: the step's error, its first failed record, or the plan's error.
    pub error: String,
    /// The step that failed (from 1) and its name, when one did.
    pub step: Option<usize>,
    pub step_name: Option<String>,
}

/// Which runs `history` lists.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    /// At most this many, newest first; 0 for all.
    pub limit: usize,
    /// Only runs that did not succeed (failed, plan error, interrupted).
    pub failed: bool,
    /// Only runs started at or after this RFC 3339 UTC time.
    pub since: Option<String>,
}

impl Marks for StateStore {
    fn done(&self, scope: &str, keys: &[String]) -> Result<Vec<bool>> {
        StateStore::done(self, scope, keys)
    }

    fn values(&self, scope: &str, keys: &[String]) -> Result<Vec<Option<String>>> {
        StateStore::values(self, scope, keys)
    }

    fn mark_values(&mut self, scope: &str, entries: &[(String, String)]) -> Result<()> {
        StateStore::mark_values(self, scope, entries)
    }

    fn mark(&mut self, scope: &str, keys: &[String]) -> Result<()> {
        StateStore::mark(self, scope, keys)
    }

    fn clear(&mut self, scope: &str) -> Result<()> {
        StateStore::clear(self, scope)
    }

    fn list(
        &mut self,
        scope: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        StateStore::list(self, scope, after, limit)
    }

    fn unmark(&mut self, scope: &str, keys: &[String]) -> Result<()> {
        StateStore::unmark(self, scope, keys)
    }
    fn claim(&mut self, scope: &str, entries: &[(String, Option<String>)]) -> Result<Vec<bool>> {
        StateStore::claim(self, scope, entries)
    }
}

/// How a run shares every `each` step's records with other runners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// Every record is this run's.
    #[default]
    Alone,
    /// Records are claimed from the PostgreSQL state store by whichever runner comes first
    /// (`--cooperate`).
    Cooperate,
    /// A static split: this run takes the records whose key hashes to `index` of `count`
    /// (`--shard INDEX/COUNT`, from 1).
    Shard { index: u32, count: u32 },
}

impl Sharing {
    /// Whether the run shares its state key with other applies at the same time.
    pub fn shared(self) -> bool {
        self != Sharing::Alone
    }
}

/// The shard (from 0) of a record's checkpoint key among `count`: FNV-1a, stable across
/// builds and machines.
pub fn shard_of(key: &str, count: u32) -> u32 {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % u64::from(count.max(1))) as u32
}

/// One run, as `idem history` shows it.
#[derive(Debug, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub started: String,
    pub ended: Option<String>,
    pub mode: String,
    pub plan: String,
    pub outcome: Option<String>,
    pub changes: Option<i64>,
    pub ci_run_id: Option<String>,
    pub ci_run_attempt: Option<String>,
    /// Why the run failed (its error and failing step), or null.
    pub failure: Option<RunFailure>,
    pub journal: Vec<JournalEntry>,
}

/// One journal line.
#[derive(Debug, Serialize)]
pub struct JournalEntry {
    pub step: i64,
    pub step_name: String,
    pub kind: String,
    pub target: String,
    pub rows: Option<i64>,
    pub hash_before: Option<String>,
    pub hash_after: Option<String>,
    pub at: String,
}

/// The state store for one run.
pub struct StateStore {
    /// None under a dry run when no store exists yet.
    db: Option<Db>,
    /// How the store is named in errors.
    path: PathBuf,
    dry_run: bool,
    /// Whether this run shares `each` steps' records with other runners.
    sharing: Sharing,
    /// Marks not yet written, by scope (under a dry run: every mark of the run), in key order
    /// so that `list` pages through them.
    marks: HashMap<String, BTreeMap<String, Option<String>>>,
    /// Under a dry run: marks forgotten during this run, by scope.
    unmarked: HashMap<String, HashSet<String>>,
    /// How many marks wait in `marks` to be written.
    unwritten: usize,
    /// When the oldest unwritten mark was buffered.
    pending_since: Option<std::time::Instant>,
    /// Under a dry run: scopes cleared during this run.
    cleared: HashSet<String>,
    pub run_id: Option<i64>,
    /// The running step's meter, told of skipped keys and new marks.
    progress: Progress,
}

/// This machine's host name, for lock holders and the state store.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// An RFC 3339 UTC timestamp of now, for the store.
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_time(now.as_secs() as i64, now.subsec_millis())
}

/// Format Unix seconds as RFC 3339 UTC (civil-from-days, no time zone database needed).
pub fn format_time(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The URI a dry run opens the state store by. A read-only connection to a WAL database
/// creates `-wal` and `-shm` files beside it, which a dry run must not; when no write-ahead
/// log is pending (every run that ended checkpoints it) the file is opened `immutable`, which
/// creates nothing. After a killed run the log holds committed marks that must be seen, so
/// then the ordinary read-only open is used (its side files are the killed run's anyway).
fn read_only_uri(path: &Path) -> String {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let pending = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    let mut uri = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        match b {
            b'%' | b'?' | b'#' => uri.push_str(&format!("%{b:02X}")),
            _ => uri.push(b as char),
        }
    }
    uri.push_str(if pending { "?mode=ro" } else { "?immutable=1" });
    uri
}

/// Make a new state store at `path` whole or not at all: its tables are made in a temporary
/// file beside it, which is then renamed into place, so a run killed in its first moments
/// leaves either no store or a complete one.
fn create_atomically(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".state-new-")
        .tempfile_in(dir)
        .with_context(|| format!("creating the state store in {}", dir.display()))?;
    {
        let c = Connection::open(tmp.path())
            .with_context(|| format!("creating the state store {}", tmp.path().display()))?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.execute_batch(SCHEMA)
            .with_context(|| format!("creating the state store's tables in {}", path.display()))?;
    }
    tmp.as_file().sync_all()?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {}
        // Another run made it meanwhile: theirs is as good as ours.
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(anyhow::Error::new(e.error)
                .context(format!("creating the state store {}", path.display())));
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl StateStore {
    /// Open the store at `path`: created (with its directory) under apply; read-only, or
    /// absent, under a dry run.
    #[cfg(test)]
    pub fn open(path: &Path, dry_run: bool) -> Result<Self> {
        Self::open_at(&Location::File(path.to_path_buf()), dry_run, Sharing::Alone)
    }

    /// Open the store at `location`, for a run that shares its `each` steps' records as
    /// `sharing` says.
    pub fn open_at(location: &Location, dry_run: bool, sharing: Sharing) -> Result<Self> {
        let (db, path) = match location {
            Location::File(path) => (
                Self::open_sqlite(path, dry_run)?.map(Db::Sqlite),
                path.clone(),
            ),
            Location::Postgres { target, key } => (
                pg::PgStore::open(target, key, dry_run)?.map(|p| Db::Pg(Box::new(p))),
                PathBuf::from(location.shown()),
            ),
        };
        Ok(StateStore {
            db,
            path,
            dry_run,
            sharing,
            marks: HashMap::new(),
            unmarked: HashMap::new(),
            unwritten: 0,
            pending_since: None,
            cleared: HashSet::new(),
            run_id: None,
            progress: Progress::default(),
        })
    }

    fn open_sqlite(path: &Path, dry_run: bool) -> Result<Option<Connection>> {
        let conn = if dry_run {
            if path.exists() {
                let c = Connection::open_with_flags(
                    read_only_uri(path),
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )
                .with_context(|| format!("opening the state store {} read-only", path.display()))?;
                // A store without its tables (left by a run killed before they were made,
                // by an idem older than atomic creation) is as good as none.
                let made: i64 = c
                    .query_row(
                        "SELECT count(*) FROM sqlite_schema WHERE name IN ('runs', 'journal', 'checkpoints')",
                        [],
                        |r| r.get(0),
                    )
                    .with_context(|| format!("reading the state store {}", path.display()))?;
                (made == 3).then_some(c)
            } else {
                None
            }
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the state directory {}", dir.display()))?;
            }
            if !path.exists() {
                create_atomically(path)?;
            }
            let c = Connection::open(path)
                .with_context(|| format!("opening the state store {}", path.display()))?;
            c.busy_timeout(std::time::Duration::from_secs(30))?;
            c.pragma_update(None, "journal_mode", "WAL")
                .with_context(|| format!("setting WAL mode on {}", path.display()))?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.execute_batch(SCHEMA).with_context(|| {
                format!("creating the state store's tables in {}", path.display())
            })?;
            let mut c = c;
            migrate(&mut c, path)?;
            Some(c)
        };
        Ok(conn)
    }

    /// Under apply with the state in PostgreSQL: which server and database it is, and the
    /// state key, so that a target connection to that same database commits marks with its
    /// effects.
    pub fn pg_home(&self) -> Option<crate::cap::postgres::StateHome> {
        match (&self.db, self.dry_run) {
            (Some(Db::Pg(p)), false) => Some(crate::cap::postgres::StateHome {
                identity: p.identity.clone(),
                key: p.key().to_owned(),
            }),
            _ => None,
        }
    }

    /// Tell `progress` of the running step's checkpoint answers and marks.
    pub fn metered(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Record the start of a run; returns whether an earlier run was interrupted (it never
    /// recorded its end), in which case those runs are marked `interrupted`.
    ///
    /// Both happen in one transaction: were a run killed between them, the next run would find
    /// no unfinished run and skip sweeping the temporary files the first one left.
    pub fn begin_run(&mut self, mode: &str, plan: &str, plan_hash: &str) -> Result<bool> {
        let path = self.path.clone();
        self.begin_run_inner(mode, plan, plan_hash)
            .with_context(|| {
                format!(
                    "recording the run's start in the state store {}",
                    path.display()
                )
            })
    }

    fn begin_run_inner(&mut self, mode: &str, plan: &str, plan_hash: &str) -> Result<bool> {
        if self.dry_run {
            return Ok(false);
        }
        let c = match &mut self.db {
            None => return Ok(false),
            Some(Db::Pg(p)) => {
                let (id, interrupted) = p.begin_run(mode, plan, plan_hash)?;
                self.run_id = Some(id);
                return Ok(interrupted);
            }
            Some(Db::Sqlite(c)) => c,
        };
        let tx = c.transaction()?;
        let killed = tx.execute(
            "UPDATE runs SET outcome = 'interrupted' WHERE ended IS NULL AND outcome IS NULL",
            [],
        )?;
        // A run stopped by a signal recorded its end, but this run resumes it all the same.
        let stopped: bool = tx
            .query_row(
                "SELECT outcome = 'interrupted' FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get::<_, Option<bool>>(0),
            )
            .optional()?
            .flatten()
            .unwrap_or(false);
        let interrupted = killed > 0 || stopped;
        tx.execute(
            "INSERT INTO runs (started, mode, plan, plan_hash, pid, host, ci_run_id, ci_run_attempt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                timestamp(),
                mode,
                plan,
                plan_hash,
                std::process::id(),
                lock::hostname(),
                std::env::var("GITHUB_RUN_ID").ok(),
                std::env::var("GITHUB_RUN_ATTEMPT").ok(),
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()
            .with_context(|| format!("recording the run in {}", self.path.display()))?;
        self.run_id = Some(id);
        Ok(interrupted)
    }

    /// Record the end of the run, and why it failed when it did.
    pub fn finish_run(
        &mut self,
        outcome: &str,
        changes: usize,
        failure: Option<&RunFailure>,
    ) -> Result<()> {
        let path = self.path.clone();
        self.finish_run_inner(outcome, changes, failure)
            .with_context(|| {
                format!(
                    "recording the run's end in the state store {}",
                    path.display()
                )
            })
    }

    fn finish_run_inner(
        &mut self,
        outcome: &str,
        changes: usize,
        failure: Option<&RunFailure>,
    ) -> Result<()> {
        self.flush()?;
        if let (Some(Db::Pg(p)), Some(id), false) = (&self.db, self.run_id, self.dry_run) {
            return p.finish_run(id, outcome, changes, failure);
        }
        if let (Some(Db::Sqlite(c)), Some(id), false) = (&self.db, self.run_id, self.dry_run) {
            c.execute(
                "UPDATE runs SET ended = ?1, outcome = ?2, changes = ?3, error = ?4,
                 failed_step = ?5, failed_step_name = ?6 WHERE id = ?7",
                rusqlite::params![
                    timestamp(),
                    outcome,
                    changes as i64,
                    failure.map(|f| &f.error),
                    failure.and_then(|f| f.step).map(|s| s as i64),
                    failure.and_then(|f| f.step_name.as_ref()),
                    id
                ],
            )?;
        }
        Ok(())
    }

    /// Append a step's changes to the journal, in one transaction.
    pub fn journal(&mut self, step: usize, step_name: &str, changes: &[Change]) -> Result<()> {
        let path = self.path.clone();
        self.journal_inner(step, step_name, changes)
            .with_context(|| format!("writing the journal to the state store {}", path.display()))
    }

    fn journal_inner(&mut self, step: usize, step_name: &str, changes: &[Change]) -> Result<()> {
        let (Some(db), Some(run), false) = (&mut self.db, self.run_id, self.dry_run) else {
            return Ok(());
        };
        if changes.is_empty() {
            return Ok(());
        }
        let c = match db {
            Db::Pg(p) => return p.journal(run, step, step_name, changes),
            Db::Sqlite(c) => c,
        };
        let tx = c.transaction()?;
        {
            let at = timestamp();
            let mut s = tx.prepare_cached(
                "INSERT INTO journal (run_id, step, step_name, kind, target, rows, hash_before, hash_after, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for ch in changes {
                s.execute(rusqlite::params![
                    run,
                    step as i64,
                    step_name,
                    ch.kind.as_str(),
                    ch.journal_target(),
                    ch.rows.map(|r| r as i64),
                    ch.before,
                    ch.after,
                    at
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Which keys of `scope` are done.
    pub fn done(&self, scope: &str, keys: &[String]) -> Result<Vec<bool>> {
        let answers: Vec<bool> = self
            .values(scope, keys)?
            .iter()
            .map(Option::is_some)
            .collect();
        let skipped = answers.iter().filter(|&&d| d).count() as u64;
        self.progress.count_checkpoints(skipped, 0);
        Ok(answers)
    }

    /// Mark keys of `scope` done (buffered; see the module comment). A key marked already
    /// keeps its value.
    pub fn mark(&mut self, scope: &str, keys: &[String]) -> Result<()> {
        self.buffer(scope, keys.iter().map(|k| (k.clone(), None)))
    }

    /// Buffer marks, with their values when given (replacing a value already there), and
    /// write them once enough wait or the oldest has waited long enough.
    fn buffer(
        &mut self,
        scope: &str,
        entries: impl Iterator<Item = (String, Option<String>)>,
    ) -> Result<()> {
        let buffered = match self.marks.get_mut(scope) {
            Some(b) => b,
            None => self.marks.entry(scope.to_string()).or_default(),
        };
        let mut new = 0;
        let mut unmarked = self.unmarked.get_mut(scope);
        for (k, v) in entries {
            if let Some(u) = unmarked.as_mut() {
                u.remove(&k);
            }
            let was_there = buffered.contains_key(&k);
            if !was_there {
                new += 1;
            }
            if v.is_none() && was_there {
                continue;
            }
            buffered.insert(k, v);
            if !self.dry_run {
                self.unwritten += 1;
                self.pending_since
                    .get_or_insert_with(std::time::Instant::now);
            }
        }
        self.progress.count_checkpoints(0, new);
        let waited = self
            .pending_since
            .is_some_and(|t| t.elapsed() >= MARK_INTERVAL);
        if self.unwritten >= MARK_BATCH || waited {
            self.flush()?;
        }
        Ok(())
    }

    /// The value each key of `scope` was marked with: `None` when not marked, `Some("")`
    /// when marked without a value (by `mark`, or by an idem before values).
    pub fn values(&self, scope: &str, keys: &[String]) -> Result<Vec<Option<String>>> {
        let cleared = self.cleared.contains(scope);
        if let (Some(Db::Pg(p)), false) = (&self.db, cleared) {
            let buffered = self.marks.get(scope);
            let unbuffered: Vec<String> = keys
                .iter()
                .filter(|k| !buffered.is_some_and(|b| b.contains_key(*k)))
                .cloned()
                .collect();
            let mut stored = p.values(scope, &unbuffered)?.into_iter();
            return Ok(keys
                .iter()
                .map(|k| match buffered.and_then(|b| b.get(k)) {
                    Some(v) => Some(v.clone().unwrap_or_default()),
                    None => stored.next().flatten(),
                })
                .collect());
        }
        let conn = match &self.db {
            Some(Db::Sqlite(c)) if !cleared => Some(c),
            _ => None,
        };
        // A store not yet upgraded (read by a dry run) has no values: marks count as bare.
        let has_values = match conn {
            Some(c) => c
                .prepare_cached(
                    "SELECT 1 FROM pragma_table_info('checkpoints') WHERE name = 'value'",
                )?
                .exists([])?,
            None => false,
        };
        let sql = if has_values {
            "SELECT coalesce(value, '') FROM checkpoints WHERE scope = ?1 AND key = ?2"
        } else {
            "SELECT '' FROM checkpoints WHERE scope = ?1 AND key = ?2"
        };
        let mut stmt = match conn {
            Some(c) => Some(c.prepare_cached(sql)?),
            None => None,
        };
        let tx = match conn {
            Some(c) => Some(c.unchecked_transaction()?),
            None => None,
        };
        let buffered = self.marks.get(scope);
        let unmarked = self.unmarked.get(scope);
        let out: Result<Vec<Option<String>>> = keys
            .iter()
            .map(|k| {
                if unmarked.is_some_and(|u| u.contains(k)) {
                    return Ok(None);
                }
                if let Some(v) = buffered.and_then(|b| b.get(k)) {
                    return Ok(Some(v.clone().unwrap_or_default()));
                }
                match &mut stmt {
                    Some(s) => {
                        use rusqlite::OptionalExtension;
                        Ok(s.query_row((scope, k), |r| r.get::<_, String>(0))
                            .optional()?)
                    }
                    None => Ok(None),
                }
            })
            .collect();
        drop(stmt);
        if let Some(tx) = tx {
            tx.commit()?;
        }
        out
    }

    /// Mark keys of `scope` done, each with its value (replacing the value it had).
    pub fn mark_values(&mut self, scope: &str, entries: &[(String, String)]) -> Result<()> {
        self.buffer(
            scope,
            entries.iter().map(|(k, v)| (k.clone(), Some(v.clone()))),
        )
    }

    /// At most `limit` marks of `scope` whose keys sort after `after`, in key order, with
    /// their values (`""` for a bare mark). Under apply the buffer is written first, so the
    /// table holds every mark; under a dry run the table's marks are merged with the run's.
    pub fn list(
        &mut self,
        scope: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        self.flush()?;
        let cleared = self.cleared.contains(scope);
        let unmarked = self.unmarked.get(scope);
        let mut page: BTreeMap<String, String> = BTreeMap::new();
        if let Some(Db::Pg(p)) = self.db.as_ref().filter(|_| !cleared) {
            let wanted = limit + unmarked.map_or(0, HashSet::len);
            for (k, v) in p.list(scope, after, wanted)? {
                if unmarked.is_some_and(|u| u.contains(&k)) {
                    continue;
                }
                page.insert(k, v);
                if page.len() >= limit {
                    break;
                }
            }
        }
        if let Some(Db::Sqlite(c)) = self.db.as_ref().filter(|_| !cleared) {
            let has_values = c
                .prepare_cached(
                    "SELECT 1 FROM pragma_table_info('checkpoints') WHERE name = 'value'",
                )?
                .exists([])?;
            let value = if has_values {
                "coalesce(value, '')"
            } else {
                "''"
            };
            // Unmarked keys are skipped in the query's page, so ask for enough more.
            let wanted = limit + unmarked.map_or(0, HashSet::len);
            let mut s = c.prepare_cached(&format!(
                "SELECT key, {value} FROM checkpoints
                 WHERE scope = ?1 AND (?2 IS NULL OR key > ?2) ORDER BY key LIMIT ?3"
            ))?;
            let rows = s.query_map(rusqlite::params![scope, after, wanted as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (k, v) = row?;
                if unmarked.is_some_and(|u| u.contains(&k)) {
                    continue;
                }
                page.insert(k, v);
                if page.len() >= limit {
                    break;
                }
            }
        }
        if let Some(buffered) = self.marks.get(scope) {
            let range = match after {
                Some(a) => buffered
                    .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                None => buffered.range::<str, _>(..),
            };
            for (k, v) in range.take(limit) {
                page.insert(k.clone(), v.clone().unwrap_or_default());
            }
        }
        Ok(page.into_iter().take(limit).collect())
    }

    /// Forget the marks of `keys` in `scope`: deleted from the table under apply, remembered
    /// as forgotten for the rest of a dry run.
    pub fn unmark(&mut self, scope: &str, keys: &[String]) -> Result<()> {
        if let Some(buffered) = self.marks.get_mut(scope) {
            // `unwritten` may now count a few marks too many: an early flush, no harm.
            for k in keys {
                buffered.remove(k);
            }
        }
        if self.dry_run {
            self.unmarked
                .entry(scope.to_string())
                .or_default()
                .extend(keys.iter().cloned());
        } else if let Some(Db::Pg(p)) = &self.db {
            p.unmark(scope, keys)?;
        } else if let Some(Db::Sqlite(c)) = &mut self.db {
            let tx = c.transaction()?;
            {
                let mut s =
                    tx.prepare_cached("DELETE FROM checkpoints WHERE scope = ?1 AND key = ?2")?;
                for k in keys {
                    s.execute((scope, k))?;
                }
            }
            tx.commit()
                .with_context(|| format!("forgetting checkpoints in {}", self.path.display()))?;
        }
        Ok(())
    }

    /// Which of `entries` (key, the mark the caller saw) this run processes: all alone;
    /// under `--shard`, those of its shard; cooperating, those it claims in the PostgreSQL
    /// store and whose marks are still as seen. A dry run claims nothing: it predicts the
    /// records that need work, whoever would take them.
    pub fn claim(
        &mut self,
        scope: &str,
        entries: &[(String, Option<String>)],
    ) -> Result<Vec<bool>> {
        match self.sharing {
            Sharing::Alone => Ok(vec![true; entries.len()]),
            Sharing::Shard { index, count } => Ok(entries
                .iter()
                .map(|(k, _)| shard_of(k, count) + 1 == index)
                .collect()),
            Sharing::Cooperate => match (&self.db, self.dry_run) {
                (Some(Db::Pg(p)), false) => p.claim(scope, entries),
                (_, true) => Ok(vec![true; entries.len()]),
                _ => anyhow::bail!(
                    "--cooperate needs the state in PostgreSQL (--state postgres://…), which \
                     every runner reaches; {} is a file of this runner's",
                    self.path.display()
                ),
            },
        }
    }

    /// Forget every mark of `scope`.
    pub fn clear(&mut self, scope: &str) -> Result<()> {
        self.flush()?;
        self.marks.remove(scope);
        self.unmarked.remove(scope);
        if self.dry_run {
            self.cleared.insert(scope.to_string());
        } else {
            match &self.db {
                Some(Db::Sqlite(c)) => {
                    c.execute("DELETE FROM checkpoints WHERE scope = ?1", [scope])?;
                }
                Some(Db::Pg(p)) => p.clear(scope)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Write buffered marks in one transaction.
    pub fn flush(&mut self) -> Result<()> {
        if self.dry_run || self.unwritten == 0 {
            return Ok(());
        }
        let c = match &mut self.db {
            None => return Ok(()),
            Some(Db::Pg(p)) => {
                p.write(&self.marks)?;
                self.unwritten = 0;
                self.pending_since = None;
                self.marks.clear();
                return Ok(());
            }
            Some(Db::Sqlite(c)) => c,
        };
        let tx = c.transaction()?;
        {
            // A bare mark never clears a value a mark with a value set.
            let mut s = tx.prepare_cached(
                "INSERT INTO checkpoints (scope, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value
                 WHERE excluded.value IS NOT NULL",
            )?;
            for (scope, keys) in &self.marks {
                for (key, value) in keys {
                    s.execute((scope, key, value))?;
                }
            }
        }
        tx.commit()
            .with_context(|| format!("writing checkpoints to {}", self.path.display()))?;
        self.unwritten = 0;
        self.pending_since = None;
        // Written marks are found in the table from now on.
        self.marks.clear();
        Ok(())
    }

    /// Recent runs, newest first, with their journals, as `filter` selects them.
    pub fn history(&self, filter: &HistoryFilter) -> Result<Vec<RunRecord>> {
        let c = match &self.db {
            None => return Ok(Vec::new()),
            Some(Db::Pg(p)) => return p.history(filter),
            Some(Db::Sqlite(c)) => c,
        };
        // A store written before migration 1 (read without upgrading it: history opens it
        // read-only) has no failure columns; its runs show none.
        let has_failure: bool = c
            .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'error'")?
            .exists([])?;
        let failure_columns = if has_failure {
            "error, failed_step, failed_step_name"
        } else {
            "NULL, NULL, NULL"
        };
        // A run without an end is shown as interrupted when nobody holds the lock (below), so
        // `--failed` takes it in too; the lock decides afterwards.
        let failed = if filter.failed {
            "AND (outcome IS NULL OR outcome <> 'ok')"
        } else {
            ""
        };
        let since = if filter.since.is_some() {
            "AND started >= ?2"
        } else {
            "AND ?2 IS NULL"
        };
        let limit = if filter.limit == 0 {
            -1
        } else {
            filter.limit as i64
        };
        let mut s = c.prepare(&format!(
            "SELECT id, started, ended, mode, plan, outcome, changes, ci_run_id, ci_run_attempt,
                    {failure_columns}
             FROM runs WHERE 1 {failed} {since} ORDER BY id DESC LIMIT ?1"
        ))?;
        let mut runs = s
            .query_map(rusqlite::params![limit, filter.since], |r| {
                let error: Option<String> = r.get(9)?;
                Ok(RunRecord {
                    id: r.get(0)?,
                    started: r.get(1)?,
                    ended: r.get(2)?,
                    mode: r.get(3)?,
                    plan: r.get(4)?,
                    outcome: r.get(5)?,
                    changes: r.get(6)?,
                    ci_run_id: r.get(7)?,
                    ci_run_attempt: r.get(8)?,
                    failure: match error {
                        Some(error) => Some(RunFailure {
                            error,
                            step: r.get::<_, Option<i64>>(10)?.map(|s| s as usize),
                            step_name: r.get(11)?,
                        }),
                        None => None,
                    },
                    journal: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // A run that never recorded its end is either still going (it holds the run lock) or
        // was killed; the next apply marks it `interrupted`, and history says so already.
        let unfinished = |r: &RunRecord| r.ended.is_none() && r.outcome.is_none();
        if runs.iter().any(unfinished) {
            if lock::is_held(&lock::lock_path(&self.path)) {
                if filter.failed {
                    runs.retain(|r| !unfinished(r));
                }
            } else {
                for r in runs.iter_mut().filter(|r| unfinished(r)) {
                    r.outcome = Some("interrupted".into());
                }
            }
        }
        let mut j = c.prepare(
            "SELECT step, step_name, kind, target, rows, hash_before, hash_after, at
             FROM journal WHERE run_id = ?1 ORDER BY id",
        )?;
        for run in &mut runs {
            run.journal = j
                .query_map([run.id], |r| {
                    Ok(JournalEntry {
                        step: r.get(0)?,
                        step_name: r.get(1)?,
                        kind: r.get(2)?,
                        target: r.get(3)?,
                        rows: r.get(4)?,
                        hash_before: r.get(5)?,
                        hash_after: r.get(6)?,
                        at: r.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_creates_no_file_beside_the_state_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("we?ird#name%.db");
        {
            let mut s = StateStore::open(&path, false).unwrap();
            s.begin_run("apply", "p", "h").unwrap();
            s.mark("scope", &["k".to_string()]).unwrap();
            s.finish_run("ok", 0, None).unwrap();
        }
        let listing = || {
            let mut v: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let before = listing();
        let s = StateStore::open(&path, true).unwrap();
        assert_eq!(s.done("scope", &["k".to_string()]).unwrap(), [true]);
        drop(s);
        assert_eq!(listing(), before);
    }

    /// Issue 14: a run killed before the store's tables existed left a file that made every
    /// later dry run and `history` fail with "no such table".
    #[test]
    fn an_empty_or_half_made_store_reads_as_new_and_is_completed_by_an_apply() {
        // Empty, or killed after the first of the tables (each CREATE is atomic by itself).
        let first_table = format!("{};", SCHEMA.split(';').next().unwrap());
        for seed in ["", first_table.as_str()] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            {
                let c = Connection::open(&path).unwrap();
                c.execute_batch(seed).unwrap();
            }
            let s = StateStore::open(&path, true).unwrap();
            assert!(
                s.history(&HistoryFilter {
                    limit: 5,
                    failed: false,
                    since: None
                })
                .unwrap()
                .is_empty(),
                "seed {seed:?}"
            );
            assert_eq!(s.done("x", &["k".into()]).unwrap(), [false]);
            drop(s);
            let mut s = StateStore::open(&path, false).unwrap();
            s.begin_run("apply", "p", "h").unwrap();
            s.finish_run("ok", 0, None).unwrap();
            assert_eq!(
                StateStore::open(&path, true)
                    .unwrap()
                    .history(&HistoryFilter {
                        limit: 5,
                        failed: false,
                        since: None
                    })
                    .unwrap()
                    .len(),
                1
            );
        }
    }

    #[test]
    fn a_new_store_is_made_whole_leaving_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        StateStore::open(&path, false).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
            .collect();
        assert_eq!(names, ["state.db"]);
    }

    #[test]
    fn a_store_of_the_first_schema_is_read_as_it_is_and_upgraded_by_the_next_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute(
                "INSERT INTO runs (started, ended, mode, plan, plan_hash, outcome, changes, pid, host)
                 VALUES ('2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z', 'apply', 'old.yml',
                         'h', 'failed', 0, 1, 'x')",
                [],
            )
            .unwrap();
        }
        let all = HistoryFilter::default();
        let old = StateStore::open(&path, true)
            .unwrap()
            .history(&all)
            .unwrap();
        assert_eq!((old[0].plan.as_str(), &old[0].failure), ("old.yml", &None));
        let mut s = StateStore::open(&path, false).unwrap();
        s.begin_run("apply", "new.yml", "h").unwrap();
        let failure = RunFailure {
            error: "boom".into(),
            step: Some(2),
            step_name: Some("file x".into()),
        };
        s.finish_run("failed", 0, Some(&failure)).unwrap();
        let failed = HistoryFilter {
            failed: true,
            ..Default::default()
        };
        let runs = s.history(&failed).unwrap();
        assert_eq!(runs.len(), 2, "both failed runs, old and new");
        assert_eq!(runs[0].failure.as_ref(), Some(&failure));
        assert_eq!(runs[1].plan, "old.yml");
    }

    #[test]
    fn shards_split_keys_evenly_and_stably() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[shard_of(&i.to_string(), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        // Stable across builds: the split of a matrix must not move between releases.
        assert_eq!(shard_of("42", 4), shard_of("42", 4));
        assert_eq!(shard_of("", 1), 0);
    }

    #[test]
    fn a_run_alone_takes_every_key_and_a_shard_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<(String, Option<String>)> =
            (0..100).map(|i| (i.to_string(), None)).collect();
        let mut alone = StateStore::open(&dir.path().join("a.db"), false).unwrap();
        assert!(alone.claim("s", &entries).unwrap().iter().all(|&t| t));
        let mut taken = vec![0; 100];
        for index in 1..=3 {
            let mut s = StateStore::open_at(
                &Location::File(dir.path().join(format!("{index}.db"))),
                false,
                Sharing::Shard { index, count: 3 },
            )
            .unwrap();
            for (i, t) in s.claim("s", &entries).unwrap().into_iter().enumerate() {
                taken[i] += u32::from(t);
            }
        }
        assert!(
            taken.iter().all(|&n| n == 1),
            "every key in exactly one shard"
        );
        let mut lone_cooperator = StateStore::open_at(
            &Location::File(dir.path().join("c.db")),
            false,
            Sharing::Cooperate,
        )
        .unwrap();
        let e = lone_cooperator.claim("s", &entries).unwrap_err();
        assert!(
            format!("{e:#}").contains("needs the state in PostgreSQL"),
            "{e:#}"
        );
    }

    #[test]
    fn formats_unix_time_as_rfc3339() {
        assert_eq!(format_time(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_time(1_764_198_000, 0), "2025-11-26T23:00:00.000Z");
    }

    #[test]
    fn checkpoints_survive_reopening_and_dry_runs_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".idem/state.db");
        let keys = vec!["a".to_string(), "b".to_string()];
        {
            let mut s = StateStore::open(&path, false).unwrap();
            s.begin_run("apply", "idem.yml", "h").unwrap();
            s.mark("scope", &keys[..1]).unwrap();
            assert_eq!(s.done("scope", &keys).unwrap(), [true, false]);
            s.finish_run("ok", 0, None).unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        {
            let mut s = StateStore::open(&path, true).unwrap();
            assert_eq!(s.done("scope", &keys).unwrap(), [true, false]);
            s.mark("scope", &keys[1..]).unwrap();
            assert_eq!(s.done("scope", &keys).unwrap(), [true, true]);
            s.clear("scope").unwrap();
            assert_eq!(s.done("scope", &keys).unwrap(), [false, false]);
            s.finish_run("ok", 0, None).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let s = StateStore::open(&path, false).unwrap();
        assert_eq!(s.done("scope", &keys).unwrap(), [true, false]);
    }

    #[test]
    fn an_unfinished_run_is_reported_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut s = StateStore::open(&path, false).unwrap();
        assert!(!s.begin_run("apply", "p", "h").unwrap());
        drop(s);
        let mut s = StateStore::open(&path, false).unwrap();
        assert!(s.begin_run("apply", "p", "h").unwrap());
        let h = s.history(&HistoryFilter::default()).unwrap();
        assert_eq!(h[1].outcome.as_deref(), Some("interrupted"));
    }

    #[test]
    fn history_shows_an_unfinished_run_as_running_only_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let lock = lock::RunLock::exclusive(
            &lock::lock_path(&path),
            std::time::Duration::ZERO,
            dir.path(),
        )
        .unwrap();
        let mut s = StateStore::open(&path, false).unwrap();
        s.begin_run("apply", "p", "h").unwrap();
        let reader = StateStore::open(&path, true).unwrap();
        assert_eq!(
            reader
                .history(&HistoryFilter {
                    limit: 1,
                    ..Default::default()
                })
                .unwrap()[0]
                .outcome,
            None,
            "still going"
        );
        drop(lock);
        assert_eq!(
            reader
                .history(&HistoryFilter {
                    limit: 1,
                    ..Default::default()
                })
                .unwrap()[0]
                .outcome
                .as_deref(),
            Some("interrupted")
        );
    }

    #[test]
    fn marks_are_written_once_the_oldest_has_waited_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut s = StateStore::open(&path, false).unwrap();
        s.begin_run("apply", "p", "h").unwrap();
        let written = |path: &Path| -> i64 {
            let c = Connection::open(path).unwrap();
            c.query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0))
                .unwrap()
        };
        s.mark("scope", &["a".to_string()]).unwrap();
        assert_eq!(written(&path), 0, "one fresh mark waits for its batch");
        std::thread::sleep(MARK_INTERVAL);
        s.mark("scope", &["b".to_string()]).unwrap();
        assert_eq!(
            written(&path),
            2,
            "the batch is written once its oldest mark has waited"
        );
    }
}
