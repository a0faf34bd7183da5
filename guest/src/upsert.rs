//! `upsert`: load records into a SQLite table in one transaction, writing only rows that
//! differ, so a second load of the same file writes nothing.
//!
//! The hot path is one prepared `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement run
//! through `execute-batch` a thousand rows at a time; CSV column positions and affinities are
//! resolved once, and the batch buffer is reused.

use crate::host::HostRecords;
use crate::host::{error, fail, open_records, report};
use crate::idem::plugin::report::{StepError, StepReport};
use crate::idem::plugin::sqlite::{self, Database, Row, Value};
use crate::idem::plugin::{fs, log};
use crate::plan::UpsertStep;
use crate::records::{Field, OwnedRecord, Record};

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

/// A CSV field as the value SQLite would store in a column of this affinity: numbers where
/// the column asks for them and the text is one; an empty field in a numeric column is NULL.
pub fn csv_value(text: &str, affinity: Affinity) -> Value {
    let numeric = matches!(
        affinity,
        Affinity::Integer | Affinity::Real | Affinity::Numeric
    );
    if numeric && text.is_empty() {
        return Value::Null;
    }
    match affinity {
        Affinity::Integer | Affinity::Numeric => {
            if let Ok(i) = text.parse::<i64>() {
                return Value::Integer(i);
            }
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Value::Real(f),
                _ => Value::Text(text.to_owned()),
            }
        }
        Affinity::Real => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::Real(f),
            _ => Value::Text(text.to_owned()),
        },
        Affinity::Text | Affinity::Blob => Value::Text(text.to_owned()),
    }
}

/// Store `text` converted by `affinity` into `slot`, reusing the slot's string buffer when
/// it holds one: the rows of a batch are refilled, not reallocated, for every batch.
fn set_csv_value(slot: &mut Value, text: &str, affinity: Affinity) {
    if matches!(affinity, Affinity::Text | Affinity::Blob)
        && let Value::Text(s) = slot
    {
        s.clear();
        s.push_str(text);
        return;
    }
    *slot = csv_value(text, affinity);
}

/// A JSON value as stored: its own type; booleans as 0 and 1; arrays and objects as JSON text.
pub fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Integer(i64::from(*b)),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

/// The column type to create, inferred from the values seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inferred {
    Nothing,
    Integer,
    Real,
    Text,
}

impl Inferred {
    fn add(self, field: Option<Field<'_>>) -> Inferred {
        let seen = match field {
            None => return self,
            Some(f) if f.is_empty() => return self,
            Some(Field::Text(s)) => {
                if s.parse::<i64>().is_ok() {
                    Inferred::Integer
                } else if s.parse::<f64>().is_ok_and(f64::is_finite) {
                    Inferred::Real
                } else {
                    Inferred::Text
                }
            }
            Some(Field::Json(v)) => match v {
                serde_json::Value::Bool(_) => Inferred::Integer,
                serde_json::Value::Number(n) if n.is_i64() => Inferred::Integer,
                serde_json::Value::Number(_) => Inferred::Real,
                _ => Inferred::Text,
            },
        };
        match (self, seen) {
            (Inferred::Nothing, s) => s,
            (a, b) if a == b => a,
            (Inferred::Integer, Inferred::Real) | (Inferred::Real, Inferred::Integer) => {
                Inferred::Real
            }
            _ => Inferred::Text,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Inferred::Integer => "INTEGER",
            Inferred::Real => "REAL",
            Inferred::Nothing | Inferred::Text => "TEXT",
        }
    }

    fn affinity(self) -> Affinity {
        match self {
            Inferred::Integer => Affinity::Integer,
            Inferred::Real => Affinity::Real,
            Inferred::Nothing | Inferred::Text => Affinity::Text,
        }
    }
}

