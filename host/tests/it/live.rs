//! Output a person can follow (issue 17): step lines as steps end, in a pipe; a heartbeat in
//! CI logs; a progress bar with total, percentage and ETA on a terminal; SIGINT and SIGTERM
//! stop at a safe point, say what was done and resume; colour that obeys `--color` and
//! `NO_COLOR` on both streams; NDJSON events that validate against their documented schema;
//! guest-controlled text escaped (issue 12, item 11); history that says what broke; and the
//! small items of the issue's last bullet. Real processes, pipes, signals and a pseudo-terminal.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crash::fast_env;
use crate::support::*;

/// A plan whose first step is instant and whose second is an `each` over `n` records, each
/// writing a file: long enough to watch.
fn each_plan(t: &Env, n: usize) {
    let mut csv = String::from("id,name\n");
    for id in 0..n {
        csv.push_str(&format!("{id},user{id}\n"));
    }
    t.write("data/users.csv", csv);
    t.write(
        "idem.yml",
        "steps:\n  - dir: out\n  - each: data/users.csv\n    key: id\n    steps:\n      - file: \"out/{id}.txt\"\n        content: \"{name}\\n\"\n",
    );
}

/// Lines of a child's stream with the moment each arrived, read on a thread of their own.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting idem")
}

fn send(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// Everything left on a receiver once the child is gone.
fn drain(rx: &mpsc::Receiver<(Instant, String)>) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(30)) {
        out.push(l);
    }
    out
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

#[test]
fn in_a_pipe_the_first_step_line_arrives_before_the_second_step_ends() {
    let t = Env::new();
    each_plan(&t, 3_000);
    let mut child = spawn(t.cmd().args(["apply"]));
    let out = lines_of(child.stdout.take().unwrap());
    let (first_at, first) = out
        .recv_timeout(Duration::from_secs(120))
        .expect("a first line");
    assert!(
        first.starts_with("created") && first.contains("dir out"),
        "{first}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "idem had already exited when the first step's line came: it was not printed live"
    );
    let rest = drain(&out);
    let status = child.wait().unwrap();
    assert!(status.success());
    let (second_at, second) = rest
        .iter()
        .find(|(_, l)| l.contains("each data/users.csv"))
        .expect("the second step's line");
    assert!(second.contains("processed 3,000"), "{second}");
    assert!(
        second_at.duration_since(first_at) > Duration::from_millis(300),
        "the second step's line came {:?} after the first: not as each step ended",
        second_at.duration_since(first_at)
    );
    let last = &rest.last().unwrap().1;
    assert!(
        last.starts_with("applied 2 steps: 2 created; 3,001 changes in"),
        "{last}"
    );
}

#[test]
fn in_a_pipe_a_heartbeat_line_comes_every_interval_even_inside_a_long_guest_call() {
    let t = Env::new();
    t.write("hostile.wasm", &crate::plugins::built().hostile);
    let mut child = spawn(t.cmd().args([
        "run",
        "hostile.wasm",
        "--config-json",
        r#"{"mode": "loop"}"#,
        "--plugin-timeout",
        "8",
        "--progress-interval",
        "3",
    ]));
    let err = lines_of(child.stderr.take().unwrap());
    let _ = child.wait().unwrap();
    let beats: Vec<_> = drain(&err)
        .into_iter()
        .filter(|(_, l)| l.starts_with("idem: step 1/1 plugin hostile.wasm: running, elapsed"))
        .collect();
    assert!(
        beats.len() >= 2,
        "want a heartbeat every 3 s of an 8 s step, got {beats:?}"
    );
    let gap = beats[1].0.duration_since(beats[0].0);
    assert!(
        // Beats are due every 3 s of the step's time; a starved thread may draw one late.
        gap > Duration::from_millis(2_500) && gap < Duration::from_millis(4_500),
        "heartbeats {gap:?} apart, want 3 s"
    );

    // --quiet turns them off.
    let r = t.idem(&[
        "run",
        "hostile.wasm",
        "--config-json",
        r#"{"mode": "loop"}"#,
        "--plugin-timeout",
        "4",
        "--progress-interval",
        "1",
        "--quiet",
    ]);
    assert!(!r.stderr.contains("idem: step"), "{}", r.stderr);
}

