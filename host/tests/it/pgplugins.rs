//! Plugins reaching PostgreSQL (issue 15, item 7): a plugin opens only the databases its step
//! names, its statements run under the dry-run rule (rolled back), and transaction control,
//! role and session changes and every way out of the database are refused, by the host's
//! guard before the server sees them or by the session check after.

use crate::pg::{fresh_db, psql, server};
use crate::support::{Env, Run};

fn plugin_env(step: &str) -> Env {
    let t = Env::new();
    t.write("hostile.wasm", &crate::plugins::built().hostile);
    t.write(
        "idem.yml",
        format!("steps:\n  - plugin: hostile.wasm\n{step}"),
    );
    t
}

fn run(t: &Env, url: &str, args: &[&str]) -> Run {
    Run::from(
        t.cmd()
            .env("IDEM_TEST_PG", url)
            .env("IDEM_OTHER_PG", url)
            .args(args)
            .output()
            .unwrap(),
    )
}

fn pg_sql(sql: &str) -> String {
    format!(
        "    config: {{ mode: pg-sql, database: \"env:IDEM_TEST_PG\", sql: {} }}\n    databases: [\"env:IDEM_TEST_PG\"]\n",
        serde_json::to_string(sql).unwrap()
    )
}

#[test]
fn a_plugin_opens_only_the_postgres_databases_its_step_names() {
    let db = fresh_db("plugin_names");
    psql(&db, "CREATE TABLE t (id int PRIMARY KEY)");
    let url = server().url_of(&db);
    let t = plugin_env(
        "    config: { mode: pg-sql, database: \"env:IDEM_OTHER_PG\", sql: \"INSERT INTO t VALUES (1)\" }\n    databases: [\"env:IDEM_TEST_PG\"]\n",
    );
    let r = run(&t, &url, &["apply"]);
    r.code(1)
        .says("denied: env:IDEM_OTHER_PG: not among the step's databases (env:IDEM_TEST_PG)");
    let t = plugin_env(
        "    config: { mode: pg-sql, database: \"env:IDEM_TEST_PG\", sql: \"INSERT INTO t VALUES (1)\" }\n",
    );
    run(&t, &url, &["apply"])
        .code(1)
        .says("the step names no PostgreSQL database in `databases:`");
    assert_eq!(psql(&db, "SELECT count(*) FROM t"), "0");
    // Named, it is reached; under a dry run, rolled back.
    let t = plugin_env(&pg_sql("INSERT INTO t VALUES (1)"));
    run(&t, &url, &["plan"]).code(0);
    assert_eq!(
        psql(&db, "SELECT count(*) FROM t"),
        "0",
        "the dry run wrote"
    );
    let r = run(&t, &url, &["apply"]);
    r.code(0);
    assert_eq!(psql(&db, "SELECT count(*) FROM t"), "1");
    assert!(!r.all().contains(&server().password));
}

#[test]
fn a_well_behaved_plugin_converges_in_postgres_and_its_dry_run_commits_nothing() {
    let db = fresh_db("plugin_items");
    let url = server().url_of(&db);
    let t = plugin_env(
        "    config: { mode: pg-items, database: \"env:IDEM_TEST_PG\", items: [a, b, c] }\n    databases: [\"env:IDEM_TEST_PG\"]\n",
    );
    let inserted = |r: &Run| r.json()["steps"][0]["counters"]["inserted"].clone();
    let planned = run(&t, &url, &["plan", "--format", "json"]);
    planned.code(0);
    assert_eq!(inserted(&planned), 3);
    assert_eq!(
        psql(&db, "SELECT to_regclass('items') IS NULL"),
        "t",
        "the dry run's CREATE TABLE was committed"
    );
    let applied = run(&t, &url, &["apply", "--format", "json"]);
    applied.code(0);
    assert_eq!(inserted(&applied), 3);
    assert_eq!(
        psql(&db, "SELECT string_agg(name, ',' ORDER BY name) FROM items"),
        "a,b,c"
    );
    let again = run(&t, &url, &["apply", "--format", "json"]);
    again.code(0);
    assert_eq!(inserted(&again), 0);
}

