//! The plan language (issue 18): variables from the plan, `--var`, `--var-file` and the
//! environment; secrets kept out of every output and record; `--only` and `--skip`.

use crate::support::*;

const SECRET: &str = "s3cr3t-Zq9-token";

/// The example in docs/plan.md, copied into a fresh root.
fn example() -> Env {
    let t = Env::new();
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plan-language/idem.yml");
    t.write("idem.yml", std::fs::read(src).unwrap());
    t
}

fn idem_env(t: &Env, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut c = t.cmd();
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(c.args(args).output().unwrap())
}

#[test]
fn a_variable_from_var_and_from_the_environment_reach_content_and_paths() {
    let t = example();
    let site = [("IDEM_EXAMPLE_SITE", "shop")];
    let args = [
        "apply",
        "--var",
        "region=us-east-1",
        "--var",
        &format!("api_token={SECRET}"),
        "--format",
        "json",
    ];
    let r = idem_env(&t, &site, &args);
    r.code(0);
    assert_eq!(
        t.read("out/shop/service.toml"),
        format!(
            "region = \"us-east-1\"\ntoken = \"{SECRET}\"\n# ${{var.region}} is written literally\n"
        )
    );
    assert_eq!(t.read("out/shop/README"), "site shop in us-east-1\n");
    // A second run with the same inputs changes nothing.
    let again = idem_env(&t, &site, &args).json();
    assert_eq!(changes(&again), vec![]);
    // The environment is read only where the plan names it, and a default gives way to it.
    let other = idem_env(&t, &[("IDEM_EXAMPLE_SITE", "blog")], &args);
    other.code(0);
    assert!(t.exists("out/blog/README"));
}

#[test]
fn var_file_values_are_used_and_var_wins_over_them() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "vars:\n  a: from-default\n  b: from-default\n  n: 1\nsteps:\n  - file: out.txt\n    content: \"${var.a} ${var.b} ${var.n}\\n\"\n",
    );
    t.write("vars.yml", "a: from-yaml\nb: from-yaml\n");
    t.write("vars.json", "{\"n\": 42}");
    assert_converges(
        &t,
        &[
            "--var-file",
            "vars.yml",
            "--var-file",
            "vars.json",
            "--var",
            "b=from-flag",
        ],
    );
    assert_eq!(t.read("out.txt"), "from-yaml from-flag 42\n");
    // A value for a variable the plan does not declare is refused, naming it.
    t.idem(&["plan", "--var", "c=1"])
        .code(1)
        .says("variable `c` is given a value but the plan does not declare it");
    t.write("bad.yml", "- a\n");
    t.idem(&["plan", "--var-file", "bad.yml"])
        .code(1)
        .says("--var-file bad.yml must be a mapping");
}

#[test]
fn unset_and_unknown_references_are_load_errors_before_any_step() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "vars:\n  name: x\nsteps:\n  - dir: first\n  - file: b.txt\n    content: hi ${var.nmae}\n",
    );
    let r = t.json(&["apply"], 1);
    assert_eq!(r["error"]["line"], 6);
    assert_eq!(r["error"]["column"], 17);
    assert_eq!(r["error"]["hint"], "did you mean `${var.name}`?");
    assert!(
        !t.exists("first"),
        "no step may run when the plan has an error"
    );

    t.write(
        "idem.yml",
        "vars:\n  token:\n    sensitive: true\nsteps:\n  - dir: first\n",
    );
    let r = t.json(&["apply"], 1);
    assert_eq!(r["error"]["line"], 2);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("variable `token` has no value"),
        "{r}"
    );
    assert!(!t.exists("first"));

    t.write(
        "idem.yml",
        "steps:\n  - dir: \"${env.IDEM_SURELY_UNSET_X}\"\n",
    );
    t.idem(&["plan"])
        .code(1)
        .says("environment variable IDEM_SURELY_UNSET_X is not set");
    t.write("idem.yml", "steps:\n  - dir: \"${HOME}\"\n");
    t.idem(&["plan"])
        .code(1)
        .says("`${HOME}` is not a reference idem knows");
}

