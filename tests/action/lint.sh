#!/usr/bin/env bash
# Lints the action, its script and the workflows; no network. Each tool must report zero
# findings; a finding that stays is explained in docs/github-action.md ("Lint findings").
#   tests/action/lint.sh      (tests/action/setup.sh installs the tools)
set -uo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd "$REPO" || exit 1

ACTIONS=(action.yml tests/action/act/cache/restore/action.yml tests/action/act/cache/save/action.yml)
WORKFLOWS=(.github/workflows/*.yml)
SCRIPTS=(action/idem-action.sh tests/action/*.sh tests/action/act/cache/stub-cache.sh)

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
# actionlint runs shellcheck on every `run:` block too when shellcheck is on PATH.
lint "actionlint" actionlint -no-color "${WORKFLOWS[@]}"
lint "check-jsonschema: actions" check-jsonschema --builtin-schema vendor.github-actions "${ACTIONS[@]}"
lint "check-jsonschema: workflows" check-jsonschema --builtin-schema vendor.github-workflows "${WORKFLOWS[@]}"
lint "shellcheck" shellcheck --external-sources "${SCRIPTS[@]}"

echo "$passed passed, $failed failed"
((failed == 0))
