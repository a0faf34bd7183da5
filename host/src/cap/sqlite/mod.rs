//! The SQLite capability: databases stored as files under the root.
//!
//! It owns one connection per database file for each scope of work: the standard operations
//! share one set for the whole run; a plugin step gets a set of its own ([`Databases::lend`]),
//! which ends with the step, so TEMP triggers, pragmas and any other connection state a
//! plugin creates never reach a later step. Before opening, the view checks the path against
//! the step's policy (inside the root, named by the step when the step is a plugin) and asks
//! the file capability whether a file is there. Every guest statement is prepared under the
//! [`authorizer`], and the connection's attached-database limit is 0.
//!
//! How a database is backed is chosen once per run ([`Backing`]): under apply, the file
//! itself; under a dry run, a private copy in a temporary directory outside the root (the
//! file and its journal or write-ahead log, copied without SQLite touching the original; or
//! the bytes an earlier step planned there; or nothing, for a new database). Statements run
//! for real either way, so counts and errors are exact; under a dry run the file is never
//! opened by SQLite at all, and the copy lives on disk, not in memory. The view shows each
//! copy to the file capability as the planned file at its path, and before each use checks
//! that no step removed or replaced the file since ([`Databases::refresh`]).

mod authorizer;
mod host;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};

pub use host::SqliteView;

use self::authorizer::Guard;
use crate::bindings::sqlite::{Row, Rows, Value};
use crate::bindings::types::{Error, SqliteError};
use crate::cap::PathProbe;
use crate::cap::resources::StmtHandle;
use crate::change::{Change, ChangeKind};
use crate::policy::RelPath;

/// The result of a capability call as the guest sees it.
pub type CapResult<T> = Result<T, Error>;

/// The most a query's result may hold, in bytes of values: the host holds the whole result
/// before handing it over, so a query of huge blobs must not take the host's memory.
const QUERY_BYTES: usize = 64 << 20;

/// The longest string or blob a plugin's statement may make (`SQLITE_LIMIT_LENGTH`):
/// `zeroblob(10_000_000_000)` needs no table.
const PLUGIN_VALUE_BYTES: i32 = 64 << 20;

/// What a database handle opens: chosen once per run from its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// The file itself (apply).
    File,
    /// A private in-memory copy (dry run): nothing reaches the file.
    PrivateCopy,
}

struct Db {
    path: RelPath,
    conn: Connection,
    guard: Guard,
    /// Under a dry run, the private copy the connection writes.
    copy: Option<Arc<PathBuf>>,
    /// Under apply, the file's device and inode when opened.
    identity: Option<(u64, u64)>,
    /// The file capability's count of removals and replacements when last checked.
    seen: u64,
    /// Under a dry run: written since last shown as the planned file; ever shown.
    dirty: bool,
    mirrored: bool,
    in_tx: bool,
    /// Rows changed by guest statements since the changes were last taken.
    rows: u64,
    schema_changed: bool,
    created: bool,
    /// Counters at `begin`, restored by `rollback`.
    saved: Option<(u64, bool)>,
}

/// The SQLite capability's state for one scope of work (the run, or one plugin step).
pub struct Databases {
    dbs: Vec<Db>,
    by_path: HashMap<RelPath, usize>,
    backing: Backing,
    /// The root, canonical, for SQLite (which takes paths, not directory handles).
    root_path: PathBuf,
    /// Changes of a finished plugin step, not yet taken.
    adopted: Vec<Change>,
    /// Databases on which a finished plugin step left a transaction open (rolled back).
    abandoned: Vec<String>,
    /// When this scope's time runs out: statements still running then are interrupted.
    deadline: Option<Instant>,
    /// Set when a statement was interrupted at the deadline.
    interrupted: Arc<AtomicBool>,
    /// Under a dry run, the directory of the private copies (shared with lent scopes).
    scratch: Option<Arc<tempfile::TempDir>>,
    scratch_files: u64,
}

/// What is at a database's path as the file capability sees it, to open it from.
pub enum Source {
    /// Nothing: the database is created.
    Absent,
    /// The file on disk.
    Disk,
    /// Bytes a dry run planned there.
    Bytes(Arc<Vec<u8>>),
    /// A dry run's private copy of a database.
    Copy(Arc<PathBuf>),
}

/// A connection just opened, and what it is a connection to.
struct Opened {
    conn: Connection,
    guard: Guard,
    copy: Option<Arc<PathBuf>>,
    identity: Option<(u64, u64)>,
    seen: u64,
}