/// Every byte a run writes where a person or a tool can read it: both streams of each run,
/// the state database and its side files.
fn assert_no_secret(t: &Env, outputs: &[Run]) {
    for r in outputs {
        assert!(
            !r.all().contains(SECRET),
            "the secret was shown:\n{}",
            r.all()
        );
    }
    for (name, bytes) in t.state_files() {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(SECRET), "the secret is in .idem/{name}");
    }
}

#[test]
fn a_sensitive_value_is_absent_from_every_output_history_and_the_journal() {
    let t = Env::new();
    t.write(
        "idem.yml",
        "vars:\n  token: {sensitive: true}\nsteps:\n  - name: secret config\n    file: app.conf\n    content: \"token=${var.token}\\n\"\n  - each: users.csv\n    key: id\n    steps:\n      - file: \"users/{id}\"\n        content: \"{id} ${var.token}\\n\"\n",
    );
    t.write("users.csv", "id\nann\n");
    let var = format!("token={SECRET}");
    let mut runs = Vec::new();
    for args in [
        vec!["plan", "--diff", "-vvv"],
        vec!["plan", "--diff", "--format", "json"],
        vec!["apply", "--diff", "-vv", "--format", "ndjson"],
        vec!["check", "--diff", "--format", "json"],
    ] {
        let mut a = args.clone();
        a.extend(["--var", &var]);
        runs.push(t.idem(&a));
    }
    assert_eq!(t.read("app.conf"), format!("token={SECRET}\n"));
    // An update, with its diff, under a second secret.
    let var2 = format!("token={SECRET}-2");
    let r = t.idem(&["apply", "--diff", "-v", "--var", &var2]);
    r.code(0).says("app.conf changed (sensitive)");
    runs.push(r);
    let j = t.json(&["plan", "--diff", "--var", &var], 0);
    let diff = j["steps"][0]["changes"][0]["diff"].as_str().unwrap();
    assert_eq!(diff, "app.conf changed (sensitive)\n");
    // An error that would quote the value.
    t.write(
        "bad.yml",
        "vars:\n  token: {sensitive: true}\nsteps:\n  - dir: d\n    mode: \"${var.token}\"\n",
    );
    let r = t.idem(&["plan", "bad.yml", "--var", &var]);
    r.code(1).says("(sensitive)");
    runs.push(r);
    runs.push(t.idem(&["history", "--limit", "0"]));
    runs.push(t.idem(&["history", "--limit", "0", "--format", "json"]));
    assert_no_secret(&t, &runs);
}

#[test]
fn only_and_skip_select_steps_by_name_or_tag_and_the_report_says_which_were_left_out() {
    let t = example();
    let site = [("IDEM_EXAMPLE_SITE", "shop")];
    let token = format!("api_token={SECRET}");
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--var", &token, "--format", "json"]);
        idem_env(&t, &site, &a)
    };
    let r = run(&["apply", "--only", "docs,config", "--skip", "service config"]);
    r.code(0);
    let r = r.json();
    let got: Vec<String> = outcomes(&r).into_iter().map(|o| o.0).collect();
    assert_eq!(got, ["created", "skipped", "created"]);
    assert_eq!(r["summary"]["skipped"], 1);
    assert!(!t.exists("out/shop/service.toml"));
    // `check` with targeting checks only those: the skipped step's drift does not count.
    run(&["check", "--skip", "secrets"]).code(0);
    let r = run(&["check", "--only", "service config"]);
    r.code(2);
    let text = idem_env(&t, &site, &["plan", "--only", "docs", "--var", &token]);
    text.code(0).says("skipped");
    // An unknown name or tag is an error listing those the plan has.
    run(&["plan", "--only", "doc"])
        .code(1)
        .says("--only \\\"doc\\\" names no step and no tag")
        .says("tags config, docs, secrets");
    assert!(!t.exists("out/shop/service.toml"));
}

