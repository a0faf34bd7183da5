//! Plugins (issue 5): components of the `plugin` world run as steps, by `idem run` and as
//! `plugin:` steps of a plan, with apply, plan, check and verify as for standard steps; the
//! sandbox holds against a plugin that misbehaves on purpose (tests/plugins/hostile); the
//! Rust and Python examples converge; compiled plugins are cached.
//!
//! The plugins are built once per test run: the Rust ones by cargo for wasm32-wasip2 into the
//! target directory `host/build.rs` uses for the standard guest (so wit-bindgen is built
//! once), the Python one by componentize-py, which `tests/setup.sh` installs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The components built from this workspace's plugin crates.
pub struct Built {
    pub hostile: Vec<u8>,
    pub manifest: Vec<u8>,
    /// examples/plugins/release: converges against an HTTP API over wasi:http.
    pub release: Vec<u8>,
    /// The standard operations guest: a component of another world (`standard`).
    pub standard: Vec<u8>,
}

/// Build the Rust plugins (and the standard guest, for its other world) once per test run.
pub fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target_dir = workspace().join("target").join("guest");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace())
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .args([
                "-p",
                "idem-hostile-plugin",
                "-p",
                "idem-plugin-manifest",
                "-p",
                "idem-plugin-release",
                "-p",
                "idem-guest",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .output()
            .expect("running cargo to build the test plugins");
        assert!(
            out.status.success(),
            "building the plugins for wasm32-wasip2 failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |name: &str| {
            let p = target_dir.join("wasm32-wasip2/release").join(name);
            std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        };
        Built {
            hostile: read("idem_hostile_plugin.wasm"),
            manifest: read("idem_plugin_manifest.wasm"),
            release: read("idem_plugin_release.wasm"),
            standard: read("idem_guest.wasm"),
        }
    })
}

/// Build the Python example with componentize-py, once per test run, and only when its
/// sources are newer than the last build (a build takes half a minute). Fails (never skips)
/// when componentize-py is missing.
fn python_plugin() -> &'static Vec<u8> {
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let src = workspace().join("examples/plugins/python");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-plugin.wasm");
        let mut inputs = vec![src.join("app.py")];
        inputs.extend(
            std::fs::read_dir(workspace().join("wit"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        );
        let built_at = std::fs::metadata(&out).and_then(|m| m.modified()).ok();
        let stale = inputs.iter().any(|p| {
            built_at.is_none_or(|b| std::fs::metadata(p).unwrap().modified().unwrap() > b)
        });
        // Checked even when a fresh build is at hand: a machine that cannot build the
        // example must say so, not pass on a leftover.
        let found = Command::new("componentize-py").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "componentize-py is not installed, so the Python example plugin cannot be built: \
             run `bash tests/setup.sh` (it installs the pinned version from PyPI)"
        );
        if stale {
            let run = Command::new("bash")
                .arg(src.join("build.sh"))
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "building the Python plugin failed:\n{}{}",
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr)
            );
        }
        std::fs::read(&out).unwrap()
    })
}

/// examples/plugins/release-js, built by componentize-js with its default flags (its
/// `build.sh`), once per test run. The component is kept under `target/js-plugins/`, named by
/// the SHA-256 of what it is built from (the example's sources and lock file, and `wit/`), so
/// a run whose sources did not change does not rebuild it (a build takes half a minute).
/// Fails (never skips) when componentize-js is not installed.
pub fn js_release_plugin() -> &'static [u8] {
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT.get_or_init(|| {
        use sha2::Digest;
        let src = workspace().join("examples/plugins/release-js");
        let mut inputs: Vec<PathBuf> = ["app.js", "build.sh", "package.json", "package-lock.json"]
            .iter()
            .map(|f| src.join(f))
            .collect();
        let mut wit: Vec<PathBuf> = std::fs::read_dir(workspace().join("wit"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        wit.sort();
        inputs.extend(wit);
        let mut h = sha2::Sha256::new();
        for p in &inputs {
            h.update(p.file_name().unwrap().as_encoded_bytes());
            h.update([0]);
            h.update(std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
            h.update([0]);
        }
        let key: String = format!("{:x}", h.finalize()).chars().take(16).collect();
        let dir = workspace().join("target/js-plugins");
        let out = dir.join(format!("release-js-{key}.wasm"));
        // Checked even when a build is at hand: a machine that cannot build the example must
        // say so, not pass on a leftover.
        assert!(
            src.join("node_modules/.bin/componentize-js").exists(),
            "componentize-js is not installed, so the JavaScript example plugin cannot be \
             built: run `bash tests/setup.sh` (it runs `npm ci` in examples/plugins/release-js, \
             installing the pinned version)"
        );
        if !out.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let partial = dir.join(format!("release-js-{key}.{}.partial", std::process::id()));
            let run = Command::new("bash")
                .arg(src.join("build.sh"))
                .arg(&partial)
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "building the JavaScript plugin failed:\n{}{}",
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr)
            );
            std::fs::rename(&partial, &out).unwrap();
        }
        std::fs::read(&out).unwrap()
    })
}

