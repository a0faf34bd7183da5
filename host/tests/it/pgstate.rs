//! The state store in PostgreSQL (issue 15, items 5 and 6): runs, journal, checkpoints and the
//! run lock on a real server; runners that cooperate through claims, and static shards.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::{fresh_db, psql, server};
use crate::support::{Env, Run};

/// An `each` over `n` records writing one file per record under the runner's root.
fn each_plan(env: &Env, n: usize) {
    let mut csv = String::from("id,name\n");
    for i in 0..n {
        csv.push_str(&format!("{i},user{i}\n"));
    }
    env.write("data/users.csv", csv);
    env.write(
        "idem.yml",
        "steps:\n  - dir: out\n  - each: data/users.csv\n    key: id\n    once: true\n    steps:\n      - file: \"out/{id}.txt\"\n        content: \"{name}\\n\"\n",
    );
}

fn idem_pg(env: &Env, url: &str, key: &str, args: &[&str]) -> Command {
    let mut c = env.cmd();
    c.args(args).args(["--state", url, "--state-key", key]);
    c
}

fn run(mut c: Command) -> Run {
    Run::from(c.output().expect("running idem"))
}

/// Every table of the `idem` schema, with its row count.
fn row_counts(db: &str) -> String {
    psql(
        db,
        "SELECT string_agg(t || '=' || n, ' ' ORDER BY t) FROM (
           SELECT 'runs' t, count(*) n FROM idem.runs UNION ALL
           SELECT 'journal', count(*) FROM idem.journal UNION ALL
           SELECT 'checkpoints', count(*) FROM idem.checkpoints UNION ALL
           SELECT 'holders', count(*) FROM idem.holders UNION ALL
           SELECT 'claims', count(*) FROM idem.claims UNION ALL
           SELECT 'schema_version', count(*) FROM idem.schema_version) c",
    )
}

/// The `processed` counter of the report's `each` step.
fn processed(report: &serde_json::Value) -> u64 {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["op"] == "each")
        .and_then(|s| s["counters"]["processed"].as_u64())
        .unwrap_or_else(|| panic!("no each step with processed in {report:#}"))
}

/// Files under `out/` of a root.
fn outputs(env: &Env) -> BTreeSet<String> {
    match std::fs::read_dir(env.path("out")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

#[track_caller]
fn no_password(password: &str, texts: &[&str]) {
    for t in texts {
        assert!(!t.contains(password), "the password was printed:\n{t}");
    }
}

/// Wait until `cond` holds, up to 60 s.
#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().expect("starting idem")
}

fn kill(mut child: Child) {
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the runner had ended already"
    );
}

/// Marks written so far (0 before the schema exists).
fn checkpoints(db: &str) -> usize {
    if psql(db, "SELECT to_regclass('idem.checkpoints') IS NULL") == "t" {
        return 0;
    }
    psql(db, "SELECT count(*) FROM idem.checkpoints")
        .parse()
        .unwrap()
}

#[test]
fn state_in_postgres_records_history_converges_and_a_dry_run_writes_nothing_to_it() {
    let s = server();
    let db = fresh_db("pgstate_history");
    let url = s.url_of(&db);
    let env = Env::new();
    each_plan(&env, 50);
    let first = run(idem_pg(
        &env,
        &url,
        "app/idem.yml",
        &["apply", "--format", "json"],
    ));
    first.code(0);
    assert_eq!(processed(&first.json()), 50);
    assert!(
        !env.exists(".idem/state.db"),
        "nothing of the state on the root"
    );
    let second = run(idem_pg(
        &env,
        &url,
        "app/idem.yml",
        &["apply", "--format", "json"],
    ));
    second.code(0);
    assert_eq!(
        processed(&second.json()),
        0,
        "converged: every record is done"
    );
    assert_eq!(second.json()["changes"].as_array().map_or(0, Vec::len), 0);

    let before = row_counts(&db);
    env.write("data/users.csv", "id,name\n0,user0\n50,new\n");
    let plan = run(idem_pg(
        &env,
        &url,
        "app/idem.yml",
        &["plan", "--format", "json"],
    ));
    plan.code(0);
    assert_eq!(
        processed(&plan.json()),
        1,
        "the plan sees the one new record"
    );
    let check = run(idem_pg(&env, &url, "app/idem.yml", &["check"]));
    check.code(2);
    assert_eq!(
        row_counts(&db),
        before,
        "a dry run writes nothing to the state store"
    );

    let history = run(idem_pg(
        &env,
        &url,
        "app/idem.yml",
        &["history", "--format", "json"],
    ));
    history.code(0);
    let runs = history.json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "two applies, no dry run: {runs:#?}");
    assert!(
        runs.iter()
            .all(|r| r["outcome"] == "ok" && r["mode"] == "apply")
    );
    assert_eq!(
        runs[1]["journal"].as_array().unwrap().len(),
        51,
        "out/ and 50 files"
    );
    let text = run(idem_pg(&env, &url, "app/idem.yml", &["history"]));
    text.code(0).says("apply");
    // Another state key in the same database is another job: it has no history.
    let other = run(idem_pg(&env, &url, "other", &["history"]));
    other.code(0).says("no runs recorded");
    // A database without the schema reads as a new store, and a dry run does not make it.
    let empty = fresh_db("pgstate_empty");
    run(idem_pg(&env, &s.url_of(&empty), "k", &["plan"])).code(0);
    assert_eq!(
        psql(
            &empty,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'idem'"
        ),
        "0"
    );
    no_password(
        &s.password,
        &[
            &first.all(),
            &second.all(),
            &plan.all(),
            &check.all(),
            &history.all(),
            &text.all(),
            &other.all(),
        ],
    );
}

