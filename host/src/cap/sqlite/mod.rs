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
//! itself; under a dry run, a private in-memory copy of the file (taken through the backup
//! API from a read-only handle), or an empty in-memory database when the file does not exist.
//! Statements run for real either way, so counts and errors are exact, and under a dry run
//! the file is never opened for writing.

mod authorizer;
mod host;

use std::collections::HashMap;
use std::path::PathBuf;
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

    fn push(&mut self, path: RelPath, conn: Connection, guard: Guard, created: bool) -> usize {
        let i = self.dbs.len();
        self.dbs.push(Db {
            path: path.clone(),
            conn,
            guard,
            in_tx: false,
            rows: 0,
            schema_changed: false,
            created,
            saved: None,
        });
        self.by_path.insert(path, i);
        i
    }

    /// Open the database at `path` (already checked against the policy), reusing this
    /// scope's connection when it is open already. `exists` says whether the file is there
    /// now, as the file capability sees it (which includes a dry run's planned changes).
    pub fn open(&mut self, path: RelPath, exists: bool) -> CapResult<usize> {
        if let Some(&i) = self.by_path.get(&path) {
            return Ok(i);
        }
        let real = self.root_path.join(path.as_str());
        let e = |e| sql_error(&path, e, false);
        let conn = match self.backing {
            Backing::PrivateCopy => {
                let mut mem = Connection::open_in_memory().map_err(e)?;
                if exists {
                    let src = Connection::open_with_flags(
                        &real,
                        OpenFlags::SQLITE_OPEN_READ_ONLY
                            | OpenFlags::SQLITE_OPEN_NO_MUTEX
                            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
                    )
                    .map_err(e)?;
                    copy_database(&src, &mut mem).map_err(e)?;
                }
                mem
            }
            Backing::File => Connection::open_with_flags(
                &real,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_NOFOLLOW,
            )
            .map_err(e)?,
        };
        let (conn, guard) = self.configure(&path, conn)?;
        // Verify it is a database now, not at the first statement: a clear error at open.
        if exists {
            let check = guard
                .as_host(|| conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)));
            check.map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    Error::Invalid(format!("{path} is not a SQLite database"))
                }
                e => sql_error(&path, e, false),
            })?;
        }
        Ok(self.push(path, conn, guard, !exists))
    }

    /// A set of connections of its own for one plugin step, for the databases it names.
    /// Under a dry run each starts as a copy of this scope's planned database, so the step
    /// sees what earlier steps planned; under apply it opens the files afresh.
    pub fn lend(&self, names: &[RelPath], deadline: Option<Instant>) -> CapResult<Databases> {
        let mut child = Databases::new(self.root_path.clone(), self.backing);
        child.deadline = deadline;
        if self.backing == Backing::PrivateCopy {
            for name in names {
                let Some(&i) = self.by_path.get(name) else {
                    continue;
                };
                let parent = &self.dbs[i];
                let e = |e| sql_error(name, e, false);
                let mut mem = Connection::open_in_memory().map_err(e)?;
                parent
                    .guard
                    .as_host(|| copy_database(&parent.conn, &mut mem))
                    .map_err(e)?;
                let (conn, guard) = child.configure(name, mem)?;
                child.push(name.clone(), conn, guard, false);
            }
        }
        Ok(child)
    }

    /// Take back what a plugin step's connections did, once the step has ended: a
    /// transaction it left open is rolled back (and reported by
    /// [`Databases::abandon_open_transactions`]), its changes join this scope's, and under a
    /// dry run its planned databases replace this scope's copies. Its connections close here.
    pub fn adopt(&mut self, mut child: Databases) -> CapResult<()> {
        self.abandoned.extend(child.abandon_open_transactions());
        self.adopted.extend(child.take_changes());
        if self.backing == Backing::PrivateCopy {
            for db in &child.dbs {
                let i = match self.by_path.get(&db.path) {
                    Some(&i) => i,
                    None => {
                        let e = |e| sql_error(&db.path, e, false);
                        let mem = Connection::open_in_memory().map_err(e)?;
                        let (conn, guard) = self.configure(&db.path, mem)?;
                        self.push(db.path.clone(), conn, guard, false)
                    }
                };
                let mine = &mut self.dbs[i];
                let e = |e| sql_error(&db.path, e, false);
                db.guard
                    .as_host(|| copy_database(&db.conn, &mut mine.conn))
                    .map_err(e)?;
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
            let n = stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64;
            Ok(if readonly { 0 } else { n })
        })()
        .map_err(|e| db.error(e))?;
        db.rows += changed;
        if db.schema_version()? != before {
            db.schema_changed = true;
        }
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
    use crate::policy::{Mode, Policy};

    fn p(s: &str) -> RelPath {
        Policy::new(Mode::Apply).resolve(s).unwrap()
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
        let t = tempfile::tempdir().unwrap();
        let mut run = Databases::new(t.path().to_path_buf(), Backing::PrivateCopy);
        let h = run.open(p("a.db"), false).unwrap();
        run.execute(h, "CREATE TABLE t (x)", &[]).unwrap();
        run.execute(h, "INSERT INTO t VALUES (1)", &[]).unwrap();
        run.take_changes();
        let mut step = run.lend(&[p("a.db")], None).unwrap();
        let s = step.open(p("a.db"), true).unwrap();
        assert_eq!(count(&mut step, s), 1, "sees the run's planned row");
        step.execute(
            s,
            "CREATE TEMP TRIGGER dup AFTER INSERT ON t BEGIN INSERT INTO t VALUES (99); END",
            &[],
        )
        .unwrap();
        step.execute(s, "INSERT INTO t VALUES (2)", &[]).unwrap();
        run.adopt(step).unwrap();
        let kinds: Vec<_> = run.take_changes().iter().map(|c| c.kind.as_str()).collect();
        assert!(kinds.contains(&"write-rows"), "{kinds:?}");
        assert_eq!(count(&mut run, h), 3, "the step's rows come back");
        run.execute(h, "INSERT INTO t VALUES (3)", &[]).unwrap();
        assert_eq!(count(&mut run, h), 4, "but not its TEMP trigger");
        assert!(!t.path().join("a.db").exists(), "nothing on disk");
    }

    #[test]
    fn a_transaction_a_plugin_left_open_is_rolled_back_and_reported() {
        let t = tempfile::tempdir().unwrap();
        let mut run = Databases::new(t.path().to_path_buf(), Backing::File);
        let mut step = run.lend(&[p("a.db")], None).unwrap();
        let s = step.open(p("a.db"), false).unwrap();
        step.execute(s, "CREATE TABLE t (x)", &[]).unwrap();
        step.begin(s).unwrap();
        step.execute(s, "INSERT INTO t VALUES (1)", &[]).unwrap();
        run.adopt(step).unwrap();
        assert_eq!(run.abandon_open_transactions(), ["a.db"]);
        let h = run.open(p("a.db"), true).unwrap();
        assert_eq!(count(&mut run, h), 0, "rolled back");
    }

    #[test]
    fn a_statement_still_running_at_the_deadline_is_interrupted() {
        let t = tempfile::tempdir().unwrap();
        let run = Databases::new(t.path().to_path_buf(), Backing::File);
        let deadline = Instant::now() + std::time::Duration::from_millis(200);
        let mut step = run.lend(&[], Some(deadline)).unwrap();
        let h = step.open(p("a.db"), false).unwrap();
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

    #[test]
    fn denials_are_told_from_sqlite_errors() {
        let t = tempfile::tempdir().unwrap();
        let mut dbs = Databases::new(t.path().to_path_buf(), Backing::File);
        let h = dbs.open(p("a.db"), false).unwrap();
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
