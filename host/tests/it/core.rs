//! The core contract (issue 2): every operation converges, a second apply changes nothing, a
//! dry run leaves the tree and databases byte-identical and predicts the apply; bad input is
//! refused with a message naming it, a non-zero exit, and nothing half-done.

use crate::support::*;

#[test]
fn dir_is_created_with_parents_and_mode_then_left_alone() {
    let t = Env::new();
    t.write("idem.yml", "steps:\n  - dir: a/b/c\n    mode: \"0750\"\n");
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[0].0, "created");
    assert_eq!(
        changes(&r).iter().map(|c| c.2.as_str()).collect::<Vec<_>>(),
        ["a", "a/b", "a/b/c"]
    );
    assert_eq!(t.mode("a/b/c"), 0o750);
}

#[test]
fn dir_mode_converges_on_an_existing_directory() {
    let t = Env::new();
    t.mkdir("d");
    std::fs::set_permissions(
        t.path("d"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    t.write("idem.yml", "steps:\n  - dir: d\n    mode: \"0755\"\n");
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[0].0, "updated");
    assert_eq!(t.mode("d"), 0o755);
}

#[test]
fn file_content_converges_and_keeps_the_existing_mode() {
    let t = Env::new();
    t.write("etc/app.conf", "old\n");
    std::fs::set_permissions(
        t.path("etc/app.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    t.write(
        "idem.yml",
        "steps:\n  - file: etc/app.conf\n    content: \"port = 8080\\n\"\n",
    );
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[0].0, "updated");
    assert_eq!(t.read("etc/app.conf"), "port = 8080\n");
    assert_eq!(
        t.mode("etc/app.conf"),
        0o600,
        "an existing file's mode is kept"
    );
}

#[test]
fn file_from_source_creates_missing_parents() {
    let t = Env::new();
    t.write("templates/index.html", "<h1>hi</h1>\n");
    t.write("idem.yml", "steps:\n  - file: public/site/index.html\n    source: templates/index.html\n    mode: \"0644\"\n");
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[0].0, "created");
    assert_eq!(t.read("public/site/index.html"), "<h1>hi</h1>\n");
    assert_eq!(t.mode("public/site/index.html"), 0o644);
}

#[test]
fn file_if_missing_never_touches_an_existing_file() {
    let t = Env::new();
    t.write("config/local.yml", "debug: true\n");
    t.write(
        "idem.yml",
        "steps:\n  - file: config/local.yml\n    content: \"debug: false\\n\"\n    if-missing: true\n  - file: config/new.yml\n    content: \"x: 1\\n\"\n    if-missing: true\n",
    );
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[0].0, "unchanged");
    assert_eq!(outcomes(&r)[1].0, "created");
    assert_eq!(t.read("config/local.yml"), "debug: true\n");
}

#[test]
fn remove_deletes_files_and_trees_and_absent_is_unchanged() {
    let t = Env::new();
    t.write("tmp/cache/a/b.txt", "x");
    t.write("old.txt", "x");
    t.write(
        "idem.yml",
        "steps:\n  - remove: tmp/cache\n    recursive: true\n  - remove: old.txt\n  - remove: never-was\n",
    );
    let r = assert_converges(&t, &[]);
    let o: Vec<_> = outcomes(&r).into_iter().map(|o| o.0).collect();
    assert_eq!(o, ["removed", "removed", "unchanged"]);
    assert!(!t.exists("tmp/cache") && !t.exists("old.txt") && t.exists("tmp"));
}

#[test]
fn remove_refuses_a_non_empty_directory_without_recursive() {
    let t = Env::new();
    t.write("d/f", "x");
    t.write("idem.yml", "steps:\n  - remove: d\n");
    let before = t.snapshot();
    t.idem(&["apply"]).code(1).says("recursive");
    assert_same_tree(&before, &t.snapshot(), "a refused removal");
}

