//! `upsert` into PostgreSQL: the same fields, semantics and counts as into SQLite, loaded at
//! COPY speed.
//!
//! The records stream into a temporary table with `COPY … FROM STDIN` (one call per batch,
//! so the guest's memory stays flat whatever the size of the source), and two set-based
//! statements then merge them: `UPDATE … FROM stage WHERE ROW(t.cols) IS DISTINCT FROM
//! ROW(s.cols)`, then `INSERT … SELECT … WHERE NOT EXISTS … ON CONFLICT (key) DO NOTHING`.
//! Not the single `INSERT … ON CONFLICT DO UPDATE … WHERE`: PostgreSQL fires BEFORE INSERT
//! triggers for every row an INSERT offers, even one the conflict then leaves alone, so an
//! unchanged row would still fire triggers. This way a row whose values are all the same is
//! not touched at all (no new row version, no trigger fired), and each statement's row count
//! is exactly `updated` or `inserted`. All of it is one transaction, which the host makes a
//! savepoint of the run's never-committed transaction under a dry run.

use crate::host::{error, report};
use crate::idem::plugin::postgres::{self, Connection, PgError};
use crate::idem::plugin::report::{StepError, StepReport};
use crate::idem::plugin::sqlite::Value;
use crate::plan::{ColumnType, UpsertStep};
use crate::records::{Field, Pos, Record};
use crate::upsert::{Inferred, quote};

/// Records per `COPY` call.
const BATCH: usize = 5000;
/// Records whose values decide the types of a created table (as for SQLite).
const INFER: usize = 1000;
/// From how many staged records the staging table is analyzed before the merge.
const ANALYZE_FROM: u64 = 1000;

/// Whether a plan's database name is a PostgreSQL one (or may be: `env:NAME` is resolved by
/// the host, which answers `not-postgres` with the path when it names a file).
pub fn names_postgres(name: &str) -> bool {
    name.starts_with("postgres://") || name.starts_with("postgresql://") || name.starts_with("env:")
}

/// A database name as printed: a URL without its password (`postgres://u:pw@h/db` becomes
/// `postgres://u@h/db`, `password=` in the query `password=***`); anything else as written.
pub fn redact(name: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = name
        .strip_prefix("postgres://")
        .or_else(|| name.strip_prefix("postgresql://"))
    else {
        return std::borrow::Cow::Borrowed(name);
    };
    let scheme = &name[..name.len() - rest.len()];
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    // The authority ends at the first '/' after the last '@' (a password may hold '/').
    let mut out = String::from(scheme);
    match before_query.rsplit_once('@') {
        Some((userinfo, host)) => {
            out.push_str(userinfo.split_once(':').map_or(userinfo, |(u, _)| u));
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(before_query),
    }
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if matches!(k, "password" | "sslpassword" | "passfile" | "sslkey") => {
                    format!("{k}=***")
                }
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    std::borrow::Cow::Owned(out)
}

/// A PostgreSQL error in words.
pub fn describe(e: &PgError) -> String {
    match e {
        PgError::Denied(s) => format!("denied: {s}"),
        PgError::Invalid(s) => format!("invalid: {s}"),
        PgError::NotPostgres(s) => format!("{s} is not a PostgreSQL database"),
        PgError::Connect(s) => s.clone(),
        PgError::Server(s) => format!("PostgreSQL error {}: {}", s.sqlstate, s.message),
    }
}

fn pg_fail(context: impl std::fmt::Display, e: PgError) -> StepError {
    error(format!("{context}: {}", describe(&e)))
}

/// `schema.table` with each part quoted.
fn qualified(table: &str) -> String {
    table.split('.').map(quote).collect::<Vec<_>>().join(".")
}

/// The PostgreSQL type for a declared column type.
fn declared_sql(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Text => "text",
        ColumnType::Integer => "bigint",
        ColumnType::Real => "double precision",
        ColumnType::Numeric => "numeric",
        ColumnType::Blob => "bytea",
    }
}

/// The PostgreSQL type for an inferred one: text keeps leading zeros, and only canonical
/// 64-bit integers become `bigint` (a 20-digit number is inferred as text, never rounded).
fn inferred_sql(t: Inferred) -> &'static str {
    match t {
        Inferred::Integer | Inferred::WideInteger => "bigint",
        Inferred::Real => "double precision",
        Inferred::Nothing | Inferred::Text => "text",
    }
}

