//! The PostgreSQL capability: connections to the databases a plan names by URL or `env:NAME`.
//!
//! It owns one connection per database name for the run, opened at first use. A name is
//! resolved once by [`crate::dbname`]; from then on the database is named only by
//! [`PgTarget::shown`] (the URL without its password), and every message from the server or
//! the driver passes through [`PgTarget::scrub`] before it leaves this module, so no error,
//! report or log line can carry a password.
//!
//! Under a dry run the connection begins one transaction at the first use and never commits
//! it: the guest's `begin`/`commit`/`rollback` become a savepoint inside it, a statement run
//! outside a guest transaction gets a savepoint of its own (so one failing statement does
//! not abort the rest of the dry run), and when the run ends the connection rolls back and
//! closes. Counts and constraint errors are those of an apply; nothing is ever committed, by
//! construction rather than by a check in each method.
//!
//! A plugin reaches only the databases its step names, and each of its statements passes
//! [`guard`] first and a check of the session after (see there): it stays in the database,
//! in the host's transaction, and in the role the host connected as.

pub mod guard;
mod host;
mod values;

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

pub use host::PgView;

use crate::bindings::postgres::{PgError, ServerError};
use crate::bindings::sqlite::{Rows, Value};
use crate::change::{Change, ChangeKind};
use crate::dbname::{DbName, PgTarget};

/// The result of a PostgreSQL call as the guest sees it.
pub type PgResult<T> = Result<T, PgError>;

/// How long a connection attempt may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The savepoint of a guest transaction under a dry run.
const STEP_SAVEPOINT: &str = "idem_step";
/// The savepoint around one statement run outside a guest transaction under a dry run.
const STATEMENT_SAVEPOINT: &str = "idem_statement";

/// Write marks (`$1` state key, `$2` scope, `$3` keys, `$4` values); a bare mark (a null
/// value) never clears a value. Run by the state store, and by this capability inside a
/// target's transaction to commit an `each` record's marks with its effect.
pub const WRITE_MARKS: &str = "INSERT INTO idem.checkpoints (state_key, scope, key, value)
     SELECT $1, $2, k, v FROM unnest($3::text[], $4::text[]) AS m(k, v)
     ON CONFLICT (state_key, scope, key) DO UPDATE SET value = excluded.value
     WHERE excluded.value IS NOT NULL";

/// The run's state store, when it is a PostgreSQL database and the run applies.
#[derive(Clone, Debug)]
pub struct StateHome {
    /// Which server and database it is ([`crate::dbname::server_identity`]).
    pub identity: String,
    /// The job's state key.
    pub key: String,
}

struct Conn {
    target: PgTarget,
    /// Which server and database this is, once asked.
    identity: Option<String>,
    /// The session as a plugin first found it (`current_user`, `session_user`,
    /// `search_path`), which its statements must leave as it was.
    session: Option<String>,
    /// A plugin's statement changed the session: the connection is not used again.
    poisoned: bool,
    client: postgres::Client,
    /// A guest transaction is open.
    in_tx: bool,
    /// Under a dry run: the run's transaction, rolled back when the connection closes.
    dry_run: bool,
    /// Rows written and whether the schema changed, since the changes were last taken.
    rows: u64,
    schema_changed: bool,
    /// Those counters at `begin`, restored by `rollback`.
    saved: Option<(u64, bool)>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The server rolls back whatever a closed session left open; saying so explicitly
        // ends the dry run's row locks before the socket is torn down.
        if self.dry_run || self.in_tx {
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }
}

/// The PostgreSQL capability's state for a run.
pub struct Connections {
    conns: Vec<Conn>,
    /// Handles by the name as the plan wrote it.
    by_name: HashMap<String, usize>,
    dry_run: bool,
    /// Where marks committed with an effect go.
    home: Option<StateHome>,
}

impl Connections {
    /// No connection yet; `dry_run` decides how every connection opened later behaves.
    pub fn new(dry_run: bool) -> Self {
        Connections {
            conns: Vec::new(),
            by_name: HashMap::new(),
            dry_run,
            home: None,
        }
    }

    /// The run's state store is this PostgreSQL database: marks given to
    /// [`Connections::commit_with_marks`] on a connection to it commit with the effect.
    pub fn set_state_home(&mut self, home: StateHome) {
        self.home = Some(home);
    }

