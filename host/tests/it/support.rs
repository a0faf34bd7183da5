//! The test builder: a fresh temporary root, files written into it, the real `idem` binary
//! run against it, and what it left behind compared byte for byte.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The run's clock in every test, so ages are reproducible: 2026-06-01T00:00:00Z.
pub const NOW: i64 = 1_780_272_000;

/// A temporary root and the means to run idem on it.
pub struct Env {
    pub dir: tempfile::TempDir,
}

/// What one run of the binary did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// What a run of the binary, started by a test's own [`Command`], did.
    pub fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Fail with everything the run printed unless it exited with `code`.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code {} (want {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// The JSON report (the run must have used `--format json`).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}):\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// stdout and stderr together, for looking for a message.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn says(&self, needle: &str) -> &Self {
        let all = self.all();
        assert!(
            all.contains(needle),
            "output does not mention {needle:?}:\n{all}"
        );
        self
    }
}

/// One path's state in a snapshot.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Node {
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    File {
        mode: u32,
        mtime: (i64, i64),
        content: Vec<u8>,
    },
    Link(PathBuf),
}

/// Where compiled components are cached for the whole test run, so each test does not pay
/// Cranelift again.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("idem-component-cache")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_idem")
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Write a file (and its parents) under the root.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        self
    }

    pub fn mkdir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.path(rel)).unwrap();
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).symlink_metadata().is_ok()
    }

    pub fn mode(&self, rel: &str) -> u32 {
        std::fs::symlink_metadata(self.path(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    /// Set a file's modification time to `days` before the tests' clock.
    pub fn age(&self, rel: &str, days: i64) -> &Self {
        let t = filetime(NOW - days * 86_400);
        let f = std::fs::File::options()
            .write(true)
            .open(self.path(rel))
            .unwrap();
        f.set_modified(t).unwrap();
        self
    }

    /// The binary, in this root, with the tests' clock and cache.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(self.root())
            .env("IDEM_NOW", NOW.to_string())
            .env("IDEM_CACHE_DIR", cache_dir())
            .env("NO_COLOR", "1")
            .env_remove("IDEM_ROOT")
            .env_remove("IDEM_STATE")
            .env_remove("IDEM_STATE_KEY")
            .env_remove("IDEM_COOPERATE")
            .env_remove("IDEM_SHARD")
            .env_remove("IDEM_FORMAT")
            .env_remove("RUST_LOG");
        c
    }

    /// Run idem with `args`.
    pub fn idem(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().expect("running idem"))
    }

    /// Run idem with `args` and `--format json`, and return the report.
    #[track_caller]
    pub fn json(&self, args: &[&str], code: i32) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let r = self.idem(&a);
        r.code(code);
        r.json()
    }

    /// Every path under the root but idem's state, with content, mode and mtime.
    pub fn snapshot(&self) -> BTreeMap<String, Node> {
        let mut out = BTreeMap::new();
        walk(self.root(), self.root(), &mut out);
        out
    }

    /// idem's own state directory: file names and contents (a dry run must not touch it).
    pub fn state_files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(self.path(".idem")) {
            for e in dir {
                let e = e.unwrap();
                out.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
        out
    }

    /// Rows of a SQLite table, ordered, as text.
    pub fn rows(&self, db: &str, sql: &str) -> Vec<String> {
        let c = rusqlite::Connection::open_with_flags(
            self.path(db),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap_or_else(|e| panic!("opening {db}: {e}"));
        let mut s = c.prepare(sql).unwrap();
        let n = s.column_count();
        s.query_map([], |r| {
            Ok((0..n)
                .map(|i| match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    rusqlite::types::ValueRef::Blob(b) => format!("{b:?}"),
                })
                .collect::<Vec<_>>()
                .join("|"))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}

fn filetime(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == ".idem" {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mtime = (m.mtime(), m.mtime_nsec());
        let mode = m.permissions().mode() & 0o7777;
        if m.file_type().is_symlink() {
            out.insert(rel, Node::Link(std::fs::read_link(&p).unwrap()));
        } else if m.is_dir() {
            out.insert(rel, Node::Dir { mode, mtime });
            walk(root, &p, out);
        } else {
            out.insert(
                rel,
                Node::File {
                    mode,
                    mtime,
                    content: std::fs::read(&p).unwrap(),
                },
            );
        }
    }
}

/// Assert two snapshots are equal, naming the first difference.
#[track_caller]
pub fn assert_same_tree(
    before: &BTreeMap<String, Node>,
    after: &BTreeMap<String, Node>,
    what: &str,
) {
    for (k, v) in before {
        match after.get(k) {
            None => panic!("{what}: {k} disappeared"),
            Some(w) if w != v => panic!("{what}: {k} changed:\n before {v:?}\n after  {w:?}"),
            _ => {}
        }
    }
    for k in after.keys() {
        assert!(before.contains_key(k), "{what}: {k} appeared");
    }
}

/// The change list of a JSON report: (step, kind, path, rows), in order.
pub fn changes(report: &Value) -> Vec<(u64, String, String, Option<u64>)> {
    let mut out = Vec::new();
    for s in report["steps"].as_array().expect("steps") {
        for c in s["changes"].as_array().expect("changes") {
            out.push((
                s["index"].as_u64().unwrap(),
                c["kind"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
                c["rows"].as_u64(),
            ));
        }
    }
    out
}

/// Step outcomes and counters of a JSON report, in order.
pub fn outcomes(report: &Value) -> Vec<(String, Value)> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["outcome"].as_str().unwrap().to_string(),
                s["counters"].clone(),
            )
        })
        .collect()
}

/// The headline guarantee, for one plan on one tree: a dry run changes nothing and predicts
/// exactly what apply then does (step by step, change by change, count by count); a second
/// apply changes nothing; check agrees. Returns the apply report.
#[track_caller]
pub fn assert_converges(env: &Env, plan_args: &[&str]) -> Value {
    let before = env.snapshot();
    let state_before = env.state_files();
    let mut args = vec!["plan"];
    args.extend(plan_args);
    let planned = env.json(&args, 0);
    assert_same_tree(&before, &env.snapshot(), "the dry run");
    assert!(
        state_before == env.state_files(),
        "the dry run changed idem's state directory"
    );
    assert_eq!(planned["dry_run"], true);

    args[0] = "apply";
    let applied = env.json(&args, 0);
    assert_eq!(
        changes(&planned),
        changes(&applied),
        "plan predicted other changes than apply made"
    );
    assert_eq!(
        outcomes(&planned),
        outcomes(&applied),
        "plan predicted other outcomes than apply had"
    );

    let converged = env.snapshot();
    let again = env.json(&args, 0);
    assert_eq!(
        changes(&again),
        vec![],
        "the second apply changed something"
    );
    for (o, _) in outcomes(&again) {
        assert_eq!(o, "unchanged", "the second apply reported {o}");
    }
    assert_same_tree(&converged, &env.snapshot(), "the second apply");

    args[0] = "check";
    let checked = env.json(&args, 0);
    assert_eq!(checked["changed"], false);
    applied
}
