//! `upsert`: load records into a SQLite table in one transaction, writing only rows that
//! differ, so a second load of the same file writes nothing.
//!
//! The hot path is one prepared `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement run
//! through `execute-batch` a thousand rows at a time; CSV column positions and affinities are
//! resolved once, and the batch buffer is reused.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

use crate::host::HostRecords;
use crate::host::{error, fail, report};
use crate::idem::plugin::report::{StepError, StepReport};
use crate::idem::plugin::sqlite::{self, Database, Row, Value};
use crate::idem::plugin::types::Error;
use crate::idem::plugin::{fs, log};
use crate::plan::{ColumnType, UpsertStep};
use crate::records::{Field, OwnedRecord, Pos, Record};

/// Rows per `execute-batch` call.
const BATCH: usize = 1000;

/// SQLite's column affinity (https://sqlite.org/datatype3.html#determination_of_column_affinity),
/// which decides how CSV text is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Real,
    Numeric,
    Text,
    Blob,
}

impl Affinity {
    /// The affinity of a declared column type, by SQLite's rules.
    pub fn of(declared: &str) -> Affinity {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

/// A SQL identifier in double quotes, with inner quotes doubled.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The upsert statement for `table` with `columns`, keyed on `key`.
pub fn upsert_sql(table: &str, columns: &[String], key: &[String]) -> String {
    let t = quote(table);
    let cols = columns.iter().map(|c| quote(c)).collect::<Vec<_>>();
    let params = vec!["?"; columns.len()].join(", ");
    let keys = key.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let mut sql = format!(
        "INSERT INTO {t} ({}) VALUES ({params}) ON CONFLICT ({keys}) DO ",
        cols.join(", ")
    );
    let rest: Vec<&String> = columns
        .iter()
        .zip(&cols)
        .filter(|(c, _)| !key.contains(c))
        .map(|(_, q)| q)
        .collect();
    if rest.is_empty() {
        sql.push_str("NOTHING");
    } else {
        let set = rest
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let differs = rest
            .iter()
            .map(|c| format!("{t}.{c} IS NOT excluded.{c}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        sql.push_str(&format!("UPDATE SET {set} WHERE {differs}"));
    }
    sql
}

/// Whether `text` is an integer literal: an optional sign and digits.
fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `text` is an integer written the one way SQLite writes it back: no sign but `-`,
/// no leading zeros, not `-0`, and within 64 bits. Only such text may become an INTEGER
/// without changing (`01234` would come back as `1234`).
pub fn is_canonical_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = match digits.as_bytes() {
        [] => false,
        [b'0'] => digits.len() == text.len(),
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
    };
    canonical && text.parse::<i64>().is_ok()
}

/// Whether `text` is a real number that reads back as the same text (`2.5`, `0.25`, `1.0`,
/// not `2.50`, `1e3`, `.5` or `-0.0`).
pub fn is_canonical_real(text: &str) -> bool {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && !(f == 0.0 && f.is_sign_negative()) => {
            format!("{f:?}") == text || format!("{f}") == text
        }
        _ => false,
    }
}

/// Integers beyond 2^53 are not exact as reals, so they cannot share a REAL column.
const EXACT_IN_REAL: i64 = 1 << 53;

/// A text field as the value to bind in a column of this affinity: numbers where the column
/// asks for them and the text is one; an empty field in a numeric column is NULL. An integer
/// too large for 64 bits is refused in an INTEGER or NUMERIC column, where SQLite would
/// silently round it to a real (and two distinct keys could become one).
pub fn csv_value(text: &str, affinity: Affinity) -> Result<Value, String> {
    let numeric = matches!(
        affinity,
        Affinity::Integer | Affinity::Real | Affinity::Numeric
    );
    if numeric && text.is_empty() {
        return Ok(Value::Null);
    }
    // SQLite ignores spaces around a number when it converts text by affinity.
    let number = text.trim_matches([' ', '\t', '\n', '\r', '\x0c']);
    Ok(match affinity {
        Affinity::Integer | Affinity::Numeric => {
            if let Ok(i) = number.parse::<i64>() {
                return Ok(Value::Integer(i));
            }
            if is_integer_literal(number) {
                return Err(too_large(text));
            }
            match number.parse::<f64>() {
                // Stored as SQLite would: a real that is exactly an integer becomes one.
                Ok(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Value::Integer(f as i64),
                Ok(f) if f.is_finite() => Value::Real(f),
                _ => Value::Text(text.to_owned()),
            }
        }
        Affinity::Real => match number.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::Real(f),
            _ => Value::Text(text.to_owned()),
        },
        Affinity::Text | Affinity::Blob => Value::Text(text.to_owned()),
    })
}

fn too_large(text: &str) -> String {
    format!(
        "the value \"{text}\" does not fit a 64-bit integer, and the column's type would round it; \
         declare the column TEXT (`types: {{column: text}}`) to keep its digits"
    )
}

/// Store `text` converted by `affinity` into `slot`, reusing the slot's string buffer when
/// it holds one: the rows of a batch are refilled, not reallocated, for every batch.
fn set_csv_value(slot: &mut Value, text: &str, affinity: Affinity) -> Result<(), String> {
    if matches!(affinity, Affinity::Text | Affinity::Blob)
        && let Value::Text(s) = slot
    {
        s.clear();
        s.push_str(text);
        return Ok(());
    }
    *slot = csv_value(text, affinity)?;
    Ok(())
}

/// A JSON value as stored: its own type; booleans as 0 and 1; arrays and objects as JSON text;
/// an integer beyond 64 bits as text with all its digits (refused, like a CSV field, where
/// the column's type would round it).
pub fn json_value(v: &serde_json::Value, affinity: Affinity) -> Result<Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Integer(i64::from(*b)),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None if n.is_u64() => return json_text(n.to_string(), affinity),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => return json_text(s.clone(), affinity),
        other => Value::Text(other.to_string()),
    })
}