/// Issue 18, section 4: each static mistake is found by `validate` and by the checks at the
/// start of every run, with its line and column, before the first step applies anything.
#[test]
fn validate_catches_each_static_mistake_with_line_and_column_before_any_step_runs() {
    let t = Env::new();
    t.write("data/customers.csv", "id,name\n1,ann\n");
    t.write("plugins/module.wasm", b"\0asm\x01\0\0\0");
    t.write("plugins/text.wasm", "not wasm at all");
    let first = "steps:\n  - dir: first\n";
    let cases: &[(&str, u64, u64, &str, &str)] = &[
        (
            "  - file: /etc/app.conf\n    content: x\n",
            3,
            11,
            "`file`: `/etc/app.conf` is an absolute path",
            "paths are relative to the root",
        ),
        (
            "  - dir: a/../../out\n",
            3,
            10,
            "climbs out of the root",
            "without `..`",
        ),
        (
            "  - file: copy.csv\n    source: data/custmers.csv\n",
            4,
            13,
            "`data/custmers.csv` does not exist",
            "did you mean `data/customers.csv`?",
        ),
        (
            "  - file: a.txt\n    content: x\n  - file: ./a.txt\n    content: y\n",
            5,
            11,
            "`./a.txt` is written by two steps",
            "the step at line 3 writes it too",
        ),
        (
            "  - plugin: plugins/module.wasm\n",
            3,
            13,
            "is a core WebAssembly module, not a component",
            "wasm-tools component new",
        ),
        (
            "  - plugin: plugins/text.wasm\n",
            3,
            13,
            "is not a WebAssembly component",
            "wasm32-wasip2",
        ),
    ];
    for (mistake, line, column, message, hint) in cases {
        t.write("idem.yml", format!("{first}{mistake}"));
        for cmd in ["validate", "apply"] {
            let r = t.json(&[cmd], 1);
            let e = &r["error"];
            assert_eq!(
                (e["line"].as_u64(), e["column"].as_u64()),
                (Some(*line), Some(*column)),
                "{mistake}: {r}"
            );
            assert!(
                e["message"].as_str().unwrap().contains(message),
                "{mistake}: {r}"
            );
            assert!(e["hint"].as_str().unwrap().contains(hint), "{mistake}: {r}");
            assert!(
                !t.exists("first"),
                "{cmd} applied a step of an invalid plan"
            );
        }
        t.idem(&["validate"])
            .code(1)
            .says(message)
            .says(&format!("idem.yml:{line}:{column}"));
    }
    // A source an earlier step writes is not missing.
    t.write(
        "idem.yml",
        "steps:\n  - file: made.txt\n    content: x\n  - file: copy.txt\n    source: made.txt\n",
    );
    t.idem(&["validate"])
        .code(0)
        .says("idem.yml: valid, 2 steps");
    assert!(!t.exists("made.txt"), "validate runs no step");
    assert_converges(&t, &[]);
}

