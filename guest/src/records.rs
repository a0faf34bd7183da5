//! Records from CSV (with a header row), a JSON array of objects, or NDJSON, read through a
//! source of chunks so that memory stays flat however large the file is: CSV through the
//! `csv` crate's own buffer, JSON arrays through a small splitter that finds each element's
//! bytes and parses one element at a time, NDJSON line by line.
//!
//! The source is a trait so that the readers are tested on in-memory chunks without a host.

use std::borrow::Cow;
use std::io;
use std::rc::Rc;

use csv::StringRecord;
use serde_json::{Map, Value};

use crate::plan::Format;

/// How many bytes to ask the host for at a time.
pub const CHUNK: u32 = 64 * 1024;

/// Where bytes come from: the host's `fs.reader` in the component, a slice in tests.
pub trait ChunkSource {
    /// The source's error (the host's `types.error`).
    type Error;
    /// The next bytes of the file; empty at the end.
    fn next_chunk(&mut self) -> Result<Vec<u8>, Self::Error>;
}

/// Where a record is in its file, kept cheaply (two numbers) and worded only when shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// The record's number, from 1.
    pub index: u64,
    /// Its first line, from 1 (0 where the format does not say, as for a JSON array).
    pub line: u64,
}

/// A record that cannot be read, with the message naming the file and the record.
#[derive(Debug)]
pub struct ReadError<E> {
    /// `data/users.csv: row 17 has 4 fields, expected 3`.
    pub message: String,
    /// The host's error, when reading failed there.
    pub cause: Option<E>,
}

/// One field's value.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// A CSV field: always text.
    Text(&'a str),
    /// A JSON value, with its type.
    Json(&'a Value),
}

impl Field<'_> {
    /// The value as text, for templates and checkpoint keys: strings as they are, numbers and
    /// booleans as JSON writes them, null as nothing, arrays and objects as JSON.
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            Field::Text(s) => Cow::Borrowed(s),
            Field::Json(Value::String(s)) => Cow::Borrowed(s),
            Field::Json(Value::Null) => Cow::Borrowed(""),
            Field::Json(v) => Cow::Owned(v.to_string()),
        }
    }

    /// Whether the field holds nothing (an empty field or string, or JSON null).
    pub fn is_empty(&self) -> bool {
        match self {
            Field::Text(s) => s.is_empty(),
            Field::Json(Value::String(s)) => s.is_empty(),
            Field::Json(v) => v.is_null(),
        }
    }
}

/// A record, borrowed from the reader until the next one is read.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// A CSV row and the file's header.
    Csv(&'a Rc<[String]>, &'a StringRecord),
    /// A JSON object.
    Json(&'a Map<String, Value>),
}

impl<'a> Record<'a> {
    /// The field called `name`.
    pub fn get(&self, name: &str) -> Option<Field<'a>> {
        match self {
            Record::Csv(header, values) => header
                .iter()
                .position(|h| h == name)
                .and_then(|i| values.get(i))
                .map(Field::Text),
            Record::Json(map) => map.get(name).map(Field::Json),
        }
    }

    /// The record's field names, in order.
    pub fn names(&self) -> Vec<String> {
        match self {
            Record::Csv(header, _) => header.to_vec(),
            Record::Json(map) => map.keys().cloned().collect(),
        }
    }

    /// A copy that outlives the reader's next step.
    pub fn to_owned(&self) -> OwnedRecord {
        match self {
            Record::Csv(header, values) => OwnedRecord::Csv(Rc::clone(header), (*values).clone()),
            Record::Json(map) => OwnedRecord::Json((*map).clone()),
        }
    }
}

/// A record kept for later (by `each`, which looks a batch up in the checkpoint first).
#[derive(Debug, Clone)]
pub enum OwnedRecord {
    /// A CSV row and the file's header.
    Csv(Rc<[String]>, StringRecord),
    /// A JSON object.
    Json(Map<String, Value>),
}

impl OwnedRecord {
    /// Borrow it as a `Record`.
    pub fn as_record(&self) -> Record<'_> {
        match self {
            OwnedRecord::Csv(h, v) => Record::Csv(h, v),
            OwnedRecord::Json(m) => Record::Json(m),
        }
    }
}

/// Buffered bytes over a chunk source; also an `io::Read` for the `csv` crate, keeping the
/// source's own error aside since `io::Error` cannot carry it.
struct Bytes<S: ChunkSource> {
    source: S,
    chunk: Vec<u8>,
    pos: usize,
    /// Bytes of the file before `chunk`: with `pos`, how far the reader has got.
    offset: u64,
    eof: bool,
    error: Option<S::Error>,
    /// For CSV: the quoting check of every byte handed to the `csv` crate.
    csv: Option<CsvCheck>,
    /// The next read hands out at most one byte (see [`Bytes::skip_bom`]).
    first_byte: bool,
}

/// RFC 4180 quoting, checked strictly: the `csv` crate reads `"Li"nus` as `Linus` and lets
/// an unterminated quote swallow the rest of the file, and has no strict mode, so every byte
/// it reads passes through this small state machine first. A quote may only open a field,
/// and a quoted field must close with a quote followed by a separator, a line end or the end
/// of the file (`""` inside is a literal quote).
#[derive(Debug)]
struct CsvCheck {
    /// The current line, from 1.
    line: u64,
    /// Non-empty records completed, the header included (the `csv` crate skips empty lines).
    records: u64,
    field_start: bool,
    record_empty: bool,
    in_quotes: bool,
    /// A `"` inside a quoted field: the next byte says whether it closes the field.
    quote_pending: bool,
    quote_line: u64,
    /// The first violation, as (records before it, line, what is wrong).
    error: Option<(u64, u64, String)>,
}

