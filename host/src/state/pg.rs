//! The state store's PostgreSQL backend: runs, journal, checkpoints, lock holders and claims
//! in a schema `idem` that idem creates and migrates (versioned in `idem.schema_version`),
//! shared by many jobs, each under its own state key.
//!
//! A dry run never creates or writes anything here: it only reads (a database without the
//! schema reads as a new store). Claims let cooperating runners split an `each` step's
//! records: a claim belongs to the database session that took it, and is free again once that
//! session is gone, which the server notices at once when a runner is killed (and through TCP
//! keepalives when it is cut off); so no coordinator and no lease renewal are needed.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Result;
use postgres::Client;

use super::{HistoryFilter, JournalEntry, RunFailure, RunRecord, timestamp};
use crate::change::Change;
use crate::dbname::PgTarget;

/// The schema's versions, in order; `idem.schema_version` holds how many were applied. Each
/// only adds, so an older idem still reads a newer store.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE idem.runs (
        id bigserial PRIMARY KEY,
        state_key text NOT NULL,
        started text NOT NULL,
        ended text,
        mode text NOT NULL,
        plan text NOT NULL,
        plan_hash text NOT NULL,
        outcome text,
        changes bigint,
        pid bigint NOT NULL,
        host text NOT NULL,
        ci_run_id text,
        ci_run_attempt text,
        error text,
        failed_step bigint,
        failed_step_name text,
        session_pid integer NOT NULL,
        session_start timestamptz NOT NULL
     );
     CREATE INDEX runs_by_key ON idem.runs (state_key, id);
     CREATE TABLE idem.journal (
        id bigserial PRIMARY KEY,
        run_id bigint NOT NULL REFERENCES idem.runs (id),
        step bigint NOT NULL,
        step_name text NOT NULL,
        kind text NOT NULL,
        target text NOT NULL,
        rows bigint,
        hash_before text,
        hash_after text,
        at text NOT NULL
     );
     CREATE INDEX journal_run ON idem.journal (run_id);
     CREATE TABLE idem.checkpoints (
        state_key text NOT NULL,
        scope text NOT NULL,
        key text NOT NULL,
        value text,
        PRIMARY KEY (state_key, scope, key)
     );
     CREATE TABLE idem.holders (
        state_key text NOT NULL,
        session_pid integer NOT NULL,
        session_start timestamptz NOT NULL,
        pid bigint NOT NULL,
        host text NOT NULL,
        started text NOT NULL,
        mode text NOT NULL,
        PRIMARY KEY (state_key, session_pid, session_start)
     );
     CREATE TABLE idem.claims (
        state_key text NOT NULL,
        scope text NOT NULL,
        key text NOT NULL,
        owner_pid integer NOT NULL,
        owner_start timestamptz NOT NULL,
        PRIMARY KEY (state_key, scope, key)
     );",
];

/// Serialises migrations between runners that start at the same moment.
const MIGRATION_LOCK: i64 = 0x1de3_5ca1_0000_0001;

/// This session's identity as claims and runs record it: (pid, start) is unique over the
/// server's life, where a pid alone is reused.
const SESSION: &str = "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())";

/// Whether the session that recorded a row (`pid`, `start` columns) is still connected.
fn alive(pid: &str, start: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = {pid} AND a.backend_start = {start})"
    )
}

/// Connect to `target`, with keepalives so a runner cut off by the network loses its session
/// (and with it its claims and lock) within a minute.
pub fn connect(target: &PgTarget, purpose: &str) -> Result<Client> {
    let mut config = target.config().clone();
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(10))
        .keepalives_interval(std::time::Duration::from_secs(5))
        .keepalives_retries(3)
        .connect_timeout(std::time::Duration::from_secs(30))
        .application_name(&format!(
            "idem {purpose} pid {} on {}",
            std::process::id(),
            super::hostname()
        ));
    let tls = crate::pgtls::connector(target.tls())
        .map_err(|e| anyhow::anyhow!("connecting to the state database {}: {e}", target.shown()))?;
    config.connect(tls).map_err(|e| {
        anyhow::anyhow!(
            "connecting to the state database {}: {}",
            target.shown(),
            describe(&e)
        )
    })
}

/// A PostgreSQL error as a person reads it: the server's message and detail, or the client's.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                s.push_str(&format!(": {c}"));
                src = c.source();
            }
            s
        }
    }
}