#[test]
fn cleanup_deletes_old_matching_files_once() {
    let t = Env::new();
    t.write("logs/old.log", "x").age("logs/old.log", 40);
    t.write("logs/new.log", "x").age("logs/new.log", 1);
    t.write("logs/old.txt", "x").age("logs/old.txt", 40);
    t.write("logs/sub/old.log", "x").age("logs/sub/old.log", 90);
    t.write("logs/keep/old.log", "x")
        .age("logs/keep/old.log", 90);
    t.write(
        "idem.yml",
        "steps:\n  - cleanup: logs\n    older-than: 30d\n    include: [\"*.log\"]\n    exclude: [\"keep/**\"]\n    remove-empty-dirs: true\n",
    );
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[0].0, "removed");
    assert!(!t.exists("logs/old.log") && !t.exists("logs/sub"));
    assert!(t.exists("logs/new.log") && t.exists("logs/old.txt") && t.exists("logs/keep/old.log"));
}

/// Found by the generator (seed 0x1de400199e3779b9): a `cleanup` of the root removed the
/// plan file itself, and the next run had no plan.
#[test]
fn cleanup_of_the_root_keeps_the_plan_file() {
    let t = Env::new();
    t.write("old.log", "x").age("old.log", 40);
    t.write(
        "idem.yml",
        "steps:\n  - cleanup: \".\"\n    older-than: 0s\n",
    );
    t.age("idem.yml", 40);
    assert_converges(&t, &[]);
    assert!(t.exists("idem.yml"), "the plan file was removed");
    assert!(!t.exists("old.log"));
    t.idem(&["apply"]).code(0);
}

#[test]
fn cleanup_of_a_missing_directory_is_unchanged() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - cleanup: nowhere\n    older-than: 12h\n",
    );
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[0].0, "unchanged");
}

#[test]
fn upsert_from_csv_inserts_updates_and_leaves_identical_rows() {
    let t = Env::new();
    t.write(
        "data/users.csv",
        "id,name,email\n1,Ann,ann@x\n2,Bob,bob@x\n",
    );
    t.write("idem.yml", "steps:\n  - upsert: data/app.db\n    table: users\n    key: id\n    from: data/users.csv\n");
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[0].0, "created");
    assert_eq!(r["steps"][0]["counters"]["inserted"], 2);
    assert_eq!(
        t.rows(
            "data/app.db",
            "SELECT id, name, email FROM users ORDER BY id"
        ),
        ["1|Ann|ann@x", "2|Bob|bob@x"]
    );

    t.write(
        "data/users.csv",
        "id,name,email\n1,Ann,ann@x\n2,Bobby,bob@x\n3,Cy,cy@x\n",
    );
    let r = assert_converges(&t, &[]);
    let c = &r["steps"][0]["counters"];
    assert_eq!(
        (
            c["inserted"].as_u64(),
            c["updated"].as_u64(),
            c["unchanged"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(
        t.rows("data/app.db", "SELECT id, name FROM users ORDER BY id"),
        ["1|Ann", "2|Bobby", "3|Cy"]
    );
}

#[test]
fn upsert_from_json_and_ndjson_with_a_composite_key() {
    let t = Env::new();
    t.write(
        "a.json",
        r#"[{"org":"x","login":"ann","admin":true},{"org":"y","login":"ann","admin":false}]"#,
    );
    // The second source repeats one row of the first unchanged: no step undoes another.
    t.write("b.ndjson", "{\"org\":\"x\",\"login\":\"bob\",\"admin\":false}\n{\"org\":\"x\",\"login\":\"ann\",\"admin\":true}\n");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: m.db\n    table: members\n    key: [org, login]\n    from: a.json\n  - upsert: m.db\n    table: members\n    key: [org, login]\n    from: b.ndjson\n",
    );
    assert_converges(&t, &[]);
    assert_eq!(
        t.rows(
            "m.db",
            "SELECT org, login, admin FROM members ORDER BY org, login"
        ),
        ["x|ann|1", "x|bob|0", "y|ann|0"]
    );
}

#[test]
fn upsert_into_a_table_that_does_not_fit_fails_clearly_and_changes_nothing() {
    let t = Env::new();
    {
        let c = rusqlite::Connection::open(t.path("app.db")).unwrap();
        c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'Ann');").unwrap();
    }
    t.write("u.csv", "id,name,email\n1,Ann,ann@x\n");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: users\n    key: id\n    from: u.csv\n",
    );
    let before = t.snapshot();
    t.idem(&["apply"]).code(1).says("email");
    assert_same_tree(&before, &t.snapshot(), "a refused upsert");
}