/// Issue 18: a misspelt template field fails the step once, naming the nearest column,
/// instead of failing every record one by one.
#[test]
fn a_misspelt_template_field_is_one_error_with_line_and_column_before_any_step() {
    let t = Env::new();
    let mut csv = String::from("id,name\n");
    for i in 0..2000 {
        csv.push_str(&format!("{i},n{i}\n"));
    }
    t.write("people.csv", csv);
    t.write(
        "idem.yml",
        "steps:\n  - each: people.csv\n    key: id\n    steps:\n      - file: \"out/{id}.txt\"\n        content: \"{nmae}\\n\"\n",
    );
    // Found before any step runs, by `validate` and by every run, where it is written.
    let r = t.json(&["apply"], 1);
    let e = &r["error"];
    assert_eq!(
        e["message"],
        "`{nmae}` in `content` of sub-step 1 is not a column of people.csv; did you mean `{name}`?",
        "{r}"
    );
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(6), Some(19))
    );
    assert_eq!(
        e["hint"],
        "the columns of people.csv are its header's: id, name"
    );
    assert!(!t.exists("out"), "no record was processed");
    t.idem(&["validate"])
        .code(1)
        .says("idem.yml:6:19: `{nmae}` in `content` of sub-step 1 is not a column of people.csv");
    // Records an earlier step writes are checked when the `each` opens them: still once.
    t.write(
        "idem.yml",
        "steps:\n  - file: copy.csv\n    source: people.csv\n  - each: copy.csv\n    key: id\n    steps:\n      - file: \"out/{id}.txt\"\n        content: \"{nmae}\\n\"\n",
    );
    t.idem(&["validate"]).code(0);
    let r = t.json(&["apply"], 1);
    let step = &r["steps"][1];
    assert_eq!(step["outcome"], "failed", "{r}");
    assert_eq!(
        step["error"],
        "`{nmae}` in `content` of sub-step 1 is not a column of copy.csv; did you mean `{name}`?"
    );
    assert_eq!(step["failures"].as_array().map(Vec::len), Some(0));
    assert!(!t.exists("out"), "no record was processed");
}

// Saved plans (issue 18, item 3).

/// The saved-plan example of docs/plan.md, copied into a fresh root.
fn saved_example() -> Env {
    let t = Env::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plan-language");
    for f in ["saved.yml", "users.csv"] {
        t.write(f, std::fs::read(dir.join(f)).unwrap());
    }
    t
}

const TOKEN: &str = "--var=api_token=s3cr3t-Zq9-token";

/// `plan --out plan.json`: exit 0, and the saved file (which must hold no secret).
fn save(t: &Env, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["plan", "saved.yml", "--out", "plan.json", TOKEN];
    args.extend(extra);
    t.idem(&args).code(0).says("saved the plan");
    let text = t.read("plan.json");
    assert!(
        !text.contains(SECRET),
        "the saved plan holds the secret:\n{text}"
    );
    serde_json::from_str(&text).unwrap()
}

/// The tree and the database as they are, to show a refused apply touched nothing.
fn world(t: &Env) -> (String, Vec<String>) {
    let rows = if t.exists("out/app.db") {
        t.rows(
            "out/app.db",
            "SELECT id || ' ' || name FROM users ORDER BY id",
        )
    } else {
        Vec::new()
    };
    (format!("{:?}", t.snapshot()), rows)
}

#[test]
fn a_saved_plan_is_applied_unchanged_and_holds_no_secret() {
    let t = saved_example();
    let saved = save(&t, &[]);
    assert_eq!(saved["format"], "idem-saved-plan");
    assert_eq!(saved["version"], 1);
    // The dry run changed nothing; the saved list is what it reported.
    assert!(!t.exists("out"));
    let kinds: Vec<(&str, &str)> = saved["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("create-dir", "out"),
            ("create-database", "out/app.db"),
            ("alter-schema", "out/app.db"),
            ("write-rows", "out/app.db"),
            ("create-file", "out/settings.ini"),
            ("create-file", "out/users.csv"),
        ]
    );
    // The sensitive variable is a fingerprint only; the other keeps its value for review.
    let vars = saved["vars"].as_array().unwrap();
    let token = vars.iter().find(|v| v["name"] == "api_token").unwrap();
    assert_eq!(token["sensitive"], true);
    assert!(token.get("value").is_none());
    let r = t.idem(&["apply", "plan.json", TOKEN, "--format", "json"]);
    r.code(0);
    let applied = r.json();
    let made: Vec<(String, String)> = changes(&applied)
        .into_iter()
        .map(|(_, k, p, _)| (k, p))
        .collect();
    let want: Vec<(String, String)> = kinds
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    assert_eq!(made, want);
    assert_eq!(
        t.read("out/settings.ini"),
        format!("env = staging\ntoken = {SECRET}\n")
    );
    assert_eq!(
        t.rows("out/app.db", "SELECT name FROM users ORDER BY id"),
        ["ada", "grace"]
    );
    // Applied once: the same file applied again finds the world changed (it was applied).
    t.idem(&["apply", "plan.json", TOKEN])
        .code(1)
        .says("nothing was applied")
        .says("`out` was created since the plan");
}