    /// The handle of the database `name` (a URL or `env:NAME`), connecting at first use.
    pub fn open(&mut self, name: &str) -> PgResult<usize> {
        if let Some(&h) = self.by_name.get(name) {
            return Ok(h);
        }
        let target = match crate::dbname::resolve(name) {
            Ok(DbName::Postgres(t)) => *t,
            Ok(DbName::File(path)) => return Err(PgError::NotPostgres(path)),
            Err(e) => return Err(PgError::Invalid(e.to_string())),
        };
        let client = connect(&target)?;
        let mut conn = Conn {
            target,
            identity: None,
            session: None,
            poisoned: false,
            client,
            in_tx: false,
            dry_run: false,
            rows: 0,
            schema_changed: false,
            saved: None,
        };
        if self.dry_run {
            conn.client
                .batch_execute("BEGIN")
                .map_err(|e| pg_error(&conn.target, e))?;
            conn.dry_run = true;
        }
        self.conns.push(conn);
        let h = self.conns.len() - 1;
        self.by_name.insert(name.to_owned(), h);
        Ok(h)
    }

    fn conn(&mut self, h: usize) -> PgResult<&mut Conn> {
        let c = self
            .conns
            .get_mut(h)
            .ok_or_else(|| PgError::Invalid("closed PostgreSQL connection handle".into()))?;
        if c.poisoned {
            return Err(PgError::Denied(format!(
                "{}: a plugin's statement changed this session's role or search_path; the \
                 connection is not used again in this run",
                c.target.shown()
            )));
        }
        Ok(c)
    }

    /// Remember the session as it is, before a plugin's first statement on `h`.
    pub fn note_session(&mut self, h: usize) -> PgResult<()> {
        let c = self.conn(h)?;
        if c.session.is_none() {
            let now = session_of(&mut c.client).map_err(|e| pg_error(&c.target, e))?;
            c.session = Some(now);
        }
        Ok(())
    }

    /// After a plugin's statement: the session must be as [`Connections::note_session`] found
    /// it. When it is not, the guest's transaction is rolled back, the connection is never
    /// used again, and the step is denied.
    pub fn check_session(&mut self, h: usize) -> PgResult<()> {
        let c = self.conn(h)?;
        let now = session_of(&mut c.client).ok();
        if now.is_some() && now == c.session {
            return Ok(());
        }
        let _ = c.client.batch_execute("ROLLBACK");
        c.in_tx = false;
        c.poisoned = true;
        Err(PgError::Denied(format!(
            "{}: the statement changed the session's role or search_path (now {}, was {}); \
             plugins may not",
            c.target.shown(),
            now.as_deref().unwrap_or("unknown"),
            c.session.as_deref().unwrap_or("unknown")
        )))
    }