impl CsvCheck {
    fn new() -> CsvCheck {
        CsvCheck {
            line: 1,
            records: 0,
            field_start: true,
            record_empty: true,
            in_quotes: false,
            quote_pending: false,
            quote_line: 0,
            error: None,
        }
    }

    /// Check `data` and return how many of its bytes come before the first violation (all of
    /// them when there is none); the violation is kept in `error`. The state is held in locals
    /// for the loop (this runs once per byte of every CSV file) and written back at the end.
    fn feed(&mut self, data: &[u8]) -> usize {
        let (mut line, mut records) = (self.line, self.records);
        let (mut field_start, mut record_empty) = (self.field_start, self.record_empty);
        let (mut in_quotes, mut quote_pending) = (self.in_quotes, self.quote_pending);
        let mut quote_line = self.quote_line;
        let mut problem: Option<String> = None;
        let mut good = data.len();
        for (i, &b) in data.iter().enumerate() {
            good = i;
            if in_quotes {
                if quote_pending {
                    quote_pending = false;
                    if b == b'"' {
                        continue;
                    }
                    in_quotes = false;
                    if !matches!(b, b',' | b'\n' | b'\r') {
                        problem = Some(format!(
                            "text follows the closing `\"` of a quoted field (`{}`); quote the whole field and double each `\"` inside it",
                            char::from(b).escape_default()
                        ));
                        break;
                    }
                } else {
                    match b {
                        b'"' => quote_pending = true,
                        b'\n' => line += 1,
                        _ => {}
                    }
                    continue;
                }
            }
            match b {
                b'"' if field_start => {
                    in_quotes = true;
                    quote_line = line;
                    field_start = false;
                    record_empty = false;
                }
                b'"' => {
                    problem = Some(
                        "a `\"` inside an unquoted field; quote the whole field and double each `\"` inside it (\"Li\"\"nus\")"
                            .to_owned(),
                    );
                    break;
                }
                b',' => {
                    field_start = true;
                    record_empty = false;
                }
                b'\n' | b'\r' => {
                    records += u64::from(!record_empty);
                    line += u64::from(b == b'\n');
                    field_start = true;
                    record_empty = true;
                }
                _ => {
                    field_start = false;
                    record_empty = false;
                }
            }
        }
        self.line = line;
        self.records = records;
        self.field_start = field_start;
        self.record_empty = record_empty;
        self.in_quotes = in_quotes;
        self.quote_pending = quote_pending;
        self.quote_line = quote_line;
        match problem {
            Some(what) => {
                self.fail(what);
                good
            }
            None => data.len(),
        }
    }

    /// At the end of the file: a quoted field must have closed.
    fn finish(&mut self) -> bool {
        if self.in_quotes && !self.quote_pending {
            self.line = self.quote_line;
            return self.fail(format!(
                "the quoted field opened on line {} never closes, so it would swallow the rest of the file; close it with `\"`",
                self.quote_line
            ));
        }
        true
    }

    fn fail(&mut self, what: String) -> bool {
        self.error = Some((self.records, self.line, what));
        false
    }
}

impl<S: ChunkSource> Bytes<S> {
    fn new(source: S) -> Self {
        Bytes {
            source,
            chunk: Vec::new(),
            pos: 0,
            offset: 0,
            eof: false,
            error: None,
            csv: None,
            first_byte: false,
        }
    }

    /// Make bytes available; false at the end of the file.
    fn fill(&mut self) -> Result<bool, S::Error> {
        while self.pos >= self.chunk.len() {
            if self.eof {
                return Ok(false);
            }
            self.offset += self.chunk.len() as u64;
            self.chunk = self.source.next_chunk()?;
            self.pos = 0;
            self.eof = self.chunk.is_empty();
        }
        Ok(true)
    }

    /// Gather at least `n` bytes in the current chunk, or what is left of the file, joining
    /// chunks as needed.
    fn gather(&mut self, n: usize) -> Result<(), S::Error> {
        while self.chunk.len() - self.pos < n && !self.eof {
            let next = self.source.next_chunk()?;
            self.eof = next.is_empty();
            self.chunk.drain(..self.pos);
            self.offset += self.pos as u64;
            self.pos = 0;
            self.chunk.extend_from_slice(&next);
        }
        Ok(())
    }

    /// Skip a UTF-8 byte order mark at the start of a CSV file, however the file is chunked.
    /// The `csv` crate strips one only when all three bytes come in its first read, so a file
    /// split into small chunks kept a mark that a file read whole lost; so idem strips it, and
    /// the crate's first read is one byte (see `first_byte`), so the crate never strips
    /// another. The quoting check never sees the mark (a `"` right after it opens a field).
    fn skip_bom(&mut self) -> Result<(), S::Error> {
        self.gather(3)?;
        if self.buffered().starts_with(b"\xEF\xBB\xBF") {
            self.pos += 3;
        }
        self.first_byte = true;
        Ok(())
    }

    /// Bytes of the file consumed so far.
    fn consumed(&self) -> u64 {
        self.offset + self.pos as u64
    }

    fn buffered(&self) -> &[u8] {
        &self.chunk[self.pos..]
    }
}