/// A JSON string: converted as SQLite's column affinity would convert it (so the value
/// bound is the value stored, which duplicate detection compares), except that an empty
/// string stays an empty string.
fn json_text(s: String, affinity: Affinity) -> Result<Value, String> {
    if s.is_empty() || matches!(affinity, Affinity::Text | Affinity::Blob) {
        return Ok(Value::Text(s));
    }
    csv_value(&s, affinity)
}

/// The column type to create, inferred from the values seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inferred {
    Nothing,
    /// Canonical integers within ±2^53, exact as reals too.
    Integer,
    /// Canonical integers, some beyond 2^53: INTEGER, but never REAL.
    WideInteger,
    Real,
    Text,
}

impl Inferred {
    fn of_text(s: &str) -> Inferred {
        if is_canonical_integer(s) {
            let i: i64 = s.parse().unwrap_or(i64::MAX);
            if (-EXACT_IN_REAL..=EXACT_IN_REAL).contains(&i) {
                Inferred::Integer
            } else {
                Inferred::WideInteger
            }
        } else if is_canonical_real(s) {
            Inferred::Real
        } else {
            Inferred::Text
        }
    }

    pub fn with(self, field: Option<Field<'_>>) -> Inferred {
        let seen = match field {
            None => return self,
            Some(f) if f.is_empty() => return self,
            Some(Field::Text(s)) => Inferred::of_text(s),
            Some(Field::Json(v)) => match v {
                serde_json::Value::Bool(_) => Inferred::Integer,
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) if (-EXACT_IN_REAL..=EXACT_IN_REAL).contains(&i) => Inferred::Integer,
                    Some(_) => Inferred::WideInteger,
                    // Beyond 64 bits: its digits are kept as text.
                    None if n.is_u64() => Inferred::Text,
                    None => Inferred::Real,
                },
                _ => Inferred::Text,
            },
        };
        self.join(seen)
    }

    fn join(self, seen: Inferred) -> Inferred {
        use Inferred::*;
        match (self, seen) {
            (Nothing, s) | (s, Nothing) => s,
            (a, b) if a == b => a,
            (Integer, WideInteger) | (WideInteger, Integer) => WideInteger,
            (Integer, Real) | (Real, Integer) => Real,
            _ => Text,
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            Inferred::Integer | Inferred::WideInteger => "INTEGER",
            Inferred::Real => "REAL",
            Inferred::Nothing | Inferred::Text => "TEXT",
        }
    }

    /// Whether a later text value still fits the type inferred from the first records, so
    /// that it is stored without changing; the first batch decides, the rest must agree.
    pub fn keeps(self, text: &str) -> bool {
        match self {
            Inferred::Integer | Inferred::WideInteger => {
                text.is_empty() || is_canonical_integer(text)
            }
            Inferred::Real => text.is_empty() || Inferred::of_text(text).join(self) == self,
            Inferred::Nothing | Inferred::Text => true,
        }
    }
}

fn affinity_of(t: ColumnType) -> Affinity {
    match t {
        ColumnType::Text => Affinity::Text,
        ColumnType::Integer => Affinity::Integer,
        ColumnType::Real => Affinity::Real,
        ColumnType::Numeric => Affinity::Numeric,
        ColumnType::Blob => Affinity::Blob,
    }
}

/// Run an `upsert` step. Counters: `inserted`, `updated`, `unchanged`, and `deleted` with
/// `delete-missing`.
pub fn run(step: &UpsertStep) -> Result<StepReport, StepError> {
    if crate::pg_upsert::names_postgres(&step.upsert) {
        return crate::pg_upsert::run(step);
    }
    let mut records = crate::host::upsert_records(step)?;
    // The first batch is read before the database is opened, so that a file that is bad from
    // the start does not leave a new, empty database behind.
    let first = first_records(step, &mut records, BATCH)?;
    // Like `file`, a database in a directory that is not there yet gets its directory.
    if let Some(dir) = crate::host::parent(&step.upsert) {
        let there = fs::stat(dir).map_err(|e| fail(format!("checking {dir}"), e))?;
        if there.is_none() {
            fs::create_dir(dir, None).map_err(|e| fail(format!("creating directory {dir}"), e))?;
        }
    }
    let db = sqlite::open(&step.upsert).map_err(|e| fail(format!("opening {}", step.upsert), e))?;
    // Explicitly on, whatever the SQLite build's default (the sqlite3 shell and Python default
    // to off): a schema's declared references hold for the rows idem writes. Set before the
    // transaction, inside which SQLite ignores the pragma.
    db.execute("PRAGMA foreign_keys = ON", &[])
        .map_err(|e| fail(format!("{}: enabling foreign keys", step.upsert), e))?;
    db.begin()
        .map_err(|e| fail(format!("beginning a transaction in {}", step.upsert), e))?;
    match load(&db, step, &mut records, first) {
        Ok(report) => {
            db.commit()
                .map_err(|e| fail(format!("committing to {}", step.upsert), e))?;
            Ok(report)
        }
        Err(e) => {
            // The load's own error is the one to report; a failed rollback changes nothing
            // that the host would not undo anyway when the connection closes.
            let _ = db.rollback();
            Err(e)
        }
    }
}

