//! A plugin that misbehaves on purpose, one way per `mode` of its config, so the tests in
//! `host/tests/it/plugins.rs` can check that the host stops or refuses each one. It reports
//! host errors as its own step error (keeping the host's error as the cause), so the tests
//! see exactly what the host said.
//!
//! Config: `{"mode": "...", "path": "...", "database": "...", "items": [...], "fail-at": "..."}`;
//! only what a mode needs. Modes:
//! - `write`: write `path` (`..`, absolute, through a symlink: whatever the test gives).
//! - `read`: read `path`.
//! - `open-database`: open `database`.
//! - `sql`: open `database` and execute `sql`.
//! - `pg-sql`: open the PostgreSQL database `database` (a URL or `env:NAME`) and execute `sql`.
//! - `pg-copy`: open the PostgreSQL database `database` and run `sql` through `copy-in` with
//!   `content` as the data.
//! - `pg-items`: a well-behaved PostgreSQL step: in one transaction of the host's, ensure
//!   table `items (name text primary key)` of `database` holds each of `items`, inserting
//!   only the missing ones (`inserted` counts them); when `sql` is given, run it first, inside
//!   the transaction (to try transaction control from inside one).
//! - `loop`: never return.
//! - `allocate`: allocate memory until something gives.
//! - `trap-halfway`: write `a.txt`, `b.txt`, `c.txt` under `path`, then panic before `d.txt`.
//! - `dry-run-writes`: create a directory, write a file, remove a file, insert a row,
//!   without ever asking whether this is a dry run.
//! - `checkpoint`: for each of `items` not yet done, write `path/ITEM.txt` and mark it done;
//!   fail at `fail-at` when given.
//! - `well-behaved`: ensure `path` holds `content`.
//! - `stderr`: write `size` bytes of noise and then `content` to standard error, then behave
//!   as `well-behaved`.
//! - `panic`: write `content` to standard error, then panic.
//! - `hold-memory`: allocate and touch `size` MiB, keep it, and succeed.
//! - `leak-readers`: open `count` readers of `path` and never close them, and succeed.
//! - `query`: open `database` and run the query `sql`, reporting the rows it returned.
//! - `chmod`: set the mode of `path` to `size` (octal digits as a decimal number: 4755).
//! - `sleep`: sleep `size` seconds (a wait in the host's poll, where no epoch reaches).
//! - `once-only`: write `path`, but fail when it is already there (a step that never
//!   converges: its second run fails).
//! - `upsert`: ensure table `items (name, len)` of `database` holds one row per item, in one
//!   transaction, writing only rows that differ (a well-behaved database step).

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

use exports::idem::plugin::step::Guest;
use idem::plugin::report::{Counter, StepError, StepReport};
use idem::plugin::types::Error;
use idem::plugin::{checkpoint, fs, postgres, sqlite};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct Config {
    mode: String,
    path: String,
    database: String,
    sql: String,
    content: String,
    items: Vec<String>,
    fail_at: Option<String>,
    size: u64,
    count: u64,
}

/// The component: the `step` export.
#[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
struct Hostile;

fn host(what: &str, e: Error) -> StepError {
    let detail = match &e {
        Error::Denied(s) => format!("denied: {s}"),
        Error::NotFound(s) => format!("not found: {s}"),
        Error::WrongKind(s) | Error::NotEmpty(s) | Error::Invalid(s) | Error::Io(s) => s.clone(),
        Error::Sqlite(s) => format!("sqlite {}: {}", s.code, s.message),
    };
    StepError {
        message: format!("{what}: {detail}"),
        cause: Some(e),
    }
}

fn own(message: impl Into<String>) -> StepError {
    StepError {
        message: message.into(),
        cause: None,
    }
}

fn report(counters: &[(&str, u64)]) -> StepReport {
    StepReport {
        counters: counters
            .iter()
            .map(|(n, v)| Counter {
                name: (*n).into(),
                value: *v,
            })
            .collect(),
        failures: Vec::new(),
        message: None,
    }
}