impl<S: ChunkSource> io::Read for Bytes<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let malformed = || io::Error::other("malformed CSV quoting");
        match self.fill() {
            Ok(false) => {
                if self.csv.as_mut().is_some_and(|check| !check.finish()) {
                    return Err(malformed());
                }
                Ok(0)
            }
            Ok(true) => {
                let mut n = self.buffered().len().min(out.len());
                if self.first_byte {
                    self.first_byte = false;
                    n = n.min(1);
                }
                let data = &self.chunk[self.pos..self.pos + n];
                // The `csv` crate reads the bytes before a violation, and meets the violation
                // only when it reads on, so that whichever of its own errors (UTF-8, say) or
                // the quoting comes first in the file is the one reported, however the file
                // is split into chunks.
                if let Some(check) = &mut self.csv {
                    if check.error.is_some() {
                        return Err(malformed());
                    }
                    n = check.feed(data);
                    if n == 0 {
                        return Err(malformed());
                    }
                }
                out[..n].copy_from_slice(&data[..n]);
                self.pos += n;
                Ok(n)
            }
            Err(e) => {
                self.error = Some(e);
                Err(io::Error::other("the host could not read the file"))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonState {
    /// At the first byte of the file.
    Start,
    /// Inside a UTF-8 byte order mark at the start: how many of its bytes have been read.
    Bom(u8),
    /// Before the opening `[`, after whitespace (or the mark).
    Lead,
    /// After `[`: an element or `]` comes next.
    Before,
    /// After `,`: an element comes next (JSON has no trailing comma).
    Next,
    /// Inside an element.
    InValue,
    /// After an element: `,` or `]` comes next.
    After,
    /// After the closing `]`.
    Done,
}

enum Inner<S: ChunkSource> {
    Csv {
        reader: csv::Reader<Bytes<S>>,
        header: Rc<[String]>,
        record: StringRecord,
    },
    Json {
        bytes: Bytes<S>,
        state: JsonState,
        depth: u32,
        in_string: bool,
        escaped: bool,
        element: Vec<u8>,
        object: Map<String, Value>,
    },
    Ndjson {
        bytes: Bytes<S>,
        line: Vec<u8>,
        line_no: u64,
        object: Map<String, Value>,
    },
}

/// A reader of records, one at a time.
pub struct Records<S: ChunkSource> {
    file: String,
    count: u64,
    /// The file's size in bytes, when known: what progress totals are estimated from.
    pub size: Option<u64>,
    /// Rows written in the plan (an `upsert`'s `rows`), read as CSV: named `row N` alone,
    /// since their lines are not the plan's.
    pub inline: bool,
    inner: Inner<S>,
}

impl<S: ChunkSource> Records<S> {
    /// Start reading `file` (used in messages) in `format`. For CSV this reads the header.
    pub fn new(file: &str, format: Format, source: S) -> Result<Self, ReadError<S::Error>> {
        let mut bytes = Bytes::new(source);
        let inner = match format {
            Format::Csv => {
                bytes.skip_bom().map_err(|e| ReadError {
                    message: format!("{file}: cannot read the header row"),
                    cause: Some(e),
                })?;
                bytes.csv = Some(CsvCheck::new());
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(true)
                    .buffer_capacity(CHUNK as usize)
                    .from_reader(bytes);
                let header = match reader.headers() {
                    Ok(h) => h.iter().map(str::to_owned).collect::<Vec<_>>(),
                    Err(e) => {
                        if let Some(e) = quoting_error(file, &e, reader.get_mut()) {
                            return Err(e);
                        }
                        let cause = reader.get_mut().error.take();
                        return Err(csv_error(file, "the header row", e, cause));
                    }
                };
                if header.is_empty() || header.iter().all(String::is_empty) {
                    return Err(ReadError {
                        message: format!("{file}: the file is empty; expected a header row"),
                        cause: None,
                    });
                }
                for (i, h) in header.iter().enumerate() {
                    if header[..i].contains(h) {
                        return Err(ReadError {
                            message: format!("{file}: the header names `{h}` twice"),
                            cause: None,
                        });
                    }
                }
                Inner::Csv {
                    reader,
                    header: header.into(),
                    record: StringRecord::new(),
                }
            }
            Format::Json => Inner::Json {
                bytes,
                state: JsonState::Start,
                depth: 0,
                in_string: false,
                escaped: false,
                element: Vec::new(),
                object: Map::new(),
            },
            Format::Ndjson => Inner::Ndjson {
                bytes,
                line: Vec::new(),
                line_no: 0,
                object: Map::new(),
            },
        };
        Ok(Records {
            file: file.to_owned(),
            count: 0,
            size: None,
            inline: false,
            inner,
        })
    }

    /// The CSV header, when the format has one.
    pub fn header(&self) -> Option<&Rc<[String]>> {
        match &self.inner {
            Inner::Csv { header, .. } => Some(header),
            _ => None,
        }
    }

    /// How many records have been read.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The last record read, in the user's words: `row 17`, `record 17`, `line 17`.
    pub fn item(&self) -> String {
        match &self.inner {
            Inner::Csv { .. } => format!("row {}", self.count),
            Inner::Json { .. } => format!("record {}", self.count),
            Inner::Ndjson { line_no, .. } => format!("line {line_no}"),
        }
    }

    /// Where the last record read is: its number and, for CSV and NDJSON, its first line.
    pub fn position(&self) -> Pos {
        match &self.inner {
            Inner::Csv { record, .. } => Pos {
                index: self.count,
                line: record.position().map_or(0, csv::Position::line),
            },
            Inner::Json { .. } => Pos {
                index: self.count,
                line: 0,
            },
            Inner::Ndjson { line_no, .. } => Pos {
                index: self.count,
                line: *line_no,
            },
        }
    }

    /// How this format names a position: `row 3 (line 4)`, `record 3`, `line 3`.
    pub fn labeler(&self) -> fn(Pos) -> String {
        if self.inline {
            return |p| format!("row {}", p.index);
        }
        match &self.inner {
            Inner::Csv { .. } => |p| format!("row {} (line {})", p.index, p.line),
            Inner::Json { .. } => |p| format!("record {}", p.index),
            Inner::Ndjson { .. } => |p| format!("line {}", p.line),
        }
    }

    /// Bytes of the file read up to the end of the last record: against the file's size, how
    /// far through it the reader is.
    pub fn bytes_read(&self) -> u64 {
        match &self.inner {
            Inner::Csv { reader, .. } => reader.position().byte(),
            Inner::Json { bytes, .. } | Inner::Ndjson { bytes, .. } => bytes.consumed(),
        }
    }

    /// The total to report `done` records against (`log.progress`): the records read so far
    /// scaled by the file's size over the bytes read, so the percentage a host shows is exactly
    /// how far through the file the reader is and the count stays in records; 0 (unknown)
    /// before anything is read or without a size.
    pub fn estimated_total(&self, done: u64) -> u64 {
        estimated_total(done, self.bytes_read(), self.size.unwrap_or(0))
    }

    /// The file's name, as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Read the next record, to look at with [`Records::current`] and
    /// [`Records::position`]; false at the end.
    pub fn advance(&mut self) -> Result<bool, ReadError<S::Error>> {
        Ok(self.next_record()?.is_some())
    }

    /// The record the last successful [`Records::advance`] read.
    pub fn current(&self) -> Record<'_> {
        match &self.inner {
            Inner::Csv { header, record, .. } => Record::Csv(header, record),
            Inner::Json { object, .. } | Inner::Ndjson { object, .. } => Record::Json(object),
        }
    }

    /// The next record, or `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, ReadError<S::Error>> {
        let file = &self.file;
        match &mut self.inner {
            Inner::Csv {
                reader,
                header,
                record,
            } => match reader.read_record(record) {
                Ok(false) => Ok(None),
                Ok(true) => {
                    self.count += 1;
                    if record.len() != header.len() {
                        let line = record.position().map_or(0, csv::Position::line);
                        return Err(ReadError {
                            message: format!(
                                "{file}: row {} (line {line}) has {} fields, expected {}",
                                self.count,
                                record.len(),
                                header.len()
                            ),
                            cause: None,
                        });
                    }
                    Ok(Some(Record::Csv(header, record)))
                }
                Err(e) => {
                    if let Some(e) = quoting_error(file, &e, reader.get_mut()) {
                        return Err(e);
                    }
                    let cause = reader.get_mut().error.take();
                    let row = format!("row {}", self.count + 1);
                    Err(csv_error(file, &row, e, cause))
                }
            },
            Inner::Json {
                bytes,
                state,
                depth,
                in_string,
                escaped,
                element,
                object,
            } => {
                let mut scan = JsonScan {
                    state,
                    depth,
                    in_string,
                    escaped,
                };
                element.clear();
                loop {
                    match bytes.fill() {
                        Ok(true) => {}
                        Ok(false) => {
                            if *scan.state == JsonState::Done {
                                return Ok(None);
                            }
                            let what = if matches!(*scan.state, JsonState::Start | JsonState::Lead)
                            {
                                "the file is empty; expected a JSON array of objects"
                            } else {
                                "the JSON array is not closed with `]`"
                            };
                            return Err(ReadError {
                                message: format!("{file}: {what}"),
                                cause: None,
                            });
                        }
                        Err(e) => {
                            return Err(ReadError {
                                message: format!("{file}: cannot read"),
                                cause: Some(e),
                            });
                        }
                    }
                    let data = bytes.buffered();
                    let (used, outcome) = scan.feed(data, element);
                    bytes.pos += used;
                    match outcome {
                        Feed::More => {}
                        Feed::Element => break,
                        Feed::Error(what) => {
                            return Err(ReadError {
                                message: format!("{file}: after record {}: {what}", self.count),
                                cause: None,
                            });
                        }
                    }
                }
                self.count += 1;
                *object = parse_object(element).map_err(|e| ReadError {
                    message: format!("{file}: record {}: {e}", self.count),
                    cause: None,
                })?;
                Ok(Some(Record::Json(object)))
            }
            Inner::Ndjson {
                bytes,
                line,
                line_no,
                object,
            } => loop {
                line.clear();
                let mut ended = false;
                loop {
                    match bytes.fill() {
                        Ok(true) => {}
                        Ok(false) => {
                            ended = true;
                            break;
                        }
                        Err(e) => {
                            return Err(ReadError {
                                message: format!("{file}: cannot read"),
                                cause: Some(e),
                            });
                        }
                    }
                    let data = bytes.buffered();
                    match data.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            line.extend_from_slice(&data[..i]);
                            bytes.pos += i + 1;
                            break;
                        }
                        None => {
                            line.extend_from_slice(data);
                            bytes.pos += data.len();
                        }
                    }
                }
                if ended && line.is_empty() {
                    return Ok(None);
                }
                *line_no += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                self.count += 1;
                *object = parse_object(line).map_err(|e| ReadError {
                    message: format!("{file}: line {line_no}: {e}"),
                    cause: None,
                })?;
                return Ok(Some(Record::Json(object)));
            },
        }
    }
}