/// Whether an empty field stays an empty string in a column of this type (text-like), or
/// becomes NULL (numbers, dates, booleans, JSON: as SQLite's numeric affinities do).
fn keeps_empty(pg_type: &str) -> bool {
    let t = pg_type.to_ascii_lowercase();
    t == "text"
        || t.starts_with("character")
        || t.starts_with("varchar")
        || t == "citext"
        || t == "name"
        || t == "bytea"
}

/// Append `text` to a COPY text-format line, escaped.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Run an `upsert` step into PostgreSQL.
pub fn run(step: &UpsertStep) -> Result<StepReport, StepError> {
    let conn = match postgres::open(&step.upsert) {
        Ok(c) => c,
        Err(PgError::NotPostgres(path)) => {
            let mut file_step = step.clone();
            file_step.upsert = path;
            return crate::upsert::run(&file_step);
        }
        Err(e) => return Err(pg_fail(format!("opening {}", redact(&step.upsert)), e)),
    };
    let shown = conn.shown();
    conn.begin()
        .map_err(|e| pg_fail(format!("{shown}: beginning a transaction"), e))?;
    match load(&conn, &shown, step) {
        Ok(r) => {
            conn.commit()
                .map_err(|e| pg_fail(format!("{shown}: committing"), e))?;
            Ok(r)
        }
        Err(e) => {
            let _ = conn.rollback();
            Err(e)
        }
    }
}

/// Run an `upsert` into PostgreSQL inside a transaction the caller opened on `conn` (an
/// `each` record's, which commits its checkpoint mark with it); `None` when the step's
/// database turns out to be a file, to run as a SQLite upsert.
pub fn run_in(conn: &Connection, step: &UpsertStep) -> Result<StepReport, StepError> {
    let shown = conn.shown();
    load(conn, &shown, step)
}

struct Column {
    name: String,
    /// The type in the table, as `format_type` writes it.
    pg_type: String,
    /// For a column this step creates from inferred types: the type later values must keep.
    inferred: Option<Inferred>,
    empty_is_null: bool,
    boolean: bool,
}

