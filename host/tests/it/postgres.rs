//! PostgreSQL as a target (issue 15): `upsert` into a real server, dry runs against it, and
//! names (URL, `env:NAME`) that never print a password.

use crate::pg::{fresh_db, psql, server};
use crate::support::Env;

fn counters(report: &serde_json::Value, i: usize) -> serde_json::Value {
    report["steps"][i]["counters"].clone()
}

fn counts(report: &serde_json::Value, i: usize) -> (u64, u64, u64) {
    let c = counters(report, i);
    let n = |k: &str| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("no counter {k}: {c}"))
    };
    (n("inserted"), n("updated"), n("unchanged"))
}

/// A plan upserting `t.csv` into table `t` of the database named by `IDEM_TEST_PG`.
const PLAN: &str =
    "steps:\n  - upsert: env:IDEM_TEST_PG\n    table: t\n    key: id\n    from: t.csv\n";

/// An environment whose plan names database `db` through `IDEM_TEST_PG` (with the password).
fn env_for(db: &str) -> (Env, String) {
    let t = Env::new();
    t.write("idem.yml", PLAN);
    (t, server().url_of(db))
}

fn run(t: &Env, url: &str, args: &[&str], code: i32) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let r = crate::support::Run::from(
        t.cmd()
            .env("IDEM_TEST_PG", url)
            .args(&a)
            .output()
            .expect("running idem"),
    );
    r.code(code);
    r.json()
}

/// Every row of `t` with its row version, ordered by key.
fn versions(db: &str) -> String {
    psql(db, "SELECT xmin::text, t::text FROM t ORDER BY id")
}

#[test]
fn upsert_into_postgres_converges_with_exact_counts_and_rewrites_nothing() {
    let db = fresh_db("converge");
    let (t, url) = env_for(&db);
    t.write("t.csv", "id,zip,name\n1,01234,ada\n2,10115,bob\n3,,cy\n");
    let r = run(&t, &url, &["apply"], 0);
    assert_eq!(counts(&r, 0), (3, 0, 0));
    assert_eq!(
        psql(
            &db,
            "SELECT id, zip, name, pg_typeof(zip) FROM t ORDER BY id"
        ),
        "1|01234|ada|text\n2|10115|bob|text\n3||cy|text"
    );
    // A trigger that counts every row it sees written.
    psql(
        &db,
        "CREATE TABLE writes (n int); INSERT INTO writes VALUES (0);
         CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN UPDATE writes SET n = n + 1; RETURN NEW; END$$;
         CREATE TRIGGER counted BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION count_write();",
    );
    let before = versions(&db);
    let r = run(&t, &url, &["apply"], 0);
    assert_eq!(counts(&r, 0), (0, 0, 3));
    assert_eq!(versions(&db), before, "an unchanged row got a new version");
    assert_eq!(psql(&db, "SELECT n FROM writes"), "0", "a trigger fired");

    // One changed, one new: plan says exactly what apply then does.
    t.write(
        "t.csv",
        "id,zip,name\n1,01234,ada\n2,10115,bert\n3,,cy\n4,99999,dee\n",
    );
    let planned = run(&t, &url, &["plan"], 0);
    assert_eq!(counts(&planned, 0), (1, 1, 2));
    assert_eq!(versions(&db), before, "the dry run changed the table");
    assert_eq!(psql(&db, "SELECT n FROM writes"), "0");
    let applied = run(&t, &url, &["apply"], 0);
    assert_eq!(counters(&applied, 0), counters(&planned, 0));
    assert_eq!(psql(&db, "SELECT n FROM writes"), "2");
    assert_eq!(counts(&run(&t, &url, &["apply"], 0), 0), (0, 0, 4));
}

