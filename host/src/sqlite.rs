//! The SQLite capability: databases stored as files under the root.
//!
//! It owns one connection per database file for the whole run, whatever the number of steps
//! or handles. Before opening, it checks the path against the policy (inside the root, not a
//! symbolic link, named by the step when the step is a plugin). Every guest statement is
//! prepared under an authorizer that denies what reaches beyond the one database (ATTACH,
//! DETACH, transaction control in SQL, pragmas outside a read-mostly allowlist); the
//! connection's attached-database limit is 0, which also stops `VACUUM INTO`.
//!
//! Under a dry run the connection is a private in-memory copy of the file (taken through the
//! backup API from a read-only handle), or an empty in-memory database when the file does not
//! exist: statements run for real, so counts and errors are exact, and the file is never
//! opened for writing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};

use crate::bindings::sqlite::{Row, Rows, Value};
use crate::bindings::types::{Error, SqliteError};
use crate::change::{Change, ChangeKind};
use crate::fs::CapResult;
use crate::policy::RelPath;

/// The guest's handle on a database: an index into [`Databases`].
pub struct DbHandle(pub usize);

/// The guest's handle on a prepared statement: the database and the SQL text; the
/// connection's statement cache keeps the compiled form.
pub struct StmtHandle {
    pub db: usize,
    pub sql: String,
}

/// Pragmas a guest may use: reading the schema, checks, and per-connection switches that
/// cannot change how the file is written.
const ALLOWED_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "user_version",
    "application_id",
    "schema_version",
    "page_count",
    "page_size",
    "freelist_count",
    "foreign_keys",
    "defer_foreign_keys",
    "recursive_triggers",
    "data_version",
    "collation_list",
    "function_list",
    "pragma_list",
    "compile_options",
];

struct Db {
    path: RelPath,
    conn: Connection,
    /// Set while the host runs its own statements, which the authorizer then allows.
    internal: Arc<AtomicBool>,
    in_tx: bool,
    /// Rows changed by guest statements since the changes were last taken.
    rows: u64,
    schema_changed: bool,
    created: bool,
    /// Counters at `begin`, restored by `rollback`.
    saved: Option<(u64, bool)>,
}