/// The quoting check's error, worded with the row and line, when it is what stopped the `csv`
/// crate: a violation the crate has not read up to yet (its own error came first) waits.
fn quoting_error<S: ChunkSource>(
    file: &str,
    e: &csv::Error,
    bytes: &mut Bytes<S>,
) -> Option<ReadError<S::Error>> {
    if !matches!(e.kind(), csv::ErrorKind::Io(_)) {
        return None;
    }
    let (records, line, what) = bytes.csv.as_mut()?.error.take()?;
    let row = if records == 0 {
        "the header row".to_owned()
    } else {
        format!("row {records}")
    };
    Some(ReadError {
        message: format!("{file}: {row} (line {line}): {what}"),
        cause: None,
    })
}

fn csv_error<E>(file: &str, what: &str, e: csv::Error, cause: Option<E>) -> ReadError<E> {
    let message = match (e.kind(), &cause) {
        (_, Some(_)) => format!("{file}: cannot read {what}"),
        (csv::ErrorKind::Utf8 { pos, .. }, _) => format!(
            "{file}: {what} (line {}) is not valid UTF-8",
            pos.as_ref().map_or(0, csv::Position::line)
        ),
        _ => format!("{file}: {what}: {e}"),
    };
    ReadError { message, cause }
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    if start.is_some_and(|i| bytes[i] != b'{') {
        return Err("is not a JSON object".into());
    }
    let quoted;
    let bytes = match quote_wide_integers(bytes) {
        Some(q) => {
            // Quoting must not make valid what is not (`{123…: 1}`, `[00123…]`): the text is
            // checked as it is first, which only objects with wide integers pay for.
            serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                .map_err(|e| format!("invalid JSON: {e}"))?;
            quoted = q;
            &quoted[..]
        }
        None => bytes,
    };
    serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
}