/// The names a component imports, at its top level.
pub fn component_imports(bytes: &[u8]) -> Vec<String> {
    let mut depth = 0usize;
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.expect("a valid component") {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    names.push(import.unwrap().name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    names
}

/// A temporary directory holding a root (`root/`, with the hostile plugin in it) and, beside
/// it, files that no plugin may reach (`outside/`).
struct Sandbox {
    t: Env,
}

impl Sandbox {
    fn new() -> Self {
        let t = Env::new();
        t.write("outside/secret.txt", "secret\n");
        t.write("root/hostile.wasm", &built().hostile);
        Sandbox { t }
    }

    /// `idem -C root run hostile.wasm --config-json CONFIG EXTRA...`.
    fn run(&self, config: Value, extra: &[&str]) -> Run {
        let config = config.to_string();
        let mut args = vec![
            "-C",
            "root",
            "run",
            "hostile.wasm",
            "--path",
            ".",
            "--config-json",
            &config,
        ];
        args.extend(extra);
        self.t.idem(&args)
    }

    /// Everything outside the root (the root directory's own mtime aside).
    fn outside(&self) -> BTreeMap<String, Node> {
        let mut all = self.t.snapshot();
        all.retain(|k, _| k != "root" && !k.starts_with("root/"));
        all
    }

    /// The state store took the failure in its stride: a well-behaved run applies, and the
    /// history lists every run as finished.
    #[track_caller]
    fn assert_still_works(&self) {
        let cfg = json!({"mode": "well-behaved", "path": "after.txt", "content": "fine\n"});
        self.run(cfg, &[]).code(0);
        assert_eq!(self.t.read("root/after.txt"), "fine\n");
        let history = self.t.idem(&["-C", "root", "history", "--format", "json"]);
        history.code(0);
        for run in history.json().as_array().unwrap() {
            assert!(
                !run["outcome"].is_null(),
                "a run was left unfinished: {run}"
            );
        }
    }
}

/// Run one hostile config and check it was refused with `says`, outside untouched.
#[track_caller]
fn refused(config: Value, extra: &[&str], says: &str) -> Sandbox {
    let s = Sandbox::new();
    let before = s.outside();
    s.run(config, extra).code(1).says(says);
    assert_same_tree(&before, &s.outside(), "outside the root");
    s
}

#[test]
fn plugin_writing_above_the_root_with_dotdot_is_denied() {
    let s = refused(
        json!({"mode": "write", "path": "../outside/secret.txt"}),
        &[],
        "climbs above the root",
    );
    assert_eq!(s.t.read("outside/secret.txt"), "secret\n");
    s.assert_still_works();
}

#[test]
fn plugin_writing_an_absolute_path_is_denied() {
    let s = Sandbox::new();
    let target = s.t.path("outside/new.txt");
    let before = s.outside();
    s.run(json!({"mode": "write", "path": target}), &[])
        .code(1)
        .says("is an absolute path");
    assert_same_tree(&before, &s.outside(), "outside the root");
    assert!(!target.exists());
}

#[test]
fn plugin_going_through_a_symlink_out_of_the_root_is_denied() {
    let s = Sandbox::new();
    std::os::unix::fs::symlink("../outside", s.t.path("root/link")).unwrap();
    let before = s.outside();
    s.run(json!({"mode": "write", "path": "link/new.txt"}), &[])
        .code(1)
        .says("leads outside the root through a symbolic link");
    s.run(json!({"mode": "read", "path": "link/secret.txt"}), &[])
        .code(1)
        .says("leads outside the root through a symbolic link");
    assert_same_tree(&before, &s.outside(), "outside the root");
    s.assert_still_works();
}

#[test]
fn plugin_touching_the_state_directory_is_denied() {
    let s = Sandbox::new();
    s.run(json!({"mode": "write", "path": ".idem/state.db"}), &[])
        .code(1)
        .says("idem's own state directory");
    s.run(
        json!({"mode": "sql", "database": ".idem/state.db", "sql": "DELETE FROM runs"}),
        &["--database", ".idem/state.db"],
    )
    .code(1)
    .says("state directory");
    s.assert_still_works();
}

#[test]
fn plugin_opening_a_database_the_step_did_not_name_is_denied() {
    let s = Sandbox::new();
    let cfg = json!({"mode": "open-database", "database": "secret.db"});
    s.run(cfg.clone(), &[])
        .code(1)
        .says("denied")
        .says("secret.db");
    s.run(cfg, &["--database", "allowed.db"])
        .code(1)
        .says("databases named by the step: allowed.db");
    assert!(!s.t.exists("root/secret.db"));
    s.assert_still_works();
}

#[test]
fn plugin_sql_that_reaches_beyond_its_database_is_denied() {
    let s = Sandbox::new();
    {
        let c = rusqlite::Connection::open(s.t.path("root/app.db")).unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let db = std::fs::read(s.t.path("root/app.db")).unwrap();
    let before = s.outside();
    let outside_db = s.t.path("outside/stolen.db");
    let outside_db = outside_db.to_str().unwrap();
    for sql in [
        format!("ATTACH DATABASE '{outside_db}' AS o"),
        "ATTACH DATABASE 'other.db' AS o".to_string(),
        format!("VACUUM INTO '{outside_db}'"),
        "VACUUM INTO 'copy.db'".to_string(),
        "BEGIN".to_string(),
        "COMMIT".to_string(),
        "SAVEPOINT s".to_string(),
        "PRAGMA journal_mode = OFF".to_string(),
        "PRAGMA writable_schema = ON".to_string(),
        "SELECT load_extension('evil')".to_string(),
    ] {
        let r = s.run(
            json!({"mode": "sql", "database": "app.db", "sql": sql}),
            &["--database", "app.db"],
        );
        r.code(1).says("statement not allowed");
    }
    assert!(!s.t.exists("root/other.db") && !s.t.exists("root/copy.db"));
    assert_eq!(
        std::fs::read(s.t.path("root/app.db")).unwrap(),
        db,
        "app.db changed"
    );
    assert_same_tree(&before, &s.outside(), "outside the root");
    s.assert_still_works();
}

#[test]
fn plugin_that_loops_forever_is_stopped_by_the_timeout() {
    let s = Sandbox::new();
    let started = Instant::now();
    s.run(json!({"mode": "loop"}), &["--plugin-timeout", "1"])
        .code(1)
        .says("ran longer than its time limit of 1 s and was stopped")
        .says("--plugin-timeout");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout did not stop the plugin in time"
    );
    s.assert_still_works();
}

#[test]
fn plugin_timeout_is_also_taken_from_the_environment() {
    let s = Sandbox::new();
    let out =
        s.t.cmd()
            .args([
                "-C",
                "root",
                "run",
                "hostile.wasm",
                "--path",
                ".",
                "--config-json",
                r#"{"mode":"loop"}"#,
            ])
            .env("IDEM_PLUGIN_TIMEOUT", "1")
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("time limit of 1 s"));
}

#[test]
fn plugin_that_allocates_without_bound_is_stopped_at_the_memory_limit() {
    let s = Sandbox::new();
    s.run(json!({"mode": "allocate"}), &["--plugin-memory", "32"])
        .code(1)
        .says("ran out of memory: it asked for more than its limit of 32 MiB")
        .says("--plugin-memory");
    s.assert_still_works();
}

#[test]
fn plugin_that_traps_halfway_leaves_whole_files_and_a_working_state_store() {
    let s = Sandbox::new();
    let r = s.t.json(
        &[
            "-C",
            "root",
            "run",
            "hostile.wasm",
            "--path",
            ".",
            "--config-json",
            r#"{"mode":"trap-halfway","path":"half"}"#,
        ],
        1,
    );
    let step = &r["steps"][0];
    assert_eq!(step["outcome"], "failed");
    assert!(
        step["error"]
            .as_str()
            .unwrap()
            .contains("giving up halfway, before d.txt"),
        "{step}"
    );
    // What the plugin did before it died is reported and journaled, file by whole file.
    let paths: Vec<_> = changes(&r).into_iter().map(|c| c.2).collect();
    assert_eq!(paths, ["half", "half/a.txt", "half/b.txt", "half/c.txt"]);
    for name in ["a", "b", "c"] {
        assert_eq!(
            s.t.read(&format!("root/half/{name}.txt")),
            format!("{name}.txt complete\n").repeat(10_000)
        );
    }
    let names: Vec<_> = std::fs::read_dir(s.t.path("root/half"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "only whole files, no temporaries: {names:?}"
    );
    s.assert_still_works();
    let history = s.t.idem(&["-C", "root", "history"]);
    history.code(0).says("failed").says("half/c.txt");
}

#[test]
fn plugin_writes_under_dry_run_are_reported_but_not_made() {
    let s = Sandbox::new();
    s.t.write("root/existing.txt", "original\n");
    s.t.write("root/doomed.txt", "still here\n");
    {
        let c = rusqlite::Connection::open(s.t.path("root/app.db")).unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    }
    let config = json!({"mode": "dry-run-writes", "database": "app.db"}).to_string();
    let tree = || {
        let mut all = s.t.snapshot();
        all.retain(|k, _| !k.starts_with("root/.idem"));
        all
    };
    let before = tree();
    let state_before = std::fs::read(s.t.path("root/.idem/state.db")).ok();
    for flag in ["--dry-run", "--check"] {
        let code = if flag == "--check" { 2 } else { 0 };
        let r = s.t.json(
            &[
                "-C",
                "root",
                "run",
                "hostile.wasm",
                "--path",
                ".",
                "--config-json",
                &config,
                "--database",
                "app.db",
                flag,
            ],
            code,
        );
        assert_eq!(r["dry_run"], true);
        let kinds: Vec<_> = changes(&r).into_iter().map(|c| (c.1, c.2)).collect();
        let want = [
            ("create-dir", "made"),
            ("create-dir", "made/by"),
            ("create-dir", "made/by/plugin"),
            ("create-file", "made/by/plugin/file.txt"),
            ("update-file", "existing.txt"),
            ("remove-file", "doomed.txt"),
            ("write-rows", "app.db"),
        ];
        assert_eq!(kinds, want.map(|(k, p)| (k.to_string(), p.to_string())));
        assert_same_tree(&before, &tree(), "a plugin's dry run");
        assert_eq!(
            std::fs::read(s.t.path("root/.idem/state.db")).ok(),
            state_before,
            "the state store changed"
        );
    }
    // The same plugin, applied, makes exactly those changes.
    let r = s.t.json(
        &[
            "-C",
            "root",
            "run",
            "hostile.wasm",
            "--path",
            ".",
            "--config-json",
            &config,
            "--database",
            "app.db",
        ],
        0,
    );
    assert_eq!(changes(&r).len(), 7);
    assert_eq!(s.t.read("root/existing.txt"), "overwritten\n");
    assert!(!s.t.exists("root/doomed.txt"));
    assert_eq!(s.t.rows("root/app.db", "SELECT x FROM t"), ["42"]);
}

#[test]
fn plugin_checkpoints_resume_where_a_failed_run_stopped() {
    let s = Sandbox::new();
    let items = json!(["a", "b", "c", "d"]);
    s.run(
        json!({"mode": "checkpoint", "path": "out", "items": items, "fail-at": "c"}),
        &[],
    )
    .code(1)
    .says("failing at item c");
    assert!(
        s.t.exists("root/out/a.txt")
            && s.t.exists("root/out/b.txt")
            && !s.t.exists("root/out/c.txt")
    );
    // Proof that done items are skipped rather than redone: a.txt is not written again.
    std::fs::remove_file(s.t.path("root/out/a.txt")).unwrap();
    let args = |extra: &'static str| {
        let cfg = json!({"mode": "checkpoint", "path": "out", "items": items}).to_string();
        let mut v = vec![
            "-C".to_string(),
            "root".into(),
            "run".into(),
            "hostile.wasm".into(),
            "--path".into(),
            ".".into(),
            "--config-json".into(),
            cfg,
        ];
        if !extra.is_empty() {
            v.push(extra.into());
        }
        v
    };
    let dry = args("--dry-run");
    let planned =
        s.t.json(&dry.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert_eq!(
        planned["steps"][0]["counters"],
        json!({"processed": 2, "skipped": 2})
    );
    let apply = args("");
    let applied =
        s.t.json(&apply.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert_eq!(
        applied["steps"][0]["counters"],
        json!({"processed": 2, "skipped": 2})
    );
    assert!(
        !s.t.exists("root/out/a.txt"),
        "a done item was processed again"
    );
    assert_eq!(s.t.read("root/out/d.txt"), "d");
    let again =
        s.t.json(&apply.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert_eq!(
        again["steps"][0]["counters"],
        json!({"processed": 0, "skipped": 4})
    );
}

#[test]
fn incompatible_components_are_refused_naming_the_problem() {
    let t = Env::new();
    t.write("garbage.wasm", "this is not WebAssembly");
    t.write("core.wasm", b"\0asm\x01\0\0\0");
    t.write("standard.wasm", &built().standard);
    t.write(
        "stray-import.wasm",
        component_importing("idem:plugin/network@0.1.0"),
    );
    t.write(
        "old-contract.wasm",
        component_importing("idem:plugin/fs@0.0.1"),
    );
    let cases = [
        ("garbage.wasm", "is not a WebAssembly file"),
        ("core.wasm", "is a core WebAssembly module, not a component"),
        (
            "standard.wasm",
            "no exported instance named `idem:plugin/step@0.1.0`",
        ),
        ("stray-import.wasm", "idem:plugin/network@0.1.0"),
        ("old-contract.wasm", "idem:plugin/fs@0.0.1"),
        ("missing.wasm", "missing.wasm does not exist"),
        (
            "../elsewhere.wasm",
            "denied: \"../elsewhere.wasm\" climbs above the root",
        ),
    ];
    for (file, says) in cases {
        let r = t.idem(&["run", file]);
        r.code(1).says(&format!("plugin {file}")).says(says);
    }
    // In a plan, the failing plugin step fails the run and the steps after it do not run.
    t.write(
        "idem.yml",
        "steps:\n  - plugin: standard.wasm\n  - file: after.txt\n    content: x\n",
    );
    let r = t.json(&["apply"], 1);
    assert_eq!(
        outcomes(&r).into_iter().map(|o| o.0).collect::<Vec<_>>(),
        ["failed", "not-run"]
    );
    assert!(!t.exists("after.txt"));
}

/// A component whose only content is an import of an instance named `name` with one
/// function, `connect(host: string)`: the smallest thing that asks the host for an interface
/// it does not provide.
pub fn component_importing(name: &str) -> Vec<u8> {
    use wasm_encoder::{
        Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType,
        PrimitiveValType,
    };
    let mut instance = InstanceType::new();
    instance
        .ty()
        .function()
        .params([("host", PrimitiveValType::String)])
        .result(None);
    instance.export("connect", ComponentTypeRef::Func(0));
    let mut types = ComponentTypeSection::new();
    types.instance(&instance);
    let mut imports = ComponentImportSection::new();
    imports.import(name, ComponentTypeRef::Instance(0));
    let mut c = Component::new();
    c.section(&types);
    c.section(&imports);
    c.finish()
}

#[test]
fn plugin_step_in_a_plan_converges_with_plan_check_apply_and_verify() {
    let t = Env::new();
    t.write("plugins/manifest.wasm", &built().manifest);
    t.write("dist/app.js", "console.log(1)\n");
    t.write("dist/css/site.css", "body {}\n");
    t.write(
        "idem.yml",
        "steps:\n  - file: dist/index.html\n    content: \"<h1>hi</h1>\\n\"\n  - plugin: plugins/manifest.wasm\n    config: { dir: dist }\n    paths: [dist]\n",
    );
    let r = assert_converges(&t, &[]);
    assert_eq!(outcomes(&r)[1].0, "created");
    assert_eq!(outcomes(&r)[1].1, json!({"files": 3, "bytes": 35}));
    assert_eq!(
        t.read("dist/MANIFEST"),
        "# manifest of dist: 3 files, 35 bytes\n15\tapp.js\n8\tcss/site.css\n12\tindex.html\n"
    );
    // A change the plan makes before the plugin is seen by the plugin, in a dry run too.
    t.write("dist/app.js", "console.log(12)\n");
    let planned = t.json(&["check"], 2);
    assert_eq!(
        changes(&planned),
        vec![(
            2,
            "update-file".to_string(),
            "dist/MANIFEST".to_string(),
            None
        )]
    );
    let applied = t.json(&["apply", "--verify"], 0);
    assert_eq!(applied["verify"]["ok"], true);
    t.json(&["check"], 0);
}

#[test]
fn plugin_step_with_a_database_converges_in_a_plan_after_the_step_that_makes_its_directory() {
    let t = Env::new();
    t.write("plugins/hostile.wasm", &built().hostile);
    let plan = |items: &str| {
        format!(
            "steps:\n  - dir: data\n  - plugin: plugins/hostile.wasm\n    config: {{ mode: upsert, database: data/app.db, items: [{items}] }}\n    paths: [data]\n    databases: [data/app.db]\n"
        )
    };
    t.write("idem.yml", plan("a, bb, ccc"));
    let r = assert_converges(&t, &[]);
    assert_eq!(
        outcomes(&r)[1],
        ("created".to_string(), json!({"written": 3, "unchanged": 0}))
    );
    assert_eq!(
        t.rows("data/app.db", "SELECT name, len FROM items ORDER BY name"),
        ["a|1", "bb|2", "ccc|3"]
    );
    // One new row, the others untouched: the dry run counts exactly what apply writes.
    t.write("idem.yml", plan("a, bb, ccc, dddd"));
    let r = assert_converges(&t, &[]);
    assert_eq!(
        outcomes(&r)[1],
        ("updated".to_string(), json!({"written": 1, "unchanged": 3}))
    );
    assert_eq!(
        changes(&r),
        vec![(
            2,
            "write-rows".to_string(),
            "data/app.db".to_string(),
            Some(1)
        )]
    );
    t.json(&["apply", "--verify"], 0);
}

#[test]
fn plugin_step_is_confined_to_the_paths_and_databases_it_names() {
    let t = Env::new();
    t.write("hostile.wasm", &built().hostile);
    t.write("etc/passwd.local", "root\n");
    let before = t.snapshot();
    t.write(
        "idem.yml",
        "steps:\n  - plugin: hostile.wasm\n    config: { mode: write, path: etc/passwd.local }\n    paths: [out]\n",
    );
    t.idem(&["apply"])
        .code(1)
        .says("is outside the paths this step may touch (out)");
    t.write(
        "idem.yml",
        "steps:\n  - plugin: hostile.wasm\n    config: { mode: open-database, database: other.db }\n    databases: [app.db]\n",
    );
    t.idem(&["apply"])
        .code(1)
        .says("databases named by the step: app.db");
    let mut after = t.snapshot();
    after.remove("idem.yml");
    let mut before = before;
    before.remove("idem.yml");
    assert_same_tree(&before, &after, "a confined plugin");
}

#[test]
fn rust_example_plugin_converges() {
    let t = Env::new();
    t.write("manifest.wasm", &built().manifest);
    t.write("site/a.txt", "aaa");
    t.write("site/deep/b.txt", "bb");
    t.write(
        "idem.yml",
        "steps:\n  - plugin: manifest.wasm\n    config: { dir: site }\n    paths: [site]\n",
    );
    assert_converges(&t, &[]);
    assert_eq!(
        t.read("site/MANIFEST"),
        "# manifest of site: 2 files, 5 bytes\n3\ta.txt\n2\tdeep/b.txt\n"
    );
    // `idem run` too, and a bad config is an error naming the field.
    t.idem(&[
        "run",
        "manifest.wasm",
        "--path",
        "site",
        "--config-json",
        r#"{"dir":"site"}"#,
    ])
    .code(0)
    .says("unchanged");
    t.idem(&[
        "run",
        "manifest.wasm",
        "--path",
        "site",
        "--config-json",
        r#"{"dri":"site"}"#,
    ])
    .code(1)
    .says("unknown field `dri`");
}

#[test]
fn python_example_plugin_converges_and_writes_what_the_rust_one_writes() {
    let t = Env::new();
    t.write("py.wasm", python_plugin());
    t.write("rs.wasm", &built().manifest);
    t.write("site/a.txt", "aaa");
    t.write("site/deep/b.txt", "bb");
    t.write(
        "idem.yml",
        "steps:\n  - plugin: py.wasm\n    config: { dir: site, output: py.txt }\n    paths: [site, py.txt]\n",
    );
    let r = assert_converges(&t, &[]);
    assert_eq!(
        outcomes(&r)[0],
        ("created".to_string(), json!({"files": 2, "bytes": 5}))
    );
    t.idem(&[
        "run",
        "rs.wasm",
        "--path",
        "site",
        "--path",
        "rs.txt",
        "--config-json",
        r#"{"dir":"site","output":"rs.txt"}"#,
    ])
    .code(0);
    assert_eq!(t.read("py.txt"), t.read("rs.txt"));
    t.idem(&["run", "py.wasm", "--config-json", "null"])
        .code(1)
        .says("this plugin needs a config");
}

#[test]
fn compiled_plugins_are_cached_so_a_second_run_does_not_compile() {
    let t = Env::new();
    let cache = tempfile::tempdir().unwrap();
    t.write("hostile.wasm", &built().hostile);
    let run = || {
        let out = t
            .cmd()
            .env("IDEM_CACHE_DIR", cache.path())
            .args(["run", "hostile.wasm", "--path", ".", "-vv", "--config-json"])
            .arg(r#"{"mode":"well-behaved","path":"x.txt","content":"x"}"#)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cold = run();
    assert!(
        cold.contains("compiled a component"),
        "the first run should compile:\n{cold}"
    );
    let cached = std::fs::read_dir(cache.path()).unwrap().count();
    assert!(cached >= 1, "nothing was cached");
    let warm = run();
    assert!(
        !warm.contains("compiled a component"),
        "the second run compiled again:\n{warm}"
    );
    // `--no-cache` always compiles, and leaves the cache alone.
    let uncached = t.idem(&[
        "run",
        "hostile.wasm",
        "--path",
        ".",
        "-vv",
        "--no-cache",
        "--config-json",
        r#"{"mode":"well-behaved","path":"x.txt","content":"x"}"#,
    ]);
    uncached.code(0).says("compiled a component");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), cached);
}

// One store per plugin step (issue 11): a plugin step's stderr, memory, resources and
// database connections are its own and end with it.

/// Run idem on `t` with `args`, and return the run and the peak resident memory of the idem
/// process in MiB, as GNU time(1) reads it with `wait4` (so other tests' processes do not
/// count). Through time(1), not a `wait4` of our own: a child spawned from this test process
/// shares its memory until exec (vfork), and Linux then counts that memory's high-water mark
/// (the whole test binary's, with every other test running in it) in the child's
/// `ru_maxrss`. time(1) is a small process, so the idem it starts carries no such inheritance.
pub fn idem_with_peak_rss(t: &Env, args: &[&str], nofile: Option<u64>) -> (Run, u64) {
    use std::os::unix::process::CommandExt;
    let idem = t.cmd();
    let peak_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(peak_file.path())
        .arg(idem.get_program())
        .args(idem.get_args())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(dir) = idem.get_current_dir() {
        cmd.current_dir(dir);
    }
    for (k, v) in idem.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("running idem");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).unwrap();
        s
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut out, &mut stdout).unwrap();
    let stderr = reader.join().unwrap();
    // time(1) exits with idem's status (128 + the signal's number if a signal ended it).
    let code = child.wait().expect("waiting for idem").code().unwrap_or(-1);
    // time(1) reports idem's ru_maxrss in KiB (its last line: idem's own stderr comes before).
    let written = std::fs::read_to_string(peak_file.path()).unwrap();
    let peak = written
        .lines()
        .last()
        .and_then(|l| l.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("time(1) wrote no peak: {written:?}"))
        / 1024;
    (
        Run {
            code,
            stdout,
            stderr,
        },
        peak,
    )
}

#[test]
fn plugin_that_writes_200_kb_to_stderr_succeeds() {
    let s = Sandbox::new();
    let cfg = json!({"mode": "stderr", "size": 200 * 1024, "path": "out.txt", "content": "done\n"});
    let r = s.run(cfg, &["--format", "json"]);
    r.code(0);
    let written = r.json()["steps"][0]["counters"]["stderr-bytes"]
        .as_u64()
        .unwrap();
    assert!(written >= 200 * 1024, "{written}");
    assert_eq!(s.t.read("root/out.txt"), "done\n");
}

#[test]
fn a_second_plugin_step_does_not_see_the_first_ones_stderr() {
    let t = Env::new();
    t.write("p.wasm", &built().hostile);
    t.write(
        "idem.yml",
        "steps:\n  - plugin: p.wasm\n    config: { mode: stderr, path: one.txt, content: said-by-step-one }\n    paths: [one.txt]\n  - plugin: p.wasm\n    config: { mode: panic, content: said-by-step-two }\n",
    );
    let r = t.json(&["apply"], 1);
    let err = r["steps"][1]["error"].as_str().unwrap();
    assert!(err.contains("said-by-step-two"), "{err}");
    assert!(err.contains("panicking as asked"), "{err}");
    assert!(
        !err.contains("said-by-step-one"),
        "step 1's stderr leaked: {err}"
    );
    assert_eq!(r["steps"][1]["error_kind"], "trap");
}

#[test]
fn each_plugin_step_frees_its_memory_when_it_ends() {
    let t = Env::new();
    t.write("p.wasm", &built().hostile);
    let mut plan = String::from("steps:\n");
    for _ in 0..6 {
        plan.push_str("  - plugin: p.wasm\n    config: { mode: hold-memory, size: 120 }\n");
    }
    t.write("idem.yml", &plan);
    let (r, peak) = idem_with_peak_rss(&t, &["apply"], None);
    r.code(0);
    // Six steps of 120 MiB each: kept until the run ended, they took the host past 700 MiB.
    assert!(
        peak < 400,
        "host peak RSS {peak} MiB over six 120 MiB steps"
    );
}

#[test]
fn each_plugin_step_closes_the_handles_it_leaked() {
    let t = Env::new();
    t.write("p.wasm", &built().hostile);
    t.write("data.txt", "x\n");
    let mut plan = String::from("steps:\n");
    for _ in 0..4 {
        plan.push_str(
            "  - plugin: p.wasm\n    config: { mode: leak-readers, path: data.txt, count: 150 }\n    paths: [data.txt]\n",
        );
    }
    t.write("idem.yml", &plan);
    // 600 readers in all against 256 descriptors: only if each step's resources end with it.
    let (r, _) = idem_with_peak_rss(&t, &["apply"], Some(256));
    r.code(0);
}

#[test]
fn connection_state_a_plugin_creates_ends_with_its_step() {
    let t = Env::new();
    t.write("p.wasm", &built().hostile);
    t.write(
        "idem.yml",
        "steps:\n  - plugin: p.wasm\n    config: { mode: upsert, database: app.db, items: [a] }\n    databases: [app.db]\n  - plugin: p.wasm\n    config: { mode: sql, database: app.db, sql: \"CREATE TEMP TRIGGER dup AFTER INSERT ON items BEGIN INSERT OR IGNORE INTO items VALUES (new.name || '-dup', 0); END\" }\n    databases: [app.db]\n  - plugin: p.wasm\n    config: { mode: upsert, database: app.db, items: [a, bb] }\n    databases: [app.db]\n",
    );
    for mode in ["plan", "apply"] {
        let r = t.json(&[mode], 0);
        assert_eq!(
            r["steps"][2]["counters"],
            json!({"written": 1, "unchanged": 1}),
            "{mode}"
        );
    }
    assert_eq!(
        t.rows("app.db", "SELECT name, len FROM items ORDER BY name"),
        ["a|1", "bb|2"],
        "the TEMP trigger of step 2 fired in step 3"
    );
}

/// Issue 11: a second run that fails is an error of `--verify`, not a made-up change.
#[test]
fn verify_reports_a_failed_second_run_as_an_error_not_as_a_change() {
    let t = Env::new();
    t.write("p.wasm", &built().hostile);
    t.write(
        "idem.yml",
        "steps:\n  - plugin: p.wasm\n    config: { mode: once-only, path: once.txt }\n    paths: [once.txt]\n",
    );
    let r = t.json(&["apply", "--verify"], 3);
    assert_eq!(r["verify"]["ok"], false);
    assert_eq!(r["verify"]["changes"], json!([]));
    assert_eq!(r["verify"]["errors"][0]["step"], 1);
    let msg = r["verify"]["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("once.txt is there already"), "{msg}");
    std::fs::remove_file(t.path("once.txt")).unwrap();
    t.idem(&["apply", "--verify"])
        .code(3)
        .says("NOT VERIFIED: the second run failed at step 1");
}

/// Issue 11: failures are typed in the report: what stopped a step, and what caused a guest's
/// error, as stable codes rather than words to match.
#[test]
fn failures_carry_their_kind_and_cause_in_the_json_report() {
    let s = Sandbox::new();
    let kind = |config: Value, extra: &[&str]| {
        let mut args = vec!["--format", "json"];
        args.extend(extra);
        let r = s.run(config, &args);
        r.code(1);
        let step = &r.json()["steps"][0];
        (
            step["error_kind"].as_str().unwrap_or("").to_string(),
            step["error_cause"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        kind(json!({"mode": "write", "path": "../x"}), &[]),
        ("guest".into(), "denied".into())
    );
    assert_eq!(
        kind(json!({"mode": "read", "path": "none.txt"}), &[]),
        ("guest".into(), "not-found".into())
    );
    assert_eq!(
        kind(json!({"mode": "loop"}), &["--plugin-timeout", "1"]),
        ("limit".into(), String::new())
    );
    assert_eq!(
        kind(json!({"mode": "panic", "content": "x"}), &[]),
        ("trap".into(), String::new())
    );
    s.t.write("root/junk.wasm", "not wasm");
    let r =
        s.t.idem(&["-C", "root", "run", "junk.wasm", "--format", "json"]);
    r.code(1);
    assert_eq!(r.json()["steps"][0]["error_kind"], "load");
}

/// Run `idem -C root run hostile.wasm` with `config` and `extra`, killing it (and failing the
/// test) if it outlives `limit`: a test of a time limit must not hang when the limit fails.
fn run_within(s: &Sandbox, config: Value, extra: &[&str], limit: Duration) -> (Run, Duration) {
    let config = config.to_string();
    let mut cmd = s.t.cmd();
    cmd.args([
        "-C",
        "root",
        "run",
        "hostile.wasm",
        "--path",
        ".",
        "--config-json",
        &config,
    ])
    .args(extra)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("idem was still running after {limit:?}: the time limit did not hold");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        started.elapsed(),
    )
}

/// Issue 12, item 1: a plugin waiting in the host (a WASI sleep) is stopped at its limit.
#[test]
fn plugin_that_sleeps_is_stopped_by_the_timeout() {
    let s = Sandbox::new();
    let (r, took) = run_within(
        &s,
        json!({"mode": "sleep", "size": 3600}),
        &["--plugin-timeout", "1"],
        Duration::from_secs(60),
    );
    r.code(1)
        .says("ran longer than its time limit of 1 s and was stopped")
        .says("blocked in a sleep");
    assert!(took < Duration::from_secs(20), "{took:?}");
    s.assert_still_works();
}

/// Issue 12, item 1: one endless SQL statement (the host is inside SQLite) is interrupted.
#[test]
fn plugin_with_an_endless_sql_query_is_stopped_by_the_timeout() {
    let s = Sandbox::new();
    let sql =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let (r, took) = run_within(
        &s,
        json!({"mode": "sql", "database": "app.db", "sql": sql}),
        &["--plugin-timeout", "1", "--database", "app.db"],
        Duration::from_secs(60),
    );
    r.code(1)
        .says("ran longer than its time limit of 1 s and was stopped")
        .says("blocked in an SQL statement");
    assert!(took < Duration::from_secs(20), "{took:?}");
    s.assert_still_works();
}
