//! Issue 13 (data safety): record values that cannot move or widen an effect, types that keep
//! the data, duplicate and vanished keys in `upsert`, and input that is refused rather than
//! guessed. Every test names the issue's section it covers.

use crate::support::{Env, assert_converges};

/// The failures of step `i` of a JSON report as (item, message).
fn failures(report: &serde_json::Value, i: usize) -> Vec<(String, String)> {
    report["steps"][i]["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| {
            (
                f["item"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

// Issue 13, section 2: an empty value would turn `tmp/{dir}` into `tmp`, and `.`, `..` or
// `a/b` would move the removal; each such record fails alone and names the field and value.
#[test]
fn record_values_cannot_collapse_or_move_a_recursive_remove() {
    let t = Env::new();
    t.write("tmp/keep/precious", "do not delete");
    t.write("tmp/gone/x", "old");
    t.write("data/db", "outside tmp");
    t.write(
        "dirs.json",
        r#"[{"id": 1, "dir": "gone"}, {"id": 2, "dir": ""}, {"id": 3, "dir": "."},
            {"id": 4, "dir": ".."}, {"id": 5, "dir": "../data"}, {"id": 6, "dir": "keep/../.."},
            {"id": 7, "dir": "ke\u0000ep"}]"#,
    );
    t.write(
        "idem.yml",
        "steps:\n  - each: dirs.json\n    key: id\n    steps:\n      - remove: \"tmp/{dir}\"\n        recursive: true\n",
    );
    let r = t.json(&["apply"], 1);
    assert_eq!(r["steps"][0]["counters"]["processed"], 1);
    assert_eq!(r["steps"][0]["counters"]["failed"], 6);
    let f = failures(&r, 0);
    assert_eq!(f[0].0, "record id=2");
    assert!(
        f[0].1.contains("`remove`: the value of `dir` is \"\""),
        "{f:?}"
    );
    assert!(f[1].1.contains("is \".\""), "{f:?}");
    assert!(f[2].1.contains("is \"..\""), "{f:?}");
    assert!(f[3].1.contains("is \"../data\""), "{f:?}");
    assert!(f[5].1.contains("NUL"), "{f:?}");
    assert!(!t.exists("tmp/gone"));
    assert_eq!(t.read("tmp/keep/precious"), "do not delete");
    assert_eq!(t.read("data/db"), "outside tmp");
}

// Issue 13, section 2: `{path:field}` takes a relative path, but never one that climbs out of
// the template's prefix.
#[test]
fn path_opt_in_writes_nested_files_but_stays_under_its_prefix() {
    let t = Env::new();
    t.write(
        "pages.csv",
        "id,rel\n1,docs/guide\n2,../escape\n3,a//b\n4,/etc/passwd\n",
    );
    t.write(
        "idem.yml",
        "steps:\n  - each: pages.csv\n    key: id\n    steps:\n      - file: \"site/{path:rel}.html\"\n        content: \"page {id}\\n\"\n",
    );
    let r = t.json(&["apply"], 1);
    assert_eq!(r["steps"][0]["counters"]["processed"], 1);
    assert_eq!(t.read("site/docs/guide.html"), "page 1\n");
    let f = failures(&r, 0);
    assert_eq!(f.len(), 3, "{f:?}");
    assert!(f[0].1.contains("`..` component"), "{f:?}");
    assert!(f[1].1.contains("empty component"), "{f:?}");
    assert!(f[2].1.contains("absolute"), "{f:?}");
    assert!(!t.exists("escape.html"));
}

// Issue 13, section 2: a `*` from a record would make `include` select every file.
#[test]
fn a_glob_character_in_a_record_cannot_widen_a_cleanup() {
    let t = Env::new();
    for f in ["logs/app.log", "logs/db.log", "logs/all.txt"] {
        t.write(f, "x");
        t.age(f, 100);
    }
    t.write("apps.csv", "name\napp\n*\n");
    t.write(
        "idem.yml",
        "steps:\n  - each: apps.csv\n    key: name\n    steps:\n      - cleanup: logs\n        older-than: 30d\n        include: \"{name}.log\"\n",
    );
    let r = t.json(&["apply"], 1);
    assert_eq!(r["steps"][0]["counters"]["processed"], 1);
    let f = failures(&r, 0);
    assert_eq!(f[0].0, "record name=*");
    assert!(
        f[0].1.contains("`include`: the value of `name` is \"*\""),
        "{f:?}"
    );
    assert!(!t.exists("logs/app.log"));
    assert!(t.exists("logs/db.log"), "the `*` record selected nothing");
    assert!(t.exists("logs/all.txt"));
}
