//! The sandbox against an attacker (issue 12): modes, the state store however it is spelt,
//! grants that links cannot widen, least privilege, hard links, header pragmas. Each test
//! names the item of the issue it covers; each failed on the code before the fix.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::plugins::{built, idem_with_peak_rss};
use crate::support::*;

/// A root with the hostile plugin at `p.wasm`.
fn root() -> Env {
    let t = Env::new();
    t.write("p.wasm", &built().hostile);
    t
}

/// `idem run p.wasm --config-json CONFIG EXTRA...`, expecting `code`.
#[track_caller]
fn run(t: &Env, config: Value, extra: &[&str], code: i32) -> Run {
    let config = config.to_string();
    let mut args = vec!["run", "p.wasm", "--config-json", &config];
    args.extend(extra);
    let r = t.idem(&args);
    r.code(code);
    r
}

#[track_caller]
fn state_intact(t: &Env) {
    t.idem(&["history"]).code(0);
    t.json(&["plan"], 0);
}

/// Item 4: no setuid, setgid or sticky bits from a plugin; no mode change of the root or of
/// a grant's top.
#[test]
fn a_plugin_may_not_set_special_mode_bits_or_chmod_the_root_or_its_grant() {
    let t = root();
    t.write("dist/tool", "#!/bin/sh\n");
    for (path, mode) in [
        ("dist/tool", 4755),
        ("dist/tool", 2755),
        ("dist/tool", 1755),
    ] {
        run(
            &t,
            json!({"mode": "chmod", "path": path, "size": mode}),
            &["--path", "dist"],
            1,
        )
        .says("setuid, setgid or sticky");
        assert_eq!(t.mode("dist/tool") & 0o7000, 0);
    }
    let before = t.mode("dist");
    run(
        &t,
        json!({"mode": "chmod", "path": "dist", "size": 0}),
        &["--path", "dist"],
        1,
    )
    .says("top of a path the step was granted");
    run(
        &t,
        json!({"mode": "chmod", "path": ".", "size": 0}),
        &["--path", "."],
        1,
    )
    .says("the root or the top");
    assert_eq!(t.mode("dist"), before);
    // An ordinary mode inside the grant is fine.
    run(
        &t,
        json!({"mode": "chmod", "path": "dist/tool", "size": 750}),
        &["--path", "dist"],
        0,
    );
    assert_eq!(t.mode("dist/tool"), 0o750);
}