/// JSON integers beyond 64 bits, made strings so that their digits survive (serde_json
/// would round them to a float); `None` when there are none, the usual case, which costs
/// one scan of the bytes. Account numbers and IDs are digits, not quantities.
fn quote_wide_integers(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut wide: Vec<(usize, usize)> = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let end = bytes[i..]
                .iter()
                .position(|c| !matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                .map_or(bytes.len(), |n| i + n);
            let token = &bytes[i..end];
            let integer = !token.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
            if integer
                && std::str::from_utf8(token).is_ok_and(|t| t.parse::<i64>().is_err())
                && token.iter().filter(|c| c.is_ascii_digit()).count() >= 19
            {
                wide.push((i, end));
            }
            i = end;
            continue;
        }
        i += 1;
    }
    if wide.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() + 2 * wide.len());
    let mut at = 0;
    for (start, end) in wide {
        out.extend_from_slice(&bytes[at..start]);
        out.push(b'"');
        out.extend_from_slice(&bytes[start..end]);
        out.push(b'"');
        at = end;
    }
    out.extend_from_slice(&bytes[at..]);
    Some(out)
}

enum Feed {
    /// Every byte given was used; give more.
    More,
    /// An element's bytes are complete.
    Element,
    /// Not a JSON array.
    Error(String),
}

/// The splitter's state, borrowed from the reader so it persists across chunks.
struct JsonScan<'a> {
    state: &'a mut JsonState,
    depth: &'a mut u32,
    in_string: &'a mut bool,
    escaped: &'a mut bool,
}

impl JsonScan<'_> {
    /// Scan `data`, appending the current element's bytes to `element`; returns how many
    /// bytes were used and why it stopped.
    fn feed(&mut self, data: &[u8], element: &mut Vec<u8>) -> (usize, Feed) {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match *self.state {
                JsonState::Start | JsonState::Lead | JsonState::Bom(_) => {
                    // One byte order mark, only as the file's first bytes; then JSON's own
                    // whitespace (not `is_ascii_whitespace`, which has form feed).
                    const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
                    *self.state = match (*self.state, b) {
                        (JsonState::Start, 0xEF) => JsonState::Bom(1),
                        (JsonState::Bom(n), b) if b == BOM[usize::from(n)] => {
                            if n == 2 {
                                JsonState::Lead
                            } else {
                                JsonState::Bom(n + 1)
                            }
                        }
                        (JsonState::Start | JsonState::Lead, b'[') => JsonState::Before,
                        (JsonState::Start | JsonState::Lead, b) if is_json_space(b) => {
                            JsonState::Lead
                        }
                        _ => {
                            return (
                                i,
                                Feed::Error("expected a JSON array starting with `[`".into()),
                            );
                        }
                    };
                }
                JsonState::Before | JsonState::Next => {
                    if b == b']' && *self.state == JsonState::Before {
                        // The rest of the file is still read: only whitespace may follow.
                        *self.state = JsonState::Done;
                    } else if b == b']' {
                        return (
                            i,
                            Feed::Error(
                                "a `,` before the closing `]` (JSON has no trailing comma)".into(),
                            ),
                        );
                    } else if !is_json_space(b) {
                        *self.state = JsonState::InValue;
                        continue;
                    }
                }
                JsonState::InValue => {
                    if *self.in_string {
                        if *self.escaped {
                            *self.escaped = false;
                        } else if b == b'\\' {
                            *self.escaped = true;
                        } else if b == b'"' {
                            *self.in_string = false;
                        }
                    } else {
                        match b {
                            b'"' => *self.in_string = true,
                            b'{' | b'[' => *self.depth += 1,
                            b'}' | b']' if *self.depth > 0 => {
                                *self.depth -= 1;
                                if *self.depth == 0 {
                                    element.push(b);
                                    *self.state = JsonState::After;
                                    return (i + 1, Feed::Element);
                                }
                            }
                            // A scalar element ends at the separator.
                            b',' | b']' if *self.depth == 0 => {
                                *self.state = JsonState::After;
                                return (i, Feed::Element);
                            }
                            _ => {}
                        }
                    }
                    element.push(b);
                }
                JsonState::After => match b {
                    b',' => *self.state = JsonState::Next,
                    b']' => *self.state = JsonState::Done,
                    _ if is_json_space(b) => {}
                    _ => {
                        return (
                            i,
                            Feed::Error(format!(
                                "expected `,` or `]`, found `{}`",
                                char::from(b).escape_default()
                            )),
                        );
                    }
                },
                JsonState::Done => {
                    if !is_json_space(b) {
                        return (i, Feed::Error("content after the closing `]`".into()));
                    }
                }
            }
            i += 1;
        }
        (data.len(), Feed::More)
    }
}

