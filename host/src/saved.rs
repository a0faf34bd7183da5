//! Saved plans: `idem plan --out FILE` writes the dry run's change list with fingerprints of
//! everything of the world it read, and `idem apply FILE` applies exactly that plan or
//! refuses, before any step, naming what changed.
//!
//! What "the world" is: the plan file (and the files it includes), the values of its
//! variables and of the environment variables it names, every path a step named (sources,
//! targets, directories listed: a target edited by hand after the plan makes the plan untrue
//! as surely as a changed source), and the rows and schema of every SQLite database it
//! opened. PostgreSQL databases and a plugin's HTTP reads are not fingerprinted: `apply
//! FILE` makes the dry run again under the run lock and refuses unless its changes equal the
//! saved ones, which covers them exactly (and the clock a `cleanup` reads).
//!
//! Nothing secret is written. Every fingerprint is an HMAC-SHA256 keyed by a random salt
//! stored in the file, combined with `IDEM_PLAN_KEY` when that is set: with the key kept as a
//! CI secret the file tells nothing of any content; without it a fingerprint can confirm a
//! guessed content, as a salted hash can. Sensitive variables' values are only fingerprinted;
//! other variables' values are written, so a reviewer sees what the plan was made with.
//!
//! The format is JSON, `{"format": "idem-saved-plan", "version": 1, ...}`, documented in
//! docs/plan.md; a reader refuses a version it does not know.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::Report;
use crate::run::{Observed, RunConfig, SavedCheck};

/// The `format` of a saved plan.
pub const FORMAT: &str = "idem-saved-plan";
/// The version this idem writes and reads.
pub const VERSION: u32 = 1;
/// The environment variable that keys the fingerprints.
pub const KEY_VAR: &str = "IDEM_PLAN_KEY";

/// A saved plan, as written.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: String,
    pub version: u32,
    /// The idem that wrote it.
    pub idem: String,
    /// The run's clock when the plan was made (UTC).
    pub created: String,
    pub key: Key,
    pub plan: PlanFile,
    /// `--only` and `--skip` as the plan was made; `apply FILE` takes them from here.
    pub only: Vec<String>,
    pub skip: Vec<String>,
    /// Plan variables given with `--var` or `--var-file`.
    pub vars: Vec<Value>,
    /// Environment variables the plan names (`${env.NAME}`), set or not.
    pub env: Vec<Value>,
    /// Every path the plan's steps named.
    pub files: Vec<FilePrint>,
    /// Every SQLite database the plan opened.
    pub databases: Vec<DatabasePrint>,
    /// PostgreSQL databases the plan opened (shown without a password); checked by the dry
    /// run `apply FILE` makes again.
    pub postgres: Vec<String>,
    /// What apply will change, in order.
    pub changes: Vec<ChangePrint>,
}

/// How the fingerprints are keyed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Key {
    /// Random, per saved plan (hex).
    pub salt: String,
    /// Whether `IDEM_PLAN_KEY` was part of the key: then `apply FILE` needs it too.
    pub plan_key: bool,
}

/// The plan file.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlanFile {
    /// Under the root when it is there, else absolute.
    pub path: String,
    pub fingerprint: String,
    /// Files it includes, under the root.
    #[serde(default)]
    pub includes: Vec<FilePrint>,
}

/// A variable's value: in clear when it is not sensitive, always as a fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Value {
    pub name: String,
    /// `None` for a sensitive value (and for an environment variable that is not set).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    #[serde(default)]
    pub sensitive: bool,
    /// `None`: not set.
    pub fingerprint: Option<String>,
}

/// What was at a path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FilePrint {
    pub path: String,
    /// `missing`, `file`, `dir`, `link` or `other`.
    pub kind: String,
    /// Permission bits.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mode: Option<u32>,
    /// A file's content (a link's: of what it leads to, when that is a file).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content: Option<String>,
    /// A link's target.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link: Option<String>,
    /// A listed directory's entries, sorted (names and kinds only: a fresh checkout gives
    /// every file a new time).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub entries: Option<Vec<String>>,
}