/// Item 5: header pragmas may be read, never written (they wrote the file and the step said
/// `unchanged`); a schema_version write could corrupt it.
#[test]
fn a_plugin_may_read_but_not_write_the_database_header() {
    let t = root();
    {
        let c = rusqlite::Connection::open(t.path("app.db")).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(t.path("app.db")).unwrap();
    for sql in [
        "PRAGMA user_version = 5",
        "PRAGMA application_id = 7",
        "PRAGMA schema_version = 99",
        "PRAGMA page_size = 512",
    ] {
        run(
            &t,
            json!({"mode": "sql", "database": "app.db", "sql": sql}),
            &["--database", "app.db"],
            1,
        )
        .says("statement not allowed");
    }
    assert_eq!(std::fs::read(t.path("app.db")).unwrap(), before);
}

/// Item 6: `.idem` reached through a link to it, or to an ancestor, from a plan step.
#[test]
fn a_plan_step_cannot_reach_the_state_store_through_a_link() {
    let t = Env::new();
    t.write("idem.yml", "steps:\n  - dir: out\n");
    t.idem(&["apply"]).code(0);
    std::os::unix::fs::symlink(".idem", t.path("idem-link")).unwrap();
    std::os::unix::fs::symlink(".", t.path("self")).unwrap();
    t.write("idem.yml", "steps:\n  - remove: idem-link/state.db\n");
    t.idem(&["apply"])
        .code(1)
        .says("leads into idem's own state");
    t.write(
        "idem.yml",
        "steps:\n  - file: self/.idem/state.db\n    content: \"pwned\\n\"\n",
    );
    t.idem(&["apply"])
        .code(1)
        .says("leads into idem's own state");
    t.idem(&["plan"])
        .code(1)
        .says("leads into idem's own state");
    t.write(
        "idem.yml",
        "steps:\n  - remove: self\n    recursive: true\n",
    );
    // Removing the link itself is fine (remove never follows a link)...
    t.idem(&["apply"]).code(0);
    assert!(!t.exists("self"));
    assert!(t.path(".idem/state.db").exists());
    state_intact(&t);
}

/// Item 6: the same from a plugin, and a case-folded `.IDEM`.
#[test]
fn a_plugin_cannot_reach_the_state_store_however_it_spells_it() {
    let t = root();
    t.write("idem.yml", "steps: []\n");
    t.idem(&["apply"]).code(0);
    std::os::unix::fs::symlink(".", t.path("up")).unwrap();
    for path in ["up/.idem/state.db", ".IDEM/state.db", "up/up/.idem/x"] {
        run(
            &t,
            json!({"mode": "write", "path": path}),
            &["--path", "."],
            1,
        )
        .says("denied");
    }
    run(
        &t,
        json!({"mode": "read", "path": "up/.idem/state.db"}),
        &["--path", "."],
        1,
    )
    .says("idem's own state");
    run(
        &t,
        json!({"mode": "open-database", "database": "up/.idem/state.db"}),
        &["--database", "up/.idem/state.db"],
        1,
    )
    .says("idem's own state");
    state_intact(&t);
}

/// Item 6: a `--state` elsewhere under the root is protected too.
#[test]
fn a_state_store_elsewhere_under_the_root_is_protected() {
    let t = Env::new();
    t.write("idem.yml", "steps:\n  - dir: data\n");
    t.idem(&["--state", "data/state.db", "apply"]).code(0);
    t.write("idem.yml", "steps:\n  - remove: data/state.db\n");
    t.idem(&["--state", "data/state.db", "apply"])
        .code(1)
        .says("idem's own state");
    assert!(t.exists("data/state.db"));
    t.write(
        "idem.yml",
        "steps:\n  - remove: data\n    recursive: true\n",
    );
    t.idem(&["--state", "data/state.db", "apply"])
        .code(1)
        .says("holds idem's own state");
    assert!(t.exists("data/state.db"));
}

/// Item 6: a repository that ships `.idem` as a link would send the state anywhere.
#[test]
fn a_state_directory_that_is_a_link_is_refused() {
    let t = Env::new();
    t.mkdir("elsewhere");
    std::os::unix::fs::symlink("elsewhere", t.path(".idem")).unwrap();
    t.write("idem.yml", "steps:\n  - dir: out\n");
    t.idem(&["apply"]).code(1).says(".idem is a symbolic link");
    assert_eq!(std::fs::read_dir(t.path("elsewhere")).unwrap().count(), 0);
    assert!(!t.exists("out"));
}

/// Item 6: a grant is what it says: a link inside it does not lead out of it.
#[test]
fn a_link_inside_a_grant_does_not_widen_it() {
    let t = root();
    t.write("secret/key.txt", "secret\n");
    t.mkdir("dist");
    std::os::unix::fs::symlink("../secret", t.path("dist/x")).unwrap();
    run(
        &t,
        json!({"mode": "read", "path": "dist/x/key.txt"}),
        &["--path", "dist"],
        1,
    )
    .says("leads outside the paths this step may touch");
    run(
        &t,
        json!({"mode": "write", "path": "dist/x/new.txt"}),
        &["--path", "dist"],
        1,
    )
    .says("leads outside the paths");
    assert!(!t.exists("secret/new.txt"));
    // A link that stays inside the grant still works.
    t.write("dist/real/a.txt", "a\n");
    std::os::unix::fs::symlink("real", t.path("dist/alias")).unwrap();
    run(
        &t,
        json!({"mode": "read", "path": "dist/alias/a.txt"}),
        &["--path", "dist"],
        0,
    );
}

/// Item 7: least privilege: no file access without `paths`; `.git` and the plan file only
/// when named.
#[test]
fn a_plugin_gets_no_files_unless_its_step_names_them() {
    let t = root();
    run(&t, json!({"mode": "write", "path": "a.txt"}), &[], 1).says("the step names no `paths`");
    assert!(!t.exists("a.txt"));
    t.write(".git/hooks/pre-commit", "#!/bin/sh\n");
    t.write(
        "idem.yml",
        "steps:\n  - plugin: p.wasm\n    config: { mode: write, path: .git/hooks/pre-commit }\n    paths: [.]\n",
    );
    t.idem(&["apply"]).code(1).says("under .git");
    assert_eq!(t.read(".git/hooks/pre-commit"), "#!/bin/sh\n");
    t.write(
        "idem.yml",
        "steps:\n  - plugin: p.wasm\n    config: { mode: write, path: idem.yml }\n    paths: [.]\n",
    );
    t.idem(&["apply"]).code(1).says("under idem.yml");
    assert!(t.read("idem.yml").contains("plugin"));
    // Named, they may be touched.
    t.write(
        "idem.yml",
        "steps:\n  - plugin: p.wasm\n    config: { mode: write, path: .git/hooks/pre-commit }\n    paths: [.git/hooks]\n",
    );
    t.idem(&["apply"]).code(0);
    assert_eq!(t.read(".git/hooks/pre-commit"), "pwned\n");
}

/// Item 10: `databases:` grants the sqlite interface; the file itself is not a path grant.
#[test]
fn a_database_grant_is_not_a_file_grant() {
    let t = root();
    run(
        &t,
        json!({"mode": "sql", "database": "app.db", "sql": "CREATE TABLE t (x)"}),
        &["--database", "app.db"],
        0,
    );
    let before = std::fs::read(t.path("app.db")).unwrap();
    run(
        &t,
        json!({"mode": "write", "path": "app.db"}),
        &["--database", "app.db", "--path", "."],
        1,
    )
    .says("reach it through the sqlite interface");
    assert_eq!(std::fs::read(t.path("app.db")).unwrap(), before);
}

/// Item 8: a hard link to a file outside the root must not carry a mode change out.
#[test]
fn a_mode_change_never_follows_a_hard_link_out_of_the_root() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("shadow");
    std::fs::write(&target, "same\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let t = root();
    std::fs::hard_link(&target, t.path("linked.txt")).unwrap();
    t.write(
        "idem.yml",
        "steps:\n  - file: linked.txt\n    content: \"same\\n\"\n    mode: \"0777\"\n",
    );
    t.idem(&["apply"]).code(1).says("hard links");
    run(
        &t,
        json!({"mode": "chmod", "path": "linked.txt", "size": 777}),
        &["--path", "."],
        1,
    )
    .says("hard links");
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "the file outside the root changed mode");
}

