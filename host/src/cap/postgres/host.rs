//! The WIT interface `postgres`, implemented on a view: the run's connections, the step's
//! policy and the resource table.

use wasmtime::component::{Resource, ResourceTable};

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
}

impl HostConnection for PgView<'_> {
    fn execute(&mut self, c: Resource<PgHandle>, sql: String, params: Row) -> R<u64> {
        let h = self.handle(&c)?;
        Ok(self.pg.execute(h, &sql, &params))
    }

    fn query(&mut self, c: Resource<PgHandle>, sql: String, params: Row) -> R<Rows> {
        let h = self.handle(&c)?;
        Ok(self.pg.query(h, &sql, &params))
    }

    fn copy_in(&mut self, c: Resource<PgHandle>, sql: String, data: Vec<u8>) -> R<u64> {
        let h = self.handle(&c)?;
        Ok(self.pg.copy_in(h, &sql, &data))
    }

    fn begin(&mut self, c: Resource<PgHandle>) -> R<()> {
        let h = self.handle(&c)?;
        Ok(self.pg.begin(h))
    }

    fn commit(&mut self, c: Resource<PgHandle>) -> R<()> {
        let h = self.handle(&c)?;
        Ok(self.pg.commit(h))
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
        // The guard: a plugin reaches no PostgreSQL database until the host owns its
        // transaction and refuses its escapes (issue 15, item 7, not built yet).
        if !self.policy.reaches_postgres() {
            return Ok(Err(PgError::Denied(
                "plugins do not reach PostgreSQL databases yet (see docs/postgres.md)".into(),
            )));
        }
        match self.pg.open(&name) {
            Ok(h) => Ok(Ok(self.table.push(PgHandle(h))?)),
            Err(e) => Ok(Err(e)),
        }
    }
}