#[test]
fn a_saved_plan_is_refused_after_a_source_file_changed() {
    let t = saved_example();
    save(&t, &[]);
    t.write("users.csv", "id,name\n1,ada\n2,grace\n3,edsger\n");
    let before = world(&t);
    t.idem(&["apply", "plan.json", TOKEN])
        .code(1)
        .says("the saved plan no longer matches the world, so nothing was applied")
        .says("`users.csv` changed (its content)");
    assert_eq!(world(&t), before);
}

#[test]
fn a_saved_plan_is_refused_after_a_database_row_changed() {
    let t = saved_example();
    t.idem(&["apply", "saved.yml", TOKEN]).code(0);
    t.write("users.csv", "id,name\n1,ada\n2,grace\n3,edsger\n");
    save(&t, &[]);
    let c = rusqlite::Connection::open(t.path("out/app.db")).unwrap();
    c.execute("UPDATE users SET name = 'Ada' WHERE id = '1'", [])
        .unwrap();
    drop(c);
    let before = world(&t);
    t.idem(&["apply", "plan.json", TOKEN])
        .code(1)
        .says("table `users` of `out/app.db` changed (its rows)");
    assert_eq!(world(&t), before);
}

#[test]
fn a_saved_plan_is_refused_after_a_target_file_was_edited() {
    let t = saved_example();
    t.idem(&["apply", "saved.yml", TOKEN]).code(0);
    t.write("users.csv", "id,name\n1,ada\n2,grace\n3,edsger\n");
    save(&t, &[]);
    t.write("out/settings.ini", "edited by hand\n");
    let before = world(&t);
    t.idem(&["apply", "plan.json", TOKEN])
        .code(1)
        .says("`out/settings.ini` changed (its content)");
    assert_eq!(world(&t), before);
}

#[test]
fn a_saved_plan_is_refused_after_a_var_changed() {
    let t = saved_example();
    save(&t, &["--var", "env_name=prod"]);
    let before = world(&t);
    // A plain variable is taken from the saved plan; given again otherwise, it is named.
    t.idem(&["apply", "plan.json", TOKEN, "--var", "env_name=dev"])
        .code(1)
        .says("var `env_name` changed: it was \"prod\", now \"dev\"");
    // A sensitive one must be given again, and the same.
    t.idem(&["apply", "plan.json", "--var", "api_token=other"])
        .code(1)
        .says("var `api_token` changed (sensitive)");
    t.idem(&["apply", "plan.json"])
        .code(1)
        .says("var `api_token` is not given: it is sensitive");
    assert_eq!(world(&t), before);
    // The plan itself is part of what was approved.
    t.write("saved.yml", t.read("saved.yml").replace("staging", "qa"));
    let before = world(&t);
    t.idem(&["apply", "plan.json", TOKEN])
        .code(1)
        .says("the plan file `saved.yml` changed since the plan was made");
    assert_eq!(world(&t), before);
}

#[test]
fn a_saved_plan_whose_changes_would_differ_now_is_refused() {
    // A cleanup's removals depend on the clock, which no fingerprint covers: the dry run made
    // again at apply time catches it.
    let t = Env::new();
    t.write(
        "idem.yml",
        "steps:\n  - cleanup: logs\n    older-than: 1d\n",
    );
    t.write("logs/a.log", "a\n");
    t.write("logs/b.log", "b\n");
    t.age("logs/a.log", 3);
    t.age("logs/b.log", 0);
    t.idem(&["plan", "--out", "plan.json"]).code(0);
    let mut c = t.cmd();
    c.env("IDEM_NOW", (NOW + 7 * 86_400).to_string());
    let r = Run::from(c.args(["apply", "plan.json"]).output().unwrap());
    r.code(1)
        .says("the saved plan no longer matches what apply would change now")
        .says("made now, but not saved: step 1");
    assert!(t.exists("logs/a.log") && t.exists("logs/b.log"));
    // At the clock it was made with, it applies.
    t.idem(&["apply", "plan.json"]).code(0);
    assert!(!t.exists("logs/a.log") && t.exists("logs/b.log"));
}

