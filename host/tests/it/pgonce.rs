//! Checkpoints committed with the effect (issue 15, item 4): when an `each` record's effects
//! are all upserts into the PostgreSQL database that also holds the state, its mark commits
//! in the same transaction, so across SIGKILLs every record's effect happens exactly once.
//!
//! The effect table's upsert writes which runner (or attempt) did it, so a record redone by
//! another runner is an UPDATE, and a trigger logs every INSERT and UPDATE that commits: a
//! record done twice shows as two log rows.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::{fresh_db, psql, server};
use crate::support::{Env, Run};

/// An `each` over `n` records whose only sub-step upserts an inline row into PostgreSQL.
fn plan(env: &Env, n: usize) {
    let mut csv = String::from("id,name\n");
    for i in 0..n {
        csv.push_str(&format!("{i},user{i}\n"));
    }
    env.write("records.csv", csv);
    env.write(
        "idem.yml",
        "steps:\n  - each: records.csv\n    key: id\n    id: effects\n    steps:\n      - upsert: env:IDEM_TEST_PG\n        table: effect\n        key: id\n        rows: [{id: \"{id}\", name: \"{name}\", runner: \"${env.RUNNER}\"}]\n",
    );
}

/// The effect table and its log of committed writes, made before any runner starts.
fn effect_tables(db: &str) {
    psql(
        db,
        "CREATE TABLE effect (id bigint PRIMARY KEY, name text, runner text);
         CREATE TABLE effect_log (id bigint, runner text, op text);
         CREATE FUNCTION log_effect() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN INSERT INTO effect_log VALUES (NEW.id, NEW.runner, TG_OP); RETURN NEW; END$$;
         CREATE TRIGGER logged AFTER INSERT OR UPDATE ON effect
           FOR EACH ROW EXECUTE FUNCTION log_effect();",
    );
}

fn runner(env: &Env, target: &str, state: &str, who: &str, args: &[&str]) -> Command {
    let mut c = env.cmd();
    c.env("IDEM_TEST_PG", target)
        .env("RUNNER", who)
        .args(args)
        .args(["--state", state, "--state-key", "once", "--format", "json"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn count(db: &str, sql: &str) -> usize {
    psql(db, sql).parse().unwrap()
}

/// Every record's effect committed exactly once, and its mark with it.
#[track_caller]
fn exactly_once(db: &str, n: usize) {
    assert_eq!(count(db, "SELECT count(*) FROM effect"), n, "every record");
    let twice = psql(
        db,
        "SELECT id || ' by ' || string_agg(runner || ' ' || op, ', ') FROM effect_log
         GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 5",
    );
    assert_eq!(twice, "", "records whose effect ran twice");
    assert_eq!(count(db, "SELECT count(*) FROM effect_log"), n);
    assert_eq!(count(db, "SELECT count(*) FROM idem.checkpoints"), n);
}

fn kill(mut child: Child) -> bool {
    let _ = child.kill();
    let status = child.wait().unwrap();
    status.signal() == Some(libc::SIGKILL)
}

#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(90), "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn processed(child: Child) -> u64 {
    let r = Run::from(child.wait_with_output().unwrap());
    r.code(0);
    let report = r.json();
    report["steps"][0]["counters"]["processed"]
        .as_u64()
        .unwrap_or_else(|| panic!("{report:#}"))
}

#[test]
fn four_cooperating_runners_one_killed_and_restarted_do_each_effect_exactly_once() {
    let db = fresh_db("once_coop");
    effect_tables(&db);
    let url = server().url_of(&db);
    let n = 3_000;
    let mut runners: Vec<(Env, Child)> = (0..4)
        .map(|i| {
            let env = Env::new();
            plan(&env, n);
            let child = runner(
                &env,
                &url,
                &url,
                &format!("r{i}"),
                &["apply", "--cooperate"],
            )
            .spawn()
            .unwrap();
            (env, child)
        })
        .collect();
    let (victim_env, victim) = runners.remove(0);
    wait_until("the runners committed no effect", || {
        count(&db, "SELECT count(*) FROM effect_log") >= n / 5
    });
    assert!(kill(victim), "the runner had ended before its kill");
    let restarted = runner(
        &victim_env,
        &url,
        &url,
        "r0-restarted",
        &["apply", "--cooperate"],
    )
    .spawn()
    .unwrap();
    let mut sum = 0;
    for (_, child) in runners {
        sum += processed(child);
    }
    sum += processed(restarted);
    exactly_once(&db, n);
    let by_runner: BTreeMap<String, usize> = psql(
        &db,
        "SELECT runner || '=' || count(*) FROM effect_log GROUP BY runner ORDER BY runner",
    )
    .lines()
    .map(|l| {
        let (r, c) = l.split_once('=').unwrap();
        (r.to_string(), c.parse().unwrap())
    })
    .collect();
    let killed = by_runner.get("r0").copied().unwrap_or(0);
    assert_eq!(
        sum as usize + killed,
        n,
        "the survivors' processed counts and the killed runner's committed effects sum to the records: {by_runner:?}"
    );
    assert!(by_runner.len() >= 3, "the work was shared: {by_runner:?}");
}

#[test]
fn a_runner_killed_at_random_points_and_rerun_does_each_effect_exactly_once() {
    let s = server();
    let db = fresh_db("once_kills");
    effect_tables(&db);
    // The state named through the Unix socket, the target through TCP: one database all
    // the same, which idem tells from the server's identity, not from the URL's text.
    let state = format!(
        "postgresql://idem@localhost/{db}?host={}&port={}",
        s.socket_dir.display(),
        s.port
    );
    let target = s.url_of(&db);
    let n = 1_000;
    let env = Env::new();
    plan(&env, n);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut rng = seed | 1;
    let mut kills = 0;
    let started = Instant::now();
    for attempt in 0..12 {
        let done_before = count(&db, "SELECT count(*) FROM effect");
        let child = runner(&env, &target, &state, &format!("a{attempt}"), &["apply"])
            .spawn()
            .unwrap();
        // xorshift: a kill somewhere in the first 2 s, whether during startup, a record's
        // transaction or between records.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = Duration::from_millis(100 + rng % 1900);
        std::thread::sleep(wait);
        if kill(child) {
            kills += 1;
        }
        let done = count(&db, "SELECT count(*) FROM effect");
        assert!(done >= done_before, "effects went away");
        if done == n || started.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    let last = runner(&env, &target, &state, "last", &["apply"])
        .spawn()
        .unwrap();
    processed(last);
    assert!(kills >= 2, "seed {seed}: only {kills} kills landed");
    exactly_once(&db, n);
    let again = runner(&env, &target, &state, "again", &["apply"])
        .spawn()
        .unwrap();
    assert_eq!(
        processed(again),
        0,
        "seed {seed}: a converged re-run did work"
    );
}
