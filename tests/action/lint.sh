#!/usr/bin/env bash
# Lints the action, its scripts, every workflow, and the workflow `idem init` writes; no
# network. Each tool must report zero findings; a finding that stays is explained in
# docs/github-action.md ("Lint findings").
#   tests/action/lint.sh      IDEM_BIN=path/to/idem (default target/debug/idem)
# (tests/action/setup.sh installs the tools.) The `idem init` workflow comes from the
# binary when there is one, and otherwise from the literal in host/src/init.rs that the
# binary writes (the self-test's lint job on GitHub has no binary).
set -uo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd "$REPO" || exit 1
IDEM_BIN=${IDEM_BIN:-$REPO/target/debug/idem}

ACTIONS=(action.yml tests/action/act/cache/restore/action.yml tests/action/act/cache/save/action.yml
  tests/action/act/upload-artifact/action.yml)
WORKFLOWS=(.github/workflows/*.yml)
SCRIPTS=(action/idem-action.sh action/release/*.sh tests/action/*.sh tests/action/act/cache/stub-cache.sh
  tests/action/act/upload-artifact/stub-upload.sh)

# The workflow `idem init` writes, in a directory of its own laid out as a repository.
INIT=$(mktemp -d "${TMPDIR:-/tmp}/idem-lint-init.XXXXXX")
trap 'rm -rf "$INIT"' EXIT
if [[ -x $IDEM_BIN ]]; then
  init_from="idem init ($IDEM_BIN)"
  (cd "$INIT" && "$IDEM_BIN" init >/dev/null)
else
  init_from="the SAMPLE_WORKFLOW literal of host/src/init.rs"
  mkdir -p "$INIT/.github/workflows"
  awk '/^const SAMPLE_WORKFLOW: &str = r#"/ { on = 1; sub(/^.*r#"/, ""); print; next }
    on && /^"#;$/ { exit } on { print }' host/src/init.rs >"$INIT/.github/workflows/idem.yml"
fi
INIT_WORKFLOW="$INIT/.github/workflows/idem.yml"

passed=0 failed=0
lint() {
  local name=$1
  shift
  printf '::group::%s\n' "$name"
  if "$@"; then
    passed=$((passed + 1))
    printf '::endgroup::\nok - %s\n' "$name"
  else
    failed=$((failed + 1))
    printf '::endgroup::\nnot ok - %s\n' "$name"
  fi
}

lint "zizmor (offline, strict collection)" zizmor --offline --strict-collection --no-progress .
lint "zizmor --persona pedantic" zizmor --offline --strict-collection --no-progress --persona pedantic .
lint "the init workflow exists ($init_from)" test -s "$INIT_WORKFLOW"
lint "zizmor: the init workflow" zizmor --offline --no-progress "$INIT_WORKFLOW"
lint "zizmor --persona pedantic: the init workflow" zizmor --offline --no-progress --persona pedantic "$INIT_WORKFLOW"
# actionlint runs shellcheck on every `run:` block too when shellcheck is on PATH.
lint "actionlint" actionlint -no-color "${WORKFLOWS[@]}"
lint "actionlint: the init workflow" actionlint -no-color "$INIT_WORKFLOW"
lint "check-jsonschema: actions" check-jsonschema --builtin-schema vendor.github-actions "${ACTIONS[@]}"
lint "check-jsonschema: workflows" check-jsonschema --builtin-schema vendor.github-workflows "${WORKFLOWS[@]}" "$INIT_WORKFLOW"
lint "check-jsonschema: dependabot" check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml
lint "shellcheck" shellcheck --external-sources "${SCRIPTS[@]}"

echo "$passed passed, $failed failed"
((failed == 0))