#[test]
fn plan_equals_apply_on_a_fresh_database_and_leaves_it_empty() {
    let db = fresh_db("fresh");
    let (t, url) = env_for(&db);
    t.write("t.csv", "id,n\n1,10\n2,20\n");
    let planned = run(&t, &url, &["plan"], 0);
    assert_eq!(counts(&planned, 0), (2, 0, 0));
    assert_eq!(
        psql(&db, "SELECT to_regclass('t') IS NULL"),
        "t",
        "plan created the table"
    );
    run(&t, &url, &["check"], 2);
    assert_eq!(psql(&db, "SELECT to_regclass('t') IS NULL"), "t");
    let applied = run(&t, &url, &["apply"], 0);
    assert_eq!(counters(&applied, 0), counters(&planned, 0));
    assert_eq!(psql(&db, "SELECT pg_typeof(n) FROM t LIMIT 1"), "bigint");
    run(&t, &url, &["check"], 0);
}

#[test]
fn later_steps_of_a_dry_run_see_earlier_planned_rows() {
    let db = fresh_db("seen");
    let t = Env::new();
    t.write("a.csv", "id,v\n1,x\n2,y\n");
    t.write("b.csv", "id,v\n1,x\n2,z\n3,w\n");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: env:IDEM_TEST_PG\n    table: t\n    key: id\n    from: a.csv\n\
         \x20 - upsert: env:IDEM_TEST_PG\n    table: t\n    key: id\n    from: b.csv\n",
    );
    let url = server().url_of(&db);
    let planned = run(&t, &url, &["plan"], 0);
    assert_eq!(counts(&planned, 0), (2, 0, 0));
    assert_eq!(
        counts(&planned, 1),
        (1, 1, 1),
        "the second step did not see the first's rows"
    );
    assert_eq!(psql(&db, "SELECT to_regclass('t') IS NULL"), "t");
    let applied = run(&t, &url, &["apply"], 0);
    assert_eq!(counters(&applied, 1), counters(&planned, 1));
}

#[test]
fn twenty_digit_keys_stay_apart_and_leading_zeros_stay() {
    let db = fresh_db("wide");
    let (t, url) = env_for(&db);
    t.write(
        "t.csv",
        "id,acct\n12345678901234567890,007\n12345678901234567891,008\n",
    );
    assert_eq!(counts(&run(&t, &url, &["apply"], 0), 0), (2, 0, 0));
    assert_eq!(
        psql(&db, "SELECT id, acct FROM t ORDER BY id"),
        "12345678901234567890|007\n12345678901234567891|008"
    );
    assert_eq!(counts(&run(&t, &url, &["apply"], 0), 0), (0, 0, 2));
}

#[test]
fn a_failing_load_commits_nothing_and_names_the_constraint() {
    let db = fresh_db("constraint");
    psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, n int CHECK (n > 0))",
    );
    let (t, url) = env_for(&db);
    t.write("t.csv", "id,n\n1,5\n2,-1\n");
    let mut cmd = t.cmd();
    let r = crate::support::Run::from(
        cmd.env("IDEM_TEST_PG", &url)
            .args(["apply"])
            .output()
            .unwrap(),
    );
    r.code(1).says("t_n_check");
    assert_eq!(psql(&db, "SELECT count(*) FROM t"), "0");
}

#[test]
fn repeated_keys_in_the_source_are_named() {
    let db = fresh_db("dupes");
    let (t, url) = env_for(&db);
    t.write("t.csv", "id,n\n1,5\n1,6\n");
    let r = crate::support::Run::from(
        t.cmd()
            .env("IDEM_TEST_PG", &url)
            .args(["apply"])
            .output()
            .unwrap(),
    );
    r.code(1).says("(id) = (1) appears in more than one record");
}

#[test]
fn existing_table_without_a_unique_index_on_the_key_is_refused_naming_the_index() {
    let db = fresh_db("nokey");
    psql(&db, "CREATE TABLE t (id int, n int)");
    let (t, url) = env_for(&db);
    t.write("t.csv", "id,n\n1,5\n");
    let r = crate::support::Run::from(
        t.cmd()
            .env("IDEM_TEST_PG", &url)
            .args(["apply"])
            .output()
            .unwrap(),
    );
    r.code(1)
        .says("no primary key or unique index on exactly (id)")
        .says("CREATE UNIQUE INDEX \"t_id_key\" ON \"t\" (\"id\")");
    psql(&db, "CREATE UNIQUE INDEX t_id_key ON t (id)");
    assert_eq!(counts(&run(&t, &url, &["apply"], 0), 0), (1, 0, 0));
}