/// Run an `upsert` step. Counters: `inserted`, `updated`, `unchanged`.
pub fn run(step: &UpsertStep) -> Result<StepReport, StepError> {
    let mut records = open_records(&step.from, step.format)?;
    // The first batch is read before the database is opened, so that a file that is bad from
    // the start does not leave a new, empty database behind.
    let mut first: Vec<(OwnedRecord, String)> = Vec::new();
    while first.len() < BATCH {
        let owned = match records.next_record()? {
            Some(r) => r.to_owned(),
            None => break,
        };
        first.push((owned, records.item()));
    }
    // Like `file`, a database in a directory that is not there yet gets its directory.
    if let Some(dir) = crate::host::parent(&step.upsert) {
        let there = fs::stat(dir).map_err(|e| fail(format!("checking {dir}"), e))?;
        if there.is_none() {
            fs::create_dir(dir, None).map_err(|e| fail(format!("creating directory {dir}"), e))?;
        }
    }
    let db = sqlite::open(&step.upsert).map_err(|e| fail(format!("opening {}", step.upsert), e))?;
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

fn load(
    db: &Database,
    step: &UpsertStep,
    records: &mut HostRecords,
    first: Vec<(OwnedRecord, String)>,
) -> Result<StepReport, StepError> {
    let file = records.file().to_owned();
    let table = &step.table;
    let db_path = &step.upsert;

    // The first batch decides the columns (when not given) and, for a new table, their types.
    let columns: Vec<String> = match (&step.columns, records.header(), first.first()) {
        (Some(c), _, _) => c.clone(),
        (None, Some(header), _) => header.to_vec(),
        (None, None, Some((r, _))) => r.as_record().names(),
        (None, None, None) => step.key.clone(),
    };
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

    let existing = db
        .query(
            "SELECT name, type, pk FROM pragma_table_info(?1)",
            &[Value::Text(table.clone())],
        )
        .map_err(|e| fail(format!("{db_path}: reading the columns of {table}"), e))?;
    let created = existing.rows.is_empty();
    let affinities: Vec<Affinity> = if created {
        let types: Vec<Inferred> = columns
            .iter()
            .map(|c| {
                first
                    .iter()
                    .fold(Inferred::Nothing, |t, (r, _)| t.add(r.as_record().get(c)))
            })
            .collect();
        let defs = columns
            .iter()
            .zip(&types)
            .map(|(c, t)| format!("{} {}", quote(c), t.sql()))
            .collect::<Vec<_>>()
            .join(", ");
        let keys = step.key.iter().map(|k| quote(k)).collect::<Vec<_>>();
        let sql = format!(
            "CREATE TABLE {} ({defs}, PRIMARY KEY ({}))",
            quote(table),
            keys.join(", ")
        );
        db.execute(&sql, &[])
            .map_err(|e| fail(format!("{db_path}: creating table {table}"), e))?;
        log::log(
            log::Level::Debug,
            &format!("{db_path}: created table {table}: {sql}"),
        );
        types.iter().map(|t| t.affinity()).collect()
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
        let find = |c: &str| {
            table_columns
                .iter()
                .find(|(name, ..)| name.eq_ignore_ascii_case(c))
        };
        let mut affinities = Vec::with_capacity(columns.len());
        for c in &columns {
            match find(c) {
                Some((_, declared, _)) => affinities.push(Affinity::of(declared)),
                None => {
                    return Err(error(format!(
                        "{db_path}: table {table} has no column `{c}`; its columns are {}",
                        table_columns
                            .iter()
                            .map(|(n, ..)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        check_unique_key(db, step, &table_columns)?;
        affinities
    };

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
        positions: positions.as_deref(),
        key_index: &key_index,
        batch: Vec::with_capacity(BATCH),
        len: 0,
        first_item: String::new(),
        total: 0,
        written: 0,
    };
    for (record, item) in &first {
        if loader.len == 0 {
            loader.first_item.clone_from(item);
        }
        loader
            .push(record.as_record())
            .map_err(|m| error(format!("{file}: {item}: {m}")))?;
        loader.flush_if_full(&statement, &file, table, records)?;
    }
    drop(first);
    // The "row N" label is formatted only where it is shown: in an error, and once per batch
    // (its first record), not for each of a million rows.
    while let Some(record) = records.next_record()? {
        if let Err(m) = loader.push(record) {
            return Err(error(format!("{file}: {}: {m}", records.item())));
        }
        if loader.len == 1 {
            loader.first_item = records.item();
        }
        loader.flush_if_full(&statement, &file, table, records)?;
    }
    loader.flush(&statement, &file, table)?;
    drop(statement);

    let after = if loader.written == 0 {
        before
    } else {
        count()?
    };
    let inserted = after.saturating_sub(before);
    let updated = loader.written.saturating_sub(inserted);
    let unchanged = loader.total.saturating_sub(loader.written);
    Ok(report(&[
        ("inserted", inserted),
        ("updated", updated),
        ("unchanged", unchanged),
    ]))
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

/// Converts records to rows and sends them in batches.
struct Loader<'a> {
    columns: &'a [String],
    affinities: &'a [Affinity],
    positions: Option<&'a [usize]>,
    key_index: &'a [usize],
    /// Rows of the current batch are `batch[..len]`; the rest are buffers kept for reuse.
    batch: Vec<Row>,
    len: usize,
    /// The first record of the batch, for messages.
    first_item: String,
    total: u64,
    written: u64,
}

impl Loader<'_> {
    /// Convert one record and add it to the batch; an error is a message about the record.
    fn push(&mut self, record: Record<'_>) -> Result<(), String> {
        if self.len == self.batch.len() {
            self.batch.push(vec![Value::Null; self.columns.len()]);
        }
        let row = &mut self.batch[self.len];
        match (record, self.positions) {
            (Record::Csv(_, values), Some(positions)) => {
                for ((slot, &pos), &affinity) in row.iter_mut().zip(positions).zip(self.affinities)
                {
                    match values.get(pos) {
                        Some(text) => set_csv_value(slot, text, affinity),
                        None => *slot = Value::Null,
                    }
                }
            }
            (record, _) => {
                for ((slot, c), &affinity) in row.iter_mut().zip(self.columns).zip(self.affinities)
                {
                    match record.get(c) {
                        Some(Field::Text(text)) => set_csv_value(slot, text, affinity),
                        Some(Field::Json(v)) => *slot = json_value(v),
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
        self.len += 1;
        self.total += 1;
        Ok(())
    }

    fn flush_if_full(
        &mut self,
        statement: &sqlite::Statement,
        file: &str,
        table: &str,
        records: &HostRecords,
    ) -> Result<(), StepError> {
        if self.len >= BATCH {
            self.flush(statement, file, table)?;
            log::progress(self.total, records.estimated_total(self.total));
        }
        Ok(())
    }

    fn flush(
        &mut self,
        statement: &sqlite::Statement,
        file: &str,
        table: &str,
    ) -> Result<(), StepError> {
        if self.len == 0 {
            return Ok(());
        }
        let changes = statement
            .execute_batch(&self.batch[..self.len])
            .map_err(|e| {
                fail(
                    format!(
                        "{file}: writing {} records from {} on into {table}",
                        self.len, self.first_item
                    ),
                    e,
                )
            })?;
        self.written += changes.iter().filter(|&&c| c > 0).count() as u64;
        self.len = 0;
        Ok(())
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
        assert!(matches!(
            csv_value("42", Affinity::Integer),
            Value::Integer(42)
        ));
        assert!(matches!(
            csv_value("4.5", Affinity::Integer),
            Value::Real(_)
        ));
        assert!(matches!(csv_value("x", Affinity::Integer), Value::Text(_)));
        assert!(matches!(csv_value("", Affinity::Integer), Value::Null));
        assert!(matches!(csv_value("", Affinity::Text), Value::Text(ref s) if s.is_empty()));
        assert!(matches!(csv_value("42", Affinity::Text), Value::Text(_)));
        assert!(matches!(csv_value("3", Affinity::Real), Value::Real(_)));
        assert!(matches!(csv_value("inf", Affinity::Real), Value::Text(_)));
    }

    #[test]
    fn json_values_keep_their_types() {
        use serde_json::json;
        assert!(matches!(json_value(&json!(true)), Value::Integer(1)));
        assert!(matches!(json_value(&json!(7)), Value::Integer(7)));
        assert!(matches!(json_value(&json!(0.5)), Value::Real(_)));
        assert!(matches!(json_value(&json!(null)), Value::Null));
        assert!(matches!(json_value(&json!("7")), Value::Text(ref s) if s == "7"));
        assert!(
            matches!(json_value(&json!([1, {"a": 2}])), Value::Text(ref s) if s == "[1,{\"a\":2}]")
        );
    }

    #[test]
    fn types_are_inferred_from_non_empty_values() {
        let t = |vals: &[&str]| {
            vals.iter()
                .fold(Inferred::Nothing, |t, v| t.add(Some(Field::Text(v))))
        };
        assert_eq!(t(&["1", "", "3"]), Inferred::Integer);
        assert_eq!(t(&["1", "2.5"]), Inferred::Real);
        assert_eq!(t(&["1", "x"]), Inferred::Text);
        assert_eq!(t(&["", ""]).sql(), "TEXT");
        let j = serde_json::json!(true);
        assert_eq!(
            Inferred::Nothing.add(Some(Field::Json(&j))),
            Inferred::Integer
        );
    }
}