    /// Every database opened, as shown (without a password), sorted.
    pub fn opened(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .conns
            .iter()
            .map(|c| c.target.shown().to_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The database's name without its password.
    pub fn shown(&self, h: usize) -> String {
        self.conns
            .get(h)
            .map(|c| c.target.shown().to_owned())
            .unwrap_or_default()
    }

    /// Run `f` on connection `h`; under a dry run outside a guest transaction, inside a
    /// savepoint of its own, so that a failing statement leaves the run's transaction usable.
    fn guarded<T>(
        &mut self,
        h: usize,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> PgResult<T> {
        let c = self.conn(h)?;
        let own = c.dry_run && !c.in_tx;
        if own {
            c.client
                .batch_execute(&format!("SAVEPOINT {STATEMENT_SAVEPOINT}"))
                .map_err(|e| pg_error(&c.target, e))?;
        }
        let r = f(&mut c.client);
        if own {
            let end = if r.is_ok() {
                format!("RELEASE SAVEPOINT {STATEMENT_SAVEPOINT}")
            } else {
                format!("ROLLBACK TO SAVEPOINT {STATEMENT_SAVEPOINT}")
            };
            c.client
                .batch_execute(&end)
                .map_err(|e| pg_error(&c.target, e))?;
        }
        r.map_err(|e| pg_error(&c.target, e))
    }

    /// Run one statement with text parameters; the rows it changed.
    pub fn execute(&mut self, h: usize, sql: &str, params: &[Value]) -> PgResult<u64> {
        let params = values::params(params);
        let refs = values::refs(&params);
        let n = self.guarded(h, |c| c.execute(sql, &refs))?;
        let c = self.conn(h)?;
        match what_it_changes(sql) {
            Changes::Schema => c.schema_changed = true,
            Changes::Rows => c.rows += n,
            Changes::Session => {}
        }
        Ok(n)
    }

    /// The changes to databases since the last call, one entry per kind and database, each
    /// named without its password.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        for c in &mut self.conns {
            if c.schema_changed {
                out.push(Change::new(ChangeKind::AlterSchema, c.target.shown()));
                c.schema_changed = false;
            }
            if c.rows > 0 {
                let mut change = Change::new(ChangeKind::WriteRows, c.target.shown());
                change.rows = Some(c.rows);
                out.push(change);
                c.rows = 0;
            }
            if c.saved.is_some() {
                c.saved = Some((0, false));
            }
        }
        out
    }

    /// Roll back the transactions a finished step left open; the databases' names.
    pub fn abandon_open_transactions(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        for h in 0..self.conns.len() {
            if self.conns[h].in_tx {
                left.push(self.conns[h].target.shown().to_owned());
                let _ = self.rollback(h);
            }
        }
        left
    }

    /// Run one query with text parameters; its rows, converted.
    pub fn query(&mut self, h: usize, sql: &str, params: &[Value]) -> PgResult<Rows> {
        let params = values::params(params);
        let refs = values::refs(&params);
        let rows = self.guarded(h, |c| c.query(sql, &refs))?;
        values::rows(&rows)
    }

    /// Run `COPY … FROM STDIN` with `data`; the rows copied.
    pub fn copy_in(&mut self, h: usize, sql: &str, data: &[u8]) -> PgResult<u64> {
        let mut io_error = None;
        let r = self.guarded(h, |c| {
            let mut w = c.copy_in(sql)?;
            if let Err(e) = w.write_all(data) {
                io_error = Some(e);
            }
            w.finish()
        });
        match (r, io_error) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(PgError::Connect(format!("sending COPY data: {e}"))),
            (Ok(n), None) => Ok(n),
        }
    }

    /// Begin the guest's transaction (a savepoint under a dry run).
    pub fn begin(&mut self, h: usize) -> PgResult<()> {
        let c = self.conn(h)?;
        if c.in_tx {
            return Err(PgError::Invalid(format!(
                "{}: a transaction is already open",
                c.target.shown()
            )));
        }
        let sql = if c.dry_run {
            format!("SAVEPOINT {STEP_SAVEPOINT}")
        } else {
            "BEGIN".to_owned()
        };
        c.client
            .batch_execute(&sql)
            .map_err(|e| pg_error(&c.target, e))?;
        c.in_tx = true;
        c.saved = Some((c.rows, c.schema_changed));
        Ok(())
    }

    /// Commit the guest's transaction (release its savepoint under a dry run).
    pub fn commit(&mut self, h: usize) -> PgResult<()> {
        self.end(h, true)
    }

    /// Commit the guest's transaction with checkpoint marks (`scope` already namespaced by the
    /// step's policy): when the run's state store is this same server and database, the marks
    /// are written inside the transaction just before COMMIT, so the effect and its marks are
    /// durable together or not at all. True when they were; otherwise (the state is
    /// elsewhere, or a dry run, which writes no marks here) this only commits, and the guest
    /// marks through `checkpoint`.
    pub fn commit_with_marks(
        &mut self,
        h: usize,
        scope: &str,
        entries: &[(String, Option<String>)],
    ) -> PgResult<bool> {
        let Some(home) = self.home.clone() else {
            self.commit(h)?;
            return Ok(false);
        };
        let c = self.conn(h)?;
        if c.dry_run || !c.in_tx {
            self.commit(h)?;
            return Ok(false);
        }
        if c.identity.is_none() {
            let id = crate::dbname::server_identity(&mut c.client)
                .map_err(|e| pg_error(&c.target, e))?;
            c.identity = Some(id);
        }
        if c.identity.as_deref() != Some(home.identity.as_str()) {
            self.commit(h)?;
            return Ok(false);
        }
        let (keys, values): (Vec<&String>, Vec<&Option<String>>) =
            entries.iter().map(|(k, v)| (k, v)).unzip();
        if let Err(e) = c
            .client
            .execute(WRITE_MARKS, &[&home.key, &scope, &keys, &values])
        {
            let e = pg_error(&c.target, e);
            let _ = self.rollback(h);
            return Err(e);
        }
        self.commit(h)?;
        Ok(true)
    }