#[test]
fn a_hostile_plugin_is_refused_transaction_control_role_changes_and_every_escape() {
    let db = fresh_db("plugin_hostile");
    psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE ROLE other NOLOGIN; GRANT other TO idem;",
    );
    let url = server().url_of(&db);
    let refused = [
        ("BEGIN", "the host owns the transaction"),
        ("commit", "the host owns the transaction"),
        ("/* hidden */ ROLLBACK", "the host owns the transaction"),
        ("SAVEPOINT s", "the host owns the transaction"),
        ("PREPARE TRANSACTION 'x'", "the host owns the transaction"),
        ("SET ROLE other", "role or settings"),
        ("SET SESSION AUTHORIZATION other", "role or settings"),
        ("SET search_path = pg_temp", "role or settings"),
        ("SELECT set_config('role', 'other', false)", "`set_config`"),
        (
            "SELECT pg_catalog.\"set_config\"('search_path', 'x', false)",
            "`set_config`",
        ),
        ("CREATE EXTENSION dblink", "data and table commands only"),
        (
            "CREATE EXTENSION postgres_fdw",
            "data and table commands only",
        ),
        (
            "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw",
            "data and table commands only",
        ),
        (
            "SELECT dblink_exec('dbname=postgres', 'CREATE TABLE x ()')",
            "`dblink_exec`",
        ),
        (
            "COPY t FROM PROGRAM 'id'",
            "COPY runs only through `copy-in`",
        ),
        (
            "COPY t TO '/tmp/idem-escape'",
            "COPY runs only through `copy-in`",
        ),
        ("DO $$BEGIN EXECUTE 'COMMIT'; END$$", "code blocks"),
        ("CALL p()", "code blocks"),
        ("SELECT lo_import('/etc/passwd')", "`lo_import`"),
        ("SELECT lo_export(1, '/tmp/idem-escape')", "`lo_export`"),
        ("SELECT pg_read_file('/etc/passwd')", "`pg_read_file`"),
        ("SELECT pg_ls_dir('.')", "`pg_ls_dir`"),
        ("LISTEN idem", "notifications"),
        ("NOTIFY idem", "notifications"),
        (
            "SELECT pg_advisory_unlock_all()",
            "`pg_advisory_unlock_all`",
        ),
        (
            "SELECT query_to_xml('DELETE FROM t', true, true, '')",
            "`query_to_xml`",
        ),
        ("INSERT INTO t VALUES (9); COMMIT", "one statement per call"),
        ("DELETE FROM idem.checkpoints", "idem's own schema"),
        ("SELECT U&\"d\\0062link\"('x')", "U& escapes"),
    ];
    let t = plugin_env("");
    for (i, (sql, why)) in refused.into_iter().enumerate() {
        t.write(
            "idem.yml",
            format!("steps:\n  - plugin: hostile.wasm\n{}", pg_sql(sql)),
        );
        let modes: &[&str] = if i < 6 {
            &["plan", "apply"]
        } else {
            &["apply"]
        };
        for &mode in modes {
            let r = run(&t, &url, &[mode]);
            r.code(1).says("denied").says(why);
            assert!(!r.all().contains(&server().password));
        }
    }
    // COPY through copy-in: only FROM STDIN.
    for sql in [
        "COPY t FROM PROGRAM 'id'",
        "COPY t FROM '/etc/passwd'",
        "COPY t TO STDOUT",
    ] {
        t.write(
            "idem.yml",
            format!(
                "steps:\n  - plugin: hostile.wasm\n    config: {{ mode: pg-copy, database: \"env:IDEM_TEST_PG\", sql: {}, content: \"1\\n\" }}\n    databases: [\"env:IDEM_TEST_PG\"]\n",
                serde_json::to_string(sql).unwrap()
            ),
        );
        run(&t, &url, &["apply"])
            .code(1)
            .says("denied")
            .says("FROM STDIN");
    }
    // Transaction control from inside the host's transaction: refused, the rows rolled back.
    t.write(
        "idem.yml",
        "steps:\n  - plugin: hostile.wasm\n    config: { mode: pg-items, database: \"env:IDEM_TEST_PG\", items: [x], sql: \"COMMIT\" }\n    databases: [\"env:IDEM_TEST_PG\"]\n",
    );
    run(&t, &url, &["apply"])
        .code(1)
        .says("the host owns the transaction");
    assert_eq!(psql(&db, "SELECT count(*) FROM items"), "0");
    // A role change the guard cannot see (a function the database already has): the session
    // check after the statement fails the step, and nothing it did is kept.
    psql(
        &db,
        "CREATE FUNCTION sneak() RETURNS int LANGUAGE plpgsql AS
           $$BEGIN PERFORM set_config('role', 'other', false); RETURN 1; END$$",
    );
    t.write(
        "idem.yml",
        "steps:\n  - plugin: hostile.wasm\n    config: { mode: pg-items, database: \"env:IDEM_TEST_PG\", items: [y], sql: \"SELECT sneak()\" }\n    databases: [\"env:IDEM_TEST_PG\"]\n",
    );
    run(&t, &url, &["apply"])
        .code(1)
        .says("changed the session's role or search_path");
    assert_eq!(psql(&db, "SELECT count(*) FROM items"), "0");
    // The well-behaved statements of the same plugin still pass, and the data is intact.
    t.write(
        "idem.yml",
        format!(
            "steps:\n  - plugin: hostile.wasm\n{}",
            pg_sql("INSERT INTO t VALUES (2)")
        ),
    );
    run(&t, &url, &["apply"]).code(0);
    assert_eq!(psql(&db, "SELECT string_agg(id::text, ',') FROM t"), "2");
    assert!(!std::path::Path::new("/tmp/idem-escape").exists());
}