// Includes and groups (issue 18, item 5).

/// The includes-and-groups example of docs/plan.md, copied into a fresh root.
fn composed_example() -> Env {
    let t = Env::new();
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plan-language/composed");
    for f in ["idem.yml", "parts/sites.yml"] {
        t.write(f, std::fs::read(dir.join(f)).unwrap());
    }
    t
}

#[test]
fn an_include_chain_runs_the_included_steps_first_and_a_group_used_twice_gets_its_params() {
    let t = composed_example();
    // One more link in the chain: the included file includes another, relative to itself.
    t.write(
        "parts/sites.yml",
        format!("include: ../common/base.yml\n{}", t.read("parts/sites.yml")),
    );
    t.write(
        "common/base.yml",
        "steps:\n  - file: www/robots.txt\n    content: \"User-agent: *\\n\"\n",
    );
    let report = assert_converges(&t, &[]);
    let names: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "file www/robots.txt",
            "dir www",
            "dir www/shop",
            "index of shop",
            "dir www/blog",
            "index of blog"
        ]
    );
    assert_eq!(t.read("www/shop/index.html"), "<h1>The shop</h1> by web\n");
    assert_eq!(t.read("www/blog/index.html"), "<h1>Untitled</h1> by web\n");
    t.idem(&["validate"]).code(0).says("valid, 6 steps");
}

#[test]
fn an_include_cycle_is_an_error_naming_the_cycle_in_the_file_that_closes_it() {
    let t = Env::new();
    t.write("idem.yml", "include: parts/a.yml\nsteps: []\n");
    t.write("parts/a.yml", "include: b.yml\n");
    t.write("parts/b.yml", "steps: [{dir: x}]\ninclude: ../idem.yml\n");
    let r = t.idem(&["plan"]);
    r.code(1).says(
        "parts/b.yml:2:10: include cycle: idem.yml -> parts/a.yml -> parts/b.yml -> idem.yml",
    );
    assert!(!t.exists("x"));
    // Out of the root, and absolute: refused where they are named.
    t.write("parts/b.yml", "include: ../../../etc/passwd\n");
    t.idem(&["plan"])
        .code(1)
        .says("parts/b.yml:1:10: `../../../etc/passwd` leads out of the root");
    t.write("parts/b.yml", "include: /etc/passwd\n");
    t.idem(&["validate"]).code(1).says("is an absolute path");
}

#[test]
fn an_error_in_an_included_file_points_into_that_file() {
    let t = composed_example();
    // A misspelt field of a group's step: the error is in parts/sites.yml, line 14.
    t.write(
        "parts/sites.yml",
        t.read("parts/sites.yml").replace("content:", "contnet:"),
    );
    let r = t.idem(&["plan", "--format", "json"]);
    r.code(1);
    let e = &r.json()["error"];
    assert_eq!(e["file"], "parts/sites.yml");
    assert_eq!(e["line"], 14);
    assert_eq!(e["hint"], "did you mean `content`?");
    t.idem(&["validate"])
        .code(1)
        .says("parts/sites.yml:14:9: unknown field `contnet` in a `file` step")
        .says("14 |         contnet:");
    // A missing included file is named where it is included.
    t.write("idem.yml", "include: parts/site.yml\nsteps: []\n");
    t.idem(&["plan"])
        .code(1)
        .says("idem.yml:1:10: cannot read included file `parts/site.yml`");
}