#[test]
fn an_unset_env_name_is_a_clear_error() {
    let t = Env::new();
    t.write("idem.yml", PLAN);
    t.write("t.csv", "id\n1\n");
    let r = crate::support::Run::from(
        t.cmd()
            .env_remove("IDEM_TEST_PG")
            .args(["apply"])
            .output()
            .unwrap(),
    );
    r.code(1)
        .says("environment variable IDEM_TEST_PG (named by `env:IDEM_TEST_PG`) is not set");
}

#[test]
fn a_password_is_never_printed_nor_stored() {
    let s = server();
    let db = fresh_db("secret");
    psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, n int CHECK (n > 0))",
    );
    let wrong = "wr0ng-Pass-w0rd-7731";
    let cases = [
        // A wrong password: the server refuses the login.
        format!("postgresql://idem:{wrong}@127.0.0.1:{}/{db}", s.port),
        // Nothing listens there.
        format!("postgresql://idem:{wrong}@127.0.0.1:1/{db}?connect_timeout=2"),
        // The right password, and a constraint the load breaks.
        s.url_of(&db),
    ];
    for url in &cases {
        let t = Env::new();
        t.write("idem.yml", PLAN);
        t.write("t.csv", "id,n\n1,-5\n");
        let mut printed = String::new();
        for args in [
            &["apply"][..],
            &["apply", "-v"],
            &["plan", "--diff"],
            &["check"],
            &["apply", "--format", "json"],
            &["plan", "--format", "json"],
            &["history"],
            &["history", "--format", "json"],
        ] {
            let r = crate::support::Run::from(
                t.cmd()
                    .env("IDEM_TEST_PG", url)
                    .args(args)
                    .output()
                    .unwrap(),
            );
            if args[0] != "history" {
                assert_ne!(r.code, 0, "{args:?} with {url} succeeded:\n{}", r.all());
            }
            printed.push_str(&r.all());
        }
        // The plan may also spell the URL itself.
        t.write(
            "idem.yml",
            format!("steps:\n  - upsert: {url}\n    table: t\n    key: id\n    from: t.csv\n"),
        );
        printed.push_str(&t.idem(&["apply", "-v"]).all());
        assert!(
            printed.contains("127.0.0.1"),
            "no database named:\n{printed}"
        );
        for secret in [wrong, s.password.as_str()] {
            assert!(!printed.contains(secret), "password printed:\n{printed}");
            for (name, bytes) in t.state_files() {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(secret),
                    "password stored in .idem/{name}"
                );
            }
        }
    }
}

#[test]
fn a_password_from_pgpassword_connects_and_is_never_printed() {
    let s = server();
    let db = fresh_db("pgpassword");
    let t = Env::new();
    t.write("idem.yml", PLAN);
    t.write("t.csv", "id,n\n1,-5\n");
    psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, n int CHECK (n > 0))",
    );
    let r = crate::support::Run::from(
        t.cmd()
            .env("IDEM_TEST_PG", s.url_without_password(&db))
            .env("PGPASSWORD", &s.password)
            .args(["apply", "-v"])
            .output()
            .unwrap(),
    );
    r.code(1).says("t_n_check");
    assert!(!r.all().contains(&s.password));
}

