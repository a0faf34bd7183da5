//! The state store under interruption (issue 4): concurrent runs on one root, a lock left by a
//! killed run, an interrupted `each` resumed (also through a CI cache round trip), `history`,
//! and a write that fails for want of space.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crash::fast_env;
use crate::support::*;

/// A plan whose `each` writes a directory and a file per record of `data/users.csv`.
const EACH_PLAN: &str = r#"steps:
  - each: data/users.csv
    key: id
    steps:
      - dir: "homes/{id}"
      - file: "homes/{id}/profile.txt"
        content: "{name}\n"
"#;

fn users(t: &Env, n: usize) {
    let mut csv = String::from("id,name\n");
    for id in 0..n {
        csv.push_str(&format!("{id},user{id}\n"));
    }
    t.write("data/users.csv", csv);
    t.write("idem.yml", EACH_PLAN);
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length and we stop at the first NUL.
    assert_eq!(
        unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) },
        0
    );
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn spawn_apply(t: &Env) -> Child {
    t.cmd()
        .args(["apply", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting idem")
}

/// Wait until `pid` has written itself into the lock file: it holds the run lock.
#[track_caller]
fn wait_for_holder(t: &Env, pid: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(t.path(".idem/state.db.lock")).unwrap_or_default();
        if text.contains(&format!("pid {pid} ")) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "idem (pid {pid}) never took the run lock"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Wait until the state store holds at least one checkpoint mark, read as another process
/// reads a live WAL database.
#[track_caller]
fn wait_for_checkpoints(t: &Env) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if checkpoints(t) > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no checkpoint was written within a minute");
}

fn checkpoints(t: &Env) -> u64 {
    let Ok(c) = rusqlite::Connection::open_with_flags(
        t.path(".idem/state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return 0;
    };
    c.query_row("SELECT count(*) FROM checkpoints", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_or(0, |n| n as u64)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn each_counters(report: &Value) -> (u64, u64, u64) {
    report_counters(report, 0)
}

#[test]
fn a_second_apply_waits_for_the_first_and_times_out_naming_the_holder() {
    // On the disk, not tmpfs: each record costs its fsyncs, so the first run holds the lock
    // for a good while, and it is stopped (SIGSTOP) anyway while the second one waits.
    let t = Env::new();
    users(&t, 300);
    let mut first = spawn_apply(&t);
    let holder = wait_for_holder(&t, first.id());
    signal(&first, libc::SIGSTOP);

    let t0 = Instant::now();
    let second = t.idem(&["apply", "--lock-timeout", "1"]);
    let waited = t0.elapsed();
    second
        .code(1)
        .says("another idem run holds the lock")
        .says("--lock-timeout");
    second.says(&format!("pid {} on {} since 20", first.id(), hostname()));
    second.says(holder.trim());
    assert!(
        waited >= Duration::from_secs(1),
        "the second run gave up after {waited:?}, before its timeout"
    );
    second.says("waiting for another run on this root");

    // A patient third run waits, then runs once the first has finished.
    let third = t
        .cmd()
        .args(["apply", "--format", "json", "--lock-timeout", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    signal(&first, libc::SIGCONT);
    assert!(first.wait().unwrap().success());
    let out = third.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("waiting for another run"),
        "the third run did not wait: {stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        each_counters(&report),
        (0, 300, 0),
        "the third run found the first one's work done"
    );
    assert_eq!(
        t.rows(".idem/state.db", "SELECT outcome FROM runs ORDER BY id"),
        ["ok", "ok"]
    );
}

#[test]
fn a_lock_left_by_a_killed_apply_is_taken_over_at_once() {
    let t = Env::new();
    users(&t, 300);
    let mut first = spawn_apply(&t);
    let pid = first.id();
    wait_for_holder(&t, pid);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        t.read(".idem/state.db.lock")
            .contains(&format!("pid {pid} ")),
        "the dead holder's name stays"
    );

    let t0 = Instant::now();
    let r = t.idem(&["apply", "--lock-timeout", "0"]);
    r.code(0);
    assert!(
        !r.all().contains("waiting"),
        "a dead holder was waited for:\n{}",
        r.all()
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert!(
        !t.read(".idem/state.db.lock")
            .contains(&format!("pid {pid} ")),
        "the new holder wrote its name"
    );
}

#[test]
fn an_interrupted_each_resumes_its_checkpointed_records_even_through_a_ci_cache_round_trip() {
    const N: u64 = 10_000;
    let t = fast_env();
    users(&t, N as usize);
    let mut first = t
        .cmd()
        .args(["apply"])
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_RUN_ATTEMPT", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoints(&t);
    first.kill().unwrap();
    first.wait().unwrap();
    let done = checkpoints(&t);
    assert!(
        done > 0 && done < N,
        "the kill came too late: {done} of {N} records were marked"
    );

    // History calls the killed run interrupted as soon as nobody holds the lock.
    let text = t.idem(&["history"]);
    text.code(0)
        .says("apply idem.yml -> interrupted")
        .says("[CI run 4242 attempt 1]");

    // What a CI cache of `.idem/` does between attempts: saved elsewhere, gone, restored.
    let cache = tempfile::tempdir().unwrap();
    copy_dir(&t.path(".idem"), cache.path());
    std::fs::remove_dir_all(t.path(".idem")).unwrap();
    copy_dir(cache.path(), &t.path(".idem"));

    let mut cmd = t.cmd();
    cmd.args(["apply", "--format", "json"])
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_RUN_ATTEMPT", "2");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["resumed"], true,
        "the retry says it resumes an interrupted run"
    );
    assert_eq!(
        each_counters(&report),
        (N - done, done, 0),
        "the retry skips exactly the checkpointed records"
    );
    for id in [0, N / 2, N - 1] {
        assert_eq!(
            t.read(&format!("homes/{id}/profile.txt")),
            format!("user{id}\n")
        );
    }
    assert!(
        !t.path(".idem/state.db-wal").exists(),
        "a finished run leaves the store in one file"
    );

    let history = t.json(&["history"], 0);
    let runs = history.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["outcome"], "ok");
    assert_eq!(runs[0]["ci_run_attempt"], "2");
    assert_eq!(runs[1]["outcome"], "interrupted");
    assert_eq!(
        (
            runs[1]["ci_run_id"].as_str(),
            runs[1]["ci_run_attempt"].as_str()
        ),
        (Some("4242"), Some("1"))
    );
}

#[test]
fn a_failed_attempt_restored_from_a_cached_state_file_resumes_where_it_stopped() {
    let t = fast_env();
    users(&t, 500);
    // A directory where two records' files must go: those records fail, the others go on.
    t.mkdir("homes/7/profile.txt")
        .mkdir("homes/300/profile.txt");
    let first = t.json(&["apply"], 1);
    assert_eq!(each_counters(&first), (498, 0, 2));
    assert!(
        !t.path(".idem/state.db-wal").exists(),
        "after the run ended the store is one file"
    );

    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(t.path(".idem/state.db"), cache.path().join("state.db")).unwrap();
    std::fs::remove_dir_all(t.path(".idem")).unwrap();
    std::fs::remove_dir(t.path("homes/7/profile.txt")).unwrap();
    std::fs::remove_dir(t.path("homes/300/profile.txt")).unwrap();
    std::fs::create_dir(t.path(".idem")).unwrap();
    std::fs::copy(cache.path().join("state.db"), t.path(".idem/state.db")).unwrap();

    let second = t.json(&["apply"], 0);
    assert_eq!(each_counters(&second), (2, 498, 0));
    assert_eq!(t.read("homes/300/profile.txt"), "user300\n");
    let history = t.idem(&["history"]);
    history.code(0).says("-> ok").says("-> failed");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Runs `idem` with writes limited to files of at most `limit` bytes (RLIMIT_FSIZE, with
/// SIGXFSZ ignored so that a write past it fails with EFBIG instead of killing the process).
/// Unlike permission bits, it stops root too, needs no mount, and works in any container.
fn with_file_size_limit(cmd: &mut std::process::Command, limit: u64) {
    // SAFETY: between fork and exec only async-signal-safe calls (signal, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_write_that_finds_no_room_fails_leaving_nothing_half_written_and_the_next_run_converges() {
    const LIMIT: u64 = 256 << 10;
    let t = fast_env();
    let mut csv = String::from("id,name\n");
    for id in 0..40 {
        // Two records' files are larger than the limit.
        let size = if id == 11 || id == 29 {
            300 << 10
        } else {
            1 << 10
        };
        t.write(
            &format!("blobs/{id}.bin"),
            vec![b'a' + (id % 26) as u8; size],
        );
        csv.push_str(&format!("{id},user{id}\n"));
    }
    t.write("data/users.csv", csv);
    let mut events = String::from("id,payload\n");
    for id in 0..6000 {
        events.push_str(&format!("{id},{}\n", "x".repeat(64)));
    }
    t.write("data/events.csv", events);
    t.write(
        "idem.yml",
        r#"steps:
  - file: out/small.txt
    content: "fits\n"
  - each: data/users.csv
    key: id
    steps:
      - file: "out/{id}.bin"
        source: "blobs/{id}.bin"
  - upsert: data/app.db
    table: events
    key: id
    from: data/events.csv
  - file: out/after.txt
    content: "not reached\n"
"#,
    );
    // Compile the guest outside the limit (the component cache writes megabytes).
    let warm = fast_env();
    warm.write("idem.yml", "steps: []\n");
    warm.idem(&["apply"]).code(0);

    let mut cmd = t.cmd();
    cmd.args(["apply", "--format", "json"]);
    with_file_size_limit(&mut cmd, LIMIT);
    let out = cmd.output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let outcomes: Vec<_> = outcomes(&report).into_iter().map(|o| o.0).collect();
    assert_eq!(
        outcomes,
        ["created", "failed", "failed", "not-run"],
        "{report:#}"
    );
    let failures = report["steps"][1]["failures"].as_array().unwrap();
    let items: Vec<_> = failures
        .iter()
        .map(|f| f["item"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["record id=11", "record id=29"]);
    assert!(
        failures[0]["message"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{failures:?}"
    );

    // Nothing half-written: the big files are absent, not truncated; no temporary is left.
    assert!(!t.exists("out/11.bin") && !t.exists("out/29.bin"));
    assert_eq!(std::fs::read(t.path("out/10.bin")).unwrap().len(), 1 << 10);
    let names: Vec<String> = std::fs::read_dir(t.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".idem-tmp-")), "{names:?}");
    // The load is one transaction: no table, no rows, no journal left behind.
    assert!(!t.exists("data/app.db-journal"));
    if t.exists("data/app.db") {
        let tables = t.rows(
            "data/app.db",
            "SELECT name FROM sqlite_schema WHERE name = 'events'",
        );
        assert!(tables.is_empty(), "a failed load left a table behind");
    }
    // The state store is intact: it records the failed run and the records that were done.
    assert_eq!(t.rows(".idem/state.db", "PRAGMA integrity_check"), ["ok"]);
    assert_eq!(
        t.rows(".idem/state.db", "SELECT outcome FROM runs"),
        ["failed"]
    );
    assert_eq!(
        t.rows(".idem/state.db", "SELECT count(*) FROM checkpoints"),
        ["38"]
    );

    // Room again: the next run does only what is left, and then the plan has converged.
    let second = t.json(&["apply"], 0);
    assert_eq!(report_counters(&second, 1), (2, 38, 0));
    assert_eq!(second["steps"][2]["counters"]["inserted"], 6000);
    assert_eq!(
        std::fs::read(t.path("out/29.bin")).unwrap().len(),
        300 << 10
    );
    assert_eq!(t.read("out/after.txt"), "not reached\n");
    let third = t.json(&["apply"], 0);
    assert_eq!(changes(&third), vec![]);
}

/// An `each` step's (processed, skipped, failed).
fn report_counters(report: &Value, step: usize) -> (u64, u64, u64) {
    let c = &report["steps"][step]["counters"];
    (
        c["processed"].as_u64().unwrap(),
        c["skipped"].as_u64().unwrap(),
        c["failed"].as_u64().unwrap(),
    )
}

/// Issue 14: a full disk under the state store names the store and the step, prints what was
/// done, and the next run converges.
#[test]
fn a_state_store_that_finds_no_room_is_named_and_the_report_still_says_what_was_done() {
    let t = fast_env();
    let mut plan = String::from("steps:\n");
    for i in 0..200 {
        plan.push_str(&format!(
            "  - file: out/f{i}.txt\n    content: \"{}\\n\"\n",
            "y".repeat(1000)
        ));
    }
    t.write("idem.yml", &plan);
    let warm = fast_env();
    warm.write("idem.yml", "steps: []\n");
    warm.idem(&["apply"]).code(0);
    let mut cmd = t.cmd();
    cmd.args(["apply", "--format", "json"]);
    // Room for the tree's 1 KB files (and what wasmtime needs), not for the state store's
    // write-ahead log, which grows by a page or more for each step's journal.
    with_file_size_limit(&mut cmd, 256 << 10);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let steps = report["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "the report lost the steps: {report:#}");
    let failed: Vec<_> = steps.iter().filter(|s| s["outcome"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{report:#}");
    let msg = failed[0]["error"].as_str().unwrap();
    assert!(msg.contains(".idem/state.db"), "{msg}");
    assert!(msg.contains("journal"), "{msg}");
    assert!(
        steps.iter().any(|s| s["outcome"] == "created"),
        "done steps reported"
    );
    // Without the limit, the next run finishes the work.
    t.idem(&["apply", "--verify"]).code(0);
}

/// Issue 14: idem handles SIGXFSZ itself (ignored), so `ulimit -f` gives an error, not a
/// silent death by signal.
#[test]
fn a_file_size_limit_is_an_error_not_a_silent_kill() {
    let t = fast_env();
    t.write(
        "idem.yml",
        "steps:\n  - file: big.txt\n    source: src.bin\n",
    );
    t.write("src.bin", vec![b'x'; 512 << 10]);
    let warm = fast_env();
    warm.write("idem.yml", "steps: []\n");
    warm.idem(&["apply"]).code(0);
    let mut cmd = t.cmd();
    cmd.arg("apply");
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit).
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 256 << 10,
                rlim_max: 256 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("big.txt"), "{all}");
    assert!(!t.exists("big.txt"), "nothing half-written");
}

/// Issue 14: a kill between a cleanup's deletions and its removal of the directories they
/// emptied left those directories for ever (the re-run found them "already empty" and kept
/// them). The re-run must end as one clean run: every empty directory the plan does not make
/// is removed, whoever emptied it.
#[test]
fn a_cleanup_killed_before_removing_emptied_dirs_finishes_on_the_rerun() {
    let plan = "steps:\n  - dir: logs/keep\n  - cleanup: logs\n    older-than: 7d\n    include: [\"**/*.log\"]\n    remove-empty-dirs: true\n";
    let fill = |t: &Env| {
        t.write("idem.yml", plan);
        for d in ["a", "b/c"] {
            t.write(&format!("logs/{d}/old.log"), "old\n")
                .age(&format!("logs/{d}/old.log"), 30);
        }
        t.write("logs/d/new.log", "new\n");
    };
    let clean = fast_env();
    fill(&clean);
    clean.idem(&["apply"]).code(0);
    // As a killed run left it: the old logs deleted, their directories not yet.
    let killed = fast_env();
    fill(&killed);
    for d in ["a", "b/c"] {
        std::fs::remove_file(killed.path(&format!("logs/{d}/old.log"))).unwrap();
    }
    let planned = killed.json(&["plan"], 0);
    let applied = killed.json(&["apply"], 0);
    assert_eq!(changes(&planned), changes(&applied));
    assert!(
        !killed.exists("logs/a") && !killed.exists("logs/b"),
        "emptied dirs left"
    );
    assert!(
        killed.exists("logs/keep"),
        "a directory the plan makes is kept"
    );
    let shape = |t: &Env| -> Vec<String> {
        t.snapshot()
            .into_keys()
            .filter(|k| k.starts_with("logs"))
            .collect()
    };
    assert_eq!(shape(&killed), shape(&clean));
    killed.json(&["check"], 0);
}
