//! The headline guarantee (issue 3): what `idem plan` predicts is exactly what `idem apply`
//! then does, step by step, change by change, count by count; on a fresh tree and on a partly
//! converged one. The corpus lives in tests/fidelity/, one directory per case.

use std::path::{Path, PathBuf};

use crate::support::*;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fidelity");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("idem.yml").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 9,
        "the fidelity corpus is smaller than expected: {cases:?}"
    );
    cases
}

/// Copy a case into a fresh root; every file is made 30 days old, so cleanups have work.
fn load(case: &Path) -> Env {
    let t = Env::new();
    copy_tree(case, t.root());
    for (rel, node) in t.snapshot() {
        if matches!(node, Node::File { .. }) {
            t.age(&rel, 30);
        }
    }
    t
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
fn plan_predicts_apply_on_every_case_of_the_corpus_on_a_fresh_tree() {
    for case in corpus() {
        let t = load(&case);
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let applied = std::panic::catch_unwind(|| assert_converges(&t, &[]))
            .unwrap_or_else(|_| panic!("fidelity case {name} failed (see above)"));
        assert!(
            !changes(&applied).is_empty(),
            "case {name} changed nothing: it tests nothing"
        );
    }
}

#[test]
fn plan_predicts_apply_on_a_partly_converged_tree() {
    for case in corpus() {
        let t = load(&case);
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let first = t.json(&["apply"], 0);
        // Undo part of the work: every other file the apply created or updated goes, and
        // every other one that stays is edited.
        let mut touched = 0;
        for (i, (_, kind, path, _)) in changes(&first).into_iter().enumerate() {
            if (kind == "create-file" || kind == "update-file") && t.exists(&path) {
                if i % 2 == 0 {
                    std::fs::remove_file(t.path(&path)).unwrap();
                } else {
                    t.write(&path, "edited by hand\n");
                }
                touched += 1;
            }
        }
        if touched == 0 {
            continue;
        }
        std::panic::catch_unwind(|| assert_converges(&t, &[])).unwrap_or_else(|_| {
            panic!("fidelity case {name} (partly converged) failed (see above)")
        });
    }
}

#[test]
fn a_dry_run_sees_a_removed_tree_recreated_in_the_same_run() {
    // Not idempotent by design (every run removes and recreates), so only plan against
    // apply is compared: the overlay must hide the removed tree's old children.
    let t = Env::new();
    t.write("site/old.html", "old");
    t.write("site/deep/er.txt", "old");
    t.write(
        "idem.yml",
        "steps:\n  - remove: site\n    recursive: true\n  - dir: site/deep\n  - file: site/index.html\n    content: new\n  - cleanup: site\n    older-than: 0s\n",
    );
    let before = t.snapshot();
    let planned = t.json(&["plan"], 0);
    assert_same_tree(&before, &t.snapshot(), "the dry run");
    let applied = t.json(&["apply"], 0);
    assert_eq!(changes(&planned), changes(&applied));
    assert_eq!(outcomes(&planned), outcomes(&applied));
    assert!(!t.exists("site/old.html") && !t.exists("site/deep/er.txt"));
}

#[test]
fn check_exits_2_on_drift_and_0_when_converged() {
    let t = Env::new();
    t.write("idem.yml", "steps:\n  - file: a.txt\n    content: x\n");
    let r = t.json(&["check"], 2);
    assert_eq!(r["changed"], true);
    assert_eq!(r["exit_code"], 2);
    assert!(!t.exists("a.txt"));
    t.idem(&["apply"]).code(0);
    t.idem(&["check"]).code(0).says("converged");
    t.write("a.txt", "drifted");
    t.idem(&["check"]).code(2).says("drift");
}

#[test]
fn check_exits_1_on_error_not_2() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - file: a.txt\n    source: missing.txt\n",
    );
    t.idem(&["check"]).code(1);
}

#[test]
fn verify_passes_on_an_idempotent_plan() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - dir: d\n  - file: d/f\n    content: x\n",
    );
    let r = t.json(&["apply", "--verify"], 0);
    assert_eq!(r["verify"]["ok"], true);
}