/// The source's first records (at most `n`), with their positions: what decides the columns
/// and, for a new table, their types. An empty source with `delete-missing` is refused here,
/// before any database is touched.
pub(crate) fn first_records(
    step: &UpsertStep,
    records: &mut HostRecords,
    n: usize,
) -> Result<Vec<(OwnedRecord, Pos)>, StepError> {
    let mut first: Vec<(OwnedRecord, Pos)> = Vec::new();
    while first.len() < n {
        let owned = match records.next_record()? {
            Some(r) => r.to_owned(),
            None => break,
        };
        first.push((owned, records.position()));
    }
    if step.delete_missing && first.is_empty() {
        return Err(error(format!(
            "{}: the source has no records, and with `delete-missing` that would delete every row of {}; \
             refusing, in case the export that wrote it failed (delete the rows with SQL if that is meant)",
            step.source(),
            step.table
        )));
    }
    Ok(first)
}

/// The columns the step loads (`columns`, else the header, else the first record's fields,
/// else the key), checked against the key, the header and `types`; and whether they are known
/// only as "the key" (a JSON or NDJSON source with no records and no `columns`).
pub(crate) fn loaded_columns(
    step: &UpsertStep,
    records: &HostRecords,
    first: &[(OwnedRecord, Pos)],
) -> Result<(Vec<String>, bool), StepError> {
    let file = records.file();
    let columns: Vec<String> = match (&step.columns, records.header(), first.first()) {
        (Some(c), _, _) => c.clone(),
        (None, Some(header), _) => header.to_vec(),
        (None, None, Some((r, _))) => r.as_record().names(),
        (None, None, None) => step.key.clone(),
    };
    let columns_unknown = step.columns.is_none() && records.header().is_none() && first.is_empty();
    if let Some(k) = step.key.iter().find(|k| !columns.contains(k)) {
        return Err(error(format!(
            "{file}: the key `{k}` is not among the fields ({})",
            columns.join(", ")
        )));
    }
    if let Some(header) = records.header()
        && let Some(c) = columns.iter().find(|c| !header.contains(c))
    {
        return Err(error(format!(
            "{file} has no column `{c}`; its header is {}",
            header.join(", ")
        )));
    }
    if let Some(t) = step.types.keys().find(|t| !columns.contains(t)) {
        return Err(error(format!(
            "`types` names `{t}`, which is not among the columns loaded from {file} ({})",
            columns.join(", ")
        )));
    }
    Ok((columns, columns_unknown))
}