/// `done` records took `position` of `size` bytes: about how many the whole file holds (never
/// fewer than `done`, exactly `done` at the end).
pub fn estimated_total(done: u64, position: u64, size: u64) -> u64 {
    if done == 0 || position == 0 || size == 0 {
        return 0;
    }
    if position >= size {
        return done;
    }
    let estimate = (u128::from(done) * u128::from(size)).div_ceil(u128::from(position));
    u64::try_from(estimate).unwrap_or(u64::MAX).max(done)
}

/// JSON's whitespace (RFC 8259: space, tab, line feed, carriage return).
fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a file, handed out `size` at a time.
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

    struct Failing;
    impl ChunkSource for Failing {
        type Error = String;
        fn next_chunk(&mut self) -> Result<Vec<u8>, String> {
            Err("disk on fire".into())
        }
    }

    /// Read every record as (field, text) pairs, at several chunk sizes that must agree.
    fn read_all(format: Format, data: &str) -> Result<Vec<Vec<(String, String)>>, String> {
        read_bytes(format, data.as_bytes(), &[1, 2, 3, 7, 64 * 1024])
    }

    /// Read `data` split into chunks of each of `sizes`; every split must read alike.
    fn read_bytes(
        format: Format,
        data: &[u8],
        sizes: &[usize],
    ) -> Result<Vec<Vec<(String, String)>>, String> {
        let mut results = Vec::new();
        for &size in sizes {
            let source = Chunks { data, size };
            let result = (|| {
                let mut records = Records::new("in", format, source).map_err(|e| e.message)?;
                let mut out = Vec::new();
                while let Some(r) = records.next_record().map_err(|e| e.message)? {
                    out.push(
                        r.names()
                            .into_iter()
                            .map(|n| {
                                let v = r.get(&n).unwrap().to_text().into_owned();
                                (n, v)
                            })
                            .collect(),
                    );
                }
                Ok(out)
            })();
            results.push(result);
        }
        for (r, size) in results[1..].iter().zip(&sizes[1..]) {
            assert_eq!(
                r, &results[0],
                "chunks of {size} bytes against {}",
                sizes[0]
            );
        }
        results.remove(0)
    }

    /// Issue 19 (fuzz finding `records-error-depends-on-chunking`): a header that is not
    /// UTF-8, with a stray quote on a later line, was a quote error when the quoting check saw
    /// the whole file at once and a UTF-8 error when the file came in small chunks. The error
    /// is now the one that comes first in the file, for every split.
    #[test]
    fn a_csv_error_does_not_depend_on_how_the_file_is_chunked() {
        let finding = include_bytes!("../../fuzz/findings/records-error-depends-on-chunking");
        // The finding is the fuzz target's input: a format byte, a chunk-size byte, the file.
        let data = &finding[2..];
        let sizes: Vec<usize> = std::iter::once(data.len()).chain(1..=40).collect();
        let e = read_bytes(Format::Csv, data, &sizes).unwrap_err();
        assert_eq!(e, "in: the header row (line 1) is not valid UTF-8");
        // Within the rows: a row that is not UTF-8 before a row with a stray quote.
        let data = b"id,name\n1,Ad\xffa\n2,Li\"nus\n";
        let sizes: Vec<usize> = std::iter::once(data.len()).chain(1..=30).collect();
        let e = read_bytes(Format::Csv, data, &sizes).unwrap_err();
        assert_eq!(e, "in: row 1 (line 2) is not valid UTF-8");
        // A byte order mark, read whole or a byte at a time, and a quoted field right after it
        // (as spreadsheets write them).
        let data = b"\xEF\xBB\xBF,,2\n1,2,3\n";
        let sizes: Vec<usize> = std::iter::once(data.len()).chain(1..=8).collect();
        let e = read_bytes(Format::Csv, data, &sizes).unwrap_err();
        assert_eq!(e, "in: the header names `` twice");
        let rows = read_bytes(Format::Csv, b"\xEF\xBB\xBF\"id\",n\n1,2\n", &sizes).unwrap();
        assert_eq!(rows, [pairs(&[("id", "1"), ("n", "2")])]);
        // One mark is skipped, as the `csv` crate does; a second is text of the first field.
        let rows = read_bytes(Format::Csv, b"\xEF\xBB\xBF\xEF\xBB\xBFid\n1\n", &sizes).unwrap();
        assert_eq!(rows, [pairs(&[("\u{feff}id", "1")])]);
        // And the other way round: the quote comes first.
        let data = b"id,name\n1,Li\"nus\n2,Ad\xffa\n";
        let e = read_bytes(Format::Csv, data, &sizes).unwrap_err();
        assert!(e.starts_with("in: row 1 (line 2): a `\"` inside"), "{e}");
    }

    #[test]
    fn the_position_is_the_end_of_the_last_record_read() {
        let cases = [
            (Format::Csv, "id,name\n1,Ada\n2,Grace\n", vec![14, 22]),
            (Format::Ndjson, "{\"a\":1}\n{\"a\":22}\n", vec![8, 17]),
        ];
        for (format, data, want) in cases {
            for size in [1, 3, 64 * 1024] {
                let source = Chunks {
                    data: data.as_bytes(),
                    size,
                };
                let mut records = Records::new("in", format, source).unwrap();
                let mut got = Vec::new();
                while records.next_record().unwrap().is_some() {
                    got.push(records.bytes_read());
                }
                assert_eq!(got, want, "{format:?} in chunks of {size}");
            }
        }
    }

    #[test]
    fn totals_are_estimated_from_the_bytes_read() {
        assert_eq!(estimated_total(0, 0, 100), 0, "nothing read: unknown");
        assert_eq!(estimated_total(10, 25, 0), 0, "no size: unknown");
        assert_eq!(estimated_total(10, 25, 100), 40);
        assert_eq!(estimated_total(10, 30, 100), 34, "rounded up");
        assert_eq!(estimated_total(40, 100, 100), 40, "exact at the end");
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn csv_rows_are_read_with_the_header() {
        let rows = read_all(Format::Csv, "id,name\n1,Ada\n2,\"Grace, H\"\n").unwrap();
        assert_eq!(
            rows,
            [
                pairs(&[("id", "1"), ("name", "Ada")]),
                pairs(&[("id", "2"), ("name", "Grace, H")])
            ]
        );
    }

    #[test]
    fn csv_row_with_wrong_field_count_is_named() {
        let e = read_all(Format::Csv, "a,b,c\n1,2,3\n1,2,3,4\n").unwrap_err();
        assert_eq!(e, "in: row 2 (line 3) has 4 fields, expected 3");
    }

    /// Issue 13, section 4: malformed quotes are refused, naming the row and line.
    #[test]
    fn csv_quotes_are_read_strictly() {
        let e = read_all(Format::Csv, "id,name\n1,ok\n2,\"Li\"nus\n3,x\n").unwrap_err();
        assert_eq!(
            e,
            "in: row 2 (line 3): text follows the closing `\"` of a quoted field (`n`); quote the whole field and double each `\"` inside it"
        );
        let e = read_all(Format::Csv, "id,name\n1,ok\n2,Li\"nus\n").unwrap_err();
        assert!(
            e.starts_with("in: row 2 (line 3): a `\"` inside an unquoted field"),
            "{e}"
        );
        let e = read_all(Format::Csv, "id,name\n1,ok\n\n3,\"abc\n4,more\n5,lines\n").unwrap_err();
        assert!(
            e.starts_with("in: row 2 (line 4): the quoted field opened on line 4 never closes"),
            "{e}"
        );
        let e = read_all(Format::Csv, "id,\"na\"me\n1,2\n").unwrap_err();
        assert!(e.starts_with("in: the header row (line 1)"), "{e}");
        // Well-formed quoting still reads: doubled quotes, separators and newlines inside.
        let rows = read_all(
            Format::Csv,
            "id,name\r\n1,\"Li\"\"nus\"\r\n2,\"a,b\nc\"\r\n3,\"\"\n",
        )
        .unwrap();
        assert_eq!(rows[0][1].1, "Li\"nus");
        assert_eq!(rows[1][1].1, "a,b\nc");
        assert_eq!(rows[2][1].1, "");
    }

    #[test]
    fn csv_errors_are_named() {
        assert!(read_all(Format::Csv, "").unwrap_err().contains("empty"));
        assert!(
            read_all(Format::Csv, "a,a\n1,2\n")
                .unwrap_err()
                .contains("twice")
        );
        let e = read_all(Format::Csv, "a\nok\n\u{0}\u{0}").map(|r| r.len());
        assert_eq!(e, Ok(2));
        let mut r = Records::new(
            "in",
            Format::Csv,
            Chunks {
                data: b"a\n\xff\xfe\n",
                size: 4,
            },
        )
        .unwrap();
        assert!(r.next_record().unwrap_err().message.contains("UTF-8"));
    }

    #[test]
    fn json_arrays_stream_element_by_element() {
        let data = r#" [ {"id": 1, "name": "A]\"{"}, {"id": 2, "tags": [1, {"x": []}]} ,
            {"id": 3, "n": null, "b": true} ] "#;
        let rows = read_all(Format::Json, data).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], pairs(&[("id", "1"), ("name", "A]\"{")]));
        assert_eq!(rows[1][1], ("tags".into(), r#"[1,{"x":[]}]"#.into()));
        assert_eq!(rows[2], pairs(&[("id", "3"), ("n", ""), ("b", "true")]));
        assert_eq!(read_all(Format::Json, "[]").unwrap().len(), 0);
        assert_eq!(read_all(Format::Json, "\u{feff}[{}]").unwrap().len(), 1);
    }

    #[test]
    fn json_errors_name_the_record() {
        assert_eq!(
            read_all(Format::Json, "[{\"a\":1}, 5]").unwrap_err(),
            "in: record 2: is not a JSON object"
        );
        assert!(
            read_all(Format::Json, "[{\"a\":1}, {\"a\" 2}]")
                .unwrap_err()
                .starts_with("in: record 2: invalid JSON")
        );
        assert!(
            read_all(Format::Json, "{\"a\":1}")
                .unwrap_err()
                .contains("`[`")
        );
        assert!(
            read_all(Format::Json, "[{\"a\":1}")
                .unwrap_err()
                .contains("not closed")
        );
        assert!(
            read_all(Format::Json, "[{\"a\":1}] x")
                .unwrap_err()
                .contains("after the closing")
        );
        assert!(
            read_all(Format::Json, "[{} {}]")
                .unwrap_err()
                .contains("expected `,`")
        );
        assert!(read_all(Format::Json, "").unwrap_err().contains("empty"));
    }

    /// Issue 19 (found by the `records` fuzz target): an integer too wide for 64 bits is made
    /// a string to keep its digits, and that made `{12345678901234567890: 1}` (a number as a
    /// key) and `00012345678901234567890` (leading zeros) valid. They are errors again; a wide
    /// value keeps its digits.
    #[test]
    fn keeping_a_wide_integer_never_makes_invalid_json_valid() {
        for bad in [
            "[{12345678901234567890: \"x\"}]",
            "[{\"a\": 00012345678901234567890}]",
            "[{\"a\": 12345678901234567890-1}]",
        ] {
            let e = read_all(Format::Json, bad).unwrap_err();
            assert!(e.contains("invalid JSON"), "{bad}: {e}");
            let nd = bad.trim_start_matches('[').trim_end_matches(']');
            assert!(read_all(Format::Ndjson, nd).is_err(), "{nd}");
        }
        let rows = read_all(Format::Json, "[{\"a\": 12345678901234567890}]").unwrap();
        assert_eq!(rows, [pairs(&[("a", "12345678901234567890")])]);
    }

    /// Issue 19 (found by the `records` fuzz target): what follows an empty array was never
    /// read (`[]]]]` loaded as no records), a trailing comma was accepted (`[{},]`), and the
    /// byte order mark's three bytes, or a form feed, were taken as whitespace anywhere before
    /// the `[`. Each is now an error, as in every JSON parser.
    #[test]
    fn json_arrays_are_read_to_the_end_of_the_file_as_json_defines_them() {
        let e = read_all(Format::Json, "[]]]]").unwrap_err();
        assert!(e.contains("content after the closing `]`"), "{e}");
        assert!(read_all(Format::Json, "[] x").is_err());
        assert_eq!(read_all(Format::Json, " [ ] \r\n\t").unwrap().len(), 0);
        let e = read_all(Format::Json, "[{\"a\":1},]").unwrap_err();
        assert!(e.contains("trailing comma"), "{e}");
        assert!(read_all(Format::Json, "[{\"a\":1}, ]").is_err());
        let bad: [&[u8]; 6] = [
            b"\xBB[{}]",
            b"\xBF\xEF[{}]",
            b"\xEF\xBB\xBF\xEF\xBB\xBF[{}]",
            b" \xEF\xBB\xBF[{}]",
            b"\x0c[{}]",
            b"[{}]\x0c",
        ];
        for b in bad {
            assert!(
                read_bytes(Format::Json, b, &[1, 2, 64]).is_err(),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        assert_eq!(read_all(Format::Json, "\u{feff} [{}]").unwrap().len(), 1);
    }

    #[test]
    fn ndjson_lines_are_read_and_blank_lines_skipped() {
        let rows = read_all(Format::Ndjson, "{\"id\":1}\n\n{\"id\":2}\r\n{\"id\":3}").unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2], pairs(&[("id", "3")]));
        assert_eq!(
            read_all(Format::Ndjson, "{\"id\":1}\n\n[1]\n").unwrap_err(),
            "in: line 3: is not a JSON object"
        );
    }

    #[test]
    fn host_errors_are_kept_as_the_cause() {
        for format in [Format::Json, Format::Ndjson] {
            let mut r = Records::new("in", format, Failing).unwrap();
            let e = r.next_record().unwrap_err();
            assert_eq!(e.cause.as_deref(), Some("disk on fire"));
        }
        let e = Records::new("in", Format::Csv, Failing).err().unwrap();
        assert_eq!(e.cause.as_deref(), Some("disk on fire"));
        assert_eq!(e.message, "in: cannot read the header row");
    }

    /// Issue 13, section 3: a JSON number beyond 64 bits keeps its digits.
    #[test]
    fn json_integers_beyond_64_bits_keep_their_digits() {
        let rows = read_all(
            Format::Ndjson,
            "{\"id\": 123456789012345678901234, \"s\": \"9999999999999999999999\", \"n\": -9223372036854775808, \"f\": 1.5e300}\n",
        )
        .unwrap();
        assert_eq!(
            rows[0],
            pairs(&[
                ("id", "123456789012345678901234"),
                ("s", "9999999999999999999999"),
                ("n", "-9223372036854775808"),
                ("f", "1.5e+300")
            ])
        );
        let rows = read_all(Format::Json, "[{\"id\": 18446744073709551615}]").unwrap();
        assert_eq!(rows[0], pairs(&[("id", "18446744073709551615")]));
    }

    #[test]
    fn records_can_be_kept() {
        let mut r = Records::new(
            "in",
            Format::Csv,
            Chunks {
                data: b"a,b\n1,2\n",
                size: 3,
            },
        )
        .unwrap();
        let owned = r.next_record().unwrap().unwrap().to_owned();
        assert!(r.next_record().unwrap().is_none());
        assert_eq!(owned.as_record().get("b").unwrap().to_text(), "2");
        assert_eq!(r.item(), "row 1");
    }
}
