//! Issue 20: the group commit of an `each` that writes files. Its writes are made durable
//! once per batch (a `syncfs`, the renames, a `syncfs`) rather than with two fsyncs per file;
//! steps outside `each` keep a write made durable on its own; every call sees the step's own
//! writes in place; and an apply killed at either barrier is finished by the next run with
//! exactly the result of one clean run.
//!
//! What a barrier protects against, a power cut, is not something a test can cause: these
//! tests count the system calls (`strace`) and kill the run at the barrier's calls, and
//! docs/guarantees.md argues the rest.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{Env, bin};

const PAGES: &str = r#"steps:
  - each: users.csv
    key: id
    steps:
      - dir: "pages/{id}"
      - file: "pages/{id}/index.txt"
        content: "{name}\n"
"#;

fn users(n: u64) -> String {
    let mut s = String::from("id,name\n");
    for i in 1..=n {
        s.push_str(&format!("{i},user {i}\n"));
    }
    s
}

/// `strace` of `idem apply` in the root with `args` before the command; the traced run's
/// exit status.
fn traced(t: &Env, args: &[&str]) -> std::process::ExitStatus {
    let plain = t.cmd();
    let mut c = Command::new("strace");
    c.arg("-qq").args(args).arg("--").arg(bin());
    c.args(["apply", "--format", "json"]).current_dir(t.root());
    for (k, v) in plain.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running strace (apt-get install strace): these tests count system calls")
}

/// How many times each of `calls` was made by an apply (every thread), from `strace -c`.
fn sync_calls(t: &Env, calls: &str) -> BTreeMap<String, u64> {
    let out = t.root().parent().unwrap().join(format!(
        "{}.strace",
        t.root().file_name().unwrap().to_string_lossy()
    ));
    let status = traced(
        t,
        &[
            "-f",
            "-c",
            "-o",
            out.to_str().unwrap(),
            "-e",
            &format!("trace={calls}"),
        ],
    );
    assert!(status.success(), "the traced apply failed: {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let mut counts: BTreeMap<String, u64> = calls.split(',').map(|c| (c.into(), 0)).collect();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let (Some(name), true) = (f.last(), f.len() >= 5)
            && let Some(n) = counts.get_mut(*name)
        {
            *n = f[3]
                .parse()
                .unwrap_or_else(|_| panic!("strace -c line {line}"));
        }
    }
    counts
}

/// Temporaries of atomic writes left anywhere under the root.
fn temporaries(t: &Env) -> Vec<String> {
    t.snapshot()
        .into_keys()
        .filter(|p| p.contains(".idem-tmp-"))
        .collect()
}

#[test]
fn an_each_writing_a_file_per_record_syncs_once_per_batch_not_twice_per_file() {
    let t = Env::new();
    let n = 600;
    t.write("users.csv", users(n));
    t.write("idem.yml", PAGES);
    let c = sync_calls(&t, "fsync,fdatasync,syncfs");
    for i in [1, 300, 600] {
        assert_eq!(
            t.read(&format!("pages/{i}/index.txt")),
            format!("user {i}\n")
        );
    }
    // Before: 3 fsyncs per record (the new directory's parent, the file, its directory). Now
    // two syncfs per batch of 256 records, and the state store's own fsyncs.
    let batches = n.div_ceil(256);
    assert!(
        c["syncfs"] >= 2 && c["syncfs"] <= 2 * batches + 2,
        "syncfs per batch: {c:?}"
    );
    assert!(c["fsync"] + c["fdatasync"] < 40, "fsyncs: {c:?}");
    assert!(temporaries(&t).is_empty());
    let again = t.json(&["apply"], 0);
    assert_eq!(
        again["steps"][0]["counters"],
        json!({"processed": 0, "skipped": n, "failed": 0})
    );

    // A `file` step outside `each` is made durable on its own: its file, then its directory.
    let one = Env::new();
    one.write(
        "idem.yml",
        "steps:\n  - dir: etc\n  - file: etc/app.conf\n    content: \"port = 1\\n\"\n",
    );
    let c = sync_calls(&one, "fsync,fdatasync,syncfs");
    assert_eq!(one.read("etc/app.conf"), "port = 1\n");
    assert_eq!(c["syncfs"], 0, "{c:?}");
    assert!(
        c["fsync"] >= 3,
        "the directory, the file and its directory: {c:?}"
    );
}

