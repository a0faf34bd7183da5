//! The WIT interface `postgres`, implemented on a view: the run's connections, the step's
//! policy and the resource table.

use wasmtime::component::{Resource, ResourceTable};

use super::guard::{self, Entry};
use super::{Connections, PgResult};
use crate::bindings::postgres::{Host, HostConnection, PgError};
use crate::bindings::sqlite::{Row, Rows};
use crate::cap::resources::PgHandle;
use crate::policy::Policy;

/// What the `postgres` interface sees of the store.
pub struct PgView<'a> {
    pub pg: &'a mut Connections,
    pub policy: &'a Policy,
    pub table: &'a mut ResourceTable,
}

type R<T> = wasmtime::Result<PgResult<T>>;

impl PgView<'_> {
    fn handle(&self, c: &Resource<PgHandle>) -> wasmtime::Result<usize> {
        Ok(self.table.get(c)?.0)
    }

    /// Run `f` on connection `h`; for a plugin, only once `sql` passes the guard, and then
    /// with the session checked after it.
    fn checked<T>(
        &mut self,
        h: usize,
        sql: &str,
        entry: Entry,
        f: impl FnOnce(&mut Connections) -> PgResult<T>,
    ) -> PgResult<T> {
        if !self.policy.checks_sql() {
            return f(self.pg);
        }
        if let Err(why) = guard::check(sql, entry) {
            return Err(PgError::Denied(format!("{}: {why}", self.pg.shown(h))));
        }
        // A statement that failed changed nothing of the session: its transaction (or its
        // savepoint) is undone, and an aborted transaction cannot be asked anyway.
        let r = f(self.pg)?;
        self.pg.check_session(h)?;
        Ok(r)
    }
}

impl HostConnection for PgView<'_> {
    fn execute(&mut self, c: Resource<PgHandle>, sql: String, params: Row) -> R<u64> {
        let h = self.handle(&c)?;
        Ok(self.checked(h, &sql, Entry::Statement, |pg| pg.execute(h, &sql, &params)))
    }

    fn query(&mut self, c: Resource<PgHandle>, sql: String, params: Row) -> R<Rows> {
        let h = self.handle(&c)?;
        Ok(self.checked(h, &sql, Entry::Statement, |pg| pg.query(h, &sql, &params)))
    }

    fn copy_in(&mut self, c: Resource<PgHandle>, sql: String, data: Vec<u8>) -> R<u64> {
        let h = self.handle(&c)?;
        Ok(self.checked(h, &sql, Entry::CopyIn, |pg| pg.copy_in(h, &sql, &data)))
    }

    fn begin(&mut self, c: Resource<PgHandle>) -> R<()> {
        let h = self.handle(&c)?;
        Ok(self.pg.begin(h))
    }

    fn commit(&mut self, c: Resource<PgHandle>) -> R<()> {
        let h = self.handle(&c)?;
        Ok(self.pg.commit(h))
    }

    fn commit_with_marks(
        &mut self,
        c: Resource<PgHandle>,
        scope: String,
        entries: Vec<(String, Option<String>)>,
    ) -> R<bool> {
        let h = self.handle(&c)?;
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.pg.commit_with_marks(h, &scope, &entries))
    }

    fn rollback(&mut self, c: Resource<PgHandle>) -> R<()> {
        let h = self.handle(&c)?;
        Ok(self.pg.rollback(h))
    }

    fn shown(&mut self, c: Resource<PgHandle>) -> wasmtime::Result<String> {
        let h = self.handle(&c)?;
        Ok(self.pg.shown(h))
    }

    fn drop(&mut self, c: Resource<PgHandle>) -> wasmtime::Result<()> {
        // The connection stays the run's: another step may name the same database.
        self.table.delete(c)?;
        Ok(())
    }
}

impl Host for PgView<'_> {
    fn open(&mut self, name: String) -> R<Resource<PgHandle>> {
        // The guard: a plugin reaches only the databases its step names.
        if let Err(why) = self.policy.may_open_postgres(&name) {
            return Ok(Err(PgError::Denied(why)));
        }
        let h = match self.pg.open(&name) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        if self.policy.checks_sql()
            && let Err(e) = self.pg.note_session(h)
        {
            return Ok(Err(e));
        }
        Ok(Ok(self.table.push(PgHandle(h))?))
    }
}