/// The device and inode of the file at `path` (not following a link).
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Copy `from` to `to`, refusing a symbolic link at `from`.
fn copy_nofollow(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)?;
    if !src.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut dst = std::fs::File::create(to)?;
    std::io::copy(&mut src, &mut dst)?;
    Ok(())
}

/// An error opening `path` as a database, saying so when it is not one.
fn not_a_database(path: &RelPath, e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            Error::Invalid(format!("{path} is not a SQLite database"))
        }
        e => sql_error(path, e, false),
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn value_of(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Map a SQLite error on database `path` to the guest's error. `denied` says whether the
/// authorizer refused part of the statement: that, not SQLite's wording, makes a denial.
fn sql_error(path: &RelPath, e: rusqlite::Error, denied: bool) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let message = msg.unwrap_or_else(|| f.to_string());
            if denied || f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied {
                return Error::Denied(format!(
                    "{path}: statement not allowed: it reaches beyond this database or controls transactions ({message}); use begin/commit/rollback"
                ));
            }
            Error::Sqlite(SqliteError {
                code: f.extended_code,
                message: format!("{path}: {message}"),
            })
        }
        // Errors SQLite can place in the SQL text (an unauthorized function, say) come this way.
        rusqlite::Error::SqlInputError { error, msg, .. } => sql_error(
            path,
            rusqlite::Error::SqliteFailure(error, Some(msg)),
            denied,
        ),
        rusqlite::Error::MultipleStatement => {
            Error::Invalid(format!("{path}: one statement per call, please"))
        }
        rusqlite::Error::ExecuteReturnedResults => {
            Error::Invalid(format!("{path}: the statement returns rows; use query"))
        }
        rusqlite::Error::InvalidParameterCount(got, want) => Error::Invalid(format!(
            "{path}: the statement takes {want} parameters, {got} given"
        )),
        other => Error::Invalid(format!("{path}: {other}")),
    }
}

impl Db {
    /// Map an error of a guest statement, consulting the authorizer.
    fn error(&self, e: rusqlite::Error) -> Error {
        sql_error(&self.path, e, self.guard.take_denied())
    }

    /// Run host statements with the authorizer's blessing.
    fn internal<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> CapResult<T> {
        self.guard
            .as_host(|| f(&self.conn))
            .map_err(|e| sql_error(&self.path, e, false))
    }

    fn schema_version(&self) -> CapResult<i64> {
        self.internal(|c| c.query_row("PRAGMA schema_version", [], |r| r.get(0)))
    }
}

/// Copy the whole of `src` into `dst` (SQLite's online backup).
fn copy_database(src: &Connection, dst: &mut Connection) -> rusqlite::Result<()> {
    rusqlite::backup::Backup::new(src, dst)?.run_to_completion(
        1024,
        std::time::Duration::ZERO,
        None,
    )
}

impl Databases {
    pub fn new(root_path: PathBuf, backing: Backing) -> Self {
        Databases {
            dbs: Vec::new(),
            by_path: HashMap::new(),
            backing,
            root_path,
            adopted: Vec::new(),
            abandoned: Vec::new(),
            deadline: None,
            interrupted: Arc::new(AtomicBool::new(false)),
            scratch: None,
            scratch_files: 0,
        }
    }