/// The host's peak memory when a plugin limited to 256 MiB tries `config`: at most the limit
/// and 64 MiB more (issue 12, item 3).
#[track_caller]
fn bounded(t: &Env, config: Value, extra: &[&str], code: i32) -> Run {
    let config = config.to_string();
    let mut args = vec![
        "run",
        "p.wasm",
        "--plugin-memory",
        "256",
        "--config-json",
        &config,
    ];
    args.extend(extra);
    let (r, peak) = idem_with_peak_rss(t, &args, None);
    r.code(code);
    assert!(
        peak <= 256 + 64,
        "host peak RSS {peak} MiB for a plugin limited to 256 MiB:\n{}{}",
        r.stdout,
        r.stderr
    );
    r
}

/// A sparse file of `gib` GiB: no disk, but a read of it is that large.
fn sparse(t: &Env, rel: &str, gib: u64) {
    let f = std::fs::File::create(t.path(rel)).unwrap();
    f.set_len(gib << 30).unwrap();
}

#[test]
fn a_plugin_reading_a_huge_file_does_not_take_the_hosts_memory() {
    let t = root();
    sparse(&t, "big.bin", 3);
    bounded(
        &t,
        json!({"mode": "read", "path": "big.bin"}),
        &["--path", "."],
        1,
    )
    .says("read it in chunks with `open-reader`");
}