/// The store's connection and the job it serves.
pub struct PgStore {
    client: Mutex<Client>,
    key: String,
    shown: String,
    /// Which server and database this is ([`crate::dbname::server_identity`]): a target
    /// connection to the same one commits an `each` record's marks with its effect.
    pub identity: String,
}

impl PgStore {
    /// Open the store for state key `key`: the schema created and migrated under apply; under
    /// a dry run only read, and `None` when it does not exist yet.
    pub fn open(target: &PgTarget, key: &str, dry_run: bool) -> Result<Option<PgStore>> {
        let mut client = connect(target, "state")?;
        let shown = target.shown().to_string();
        let identity = crate::dbname::server_identity(&mut client)
            .map_err(|e| pg_err(e, &shown, "reading"))?;
        if dry_run {
            let made: bool = client
                .query_one("SELECT to_regclass('idem.schema_version') IS NOT NULL", &[])
                .map_err(|e| pg_err(e, &shown, "reading"))?
                .get(0);
            if !made {
                return Ok(None);
            }
        } else {
            migrate(&mut client).map_err(|e| pg_err(e, &shown, "creating or upgrading"))?;
        }
        Ok(Some(PgStore {
            client: Mutex::new(client),
            key: key.to_string(),
            shown,
            identity,
        }))
    }