#[test]
fn a_saved_plan_is_refused_after_an_included_file_changed() {
    let t = composed_example();
    t.idem(&["plan", "--out", "plan.json"]).code(0);
    let saved: serde_json::Value = serde_json::from_str(&t.read("plan.json")).unwrap();
    assert_eq!(saved["plan"]["includes"][0]["path"], "parts/sites.yml");
    t.write(
        "parts/sites.yml",
        t.read("parts/sites.yml")
            .replace("owner: web", "owner: ops"),
    );
    t.idem(&["apply", "plan.json"])
        .code(1)
        .says("the included plan file `parts/sites.yml` changed");
    assert!(!t.exists("www"));
}

// Schema parity (issue 18, item 6).

/// Whether check-jsonschema (tests/setup.sh installs it) accepts `plan` under `schema`.
fn schema_accepts(schema: &std::path::Path, plan: &std::path::Path) -> bool {
    let out = std::process::Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(schema)
        .arg(plan)
        .output()
        .expect("check-jsonschema is needed for this test: run tests/setup.sh");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "check-jsonschema failed on {}: {}",
            plan.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn the_schema_and_the_parser_agree_on_every_plan_of_the_corpus() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let t = Env::new();
    let schema = t.path("plan.schema.json");
    let printed = t.idem(&["schema"]);
    printed.code(0);
    std::fs::write(&schema, &printed.stdout).unwrap();
    // The corpus: the examples of the plan language, and edge cases each way.
    let mut corpus: Vec<(std::path::PathBuf, bool)> = Vec::new();
    for dir in ["tests/schema/valid", "tests/schema/invalid"] {
        let mut files: Vec<_> = std::fs::read_dir(repo.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        corpus.extend(files.into_iter().map(|f| (f, dir.ends_with("/valid"))));
    }
    for example in [
        "examples/plan-language/idem.yml",
        "examples/plan-language/saved.yml",
        "examples/plan-language/composed/idem.yml",
        "examples/plan-language/composed/parts/sites.yml",
    ] {
        corpus.push((repo.join(example), true));
    }
    assert!(corpus.len() >= 20, "the corpus has {} plans", corpus.len());
    let mut disagree = Vec::new();
    for (plan, valid) in &corpus {
        // Each plan in a root of its own, with the inputs the valid ones read.
        let root = Env::new();
        root.write("a.csv", "id,name\n1,ada\n");
        root.write("users.csv", "id,name\n1,ada\n");
        root.write(
            "parts/sites.yml",
            std::fs::read(repo.join("examples/plan-language/composed/parts/sites.yml")).unwrap(),
        );
        let name = plan.file_name().unwrap().to_string_lossy().into_owned();
        let rel = if plan.ends_with("parts/sites.yml") {
            "parts/sites.yml".to_string()
        } else {
            name.clone()
        };
        root.write(&rel, std::fs::read(plan).unwrap());
        let by_schema = schema_accepts(&schema, &root.path(&rel));
        let mut c = root.cmd();
        c.env("IDEM_EXAMPLE_SITE", "shop").args(["validate", &rel]);
        if std::fs::read_to_string(plan)
            .unwrap()
            .contains("api_token:")
        {
            c.args(["--var", "api_token=x"]);
        }
        let parsed = Run::from(c.output().unwrap());
        let by_parser = match parsed.code {
            0 => true,
            1 => false,
            _ => panic!("validate {}: {}", plan.display(), parsed.all()),
        };
        if by_schema != by_parser || by_parser != *valid {
            disagree.push(format!(
                "{}: schema {}, parser {} (expected {}){}",
                plan.strip_prefix(&repo).unwrap_or(plan).display(),
                if by_schema { "accepts" } else { "rejects" },
                if by_parser { "accepts" } else { "rejects" },
                if *valid { "valid" } else { "invalid" },
                if by_parser {
                    String::new()
                } else {
                    format!(": {}", parsed.stderr.trim())
                }
            ));
        }
    }
    assert!(
        disagree.is_empty(),
        "disagreements:\n{}",
        disagree.join("\n")
    );
}