#[test]
fn a_plugin_writing_over_a_huge_file_does_not_take_the_hosts_memory() {
    let t = root();
    sparse(&t, "big.bin", 3);
    bounded(
        &t,
        json!({"mode": "well-behaved", "path": "big.bin", "content": "small\n"}),
        &["--path", "."],
        0,
    );
    assert_eq!(t.read("big.bin"), "small\n");
}

#[test]
fn a_plugin_querying_huge_blobs_does_not_take_the_hosts_memory() {
    let t = root();
    bounded(
        &t,
        json!({"mode": "query", "database": "app.db", "sql": "SELECT zeroblob(2000000000)"}),
        &["--database", "app.db"],
        1,
    )
    .says("too big");
    // Many rows of moderate blobs: the result as a whole is bounded too.
    bounded(
        &t,
        json!({"mode": "query", "database": "app.db",
               "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) SELECT zeroblob(10000000) FROM c"}),
        &["--database", "app.db"],
        1,
    )
    .says("larger than 64 MiB");
}

/// Issue 12, items 3 and 9: `file: source:` copied through the guest (2 to 3 times the file in
/// memory), and a copy over 128 MiB failed with wasmtime's internal "fuel allocated for
/// hostcalls has been exhausted". The host now copies in chunks.
#[test]
fn a_200_mib_source_is_copied_in_chunks_with_flat_memory() {
    let t = Env::new();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(t.path("src.bin")).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..200 {
            f.write_all(&chunk).unwrap();
        }
    }
    t.write(
        "idem.yml",
        "steps:\n  - file: copy.bin\n    source: src.bin\n",
    );
    // The standard guest compiled into the shared cache first: on a cold cache (a fresh
    // clone, this test first) Cranelift's compile would be counted in the peak, not the copy.
    t.idem(&["schema"]).code(0);
    for mode in ["plan", "apply"] {
        let (r, peak) = idem_with_peak_rss(&t, &[mode], None);
        r.code(0);
        assert!(peak < 120, "{mode}: peak RSS {peak} MiB copying 200 MiB");
    }
    assert_eq!(
        std::fs::metadata(t.path("copy.bin")).unwrap().len(),
        200 << 20
    );
    let (r, peak) = idem_with_peak_rss(&t, &["apply", "--verify"], None);
    r.code(0);
    assert!(peak < 120, "converged re-run: peak RSS {peak} MiB");
    assert!(r.stdout.contains("unchanged"), "{}", r.stdout);
}