/// A SQLite database: its schema and each table's rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabasePrint {
    pub path: String,
    /// `None`: the database did not exist.
    pub schema: Option<String>,
    /// Table name and the fingerprint of its rows.
    pub tables: BTreeMap<String, String>,
}

/// One change the apply will make.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangePrint {
    pub step: usize,
    pub name: String,
    pub kind: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rows: Option<u64>,
    /// Of the file's new content.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content: Option<String>,
    /// An HTTP request: its method and shown URL.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request: Option<String>,
}

impl ChangePrint {
    fn shown(&self) -> String {
        let rows = self
            .rows
            .map(|r| format!(" ({r} rows)"))
            .unwrap_or_default();
        let content = self
            .content
            .as_ref()
            .map(|c| format!(" content {}", &c[..12.min(c.len())]))
            .unwrap_or_default();
        let request = self
            .request
            .as_ref()
            .map(|r| format!(" {r}"))
            .unwrap_or_default();
        format!(
            "step {} ({}): {} {}{rows}{content}{request}",
            self.step, self.name, self.kind, self.path
        )
    }
}

/// HMAC-SHA256 (RFC 2104) of `data` under `key`, as hex.
fn hmac(key: &[u8], data: &[u8]) -> String {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key of the fingerprints: the salt, and `IDEM_PLAN_KEY` when `plan_key`.
fn key_bytes(key: &Key) -> Result<Vec<u8>> {
    let mut k = key.salt.as_bytes().to_vec();
    if key.plan_key {
        let secret = std::env::var(KEY_VAR).ok().filter(|s| !s.is_empty());
        let Some(secret) = secret else {
            bail!(
                "the saved plan was made with {KEY_VAR} set: set it to the same value to apply it"
            );
        };
        k.push(0);
        k.extend_from_slice(secret.as_bytes());
    }
    Ok(k)
}

fn random_salt() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom for the saved plan's salt")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the fingerprints are computed with, and what they leave out.
struct Printer<'a> {
    key: Vec<u8>,
    root: &'a Path,
    /// The saved plan file itself, under the root (it is written after the plan was made).
    ignore: Option<String>,
}