#[test]
fn a_csv_row_with_the_wrong_number_of_fields_rolls_back_the_whole_upsert() {
    let t = Env::new();
    t.write("u.csv", "id,name\n1,Ann\n2,Bob,extra\n");
    t.write("idem.yml", "steps:\n  - dir: out\n  - upsert: app.db\n    table: users\n    key: id\n    from: u.csv\n");
    let r = t.idem(&["apply"]);
    r.code(1).says("u.csv");
    assert!(
        r.all().contains("row 3") || r.all().contains("line 3") || r.all().contains("record 2"),
        "{}",
        r.all()
    );
    if t.exists("app.db") {
        let n = t.rows(
            "app.db",
            "SELECT count(*) FROM sqlite_schema WHERE name = 'users'",
        );
        if n == ["1"] {
            assert_eq!(t.rows("app.db", "SELECT count(*) FROM users"), ["0"]);
        }
    }
}

#[test]
fn each_processes_records_once_and_skips_done_ones_on_rerun() {
    let t = Env::new();
    t.write("users.csv", "id,name\n1,Ann\n2,Bob\n");
    t.write(
        "idem.yml",
        "steps:\n  - each: users.csv\n    key: id\n    steps:\n      - dir: \"home/{id}\"\n      - file: \"home/{id}/greeting.txt\"\n        content: \"Hello {name}\\n\"\n",
    );
    let r = assert_converges(&t, &[]);
    assert_eq!(r["steps"][0]["counters"]["processed"], 2);
    assert_eq!(t.read("home/2/greeting.txt"), "Hello Bob\n");
    let again = t.json(&["apply"], 0);
    assert_eq!(again["steps"][0]["counters"]["skipped"], 2);

    t.write("users.csv", "id,name\n1,Ann\n2,Bob\n3,Cy\n");
    let r = t.json(&["apply"], 0);
    assert_eq!(r["steps"][0]["counters"]["processed"], 1);
    assert_eq!(r["steps"][0]["counters"]["skipped"], 2);
    assert_eq!(t.read("home/3/greeting.txt"), "Hello Cy\n");
}

#[test]
fn each_reports_a_failing_record_goes_on_and_exits_non_zero() {
    let t = Env::new();
    t.write("users.csv", "id,name\n1,Ann\n2,Bob\n3,Cy\n");
    // Record 2's directory is blocked by a file, so its sub-steps fail.
    t.write("home/2", "in the way");
    t.write(
        "idem.yml",
        "steps:\n  - each: users.csv\n    key: id\n    steps:\n      - file: \"home/{id}/greeting.txt\"\n        content: \"Hello {name}\\n\"\n",
    );
    let r = t.json(&["apply"], 1);
    let s = &r["steps"][0];
    assert_eq!(s["outcome"], "failed");
    assert_eq!(s["counters"]["failed"], 1);
    assert_eq!(s["counters"]["processed"], 2);
    assert!(
        s["failures"][0]["item"].as_str().unwrap().contains('2'),
        "{s}"
    );
    assert!(t.exists("home/3/greeting.txt"));
    // Fix the cause: only the failed record is done on the re-run.
    std::fs::remove_file(t.path("home/2")).unwrap();
    let r = t.json(&["apply"], 0);
    assert_eq!(r["steps"][0]["counters"]["processed"], 1);
    assert_eq!(r["steps"][0]["counters"]["skipped"], 2);
}

#[test]
fn a_malformed_plan_names_the_file_and_line() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - dir: a\n  - file: b\n    content: [unclosed\n",
    );
    t.idem(&["apply"]).code(1).says("idem.yml:");
    assert!(!t.exists("a"), "nothing runs from an invalid plan");
}

#[test]
fn an_unknown_operation_or_field_is_refused_with_a_hint() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - dir: a\n  - file: b\n    contnet: x\n",
    );
    t.idem(&["plan"]).code(1).says("idem.yml:4").says("content");
    t.write("idem.yml", "steps:\n  - directory: a\n");
    t.idem(&["plan"]).code(1).says("idem.yml:2").says("dir");
}

#[test]
fn a_missing_source_file_is_a_plan_error_naming_it_before_any_step() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - dir: earlier\n  - file: out.txt\n    source: nope/missing.txt\n  - dir: later\n",
    );
    let r = t.json(&["apply"], 1);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`nope/missing.txt` does not exist"),
        "{r}"
    );
    assert_eq!(r["error"]["line"], 4);
    assert!(!t.exists("earlier") && !t.exists("out.txt") && !t.exists("later"));
}