#[test]
fn the_state_url_may_come_from_the_environment_and_a_bad_password_is_not_printed() {
    let s = server();
    let db = fresh_db("pgstate_env");
    let env = Env::new();
    each_plan(&env, 3);
    let mut c = idem_pg(&env, "env:IDEM_TEST_STATE", "k", &["apply"]);
    c.env("IDEM_TEST_STATE", s.url_of(&db));
    run(c).code(0);
    assert_eq!(checkpoints(&db), 3);
    let wrong = format!("postgresql://idem:Wr0ngSecret@127.0.0.1:{}/{db}", s.port);
    let r = run(idem_pg(&env, &wrong, "k", &["apply"]));
    r.code(1).says("127.0.0.1");
    no_password("Wr0ngSecret", &[&r.all()]);
    let unset = run(idem_pg(&env, "env:IDEM_NO_SUCH_VAR", "k", &["apply"]));
    unset.code(1).says("IDEM_NO_SUCH_VAR");
}

#[test]
fn a_killed_apply_resumes_on_a_fresh_root_with_exactly_the_remaining_records() {
    let s = server();
    let db = fresh_db("pgstate_resume");
    let url = s.url_of(&db);
    let n = 8_000;
    let env = Env::new();
    each_plan(&env, n);
    let child = spawn(idem_pg(&env, &url, "job", &["apply"]));
    wait_until("the apply wrote no checkpoint", || checkpoints(&db) >= 300);
    kill(child);
    let done = checkpoints(&db);
    assert!(done < n, "the kill came too late to test a resume");
    // A fresh runner: a new, empty root with the same state.
    let fresh = Env::new();
    each_plan(&fresh, n);
    let r = run(idem_pg(&fresh, &url, "job", &["apply", "--format", "json"]));
    r.code(0);
    let report = r.json();
    assert_eq!(report["resumed"], true, "{report:#}");
    assert_eq!(processed(&report) as usize, n - done);
    assert_eq!(outputs(&fresh).len(), n - done);
    let history = run(idem_pg(
        &fresh,
        &url,
        "job",
        &["history", "--format", "json"],
    ));
    assert_eq!(history.json()[1]["outcome"], "interrupted");
}

#[test]
fn a_second_apply_waits_for_the_lock_naming_its_holder_and_gets_it_once_the_holder_is_killed() {
    let s = server();
    let db = fresh_db("pgstate_lock");
    let url = s.url_of(&db);
    let a = Env::new();
    each_plan(&a, 200_000);
    let holder = spawn(idem_pg(&a, &url, "shared", &["apply"]));
    let pid = holder.id();
    wait_until("the first apply never held the lock", || {
        psql(&db, "SELECT to_regclass('idem.holders') IS NOT NULL") == "t"
            && psql(&db, "SELECT count(*) FROM idem.holders") == "1"
    });
    let b = Env::new();
    each_plan(&b, 1);
    let started = Instant::now();
    let waited = run(idem_pg(
        &b,
        &url,
        "shared",
        &["apply", "--lock-timeout", "1"],
    ));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "--lock-timeout was not waited"
    );
    waited
        .code(1)
        .says("another idem run holds the lock on state key \"shared\"")
        .says(&format!("pid {pid} on "))
        .says("--lock-timeout");
    // A dry run waits for an apply too, and names it.
    run(idem_pg(
        &b,
        &url,
        "shared",
        &["plan", "--lock-timeout", "0"],
    ))
    .code(1)
    .says(&format!("pid {pid}"));
    // Another state key is another job: not held.
    run(idem_pg(
        &b,
        &url,
        "another",
        &["apply", "--lock-timeout", "0"],
    ))
    .code(0);
    kill(holder);
    let started = Instant::now();
    let r = run(idem_pg(
        &b,
        &url,
        "shared",
        &["apply", "--lock-timeout", "0"],
    ));
    r.code(0);
    assert!(started.elapsed() < Duration::from_secs(20));
    no_password(&s.password, &[&waited.all(), &r.all()]);
}