#[test]
fn sigint_mid_each_exits_130_with_what_was_done_and_the_next_run_resumes() {
    const N: u64 = 20_000;
    let t = fast_env();
    each_plan(&t, N as usize);
    let mut child = spawn(t.cmd().args(["apply"]));
    let out = lines_of(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoints(&t) == 0 {
        assert!(Instant::now() < deadline, "no checkpoint within a minute");
        std::thread::sleep(Duration::from_millis(5));
    }
    send(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let text: Vec<String> = drain(&out).into_iter().map(|(_, l)| l).collect();
    let text = text.join("\n");
    assert_eq!(status.code(), Some(130), "{text}");
    let done = checkpoints(&t);
    assert!(done > 0 && done < N, "{done} of {N} marked");
    assert!(text.contains("interrupted   each data/users.csv"), "{text}");
    assert!(
        text.contains("interrupted (SIGINT) in step 2 (each data/users.csv) after "),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} checkpointed; checkpoints saved; re-run to resume",
            {
                let mut s = String::new();
                let d = done.to_string();
                for (i, c) in d.chars().enumerate() {
                    if i > 0 && (d.len() - i).is_multiple_of(3) {
                        s.push(',');
                    }
                    s.push(c);
                }
                s
            }
        )),
        "every mark that reached the host was saved ({done}):\n{text}"
    );

    let history = t.json(&["history"], 0);
    assert_eq!(history[0]["outcome"], "interrupted");
    assert_eq!(history[0]["failure"]["step"], 2);
    assert!(
        history[0]["failure"]["error"]
            .as_str()
            .unwrap()
            .contains("interrupted (SIGINT)"),
        "{history}"
    );

    let report = t.json(&["apply"], 0);
    assert_eq!(report["resumed"], true);
    let c = &report["steps"][1]["counters"];
    assert_eq!(
        (c["processed"].as_u64(), c["skipped"].as_u64()),
        (Some(N - done), Some(done)),
        "the next run skips exactly what was checkpointed"
    );
    assert_eq!(
        t.read(&format!("out/{}.txt", N - 1)),
        format!("user{}\n", N - 1)
    );
}

