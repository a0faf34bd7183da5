//! The CSV, JSON and NDJSON record readers. Invariants: no panic and bounded memory on any
//! bytes; the records (or the error) do not depend on how the host splits the file into
//! chunks; every error names the file; and what the reader accepts, the reference reading
//! agrees with: the `csv` crate's strict reader (header row, equal field counts) for CSV,
//! serde_json on the whole array for JSON, serde_json line by line for NDJSON.
#![no_main]

use idem_guest::plan::Format;
use idem_guest::records::{ChunkSource, Records};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

struct Chunks<'a> {
    data: &'a [u8],
    size: usize,
}

impl ChunkSource for Chunks<'_> {
    type Error = String;
    fn next_chunk(&mut self) -> Result<Vec<u8>, String> {
        let n = self.size.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head.to_vec())
    }
}

type Rows = Vec<Vec<(String, String)>>;

fn read(format: Format, data: &[u8], size: usize) -> Result<Rows, String> {
    let mut records =
        Records::new("in.data", format, Chunks { data, size }).map_err(|e| e.message)?;
    let mut out = Vec::new();
    while let Some(r) = records.next_record().map_err(|e| e.message)? {
        out.push(
            r.names()
                .into_iter()
                .map(|n| {
                    let v = r
                        .get(&n)
                        .expect("a named field is there")
                        .to_text()
                        .into_owned();
                    (n, v)
                })
                .collect(),
        );
    }
    Ok(out)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn object_rows(objects: Vec<Map<String, Value>>) -> Rows {
    objects
        .into_iter()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .collect()
}

fn reference(format: Format, data: &[u8]) -> Option<Rows> {
    match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().from_reader(data);
            let header: Vec<String> = reader.headers().ok()?.iter().map(str::to_owned).collect();
            let mut rows = Vec::new();
            for r in reader.records() {
                let r = r.ok()?;
                rows.push(
                    header
                        .iter()
                        .cloned()
                        .zip(r.iter().map(str::to_owned))
                        .collect(),
                );
            }
            Some(rows)
        }
        // The reader takes one UTF-8 byte order mark at the start; serde_json takes none.
        Format::Json => serde_json::from_slice::<Vec<Map<String, Value>>>(
            data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data),
        )
        .ok()
        .map(object_rows),
        Format::Ndjson => {
            let text = std::str::from_utf8(data).ok()?;
            let mut objects = Vec::new();
            for line in text.lines() {
                if line.trim().is_empty() {
                    continue;
                }
                objects.push(serde_json::from_str::<Map<String, Value>>(line).ok()?);
            }
            Some(object_rows(objects))
        }
    }
}

/// A record's wide integers (digits that do not fit in 64 bits) as serde_json writes their
/// float.
fn rounded(row: Vec<(String, String)>) -> Vec<(String, String)> {
    row.into_iter()
        .map(|(k, v)| {
            let digits = v.strip_prefix('-').unwrap_or(&v);
            let wide = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && v.parse::<i64>().is_err();
            match serde_json::from_str::<Value>(&v) {
                Ok(n) if wide => (k, n.to_string()),
                _ => (k, v),
            }
        })
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let [which, size, data @ ..] = input else {
        return;
    };
    let format = [Format::Csv, Format::Json, Format::Ndjson][*which as usize % 3];
    let size = 1 + *size as usize % 17;
    let whole = read(format, data, data.len().max(1));
    let chunked = read(format, data, size);
    assert_eq!(
        whole, chunked,
        "chunks of {size} bytes read otherwise than the whole file"
    );
    match whole {
        Err(message) => assert!(
            message.starts_with("in.data"),
            "an error that does not name the file: {message}"
        ),
        Ok(rows) => {
            if let Some(expected) = reference(format, data) {
                // The reader keeps an integer beyond 64 bits as its digits (docs/plan.md);
                // serde_json rounds it to a float: compare such a value as serde_json has it.
                // (Both sides: a string of such digits is text to both, and rounds alike.)
                let (rows, expected): (Rows, Rows) = match format {
                    Format::Csv => (rows, expected),
                    Format::Json | Format::Ndjson => (
                        rows.into_iter().map(rounded).collect(),
                        expected.into_iter().map(rounded).collect(),
                    ),
                };
                assert_eq!(
                    rows, expected,
                    "the reader disagrees with the reference reading"
                );
            } else {
                panic!("the reader accepted what the reference reading refuses: {rows:?}");
            }
        }
    }
});