    /// The job's state key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wrap(&self, what: &str) -> impl Fn(postgres::Error) -> anyhow::Error + '_ {
        let what = what.to_string();
        move |e| pg_err(e, &self.shown, &what)
    }

    /// Record a run's start; true when an earlier run of this key was interrupted (its
    /// session is gone without its end recorded, or the last one was stopped by a signal).
    pub fn begin_run(&self, mode: &str, plan: &str, plan_hash: &str) -> Result<(i64, bool)> {
        let mut c = self.client();
        let mut tx = c.transaction().map_err(self.wrap("recording the run in"))?;
        let killed = tx
            .execute(
                &format!(
                    "UPDATE idem.runs r SET outcome = 'interrupted'
                     WHERE state_key = $1 AND ended IS NULL AND outcome IS NULL
                       AND NOT {}",
                    alive("r.session_pid", "r.session_start")
                ),
                &[&self.key],
            )
            .map_err(self.wrap("recording the run in"))?;
        let stopped: Option<bool> = tx
            .query_opt(
                "SELECT outcome = 'interrupted' FROM idem.runs WHERE state_key = $1
                 ORDER BY id DESC LIMIT 1",
                &[&self.key],
            )
            .map_err(self.wrap("recording the run in"))?
            .and_then(|r| r.get(0));
        let id: i64 = tx
            .query_one(
                &format!(
                    "INSERT INTO idem.runs (state_key, started, mode, plan, plan_hash, pid, host,
                        ci_run_id, ci_run_attempt, session_pid, session_start)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, pg_backend_pid(), {SESSION})
                     RETURNING id"
                ),
                &[
                    &self.key,
                    &timestamp(),
                    &mode,
                    &plan,
                    &plan_hash,
                    &i64::from(std::process::id()),
                    &super::hostname(),
                    &std::env::var("GITHUB_RUN_ID").ok(),
                    &std::env::var("GITHUB_RUN_ATTEMPT").ok(),
                ],
            )
            .map_err(self.wrap("recording the run in"))?
            .get(0);
        tx.commit().map_err(self.wrap("recording the run in"))?;
        Ok((id, killed > 0 || stopped.unwrap_or(false)))
    }

    pub fn finish_run(
        &self,
        id: i64,
        outcome: &str,
        changes: usize,
        failure: Option<&RunFailure>,
    ) -> Result<()> {
        self.client()
            .execute(
                "UPDATE idem.runs SET ended = $1, outcome = $2, changes = $3, error = $4,
                 failed_step = $5, failed_step_name = $6 WHERE id = $7",
                &[
                    &timestamp(),
                    &outcome,
                    &(changes as i64),
                    &failure.map(|f| f.error.as_str()),
                    &failure.and_then(|f| f.step).map(|s| s as i64),
                    &failure.and_then(|f| f.step_name.as_deref()),
                    &id,
                ],
            )
            .map_err(self.wrap("recording the run's end in"))?;
        Ok(())
    }

    pub fn journal(
        &self,
        run: i64,
        step: usize,
        step_name: &str,
        changes: &[Change],
    ) -> Result<()> {
        let mut c = self.client();
        let mut tx = c
            .transaction()
            .map_err(self.wrap("writing the journal to"))?;
        let at = timestamp();
        let s = tx
            .prepare(
                "INSERT INTO idem.journal (run_id, step, step_name, kind, target, rows,
                    hash_before, hash_after, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .map_err(self.wrap("writing the journal to"))?;
        for ch in changes {
            tx.execute(
                &s,
                &[
                    &run,
                    &(step as i64),
                    &step_name,
                    &ch.kind.as_str(),
                    &ch.journal_target(),
                    &ch.rows.map(|r| r as i64),
                    &ch.before,
                    &ch.after,
                    &at,
                ],
            )
            .map_err(self.wrap("writing the journal to"))?;
        }
        tx.commit().map_err(self.wrap("writing the journal to"))?;
        Ok(())
    }

    /// The stored value of each key (`Some("")` for a bare mark), in one round trip.
    pub fn values(&self, scope: &str, keys: &[String]) -> Result<Vec<Option<String>>> {
        let rows = self
            .client()
            .query(
                "SELECT key, coalesce(value, '') FROM idem.checkpoints
                 WHERE state_key = $1 AND scope = $2 AND key = ANY($3)",
                &[&self.key, &scope, &keys],
            )
            .map_err(self.wrap("reading checkpoints from"))?;
        let found: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    /// Write marks in one transaction; a bare mark never clears a value.
    pub fn write(
        &self,
        marks: &HashMap<String, std::collections::BTreeMap<String, Option<String>>>,
    ) -> Result<()> {
        let mut c = self.client();
        let mut tx = c
            .transaction()
            .map_err(self.wrap("writing checkpoints to"))?;
        for (scope, entries) in marks {
            let (keys, values): (Vec<&String>, Vec<&Option<String>>) = entries.iter().unzip();
            tx.execute(
                crate::cap::postgres::WRITE_MARKS,
                &[&self.key, scope, &keys, &values],
            )
            .map_err(self.wrap("writing checkpoints to"))?;
        }
        tx.commit().map_err(self.wrap("writing checkpoints to"))?;
        Ok(())
    }

    /// At most `limit` marks of `scope` with keys after `after`, in key order (byte order, as
    /// the SQLite store and the dry run's buffer sort), with values (`""` for a bare mark).
    pub fn list(
        &self,
        scope: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        let rows = self
            .client()
            .query(
                "SELECT key, coalesce(value, '') FROM idem.checkpoints
                 WHERE state_key = $1 AND scope = $2 AND ($3::text IS NULL OR key COLLATE \"C\" > $3)
                 ORDER BY key COLLATE \"C\" LIMIT $4",
                &[&self.key, &scope, &after, &(limit as i64)],
            )
            .map_err(self.wrap("reading checkpoints from"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Forget the marks of `keys` in `scope`.
    pub fn unmark(&self, scope: &str, keys: &[String]) -> Result<()> {
        self.client()
            .execute(
                "DELETE FROM idem.checkpoints WHERE state_key = $1 AND scope = $2 AND key = ANY($3)",
                &[&self.key, &scope, &keys],
            )
            .map_err(self.wrap("forgetting checkpoints in"))?;
        Ok(())
    }

    pub fn clear(&self, scope: &str) -> Result<()> {
        self.client()
            .execute(
                "DELETE FROM idem.checkpoints WHERE state_key = $1 AND scope = $2",
                &[&self.key, &scope],
            )
            .map_err(self.wrap("clearing checkpoints in"))?;
        Ok(())
    }

    /// Claim, for this session, those of `entries` (key, the mark the caller saw) that no live
    /// session holds, then keep only those whose mark is still what the caller saw: a key
    /// another runner finished between the caller's look and its claim is not taken again.
    pub fn claim(&self, scope: &str, entries: &[(String, Option<String>)]) -> Result<Vec<bool>> {
        let mut keys: Vec<&String> = entries.iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        let mut c = self.client();
        let taken: std::collections::HashSet<String> = c
            .query(
                &format!(
                    "INSERT INTO idem.claims AS c (state_key, scope, key, owner_pid, owner_start)
                     SELECT $1, $2, k, pg_backend_pid(), {SESSION}
                     FROM unnest($3::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n
                     ON CONFLICT (state_key, scope, key) DO UPDATE
                        SET owner_pid = excluded.owner_pid, owner_start = excluded.owner_start
                     WHERE (c.owner_pid, c.owner_start) = (excluded.owner_pid, excluded.owner_start)
                        OR NOT {}
                     RETURNING key",
                    alive("c.owner_pid", "c.owner_start")
                ),
                &[&self.key, &scope, &keys],
            )
            .map_err(self.wrap("claiming records in"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(c);
        let claimed: Vec<String> = entries
            .iter()
            .filter(|(k, _)| taken.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        let now: HashMap<String, Option<String>> = claimed
            .iter()
            .cloned()
            .zip(self.values(scope, &claimed)?)
            .collect();
        Ok(entries
            .iter()
            .map(|(k, seen)| taken.contains(k) && now.get(k) == Some(seen))
            .collect())
    }

    /// Recent runs of this key, newest first, with their journals. A run without an end whose
    /// session is gone is shown as interrupted.
    pub fn history(&self, filter: &HistoryFilter) -> Result<Vec<RunRecord>> {
        let mut c = self.client();
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            filter.limit as i64
        };
        let rows = c
            .query(
                &format!(
                    "SELECT id, started, ended, mode, plan,
                        CASE WHEN ended IS NULL AND outcome IS NULL
                              AND NOT {} THEN 'interrupted' ELSE outcome END,
                        changes, ci_run_id, ci_run_attempt, error, failed_step, failed_step_name
                     FROM idem.runs r
                     WHERE state_key = $1 AND ($2::text IS NULL OR started >= $2)
                     ORDER BY id DESC",
                    alive("r.session_pid", "r.session_start")
                ),
                &[&self.key, &filter.since],
            )
            .map_err(self.wrap("reading history from"))?;
        let mut runs = Vec::new();
        for r in rows {
            let outcome: Option<String> = r.get(5);
            if filter.failed && outcome.as_deref().is_none_or(|o| o == "ok") {
                continue;
            }
            if runs.len() as i64 >= limit {
                break;
            }
            let error: Option<String> = r.get(9);
            runs.push(RunRecord {
                id: r.get(0),
                started: r.get(1),
                ended: r.get(2),
                mode: r.get(3),
                plan: r.get(4),
                outcome,
                changes: r.get(6),
                ci_run_id: r.get(7),
                ci_run_attempt: r.get(8),
                failure: error.map(|error| RunFailure {
                    error,
                    step: r.get::<_, Option<i64>>(10).map(|s| s as usize),
                    step_name: r.get(11),
                }),
                journal: Vec::new(),
            });
        }
        let j = c
            .prepare(
                "SELECT step, step_name, kind, target, rows, hash_before, hash_after, at
                 FROM idem.journal WHERE run_id = $1 ORDER BY id",
            )
            .map_err(self.wrap("reading history from"))?;
        for run in &mut runs {
            run.journal = c
                .query(&j, &[&run.id])
                .map_err(self.wrap("reading history from"))?
                .iter()
                .map(|r| JournalEntry {
                    step: r.get(0),
                    step_name: r.get(1),
                    kind: r.get(2),
                    target: r.get(3),
                    rows: r.get(4),
                    hash_before: r.get(5),
                    hash_after: r.get(6),
                    at: r.get(7),
                })
                .collect();
        }
        Ok(runs)
    }
}

fn pg_err(e: postgres::Error, shown: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what} the state database {shown}: {}", describe(&e))
}

/// Create the schema and apply the migrations it has not had, in one transaction, under a
/// transaction-level advisory lock so runners starting together do it once.
fn migrate(c: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS idem;
         CREATE TABLE IF NOT EXISTS idem.schema_version (version integer NOT NULL);",
    )?;
    let version: Option<i32> = tx
        .query_opt("SELECT version FROM idem.schema_version", &[])?
        .map(|r| r.get(0));
    let from = version.unwrap_or(0) as usize;
    for m in MIGRATIONS.iter().skip(from) {
        tx.batch_execute(m)?;
    }
    let to = MIGRATIONS.len() as i32;
    match version {
        None => {
            tx.execute("INSERT INTO idem.schema_version VALUES ($1)", &[&to])?;
        }
        Some(v) if (v as usize) < MIGRATIONS.len() => {
            tx.execute("UPDATE idem.schema_version SET version = $1", &[&to])?;
        }
        Some(_) => {}
    }
    tx.commit()
}

/// The advisory lock key of a state key: a 64-bit FNV-1a hash, stable across builds.
pub fn lock_key(state_key: &str) -> i64 {
    let h = format!("idem-state:{state_key}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    h as i64
}

/// The run lock in PostgreSQL: a session advisory lock on the state key's [`lock_key`], on a
/// connection of its own held for the run. The server releases it the moment the session
/// ends, however the runner died.
pub struct PgLock {
    _client: Client,
}

/// How a run takes the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// A lone apply: nobody else runs this key meanwhile.
    Exclusive,
    /// A cooperating apply (`--cooperate`, `--shard`): with others like it, never with a lone
    /// apply.
    SharedApply,
    /// A dry run: beside other dry runs and cooperating applies, never a lone apply. Writes
    /// nothing.
    DryRun,
}

impl PgLock {
    pub fn take(
        target: &PgTarget,
        key: &str,
        mode: LockMode,
        timeout: std::time::Duration,
    ) -> Result<PgLock> {
        let mut c = connect(target, "lock")?;
        let shown = target.shown();
        let k = lock_key(key);
        let sql = if mode == LockMode::Exclusive {
            "SELECT pg_try_advisory_lock($1)"
        } else {
            "SELECT pg_try_advisory_lock_shared($1)"
        };
        let start = std::time::Instant::now();
        let mut announced = false;
        loop {
            let got: bool = c
                .query_one(sql, &[&k])
                .map_err(|e| pg_err(e, shown, "locking the state key in"))?
                .get(0);
            if got {
                break;
            }
            let holder = holders(&mut c, key, k);
            if let Some(signal) = crate::signal::requested() {
                anyhow::bail!(
                    "stopped by {} while waiting for another idem run of state key {key:?} in \
                     {shown} ({holder}); nothing was done",
                    crate::signal::name(signal)
                );
            }
            if start.elapsed() >= timeout {
                anyhow::bail!(
                    "another idem run holds the lock on state key {key:?} in {shown} \
                     ({holder}); waited {} s. Let it finish, raise --lock-timeout, or give \
                     this job its own --state-key",
                    timeout.as_secs()
                );
            }
            if !announced {
                eprintln!(
                    "idem: waiting for another run of state key {key:?} ({holder}), up to {} s",
                    timeout.as_secs()
                );
                announced = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if mode != LockMode::DryRun {
            // The holders table is the schema's: the first apply on a database makes it.
            migrate(&mut c).map_err(|e| pg_err(e, shown, "creating or upgrading"))?;
            let mut tx = c
                .transaction()
                .map_err(|e| pg_err(e, shown, "recording the lock holder in"))?;
            // Rows of sessions that are gone are stale: their locks were released.
            tx.execute(
                &format!(
                    "DELETE FROM idem.holders h WHERE state_key = $1 AND NOT {}",
                    alive("h.session_pid", "h.session_start")
                ),
                &[&key],
            )
            .and_then(|_| {
                tx.execute(
                    &format!(
                        "INSERT INTO idem.holders (state_key, session_pid, session_start, pid, host,
                            started, mode)
                         VALUES ($1, pg_backend_pid(), {SESSION}, $2, $3, $4, $5)"
                    ),
                    &[
                        &key,
                        &i64::from(std::process::id()),
                        &super::hostname(),
                        &timestamp(),
                        &if mode == LockMode::Exclusive {
                            "apply"
                        } else {
                            "cooperating apply"
                        },
                    ],
                )
            })
            .and_then(|_| tx.commit())
            .map_err(|e| pg_err(e, shown, "recording the lock holder in"))?;
        }
        Ok(PgLock { _client: c })
    }
}

/// Who holds the lock on `key`, for a person: the recorded holders whose sessions live, or
/// (for a dry run, which records nothing) the sessions the server shows holding it.
fn holders(c: &mut Client, key: &str, k: i64) -> String {
    let recorded = c.query(
        &format!(
            "SELECT mode, pid, host, started FROM idem.holders h
             WHERE state_key = $1 AND {} ORDER BY started",
            alive("h.session_pid", "h.session_start")
        ),
        &[&key],
    );
    if let Ok(rows) = recorded
        && !rows.is_empty()
    {
        return rows
            .iter()
            .map(|r| {
                format!(
                    "{} pid {} on {} since {}",
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let seen = c.query(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.classid = (($1::bigint >> 32) & 4294967295)::oid
           AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1",
        &[&k],
    );
    match seen {
        Ok(rows) if !rows.is_empty() => rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("; "),
        _ => "its holder is not recorded".into(),
    }
}