impl Printer<'_> {
    fn fp(&self, data: &[u8]) -> String {
        hmac(&self.key, data)
    }

    fn file(&self, path: &str, listed: bool) -> FilePrint {
        use std::os::unix::fs::PermissionsExt;
        let full = self.root.join(path);
        let mut print = FilePrint {
            path: path.to_owned(),
            kind: "missing".into(),
            mode: None,
            content: None,
            link: None,
            entries: None,
        };
        let Ok(meta) = std::fs::symlink_metadata(&full) else {
            return print;
        };
        print.mode = Some(meta.permissions().mode() & 0o7777);
        let content = |p: &Path| std::fs::read(p).ok().map(|b| self.fp(&b));
        if meta.file_type().is_symlink() {
            print.kind = "link".into();
            print.mode = None;
            print.link = std::fs::read_link(&full)
                .ok()
                .map(|t| t.to_string_lossy().into_owned());
            if std::fs::metadata(&full).is_ok_and(|m| m.is_file()) {
                print.content = content(&full);
            }
        } else if meta.is_file() {
            print.kind = "file".into();
            print.content = content(&full);
        } else if meta.is_dir() {
            print.kind = "dir".into();
            if listed {
                print.entries = Some(self.entries(path, &full));
            }
        } else {
            print.kind = "other".into();
        }
        print
    }

    /// A directory's entries as the file capability lists them: without idem's state
    /// directory at the root, and without the saved plan file itself.
    fn entries(&self, path: &str, full: &Path) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(full) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if path.is_empty() || path == "." {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                };
                let state = (path.is_empty() || path == ".") && name == crate::policy::STATE_DIR;
                if state || self.ignore.as_deref() == Some(rel.as_str()) {
                    return None;
                }
                let kind = match e.file_type().ok()? {
                    t if t.is_symlink() => "link",
                    t if t.is_dir() => "dir",
                    t if t.is_file() => "file",
                    _ => "other",
                };
                Some(format!("{name} ({kind})"))
            })
            .collect();
        names.sort();
        names
    }

    /// A SQLite database's schema and each table's rows, read-only.
    fn database(&self, path: &str) -> Result<DatabasePrint> {
        use rusqlite::types::ValueRef;
        let full = self.root.join(path);
        let mut print = DatabasePrint {
            path: path.to_owned(),
            schema: None,
            tables: BTreeMap::new(),
        };
        if !full.exists() {
            return Ok(print);
        }
        let conn = rusqlite::Connection::open_with_flags(
            &full,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening database {path} to fingerprint it"))?;
        let read = || -> rusqlite::Result<(String, Vec<(String, String)>)> {
            let mut schema = Vec::new();
            let mut tables = Vec::new();
            let mut stmt = conn.prepare(
                "SELECT type, name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (kind, name, sql) = row?;
                schema.extend_from_slice(format!("{kind}\0{name}\0{sql}\n").as_bytes());
                if kind == "table" && !name.starts_with("sqlite_") {
                    tables.push(name);
                }
            }
            let mut prints = Vec::new();
            for table in tables {
                let quoted = format!("\"{}\"", table.replace('"', "\"\""));
                let mut stmt = conn.prepare(&format!("SELECT * FROM {quoted}"))?;
                let n = stmt.column_count();
                let mut rows = stmt.query([])?;
                let mut bytes = Vec::new();
                while let Some(row) = rows.next()? {
                    for i in 0..n {
                        match row.get_ref(i)? {
                            ValueRef::Null => bytes.push(0),
                            ValueRef::Integer(v) => {
                                bytes.push(1);
                                bytes.extend_from_slice(&v.to_le_bytes());
                            }
                            ValueRef::Real(v) => {
                                bytes.push(2);
                                bytes.extend_from_slice(&v.to_le_bytes());
                            }
                            ValueRef::Text(t) | ValueRef::Blob(t) => {
                                bytes.push(3);
                                bytes.extend_from_slice(&(t.len() as u64).to_le_bytes());
                                bytes.extend_from_slice(t);
                            }
                        }
                    }
                    bytes.push(b'\n');
                }
                prints.push((table, self.fp(&bytes)));
            }
            Ok((self.fp(&schema), prints))
        };
        let (schema, tables) =
            read().with_context(|| format!("reading database {path} to fingerprint it"))?;
        print.schema = Some(schema);
        print.tables = tables.into_iter().collect();
        Ok(print)
    }

    fn value(&self, name: &str, value: Option<&str>) -> Value {
        let sensitive = value.is_some_and(|v| crate::redact::text(v) != v);
        Value {
            name: name.to_owned(),
            value: value.filter(|_| !sensitive).map(str::to_owned),
            sensitive,
            fingerprint: value.map(|v| self.fp(v.as_bytes())),
        }
    }

    /// The plan variables given (a later one wins) and the environment variables the plan
    /// names.
    fn values(&self, cfg: &RunConfig) -> (Vec<Value>, Vec<Value>) {
        let given: BTreeMap<&str, &str> = cfg
            .vars
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let vars = given.iter().map(|(n, v)| self.value(n, Some(v))).collect();
        // The environment's values are never written, sensitive or not: they are where CI
        // keeps its secrets.
        let env = crate::run::env_names(&cfg.plan_source)
            .into_iter()
            .map(|n| {
                let mut v = self.value(&n, std::env::var(&n).ok().as_deref());
                v.value = None;
                v
            })
            .collect();
        (vars, env)
    }

    fn files(&self, observed: &[(String, bool)], databases: &BTreeSet<&str>) -> Vec<FilePrint> {
        observed
            .iter()
            .filter(|(p, _)| {
                self.ignore.as_deref() != Some(p.as_str()) && !databases.contains(p.as_str())
            })
            .map(|(p, listed)| self.file(p, *listed))
            .collect()
    }
}

