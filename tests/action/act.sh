#!/usr/bin/env bash
# End-to-end run of .github/workflows/action-self-test.yml through act in host mode
# (no containers, no network): the real action.yml with `uses: ./`, the real idem binary.
#
#   tests/action/act.sh          IDEM_BIN=path/to/idem (default target/debug/idem)
#
# Offline, act cannot fetch actions/cache, so the pinned commit is mapped with
# --local-repository to tests/action/act/cache, a stand-in with the same inputs and outputs
# that keeps entries on the local disk; actions/upload-artifact likewise, to
# tests/action/act/upload-artifact. actions/checkout of the local repository is skipped
# by act itself. Prints `N passed, M failed` over the workflow's jobs and the checks below.
set -uo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
IDEM_BIN=${IDEM_BIN:-$REPO/target/debug/idem}
case $IDEM_BIN in /*) ;; *) IDEM_BIN="$REPO/$IDEM_BIN" ;; esac
WORKFLOW=.github/workflows/action-self-test.yml
CACHE_SHA=$(sed -n 's|.*uses: actions/cache/[a-z]*@\([0-9a-f]\{40\}\).*|\1|p' "$REPO/action.yml" | sort -u)
UPLOAD_SHA=$(sed -n 's|.*uses: actions/upload-artifact@\([0-9a-f]\{40\}\).*|\1|p' "$REPO/action.yml" | sort -u)

fatal() {
  echo "$*" >&2
  echo "0 passed, 1 failed"
  exit 1
}
command -v act >/dev/null || fatal "act is not installed: run tests/action/setup.sh"
[[ -x $IDEM_BIN ]] || fatal "no idem binary at $IDEM_BIN: build it (cargo build) or set IDEM_BIN"
[[ $(wc -w <<<"$CACHE_SHA") == 1 ]] || fatal "action.yml pins actions/cache at more than one commit: $CACHE_SHA"
[[ $(wc -w <<<"$UPLOAD_SHA") == 1 ]] || fatal "action.yml pins actions/upload-artifact at $(wc -w <<<"$UPLOAD_SHA") commits, expected 1"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/idem-act.XXXXXX")
trap '[[ -n ${KEEP_ACT_WORK:-} ]] || rm -rf "$WORK"' EXIT
mkdir -p "$WORK/cache" "$WORK/act"

cd "$REPO" || exit 1
start=$SECONDS
# act copies the repository into its own workspace and needs a commit to read the event's
# SHA from; it needs nothing from the network with these flags.
act push \
  -P ubuntu-latest=-self-hosted \
  --action-offline-mode \
  --action-cache-path "$WORK/act" \
  --no-cache-server \
  --local-repository "actions/cache@$CACHE_SHA=$REPO/tests/action/act/cache" \
  --local-repository "actions/upload-artifact@$UPLOAD_SHA=$REPO/tests/action/act/upload-artifact" \
  --var IDEM_BINARY="$IDEM_BIN" \
  --env IDEM_ACT_CACHE_DIR="$WORK/cache" \
  -W "$WORKFLOW" >"$WORK/act.log" 2>&1
act_rc=$?
elapsed=$((SECONDS - start))

passed=0 failed=0
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok - $name"
  else
    failed=$((failed + 1))
    echo "not ok - $name"
  fi
}
in_log() { grep -q -- "$1" "$WORK/act.log"; }
job_ok() { in_log "^\[action self-test/$1 *\] 🏁  Job succeeded"; }
saved() { compgen -G "$WORK/cache/$1*" >/dev/null; }

check "job lint succeeds" job_ok lint
check "job 'must pass' succeeds" job_ok "must pass"
check "job 'must fail, checked' succeeds" job_ok "must fail, checked"
check "the action failed inside 'must fail, checked'" \
  in_log "must fail, checked.*❌  Failure - Main apply a plan whose second step fails"
check "its failed step was annotated at line 5 of the plan" \
  in_log "::error file=tests/action/fixtures/failing.yml,line=5"
check "the state was saved although the action failed" saved idem-state-expect-failure-
check "the state of the passing job was saved, keyed by its job" saved "idem-state-*-pass-"
check "the passing job's report was uploaded" saved "artifacts/idem-report-pass-*/report.json"
check "and linked from the summary" in_log "report uploaded: https://"
check "act exited 0" test "$act_rc" = 0

if ((failed)); then
  echo "--- act log (last 150 lines)"
  tail -n 150 "$WORK/act.log"
fi
echo "act took ${elapsed}s"
echo "$passed passed, $failed failed"
((failed == 0))
