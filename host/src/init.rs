//! `idem init`: a commented starter plan and a sample workflow, written only where nothing
//! is (the tool follows its own rules: check before acting, atomic writes, run twice safely).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::report::exit;

const STARTER_PLAN: &str = r#"# yaml-language-server: $schema=idem.schema.json
# (completion and checking in editors; `idem schema > idem.schema.json` refreshes it)
# idem plan: every step checks before it acts, so running it twice is safe.
#   idem plan    # dry run: what would change
#   idem apply   # make it so (again and again)
#   idem check   # CI drift check: exit 2 when something would change
version: 1
steps:
  # Ensure a directory exists (like mkdir -p).
  - dir: build/out

  # Ensure a file's content; written atomically, only when it differs.
  - file: build/out/hello.txt
    content: |
      hello from idem
    mode: "0644"

  # Write a default config once; never touch it again.
  - file: config/local.yml
    content: "debug: false\n"
    if-missing: true

  # Delete old logs; a second run deletes nothing.
  # - cleanup: logs
  #   older-than: 30d
  #   include: ["*.log"]

  # Load records into SQLite without duplicates (INSERT ... ON CONFLICT DO UPDATE).
  # - upsert: data/app.db
  #   table: users
  #   key: id
  #   from: data/users.csv
"#;

/// The sample workflow. Every action in it is pinned by commit SHA (a tag can be moved; a
/// SHA cannot), idem's own by the SHA of a release tag: action/release/pin-init.sh rewrites
/// the `uses: OWNER/idem@...` line after each release (docs/releasing.md). Until the first
/// release there is no tag to pin, and the line says so. tests/action/lint.sh lints this
/// workflow with zizmor (also `--persona pedantic`) and actionlint. It keeps no state across
/// attempts, so its comment promises only what a fresh runner gives: a safe re-run.
const SAMPLE_WORKFLOW: &str = r#"# Runs the idem plan on every push. Re-running a failed job is safe: every step checks
# before it acts, so a re-run redoes only what is still missing. (To resume an `each` step
# from its checkpoints instead, see persist-state in idem's docs/github-action.md.)
name: idem
on:
  push:
  workflow_dispatch:
permissions: {}
# One run at a time per branch: a second push waits instead of racing the first.
concurrency:
  group: idem-${{ github.ref }}
  cancel-in-progress: false
jobs:
  converge:
    name: converge
    runs-on: ubuntu-latest
    timeout-minutes: 30
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      # idem's action, pinned by the commit of a release tag. Replace OWNER with the account
      # that hosts idem; newer tags: git ls-remote https://github.com/OWNER/idem 'refs/tags/v*'
      - uses: OWNER/idem@0000000000000000000000000000000000000000 # v0.1.0 is not released yet: put its tag's commit SHA here
        with:
          plan: idem.yml
          mode: apply
          verify: "true"
"#;

/// Write `content` to `root/rel` unless something is there; say what happened.
fn write_new(root: &Path, rel: &str, content: &str) -> Result<&'static str> {
    let path = root.join(rel);
    if path.symlink_metadata().is_ok() {
        return Ok("unchanged");
    }
    let dir = path.parent().expect("a relative file path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Created 0666 less the umask, as any editor or `touch` would: a temporary file's usual
    // 0600 would leave a starter plan unreadable to the rest of a team.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    tmp.write_all(content.as_bytes())?;
    tmp.as_file().sync_all()?;
    // No clobbering: if something appeared meanwhile, it wins.
    match tmp.persist_noclobber(&path) {
        Ok(_) => Ok("created"),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok("unchanged"),
        Err(e) => Err(e.error).with_context(|| format!("writing {}", path.display())),
    }
}

pub fn init(root: &Path, schema: &str) -> Result<u8> {
    for (rel, content) in [
        ("idem.yml", STARTER_PLAN),
        ("idem.schema.json", schema),
        (".github/workflows/idem.yml", SAMPLE_WORKFLOW),
    ] {
        let outcome = write_new(root, rel, content)?;
        println!("{outcome:<10} {rel}");
    }
    Ok(exit::OK)
}