#[test]
fn an_unreadable_database_is_an_error_not_a_crash() {
    let t = Env::new();
    t.write(
        "app.db",
        "this is not a database at all, just text that is long enough to have a header",
    );
    t.write("u.csv", "id\n1\n");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: t\n    key: id\n    from: u.csv\n",
    );
    let before = t.snapshot();
    t.idem(&["apply"]).code(1).says("app.db");
    assert_same_tree(&before, &t.snapshot(), "a failed upsert");
}

#[test]
fn paths_outside_the_root_are_denied() {
    let outside = tempfile::tempdir().unwrap();
    let t = Env::new();
    std::os::unix::fs::symlink(outside.path(), t.path("out")).unwrap();
    for (plan, what) in [
        ("steps:\n  - dir: /tmp/idem-escape\n", "absolute"),
        (
            "steps:\n  - file: ../escape.txt\n    content: x\n",
            "climbs",
        ),
        (
            "steps:\n  - file: out/escape.txt\n    content: x\n",
            "symbolic link",
        ),
        ("steps:\n  - dir: out/sub\n", "symbolic link"),
        ("steps:\n  - remove: .idem\n    recursive: true\n", ".idem"),
    ] {
        t.write("idem.yml", plan);
        let r = t.idem(&["apply"]);
        r.code(1);
        assert!(r.all().contains(what), "{plan}: {}", r.all());
        assert!(
            std::fs::read_dir(outside.path()).unwrap().next().is_none(),
            "{plan} wrote outside the root"
        );
    }
    assert!(!std::path::Path::new("/tmp/idem-escape").exists());
}

#[test]
fn a_database_that_is_a_symlink_out_of_the_root_is_denied() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.db");
    rusqlite::Connection::open(&victim)
        .unwrap()
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    let before = std::fs::read(&victim).unwrap();
    let t = Env::new();
    std::os::unix::fs::symlink(&victim, t.path("app.db")).unwrap();
    t.write("u.csv", "id\n1\n");
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: t\n    key: id\n    from: u.csv\n",
    );
    t.idem(&["apply"]).code(1);
    assert_eq!(std::fs::read(&victim).unwrap(), before);
}

#[test]
fn no_temporary_file_is_left_after_writes() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - file: a/x.txt\n    content: one\n  - file: a/y.txt\n    content: two\n",
    );
    t.idem(&["apply"]).code(0);
    let names: Vec<String> = t.snapshot().keys().cloned().collect();
    assert_eq!(names, ["a", "a/x.txt", "a/y.txt", "idem.yml"]);
}

#[test]
fn the_text_report_has_one_line_per_step_and_a_summary() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - dir: a\n  - file: a/f\n    content: x\n",
    );
    let r = t.idem(&["plan"]);
    r.code(0)
        .says("would create")
        .says("dir a")
        .says("planned 2 steps");
    let r = t.idem(&["apply"]);
    r.code(0).says("created").says("applied 2 steps");
    t.idem(&["apply"])
        .code(0)
        .says("unchanged")
        .says("2 unchanged; 0 changes");
}

#[test]
fn a_missing_plan_file_suggests_init() {
    let t = Env::new();
    t.idem(&["apply"]).code(1).says("idem init");
    t.idem(&["apply", "nope.yml"]).code(1).says("nope.yml");
}

#[test]
fn usage_errors_exit_64() {
    let t = Env::new();
    t.idem(&["apply", "--no-such-flag"]).code(64);
}

#[test]
fn init_writes_a_starter_that_converges_and_never_overwrites() {
    let t = Env::new();
    t.idem(&["init"])
        .code(0)
        .says("created    idem.yml")
        .says("created    idem.schema.json");
    assert!(t.exists(".github/workflows/idem.yml"));
    let schema: serde_json::Value = serde_json::from_str(&t.read("idem.schema.json")).unwrap();
    assert_eq!(schema["title"], "idem plan");
    assert_converges(&t, &[]);
    t.write("idem.yml", "steps: []\n");
    t.idem(&["init"]).code(0).says("unchanged  idem.yml");
    assert_eq!(
        t.read("idem.yml"),
        "steps: []\n",
        "init overwrote an existing plan"
    );
}