/// The saved plan file's path under the root, when it is there.
fn under_root(root: &Path, file: &Path) -> Option<String> {
    let abs = std::path::absolute(file).ok()?;
    let parent = abs.parent()?.canonicalize().ok()?;
    let full = parent.join(abs.file_name()?);
    let rel = full.strip_prefix(root).ok()?;
    Some(rel.to_string_lossy().into_owned())
}

/// How the run names the plan file, for the saved plan.
fn plan_path(cfg: &RunConfig) -> String {
    match &cfg.plan_file {
        Some(p) => match p.strip_prefix(&cfg.root) {
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => p.to_string_lossy().into_owned(),
        },
        None => cfg.plan_name.clone(),
    }
}

fn change_prints(printer: &Printer<'_>, report: &Report) -> Vec<ChangePrint> {
    report
        .steps
        .iter()
        .flat_map(|s| {
            s.changes.iter().map(|c| ChangePrint {
                step: s.index,
                name: s.name.clone(),
                kind: c.kind.as_str().to_owned(),
                path: c.path.clone(),
                rows: c.rows,
                content: c.after.as_ref().map(|h| printer.fp(h.as_bytes())),
                request: c.http.as_ref().map(|h| format!("{} {}", h.method, h.url)),
            })
        })
        .collect()
}

/// The saved plan of the dry run `report` of `cfg`, which read `observed`; `out` is where
/// it will be written.
pub fn make(
    cfg: &RunConfig,
    report: &Report,
    observed: &Observed,
    out: &Path,
) -> Result<SavedPlan> {
    let key = Key {
        salt: random_salt()?,
        plan_key: std::env::var(KEY_VAR).is_ok_and(|k| !k.is_empty()),
    };
    let printer = Printer {
        key: key_bytes(&key)?,
        root: &cfg.root,
        ignore: under_root(&cfg.root, out),
    };
    let dbs: BTreeSet<&str> = observed.databases.iter().map(String::as_str).collect();
    let databases = observed
        .databases
        .iter()
        .map(|d| printer.database(d))
        .collect::<Result<Vec<_>>>()?;
    let (vars, env) = printer.values(cfg);
    let (plan_files, files): (Vec<FilePrint>, Vec<FilePrint>) = printer
        .files(&observed.paths, &dbs)
        .into_iter()
        .partition(|f| observed.includes.contains(&f.path));
    Ok(SavedPlan {
        format: FORMAT.into(),
        version: VERSION,
        idem: env!("CARGO_PKG_VERSION").into(),
        created: crate::state::format_time(cfg.now.seconds, 0),
        plan: PlanFile {
            path: plan_path(cfg),
            fingerprint: printer.fp(cfg.plan_source.as_bytes()),
            includes: plan_files,
        },
        key,
        only: cfg.only.clone(),
        skip: cfg.skip.clone(),
        vars,
        env,
        files,
        databases,
        postgres: observed.postgres.clone(),
        changes: change_prints(&printer, report),
    })
}

/// Write `saved` to `out` whole or not at all.
pub fn write(saved: &SavedPlan, out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("writing the saved plan {}", out.display()))?;
    serde_json::to_writer_pretty(&mut tmp, saved)?;
    writeln!(tmp)?;
    tmp.persist(out)
        .with_context(|| format!("writing the saved plan {}", out.display()))?;
    Ok(())
}

/// The saved plan at `path`, or `None` when the file is not one (a plan file, say).
pub fn read(path: &Path) -> Result<Option<SavedPlan>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    if !text.trim_start().starts_with('{') {
        return Ok(None);
    }
    let Ok(head) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Ok(None);
    }
    let version = head.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != u64::from(VERSION) {
        bail!(
            "saved plan {} has format version {version}; this idem reads version {VERSION}: apply it with the idem that made it, or make the plan again",
            path.display()
        );
    }
    let saved: SavedPlan = serde_json::from_str(&text)
        .with_context(|| format!("saved plan {} is damaged", path.display()))?;
    Ok(Some(saved))
}