#[test]
fn sigterm_stops_a_plugin_step_at_once_and_exits_143_in_the_json_report() {
    let t = Env::new();
    t.write("hostile.wasm", &crate::plugins::built().hostile);
    let mut child = spawn(t.cmd().args([
        "run",
        "hostile.wasm",
        "--config-json",
        r#"{"mode": "loop"}"#,
        "--format",
        "json",
    ]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(t.path(".idem/state.db.lock"))
        .unwrap_or_default()
        .contains(&format!("pid {} ", child.id()))
    {
        assert!(Instant::now() < deadline, "idem never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    send(&child, libc::SIGTERM);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(143), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["exit_code"], 143);
    assert_eq!(report["interrupted"]["signal"], "SIGTERM");
    assert_eq!(report["interrupted"]["step"], 1);
    assert_eq!(report["steps"][0]["outcome"], "interrupted");
    assert_eq!(report["steps"][0]["error_kind"], "interrupted");
}

#[test]
fn a_second_sigint_stops_at_once() {
    let t = Env::new();
    t.write("hostile.wasm", &crate::plugins::built().hostile);
    // One endless SQL query: the plugin sits in one host call, where the first signal cannot
    // stop it (it waits for the call to return); the second must end the process there and
    // then.
    let sql =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let config = serde_json::json!({"mode": "sql", "database": "app.db", "sql": sql}).to_string();
    let mut child = spawn(t.cmd().args([
        "run",
        "hostile.wasm",
        "--database",
        "app.db",
        "--config-json",
        &config,
        "--progress-interval",
        "1",
    ]));
    std::thread::sleep(Duration::from_millis(2500));
    send(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for a safe point"
    );
    send(&child, libc::SIGINT);
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{out}{err}");
    assert!(err.contains("stopped at once (second signal)"), "{err}");
    // The heartbeat went on while the plugin sat in that one host call.
    assert!(
        err.contains("idem: step 1/1 plugin hostile.wasm: running, elapsed 2s"),
        "{err}"
    );
    assert!(
        !out.contains("interrupted (SIGINT)"),
        "no orderly summary: {out}"
    );
}

#[test]
fn color_never_and_no_color_leave_no_escape_byte_on_either_stream() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - dir: out\n  - file: out/a.txt\n    content: \"a\\n\"\n",
    );
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = t.cmd();
        c.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.args(args).output().unwrap();
        (out.stdout, out.stderr)
    };
    let esc = |b: &[u8]| b.contains(&0x1b);
    // The control: forced colour does reach both streams (debug logs on stderr with -vv).
    let (o, e) = run(&["plan", "-vv", "--color", "always"], &[]);
    assert!(
        esc(&o) && esc(&e),
        "--color always must colour both streams"
    );
    for (args, env) in [
        (
            &["plan", "-vv", "--color", "never"][..],
            &[("CLICOLOR_FORCE", "1")][..],
        ),
        (
            &["plan", "-vv"][..],
            &[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")][..],
        ),
        (&["plan", "-vv"][..], &[][..]),
        (&["plan", "-vv", "--color", "never"][..], &[][..]),
    ] {
        let (o, e) = run(args, env);
        assert!(
            !esc(&o) && !esc(&e),
            "{args:?} {env:?}: an escape byte\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&o),
            String::from_utf8_lossy(&e)
        );
    }
    let (o, e) = run(&["plan", "-vv"], &[("CLICOLOR_FORCE", "1")]);
    assert!(esc(&o) && esc(&e), "CLICOLOR_FORCE colours a pipe");
}

#[test]
fn ndjson_events_validate_against_the_documented_schema() {
    let t = Env::new();
    each_plan(&t, 2_500);
    let r = t.idem(&["apply", "--format", "ndjson"]);
    r.code(0);
    let events: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k != "progress")
            .collect::<Vec<_>>(),
        [
            &"run-started",
            &"step-started",
            &"step-finished",
            &"step-started",
            &"step-finished",
            &"run-finished"
        ]
    );
    assert!(
        kinds.contains(&"progress"),
        "a step of seconds reports progress: {kinds:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["report"]["summary"]["created"], 2);
    let finished = events
        .iter()
        .rfind(|e| e["event"] == "step-finished")
        .unwrap();
    assert!(
        last["report"]["steps"][1] == finished["step"],
        "the step-finished event holds the report's step"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let p = dir.path().join(format!("event{i}.json"));
        std::fs::write(&p, e.to_string()).unwrap();
        files.push(p);
    }
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.schema.json");
    let out = Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(schema)
        .args(&files)
        .output()
        .expect("check-jsonschema (tests/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And a bad event fails it: the schema is not a stub.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"event": "progress", "index": "one"}"#).unwrap();
    let out = Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(schema)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_control_character_in_a_record_value_is_shown_escaped() {
    let t = Env::new();
    t.write("data/x.csv", "id\n\"a\x1b[2Jb\x07\"\n");
    // A file where the record's directory should be: each record fails at run time.
    t.write("blocked", "a file");
    t.write(
        "idem.yml",
        "steps:\n  - each: data/x.csv\n    key: id\n    steps:\n      - file: \"blocked/{id}\"\n        content: x\n",
    );
    let r = t.idem(&["apply"]);
    r.code(1);
    assert!(
        !r.stdout.contains('\x1b') && !r.stderr.contains('\x1b') && !r.stdout.contains('\x07'),
        "a raw control character reached the terminal:\n{:?}",
        r.stdout
    );
    r.says("record id=a\\u{1b}[2Jb\\u{7}");
    // Nor in the log lines: the path built from the value, in a debug line of each change.
    t.write(
        "ok.yml",
        "steps:\n  - each: data/x.csv\n    key: id\n    steps:\n      - file: \"out/{id}\"\n        content: x\n",
    );
    let r = t.idem(&["plan", "ok.yml", "-vv", "--color", "never"]);
    r.code(0);
    assert!(
        !r.stderr.contains('\x1b') && r.stderr.contains("path=out/a\\u{1b}[2Jb"),
        "{:?}",
        r.stderr
    );
    // JSON keeps the value exact (serde escapes it).
    let j = t.json(&["apply"], 1);
    assert_eq!(
        j["steps"][0]["failures"][0]["item"],
        "record id=a\x1b[2Jb\x07"
    );
}

#[test]
fn on_a_terminal_a_csv_step_shows_a_bar_with_total_percentage_and_eta() {
    let t = Env::new();
    each_plan(&t, 3_000);
    // script(1) runs idem on a pseudo-terminal and copies what it draws to our pipe.
    let cmdline = format!("{} apply", bin());
    let mut c = t.cmd();
    let out = Command::new("script")
        .args(["-qefc", &cmdline, "/dev/null"])
        .current_dir(t.root())
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .output()
        .expect("script(1), from util-linux (tests/setup.sh installs it)");
    let _ = &mut c;
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    let frame = screen
        .split(['\r', '\n'])
        .find(|f| f.contains("step 2/2 each data/users.csv") && f.contains("ETA"))
        .unwrap_or_else(|| panic!("no bar with an ETA was drawn:\n{screen:?}"));
    assert!(frame.contains("["), "{frame}");
    assert!(
        frame.contains(" records (") && frame.contains("%)"),
        "the bar shows done/total records and a percentage: {frame}"
    );
    let total: String = frame
        .split(" records (")
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let total: u64 = total.parse().unwrap_or(0);
    assert!(
        (2_500..=5_000).contains(&total),
        "the total is estimated from the bytes read against the CSV's size: {total} in {frame}"
    );
    assert!(
        screen.contains("created       each data/users.csv"),
        "{screen}"
    );
}

#[test]
fn on_a_terminal_log_lines_lift_the_bar_instead_of_landing_on_it() {
    let t = Env::new();
    each_plan(&t, 2_000);
    // -vv logs a debug line per change while the bar is drawn.
    let cmdline = format!("{} apply -vv", bin());
    let c = t.cmd();
    let out = Command::new("script")
        .args(["-qefc", &cmdline, "/dev/null"])
        .current_dir(t.root())
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .output()
        .expect("script(1), from util-linux (tests/setup.sh installs it)");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("ETA"), "a bar was drawn: {screen}");
    assert!(screen.contains("DEBUG change"), "debug lines were logged");
    // A terminal line is what lies between two carriage returns or newlines: the bar's text
    // and a log line must never share one.
    let garbled: Vec<&str> = screen
        .split(['\r', '\n'])
        .filter(|l| l.contains("ETA") && l.contains("DEBUG"))
        .collect();
    assert!(
        garbled.is_empty(),
        "log lines written onto the bar: {:?}",
        &garbled[..garbled.len().min(3)]
    );
}

#[test]
fn history_stores_why_a_run_failed_and_filters_by_failed_since_and_limit_zero() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - dir: out\n  - file: out/nope\n    content: x\n",
    );
    // A directory in the file's way: the second step fails when it runs.
    t.mkdir("out/nope");
    t.idem(&["apply"]).code(1);
    t.write("idem.yml", "steps:\n  - dir: out\n");
    t.idem(&["apply"]).code(0);
    let all = t.json(&["history", "--limit", "0"], 0);
    assert_eq!(all.as_array().unwrap().len(), 2, "--limit 0 is all runs");
    let failed = t.json(&["history", "--failed"], 0);
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["outcome"], "failed");
    assert_eq!(failed[0]["failure"]["step"], 2);
    assert_eq!(failed[0]["failure"]["step_name"], "file out/nope");
    assert!(
        failed[0]["failure"]["error"]
            .as_str()
            .unwrap()
            .contains("out/nope")
    );
    assert_eq!(
        all[0]["failure"],
        Value::Null,
        "a run that succeeded has no failure"
    );
    let text = t.idem(&["history", "--failed"]);
    text.code(0)
        .says("-> failed")
        .says("    step 2 (file out/nope): ");
    assert_eq!(
        t.json(&["history", "--since", "1h"], 0)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let future = t.json(&["history", "--since", "2999-01-01T00:00:00Z"], 0);
    assert_eq!(future.as_array().unwrap().len(), 0);
    t.idem(&["history", "--since", "yesterday"])
        .code(64)
        .says("--since \"yesterday\": expected an age like 90m");
}