/// The hostile plugin with `copies` more core instances of a module that defines one memory
/// of `pages` 64 KiB pages, appended as sections after its own (a component's sections may
/// come in any order, each referring only to what came before).
fn with_many_instances(copies: u32, pages: u64) -> Vec<u8> {
    use wasm_encoder::{
        ComponentSection, Encode, InstanceSection, MemorySection, MemoryType, Module, ModuleSection,
    };
    let base = &built().hostile;
    // Count the component's own top-level core modules (section id 1): ours comes next.
    let (mut at, mut modules) = (8usize, 0u32);
    while at < base.len() {
        let id = base[at];
        at += 1;
        let (mut size, mut shift) = (0usize, 0);
        loop {
            let b = base[at];
            at += 1;
            size |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        if id == 1 {
            modules += 1;
        }
        at += size;
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut module = Module::new();
    module.section(&memories);
    let mut instances = InstanceSection::new();
    for _ in 0..copies {
        instances.instantiate(modules, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    let mut out = base.clone();
    let module_section = ModuleSection(&module);
    out.push(module_section.id());
    module_section.encode(&mut out);
    out.push(instances.id());
    instances.encode(&mut out);
    out
}

/// Issue 12, item 3: the limiter keeps a store's instances, memories and tables to 100, and
/// sums all its memories against the step's limit. A component that instantiates a module
/// 300 times fails as a limit, not as a mismatch with the contract; one whose 60 memories of
/// 8 MiB each add up to more than 256 MiB fails as out of memory; the host's memory stays
/// bounded in both.
#[test]
fn a_plugin_with_many_instances_or_memories_is_stopped_at_the_store_limits() {
    let t = Env::new();
    t.write("p.wasm", with_many_instances(300, 1));
    bounded(&t, json!({"mode": "well-behaved"}), &[], 1)
        .says("more than 100 instances, memories or tables");
    let r = t.json(&["run", "p.wasm", "--config-json", "{}"], 1);
    assert_eq!(r["steps"][0]["error_kind"], "limit", "{r:#}");

    t.write("p.wasm", with_many_instances(60, 128));
    bounded(&t, json!({"mode": "well-behaved"}), &[], 1)
        .says("ran out of memory")
        .says("256 MiB");
}

/// Issue 12, item 3: resources were not counted per step, so a plugin could open readers
/// (each a descriptor and a buffer in the host) without end. A step may hold 1024 handles at
/// once; the next one stops it as a `limit`, with the host's memory bounded.
#[test]
fn a_plugin_holding_too_many_handles_is_stopped_at_the_step_limit() {
    let t = root();
    t.write("data.txt", "x\n");
    let config = json!({"mode": "leak-readers", "path": "data.txt", "count": 5000}).to_string();
    let (r, peak) = idem_with_peak_rss(
        &t,
        &[
            "run",
            "p.wasm",
            "--path",
            "data.txt",
            "--config-json",
            &config,
            "--format",
            "json",
        ],
        Some(8192),
    );
    r.code(1);
    let report = r.json();
    let step = &report["steps"][0];
    assert_eq!(step["error_kind"], "limit", "{report:#}");
    assert!(
        step["error"]
            .as_str()
            .unwrap()
            .contains("more than 1024 handles open at once"),
        "{report:#}"
    );
    assert!(peak <= 256 + 64, "host peak RSS {peak} MiB");
}

/// Issue 12, item 3: `list-dir` returned a whole directory in one call, held in the host
/// however large. A plugin's `list-dir` of more than 10,000 entries is refused with a hint;
/// `list-dir-page` lists it a page of at most 1024 at a time, with the host's memory bounded.
#[test]
fn a_plugin_lists_a_huge_directory_a_page_at_a_time_with_flat_host_memory() {
    let t = root();
    t.mkdir("big");
    let pad = "n".repeat(100);
    for i in 0..12_000 {
        std::fs::File::create(t.path("big").join(format!("{pad}{i:06}"))).unwrap();
    }
    bounded(
        &t,
        json!({"mode": "list-all", "path": "big"}),
        &["--path", "big"],
        1,
    )
    .says("more than 10000 entries")
    .says("list-dir-page");
    let r = bounded(
        &t,
        json!({"mode": "list-pages", "path": "big"}),
        &["--path", "big", "--format", "json"],
        0,
    );
    let report = r.json();
    assert_eq!(report["steps"][0]["counters"]["entries"], 12_000);
    assert_eq!(
        report["steps"][0]["counters"]["pages"],
        12_000u64.div_ceil(1024)
    );
}

/// `list-dir-page` under a dry run sees what earlier steps planned, as `list-dir` does.
#[test]
fn list_dir_page_sees_the_planned_tree_in_a_dry_run() {
    let t = root();
    t.write("d/a", "1").write("d/b", "2");
    t.write(
        "idem.yml",
        "steps:\n  - file: d/c\n    content: x\n  - remove: d/a\n  - plugin: p.wasm\n    config: { mode: list-pages, path: d }\n    paths: [d]\n",
    );
    for mode in ["plan", "apply"] {
        let r = t.json(&[mode], 0);
        assert_eq!(r["steps"][2]["counters"]["entries"], 2, "{mode}: b and c");
    }
}