    /// Whether a statement of this scope was interrupted at its deadline.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    fn db(&mut self, h: usize) -> CapResult<&mut Db> {
        self.dbs
            .get_mut(h)
            .ok_or_else(|| Error::Invalid("closed database handle".into()))
    }

    /// A fresh connection, configured for guests: busy timeout, no attachments, the
    /// authorizer, and the scope's deadline.
    fn configure(&self, path: &RelPath, mut conn: Connection) -> CapResult<(Connection, Guard)> {
        let guard = Guard::default();
        let g = guard.clone();
        let e = |e| sql_error(path, e, false);
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(e)?;
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0).map_err(e)?;
        // Defensive: no writable_schema, no writes to shadow tables, nothing that can corrupt
        // the file by design; and functions named in a schema run only if harmless.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
            .map_err(e)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
            .map_err(e)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
            g.authorize(ctx)
        }))
        .map_err(e)?;
        if self.deadline.is_some() {
            conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, PLUGIN_VALUE_BYTES)
                .map_err(e)?;
            conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, PLUGIN_VALUE_BYTES)
                .map_err(e)?;
        }
        if let Some(deadline) = self.deadline {
            // A statement that is still running at the deadline (an endless recursive query,
            // say) is interrupted: the host is blocked in it, where no epoch reaches.
            let flag = self.interrupted.clone();
            conn.progress_handler(
                1000,
                Some(move || {
                    let late = Instant::now() >= deadline;
                    if late {
                        flag.store(true, Ordering::Relaxed);
                    }
                    late
                }),
            )
            .map_err(e)?;
        }
        Ok((conn, guard))
    }

    fn push(&mut self, path: RelPath, opened: Opened, created: bool) -> usize {
        let i = self.dbs.len();
        self.dbs.push(Db {
            path: path.clone(),
            conn: opened.conn,
            guard: opened.guard,
            copy: opened.copy,
            identity: opened.identity,
            seen: opened.seen,
            dirty: created,
            mirrored: false,
            in_tx: false,
            rows: 0,
            schema_changed: false,
            created,
            saved: None,
        });
        self.by_path.insert(path, i);
        i
    }

    /// A new private copy's file name in the run's scratch directory (made on first use).
    fn scratch_file(&mut self) -> CapResult<PathBuf> {
        if self.scratch.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("idem-dry-run-")
                .tempdir()
                .map_err(|e| {
                    Error::Io(format!(
                        "making a directory for the dry run's database copies: {e}"
                    ))
                })?;
            self.scratch = Some(Arc::new(dir));
        }
        self.scratch_files += 1;
        let dir = self.scratch.as_ref().expect("made above").path();
        Ok(dir.join(format!("{}.db", self.scratch_files)))
    }

    /// Open a connection to `file` (a database file under the root under apply, a private
    /// copy under a dry run), configured for guests.
    fn connect(&self, path: &RelPath, file: &Path) -> CapResult<(Connection, Guard)> {
        let conn = Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|e| sql_error(path, e, false))?;
        self.configure(path, conn)
    }

    /// A private copy of what is at `path` for this dry run: `source` says what that is.
    fn private_copy(&mut self, path: &RelPath, source: &Source) -> CapResult<Opened> {
        let copy = self.scratch_file()?;
        let io = |what: &str, e: std::io::Error| Error::Io(format!("{path}: {what}: {e}"));
        match source {
            Source::Absent => {}
            Source::Bytes(b) => std::fs::write(&copy, b.as_slice())
                .map_err(|e| io("copying its planned content", e))?,
            Source::Copy(other) => {
                std::fs::copy(other.as_path(), &copy)
                    .map_err(|e| io("copying its planned content", e))?;
            }
            Source::Disk => {
                // The file and the journal or write-ahead log beside it: SQLite then rolls
                // back a hot journal, or reads the log, in the copy; nothing is created or
                // changed beside the original.
                let real = self.root_path.join(path.as_str());
                copy_nofollow(&real, &copy).map_err(|e| io("copying it for the dry run", e))?;
                for side in ["-journal", "-wal"] {
                    let mut from = real.clone().into_os_string();
                    from.push(side);
                    let mut to = copy.clone().into_os_string();
                    to.push(side);
                    match copy_nofollow(Path::new(&from), Path::new(&to)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io("copying its journal for the dry run", e)),
                    }
                }
            }
        }
        let (conn, guard) = self.connect(path, &copy)?;
        // Committed pages go to the copy itself, so it is the planned file as it stands.
        guard
            .as_host(|| conn.pragma_update(None, "journal_mode", "DELETE"))
            .map_err(|e| not_a_database(path, e))?;
        Ok(Opened {
            conn,
            guard,
            copy: Some(Arc::new(copy)),
            identity: None,
            seen: 0,
        })
    }

    /// Open what is at `path` as `backing` says, and check that it is a database.
    fn open_fresh(&mut self, path: &RelPath, source: &Source, seen: u64) -> CapResult<Opened> {
        let mut opened = match self.backing {
            Backing::PrivateCopy => self.private_copy(path, source)?,
            Backing::File => {
                let real = self.root_path.join(path.as_str());
                let (conn, guard) = self.connect(path, &real)?;
                Opened {
                    conn,
                    guard,
                    copy: None,
                    identity: identity(&real),
                    seen: 0,
                }
            }
        };
        opened.seen = seen;
        // Verify it is a database now, not at the first statement: a clear error at open.
        if !matches!(source, Source::Absent) {
            opened
                .guard
                .as_host(|| {
                    opened
                        .conn
                        .query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
                })
                .map_err(|e| not_a_database(path, e))?;
        }
        Ok(opened)
    }

    /// Open the database at `path` (already checked against the policy), reusing this
    /// scope's connection when it is still the file at that path. `source` is what the file
    /// capability sees there (under a dry run, with its planned content); `seen` its count of
    /// removals and replacements now.
    pub fn open(&mut self, path: RelPath, source: Source, seen: u64) -> CapResult<usize> {
        if let Some(&i) = self.by_path.get(&path) {
            self.refresh(i, &source, seen)?;
            return Ok(i);
        }
        let created = matches!(source, Source::Absent);
        let opened = self.open_fresh(&path, &source, seen)?;
        Ok(self.push(path, opened, created))
    }

    /// Every database this scope opened (under a dry run, with those of plugin steps it
    /// adopted), as paths under the root.
    pub fn opened(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.by_path.keys().map(|p| p.as_str().to_owned()).collect();
        paths.sort();
        paths
    }

    /// The count of tree changes this connection last checked against.
    pub fn seen(&self, h: usize) -> Option<u64> {
        self.dbs.get(h).map(|d| d.seen)
    }

    /// The path of an open database.
    pub fn path_of(&self, h: usize) -> Option<&RelPath> {
        self.dbs.get(h).map(|d| &d.path)
    }

    /// Under a dry run, a database written since it was last shown as the planned file: its
    /// path and private copy, to show now.
    pub fn take_dirty(&mut self, h: usize) -> Option<(RelPath, Arc<PathBuf>)> {
        let db = self.dbs.get_mut(h)?;
        let copy = db.copy.clone()?;
        if !db.dirty {
            return None;
        }
        db.dirty = false;
        db.mirrored = true;
        Some((db.path.clone(), copy))
    }

    /// Make sure connection `h` is still the database at its path, after the tree changed
    /// (`seen` moved): a file a step removed or replaced is not what the connection holds.
    /// Under apply, the file's identity tells; under a dry run, what the file capability
    /// plans there. A stale connection is replaced: a removed database is created anew (and
    /// reported so), a replaced one is opened as it now is.
    pub fn refresh(&mut self, h: usize, source: &Source, seen: u64) -> CapResult<()> {
        let root = self.root_path.clone();
        let db = self.db(h)?;
        if db.seen == seen {
            return Ok(());
        }
        db.seen = seen;
        let current = match (&db.copy, source) {
            (Some(mine), Source::Copy(there)) => Arc::ptr_eq(mine, there) || mine == there,
            // A copy never written is still the file on disk.
            (Some(_), Source::Disk) => !db.mirrored,
            (Some(_), _) => false,
            (None, _) => {
                let real = root.join(db.path.as_str());
                db.identity.is_some() && identity(&real) == db.identity
            }
        };
        if current {
            return Ok(());
        }
        let path = db.path.clone();
        let opened = self.open_fresh(&path, source, seen)?;
        let db = &mut self.dbs[h];
        tracing::debug!(db = %path, "the database file was removed or replaced; reopened it");
        db.conn = opened.conn;
        db.guard = opened.guard;
        db.copy = opened.copy;
        db.identity = opened.identity;
        db.in_tx = false;
        db.saved = None;
        db.mirrored = false;
        if matches!(source, Source::Absent) {
            db.created = true;
            db.dirty = true;
        }
        Ok(())
    }

    /// A set of connections of its own for one plugin step, for the databases it names.
    /// Under a dry run each starts as a copy of this scope's planned database, so the step
    /// sees what earlier steps planned; under apply it opens the files afresh.
    pub fn lend(&mut self, names: &[RelPath], deadline: Option<Instant>) -> CapResult<Databases> {
        let mut child = Databases::new(self.root_path.clone(), self.backing);
        child.deadline = deadline;
        child.scratch = self.scratch.clone();
        child.scratch_files = self.scratch_files + 1_000_000;
        if self.backing == Backing::PrivateCopy {
            for name in names {
                let Some(&i) = self.by_path.get(name) else {
                    continue;
                };
                let Some(copy) = self.dbs[i].copy.clone() else {
                    continue;
                };
                let seen = self.dbs[i].seen;
                let opened = child.private_copy(name, &Source::Copy(copy))?;
                let idx = child.push(name.clone(), opened, false);
                child.dbs[idx].seen = seen;
            }
        }
        Ok(child)
    }

    /// Take back what a plugin step's connections did, once the step has ended: a
    /// transaction it left open is rolled back (and reported by
    /// [`Databases::abandon_open_transactions`]), its changes join this scope's, and under a
    /// dry run its planned databases replace this scope's copies (shown as files through
    /// `files`). Its connections close here.
    pub fn adopt(&mut self, mut child: Databases, files: &mut dyn PathProbe) -> CapResult<()> {
        self.abandoned.extend(child.abandon_open_transactions());
        self.adopted.extend(child.take_changes());
        if self.backing == Backing::PrivateCopy {
            for db in &child.dbs {
                let i = match self.by_path.get(&db.path) {
                    Some(&i) => i,
                    None => {
                        let opened = self.private_copy(&db.path, &Source::Absent)?;
                        self.push(db.path.clone(), opened, false)
                    }
                };
                let mine = &mut self.dbs[i];
                let e = |e| sql_error(&db.path, e, false);
                db.guard
                    .as_host(|| copy_database(&db.conn, &mut mine.conn))
                    .map_err(e)?;
                mine.seen = files.generation();
                if let Some(copy) = mine.copy.clone() {
                    files.mirror(&db.path, copy);
                }
            }
        }
        for db in &child.dbs {
            if let Some(copy) = &db.copy {
                let _ = std::fs::remove_file(copy.as_path());
            }
        }
        Ok(())
    }

    /// `database.execute`.
    pub fn execute(&mut self, h: usize, sql: &str, params: &[Value]) -> CapResult<u64> {
        let db = self.db(h)?;
        let before = db.schema_version()?;
        let changed = (|| {
            let mut stmt = db.conn.prepare_cached(sql)?;
            let readonly = stmt.readonly();
            let total = db.conn.total_changes();
            let n = stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64;
            // sqlite3_changes() is not reset by a statement that changes no rows (CREATE
            // TABLE): it still says what the last INSERT did. The total's growth says
            // whether this statement changed any.
            let grew = db.conn.total_changes() - total;
            Ok(if readonly { 0 } else { n.min(grew) })
        })()
        .map_err(|e| db.error(e))?;
        db.rows += changed;
        if db.schema_version()? != before {
            db.schema_changed = true;
            db.dirty = true;
        }
        db.dirty |= changed > 0;
        Ok(changed)
    }

    /// `database.query` and `statement.query`: read-only statements only.
    pub fn query(&mut self, h: usize, sql: &str, params: &[Value]) -> CapResult<Rows> {
        let db = self.db(h)?;
        let mut stmt = db.conn.prepare_cached(sql).map_err(|e| db.error(e))?;
        if !stmt.readonly() {
            return Err(Error::Invalid(format!(
                "{}: query takes read-only statements; use execute to change data",
                db.path
            )));
        }
        let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let n = columns.len();
        let mut bytes = 0usize;
        let mut too_big = false;
        let result = (|| {
            let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut r: Row = Vec::with_capacity(n);
                for i in 0..n {
                    let v = row.get_ref(i)?;
                    bytes += 16
                        + match v {
                            ValueRef::Text(t) | ValueRef::Blob(t) => t.len(),
                            _ => 0,
                        };
                    if bytes > QUERY_BYTES {
                        too_big = true;
                        return Ok(out);
                    }
                    r.push(value_of(v));
                }
                out.push(r);
            }
            Ok(out)
        })();
        drop(stmt);
        let rows = result.map_err(|e| db.error(e))?;
        if too_big {
            return Err(Error::Invalid(format!(
                "{}: the query's result is larger than {} MiB; page through it (LIMIT and OFFSET, \
                 or a WHERE on the key)",
                db.path,
                QUERY_BYTES >> 20
            )));
        }
        Ok(Rows { columns, rows })
    }

    /// `database.prepare`: compile now so errors show at once; the cache keeps it.
    pub fn prepare(&mut self, h: usize, sql: &str) -> CapResult<StmtHandle> {
        let db = self.db(h)?;
        if let Err(e) = db.conn.prepare_cached(sql) {
            return Err(db.error(e));
        }
        Ok(StmtHandle {
            db: h,
            sql: sql.to_string(),
        })
    }

    /// `statement.execute-batch`: one prepared statement over many parameter rows.
    pub fn execute_batch(&mut self, stmt: &StmtHandle, params: &[Row]) -> CapResult<Vec<u64>> {
        let db = self.db(stmt.db)?;
        let mut out = Vec::with_capacity(params.len());
        let mut total = 0;
        let result = (|| {
            let mut s = db.conn.prepare_cached(&stmt.sql)?;
            let readonly = s.readonly();
            for row in params {
                let n = s.execute(rusqlite::params_from_iter(row.iter()))? as u64;
                let n = if readonly { 0 } else { n };
                total += n;
                out.push(n);
            }
            Ok(())
        })();
        db.rows += total;
        db.dirty |= total > 0;
        result.map_err(|e| db.error(e))?;
        Ok(out)
    }

    /// `database.begin`.
    pub fn begin(&mut self, h: usize) -> CapResult<()> {
        let db = self.db(h)?;
        if db.in_tx {
            return Err(Error::Invalid(format!(
                "{}: a transaction is already open",
                db.path
            )));
        }
        db.internal(|c| c.execute_batch("BEGIN IMMEDIATE"))?;
        db.in_tx = true;
        db.saved = Some((db.rows, db.schema_changed));
        Ok(())
    }

    /// `database.commit`.
    pub fn commit(&mut self, h: usize) -> CapResult<()> {
        let db = self.db(h)?;
        if !db.in_tx {
            return Err(Error::Invalid(format!(
                "{}: no transaction is open",
                db.path
            )));
        }
        db.internal(|c| c.execute_batch("COMMIT"))?;
        db.in_tx = false;
        db.saved = None;
        Ok(())
    }

    /// `database.rollback`.
    pub fn rollback(&mut self, h: usize) -> CapResult<()> {
        let db = self.db(h)?;
        if !db.in_tx {
            return Err(Error::Invalid(format!(
                "{}: no transaction is open",
                db.path
            )));
        }
        db.internal(|c| c.execute_batch("ROLLBACK"))?;
        db.in_tx = false;
        if let Some((rows, schema)) = db.saved.take() {
            db.rows = rows;
            db.schema_changed = schema;
        }
        Ok(())
    }

    /// `database.done`.
    pub fn done(&mut self, h: usize, scope: &str, keys: &[String]) -> CapResult<Vec<bool>> {
        let db = self.db(h)?;
        let exists: bool = db.internal(|c| {
            c.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = '_idem_checkpoints'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })? > 0;
        if !exists {
            return Ok(vec![false; keys.len()]);
        }
        db.internal(|c| {
            let mut s =
                c.prepare_cached("SELECT 1 FROM _idem_checkpoints WHERE scope = ?1 AND key = ?2")?;
            keys.iter().map(|k| s.exists((scope, k))).collect()
        })
    }

    /// `database.mark-done`: the marks join the open transaction, if any.
    pub fn mark_done(&mut self, h: usize, scope: &str, keys: &[String]) -> CapResult<()> {
        let db = self.db(h)?;
        db.dirty = true;
        db.internal(|c| {
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS _idem_checkpoints (scope TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (scope, key)) WITHOUT ROWID",
            )?;
            let mut s = c.prepare_cached(
                "INSERT OR IGNORE INTO _idem_checkpoints (scope, key) VALUES (?1, ?2)",
            )?;
            for k in keys {
                s.execute((scope, k))?;
            }
            Ok(())
        })
    }

    /// The changes to databases since the last call, one entry per kind and database.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = std::mem::take(&mut self.adopted);
        for db in &mut self.dbs {
            if db.created {
                out.push(Change::new(ChangeKind::CreateDatabase, db.path.as_str()));
                db.created = false;
            }
            if db.schema_changed {
                out.push(Change::new(ChangeKind::AlterSchema, db.path.as_str()));
                db.schema_changed = false;
            }
            if db.rows > 0 {
                let mut c = Change::new(ChangeKind::WriteRows, db.path.as_str());
                c.rows = Some(db.rows);
                out.push(c);
                db.rows = 0;
            }
            if db.saved.is_some() {
                db.saved = Some((0, false));
            }
        }
        out
    }

    /// After a failed step: a database the step created and left empty (SQLite makes the
    /// file when it opens it) is removed again (under a dry run, no longer shown as a planned
    /// file), so a failed upsert leaves nothing behind, and plan and apply agree. Its
    /// connection is closed; a later open makes a new one.
    pub fn discard_failed_creations(&mut self, files: &mut dyn PathProbe) {
        for i in 0..self.dbs.len() {
            let db = &self.dbs[i];
            if !db.created || self.by_path.get(&db.path) != Some(&i) {
                continue;
            }
            let file = match &db.copy {
                Some(copy) => copy.as_path().to_path_buf(),
                None => self.root_path.join(db.path.as_str()),
            };
            if !std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file() && m.len() == 0) {
                continue;
            }
            let path = db.path.clone();
            self.by_path.remove(&path);
            let db = &mut self.dbs[i];
            db.created = false;
            db.rows = 0;
            db.schema_changed = false;
            if let Ok(mem) = Connection::open_in_memory() {
                db.conn = mem;
            }
            if db.copy.is_some() {
                files.unmirror(&path);
            } else {
                let _ = std::fs::remove_file(&file);
            }
            tracing::debug!(db = %path, "removed the empty database a failed step created");
        }
    }

    /// Roll back any transaction left open (here, or by a plugin step taken back with
    /// [`Databases::adopt`]); returns the databases concerned.
    pub fn abandon_open_transactions(&mut self) -> Vec<String> {
        let mut left = std::mem::take(&mut self.abandoned);
        for i in 0..self.dbs.len() {
            if self.dbs[i].in_tx {
                left.push(self.dbs[i].path.to_string());
                let _ = self.rollback(i);
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cap::fs::{Disk, FsCap, Overlay, Sink};
    use crate::policy::{Mode, Policy};

    fn p(s: &str) -> RelPath {
        Policy::new(Mode::Apply).resolve(s).unwrap()
    }

    /// A root, its file capability (an overlay under a dry run) and its databases.
    fn scope(dry_run: bool) -> (tempfile::TempDir, FsCap, Databases) {
        let t = tempfile::tempdir().unwrap();
        let root =
            cap_std::fs::Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let (sink, backing): (Box<dyn Sink + Send>, Backing) = if dry_run {
            (Box::new(Overlay::new()), Backing::PrivateCopy)
        } else {
            (Box::new(Disk::default()), Backing::File)
        };
        let fs = FsCap::new(root, sink, false);
        let dbs = Databases::new(t.path().to_path_buf(), backing);
        (t, fs, dbs)
    }

    fn source(fs: &FsCap, path: &RelPath) -> Source {
        match fs.planned(path).unwrap() {
            crate::cap::PlannedContent::Absent => Source::Absent,
            crate::cap::PlannedContent::OnDisk => Source::Disk,
            crate::cap::PlannedContent::Bytes(b) => Source::Bytes(b),
            crate::cap::PlannedContent::Spilled(c) => Source::Copy(c),
        }
    }

    fn open(fs: &mut FsCap, dbs: &mut Databases, path: &str) -> usize {
        let h = dbs
            .open(p(path), source(fs, &p(path)), fs.generation())
            .unwrap();
        if let Some((path, copy)) = dbs.take_dirty(h) {
            fs.mirror(&path, copy);
        }
        h
    }

    fn count(dbs: &mut Databases, h: usize) -> i64 {
        match &dbs.query(h, "SELECT count(*) FROM t", &[]).unwrap().rows[0][0] {
            Value::Integer(n) => *n,
            v => panic!("{v:?}"),
        }
    }

    /// Under a dry run a plugin step's connections start from the run's planned rows, their
    /// own state (a TEMP trigger) ends with them, and what they planned comes back.
    #[test]
    fn a_lent_scope_sees_planned_rows_and_keeps_its_connection_state_to_itself() {
        let (t, mut fs, mut run) = scope(true);
        let h = open(&mut fs, &mut run, "a.db");
        run.execute(h, "CREATE TABLE t (x)", &[]).unwrap();
        run.execute(h, "INSERT INTO t VALUES (1)", &[]).unwrap();
        run.take_changes();
        let mut step = run.lend(&[p("a.db")], None).unwrap();
        let s = open(&mut fs, &mut step, "a.db");
        assert_eq!(count(&mut step, s), 1, "sees the run's planned row");
        step.execute(
            s,
            "CREATE TEMP TRIGGER dup AFTER INSERT ON t BEGIN INSERT INTO t VALUES (99); END",
            &[],
        )
        .unwrap();
        step.execute(s, "INSERT INTO t VALUES (2)", &[]).unwrap();
        run.adopt(step, &mut fs).unwrap();
        let kinds: Vec<_> = run.take_changes().iter().map(|c| c.kind.as_str()).collect();
        assert!(kinds.contains(&"write-rows"), "{kinds:?}");
        assert_eq!(count(&mut run, h), 3, "the step's rows come back");
        run.execute(h, "INSERT INTO t VALUES (3)", &[]).unwrap();
        assert_eq!(count(&mut run, h), 4, "but not its TEMP trigger");
        assert!(!t.path().join("a.db").exists(), "nothing on disk");
    }

    /// Issue 14: a database a dry run writes is a file for the file capability, with its
    /// planned content; a planned removal or replacement is seen by the next statement.
    #[test]
    fn a_dry_runs_database_is_a_file_and_a_removed_one_starts_anew() {
        let (t, mut fs, mut dbs) = scope(true);
        std::fs::create_dir(t.path().join("d")).unwrap();
        let h = open(&mut fs, &mut dbs, "d/a.db");
        dbs.execute(h, "CREATE TABLE t (x)", &[]).unwrap();
        dbs.execute(h, "INSERT INTO t VALUES (1)", &[]).unwrap();
        let m = fs.stat(&p("d/a.db")).unwrap().expect("a planned file");
        assert!(m.size > 0);
        let names: Vec<_> = fs
            .list_dir(&p("d"))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a.db"]);
        let bytes = fs.read(&p("d/a.db")).unwrap();
        assert!(bytes.starts_with(b"SQLite format 3\0"));
        // A copy of it, made by a later step, opens with its rows.
        fs.write_atomic(&p("d/b.db"), bytes, None).unwrap();
        let b = open(&mut fs, &mut dbs, "d/b.db");
        assert_eq!(count(&mut dbs, b), 1);
        // Removed by a step: the next use finds a new, empty database.
        fs.remove(&p("d/a.db"), false).unwrap();
        let src = source(&fs, &p("d/a.db"));
        dbs.refresh(h, &src, fs.generation()).unwrap();
        assert!(
            dbs.query(h, "SELECT count(*) FROM t", &[]).is_err(),
            "no table t any more"
        );
        assert_eq!(std::fs::read_dir(t.path().join("d")).unwrap().count(), 0);
    }

    /// Issue 14: under apply, a connection to a file a step removed is not used again.
    #[test]
    fn under_apply_a_removed_database_file_is_reopened_not_written_unlinked() {
        let (t, mut fs, mut dbs) = scope(false);
        let h = open(&mut fs, &mut dbs, "a.db");
        dbs.execute(h, "CREATE TABLE t (x)", &[]).unwrap();
        fs.remove(&p("a.db"), false).unwrap();
        let src = source(&fs, &p("a.db"));
        dbs.refresh(h, &src, fs.generation()).unwrap();
        dbs.execute(h, "CREATE TABLE t (x)", &[]).unwrap();
        dbs.execute(h, "INSERT INTO t VALUES (1)", &[]).unwrap();
        let c = rusqlite::Connection::open(t.path().join("a.db")).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "the row is in the file at the path");
    }

    #[test]
    fn a_transaction_a_plugin_left_open_is_rolled_back_and_reported() {
        let (_t, mut fs, mut run) = scope(false);
        let mut step = run.lend(&[p("a.db")], None).unwrap();
        let s = open(&mut fs, &mut step, "a.db");
        step.execute(s, "CREATE TABLE t (x)", &[]).unwrap();
        step.begin(s).unwrap();
        step.execute(s, "INSERT INTO t VALUES (1)", &[]).unwrap();
        run.adopt(step, &mut fs).unwrap();
        assert_eq!(run.abandon_open_transactions(), ["a.db"]);
        let h = open(&mut fs, &mut run, "a.db");
        assert_eq!(count(&mut run, h), 0, "rolled back");
    }

    #[test]
    fn a_statement_still_running_at_the_deadline_is_interrupted() {
        let (_t, mut fs, mut run) = scope(false);
        let deadline = Instant::now() + std::time::Duration::from_millis(200);
        let mut step = run.lend(&[], Some(deadline)).unwrap();
        let h = open(&mut fs, &mut step, "a.db");
        let started = Instant::now();
        let r = step.query(
            h,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            &[],
        );
        assert!(r.is_err(), "{r:?}");
        assert!(step.interrupted());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Issue 14: creating a table after rows were written counted those rows again.
    #[test]
    fn a_statement_that_changes_no_rows_counts_none() {
        let (_t, mut fs, mut dbs) = scope(false);
        let h = open(&mut fs, &mut dbs, "a.db");
        dbs.execute(h, "CREATE TABLE t (x)", &[]).unwrap();
        assert_eq!(
            dbs.execute(h, "INSERT INTO t VALUES (1), (2)", &[])
                .unwrap(),
            2
        );
        assert_eq!(dbs.execute(h, "CREATE TABLE u (y)", &[]).unwrap(), 0);
        assert_eq!(dbs.execute(h, "CREATE INDEX i ON t (x)", &[]).unwrap(), 0);
    }

    #[test]
    fn denials_are_told_from_sqlite_errors() {
        let (_t, mut fs, mut dbs) = scope(false);
        let h = open(&mut fs, &mut dbs, "a.db");
        for sql in ["BEGIN", "ATTACH 'x.db' AS x", "PRAGMA journal_mode = OFF"] {
            match dbs.execute(h, sql, &[]) {
                Err(Error::Denied(m)) => assert!(m.contains("statement not allowed"), "{m}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
        match dbs.execute(h, "INSERT INTO missing VALUES (1)", &[]) {
            Err(Error::Sqlite(e)) => assert_eq!(e.code, 1, "{e:?}"),
            other => panic!("{other:?}"),
        }
    }
}