#[test]
fn tls_require_verify_ca_and_verify_full_reach_the_server_by_its_test_ca_and_a_wrong_ca_is_refused()
{
    let s = server();
    let db = fresh_db("tls");
    // Each row records whether the session that wrote it speaks TLS.
    psql(
        &db,
        "CREATE TABLE t (id text PRIMARY KEY, tls boolean);
         CREATE FUNCTION note_tls() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN NEW.tls := (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()); RETURN NEW; END$$;
         CREATE TRIGGER noted BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION note_tls();",
    );
    let (t, _) = env_for(&db);
    let ca = s.ca.display().to_string();
    let url = |host: &str, query: &str| {
        format!(
            "postgresql://idem:{}@{host}:{}/{db}?{query}",
            s.password, s.port
        )
    };
    let cases = [
        ("disable", url("127.0.0.1", "sslmode=disable"), false),
        ("prefer", url("127.0.0.1", "sslmode=prefer"), true),
        ("require", url("127.0.0.1", "sslmode=require"), true),
        (
            "verify-ca",
            url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
            true,
        ),
        (
            "verify-full-ip",
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            true,
        ),
        (
            "verify-full-name",
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            true,
        ),
        // The name is not the certificate's, the address is the server's: verify-ca checks
        // only the chain.
        (
            "verify-ca-other-name",
            url(
                "db.invalid",
                &format!("hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={ca}"),
            ),
            true,
        ),
    ];
    for (id, url, tls) in &cases {
        t.write("t.csv", format!("id\n{id}\n"));
        let r = run(&t, url, &["apply"], 0);
        assert_eq!(r["steps"][0]["counters"]["inserted"], 1, "{id}");
        assert_eq!(
            psql(&db, &format!("SELECT tls FROM t WHERE id = '{id}'")),
            if *tls { "t" } else { "f" },
            "{id}"
        );
    }
    // The state store and its lock speak TLS alike.
    t.write("t.csv", "id\nstate\n");
    let state = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let r = crate::support::Run::from(
        t.cmd()
            .env("IDEM_TEST_PG", url("127.0.0.1", "sslmode=require"))
            .args(["apply", "--state", &state, "--state-key", "tls"])
            .output()
            .unwrap(),
    );
    r.code(0);
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM idem.runs WHERE state_key = 'tls'"
        ),
        "1"
    );

    // Refused, each saying why, none showing the password.
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = other.path().join("wrong-ca.crt");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not the CA",
        ])
        .arg("-keyout")
        .arg(other.path().join("wrong-ca.key"))
        .arg("-out")
        .arg(&wrong_ca)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let wrong = wrong_ca.display().to_string();
    let refused = [
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={wrong}"),
            ),
            "certificate",
        ),
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={wrong}"),
            ),
            "certificate",
        ),
        (
            url(
                "db.invalid",
                &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"),
            ),
            "certificate",
        ),
        (url("127.0.0.1", "sslmode=verify-full"), "need sslrootcert"),
        (
            url(
                "127.0.0.1",
                "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            ),
            "/nonexistent/ca.pem",
        ),
        (
            url("127.0.0.1", "sslmode=sometimes"),
            "sslmode `sometimes` is not one of",
        ),
        (
            url("127.0.0.1", "sslmode=require&sslcert=/x.pem"),
            "`sslcert` is not supported",
        ),
    ];
    t.write("t.csv", "id\nrefused\n");
    for (url, says) in &refused {
        let r = crate::support::Run::from(
            t.cmd()
                .env("IDEM_TEST_PG", url)
                .args(["apply"])
                .output()
                .unwrap(),
        );
        r.code(1).says(says);
        assert!(!r.all().contains(&s.password), "{url}");
    }
    assert_eq!(
        psql(&db, "SELECT count(*) FROM t WHERE id = 'refused'"),
        "0"
    );
}

#[test]
fn an_each_sub_step_upserts_into_postgres_named_by_env() {
    let db = fresh_db("each");
    let t = Env::new();
    t.write("teams.csv", "team\nred\nblue\n");
    t.write("members/red.csv", "id,team\n1,red\n2,red\n");
    t.write("members/blue.csv", "id,team\n3,blue\n");
    t.write(
        "idem.yml",
        "steps:\n  - each: teams.csv\n    key: team\n    steps:\n      - upsert: env:IDEM_TEST_PG\n        table: members\n        key: id\n        from: \"members/{team}.csv\"\n",
    );
    let url = server().url_of(&db);
    run(&t, &url, &["plan"], 0);
    assert_eq!(psql(&db, "SELECT to_regclass('members') IS NULL"), "t");
    run(&t, &url, &["apply"], 0);
    assert_eq!(
        psql(&db, "SELECT id, team FROM members ORDER BY id"),
        "1|red\n2|red\n3|blue"
    );
    run(&t, &url, &["check"], 0);
}