#[test]
fn a_bad_now_is_a_usage_error_naming_the_input() {
    let t = Env::new();
    t.write("idem.yml", "steps:\n  - dir: out\n");
    t.idem(&["plan", "--now", "tomorrow"])
        .code(64)
        .says("--now \"tomorrow\": expected Unix seconds");
}

#[test]
fn a_missing_plan_gets_the_json_report_s_whole_shape() {
    let t = Env::new();
    let r = t.json(&["plan"], 1);
    for key in [
        "schema",
        "idem",
        "mode",
        "dry_run",
        "plan",
        "root",
        "ok",
        "changed",
        "exit_code",
        "error",
        "summary",
        "steps",
        "verify",
        "resumed",
        "recovered_temporaries",
        "duration_ms",
    ] {
        assert!(r.get(key).is_some(), "no {key:?} in {r}");
    }
    assert_eq!(r["mode"], "plan");
    assert_eq!(r["summary"]["steps"], 0);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idem init")
    );
}

#[test]
fn counts_are_worded_in_the_singular_for_one() {
    let t = Env::new();
    t.write("idem.yml", "steps:\n  - dir: out\n");
    let r = t.idem(&["apply"]);
    r.code(0).says("applied 1 step: 1 created; 1 change in");
    let r = t.idem(&["check"]);
    r.code(0).says("checked 1 step: 1 unchanged; 0 changes in");
}

