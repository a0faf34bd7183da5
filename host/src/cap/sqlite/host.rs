//! The WIT interface `sqlite`, implemented on a view: this scope's databases, how the run sees
//! paths (to know whether a database file is there), the step's policy and the resource table.

use wasmtime::component::{Resource, ResourceTable};

use super::{CapResult, Databases};
use crate::bindings::fs::Kind;
use crate::bindings::sqlite::{Host, HostDatabase, HostStatement, Row, Rows};
use crate::bindings::types::Error;
use crate::cap::PathProbe;
use crate::cap::resources::{DbHandle, StmtHandle};
use crate::policy::Policy;

/// What the `sqlite` interface sees of the store.
pub struct SqliteView<'a> {
    pub dbs: &'a mut Databases,
    pub paths: &'a dyn PathProbe,
    pub policy: &'a Policy,
    pub table: &'a mut ResourceTable,
}

type R<T> = wasmtime::Result<CapResult<T>>;

impl SqliteView<'_> {
    fn db_index(&self, db: &Resource<DbHandle>) -> wasmtime::Result<usize> {
        Ok(self.table.get(db)?.0)
    }
}

impl HostStatement for SqliteView<'_> {
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

impl HostDatabase for SqliteView<'_> {
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

    fn done(&mut self, db: Resource<DbHandle>, scope: String, keys: Vec<String>) -> R<Vec<bool>> {
        let h = self.db_index(&db)?;
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.dbs.done(h, &scope, &keys))
    }

    fn mark_done(&mut self, db: Resource<DbHandle>, scope: String, keys: Vec<String>) -> R<()> {
        let h = self.db_index(&db)?;
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.dbs.mark_done(h, &scope, &keys))
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
        if !exists {
            // SQLite creates the file but not its directory: say so clearly.
            if let Some(parent) = rel.parent()
                && matches!(self.paths.probe(&parent), Ok(None))
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
