//! Kill -9 at many moments (issue 4): after any interruption, running again finishes the job
//! with the same result as one uninterrupted run, and nothing is left half-done.
//!
//! A plan big enough to take a while (an `each` over a few thousand records, an `upsert` of
//! tens of thousands of rows, and `dir`, `file`, `remove` and `cleanup` steps) is applied once
//! without interruption to a reference root, timing the run. Then, for each kill point, a fresh
//! root starts `idem apply` as a child process, which is sent SIGKILL after a delay drawn from
//! a seed and spread across the reference run's duration (some points also kill the first
//! re-run); a last run completes the job, and the root must equal the reference.
//!
//! `IDEM_CRASH_POINTS` raises the number of points (default 50), `IDEM_CRASH_SEED` replays
//! another seed, `IDEM_CRASH_ONLY` runs one point. A failure prints all three.
//!
//! Roots live on `/dev/shm` when it is there: a SIGKILL loses nothing the kernel already has,
//! so fsync only costs time here (a file per record with its fsyncs is ~10 ms on a CI disk,
//! ~0.1 ms on tmpfs). What fsync protects against, a power loss, is not something a test can
//! cause; docs/guarantees.md says what it can lose.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::*;

const DEFAULT_POINTS: usize = 50;
const DEFAULT_SEED: u64 = 0x1de4_0004_c4a5_4001;
/// Records of the `each` step: a directory and a file each.
const USERS: u64 = 5000;
/// Rows of the `upsert` step.
const EVENTS: u64 = 40_000;
/// Teams the users' homes are grouped in.
const TEAMS: u64 = 13;

const PLAN: &str = r#"steps:
  - dir: out
    mode: "0750"
  - file: out/settings.conf
    content: "workers = 4\nqueue = events\n"
    mode: "0640"
  - remove: stale
    recursive: true
  - cleanup: logs
    older-than: 7d
    include: ["*.log"]
    remove-empty-dirs: true
  - upsert: data/app.db
    table: events
    key: id
    from: data/events.csv
  - each: data/users.csv
    key: id
    steps:
      - dir: "homes/{team}/{id}"
      - file: "homes/{team}/{id}/profile.txt"
        content: "id={id}\nname={name}\nteam={team}\n"
        mode: "0600"
      - remove: "homes/{team}/{id}/.provisioning"
  - upsert: data/app.db
    table: users
    key: id
    from: data/users.csv
  - file: out/done.txt
    content: "done\n"
"#;

/// The index (from 0) of the `each` step in [`PLAN`].
const EACH_STEP: usize = 5;

/// A small deterministic generator (splitmix64): the same seed gives the same points
/// everywhere, with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")))
}

fn team(id: u64) -> u64 {
    id * 7 % TEAMS
}

fn users_csv() -> &'static str {
    static CSV: OnceLock<String> = OnceLock::new();
    CSV.get_or_init(|| {
        let mut s = String::from("id,name,team\n");
        for id in 0..USERS {
            s.push_str(&format!(
                "{id},user-{:x},t{}\n",
                id * 2_654_435_761 % 1_000_003,
                team(id)
            ));
        }
        s
    })
}

fn events_csv() -> &'static str {
    static CSV: OnceLock<String> = OnceLock::new();
    CSV.get_or_init(|| {
        let mut s = String::from("id,kind,payload,amount\n");
        for id in 0..EVENTS {
            s.push_str(&format!(
                "{id},k{},p{:08x},{}\n",
                id % 7,
                id * 40_503 % 65_521,
                id % 1000
            ));
        }
        s
    })
}

/// A fresh root on tmpfs when there is one (see the module comment).
pub fn fast_env() -> Env {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("idem-crash-")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    Env {
        dir: dir.expect("a temporary directory"),
    }
}

/// The starting tree, the same in every root: the plan, its inputs, a stale tree to remove,
/// old and new logs, and some users' homes half-provisioned by an earlier tool.
fn fixture() -> Env {
    let t = fast_env();
    t.write("idem.yml", PLAN);
    t.write("data/users.csv", users_csv());
    t.write("data/events.csv", events_csv());
    for i in 0..60 {
        t.write(
            &format!("stale/cache/{}/{i}.bin", i % 6),
            format!("stale {i}\n"),
        );
    }
    for day in 0..30 {
        let name = format!("logs/app-{day:02}.log");
        t.write(&name, format!("log of day {day}\n"));
        t.age(&name, day);
    }
    t.write("logs/archive/2025/old.log", "old\n")
        .age("logs/archive/2025/old.log", 400);
    t.write("logs/keep.txt", "not a log\n")
        .age("logs/keep.txt", 400);
    for id in (0..USERS).step_by(97) {
        t.write(
            &format!("homes/t{}/{id}/.provisioning", team(id)),
            "in progress\n",
        );
    }
    t
}

/// One path as the comparison sees it: kind, mode and content; no times. Database files are
/// compared by their rows instead of their bytes (page layout may differ).
type Shape = BTreeMap<String, (char, u32, Vec<u8>)>;