/// Issue 21: the sample workflow used an unpinned `OWNER/idem@v1` (zizmor: high) and promised
/// that a re-run resumes from checkpoints while leaving `persist-state` off.
#[test]
fn init_workflow_pins_every_action_by_sha_and_promises_only_what_it_configures() {
    let t = Env::new();
    t.idem(&["init"]).code(0);
    let workflow = t.read(".github/workflows/idem.yml");
    let uses: Vec<&str> = workflow
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- uses: "))
        .collect();
    assert!(
        uses.iter().any(|u| u.starts_with("OWNER/idem@")),
        "no idem step in:\n{workflow}"
    );
    for u in &uses {
        let (_, pin) = u.split_once('@').expect("an action without a ref");
        let (sha, comment) = pin.split_at(40.min(pin.len()));
        assert!(
            sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "not pinned by a commit SHA: {u}"
        );
        assert!(
            comment.starts_with(" # v"),
            "no version comment after the SHA: {u}"
        );
    }
    assert!(
        !workflow.contains("resumes from") || workflow.contains("persist-state: \"true\""),
        "promises a resume from checkpoints without persist-state:\n{workflow}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let t = Env::new();
    let r = t.idem(&["completions", "bash"]);
    r.code(0).says("apply").says("--lock-timeout");
    t.idem(&["man"]).code(0).says(".TH idem").says("check");
}

/// Issue 14: the atomic replace kept neither owner nor group: as root over /etc, an
/// `app:app 0640` config became `root:root`.
#[test]
fn a_rewritten_file_keeps_its_owner_and_group() {
    use std::os::unix::fs::MetadataExt;
    let t = Env::new();
    t.write("etc/app.conf", "old\n");
    let path = t.path("etc/app.conf");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; as root (as these tests and CI run) chown to any ids works.
    if unsafe { libc::chown(c.as_ptr(), 4321, 4321) } != 0 {
        // Not root: give it our own group, which is all a user may do.
        return;
    }
    t.write(
        "idem.yml",
        "steps:\n  - file: etc/app.conf\n    content: \"new\\n\"\n    mode: \"0640\"\n",
    );
    t.idem(&["apply"]).code(0);
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4321, 4321, 0o640));
    assert_eq!(t.read("etc/app.conf"), "new\n");
}

/// Issue 14: in-root symbolic links to sources (`latest.csv -> 2026-12-01.csv`) were
/// refused, although only links that leave the root are.
#[test]
fn a_source_may_be_a_link_inside_the_root() {
    let t = Env::new();
    t.write("data/2026-12-01.csv", "id,name\n1,ada\n");
    std::os::unix::fs::symlink("2026-12-01.csv", t.path("data/latest.csv")).unwrap();
    t.write("tpl.txt", "hello\n");
    std::os::unix::fs::symlink("tpl.txt", t.path("current.txt")).unwrap();
    t.write(
        "idem.yml",
        "steps:\n  - upsert: app.db\n    table: people\n    key: id\n    from: data/latest.csv\n  - file: out.txt\n    source: current.txt\n",
    );
    assert_converges(&t, &[]);
    assert_eq!(t.rows("app.db", "SELECT name FROM people"), ["ada"]);
    assert_eq!(t.read("out.txt"), "hello\n");
    // A link into idem's state is not a source.
    std::os::unix::fs::symlink(".idem/state.db", t.path("sneaky.csv")).unwrap();
    t.write(
        "idem.yml",
        "steps:\n  - file: copy.db\n    source: sneaky.csv\n",
    );
    t.idem(&["apply"]).code(1).says("idem's own state");
}

/// Issue 14: a dry run stamped planned writes with the run's clock, a real write gets the
/// wall clock; with `--now` ahead, a cleanup after a write disagreed between plan and apply.
#[test]
fn a_cleanup_after_a_write_agrees_when_the_run_clock_is_ahead() {
    let t = Env::new();
    t.mkdir("tmp");
    t.write(
        "idem.yml",
        "steps:\n  - file: tmp/new.txt\n    content: \"x\\n\"\n  - cleanup: tmp\n    older-than: 7d\n",
    );
    let ahead = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30 * 86_400)
        .to_string();
    let planned = t.json(&["--now", &ahead, "plan"], 0);
    let applied = t.json(&["--now", &ahead, "apply"], 0);
    assert_eq!(changes(&planned), changes(&applied));
}