/// The SQLite capability's state for one run.
pub struct Databases {
    dbs: Vec<Db>,
    by_path: HashMap<RelPath, usize>,
    dry_run: bool,
    /// The root, canonical, for SQLite (which takes paths, not directory handles).
    root_path: PathBuf,
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

/// Map a SQLite error on database `path` to the guest's error.
fn sql_error(path: &RelPath, e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let message = msg.unwrap_or_else(|| f.to_string());
            if f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied
                || message.contains("not authorized")
                || message.contains("too many attached databases")
            {
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
        rusqlite::Error::SqlInputError { error, msg, .. } => {
            sql_error(path, rusqlite::Error::SqliteFailure(error, Some(msg)))
        }
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

fn authorize(internal: &AtomicBool, ctx: AuthContext<'_>) -> Authorization {
    if internal.load(Ordering::Relaxed) {
        return Authorization::Allow;
    }
    match ctx.action {
        AuthAction::Attach { .. }
        | AuthAction::Detach { .. }
        | AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. } => Authorization::Deny,
        AuthAction::Pragma { pragma_name, .. } => {
            if ALLOWED_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str()) {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

impl Databases {
    pub fn new(root_path: PathBuf, dry_run: bool) -> Self {
        Databases {
            dbs: Vec::new(),
            by_path: HashMap::new(),
            dry_run,
            root_path,
        }
    }

    fn db(&mut self, h: usize) -> CapResult<&mut Db> {
        self.dbs
            .get_mut(h)
            .ok_or_else(|| Error::Invalid("closed database handle".into()))
    }

    /// Open the database at `path` (already checked against the policy), reusing the run's
    /// connection when it is open already. `exists` says whether the file is there now, as
    /// the file capability sees it (which includes a dry run's planned changes).
    pub fn open(&mut self, path: RelPath, exists: bool) -> CapResult<usize> {
        if let Some(&i) = self.by_path.get(&path) {
            return Ok(i);
        }
        let real = self.root_path.join(path.as_str());
        let conn = if self.dry_run {
            let mut mem = Connection::open_in_memory().map_err(|e| sql_error(&path, e))?;
            if exists {
                let src = Connection::open_with_flags(
                    &real,
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_NOFOLLOW,
                )
                .map_err(|e| sql_error(&path, e))?;
                rusqlite::backup::Backup::new(&src, &mut mem)
                    .and_then(|b| b.run_to_completion(1024, std::time::Duration::ZERO, None))
                    .map_err(|e| sql_error(&path, e))?;
            }
            mem
        } else {
            Connection::open_with_flags(
                &real,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_NOFOLLOW,
            )
            .map_err(|e| sql_error(&path, e))?
        };
        let mut conn = conn;
        let internal = Arc::new(AtomicBool::new(false));
        let flag = internal.clone();
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| sql_error(&path, e))?;
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
            .map_err(|e| sql_error(&path, e))?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&flag, ctx)))
            .map_err(|e| sql_error(&path, e))?;
        // Verify it is a database now, not at the first statement: a clear error at open.
        if exists {
            internal.store(true, Ordering::Relaxed);
            let check = conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0));
            internal.store(false, Ordering::Relaxed);
            check.map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    Error::Invalid(format!("{path} is not a SQLite database"))
                }
                e => sql_error(&path, e),
            })?;
        }
        let i = self.dbs.len();
        self.dbs.push(Db {
            path: path.clone(),
            conn,
            internal,
            in_tx: false,
            rows: 0,
            schema_changed: false,
            created: !exists,
            saved: None,
        });
        self.by_path.insert(path, i);
        Ok(i)
    }

    /// Run host statements with the authorizer's blessing.
    fn internal<T>(db: &Db, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> CapResult<T> {
        db.internal.store(true, Ordering::Relaxed);
        let r = f(&db.conn);
        db.internal.store(false, Ordering::Relaxed);
        r.map_err(|e| sql_error(&db.path, e))
    }

    fn schema_version(db: &Db) -> CapResult<i64> {
        Self::internal(db, |c| {
            c.query_row("PRAGMA schema_version", [], |r| r.get(0))
        })
    }

    /// `database.execute`.
    pub fn execute(&mut self, h: usize, sql: &str, params: &[Value]) -> CapResult<u64> {
        let db = self.db(h)?;
        let before = Self::schema_version(db)?;
        let changed = {
            let mut stmt = db
                .conn
                .prepare_cached(sql)
                .map_err(|e| sql_error(&db.path, e))?;
            let readonly = stmt.readonly();
            let n = stmt
                .execute(rusqlite::params_from_iter(params.iter()))
                .map_err(|e| sql_error(&db.path, e))? as u64;
            if readonly { 0 } else { n }
        };
        db.rows += changed;
        if Self::schema_version(db)? != before {
            db.schema_changed = true;
        }
        Ok(changed)
    }

    /// `database.query` and `statement.query`: read-only statements only.
    pub fn query(&mut self, h: usize, sql: &str, params: &[Value]) -> CapResult<Rows> {
        let db = self.db(h)?;
        let mut stmt = db
            .conn
            .prepare_cached(sql)
            .map_err(|e| sql_error(&db.path, e))?;
        if !stmt.readonly() {
            return Err(Error::Invalid(format!(
                "{}: query takes read-only statements; use execute to change data",
                db.path
            )));
        }
        let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let n = columns.len();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(|e| sql_error(&db.path, e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| sql_error(&db.path, e))? {
            let mut r: Row = Vec::with_capacity(n);
            for i in 0..n {
                r.push(value_of(
                    row.get_ref(i).map_err(|e| sql_error(&db.path, e))?,
                ));
            }
            out.push(r);
        }
        Ok(Rows { columns, rows: out })
    }

    /// `database.prepare`: compile now so errors show at once; the cache keeps it.
    pub fn prepare(&mut self, h: usize, sql: &str) -> CapResult<StmtHandle> {
        let db = self.db(h)?;
        db.conn
            .prepare_cached(sql)
            .map_err(|e| sql_error(&db.path, e))?;
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
        result.map_err(|e| sql_error(&db.path, e))?;
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
        Self::internal(db, |c| c.execute_batch("BEGIN IMMEDIATE"))?;
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
        Self::internal(db, |c| c.execute_batch("COMMIT"))?;
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
        Self::internal(db, |c| c.execute_batch("ROLLBACK"))?;
        db.in_tx = false;
        if let Some((rows, schema)) = db.saved.take() {
            db.rows = rows;
            db.schema_changed = schema;
        }
        Ok(())
    }

    fn ensure_checkpoint_table(db: &Db) -> CapResult<()> {
        Self::internal(db, |c| {
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS _idem_checkpoints (scope TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (scope, key)) WITHOUT ROWID",
            )
        })
    }

    /// `database.done`.
    pub fn done(&mut self, h: usize, scope: &str, keys: &[String]) -> CapResult<Vec<bool>> {
        let db = self.db(h)?;
        let exists: bool = Self::internal(db, |c| {
            c.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = '_idem_checkpoints'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })? > 0;
        if !exists {
            return Ok(vec![false; keys.len()]);
        }
        Self::internal(db, |c| {
            let mut s =
                c.prepare_cached("SELECT 1 FROM _idem_checkpoints WHERE scope = ?1 AND key = ?2")?;
            keys.iter().map(|k| s.exists((scope, k))).collect()
        })
    }

    /// `database.mark-done`: the marks join the open transaction, if any.
    pub fn mark_done(&mut self, h: usize, scope: &str, keys: &[String]) -> CapResult<()> {
        let db = self.db(h)?;
        Self::ensure_checkpoint_table(db)?;
        Self::internal(db, |c| {
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
        let mut out = Vec::new();
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

    /// Roll back any transaction a step left open; returns the databases concerned.
    pub fn abandon_open_transactions(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        for i in 0..self.dbs.len() {
            if self.dbs[i].in_tx {
                left.push(self.dbs[i].path.to_string());
                let _ = self.rollback(i);
            }
        }
        left
    }
}

// The WIT interface, implemented on the store's data.
mod host {
    use wasmtime::component::Resource;

    use super::*;
    use crate::bindings::sqlite::{Host, HostDatabase, HostStatement};
    use crate::engine::Ctx;

    type R<T> = wasmtime::Result<CapResult<T>>;

    impl HostStatement for Ctx {
        fn execute_batch(&mut self, stmt: Resource<StmtHandle>, params: Vec<Row>) -> R<Vec<u64>> {
            let s = self.table.get(&stmt)?;
            let s = StmtHandle {
                db: s.db,
                sql: s.sql.clone(),
            };
            Ok(self.dbs.execute_batch(&s, &params))
        }

        fn query(&mut self, stmt: Resource<StmtHandle>, params: Row) -> R<Rows> {
            let s = self.table.get(&stmt)?;
            let (db, sql) = (s.db, s.sql.clone());
            Ok(self.dbs.query(db, &sql, &params))
        }

        fn drop(&mut self, stmt: Resource<StmtHandle>) -> wasmtime::Result<()> {
            self.table.delete(stmt)?;
            Ok(())
        }
    }

    impl Ctx {
        fn db_index(&self, db: &Resource<DbHandle>) -> wasmtime::Result<usize> {
            Ok(self.table.get(db)?.0)
        }
    }

    impl HostDatabase for Ctx {
        fn execute(&mut self, db: Resource<DbHandle>, sql: String, params: Row) -> R<u64> {
            let h = self.db_index(&db)?;
            Ok(self.dbs.execute(h, &sql, &params))
        }

        fn query(&mut self, db: Resource<DbHandle>, sql: String, params: Row) -> R<Rows> {
            let h = self.db_index(&db)?;
            Ok(self.dbs.query(h, &sql, &params))
        }

        fn prepare(&mut self, db: Resource<DbHandle>, sql: String) -> R<Resource<StmtHandle>> {
            let h = self.db_index(&db)?;
            match self.dbs.prepare(h, &sql) {
                Ok(s) => Ok(Ok(self.table.push(s)?)),
                Err(e) => Ok(Err(e)),
            }
        }

        fn begin(&mut self, db: Resource<DbHandle>) -> R<()> {
            let h = self.db_index(&db)?;
            Ok(self.dbs.begin(h))
        }

        fn commit(&mut self, db: Resource<DbHandle>) -> R<()> {
            let h = self.db_index(&db)?;
            Ok(self.dbs.commit(h))
        }

        fn rollback(&mut self, db: Resource<DbHandle>) -> R<()> {
            let h = self.db_index(&db)?;
            Ok(self.dbs.rollback(h))
        }

        fn done(
            &mut self,
            db: Resource<DbHandle>,
            scope: String,
            keys: Vec<String>,
        ) -> R<Vec<bool>> {
            let h = self.db_index(&db)?;
            let scope = self.scoped(&scope);
            Ok(self.dbs.done(h, &scope, &keys))
        }

        fn mark_done(&mut self, db: Resource<DbHandle>, scope: String, keys: Vec<String>) -> R<()> {
            let h = self.db_index(&db)?;
            let scope = self.scoped(&scope);
            Ok(self.dbs.mark_done(h, &scope, &keys))
        }

        fn drop(&mut self, db: Resource<DbHandle>) -> wasmtime::Result<()> {
            self.table.delete(db)?;
            Ok(())
        }
    }

    impl Host for Ctx {
        fn open(&mut self, path: String) -> R<Resource<DbHandle>> {
            let rel = match self.policy.resolve_database(&path) {
                Ok(p) => p,
                Err(e) => return Ok(Err(Error::Denied(e.to_string()))),
            };
            let exists = match self.fs.stat(&rel) {
                Ok(None) => false,
                Ok(Some(m)) if m.kind == crate::bindings::fs::Kind::File => true,
                Ok(Some(_)) => {
                    return Ok(Err(Error::WrongKind(format!(
                        "{rel} is not a regular file (a symbolic link or a directory); databases must be plain files"
                    ))));
                }
                Err(e) => return Ok(Err(e)),
            };
            if !exists {
                // SQLite creates the file but not its directory: say so clearly.
                if let Some(parent) = rel.parent()
                    && matches!(self.fs.stat(&parent), Ok(None))
                {
                    return Ok(Err(Error::NotFound(format!(
                        "{rel}: parent directory {parent} does not exist"
                    ))));
                }
            }
            match self.dbs.open(rel, exists) {
                Ok(i) => Ok(Ok(self.table.push(DbHandle(i))?)),
                Err(e) => Ok(Err(e)),
            }
        }
    }
}