/// Found by the generator: a plan whose cleanup removes its own input passed `--verify`, yet
/// the next apply could not start (the input no longer exists), because the second run's
/// plan error was not looked at.
#[test]
fn verify_fails_when_the_second_run_could_not_start() {
    let t = Env::new();
    t.write("in/r.csv", "id,name\n1,a\n").age("in/r.csv", 40);
    t.write(
        "idem.yml",
        "steps:\n  - file: copy.csv\n    source: in/r.csv\n  - cleanup: in\n    older-than: 1d\n",
    );
    let r = t.json(&["apply", "--verify"], 3);
    assert_eq!(r["verify"]["ok"], false, "{r:#}");
    let errors = r["verify"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["step"] == 0 && e["message"].as_str().unwrap().contains("in/r.csv")),
        "{r:#}"
    );
    t.idem(&["apply"]).code(1).says("in/r.csv");
}

#[test]
fn verify_fails_with_exit_3_naming_the_step_that_is_not_idempotent() {
    let t = Env::new();
    // Step 1 copies a.txt, which step 2 then changes: every run changes b.txt again.
    t.write("a.txt", "old\n");
    t.write(
        "idem.yml",
        "steps:\n  - file: b.txt\n    source: a.txt\n  - file: a.txt\n    content: \"new\\n\"\n",
    );
    let r = t.json(&["apply", "--verify"], 3);
    assert_eq!(r["verify"]["ok"], false);
    let c = &r["verify"]["changes"][0];
    assert_eq!(
        (c["step"].as_u64(), c["kind"].as_str(), c["path"].as_str()),
        (Some(1), Some("update-file"), Some("b.txt"))
    );
    // The text report says the same (from the same starting point).
    t.write("a.txt", "old\n");
    t.idem(&["apply", "--verify"])
        .code(3)
        .says("NOT IDEMPOTENT")
        .says("b.txt");
}

#[test]
fn diff_shows_a_unified_diff_of_changed_files() {
    let t = Env::new();
    t.write("conf.txt", "a\nb\nc\n");
    t.write(
        "idem.yml",
        "steps:\n  - file: conf.txt\n    content: \"a\\nB\\nc\\n\"\n",
    );
    let r = t.idem(&["plan", "--diff"]);
    r.code(0)
        .says("--- a/conf.txt")
        .says("+++ b/conf.txt")
        .says("-b")
        .says("+B");
    let j = t.json(&["plan", "--diff"], 0);
    assert!(
        j["steps"][0]["changes"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+B")
    );
    // Binary content gets a note, not a diff.
    t.write("bin.dat", [0u8, 1, 2]);
    t.write(
        "idem.yml",
        "steps:\n  - file: bin.dat\n    content: \"text now\"\n",
    );
    t.idem(&["plan", "--diff"])
        .code(0)
        .says("Binary file bin.dat differs");
}

#[test]
fn a_dry_run_upsert_counts_exactly_what_apply_then_does_and_leaves_the_database_bytes() {
    let t = Env::new();
    t.write("u.csv", "id,name\n1,Ann\n2,Bob\n");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: users\n    key: id\n    from: u.csv\n",
    );
    t.idem(&["apply"]).code(0);
    t.write("u.csv", "id,name\n1,Ann\n2,Robert\n3,Cy\n4,Di\n");
    let before = std::fs::read(t.path("app.db")).unwrap();
    let planned = t.json(&["plan"], 0);
    assert_eq!(
        std::fs::read(t.path("app.db")).unwrap(),
        before,
        "the dry run touched the database file"
    );
    let applied = t.json(&["apply"], 0);
    assert_eq!(
        planned["steps"][0]["counters"],
        applied["steps"][0]["counters"]
    );
    let c = &applied["steps"][0]["counters"];
    assert_eq!(
        (
            c["inserted"].as_u64(),
            c["updated"].as_u64(),
            c["unchanged"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
}

/// Every shipped example (the demo and each pattern) converges, and plan predicts apply.
#[test]
fn every_example_plan_converges() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut dirs = vec![examples.join("demo")];
    let mut patterns: Vec<PathBuf> = std::fs::read_dir(examples.join("patterns"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    patterns.sort();
    dirs.extend(patterns);
    assert!(dirs.len() >= 8);
    for dir in dirs {
        let t = Env::new();
        copy_tree(&dir, t.root());
        let _ = std::fs::remove_dir_all(t.path("out"));
        let _ = std::fs::remove_dir_all(t.path(".idem"));
        let name = dir.display().to_string();
        std::panic::catch_unwind(|| assert_converges(&t, &[]))
            .unwrap_or_else(|_| panic!("example {name} does not converge (see above)"));
        t.idem(&["apply", "--verify"]).code(0);
    }
}