fn shape(t: &Env) -> Shape {
    t.snapshot()
        .into_iter()
        .map(|(path, node)| {
            let v = match node {
                Node::Dir { mode, .. } => ('d', mode, Vec::new()),
                Node::File { mode, .. } if path.ends_with(".db") => ('f', mode, Vec::new()),
                Node::File { mode, content, .. } => ('f', mode, content),
                Node::Link(target) => ('l', 0, target.into_os_string().into_encoded_bytes()),
            };
            (path, v)
        })
        .collect()
}

/// Every table of a database, schema and rows, sorted: what "the same database" means here.
fn dump(t: &Env, db: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in t.rows(
        db,
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
    ) {
        out.extend(t.rows(
            db,
            &format!("SELECT sql FROM sqlite_schema WHERE name = '{table}'"),
        ));
        let n = t.rows(
            db,
            &format!("SELECT count(*) FROM pragma_table_info('{table}')"),
        )[0]
        .clone();
        let order: Vec<String> = (1..=n.parse::<usize>().unwrap())
            .map(|i| i.to_string())
            .collect();
        let rows = t.rows(
            db,
            &format!("SELECT * FROM \"{table}\" ORDER BY {}", order.join(", ")),
        );
        out.push(format!("{table}: {} rows", rows.len()));
        out.extend(rows.into_iter().map(|r| format!("{table}: {r}")));
    }
    out
}