#[test]
fn man_writes_a_page_per_command_and_init_files_follow_the_umask() {
    let t = Env::new();
    t.idem(&["man", "--dir", "man"]).code(0);
    for page in ["idem.1", "idem-apply.1", "idem-history.1", "idem-run.1"] {
        let text = t.read(&format!("man/{page}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    assert!(t.read("man/idem-apply.1").contains("idem\\-apply"));

    let mut c = t.cmd();
    // SAFETY: umask(2) in the child before exec; async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let out = c.arg("init").output().unwrap();
    assert!(out.status.success());
    for f in ["idem.yml", "idem.schema.json", ".github/workflows/idem.yml"] {
        let mode = std::fs::metadata(t.path(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o644,
            "{f} has mode {mode:o}, not what umask 022 gives"
        );
    }
}

#[test]
fn a_lock_wait_is_announced_once() {
    let t = Env::new();
    t.write("idem.yml", "steps:\n  - dir: out\n");
    std::fs::create_dir_all(t.path(".idem")).unwrap();
    let f = std::fs::File::create(t.path(".idem/state.db.lock")).unwrap();
    f.lock().unwrap();
    let r = t.idem(&["apply", "--lock-timeout", "1"]);
    r.code(1);
    assert_eq!(
        r.stderr.matches("waiting for another").count(),
        1,
        "{}",
        r.stderr
    );
}

#[test]
fn a_plugin_s_message_is_shown_under_its_line_in_the_text_report() {
    let t = Env::new();
    t.write("manifest.wasm", &crate::plugins::built().manifest);
    t.write("dist/app.js", "console.log(1)\n");
    let args = [
        "run",
        "manifest.wasm",
        "--path",
        "dist",
        "--config-json",
        r#"{"dir": "dist"}"#,
        "--dry-run",
    ];
    let j = t.json(&args, 0);
    let message = j["steps"][0]["message"]
        .as_str()
        .expect("the plugin's message");
    let r = t.idem(&args);
    r.code(0);
    assert!(
        r.stdout.contains(&format!("\n              {message}\n")),
        "the message {message:?} under the step's line:\n{}",
        r.stdout
    );
}

/// Issue 17: a converged `each` re-run skips the records whose fingerprint matched; the live
/// display counted only `once: true` skips (through `checkpoint.done`), so a re-run showed
/// 0 skipped and a rate inflated by them.
#[test]
fn a_converged_each_rerun_shows_its_skipped_records_in_the_heartbeat() {
    let t = Env::new();
    let mut csv = String::from("id,name\n");
    // Enough records that the re-run outlasts a 1 s heartbeat even with batched stats.
    for i in 0..400_000 {
        csv.push_str(&format!("{i},n{i}\n"));
    }
    t.write("data.csv", &csv);
    t.write(
        "idem.yml",
        "steps:\n  - each: data.csv\n    key: id\n    steps:\n      - remove: \"gone/{id}\"\n",
    );
    t.idem(&["apply"]).code(0);
    let r = t.idem(&["apply", "--progress-interval", "1"]);
    r.code(0).says("skipped 400,000");
    let beats: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("idem: step 1/1 each data.csv:"))
        .collect();
    assert!(!beats.is_empty(), "no heartbeat in {}", r.stderr);
    for beat in beats {
        let done: u64 = beat
            .split(": ")
            .nth(2)
            .and_then(|s| s.split('/').next())
            .map(|s| s.replace(',', "").parse().unwrap())
            .unwrap();
        assert!(
            beat.contains(&format!("{} skipped", thousands(done))),
            "every record so far was skipped: {beat}"
        );
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Issue 17: the global options are listed once, in `idem --help`; a subcommand's help
/// points there instead of repeating them, and they still parse after the subcommand.
#[test]
fn global_options_are_listed_once_in_help_and_still_parse_after_the_command() {
    let t = Env::new();
    let top = t.idem(&["--help"]);
    top.code(0)
        .says("Global options:")
        .says("--plugin-timeout <SECS>")
        .says("--lock-timeout <SECS>");
    for sub in [
        "apply", "plan", "check", "validate", "run", "history", "man",
    ] {
        let r = t.idem(&[sub, "--help"]);
        r.code(0).says("see `idem --help`");
        for global in [
            "--plugin-timeout",
            "--lock-timeout",
            "--state-key",
            "--color",
        ] {
            assert!(
                !r.stdout.contains(global),
                "`idem {sub} --help` lists {global}:\n{}",
                r.stdout
            );
        }
    }
    // `apply`'s own options are still shown.
    t.idem(&["apply", "--help"])
        .code(0)
        .says("--verify")
        .says("--var <NAME=VALUE>");
    // After the subcommand, a global option is taken as before the subcommand.
    t.write("sub/idem.yml", "steps:\n  - dir: out\n");
    let r = t.json(&["apply", "-C", "sub", "--now", "1700000000"], 0);
    assert_eq!(r["steps"][0]["outcome"], "created", "{r}");
    assert!(t.exists("sub/out"));
    t.idem(&["plan", "--now", "tomorrow"]).code(64);
    t.idem(&["apply", "--plugin-timeout", "x"]).code(64);
    let before = t.json(&["-C", "sub", "check"], 0);
    assert_eq!(before["steps"][0]["outcome"], "unchanged");
}

/// A compile cache outside `t`'s root that is warm for everything the shared one holds (the
/// standard guest) but cold for `component`: its artefact is left out, so the next run
/// compiles it. The cache is in the returned directory, `cache/`.
fn cache_cold_for(t: &Env, component: &[u8]) -> tempfile::TempDir {
    use sha2::Digest;
    use std::os::unix::fs::DirBuilderExt;
    // The shared cache holds the standard guest once any run has used it.
    t.idem(&["schema"]).code(0);
    let dir = tempfile::tempdir().unwrap();
    let cold = dir.path().join("cache");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&cold)
        .unwrap();
    let sha = format!("{:x}", sha2::Sha256::digest(component));
    for e in std::fs::read_dir(cache_dir()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.starts_with(&sha[..32]) || !(name == "key" || name.ends_with(".cwasm")) {
            continue;
        }
        std::fs::copy(e.path(), cold.join(&name)).unwrap();
    }
    dir
}

/// Issue 17: on a terminal, while a plugin step compiles its component (a cold cache), a
/// second line under the step's bar says so, with the time it has taken; once the compile
/// is over the line goes and the step's bar is drawn alone while the plugin runs.
#[test]
fn on_a_terminal_a_plugin_compile_is_a_line_of_its_own_while_it_lasts() {
    let t = Env::new();
    let plugin = &crate::plugins::built().hostile;
    t.write("plugins/sleepy.wasm", plugin);
    t.write(
        "idem.yml",
        "steps:\n  - plugin: plugins/sleepy.wasm\n    config: {mode: sleep, size: 2}\n",
    );
    let dir = cache_cold_for(&t, plugin);
    let cold = dir.path().join("cache");
    let cmdline = format!("{} apply", bin());
    let c = t.cmd();
    let out = Command::new("script")
        .args(["-qefc", &cmdline, "/dev/null"])
        .current_dir(t.root())
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .env("IDEM_CACHE_DIR", &cold)
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .output()
        .expect("script(1), from util-linux (tests/setup.sh installs it)");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    let line = "compiling plugins/sleepy.wasm (first run; cached afterwards), ";
    let last = screen
        .rfind(line)
        .unwrap_or_else(|| panic!("no compile line was drawn:\n{screen:?}"));
    let first = screen.find(line).unwrap();
    assert!(
        screen[..first].contains("step 1/1 plugin plugins/sleepy.wasm"),
        "the compile line is under the step's bar: {screen:?}"
    );
    // After the compile, the step's bar is drawn again, without the compile line.
    let after = &screen[last..];
    let bar = after
        .find("step 1/1 plugin plugins/sleepy.wasm")
        .unwrap_or_else(|| panic!("the bar was not drawn after the compile: {after:?}"));
    assert!(
        !after[bar..].contains("compiling "),
        "the compile line came back: {after:?}"
    );
    assert!(
        screen.contains("unchanged     plugin plugins/sleepy.wasm"),
        "{screen}"
    );
    // Warm, the next run compiles nothing and draws no compile line.
    let again = Command::new("script")
        .args(["-qefc", &cmdline, "/dev/null"])
        .current_dir(t.root())
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .env("IDEM_CACHE_DIR", &cold)
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{screen}");
    assert!(!screen.contains("compiling "), "{screen:?}");
    assert!(
        screen.contains("step 1/1 plugin plugins/sleepy.wasm"),
        "{screen:?}"
    );
}

/// Issue 17: in a pipe (CI logs), the heartbeat of a step whose plugin compiles says that it
/// is compiling, and what; so do NDJSON progress events (`compiling`). The component here is
/// the standard operations guest, a megabyte that takes seconds to compile in a debug build,
/// with a custom section added so that its hash is not the standard guest's own (which every
/// run loads first, from the cache); it is of another world, so the step then fails to
/// instantiate it, as it should.
#[test]
fn in_a_pipe_the_heartbeat_says_a_plugin_is_compiling() {
    let t = Env::new();
    let mut plugin = crate::plugins::built().standard.clone();
    // A custom section (id 0): its size, then its name's length and name, then no payload.
    plugin.extend([0, 4, 3, b'p', b'a', b'd']);
    let plugin = &plugin;
    t.write("plugins/big.wasm", plugin);
    t.write("idem.yml", "steps:\n  - plugin: plugins/big.wasm\n");
    let dir = cache_cold_for(&t, plugin);
    let cold = dir.path().join("cache");
    let r = Run::from(
        t.cmd()
            .args(["apply", "--progress-interval", "1"])
            .env("IDEM_CACHE_DIR", &cold)
            .output()
            .unwrap(),
    );
    r.code(1).says("does not fit idem's contract");
    let beat = r
        .stderr
        .lines()
        .find(|l| l.starts_with("idem: step 1/1 plugin plugins/big.wasm: compiling "))
        .unwrap_or_else(|| panic!("no heartbeat said it was compiling:\n{}", r.stderr));
    assert!(
        beat.contains("compiling plugins/big.wasm (first run; cached afterwards), ")
            && beat.contains(", elapsed "),
        "{beat}"
    );
    // NDJSON: the progress events of the compile name the component; warm, none does.
    let dir = cache_cold_for(&t, plugin);
    let cold = dir.path().join("cache");
    let r = Run::from(
        t.cmd()
            .args(["apply", "--format", "ndjson"])
            .env("IDEM_CACHE_DIR", &cold)
            .output()
            .unwrap(),
    );
    r.code(1);
    let events: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["compiling"] == "plugins/big.wasm"),
        "{}",
        r.stdout
    );
}