/// The run `apply FILE` makes: the plan file the saved plan names (read again: it must be
/// the one the plan was made from), `--only`/`--skip` as saved, and the variables given at
/// plan time that were not sensitive, before those given now.
pub fn prepare(saved: &SavedPlan, cfg: &mut RunConfig) -> Result<()> {
    let path = Path::new(&saved.plan.path);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cfg.root.join(path)
    };
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading the plan {} that the saved plan was made from",
            path.display()
        )
    })?;
    cfg.plan_source = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("plan {} is not UTF-8 text", path.display()))?;
    cfg.plan_name = saved.plan.path.clone();
    cfg.plan_file = path.canonicalize().ok();
    cfg.only = saved.only.clone();
    cfg.skip = saved.skip.clone();
    let given = std::mem::take(&mut cfg.vars);
    cfg.vars = saved
        .vars
        .iter()
        .filter_map(|v| Some((v.name.clone(), v.value.clone()?)))
        .collect();
    cfg.vars.extend(given);
    Ok(())
}

/// A saved plan checked against the world as `apply FILE` finds it.
pub struct Checker<'a> {
    pub saved: &'a SavedPlan,
    pub cfg: &'a RunConfig,
    key: Vec<u8>,
    ignore: Option<String>,
}

impl<'a> Checker<'a> {
    /// `file`: the saved plan's path, left out of the world as at plan time.
    pub fn new(saved: &'a SavedPlan, cfg: &'a RunConfig, file: &Path) -> Result<Self> {
        Ok(Checker {
            saved,
            cfg,
            key: key_bytes(&saved.key)?,
            ignore: under_root(&cfg.root, file),
        })
    }

    fn printer(&self) -> Printer<'_> {
        Printer {
            key: self.key.clone(),
            root: &self.cfg.root,
            ignore: self.ignore.clone(),
        }
    }
}

/// What changed among `then` and `now`'s values; `show`: values that were not sensitive may
/// be shown (not when the plan itself changed, which may have made one sensitive).
fn value_changes(what: &str, then: &[Value], now: &[Value], show: bool, out: &mut Vec<String>) {
    let now: BTreeMap<&str, &Value> = now.iter().map(|v| (v.name.as_str(), v)).collect();
    let then_names: BTreeSet<&str> = then.iter().map(|v| v.name.as_str()).collect();
    for t in then {
        match now.get(t.name.as_str()) {
            None if t.sensitive => out.push(format!(
                "{what} `{}` is not given: it is sensitive, so the saved plan does not hold it; give it again as when the plan was made",
                t.name
            )),
            None => out.push(format!("{what} `{}` is no longer given", t.name)),
            Some(n) if n.fingerprint == t.fingerprint => {}
            Some(n) => out.push(match (&t.fingerprint, &t.value, &n.value) {
                (None, _, _) => format!("{what} `{}` was not set when the plan was made", t.name),
                (_, _, _) if n.fingerprint.is_none() => {
                    format!("{what} `{}` is no longer set", t.name)
                }
                (_, Some(a), Some(b)) if show && !t.sensitive => {
                    format!("{what} `{}` changed: it was {a:?}, now {b:?}", t.name)
                }
                _ if t.sensitive => format!("{what} `{}` changed (sensitive)", t.name),
                _ => format!("{what} `{}` changed", t.name),
            }),
        }
    }
    for n in now.keys().filter(|n| !then_names.contains(*n)) {
        out.push(format!("{what} `{n}` was not given when the plan was made"));
    }
}

