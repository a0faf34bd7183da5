#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): setup, unit and integration tests
# against the real binary and real components, the GitHub Action's tests, lints, and the
# benchmarks in quick mode (ratios printed, not asserted).
#
#   tests/run.sh            everything
#   IDEM_SKIP_LINT=1 ...    without fmt/clippy/action lint (quicker while developing)
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
failures=()

suite() {
  local name=$1
  shift
  echo
  echo "=== $name"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "=== $name: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "=== $name: FAILED ($((SECONDS - start)) s)"
  fi
}

# What the tests need from the registries (the wasm target is installed by host/build.rs).
suite "setup" bash tests/setup.sh

# A throwaway PostgreSQL cluster starts and stops (the tests start their own the same way, with
# tests/pg.sh; this names the failure plainly if the server cannot run here).
suite "postgres server" bash -c \
  'd=$(mktemp -d) && tests/pg.sh start "$d/pg" >/dev/null && tests/pg.sh stop "$d/pg" && rm -rf "$d"'

suite "cargo test" cargo test --workspace --locked

if [ -z "${IDEM_SKIP_LINT:-}" ]; then
  suite "cargo fmt" cargo fmt --all --check
  suite "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
fi

suite "plan schema" env IDEM_BIN="$PWD/target/debug/idem" tests/schema.sh
[ -x tests/action/run.sh ] && suite "action: script tests" env IDEM_BIN="$PWD/target/debug/idem" tests/action/run.sh
[ -x tests/action/act.sh ] && suite "action: end to end with act" env IDEM_BIN="$PWD/target/debug/idem" tests/action/act.sh
if [ -z "${IDEM_SKIP_LINT:-}" ] && [ -x tests/action/lint.sh ]; then
  suite "action: lint" tests/action/lint.sh
fi
# The quick benchmarks use the idem the tests built: dependencies and the guest are optimised in
# that profile, and a second (release) build of wasmtime would cost CI ten minutes. The README's
# figures come from `bench/run.sh --full`, which builds in release.
[ -x bench/run.sh ] && suite "benchmarks (quick)" bash -c \
  'bash bench/setup.sh && IDEM_BENCH_NO_BUILD=1 bench/run.sh --quick --idem target/debug/idem'


echo
if [ "$failed" -gt 0 ]; then
  echo "failed suites: ${failures[*]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