/// Found by the 100,000-row benchmark: into a table analyzed while empty, the merge's INSERT
/// was planned as a nested loop over a sequential scan of the table, which then rescanned
/// every row it had added so far (minutes). It now goes by the key's index.
#[test]
fn a_bulk_load_into_a_table_analyzed_while_empty_goes_by_the_key_index() {
    let db = fresh_db("analyzed_empty");
    psql(&db, "CREATE TABLE t (id bigint PRIMARY KEY, name text)");
    psql(&db, "VACUUM ANALYZE t");
    let (t, url) = env_for(&db);
    let n = 50_000;
    let mut csv = String::from("id,name\n");
    for i in 0..n {
        csv.push_str(&format!("{i},name {i}\n"));
    }
    t.write("t.csv", csv);
    // Any one statement over 30 s fails the run: the quadratic plan took minutes here.
    let url = format!("{url}?options=-c%20statement_timeout%3D30s");
    let r = run(&t, &url, &["apply"], 0);
    assert_eq!(counts(&r, 0), (n, 0, 0));
    psql(&db, "UPDATE t SET name = 'x' WHERE id % 2 = 0");
    psql(&db, "VACUUM ANALYZE t");
    let r = run(&t, &url, &["apply"], 0);
    assert_eq!(counts(&r, 0), (0, n / 2, n / 2));
    assert_eq!(psql(&db, "SHOW enable_seqscan"), "on");
}

/// Found by the cooperation benchmark: an `each` record's one-row upsert hashed the whole
/// table (the unanalyzed staging table looked like hundreds of rows), so a run over N records
/// into a table of M rows read N × M rows. Each record's row is now found by the key's index:
/// the table's scan counters grow by a few rows per record, not by its size.
#[test]
fn an_each_record_finds_its_row_by_the_key_index_not_by_reading_the_whole_table() {
    let db = fresh_db("per_record_index");
    psql(&db, "CREATE TABLE t (id bigint PRIMARY KEY, name text)");
    psql(
        &db,
        "INSERT INTO t SELECT i, 'old ' || i FROM generate_series(1, 5000) i",
    );
    psql(&db, "VACUUM ANALYZE t");
    let t = Env::new();
    let records = 40;
    let mut csv = String::from("id,name\n");
    for i in 0..records {
        // Half of them update a row that is there, half insert a new one.
        let id = if i % 2 == 0 { i + 1 } else { 10_000 + i };
        csv.push_str(&format!("{id},new {id}\n"));
    }
    t.write("r.csv", csv);
    t.write(
        "idem.yml",
        "steps:\n  - each: r.csv\n    key: id\n    steps:\n      - upsert: env:IDEM_TEST_PG\n        table: t\n        key: id\n        rows: [{id: \"{id}\", name: \"{name}\"}]\n",
    );
    let read = || -> u64 {
        psql(
            &db,
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 't'",
        )
        .parse()
        .unwrap()
    };
    // The setup's own reads (VACUUM ANALYZE) are published by then.
    let mut before = read();
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = read();
        if now == before && now > 0 {
            break;
        }
        before = now;
    }
    let r = run(&t, &server().url_of(&db), &["apply"], 0);
    assert_eq!(r["steps"][0]["counters"]["processed"], records);
    // Give the server a moment to publish the finished sessions' counters.
    let mut rows_read = read() - before;
    for _ in 0..20 {
        if rows_read > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        rows_read = read() - before;
    }
    assert!(
        rows_read < records * 20,
        "{records} one-row upserts read {rows_read} rows of a 5,000-row table"
    );
    assert_eq!(
        psql(&db, "SELECT count(*) FROM t WHERE name LIKE 'new %'"),
        "40"
    );
}