/// Paths under the root (idem's state included) whose name marks a temporary or a journal.
fn leftovers(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if name.contains(".idem-tmp-") || name.ends_with(".db-journal") {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The keys that the state store says are done, read from a copy (what SQLite would replay of
/// the killed run's WAL), by scope.
fn checkpointed(t: &Env) -> BTreeMap<String, BTreeSet<String>> {
    let copy = tempfile::tempdir().unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let state = t.path(".idem/state.db");
    if !state.exists() {
        return out;
    }
    for suffix in ["", "-wal"] {
        let from = t.path(&format!(".idem/state.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("state.db{suffix}"))).unwrap();
        }
    }
    let c = rusqlite::Connection::open(copy.path().join("state.db")).unwrap();
    let exists: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'checkpoints'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if exists == 0 {
        return out;
    }
    let mut s = c.prepare("SELECT scope, key FROM checkpoints").unwrap();
    let rows = s
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    for row in rows {
        let (scope, key) = row.unwrap();
        out.entry(scope).or_default().insert(key);
    }
    out
}

/// A checkpoint must not lie: every record it calls done has all its effects on disk.
#[track_caller]
fn assert_checkpointed_effects_present(t: &Env, done: &BTreeMap<String, BTreeSet<String>>) {
    for (scope, keys) in done {
        assert!(
            scope.starts_with("std/each:"),
            "unexpected checkpoint scope {scope}"
        );
        for key in keys {
            let id: u64 = key
                .parse()
                .unwrap_or_else(|_| panic!("checkpoint key {key:?} is not a user id"));
            let home = format!("homes/t{}/{id}", team(id));
            let profile = format!("{home}/profile.txt");
            assert!(
                t.exists(&profile),
                "record id={id} is checkpointed but {profile} is missing"
            );
            let line = users_csv().lines().nth(id as usize + 1).unwrap();
            let name = line.split(',').nth(1).unwrap();
            assert_eq!(
                t.read(&profile),
                format!("id={id}\nname={name}\nteam=t{}\n", team(id))
            );
            assert_eq!(t.mode(&profile), 0o600, "{profile}");
            assert!(
                !t.exists(&format!("{home}/.provisioning")),
                "record id={id} is checkpointed but its marker is still there"
            );
        }
    }
}

/// Start `idem apply`, SIGKILL it after `delay`; whether the kill found it still running.
fn apply_and_kill(t: &Env, delay: Duration) -> bool {
    let mut child = t
        .cmd()
        .args(["apply", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting idem");
    std::thread::sleep(delay);
    // On Unix, kill is SIGKILL; it is harmless on a process that has already exited, since
    // the process is not reaped until `wait`.
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    status.signal() == Some(libc::SIGKILL)
}

/// Prints how to replay the point when a check fails inside it.
struct Replay(String);

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n*** crash point failed: {}\n", self.0);
        }
    }
}

/// What the points did, for the summary line.
#[derive(Default)]
struct Tally {
    killed: usize,
    resumed: usize,
    temporaries_left: usize,
    journals_left: usize,
    double: usize,
}

#[test]
fn sigkill_at_any_moment_then_rerun_equals_one_uninterrupted_run() {
    let points = env_number("IDEM_CRASH_POINTS").map_or(DEFAULT_POINTS, |n| n as usize);
    let seed = env_number("IDEM_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let only = env_number("IDEM_CRASH_ONLY").map(|n| n as usize);
    let started = Instant::now();

    // Warm the compiled-component cache, so no point spends its time in Cranelift.
    let warm = fast_env();
    warm.write("idem.yml", "steps:\n  - dir: warm\n");
    warm.idem(&["apply"]).code(0);

    let reference = fixture();
    let t0 = Instant::now();
    let report = reference.json(&["apply"], 0);
    let duration = t0.elapsed();
    assert_eq!(report["steps"][EACH_STEP]["counters"]["processed"], USERS);
    let want_shape = shape(&reference);
    let want_rows = dump(&reference, "data/app.db");
    assert!(leftovers(reference.root()).is_empty());
    let steps: Vec<String> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {:.0} ms",
                s["op"].as_str().unwrap(),
                s["duration_ms"].as_f64().unwrap()
            )
        })
        .collect();
    eprintln!(
        "crash harness: reference apply took {:.0} ms ({}); {points} points, seed {seed:#x}",
        duration.as_secs_f64() * 1e3,
        steps.join(", ")
    );

    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for point in 0..points {
        // Drawn for every point, so that IDEM_CRASH_ONLY replays the same delays.
        let first = duration.mul_f64(rng.unit() * 1.05);
        let second = (rng.unit() < 0.2).then(|| duration.mul_f64(rng.unit()));
        if only.is_some_and(|o| o != point) {
            continue;
        }
        let _replay = Replay(format!(
            "point {point} of {points}, seed {seed:#x}: SIGKILL after {} ms{} (reference run {} ms). \
             Replay: IDEM_CRASH_SEED={seed:#x} IDEM_CRASH_POINTS={points} IDEM_CRASH_ONLY={point} \
             cargo test -p idem --test it crash::",
            first.as_millis(),
            second
                .map(|d| format!(", then the re-run after {} ms", d.as_millis()))
                .unwrap_or_default(),
            duration.as_millis()
        ));

        let t = fixture();
        let mut killed = apply_and_kill(&t, first);
        if let Some(d) = second {
            tally.double += 1;
            killed |= apply_and_kill(&t, d);
        }
        tally.killed += usize::from(killed);
        let left = leftovers(t.root());
        tally.temporaries_left += usize::from(left.iter().any(|p| p.contains(".idem-tmp-")));
        tally.journals_left += usize::from(left.iter().any(|p| p.ends_with("-journal")));

        let done = checkpointed(&t);
        assert_checkpointed_effects_present(&t, &done);
        let done_records: usize = done.values().map(BTreeSet::len).sum();

        let rerun = t.json(&["apply"], 0);
        let each = &rerun["steps"][EACH_STEP]["counters"];
        assert_eq!(
            each["skipped"], done_records as u64,
            "the re-run skips exactly the checkpointed records"
        );
        assert_eq!(
            each["processed"],
            USERS - done_records as u64,
            "and processes every other record"
        );
        tally.resumed += usize::from(done_records > 0 && done_records < USERS as usize);

        assert_eq!(
            leftovers(t.root()),
            Vec::<String>::new(),
            "temporaries or journals left after the re-run"
        );
        let got_shape = shape(&t);
        for (path, want) in &want_shape {
            match got_shape.get(path) {
                None => panic!("{path} is missing after the re-run"),
                Some(got) if got != want => panic!(
                    "{path} differs after the re-run: kind/mode {}/{:o} vs {}/{:o}, content {:?} vs {:?}",
                    got.0,
                    got.1,
                    want.0,
                    want.1,
                    String::from_utf8_lossy(&got.2),
                    String::from_utf8_lossy(&want.2)
                ),
                _ => {}
            }
        }
        for path in got_shape.keys() {
            assert!(
                want_shape.contains_key(path),
                "{path} is left after the re-run but not in the reference"
            );
        }
        let got_rows = dump(&t, "data/app.db");
        if got_rows != want_rows {
            let first_diff = got_rows.iter().zip(&want_rows).position(|(a, b)| a != b);
            panic!(
                "data/app.db differs from the reference ({} vs {} lines; first difference at {first_diff:?})",
                got_rows.len(),
                want_rows.len()
            );
        }
        for table in ["events", "users"] {
            let dup = t.rows(
                "data/app.db",
                &format!("SELECT id FROM {table} GROUP BY id HAVING count(*) > 1"),
            );
            assert!(dup.is_empty(), "duplicate {table} rows: {dup:?}");
        }
        let unfinished = t.rows(
            ".idem/state.db",
            "SELECT id FROM runs WHERE outcome IS NULL",
        );
        assert!(
            unfinished.is_empty(),
            "runs left without an outcome: {unfinished:?}"
        );
        let last = t.rows(
            ".idem/state.db",
            "SELECT outcome FROM runs ORDER BY id DESC LIMIT 1",
        );
        assert_eq!(last, ["ok"]);
    }
    eprintln!(
        "crash harness: {points} points (seed {seed:#x}) in {:.1} s: {} kills hit a running apply, \
         {} re-runs resumed a partial each, {} points left temporaries and {} a hot journal for the \
         re-run to clean, {} points also killed a re-run",
        started.elapsed().as_secs_f64(),
        tally.killed,
        tally.resumed,
        tally.temporaries_left,
        tally.journals_left,
        tally.double
    );
    if only.is_none() && points >= DEFAULT_POINTS {
        assert!(
            tally.killed * 3 >= points,
            "most kills must hit a running apply; the spread is off"
        );
        assert!(
            tally.resumed > 0,
            "no point interrupted an each after a checkpoint was written"
        );
    }
}
