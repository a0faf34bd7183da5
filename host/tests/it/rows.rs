//! Inline rows (issue 15, item 2): `upsert` with `rows:` instead of `from:`, into SQLite and
//! PostgreSQL, at the top level and templated inside `each`, with the counts, dry run and
//! type rules of a CSV source.

use crate::pg::{fresh_db, psql, server};
use crate::support::{Env, Run, assert_converges};

fn counts(report: &serde_json::Value, i: usize) -> (u64, u64, u64) {
    let c = &report["steps"][i]["counters"];
    let n = |k: &str| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("no counter {k}: {c}"))
    };
    (n("inserted"), n("updated"), n("unchanged"))
}

const ROWS: &str = "steps:
  - upsert: DB
    table: t
    key: id
    rows:
      - {id: \"1\", zip: \"01234\", name: ada}
      - {id: 2, zip: \"10115\", name: bob}
      - {name: cy, id: \"3\", zip: \"\"}
";

#[test]
fn inline_rows_upsert_into_sqlite_with_csv_types_and_exact_counts() {
    let t = Env::new();
    t.write("idem.yml", ROWS.replace("DB", "app.db"));
    let r = assert_converges(&t, &[]);
    assert_eq!(counts(&r, 0), (3, 0, 0));
    // Typed as a CSV source's fields: `1` an integer, `01234` kept as text; row 3's fields
    // in row 1's order.
    assert_eq!(
        t.rows(
            "app.db",
            "SELECT id, typeof(id), zip, typeof(zip), name FROM t ORDER BY id"
        ),
        [
            "1|integer|01234|text|ada",
            "2|integer|10115|text|bob",
            "3|integer||text|cy"
        ]
    );
    assert_eq!(counts(&t.json(&["apply"], 0), 0), (0, 0, 3));
    // One changed, one new: plan predicts apply.
    t.write(
        "idem.yml",
        ROWS.replace("DB", "app.db")
            .replace("name: bob", "name: bert")
            + "      - {id: \"4\", zip: \"99999\", name: dee}\n",
    );
    let planned = t.json(&["plan"], 0);
    assert_eq!(counts(&planned, 0), (1, 1, 2));
    let applied = t.json(&["apply"], 0);
    assert_eq!(counts(&applied, 0), (1, 1, 2));
    assert_eq!(counts(&t.json(&["apply"], 0), 0), (0, 0, 4));
}

/// An `each` whose records are written where they are processed, into SQLite.
const EACH: &str = "steps:
  - dir: out
  - each: users.csv
    key: id
    steps:
      - file: \"out/{id}.txt\"
        content: \"{name}\\n\"
      - upsert: DB
        table: users
        key: id
        rows: [{id: \"{id}\", name: \"{name}\", tag: \"user-{id}\"}]
";

#[test]
fn each_writes_its_records_with_inline_rows_into_sqlite() {
    let t = Env::new();
    t.write("users.csv", "id,name\n1,ada\n2,bob\n3,cy\n");
    t.write("idem.yml", EACH.replace("DB", "app.db"));
    let r = assert_converges(&t, &[]);
    assert_eq!(r["steps"][1]["counters"]["processed"], 3);
    assert_eq!(
        t.rows("app.db", "SELECT id, name, tag FROM users ORDER BY id"),
        ["1|ada|user-1", "2|bob|user-2", "3|cy|user-3"]
    );
    // A changed record is written again, and only it.
    t.write("users.csv", "id,name\n1,ada\n2,bert\n3,cy\n");
    let planned = t.json(&["plan"], 0);
    assert_eq!(planned["steps"][1]["counters"]["processed"], 1);
    let applied = t.json(&["apply"], 0);
    assert_eq!(applied["steps"][1]["counters"]["processed"], 1);
    assert_eq!(
        t.rows("app.db", "SELECT name FROM users WHERE id = 2"),
        ["bert"]
    );
}

#[test]
fn inline_rows_upsert_into_postgres_outside_and_inside_each() {
    let db = fresh_db("rows");
    let url = server().url_of(&db);
    let t = Env::new();
    t.write("idem.yml", ROWS.replace("DB", "env:IDEM_TEST_PG"));
    let run = |args: &[&str], code: i32| {
        let r = Run::from(
            t.cmd()
                .env("IDEM_TEST_PG", &url)
                .args(args)
                .args(["--format", "json"])
                .output()
                .unwrap(),
        );
        r.code(code);
        r.json()
    };
    let planned = run(&["plan"], 0);
    assert_eq!(counts(&planned, 0), (3, 0, 0));
    assert_eq!(psql(&db, "SELECT to_regclass('t') IS NULL"), "t");
    assert_eq!(counts(&run(&["apply"], 0), 0), (3, 0, 0));
    assert_eq!(
        psql(
            &db,
            "SELECT id, pg_typeof(id), zip, pg_typeof(zip), name FROM t ORDER BY id"
        ),
        "1|bigint|01234|text|ada\n2|bigint|10115|text|bob\n3|bigint||text|cy"
    );
    let before = psql(&db, "SELECT xmin::text FROM t ORDER BY id");
    assert_eq!(counts(&run(&["apply"], 0), 0), (0, 0, 3));
    assert_eq!(psql(&db, "SELECT xmin::text FROM t ORDER BY id"), before);

    t.write("users.csv", "id,name\n1,ada\n2,bob\n3,cy\n");
    t.write("idem.yml", EACH.replace("DB", "env:IDEM_TEST_PG"));
    let planned = run(&["plan"], 0);
    assert_eq!(planned["steps"][1]["counters"]["processed"], 3);
    assert_eq!(psql(&db, "SELECT to_regclass('users') IS NULL"), "t");
    let applied = run(&["apply"], 0);
    assert_eq!(applied["steps"][1]["counters"]["processed"], 3);
    assert_eq!(
        psql(&db, "SELECT id, name, tag FROM users ORDER BY id"),
        "1|ada|user-1\n2|bob|user-2\n3|cy|user-3"
    );
    assert_eq!(run(&["apply"], 0)["steps"][1]["counters"]["processed"], 0);
    run(&["check"], 0);
}

#[test]
fn rows_and_from_together_or_neither_are_plan_errors_with_their_place() {
    let t = Env::new();
    t.write("t.csv", "id\n1\n");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: t\n    key: id\n    from: t.csv\n    rows: [{id: \"1\"}]\n",
    );
    t.idem(&["plan"])
        .code(1)
        .says("idem.yml:6:11")
        .says("both `from` and `rows`")
        .says("give exactly one");
    t.idem(&["validate"]).code(1).says("both `from` and `rows`");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: t\n    key: id\n",
    );
    t.idem(&["plan"])
        .code(1)
        .says("idem.yml:2:5")
        .says("neither `from` nor `rows`");
    // Inside `each` too, and the rows' own mistakes.
    t.write(
        "idem.yml",
        "steps:\n  - each: t.csv\n    key: id\n    steps:\n      - upsert: app.db\n        table: t\n        key: id\n        rows: [{id: \"{id}\"}]\n        from: t.csv\n",
    );
    t.idem(&["plan"])
        .code(1)
        .says("idem.yml:8:15")
        .says("both `from` and `rows`");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: t\n    key: id\n    rows:\n      - {id: \"1\", a: x}\n      - {id: \"2\", b: y}\n",
    );
    t.idem(&["plan"])
        .code(1)
        .says("idem.yml:7:9")
        .says("row 2 of `rows` names the columns id, b, but row 1 names id, a");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: t\n    key: uid\n    rows: [{id: \"1\"}]\n",
    );
    t.idem(&["plan"])
        .code(1)
        .says("the key `uid` is not among the columns of `rows`");
    t.write(
        "idem.yml",
        "steps:\n  - each: t.csv\n    key: id\n    steps:\n      - upsert: app.db\n        table: t\n        key: id\n        rows: [{id: \"{idd}\"}]\n",
    );
    t.idem(&["plan"])
        .code(1)
        .says("`{idd}`")
        .says("did you mean `{id}`?");
    assert!(!t.exists("app.db"), "a refused plan wrote a database");
}
