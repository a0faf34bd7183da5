//! The compiled-component cache holds native code, so it must never run code someone else
//! wrote (issue 12): a tampered artefact is recompiled, never executed; a cache directory
//! under the root, or one that others may write, is not used; the directory is made 0700 and
//! its key 0600. Each test runs the real binary with a cache directory of its own and the
//! standard guest, which goes through the cache like any plugin.

use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const PLAN: &str = "steps:\n  - dir: out\n";

/// idem `plan` on `t` with the compile cache in `cache` (and `-vv`, so a compile shows).
fn plan_with_cache(t: &Env, cache: &Path) -> Run {
    run(t.cmd().env("IDEM_CACHE_DIR", cache).args(["plan", "-vv"]))
}

fn run(cmd: &mut Command) -> Run {
    Run::from(cmd.output().expect("running idem"))
}

/// The compiled artefacts (`*.cwasm`) in a cache directory.
fn artefacts(cache: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return vec![];
    };
    let mut out: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The file range of a section of an ELF64 file (a wasmtime artefact is one), by name.
fn elf_section(elf: &[u8], want: &str) -> Range<usize> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let at = |o: usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&elf[o..o + n]);
        u64::from_le_bytes(b) as usize
    };
    let (shoff, shentsize, shnum, shstrndx) = (at(0x28, 8), at(0x3a, 2), at(0x3c, 2), at(0x3e, 2));
    let header = |i: usize| shoff + i * shentsize;
    let names = at(header(shstrndx) + 0x18, 8);
    for i in 0..shnum {
        let name = &elf[names + at(header(i), 4)..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
        if name == want.as_bytes() {
            let (offset, size) = (at(header(i) + 0x18, 8), at(header(i) + 0x20, 8));
            return offset..offset + size;
        }
    }
    panic!("no {want} section")
}

/// An instruction that traps wherever it is executed (`ud2`; all zeros elsewhere).
const TRAP: [u8; 2] = if cfg!(target_arch = "x86_64") {
    [0x0f, 0x0b]
} else {
    [0, 0]
};

/// A change to an artefact's bytes, given the range of its code.
type Tamper = fn(&mut Vec<u8>, Range<usize>);

#[test]
fn a_tampered_cached_artefact_is_recompiled_with_a_warning_and_never_executed() {
    let t = Env::new();
    t.write("idem.yml", PLAN);
    let dir = tempfile::tempdir().unwrap();
    // Canonical, as idem names the files it warns about.
    let cache = dir.path().canonicalize().unwrap();
    let cold = plan_with_cache(&t, &cache);
    cold.code(0).says("compiled a component");
    let [artefact] = &artefacts(&cache)[..] else {
        panic!("want one artefact (the standard guest) in the cache")
    };
    let good = std::fs::read(artefact).unwrap();
    let text = elf_section(&good, ".text");

    let tamperings: [(&str, Tamper); 4] = [
        // What an attacker writes: its code. Executed, it dies at once with SIGILL, as idem
        // did before issue 12.
        ("code replaced by traps", |b, text| {
            for pair in b[text].chunks_exact_mut(2) {
                pair.copy_from_slice(&TRAP);
            }
        }),
        ("one bit flipped in the code", |b, text| {
            b[text.start + text.len() / 2] ^= 0x10
        }),
        ("truncated", |b, _| b.truncate(b.len() / 2)),
        (
            "its tag stripped, as an artefact of an older idem",
            |b, _| b.truncate(b.len() - 32),
        ),
    ];
    for (what, tamper) in tamperings {
        let mut bad = good.clone();
        tamper(&mut bad, text.clone());
        std::fs::write(artefact, &bad).unwrap();
        let r = plan_with_cache(&t, &cache);
        r.code(0)
            .says("not running the compiled component")
            .says(&artefact.display().to_string())
            .says("compiled a component");
        let rewritten = std::fs::read(artefact).unwrap();
        assert_ne!(rewritten, bad, "{what}: the artefact was not rewritten");
        assert_eq!(
            rewritten.len(),
            good.len(),
            "{what}: the rewritten artefact differs in size from the first"
        );
        // And what was rewritten is used as is: no compile, no warning.
        let warm = plan_with_cache(&t, &cache);
        warm.code(0);
        assert!(
            !warm.all().contains("compiled a component") && !warm.all().contains("idem: warning"),
            "{what}: the rewritten artefact was not used:\n{}",
            warm.all()
        );
    }
}

#[test]
fn the_default_cache_is_not_used_when_the_root_is_home() {
    // Dotfiles provisioning: the root is $HOME, and the default cache, $HOME/.cache/idem, is
    // under it, where any step could write native code for the next run to execute.
    let t = Env::new();
    t.write("idem.yml", PLAN);
    let r = run(t
        .cmd()
        .env("HOME", t.root())
        .env_remove("IDEM_CACHE_DIR")
        .env_remove("XDG_CACHE_HOME")
        .args(["apply", "-vv"]));
    let root = t.root().canonicalize().unwrap();
    r.code(0);
    assert!(t.exists("out"), "the run did not apply");
    assert!(
        !t.exists(".cache"),
        "something was written under the root's .cache"
    );
    r.says("not using the compile cache")
        .says(&root.join(".cache/idem").display().to_string())
        .says(&format!("under the root {}", root.display()))
        .says("--cache-dir")
        .says("--no-cache")
        .says("compiled a component");
    assert_eq!(
        r.stderr.matches("not using the compile cache").count(),
        1,
        "said more than once:\n{}",
        r.stderr
    );
    // `--no-cache` says so deliberately: no warning.
    let quiet = run(t
        .cmd()
        .env("HOME", t.root())
        .env_remove("IDEM_CACHE_DIR")
        .env_remove("XDG_CACHE_HOME")
        .args(["apply", "--no-cache"]));
    quiet.code(0);
    assert!(!quiet.all().contains("idem: warning"), "{}", quiet.all());
}