/// Start `count` cooperating runners, each on a root of its own.
fn cooperating(url: &str, n: usize, count: usize) -> Vec<(Env, Child)> {
    (0..count)
        .map(|_| {
            let env = Env::new();
            each_plan(&env, n);
            let child = spawn(idem_pg(
                &env,
                url,
                "matrix",
                &["apply", "--cooperate", "--format", "json"],
            ));
            (env, child)
        })
        .collect()
}

fn report_of(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let r = Run::from(out);
    r.code(0);
    r.json()
}

#[test]
fn four_cooperating_runners_split_ten_thousand_records_each_done_once() {
    let s = server();
    let db = fresh_db("pgstate_coop");
    let url = s.url_of(&db);
    let n = 10_000;
    let runners = cooperating(&url, n, 4);
    let mut sum = 0;
    let mut union: BTreeMap<String, usize> = BTreeMap::new();
    let mut worked = 0;
    for (env, child) in runners {
        let report = report_of(child);
        let p = processed(&report) as usize;
        sum += p;
        worked += usize::from(p > 0);
        let files = outputs(&env);
        assert_eq!(files.len(), p, "each runner's processed count is its work");
        for f in files {
            *union.entry(f).or_default() += 1;
        }
    }
    assert_eq!(sum, n, "processed counts sum to the records");
    assert_eq!(union.len(), n, "every record is done");
    assert!(union.values().all(|&c| c == 1), "no record twice");
    assert!(worked >= 2, "the work was shared");
    assert_eq!(checkpoints(&db), n);
    // A fifth runner finds everything done.
    let late = Env::new();
    each_plan(&late, n);
    let r = run(idem_pg(
        &late,
        &url,
        "matrix",
        &["apply", "--cooperate", "--format", "json"],
    ));
    r.code(0);
    assert_eq!(processed(&r.json()), 0);
}

#[test]
fn cooperating_runners_finish_the_work_of_one_killed_mid_way_and_restarted() {
    let s = server();
    let db = fresh_db("pgstate_coop_kill");
    let url = s.url_of(&db);
    let n = 10_000;
    let mut runners = cooperating(&url, n, 4);
    let (victim_env, victim) = runners.remove(0);
    wait_until("no runner marked anything", || checkpoints(&db) >= 500);
    kill(victim);
    let restarted = spawn(idem_pg(
        &victim_env,
        &url,
        "matrix",
        &["apply", "--cooperate", "--format", "json"],
    ));
    let mut union: BTreeMap<String, usize> = BTreeMap::new();
    for (env, child) in runners {
        report_of(child);
        for f in outputs(&env) {
            *union.entry(f).or_default() += 1;
        }
    }
    report_of(restarted);
    let survivors_dupes = union.values().filter(|&&c| c > 1).count();
    assert_eq!(
        survivors_dupes, 0,
        "runners that lived never did a record twice"
    );
    for f in outputs(&victim_env) {
        *union.entry(f).or_default() += 1;
    }
    assert_eq!(union.len(), n, "every record is done");
    assert_eq!(checkpoints(&db), n);
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM idem.runs WHERE outcome = 'interrupted'"
        ),
        "1",
        "the killed run is recorded as interrupted, the live ones are not"
    );
}

#[test]
fn shards_cover_every_record_once() {
    let n = 3_000;
    let mut union: BTreeMap<String, usize> = BTreeMap::new();
    let mut sum = 0;
    for i in 1..=3 {
        let env = Env::new();
        each_plan(&env, n);
        let shard = format!("{i}/3");
        let plan = env.json(&["plan", "--shard", &shard], 0);
        let report = env.json(&["apply", "--shard", &shard], 0);
        assert_eq!(
            processed(&plan),
            processed(&report),
            "plan predicts the shard"
        );
        let p = processed(&report) as usize;
        assert!(p > n / 6, "shard {shard} got {p}");
        assert_eq!(report["steps"][1]["counters"]["elsewhere"], (n - p) as u64);
        sum += p;
        for f in outputs(&env) {
            *union.entry(f).or_default() += 1;
        }
        assert_eq!(processed(&env.json(&["apply", "--shard", &shard], 0)), 0);
    }
    assert_eq!(sum, n);
    assert_eq!(union.len(), n);
    assert!(union.values().all(|&c| c == 1));
    let env = Env::new();
    each_plan(&env, 1);
    env.idem(&["apply", "--shard", "4/3"])
        .code(64)
        .says("1 ≤ I ≤ N");
    env.idem(&["apply", "--cooperate"])
        .code(1)
        .says("--cooperate needs the state in PostgreSQL");
}
