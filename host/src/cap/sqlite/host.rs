//! The WIT interface `sqlite`, implemented on a view: this scope's databases, how the run sees
//! paths (to know whether a database file is there), the step's policy and the resource table.

use wasmtime::component::{Resource, ResourceTable};

use super::{CapResult, Databases, Source};
use crate::bindings::fs::Kind;
use crate::bindings::sqlite::{Host, HostDatabase, HostStatement, Row, Rows};
use crate::bindings::types::Error;
use crate::cap::resources::{DbHandle, StmtHandle};
use crate::cap::{PathProbe, PlannedContent};
use crate::policy::Policy;

/// What the `sqlite` interface sees of the store.
pub struct SqliteView<'a> {
    pub dbs: &'a mut Databases,
    pub paths: &'a mut dyn PathProbe,
    pub policy: &'a Policy,
    pub table: &'a mut ResourceTable,
}

type R<T> = wasmtime::Result<CapResult<T>>;

impl SqliteView<'_> {
    /// The handle's database, checked to still be the file at its path.
    fn db_index(&mut self, db: &Resource<DbHandle>) -> wasmtime::Result<CapResult<usize>> {
        let h = self.table.get(db)?.0;
        Ok(self.fresh(h).map(|()| h))
    }

    /// What is at `path` for this run, to open a database from.
    fn source(&self, path: &crate::policy::RelPath) -> CapResult<Source> {
        Ok(match self.paths.planned(path)? {
            PlannedContent::Absent => Source::Absent,
            PlannedContent::OnDisk => Source::Disk,
            PlannedContent::Bytes(b) => Source::Bytes(b),
            PlannedContent::Spilled(c) => Source::Copy(c),
        })
    }

    /// Reopen database `h` if a step removed or replaced its file since it was last used.
    ///
    /// Under a group commit the files written so far are settled first: a database is only
    /// used once the writes before it are durable and in place (it may be one of them).
    fn fresh(&mut self, h: usize) -> CapResult<()> {
        self.paths.settle()?;
        let seen = self.paths.generation();
        if self.dbs.seen(h) == Some(seen) {
            return Ok(());
        }
        let Some(path) = self.dbs.path_of(h).cloned() else {
            return Err(Error::Invalid("closed database handle".into()));
        };
        let source = self.source(&path)?;
        self.dbs.refresh(h, &source, seen)
    }

    /// After a change to database `h` under a dry run, show its copy as the planned file.
    fn mirror(&mut self, h: usize) {
        if let Some((path, copy)) = self.dbs.take_dirty(h) {
            self.paths.mirror(&path, copy);
        }
    }
}

impl HostStatement for SqliteView<'_> {
    fn execute_batch(&mut self, stmt: Resource<StmtHandle>, params: Vec<Row>) -> R<Vec<u64>> {
        let s = self.table.get(&stmt)?;
        let s = StmtHandle {
            db: s.db,
            sql: s.sql.clone(),
        };
        if let Err(e) = self.fresh(s.db) {
            return Ok(Err(e));
        }
        let r = self.dbs.execute_batch(&s, &params);
        self.mirror(s.db);
        Ok(r)
    }

    fn query(&mut self, stmt: Resource<StmtHandle>, params: Row) -> R<Rows> {
        let s = self.table.get(&stmt)?;
        let (db, sql) = (s.db, s.sql.clone());
        if let Err(e) = self.fresh(db) {
            return Ok(Err(e));
        }
        Ok(self.dbs.query(db, &sql, &params))
    }

    fn drop(&mut self, stmt: Resource<StmtHandle>) -> wasmtime::Result<()> {
        self.table.delete(stmt)?;
        Ok(())
    }
}

impl HostDatabase for SqliteView<'_> {
    fn execute(&mut self, db: Resource<DbHandle>, sql: String, params: Row) -> R<u64> {
        let h = match self.db_index(&db)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let r = self.dbs.execute(h, &sql, &params);
        self.mirror(h);
        Ok(r)
    }

    fn query(&mut self, db: Resource<DbHandle>, sql: String, params: Row) -> R<Rows> {
        let h = match self.db_index(&db)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let r = self.dbs.query(h, &sql, &params);
        Ok(r)
    }

    fn prepare(&mut self, db: Resource<DbHandle>, sql: String) -> R<Resource<StmtHandle>> {
        let h = match self.db_index(&db)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        match self.dbs.prepare(h, &sql) {
            Ok(s) => Ok(Ok(self.table.push(s)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn begin(&mut self, db: Resource<DbHandle>) -> R<()> {
        let h = match self.db_index(&db)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let r = self.dbs.begin(h);
        Ok(r)
    }

    fn commit(&mut self, db: Resource<DbHandle>) -> R<()> {
        let h = match self.db_index(&db)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let r = self.dbs.commit(h);
        self.mirror(h);
        Ok(r)
    }

    fn rollback(&mut self, db: Resource<DbHandle>) -> R<()> {
        let h = match self.db_index(&db)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let r = self.dbs.rollback(h);
        self.mirror(h);
        Ok(r)
    }

    fn done(&mut self, db: Resource<DbHandle>, scope: String, keys: Vec<String>) -> R<Vec<bool>> {
        let h = match self.db_index(&db)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let r = {
            let scope = self.policy.checkpoint_scope(&scope);
            self.dbs.done(h, &scope, &keys)
        };
        Ok(r)
    }

    fn mark_done(&mut self, db: Resource<DbHandle>, scope: String, keys: Vec<String>) -> R<()> {
        let h = match self.db_index(&db)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let r = {
            let scope = self.policy.checkpoint_scope(&scope);
            self.dbs.mark_done(h, &scope, &keys)
        };
        self.mirror(h);
        Ok(r)
    }

    fn drop(&mut self, db: Resource<DbHandle>) -> wasmtime::Result<()> {
        self.table.delete(db)?;
        Ok(())
    }
}

impl Host for SqliteView<'_> {
    fn open(&mut self, path: String) -> R<Resource<DbHandle>> {
        let rel = match self.policy.resolve_database(&path) {
            Ok(p) => p,
            Err(e) => return Ok(Err(Error::Denied(e.to_string()))),
        };
        if let Err(e) = self.paths.check(&rel, None) {
            return Ok(Err(e));
        }
        if let Err(e) = self.paths.settle() {
            return Ok(Err(e));
        }
        let exists = match self.paths.probe(&rel) {
            Ok(None) => false,
            Ok(Some(m)) if m.kind == Kind::File => true,
            Ok(Some(_)) => {
                return Ok(Err(Error::WrongKind(format!(
                    "{rel} is not a regular file (a symbolic link or a directory); databases must be plain files"
                ))));
            }
            Err(e) => return Ok(Err(e)),
        };
        if !exists && let Some(parent) = rel.parent() {
            // SQLite creates the file but not its directory: say so clearly, the same in a
            // dry run (whose private copy would not notice) as under apply.
            match self.paths.probe(&parent) {
                Ok(None) => {
                    return Ok(Err(Error::NotFound(format!(
                        "{rel}: parent directory {parent} does not exist"
                    ))));
                }
                Ok(Some(_)) if !self.paths.is_dir(&parent) => {
                    return Ok(Err(Error::WrongKind(format!(
                        "{rel}: {parent} is not a directory"
                    ))));
                }
                _ => {}
            }
        }
        let source = match self.source(&rel) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let seen = self.paths.generation();
        match self.dbs.open(rel, source, seen) {
            Ok(i) => {
                self.mirror(i);
                Ok(Ok(self.table.push(DbHandle(i))?))
            }
            Err(e) => Ok(Err(e)),
        }
    }
}