#[test]
fn a_cache_dir_that_leads_into_the_root_through_a_link_is_not_used() {
    // IDEM_CACHE_DIR set to a path outside the workspace that is a link into it: the paths
    // are compared canonical.
    let t = Env::new();
    t.write("idem.yml", PLAN).mkdir("cache");
    let outside = tempfile::tempdir().unwrap();
    let link = outside.path().join("cache");
    std::os::unix::fs::symlink(t.path("cache"), &link).unwrap();
    let r = plan_with_cache(&t, &link);
    r.code(0);
    assert_eq!(
        std::fs::read_dir(t.path("cache")).unwrap().count(),
        0,
        "something was written in the root's cache directory"
    );
    r.says("not using the compile cache")
        .says(&link.display().to_string())
        .says("compiled a component");
}

#[test]
fn a_cache_dir_that_others_may_write_is_refused() {
    let t = Env::new();
    t.write("idem.yml", PLAN);
    for (m, who) in [(0o770, "its group"), (0o707, "others")] {
        let cache = tempfile::tempdir().unwrap();
        std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(m)).unwrap();
        let r = plan_with_cache(&t, cache.path());
        r.code(0);
        assert_eq!(
            std::fs::read_dir(cache.path()).unwrap().count(),
            0,
            "mode {m:o}: something was written in the cache"
        );
        r.says("not using the compile cache")
            .says(&cache.path().canonicalize().unwrap().display().to_string())
            .says(&format!("writable by {who} (mode {m:04o})"))
            .says("compiled a component");
    }
}

#[test]
fn a_cache_dir_owned_by_someone_else_is_refused() {
    let t = Env::new();
    t.write("idem.yml", PLAN);
    let probe = t.path("probe");
    std::fs::write(&probe, "").unwrap();
    let me = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&probe).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let theirs = if me == 0 {
        // As root, make the directory someone else's (`nobody`'s).
        std::os::unix::fs::chown(cache.path(), Some(65534), None).unwrap();
        cache.path().to_path_buf()
    } else {
        // Otherwise take one that root owns and no one else may write.
        PathBuf::from("/")
    };
    let r = plan_with_cache(&t, &theirs);
    r.code(0);
    assert_eq!(
        artefacts(&theirs),
        Vec::<PathBuf>::new(),
        "an artefact was written"
    );
    r.says("not using the compile cache")
        .says("not by you")
        .says("compiled a component");
}

#[test]
fn the_cache_dir_is_made_0700_and_its_key_0600_and_a_bad_key_is_refused() {
    let t = Env::new();
    t.write("idem.yml", PLAN);
    let parent = tempfile::tempdir().unwrap();
    let cache = parent
        .path()
        .canonicalize()
        .unwrap()
        .join("new")
        .join("idem");
    plan_with_cache(&t, &cache).code(0);
    assert_eq!(mode(&cache), 0o700, "the cache directory's mode");
    let key = cache.join("key");
    assert_eq!(mode(&key), 0o600, "the key's mode");
    let bytes = std::fs::read(&key).unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(artefacts(&cache).len(), 1);

    // A second run keeps the key and uses the artefact.
    let warm = plan_with_cache(&t, &cache);
    warm.code(0);
    assert!(
        !warm.all().contains("compiled a component"),
        "{}",
        warm.all()
    );
    assert_eq!(std::fs::read(&key).unwrap(), bytes, "the key changed");

    // A key others can read could be used to forge artefacts: the cache is not used.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = plan_with_cache(&t, &cache);
    r.code(0)
        .says(&format!("its key {}", key.display()))
        .says("mode 0644")
        .says("compiled a component");

    // A key cut short is refused too, not padded or replaced behind the user's back.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key, &bytes[..16]).unwrap();
    plan_with_cache(&t, &cache)
        .code(0)
        .says(&format!(
            "its key {} is not a file of 32 bytes",
            key.display()
        ))
        .says("compiled a component");

    // Under another key, the artefact is not authentic: recompiled and rewritten.
    let other: Vec<u8> = bytes.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&key, &other).unwrap();
    plan_with_cache(&t, &cache)
        .code(0)
        .says("not running the compiled component")
        .says("compiled a component");
    let warm = plan_with_cache(&t, &cache);
    warm.code(0);
    assert!(
        !warm.all().contains("compiled a component"),
        "{}",
        warm.all()
    );
}

#[test]
fn with_the_root_at_slash_nothing_is_cached() {
    // Every directory is under `/`, so no cache directory is safe from the steps: idem says
    // so and compiles. `schema` needs no plan and writes nothing under the root.
    let t = Env::new();
    let cache = tempfile::tempdir().unwrap();
    let r = run(t
        .cmd()
        .env("IDEM_CACHE_DIR", cache.path())
        .args(["-C", "/", "schema", "-vv"]));
    r.code(0);
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "something was written in the cache"
    );
    r.says("not using the compile cache")
        .says("the root is /")
        .says("--no-cache")
        .says("compiled a component");
}