fn file_change(then: &FilePrint, now: &FilePrint) -> Option<String> {
    if then == now {
        return None;
    }
    let p = &then.path;
    Some(match (then.kind.as_str(), now.kind.as_str()) {
        ("missing", _) => format!("`{p}` was created since the plan (it did not exist)"),
        (_, "missing") => format!("`{p}` was removed since the plan"),
        (a, b) if a != b => format!("`{p}` was a {a}, now a {b}"),
        _ if then.content != now.content => format!("`{p}` changed (its content)"),
        _ if then.link != now.link => format!("`{p}` now links elsewhere"),
        _ if then.mode != now.mode => format!(
            "`{p}` changed mode: {:o} then, {:o} now",
            then.mode.unwrap_or(0),
            now.mode.unwrap_or(0)
        ),
        _ => {
            let a: BTreeSet<&String> = then.entries.iter().flatten().collect();
            let b: BTreeSet<&String> = now.entries.iter().flatten().collect();
            let added: Vec<&str> = b.difference(&a).map(|s| s.as_str()).collect();
            let gone: Vec<&str> = a.difference(&b).map(|s| s.as_str()).collect();
            format!(
                "directory `{p}` changed:{}{}",
                if added.is_empty() {
                    String::new()
                } else {
                    format!(" added {}", added.join(", "))
                },
                if gone.is_empty() {
                    String::new()
                } else {
                    format!(" removed {}", gone.join(", "))
                }
            )
        }
    })
}

impl SavedCheck for Checker<'_> {
    fn world_changed(&self) -> Vec<String> {
        let printer = self.printer();
        let mut out = Vec::new();
        let plan_same = printer.fp(self.cfg.plan_source.as_bytes()) == self.saved.plan.fingerprint;
        if !plan_same {
            out.push(format!(
                "the plan file `{}` changed since the plan was made",
                self.saved.plan.path
            ));
        }
        for f in &self.saved.plan.includes {
            let now = printer.file(&f.path, f.entries.is_some());
            if now != *f {
                out.push(format!("the included plan file `{}` changed", f.path));
            }
        }
        let (vars, env) = printer.values(self.cfg);
        value_changes("var", &self.saved.vars, &vars, plan_same, &mut out);
        value_changes(
            "environment variable",
            &self.saved.env,
            &env,
            false,
            &mut out,
        );
        for f in &self.saved.files {
            let now = printer.file(&f.path, f.entries.is_some());
            out.extend(file_change(f, &now));
        }
        for d in &self.saved.databases {
            match printer.database(&d.path) {
                Err(e) => out.push(format!("{e:#}")),
                Ok(now) if now == *d => {}
                Ok(now) => {
                    let p = &d.path;
                    if d.schema.is_none() {
                        out.push(format!("database `{p}` was created since the plan"));
                    } else if now.schema.is_none() {
                        out.push(format!("database `{p}` was removed since the plan"));
                    }
                    for (t, fp) in &d.tables {
                        match now.tables.get(t) {
                            None if now.schema.is_some() => {
                                out.push(format!("table `{t}` of `{p}` was dropped"))
                            }
                            Some(n) if n != fp => {
                                out.push(format!("table `{t}` of `{p}` changed (its rows)"))
                            }
                            _ => {}
                        }
                    }
                    for t in now.tables.keys().filter(|t| !d.tables.contains_key(*t)) {
                        out.push(format!("table `{t}` of `{p}` was created since the plan"));
                    }
                    if d.tables == now.tables && d.schema.is_some() && now.schema.is_some() {
                        out.push(format!("the schema of `{p}` changed"));
                    }
                }
            }
        }
        out
    }

    fn changes_differ(&self, now: &Report) -> Vec<String> {
        let now = change_prints(&self.printer(), now);
        if now == self.saved.changes {
            return Vec::new();
        }
        let mut out = Vec::new();
        let then: BTreeSet<&ChangePrint> = self.saved.changes.iter().collect();
        let now_set: BTreeSet<&ChangePrint> = now.iter().collect();
        for c in then.difference(&now_set) {
            out.push(format!("saved, but not made now: {}", c.shown()));
        }
        for c in now_set.difference(&then) {
            out.push(format!("made now, but not saved: {}", c.shown()));
        }
        if out.is_empty() {
            out.push("the same changes, in another order".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        assert_eq!(
            hmac(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