impl Guest for Hostile {
    fn run(config: String) -> Result<StepReport, StepError> {
        let c: Config = serde_json::from_str(&config).map_err(|e| own(format!("config: {e}")))?;
        match c.mode.as_str() {
            "write" => {
                fs::write_atomic(&c.path, b"pwned\n", None)
                    .map_err(|e| host(&format!("writing {}", c.path), e))?;
                Ok(report(&[]))
            }
            "read" => {
                let bytes =
                    fs::read(&c.path).map_err(|e| host(&format!("reading {}", c.path), e))?;
                Ok(report(&[("bytes", bytes.len() as u64)]))
            }
            "open-database" => {
                sqlite::open(&c.database)
                    .map_err(|e| host(&format!("opening {}", c.database), e))?;
                Ok(report(&[]))
            }
            "sql" => {
                let db = sqlite::open(&c.database)
                    .map_err(|e| host(&format!("opening {}", c.database), e))?;
                db.execute(&c.sql, &[]).map_err(|e| host(&c.sql, e))?;
                Ok(report(&[]))
            }
            "pg-sql" => {
                let db = postgres::open(&c.database).map_err(|e| own(pg_text(&e)))?;
                db.execute(&c.sql, &[]).map_err(|e| own(pg_text(&e)))?;
                Ok(report(&[]))
            }
            "pg-copy" => {
                let db = postgres::open(&c.database).map_err(|e| own(pg_text(&e)))?;
                db.copy_in(&c.sql, c.content.as_bytes())
                    .map_err(|e| own(pg_text(&e)))?;
                Ok(report(&[]))
            }
            "pg-items" => {
                let db = postgres::open(&c.database).map_err(|e| own(pg_text(&e)))?;
                db.execute(
                    "CREATE TABLE IF NOT EXISTS items (name text PRIMARY KEY)",
                    &[],
                )
                .map_err(|e| own(pg_text(&e)))?;
                db.begin().map_err(|e| own(pg_text(&e)))?;
                let mut inserted = 0;
                let work = (|| {
                    if !c.sql.is_empty() {
                        db.execute(&c.sql, &[])?;
                    }
                    for item in &c.items {
                        inserted += db.execute(
                            "INSERT INTO items (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                            &[sqlite::Value::Text(item.clone())],
                        )?;
                    }
                    Ok(())
                })();
                match work {
                    Ok(()) => db.commit().map_err(|e| own(pg_text(&e)))?,
                    Err(e) => {
                        let _ = db.rollback();
                        return Err(own(pg_text(&e)));
                    }
                }
                Ok(report(&[("inserted", inserted)]))
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "allocate" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page, so nothing is optimised away or left lazily unmapped.
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "trap-halfway" => {
                fs::create_dir(&c.path, None).map_err(|e| host("creating the directory", e))?;
                for name in ["a.txt", "b.txt", "c.txt", "d.txt"] {
                    if name == "d.txt" {
                        panic!("hostile plugin: giving up halfway, before {name}");
                    }
                    let content = format!("{name} complete\n").repeat(10_000);
                    fs::write_atomic(&format!("{}/{name}", c.path), content.as_bytes(), None)
                        .map_err(|e| host(name, e))?;
                }
                unreachable!()
            }
            "dry-run-writes" => {
                fs::create_dir("made/by/plugin", None).map_err(|e| host("create-dir", e))?;
                fs::write_atomic("made/by/plugin/file.txt", b"written\n", Some(0o600))
                    .map_err(|e| host("write", e))?;
                fs::write_atomic("existing.txt", b"overwritten\n", None)
                    .map_err(|e| host("overwrite", e))?;
                fs::remove("doomed.txt", false).map_err(|e| host("remove", e))?;
                let db = sqlite::open(&c.database).map_err(|e| host("open", e))?;
                db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)", &[])
                    .map_err(|e| host("create table", e))?;
                let n = db
                    .execute(
                        "INSERT INTO t (x) VALUES (?)",
                        &[sqlite::Value::Integer(42)],
                    )
                    .map_err(|e| host("insert", e))?;
                checkpoint::mark("dry", &["k".into()]).map_err(|e| host("mark", e))?;
                Ok(report(&[("rows", n)]))
            }
            "checkpoint" => {
                fs::create_dir(&c.path, None).map_err(|e| host("creating the directory", e))?;
                let done =
                    checkpoint::done("items", &c.items).map_err(|e| host("checkpoint done", e))?;
                let (mut processed, mut skipped) = (0, 0);
                for (item, done) in c.items.iter().zip(done) {
                    if done {
                        skipped += 1;
                        continue;
                    }
                    if c.fail_at.as_deref() == Some(item) {
                        return Err(own(format!("failing at item {item}, as asked")));
                    }
                    fs::write_atomic(&format!("{}/{item}.txt", c.path), item.as_bytes(), None)
                        .map_err(|e| host(item, e))?;
                    checkpoint::mark("items", std::slice::from_ref(item))
                        .map_err(|e| host("checkpoint mark", e))?;
                    processed += 1;
                }
                Ok(report(&[("processed", processed), ("skipped", skipped)]))
            }
            "upsert" => {
                let db = sqlite::open(&c.database)
                    .map_err(|e| host(&format!("opening {}", c.database), e))?;
                db.execute("CREATE TABLE IF NOT EXISTS items (name TEXT PRIMARY KEY, len INTEGER NOT NULL)", &[])
                    .map_err(|e| host("creating the table", e))?;
                db.begin().map_err(|e| host("begin", e))?;
                let stmt = db
                    .prepare(
                        "INSERT INTO items (name, len) VALUES (?1, ?2) \
                         ON CONFLICT (name) DO UPDATE SET len = excluded.len WHERE len IS NOT excluded.len",
                    )
                    .map_err(|e| host("prepare", e))?;
                let rows: Vec<Vec<sqlite::Value>> = c
                    .items
                    .iter()
                    .map(|i| {
                        vec![
                            sqlite::Value::Text(i.clone()),
                            sqlite::Value::Integer(i.len() as i64),
                        ]
                    })
                    .collect();
                let written: u64 = stmt
                    .execute_batch(&rows)
                    .map_err(|e| host("upsert", e))?
                    .iter()
                    .sum();
                db.commit().map_err(|e| host("commit", e))?;
                Ok(report(&[
                    ("written", written),
                    ("unchanged", rows.len() as u64 - written),
                ]))
            }
            "well-behaved" => {
                fs::write_atomic(&c.path, c.content.as_bytes(), None)
                    .map_err(|e| host(&c.path, e))?;
                Ok(report(&[]))
            }
            "stderr" => {
                let line = "noise noise noise noise noise noise noise noise noise noise\n";
                let mut written = 0;
                while written < c.size {
                    eprint!("{line}");
                    written += line.len() as u64;
                }
                eprintln!("{}", c.content);
                fs::write_atomic(&c.path, c.content.as_bytes(), None)
                    .map_err(|e| host(&c.path, e))?;
                Ok(report(&[("stderr-bytes", written)]))
            }
            "panic" => {
                eprintln!("{}", c.content);
                panic!("hostile plugin: panicking as asked");
            }
            "hold-memory" => {
                let held: Vec<u8> = std::hint::black_box(vec![1u8; (c.size as usize) << 20]);
                std::mem::forget(held);
                Ok(report(&[("held-mib", c.size)]))
            }
            "list-all" => {
                let entries =
                    fs::list_dir(&c.path).map_err(|e| host(&format!("listing {}", c.path), e))?;
                Ok(report(&[("entries", entries.len() as u64)]))
            }
            "list-pages" => {
                // Asks for more than a page: the host answers at most its own page size.
                let (mut after, mut n, mut pages) = (None::<String>, 0u64, 0u64);
                loop {
                    let page = fs::list_dir_page(&c.path, after.as_deref(), 1_000_000)
                        .map_err(|e| host(&format!("listing {}", c.path), e))?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.name.clone());
                    n += page.len() as u64;
                    pages += 1;
                }
                Ok(report(&[("entries", n), ("pages", pages)]))
            }
            "leak-readers" => {
                for _ in 0..c.count {
                    let r = fs::open_reader(&c.path).map_err(|e| host(&c.path, e))?;
                    std::mem::forget(r);
                }
                Ok(report(&[("readers", c.count)]))
            }
            "query" => {
                let db = sqlite::open(&c.database)
                    .map_err(|e| host(&format!("opening {}", c.database), e))?;
                let rows = db.query(&c.sql, &[]).map_err(|e| host(&c.sql, e))?;
                Ok(report(&[("rows", rows.rows.len() as u64)]))
            }
            "chmod" => {
                let mode = u32::from_str_radix(&c.size.to_string(), 8)
                    .map_err(|e| own(format!("mode {}: {e}", c.size)))?;
                fs::set_mode(&c.path, mode).map_err(|e| host(&c.path, e))?;
                Ok(report(&[]))
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(c.size));
                Ok(report(&[]))
            }
            "once-only" => {
                if fs::stat(&c.path).map_err(|e| host(&c.path, e))?.is_some() {
                    return Err(own(format!("{} is there already", c.path)));
                }
                fs::write_atomic(&c.path, b"once\n", None).map_err(|e| host(&c.path, e))?;
                Ok(report(&[]))
            }
            other => Err(own(format!("unknown mode {other:?}"))),
        }
    }
}

// Only for the component: the export symbols' names (`idem:plugin/step@0.1.0#run`) are not
// valid in a native linker's version script, and a native build is only for `cargo test`.
#[cfg(target_family = "wasm")]
export!(Hostile);

/// A PostgreSQL error in words.
fn pg_text(e: &postgres::PgError) -> String {
    match e {
        postgres::PgError::Denied(s) => format!("denied: {s}"),
        postgres::PgError::Invalid(s) | postgres::PgError::Connect(s) => s.clone(),
        postgres::PgError::NotPostgres(s) => format!("not postgres: {s}"),
        postgres::PgError::Server(s) => format!("postgres {}: {}", s.sqlstate, s.message),
    }
}