fn load(
    db: &Database,
    step: &UpsertStep,
    records: &mut HostRecords,
    first: Vec<(OwnedRecord, Pos)>,
) -> Result<StepReport, StepError> {
    let file = records.file().to_owned();
    let table = &step.table;
    let db_path = &step.upsert;
    let label = records.labeler();

    let (columns, columns_unknown) = loaded_columns(step, records, &first)?;
    // Declared, or inferred from the first batch; only used for columns this step creates.
    let inferred = |c: &String| {
        first
            .iter()
            .fold(Inferred::Nothing, |t, (r, _)| t.with(r.as_record().get(c)))
    };
    let new_type = |c: &String| -> (String, Affinity, Option<Inferred>) {
        match step.types.get(c) {
            Some(t) => (t.sql().to_owned(), affinity_of(*t), None),
            None => {
                let t = inferred(c);
                let affinity = Affinity::of(t.sql());
                (t.sql().to_owned(), affinity, Some(t))
            }
        }
    };

    let existing = db
        .query(
            "SELECT name, type, pk FROM pragma_table_info(?1)",
            &[Value::Text(table.clone())],
        )
        .map_err(|e| fail(format!("{db_path}: reading the columns of {table}"), e))?;
    let created = existing.rows.is_empty();
    if created && columns_unknown {
        // A table made now would hold the key alone, and the first records to come would
        // then need `add-columns` (issue 14).
        return Err(error(format!(
            "{file} has no records, and {table} does not exist yet: its columns would come from \
             the records. Give `columns:` to create it empty, or load it once there are records"
        )));
    }
    // Per column: its affinity, and the inferred type later values must keep.
    let mut affinities: Vec<Affinity> = Vec::with_capacity(columns.len());
    let mut inferred_types: Vec<Option<Inferred>> = Vec::with_capacity(columns.len());
    if created {
        let mut defs = Vec::with_capacity(columns.len());
        for c in &columns {
            let (sql, affinity, guess) = new_type(c);
            defs.push(format!("{} {sql}", quote(c)));
            affinities.push(affinity);
            inferred_types.push(guess);
        }
        let keys = step.key.iter().map(|k| quote(k)).collect::<Vec<_>>();
        let sql = format!(
            "CREATE TABLE {} ({}, PRIMARY KEY ({}))",
            quote(table),
            defs.join(", "),
            keys.join(", ")
        );
        db.execute(&sql, &[])
            .map_err(|e| fail(format!("{db_path}: creating table {table}"), e))?;
        log::log(
            log::Level::Debug,
            &format!("{db_path}: created table {table}: {sql}"),
        );
    } else {
        let table_columns: Vec<(String, String, i64)> = existing
            .rows
            .iter()
            .map(|row| {
                let text = |i: usize| match row.get(i) {
                    Some(Value::Text(s)) => s.clone(),
                    _ => String::new(),
                };
                let pk = match row.get(2) {
                    Some(Value::Integer(i)) => *i,
                    _ => 0,
                };
                (text(0), text(1), pk)
            })
            .collect();
        let names = || {
            table_columns
                .iter()
                .map(|(n, ..)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        check_unique_key(db, step, &table_columns)?;
        let mut to_add = Vec::new();
        for c in &columns {
            let found = table_columns
                .iter()
                .find(|(name, ..)| name.eq_ignore_ascii_case(c));
            match found {
                Some((name, declared, _)) => {
                    let affinity = Affinity::of(declared);
                    if let Some(t) = step.types.get(c)
                        && affinity_of(*t) != affinity
                    {
                        return Err(error(format!(
                            "{db_path}: column `{name}` of {table} is declared `{declared}`, but `types` says {}; \
                             change the table's column or the plan's `types` so that they agree",
                            t.sql().to_ascii_lowercase()
                        )));
                    }
                    affinities.push(affinity);
                    inferred_types.push(None);
                }
                None if step.add_columns => {
                    let (sql, affinity, guess) = new_type(c);
                    to_add.push(format!(
                        "ALTER TABLE {} ADD COLUMN {} {sql}",
                        quote(table),
                        quote(c)
                    ));
                    affinities.push(affinity);
                    inferred_types.push(guess);
                }
                None => {
                    return Err(error(format!(
                        "{db_path}: table {table} has no column `{c}` (its columns are {}); \
                         add `add-columns: true` to add the source's new columns, or list the columns to load in `columns`",
                        names()
                    )));
                }
            }
        }
        for sql in &to_add {
            db.execute(sql, &[])
                .map_err(|e| fail(format!("{db_path}: adding a column to {table}"), e))?;
            log::log(log::Level::Debug, &format!("{db_path}: {sql}"));
        }
    }

    let count = || -> Result<u64, StepError> {
        let rows = db
            .query(&format!("SELECT count(*) FROM {}", quote(table)), &[])
            .map_err(|e| fail(format!("{db_path}: counting rows of {table}"), e))?;
        Ok(match rows.rows.first().and_then(|r| r.first()) {
            Some(Value::Integer(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        })
    };
    // Inserted rows are the growth of the table: a full scan before and after, skipped where
    // the answer is known (a table just created is empty; no row written, no growth).
    let before = if created { 0 } else { count()? };
    let statement = db
        .prepare(&upsert_sql(table, &columns, &step.key))
        .map_err(|e| fail(format!("{db_path}: preparing the upsert into {table}"), e))?;

    let key_index: Vec<usize> = step
        .key
        .iter()
        .filter_map(|k| columns.iter().position(|c| c == k))
        .collect();
    // CSV fields by position, resolved once.
    let positions: Option<Vec<usize>> = records.header().map(|header| {
        columns
            .iter()
            .map(|c| header.iter().position(|h| h == c).unwrap_or(usize::MAX))
            .collect()
    });
    let mut loader = Loader {
        columns: &columns,
        affinities: &affinities,
        inferred: &inferred_types,
        positions: positions.as_deref(),
        key_index: &key_index,
        batch: Vec::with_capacity(BATCH),
        places: Vec::with_capacity(BATCH),
        len: 0,
        total: 0,
        written: 0,
        keys: step.delete_missing.then(|| Keys::new(db, table, &step.key)),
        seen: HashSet64::default(),
        file: &file,
        table,
        label,
    };
    let duplicate = |pos: Pos, key: Vec<Value>| -> Result<(), StepError> {
        match find_earlier(step, &columns, &affinities, &key_index, &key, pos)? {
            // A 64-bit hash collision between different keys: not a duplicate.
            None => Ok(()),
            Some(earlier) => Err(duplicate_error(
                &file, label, pos, earlier, &columns, &key_index, &key,
            )),
        }
    };
    for (record, pos) in &first {
        let hit = loader
            .push(record.as_record(), *pos)
            .map_err(|m| error(format!("{file}: {}: {m}", label(*pos))))?;
        if let Some(key) = hit {
            duplicate(*pos, key)?;
        }
        loader.flush_if_full(&statement, records)?;
    }
    drop(first);
    // A record's position is worded only where it is shown: in an error.
    while records.advance()? {
        let pos = records.position();
        match loader.push(records.current(), pos) {
            Ok(None) => {}
            Ok(Some(key)) => duplicate(pos, key)?,
            Err(m) => return Err(error(format!("{file}: {}: {m}", label(pos)))),
        }
        loader.flush_if_full(&statement, records)?;
    }
    loader.flush(&statement)?;
    drop(statement);

    let after = if loader.written == 0 {
        before
    } else {
        count()?
    };
    let inserted = after.saturating_sub(before);
    let updated = loader.written.saturating_sub(inserted);
    let unchanged = loader.total.saturating_sub(loader.written);
    let mut counters = vec![
        ("inserted", inserted),
        ("updated", updated),
        ("unchanged", unchanged),
    ];
    if let Some(keys) = &mut loader.keys {
        counters.push(("deleted", keys.delete_missing()?));
    }
    Ok(report(&counters))
}

/// The table must have a primary key or a unique index on exactly the key columns, or
/// `ON CONFLICT` has nothing to conflict on.
fn check_unique_key(
    db: &Database,
    step: &UpsertStep,
    table_columns: &[(String, String, i64)],
) -> Result<(), StepError> {
    let table = &step.table;
    let db_path = &step.upsert;
    let same = |cols: &[String]| {
        cols.len() == step.key.len()
            && step
                .key
                .iter()
                .all(|k| cols.iter().any(|c| c.eq_ignore_ascii_case(k)))
    };
    let pk: Vec<String> = table_columns
        .iter()
        .filter(|(.., pk)| *pk > 0)
        .map(|(n, ..)| n.clone())
        .collect();
    if same(&pk) {
        return Ok(());
    }
    let indexes = db
        .query(
            "SELECT name FROM pragma_index_list(?1) WHERE \"unique\" AND NOT partial",
            &[Value::Text(table.clone())],
        )
        .map_err(|e| fail(format!("{db_path}: reading the indexes of {table}"), e))?;
    for row in &indexes.rows {
        let Some(Value::Text(index)) = row.first() else {
            continue;
        };
        let cols = db
            .query(
                "SELECT name FROM pragma_index_info(?1)",
                &[Value::Text(index.clone())],
            )
            .map_err(|e| fail(format!("{db_path}: reading index {index}"), e))?;
        let names: Vec<String> = cols
            .rows
            .iter()
            .filter_map(|r| match r.first() {
                Some(Value::Text(s)) => Some(s.clone()),
                _ => None,
            })
            .collect();
        if same(&names) {
            return Ok(());
        }
    }
    let keys = step.key.join(", ");
    Err(error(format!(
        "{db_path}: table {table} has no primary key or unique index on exactly ({keys}), which the upsert needs; \
         add one, e.g. CREATE UNIQUE INDEX {} ON {} ({})",
        quote(&format!("{table}_{}", step.key.join("_"))),
        quote(table),
        step.key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// A value in a message: text quoted, numbers as they are.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_owned(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(s) => {
            let mut t: String = s.chars().take(60).collect();
            if t.len() < s.len() {
                t.push_str("...");
            }
            format!("\"{}\"", t.escape_debug())
        }
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// A hash of a row's stored key values, 128 bits wide so that two different keys of even
/// billions of rows do not collide in practice; values are tagged by type, as SQLite
/// compares them (the integer 7 and the text "7" are different keys).
fn key_hash(values: &[Value]) -> u128 {
    fn feed(v: &Value, h: &mut DefaultHasher) {
        match v {
            Value::Null => 0u8.hash(h),
            Value::Integer(i) => (1u8, i).hash(h),
            Value::Real(f) => (2u8, f.to_bits()).hash(h),
            Value::Text(s) => (3u8, s).hash(h),
            Value::Blob(b) => (4u8, b).hash(h),
        }
    }
    let mut a = DefaultHasher::new();
    let mut b = DefaultHasher::new();
    0xa5u8.hash(&mut b);
    for v in values {
        feed(v, &mut a);
        feed(v, &mut b);
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// A 64-bit hash of a row's key values, type-tagged and length-prefixed: FNV-1a with a
/// final avalanche (a hit is always confirmed, so speed matters more than strength; the set
/// then uses it as is, without hashing it again).
fn key_hash64(row: &[Value], key_index: &[usize]) -> u64 {
    fn bytes(h: u64, data: &[u8]) -> u64 {
        data.iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &k in key_index {
        h = match &row[k] {
            Value::Null => bytes(h, &[0]),
            Value::Integer(i) => bytes(bytes(h, &[1]), &i.to_le_bytes()),
            Value::Real(f) => bytes(bytes(h, &[2]), &f.to_bits().to_le_bytes()),
            Value::Text(s) => bytes(bytes(bytes(h, &[3]), &s.len().to_le_bytes()), s.as_bytes()),
            Value::Blob(b) => bytes(bytes(bytes(h, &[4]), &b.len().to_le_bytes()), b),
        };
    }
    // splitmix64's finaliser, so that every bit of the hash depends on every input bit.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A hasher for values that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; this keeps any other input well defined.
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type HashSet64 = HashSet<u64, BuildHasherDefault<Prehashed>>;

/// The first row before `here` whose key values equal `key`, found by reading the source
/// again from the start: only after a hash hit, so the common run keeps just a hash per row.
fn find_earlier(
    step: &UpsertStep,
    columns: &[String],
    affinities: &[Affinity],
    key_index: &[usize],
    key: &[Value],
    here: Pos,
) -> Result<Option<Pos>, StepError> {
    let mut records = crate::host::upsert_records(step)?;
    while records.advance()? {
        let pos = records.position();
        if pos.index >= here.index {
            return Ok(None);
        }
        let record = records.current();
        let same = key_index.iter().zip(key).all(|(&k, want)| {
            let got = match record.get(&columns[k]) {
                Some(Field::Text(t)) => csv_value(t, affinities[k]),
                Some(Field::Json(v)) => json_value(v, affinities[k]),
                None => Ok(Value::Null),
            };
            got.is_ok_and(|got| same_value(&got, want))
        });
        if same {
            return Ok(Some(pos));
        }
    }
    Ok(None)
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Integer(x), Value::Integer(y)) => x == y,
        (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
        (Value::Text(x), Value::Text(y)) => x == y,
        (Value::Blob(x), Value::Blob(y)) => x == y,
        _ => false,
    }
}

fn duplicate_error(
    file: &str,
    label: fn(Pos) -> String,
    here: Pos,
    earlier: Pos,
    columns: &[String],
    key_index: &[usize],
    key: &[Value],
) -> StepError {
    let key = key_index
        .iter()
        .zip(key)
        .map(|(&k, v)| format!("{}={}", columns[k], show(v)))
        .collect::<Vec<_>>()
        .join(", ");
    error(format!(
        "{file}: {} has the same key ({key}) as {}; a source must name each row once, \
         or the table would flip between them on every run: remove or merge one of them",
        label(here),
        label(earlier)
    ))
}

/// The keys of the rows this load wrote or found unchanged, as the table stores them.
///
/// After each batch, one query joins the batch's key values to the table (`ON dst.k = src.k`
/// applies the column's affinity and collation to the source value exactly as the upsert's
/// conflict check did), so each source row learns the stored key of the row it landed on:
/// two source rows landing on one table row are a duplicate key, whatever their spelling
/// (`7` and `"7"`, `01` and `1` in an INTEGER column); a table row that no source row landed
/// on is missing from the source. SQLite does the comparing; the guest only remembers a hash
/// and a position per row (about 40 bytes each).
struct Keys<'a> {
    db: &'a Database,
    table: String,
    key: Vec<String>,
    /// Source rows per look-up, within SQLite's limit on parameters.
    chunk: usize,
    seen: HashMap<u128, Pos>,
}

impl<'a> Keys<'a> {
    fn new(db: &'a Database, table: &str, key: &[String]) -> Keys<'a> {
        Keys {
            db,
            table: table.to_owned(),
            key: key.to_vec(),
            chunk: (30_000 / (key.len() + 1)).clamp(1, BATCH),
            seen: HashMap::new(),
        }
    }

    fn lookup_sql(&self, rows: usize) -> String {
        let one = format!("({})", vec!["?"; self.key.len() + 1].join(", "));
        let values = vec![one; rows].join(", ");
        let dst = self
            .key
            .iter()
            .map(|k| format!("\"dst\".{}", quote(k)))
            .collect::<Vec<_>>();
        let on = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("\"dst\".{} = \"src\".column{}", quote(k), i + 2))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "SELECT \"src\".column1, {} FROM (VALUES {values}) AS \"src\" CROSS JOIN {} AS \"dst\" ON {on} ORDER BY 1",
            dst.join(", "),
            quote(&self.table)
        )
    }

    /// Record where the batch's rows landed; a second source row on the same table row is an
    /// error naming both.
    fn track(
        &mut self,
        rows: &[Row],
        places: &[Pos],
        key_index: &[usize],
        columns: &[String],
        file: &str,
        label: fn(Pos) -> String,
    ) -> Result<(), StepError> {
        let mut start = 0;
        while start < rows.len() {
            let end = (start + self.chunk).min(rows.len());
            let mut params = Vec::with_capacity((end - start) * (key_index.len() + 1));
            for (i, row) in rows[start..end].iter().enumerate() {
                params.push(Value::Integer((start + i) as i64));
                params.extend(key_index.iter().map(|&k| row[k].clone()));
            }
            let found = self
                .db
                .query(&self.lookup_sql(end - start), &params)
                .map_err(|e| {
                    fail(
                        format!("{file}: finding the rows written to {}", self.table),
                        e,
                    )
                })?;
            for r in &found.rows {
                let Some(Value::Integer(i)) = r.first() else {
                    continue;
                };
                let i = usize::try_from(*i).unwrap_or(0);
                let here = places.get(i).copied().unwrap_or_default();
                if let Some(earlier) = self.seen.insert(key_hash(&r[1..]), here) {
                    let key = key_index
                        .iter()
                        .map(|&k| format!("{}={}", columns[k], show(&rows[i][k])))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(error(format!(
                        "{file}: {} has the same key ({key}) as {}; a source must name each row once, \
                         or the table would flip between them on every run: remove or merge one of them",
                        label(here),
                        label(earlier)
                    )));
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Delete the table's rows that no source row landed on; returns how many.
    fn delete_missing(&mut self) -> Result<u64, StepError> {
        const PAGE: usize = 5000;
        let cols = self.key.iter().map(|k| quote(k)).collect::<Vec<_>>();
        let list = cols.join(", ");
        let t = quote(&self.table);
        let first = format!("SELECT {list} FROM {t} ORDER BY {list} LIMIT {PAGE}");
        let params = vec!["?"; cols.len()].join(", ");
        let next = format!(
            "SELECT {list} FROM {t} WHERE ({list}) > ({params}) ORDER BY {list} LIMIT {PAGE}"
        );
        let condition = cols
            .iter()
            .map(|c| format!("{c} = ?"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let delete = self
            .db
            .prepare(&format!("DELETE FROM {t} WHERE {condition}"))
            .map_err(|e| fail(format!("preparing the deletion from {}", self.table), e))?;
        let mut deleted = 0;
        let mut last: Option<Row> = None;
        loop {
            let page = match &last {
                None => self.db.query(&first, &[]),
                Some(after) => self.db.query(&next, after),
            }
            .map_err(|e| fail(format!("reading the keys of {}", self.table), e))?;
            let gone: Vec<Row> = page
                .rows
                .iter()
                .filter(|r| !self.seen.contains_key(&key_hash(r)))
                .cloned()
                .collect();
            if !gone.is_empty() {
                let changes = delete
                    .execute_batch(&gone)
                    .map_err(|e| fail(format!("deleting rows from {}", self.table), e))?;
                deleted += changes.iter().sum::<u64>();
            }
            if page.rows.len() < PAGE {
                return Ok(deleted);
            }
            last = page.rows.last().cloned();
        }
    }
}

/// Converts records to rows and sends them in batches.
struct Loader<'a> {
    columns: &'a [String],
    affinities: &'a [Affinity],
    /// For columns whose type this step inferred: the type every later value must keep.
    inferred: &'a [Option<Inferred>],
    positions: Option<&'a [usize]>,
    key_index: &'a [usize],
    /// Rows of the current batch are `batch[..len]`; the rest are buffers kept for reuse.
    batch: Vec<Row>,
    /// Where each row of the batch is in the file.
    places: Vec<Pos>,
    len: usize,
    total: u64,
    written: u64,
    /// With `delete-missing`: where each source row landed, asked of SQLite.
    keys: Option<Keys<'a>>,
    /// A 64-bit hash of each row's key values as bound, to find duplicate keys.
    seen: HashSet64,
    file: &'a str,
    table: &'a str,
    label: fn(Pos) -> String,
}

impl Loader<'_> {
    /// Convert one record and add it to the batch; an error is a message about the record.
    /// Returns the row's key values when an earlier row had a key with the same hash (most
    /// likely the same key: the caller makes sure).
    fn push(&mut self, record: Record<'_>, pos: Pos) -> Result<Option<Vec<Value>>, String> {
        if self.len == self.batch.len() {
            self.batch.push(vec![Value::Null; self.columns.len()]);
        }
        let row = &mut self.batch[self.len];
        let columns = self.columns;
        let inferred = self.inferred;
        let in_column = |i: usize, m: String| format!("column `{}`: {m}", columns[i]);
        let keeps = |i: usize, text: &str| -> Result<(), String> {
            match inferred[i] {
                Some(t) if !t.keeps(text) => Err(in_column(
                    i,
                    format!(
                        "the value \"{}\" would not be stored as written in a column created {} from the first {BATCH} records; \
                         declare its type with `types: {{{}: text}}`",
                        text.escape_debug(),
                        t.sql(),
                        columns[i]
                    ),
                )),
                _ => Ok(()),
            }
        };
        match (record, self.positions) {
            (Record::Csv(_, values), Some(positions)) => {
                for (i, ((slot, &pos), &affinity)) in row
                    .iter_mut()
                    .zip(positions)
                    .zip(self.affinities)
                    .enumerate()
                {
                    match values.get(pos) {
                        Some(text) => {
                            keeps(i, text)?;
                            set_csv_value(slot, text, affinity).map_err(|m| in_column(i, m))?;
                        }
                        None => *slot = Value::Null,
                    }
                }
            }
            (record, _) => {
                for (i, ((slot, c), &affinity)) in row
                    .iter_mut()
                    .zip(self.columns)
                    .zip(self.affinities)
                    .enumerate()
                {
                    match record.get(c) {
                        Some(Field::Text(text)) => {
                            keeps(i, text)?;
                            set_csv_value(slot, text, affinity).map_err(|m| in_column(i, m))?;
                        }
                        Some(Field::Json(v)) => {
                            if let serde_json::Value::String(text) = v {
                                keeps(i, text)?;
                            }
                            *slot = json_value(v, affinity).map_err(|m| in_column(i, m))?;
                        }
                        None => *slot = Value::Null,
                    }
                }
            }
        }
        for &k in self.key_index {
            let empty = match &row[k] {
                Value::Null => true,
                Value::Text(s) => s.is_empty(),
                _ => false,
            };
            if empty {
                return Err(format!("the key `{}` is empty", self.columns[k]));
            }
        }
        let hit = !self.seen.insert(key_hash64(row, self.key_index));
        let hit = hit.then(|| self.key_index.iter().map(|&k| row[k].clone()).collect());
        if self.places.len() <= self.len {
            self.places.push(pos);
        } else {
            self.places[self.len] = pos;
        }
        self.len += 1;
        self.total += 1;
        Ok(hit)
    }

    fn flush_if_full(
        &mut self,
        statement: &sqlite::Statement,
        records: &HostRecords,
    ) -> Result<(), StepError> {
        if self.len >= BATCH {
            self.flush(statement)?;
            log::progress(self.total, records.estimated_total(self.total));
        }
        Ok(())
    }

    fn flush(&mut self, statement: &sqlite::Statement) -> Result<(), StepError> {
        if self.len == 0 {
            return Ok(());
        }
        let rows = &self.batch[..self.len];
        let changes = match statement.execute_batch(rows) {
            Ok(changes) => changes,
            Err(e) => return Err(self.blame(statement, e)),
        };
        self.written += changes.iter().filter(|&&c| c > 0).count() as u64;
        if let Some(keys) = &mut self.keys {
            keys.track(
                rows,
                &self.places[..self.len],
                self.key_index,
                self.columns,
                self.file,
                self.label,
            )?;
        }
        self.len = 0;
        Ok(())
    }

    /// The batch failed somewhere: find the row by running the rows one at a time (those
    /// before it only repeat what the batch did, and the whole load is rolled back anyway),
    /// and name it with its values.
    fn blame(&self, statement: &sqlite::Statement, batch_error: Error) -> StepError {
        for (row, pos) in self.batch[..self.len].iter().zip(&self.places) {
            if let Err(e) = statement.execute_batch(std::slice::from_ref(row)) {
                let values = self
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| format!("{c}={}", show(v)))
                    .collect::<Vec<_>>()
                    .join(", ");
                return fail(
                    format!(
                        "{}: {}: writing ({values}) into {}",
                        self.file,
                        (self.label)(*pos),
                        self.table
                    ),
                    e,
                );
            }
        }
        let first = self.places.first().copied().unwrap_or_default();
        fail(
            format!(
                "{}: writing {} records from {} on into {}",
                self.file,
                self.len,
                (self.label)(first),
                self.table
            ),
            batch_error,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("users"), "\"users\"");
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn upsert_statement_updates_only_differing_rows() {
        let cols = ["id".to_string(), "name".into(), "email".into()];
        assert_eq!(
            upsert_sql("users", &cols, &["id".into()]),
            "INSERT INTO \"users\" (\"id\", \"name\", \"email\") VALUES (?, ?, ?) \
             ON CONFLICT (\"id\") DO UPDATE SET \"name\" = excluded.\"name\", \"email\" = excluded.\"email\" \
             WHERE \"users\".\"name\" IS NOT excluded.\"name\" OR \"users\".\"email\" IS NOT excluded.\"email\""
        );
        assert_eq!(
            upsert_sql("t", &["a".into(), "b".into()], &["a".into(), "b".into()]),
            "INSERT INTO \"t\" (\"a\", \"b\") VALUES (?, ?) ON CONFLICT (\"a\", \"b\") DO NOTHING"
        );
    }

    #[test]
    fn affinities_follow_sqlite() {
        assert_eq!(Affinity::of("INTEGER"), Affinity::Integer);
        assert_eq!(Affinity::of("bigint"), Affinity::Integer);
        assert_eq!(Affinity::of("VARCHAR(10)"), Affinity::Text);
        assert_eq!(Affinity::of("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(Affinity::of(""), Affinity::Blob);
        assert_eq!(Affinity::of("DECIMAL(10,2)"), Affinity::Numeric);
    }

    #[test]
    fn csv_values_convert_by_affinity() {
        let v = |t, a| csv_value(t, a).unwrap();
        assert!(matches!(v("42", Affinity::Integer), Value::Integer(42)));
        assert!(matches!(v("4.5", Affinity::Integer), Value::Real(_)));
        assert!(matches!(v("x", Affinity::Integer), Value::Text(_)));
        assert!(matches!(v("", Affinity::Integer), Value::Null));
        assert!(matches!(v("", Affinity::Text), Value::Text(ref s) if s.is_empty()));
        assert!(matches!(v("42", Affinity::Text), Value::Text(_)));
        assert!(matches!(v("3", Affinity::Real), Value::Real(_)));
        assert!(matches!(v("inf", Affinity::Real), Value::Text(_)));
        // Issue 13, section 3: rounding a 20-digit integer would merge distinct keys.
        assert!(
            csv_value("12345678901234567890", Affinity::Integer)
                .unwrap_err()
                .contains("does not fit a 64-bit integer")
        );
        assert!(matches!(
            v("12345678901234567890", Affinity::Text),
            Value::Text(_)
        ));
    }

    #[test]
    fn json_values_keep_their_types() {
        use serde_json::json;
        let v = |j: serde_json::Value| json_value(&j, Affinity::Blob).unwrap();
        assert!(matches!(v(json!(true)), Value::Integer(1)));
        assert!(matches!(v(json!(7)), Value::Integer(7)));
        assert!(matches!(v(json!(0.5)), Value::Real(_)));
        assert!(matches!(v(json!(null)), Value::Null));
        assert!(matches!(v(json!("7")), Value::Text(ref s) if s == "7"));
        assert!(matches!(v(json!([1, {"a": 2}])), Value::Text(ref s) if s == "[1,{\"a\":2}]"));
        assert!(matches!(v(json!(u64::MAX)), Value::Text(ref s) if s == "18446744073709551615"));
        assert!(json_value(&json!(u64::MAX), Affinity::Integer).is_err());
    }

    /// Issue 13, section 3: INTEGER only for canonical integers, REAL only for text that reads
    /// back the same, TEXT otherwise.
    #[test]
    fn types_are_inferred_only_where_the_text_survives() {
        let t = |vals: &[&str]| {
            vals.iter()
                .fold(Inferred::Nothing, |t, v| t.with(Some(Field::Text(v))))
        };
        assert_eq!(t(&["1", "", "3"]), Inferred::Integer);
        assert_eq!(t(&["1", "2.5"]), Inferred::Real);
        assert_eq!(t(&["1", "x"]), Inferred::Text);
        assert_eq!(t(&["", ""]).sql(), "TEXT");
        for text in [
            "01234",
            "+5",
            "-0",
            "00",
            "12345678901234567890",
            "1e3",
            "2.50",
            ".5",
            "-0.0",
            "1_000",
            " 7",
        ] {
            assert_eq!(t(&[text]), Inferred::Text, "{text}");
        }
        assert_eq!(
            t(&["-7", "0", "9223372036854775807"]),
            Inferred::WideInteger
        );
        assert_eq!(t(&["9223372036854775807", "0.5"]), Inferred::Text);
        assert_eq!(t(&["1.0", "0.25", "-3.5"]), Inferred::Real);
        let j = serde_json::json!(true);
        assert_eq!(
            Inferred::Nothing.with(Some(Field::Json(&j))),
            Inferred::Integer
        );
        assert!(Inferred::Integer.keeps("12"));
        assert!(!Inferred::Integer.keeps("012"));
        assert!(Inferred::Real.keeps("3"));
        assert!(!Inferred::Real.keeps("3.10"));
    }

    #[test]
    fn key_hashes_tell_types_apart() {
        let a = key_hash(&[Value::Integer(7)]);
        assert_eq!(a, key_hash(&[Value::Integer(7)]));
        assert_ne!(a, key_hash(&[Value::Text("7".into())]));
        assert_ne!(
            key_hash(&[Value::Text("a".into()), Value::Text("bc".into())]),
            key_hash(&[Value::Text("ab".into()), Value::Text("c".into())])
        );
    }
}