fn load(conn: &Connection, shown: &str, step: &UpsertStep) -> Result<StepReport, StepError> {
    let mut records = crate::host::upsert_records(step)?;
    let file = records.file().to_owned();
    let label = records.labeler();
    let table = &step.table;
    let qtable = qualified(table);
    let first = crate::upsert::first_records(step, &mut records, INFER)?;
    let (names, columns_unknown) = crate::upsert::loaded_columns(step, &records, &first)?;
    let new_type = |c: &String| -> (String, Option<Inferred>) {
        match step.types.get(c) {
            Some(t) => (declared_sql(*t).to_owned(), None),
            None => {
                let t = first
                    .iter()
                    .fold(Inferred::Nothing, |t, (r, _)| t.with(r.as_record().get(c)));
                (inferred_sql(t).to_owned(), Some(t))
            }
        }
    };

    let existing = conn
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[Value::Text(qtable.clone())],
        )
        .map_err(|e| pg_fail(format!("{shown}: reading the columns of {table}"), e))?;
    let text = |v: Option<&Value>| match v {
        Some(Value::Text(s)) => s.clone(),
        _ => String::new(),
    };
    let table_columns: Vec<(String, String)> = existing
        .rows
        .iter()
        .map(|r| (text(r.first()), text(r.get(1))))
        .collect();
    let created = table_columns.is_empty();
    if created && columns_unknown {
        return Err(error(format!(
            "{file} has no records, and {table} does not exist yet: its columns would come from \
             the records. Give `columns:` to create it empty, or load it once there are records"
        )));
    }
    let mut columns: Vec<Column> = Vec::with_capacity(names.len());
    let column = |name: &str, pg_type: String, inferred: Option<Inferred>| Column {
        name: name.to_owned(),
        empty_is_null: !keeps_empty(&pg_type),
        boolean: pg_type == "boolean",
        pg_type,
        inferred,
    };
    if created {
        let mut defs = Vec::new();
        for c in &names {
            let (sql, guess) = new_type(c);
            defs.push(format!("{} {sql}", quote(c)));
            columns.push(column(c, sql, guess));
        }
        let keys = step.key.iter().map(|k| quote(k)).collect::<Vec<_>>();
        let sql = format!(
            "CREATE TABLE {qtable} ({}, PRIMARY KEY ({}))",
            defs.join(", "),
            keys.join(", ")
        );
        conn.execute(&sql, &[])
            .map_err(|e| pg_fail(format!("{shown}: creating table {table}"), e))?;
    } else {
        check_unique_key(conn, shown, step, &qtable)?;
        let mut to_add = Vec::new();
        for c in &names {
            match table_columns.iter().find(|(n, _)| n == c) {
                Some((_, t)) => columns.push(column(c, t.clone(), None)),
                None if step.add_columns => {
                    let (sql, guess) = new_type(c);
                    to_add.push(format!(
                        "ALTER TABLE {qtable} ADD COLUMN {} {sql}",
                        quote(c)
                    ));
                    columns.push(column(c, sql, guess));
                }
                None => {
                    return Err(error(format!(
                        "{shown}: table {table} has no column `{c}` (its columns are {}); \
                         add `add-columns: true` to add the source's new columns, or list the columns to load in `columns`",
                        table_columns
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        for sql in &to_add {
            conn.execute(sql, &[])
                .map_err(|e| pg_fail(format!("{shown}: adding a column to {table}"), e))?;
        }
    }

    // The staging table has the target's column types, so COPY converts each value exactly
    // as an INSERT would, and the merge compares like with like.
    let stage = "idem_upsert_stage";
    let cols = columns.iter().map(|c| quote(&c.name)).collect::<Vec<_>>();
    let col_list = cols.join(", ");
    conn.execute(&format!("DROP TABLE IF EXISTS pg_temp.{stage}"), &[])
        .map_err(|e| pg_fail(format!("{shown}: preparing the load"), e))?;
    conn.execute(
        &format!("CREATE TEMP TABLE {stage} AS SELECT {col_list} FROM {qtable} WITH NO DATA"),
        &[],
    )
    .map_err(|e| pg_fail(format!("{shown}: preparing the load into {table}"), e))?;
    let copy = format!("COPY pg_temp.{stage} ({col_list}) FROM STDIN");

    let mut loader = Loader {
        columns: &columns,
        key_index: step
            .key
            .iter()
            .filter_map(|k| names.iter().position(|c| c == k))
            .collect(),
        buf: Vec::with_capacity(1 << 20),
        rows: 0,
        total: 0,
    };
    let at = |pos: Pos, m: String| error(format!("{file}: {}: {m}", label(pos)));
    for (record, pos) in &first {
        loader.push(record.as_record()).map_err(|m| at(*pos, m))?;
        loader.flush_if_full(conn, shown, &copy)?;
    }
    drop(first);
    while records.advance()? {
        let pos = records.position();
        loader.push(records.current()).map_err(|m| at(pos, m))?;
        loader.flush_if_full(conn, shown, &copy)?;
    }
    loader.flush(conn, shown, &copy)?;
    let total = loader.total;
    // A temporary table is never analyzed by autovacuum: without statistics the planner
    // guesses its size from its pages. A handful of rows (an `each` record's) plans well
    // anyway; a bulk load gets real statistics.
    if total >= ANALYZE_FROM {
        conn.execute(&format!("ANALYZE pg_temp.{stage}"), &[])
            .map_err(|e| pg_fail(format!("{shown}: analyzing the staged records"), e))?;
    }

    let keys = step
        .key
        .iter()
        .map(|k| quote(k))
        .collect::<Vec<_>>()
        .join(", ");
    // Two records with one key: the UPDATE would take either, the INSERT refuse both; name
    // the key instead.
    let dup = conn
        .query(
            &format!(
                "SELECT concat_ws(', ', {}) FROM pg_temp.{stage} GROUP BY {keys} HAVING count(*) > 1 LIMIT 1",
                step.key
                    .iter()
                    .map(|k| format!("{}::text", quote(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[],
        )
        .map_err(|e| pg_fail(format!("{shown}: checking {file} for repeated keys"), e))?;
    if let Some(row) = dup.rows.first() {
        return Err(error(format!(
            "{file}: the key ({}) = ({}) appears in more than one record; each key may appear once",
            step.key.join(", "),
            text(row.first())
        )));
    }

    let rest: Vec<&String> = columns
        .iter()
        .zip(&cols)
        .filter(|(c, _)| !step.key.contains(&c.name))
        .map(|(_, q)| q)
        .collect();
    let on = step
        .key
        .iter()
        .map(|k| format!("s.{0} = t.{0}", quote(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    // First the rows that differ, then the new ones: an unchanged row is never written nor
    // even offered to an INSERT (whose BEFORE INSERT triggers fire before ON CONFLICT decides),
    // and each statement's own count is exact.
    // The merge goes through the key's unique index, never by scanning the table once per
    // staged row nor whole for a few rows:
    // - a bulk load (statistics on the stage, above): with statistics that call the table
    //   empty (analyzed before this load, or just truncated) the planner would pick a nested
    //   loop over a sequential scan, and the INSERT's scans then read every row it has added
    //   so far (quadratic: minutes for 100,000 rows); so no sequential scan of it;
    // - a few rows (an `each` record's): the unanalyzed stage looks like hundreds of rows,
    //   and the planner would hash the whole table for each record; so only nested loops,
    //   each row found through the index.
    // JIT is off: those settings' costs would make it compile every statement (0.6 s each).
    // Set for this transaction only, and put back as they were after the merge.
    let planner: &[(&str, &str)] = if total >= ANALYZE_FROM {
        &[("jit", "off"), ("enable_seqscan", "off")]
    } else {
        &[
            ("jit", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
        ]
    };
    let current = conn
        .query(
            &format!(
                "SELECT {}",
                planner
                    .iter()
                    .map(|(k, _)| format!("current_setting('{k}')"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[],
        )
        .map_err(|e| pg_fail(format!("{shown}: reading planner settings"), e))?;
    let was: Vec<String> = (0..planner.len())
        .map(|i| text(current.rows.first().and_then(|r| r.get(i))))
        .collect();
    let set_planner = |values: &[&str]| {
        let sql = format!(
            "SELECT {}",
            planner
                .iter()
                .enumerate()
                .map(|(i, (k, _))| format!("set_config('{k}', ${}, true)", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let params: Vec<Value> = values
            .iter()
            .map(|v| Value::Text((*v).to_owned()))
            .collect();
        conn.query(&sql, &params)
            .map(|_| ())
            .map_err(|e| pg_fail(format!("{shown}: setting planner settings"), e))
    };
    set_planner(&planner.iter().map(|(_, v)| *v).collect::<Vec<_>>())?;
    let updated = if rest.is_empty() {
        0
    } else {
        let set = rest
            .iter()
            .map(|c| format!("{c} = s.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let of = |side: &str| {
            rest.iter()
                .map(|c| format!("{side}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        conn.execute(
            &format!(
                "UPDATE {qtable} AS t SET {set} FROM pg_temp.{stage} AS s WHERE {on} \
                 AND ROW({}) IS DISTINCT FROM ROW({})",
                of("t"),
                of("s")
            ),
            &[],
        )
        .map_err(|e| pg_fail(format!("{shown}: updating {table} from {file}"), e))?
    };
    // A row another session inserts meanwhile is left to it (DO NOTHING) rather than failing.
    let inserted = conn
        .execute(
            &format!(
                "INSERT INTO {qtable} AS t ({col_list}) SELECT {col_list} FROM pg_temp.{stage} AS s \
                 WHERE NOT EXISTS (SELECT 1 FROM {qtable} AS t WHERE {on}) ON CONFLICT ({keys}) DO NOTHING"
            ),
            &[],
        )
        .map_err(|e| pg_fail(format!("{shown}: inserting into {table} from {file}"), e))?;
    set_planner(&was.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut counters = vec![
        ("inserted", inserted),
        ("updated", updated),
        ("unchanged", total.saturating_sub(inserted + updated)),
    ];
    if step.delete_missing {
        let deleted = conn
            .execute(
                &format!(
                    "DELETE FROM {qtable} AS t WHERE NOT EXISTS (SELECT 1 FROM pg_temp.{stage} s WHERE {on})"
                ),
                &[],
            )
            .map_err(|e| pg_fail(format!("{shown}: deleting rows missing from {file}"), e))?;
        counters.push(("deleted", deleted));
    }
    conn.execute(&format!("DROP TABLE pg_temp.{stage}"), &[])
        .map_err(|e| pg_fail(format!("{shown}: ending the load"), e))?;
    Ok(report(&counters))
}

/// The table must have a primary key or a unique index on exactly the key columns (and no
/// predicate), or `ON CONFLICT` has nothing to conflict on.
fn check_unique_key(
    conn: &Connection,
    shown: &str,
    step: &UpsertStep,
    qtable: &str,
) -> Result<(), StepError> {
    let table = &step.table;
    let indexes = conn
        .query(
            "SELECT string_agg(a.attname::text, ',' ORDER BY a.attname) FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL \
             AND i.indexprs IS NULL GROUP BY i.indexrelid",
            &[Value::Text(qtable.to_owned())],
        )
        .map_err(|e| pg_fail(format!("{shown}: reading the indexes of {table}"), e))?;
    let mut want = step.key.clone();
    want.sort();
    let want = want.join(",");
    let found = indexes
        .rows
        .iter()
        .any(|r| matches!(r.first(), Some(Value::Text(s)) if *s == want));
    if found {
        return Ok(());
    }
    let bare = table.rsplit('.').next().unwrap_or(table);
    Err(error(format!(
        "{shown}: table {table} has no primary key or unique index on exactly ({}), which the upsert needs; \
         add one, e.g. CREATE UNIQUE INDEX {} ON {qtable} ({})",
        step.key.join(", "),
        quote(&format!("{bare}_{}_key", step.key.join("_"))),
        step.key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Records converted to COPY's text format, a batch at a time.
struct Loader<'a> {
    columns: &'a [Column],
    key_index: Vec<usize>,
    buf: Vec<u8>,
    rows: usize,
    total: u64,
}

impl Loader<'_> {
    /// Add one record's line; an error is a message about the record.
    fn push(&mut self, record: Record<'_>) -> Result<(), String> {
        let start = self.buf.len();
        let r = self.line(record);
        if r.is_err() {
            self.buf.truncate(start);
        }
        r
    }

    fn line(&mut self, record: Record<'_>) -> Result<(), String> {
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                self.buf.push(b'\t');
            }
            let field = record.get(&c.name);
            let key = self.key_index.contains(&i);
            if field.is_none_or(|f| f.is_empty()) {
                if key {
                    return Err(format!("the key `{}` is empty", c.name));
                }
                // An empty string stays one in a text column; nothing else does.
                let empty_string = matches!(
                    field,
                    Some(Field::Text(_)) | Some(Field::Json(serde_json::Value::String(_)))
                );
                if !empty_string || c.empty_is_null {
                    self.buf.extend_from_slice(b"\\N");
                }
                continue;
            }
            let Some(field) = field else { continue };
            let text = match &field {
                Field::Json(serde_json::Value::Bool(b)) if !c.boolean => {
                    if *b { "1" } else { "0" }.into()
                }
                f => f.to_text(),
            };
            if let Some(t) = c.inferred
                && matches!(
                    field,
                    Field::Text(_) | Field::Json(serde_json::Value::String(_))
                )
                && !t.keeps(&text)
            {
                return Err(format!(
                    "column `{}`: the value \"{}\" would not be stored as written in a column created {} from the first {INFER} records; \
                     declare its type with `types: {{{}: text}}`",
                    c.name,
                    text.escape_debug(),
                    c.pg_type,
                    c.name
                ));
            }
            escape_into(&mut self.buf, &text);
        }
        self.buf.push(b'\n');
        self.rows += 1;
        self.total += 1;
        Ok(())
    }

    fn flush_if_full(
        &mut self,
        conn: &Connection,
        shown: &str,
        copy: &str,
    ) -> Result<(), StepError> {
        if self.rows >= BATCH {
            self.flush(conn, shown, copy)?;
        }
        Ok(())
    }

    fn flush(&mut self, conn: &Connection, shown: &str, copy: &str) -> Result<(), StepError> {
        if self.rows == 0 {
            return Ok(());
        }
        conn.copy_in(copy, &self.buf)
            .map_err(|e| pg_fail(format!("{shown}: loading records"), e))?;
        self.buf.clear();
        self.rows = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_is_escaped() {
        let mut out = Vec::new();
        escape_into(&mut out, "a\tb\\c\nd\re");
        assert_eq!(out, b"a\\tb\\\\c\\nd\\re");
    }

    #[test]
    fn passwords_are_redacted_from_names() {
        assert_eq!(redact("postgres://u:s3cr/t@h:5/db"), "postgres://u@h:5/db");
        assert_eq!(
            redact("postgresql://h/db?sslmode=require&password=x"),
            "postgresql://h/db?sslmode=require&password=***"
        );
        assert_eq!(redact("env:DB"), "env:DB");
        assert_eq!(redact("data/app.db"), "data/app.db");
    }

    #[test]
    fn names_are_told_apart() {
        assert!(names_postgres("postgres://u@h/db"));
        assert!(names_postgres("postgresql://h/db"));
        assert!(names_postgres("env:DB"));
        assert!(!names_postgres("data/app.db"));
        assert_eq!(qualified("public.users"), "\"public\".\"users\"");
    }

    #[test]
    fn inferred_types_keep_text() {
        assert_eq!(inferred_sql(Inferred::Text), "text");
        assert_eq!(inferred_sql(Inferred::Integer), "bigint");
        assert!(keeps_empty("character varying(20)"));
        assert!(!keeps_empty("bigint"));
    }
}