#[test]
fn every_call_of_an_each_sees_the_records_own_staged_writes() {
    let t = Env::new();
    t.write("users.csv", users(300));
    // Each record copies the file it just wrote, and removes another one it just wrote: the
    // copy must find its source, and the removal must not be undone by the barrier.
    t.write(
        "idem.yml",
        r#"steps:
  - each: users.csv
    key: id
    steps:
      - file: "out/{id}.src"
        content: "{name}\n"
      - file: "out/{id}.copy"
        source: "out/{id}.src"
      - file: "scratch/{id}"
        content: "scratch"
      - remove: "scratch/{id}"
"#,
    );
    let r = t.json(&["apply"], 0);
    assert_eq!(
        r["steps"][0]["counters"],
        json!({"processed": 300, "skipped": 0, "failed": 0}),
        "{r:#}"
    );
    for i in [1, 150, 300] {
        assert_eq!(t.read(&format!("out/{i}.copy")), format!("user {i}\n"));
        assert!(!t.exists(&format!("scratch/{i}")));
    }
    assert!(temporaries(&t).is_empty());
    let again = t.json(&["apply"], 0);
    assert_eq!(
        again["steps"][0]["counters"],
        json!({"processed": 0, "skipped": 300, "failed": 0})
    );
}

#[test]
fn an_apply_killed_at_either_barrier_is_finished_by_the_next_run() {
    let n = 700;
    let clean = Env::new();
    clean.write("users.csv", users(n));
    clean.write("idem.yml", PAGES);
    clean.json(&["apply"], 0);
    // The first barrier of the second batch (its temporaries written, none renamed), the
    // second (renamed, not yet marked), and the last barrier of the step.
    for when in [3, 4, 6] {
        let t = Env::new();
        t.write("users.csv", users(n));
        t.write("idem.yml", PAGES);
        let status = traced(
            &t,
            &[
                "-f",
                "-o",
                "/dev/null",
                "-e",
                "trace=syncfs",
                "-e",
                &format!("inject=syncfs:signal=KILL:when={when}"),
            ],
        );
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal() == Some(libc::SIGKILL) || status.code() == Some(128 + libc::SIGKILL),
            "the apply was to be killed before syncfs call {when}: {status}"
        );
        let r = t.json(&["apply"], 0);
        let c = &r["steps"][0]["counters"];
        assert_eq!(
            c["processed"].as_u64().unwrap() + c["skipped"].as_u64().unwrap(),
            n,
            "killed at syncfs {when}: {r:#}"
        );
        assert_eq!(
            t.snapshot()
                .into_iter()
                .filter(|(p, _)| p.starts_with("pages"))
                .collect::<BTreeMap<_, _>>()
                .keys()
                .collect::<Vec<_>>(),
            clean
                .snapshot()
                .into_iter()
                .filter(|(p, _)| p.starts_with("pages"))
                .collect::<BTreeMap<_, _>>()
                .keys()
                .collect::<Vec<_>>(),
            "killed at syncfs {when}"
        );
        for i in [1, 256, 257, 512, 700] {
            assert_eq!(
                t.read(&format!("pages/{i}/index.txt")),
                format!("user {i}\n")
            );
        }
        assert!(temporaries(&t).is_empty(), "killed at syncfs {when}");
        let again = t.json(&["apply"], 0);
        assert_eq!(
            again["steps"][0]["counters"],
            json!({"processed": 0, "skipped": n, "failed": 0})
        );
    }
}