    /// Abandon the guest's transaction.
    pub fn rollback(&mut self, h: usize) -> PgResult<()> {
        self.end(h, false)
    }

    fn end(&mut self, h: usize, commit: bool) -> PgResult<()> {
        let c = self.conn(h)?;
        if !c.in_tx {
            return Err(PgError::Invalid(format!(
                "{}: no transaction is open",
                c.target.shown()
            )));
        }
        let sql = match (c.dry_run, commit) {
            (true, true) => format!("RELEASE SAVEPOINT {STEP_SAVEPOINT}"),
            (true, false) => format!("ROLLBACK TO SAVEPOINT {STEP_SAVEPOINT}"),
            (false, true) => "COMMIT".to_owned(),
            (false, false) => "ROLLBACK".to_owned(),
        };
        c.in_tx = false;
        if let Some((rows, schema)) = c.saved.take()
            && !commit
        {
            (c.rows, c.schema_changed) = (rows, schema);
        }
        c.client
            .batch_execute(&sql)
            .map_err(|e| pg_error(&c.target, e))
    }
}

/// What a statement run through `execute` changes, for the step's report: told from its
/// first words, since the driver returns only a row count. Work on temporary tables (the
/// standard upsert's staging table) is the session's, not the database's.
#[derive(Debug, PartialEq, Eq)]
enum Changes {
    Schema,
    Rows,
    Session,
}

fn what_it_changes(sql: &str) -> Changes {
    let upper = sql.trim_start().to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().take(6).collect();
    let temp = words
        .iter()
        .any(|w| matches!(*w, "TEMP" | "TEMPORARY") || w.starts_with("PG_TEMP."));
    match words.first().copied() {
        _ if temp => Changes::Session,
        Some("CREATE" | "ALTER" | "DROP" | "COMMENT" | "TRUNCATE") => Changes::Schema,
        Some("INSERT" | "UPDATE" | "DELETE" | "MERGE" | "WITH") => Changes::Rows,
        _ => Changes::Session,
    }
}

/// Who the session is and where it looks for names.
fn session_of(c: &mut postgres::Client) -> Result<String, postgres::Error> {
    Ok(c.query_one(
        "SELECT current_user::text || ' ' || session_user::text || ' search_path=' || current_setting('search_path')",
        &[],
    )?
    .get(0))
}

/// Connect to `target`, with a connection timeout when its URL gives none.
pub fn connect(target: &PgTarget) -> PgResult<postgres::Client> {
    let mut config = target.config().clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let tls = crate::pgtls::connector(target.tls())
        .map_err(|e| PgError::Connect(format!("connecting to {}: {e}", target.shown())))?;
    config.connect(tls).map_err(|e| {
        PgError::Connect(format!(
            "connecting to {}: {}",
            target.shown(),
            target.scrub(&chain(&e))
        ))
    })
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// A driver error as the guest sees it, scrubbed of the target's password.
fn pg_error(target: &PgTarget, e: postgres::Error) -> PgError {
    match e.as_db_error() {
        Some(db) => {
            let mut message = db.message().to_owned();
            if let Some(d) = db.detail() {
                message.push_str(&format!(" ({d})"));
            }
            if let Some(w) = db.where_() {
                message.push_str(&format!(" [{w}]"));
            }
            PgError::Server(ServerError {
                sqlstate: db.code().code().to_owned(),
                message: target.scrub(&message),
            })
        }
        None => PgError::Connect(format!("{}: {}", target.shown(), target.scrub(&chain(&e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_told_apart_by_what_they_change() {
        assert_eq!(what_it_changes("CREATE TABLE t (id int)"), Changes::Schema);
        assert_eq!(
            what_it_changes("  alter table t add column n int"),
            Changes::Schema
        );
        assert_eq!(
            what_it_changes("CREATE TEMP TABLE s AS SELECT 1"),
            Changes::Session
        );
        assert_eq!(what_it_changes("DROP TABLE pg_temp.s"), Changes::Session);
        assert_eq!(
            what_it_changes("DROP TABLE IF EXISTS pg_temp.s"),
            Changes::Session
        );
        assert_eq!(what_it_changes("UPDATE t SET n = 1"), Changes::Rows);
        assert_eq!(what_it_changes("SET lock_timeout = 1"), Changes::Session);
    }
}
