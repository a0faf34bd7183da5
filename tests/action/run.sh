#!/usr/bin/env bash
# Tests of action/idem-action.sh against the real idem binary, without GitHub: each case
# gets a fresh workspace and runs the action's phases (prepare, install, run) the way a
# runner runs a composite action's steps, with the environment a runner gives them and
# nothing else (env -i). INPUT_* variables hold poison throughout: act exports them to
# composite steps and a real runner does not, so the script must never read them.
#
#   tests/action/run.sh [FILTER]      IDEM_BIN=path/to/idem (default target/debug/idem)
#
# Prints `N passed, M failed` last and exits non-zero when anything failed.
set -uo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
SCRIPT="$REPO/action/idem-action.sh"
IDEM_BIN=${IDEM_BIN:-$REPO/target/debug/idem}
FILTER=${1:-}
case $IDEM_BIN in /*) ;; *) IDEM_BIN="$REPO/$IDEM_BIN" ;; esac
if [[ ! -x $IDEM_BIN ]]; then
  echo "no idem binary at $IDEM_BIN: build it (cargo build) or set IDEM_BIN" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
command -v jq >/dev/null || {
  echo "jq is needed (tests/action/setup.sh installs it)" >&2
  echo "0 passed, 1 failed"
  exit 1
}

TMP_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/idem-action-tests.XXXXXX")
# One HOME for all cases, as a runner has one per job: idem caches compiled code there.
mkdir -p "$TMP_ROOT/home"
trap 'rm -rf "$TMP_ROOT"' EXIT
passed=0 failed=0 current="" case_failed=0

# --- the harness --------------------------------------------------------------------------

fail() {
  printf '    FAIL: %s\n' "$*"
  case_failed=1
}

# Starts a case in a fresh directory; later calls use its workspace, outputs and log.
begin() {
  current=$1
  case_failed=0
  CASE=$(mktemp -d "$TMP_ROOT/case.XXXXXX")
  WS="$CASE/workspace"
  mkdir -p "$WS" "$CASE/temp" "$CASE/tool-cache"
  INPUTS=()
  EXTRA_ENV=()
  PATH_FOR_RUN=$PATH
  ACTION_SCRIPT=$SCRIPT
  cd "$WS" || exit 1
}

end() {
  cd "$TMP_ROOT" || exit 1
  if ((case_failed)); then
    failed=$((failed + 1))
    printf 'not ok - %s\n' "$current"
    printf '    log:\n'
    sed 's/^/      | /' "$CASE/log" 2>/dev/null | tail -n 40
  else
    passed=$((passed + 1))
    printf 'ok - %s\n' "$current"
  fi
}

# True when the case should run under the filter given on the command line.
want() { [[ -z $FILTER || $1 == *"$FILTER"* ]]; }

# Writes a plan file into the workspace.
plan() {
  local path=${2:-idem.yml}
  mkdir -p "$(dirname -- "$WS/$path")"
  printf '%s' "$1" >"$WS/$path"
}

# input NAME VALUE: an action input, as action.yml's env: block would pass it.
input() {
  local name=${1//-/_}
  INPUTS+=("IDEM_ACTION_${name^^}=$2")
}

# Runs one phase as one composite step: its own GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files.
phase() {
  local name=$1
  shift
  : >"$CASE/output.$name"
  : >"$CASE/summary.$name"
  printf '### phase %s\n' "$name" >>"$CASE/log"
  env -i \
    PATH="$PATH_FOR_RUN" HOME="$TMP_ROOT/home" LANG=C.UTF-8 \
    CI=true GITHUB_ACTIONS=true \
    GITHUB_WORKSPACE="$WS" GITHUB_ACTION_PATH="$(dirname -- "$(dirname -- "$ACTION_SCRIPT")")" \
    GITHUB_OUTPUT="$CASE/output.$name" GITHUB_STEP_SUMMARY="$CASE/summary.$name" \
    GITHUB_ENV="$CASE/env" GITHUB_PATH="$CASE/path" GITHUB_STATE="$CASE/state.$name" \
    GITHUB_RUN_ID=4242 GITHUB_RUN_ATTEMPT=1 GITHUB_JOB=test GITHUB_ACTION=__run \
    GITHUB_REPOSITORY=example/idem GITHUB_SERVER_URL=https://github.com \
    RUNNER_OS=Linux RUNNER_ARCH=X64 RUNNER_TEMP="$CASE/temp" RUNNER_TOOL_CACHE="$CASE/tool-cache" \
    INPUT_PLAN='/nonexistent/poison.yml' INPUT_MODE=poison INPUT_BINARY=/nonexistent/poison \
    INPUT_ROOT=/nonexistent INPUT_WORKING-DIRECTORY=/nonexistent \
    "${EXTRA_ENV[@]}" "${INPUTS[@]}" "$@" \
    bash "$ACTION_SCRIPT" "$name" >>"$CASE/log" 2>&1
}

# Runs the action's steps in order, stopping at the first that fails as a runner does.
# The binary defaults to the real idem through the `binary` input unless the case set one.
action() {
  local have_binary=0 i
  for i in "${INPUTS[@]}"; do [[ $i == IDEM_ACTION_BINARY=* ]] && have_binary=1; done
  ((have_binary)) || input binary "$IDEM_BIN"
  : >"$CASE/log"
  rm -f "$CASE/output.run" "$CASE/summary.run"
  RC=0
  phase prepare || {
    RC=$?
    return
  }
  phase install || {
    RC=$?
    return
  }
  phase run IDEM_ACTION_BIN="$(out install path)" || RC=$?
}

# The value of output NAME of a phase (default: run), in either of GITHUB_OUTPUT's forms.
out() {
  local phase=$1 name=$2
  [[ -f $CASE/output.$phase ]] || return 0
  awk -v name="$name" '
    delim != "" { if ($0 == delim) { delim = ""; if (hit) exit; next } if (hit) { printf "%s%s", sep, $0; sep = "\n" } next }
    index($0, name "<<") == 1 { delim = substr($0, length(name) + 3); hit = 1; next }
    index($0, "<<") > 0 && index($0, "=") == 0 { delim = substr($0, index($0, "<<") + 2); next }
    index($0, name "=") == 1 { print substr($0, length(name) + 2); exit }
  ' "$CASE/output.$phase"
}

expect_rc() { [[ $RC == "$1" ]] || fail "exit code $RC, expected $1"; }
expect_out() {
  local got
  got=$(out run "$1")
  [[ $got == "$2" ]] || fail "output $1 is '$got', expected '$2'"
}
expect_log() { grep -qF -- "$1" "$CASE/log" || fail "log lacks: $1"; }
expect_no_log() { ! grep -qF -- "$1" "$CASE/log" || fail "log has: $1"; }
expect_summary() { grep -qF -- "$1" "$CASE/summary.run" 2>/dev/null || fail "summary lacks: $1"; }
expect_file() { [[ -e $1 ]] || fail "missing: $1"; }
expect_no_file() { [[ ! -e $1 ]] || fail "should not exist: $1"; }
count_log() { grep -c -- "$1" "$CASE/log" || true; }

SAMPLE='steps: [{dir: out}, {file: out/a.txt, content: "hi\n"}]
'
# A plan whose third step fails: its source is missing. The step starts on line 4.
FAILING='steps:
  - dir: out
  - file: out/a.txt
    source: missing.txt
'

# --- apply, plan, check -------------------------------------------------------------------

if want apply_creates_then_second_apply_changes_nothing; then
  begin apply_creates_then_second_apply_changes_nothing
  plan "$SAMPLE"
  action
  expect_rc 0
  expect_out changed true
  expect_out created 2
  expect_out unchanged 0
  expect_out failed 0
  expect_out exit-code 0
  expect_out result success
  [[ $(cat "$WS/out/a.txt" 2>/dev/null) == hi ]] || fail "out/a.txt does not hold 'hi'"
  report=$(out run report)
  jq -e '.schema == 1 and .mode == "apply"' "$report" >/dev/null 2>&1 || fail "report $report is not an apply report"
  expect_summary "### ✅ idem apply: success"
  expect_summary "| 1 | "
  expect_summary "| created |"
  expect_log "::group::idem apply idem.yml"
  expect_no_log "::error"
  action
  expect_rc 0
  expect_out changed false
  expect_out unchanged 2
  expect_out created 0
  end
fi

if want plan_mode_reports_and_changes_nothing; then
  begin plan_mode_reports_and_changes_nothing
  plan "$SAMPLE"
  input mode plan
  action
  expect_rc 0
  expect_out changed true
  expect_out created 2
  expect_no_file "$WS/out"
  expect_summary "dry run"
  expect_summary "| would be |"
  end
fi

if want check_with_drift_fails_and_annotates_the_steps; then
  begin check_with_drift_fails_and_annotates_the_steps
  plan "$SAMPLE"
  input mode check
  action
  expect_rc 2
  expect_out exit-code 2
  expect_out result drift
  expect_out changed true
  expect_no_file "$WS/out"
  expect_log "::error file=idem.yml,line=1,title=idem%3A drift%3A"
  expect_log "::error title=idem action::changes are pending"
  expect_summary "### ❌ idem check: drift"
  end
fi

if want check_with_drift_passes_when_fail_on_drift_is_false; then
  begin check_with_drift_passes_when_fail_on_drift_is_false
  plan "$SAMPLE"
  input mode check
  input fail-on-drift false
  action
  expect_rc 0
  expect_out exit-code 2
  expect_out result drift
  expect_log "::warning file=idem.yml,line=1,"
  expect_log "::notice title=idem action::changes are pending"
  expect_summary "### ⚠️ idem check: drift"
  end
fi

if want check_after_apply_finds_no_drift; then
  begin check_after_apply_finds_no_drift
  plan "$SAMPLE"
  action
  INPUTS=()
  input mode check
  action
  expect_rc 0
  expect_out changed false
  expect_out result success
  expect_no_log "::error"
  end
fi

if want failed_step_is_annotated_at_its_plan_line; then
  begin failed_step_is_annotated_at_its_plan_line
  plan "$FAILING" ops/deploy.yml
  input plan ops/deploy.yml
  action
  expect_rc 1
  expect_out failed 1
  expect_out result error
  expect_out exit-code 1
  expect_log "::error file=ops/deploy.yml,line=3,title=idem%3A "
  expect_summary "**Failed steps**"
  expect_summary "### ❌ idem apply: error"
  end
fi

if want plan_error_is_annotated_with_its_line; then
  begin plan_error_is_annotated_with_its_line
  plan 'steps:
  - dir: out
  - fil: out/a.txt
'
  action
  expect_rc 1
  expect_out result error
  expect_log "::error file=idem.yml,line=3,title=idem%3A plan error::"
  expect_summary "**Plan error** at line 3"
  end
fi

if want at_most_ten_annotations_and_a_count_of_the_rest; then
  begin at_most_ten_annotations_and_a_count_of_the_rest
  body='steps:'
  for i in $(seq 1 13); do body+=$'\n'"  - dir: d$i"; done
  plan "$body"$'\n'
  input mode check
  action
  expect_rc 2
  n=$(count_log '^::error file=idem.yml')
  [[ $n == 10 ]] || fail "$n annotations, expected 10"
  expect_log "::warning title=idem action::3 more findings are not annotated"
  end
fi

if want verify_passes_on_a_plan_that_converges; then
  begin verify_passes_on_a_plan_that_converges
  plan "$SAMPLE"
  input verify true
  action
  expect_rc 0
  expect_out result success
  expect_log "apply --verify"
  end
fi

if want verify_fails_on_a_plan_that_fights_itself; then
  begin verify_fails_on_a_plan_that_fights_itself
  # Two steps writing one file differently: every run changes it twice.
  plan 'steps:
  - file: a.txt
    content: "one\n"
  - file: a.txt
    content: "two\n"
'
  input verify true
  action
  expect_rc 3
  expect_out exit-code 3
  expect_out result verify-failed
  expect_log "does not converge"
  expect_summary "**Verify:**"
  end
fi

if want working_directory_root_and_state_are_resolved; then
  begin working_directory_root_and_state_are_resolved
  mkdir -p "$WS/deploy/site"
  plan "$SAMPLE" deploy/idem.yml
  input working-directory deploy
  input root site
  input state ../state/idem.db
  action
  expect_rc 0
  expect_file "$WS/deploy/site/out/a.txt"
  expect_no_file "$WS/out"
  expect_log "--root $WS/deploy/site --state $WS/deploy/../state/idem.db"
  end
fi

if want persist_state_names_the_cache_by_run_and_attempt; then
  begin persist_state_names_the_cache_by_run_and_attempt
  plan "$SAMPLE"
  input persist-state true
  action
  expect_rc 0
  [[ $(out prepare state-key) == idem-state-4242-1 ]] || fail "state-key $(out prepare state-key)"
  [[ $(out prepare state-restore-key) == idem-state-4242- ]] || fail "restore key $(out prepare state-restore-key)"
  [[ $(out prepare state-files) == "$WS/.idem/state.db"$'\n'"$WS/.idem/state.db-wal" ]] ||
    fail "state-files $(out prepare state-files)"
  INPUTS=()
  input persist-state true
  input state-key nightly-linux
  EXTRA_ENV=(GITHUB_RUN_ATTEMPT=3)
  action
  [[ $(out prepare state-key) == idem-state-nightly-linux-4242-3 ]] || fail "state-key $(out prepare state-key)"
  end
fi

if want restored_state_files_let_a_rerun_skip_done_records; then
  begin restored_state_files_let_a_rerun_skip_done_records
  # Attempt 1 fails on record 2; its state-files are "saved" as actions/cache/save would,
  # the state is lost (a new runner), then "restored" before attempt 2, which must skip the
  # records attempt 1 finished. The root itself is kept, as on a persistent root.
  plan 'steps:
  - each: users.csv
    key: id
    steps:
      - file: "out/{id}.txt"
        source: "src/{id}.txt"
'
  printf 'id\n1\n2\n3\n' >"$WS/users.csv"
  mkdir -p "$WS/src"
  echo one >"$WS/src/1.txt"
  echo three >"$WS/src/3.txt"
  input persist-state true
  action
  expect_rc 1
  saved=()
  while IFS= read -r f; do [[ -e $f ]] && saved+=("$f"); done <<<"$(out prepare state-files)"
  ((${#saved[@]} > 0)) || fail "no state file to save"
  tar -cPf "$CASE/state-cache.tar" "${saved[@]}"
  rm -rf "$WS/.idem"
  tar -xPf "$CASE/state-cache.tar"
  echo two >"$WS/src/2.txt"
  EXTRA_ENV=(GITHUB_RUN_ATTEMPT=2)
  action
  expect_rc 0
  [[ $(out prepare state-key) == idem-state-4242-2 ]] || fail "state-key $(out prepare state-key)"
  counters=$(jq -cS '.steps[0].counters' "$(out run report)")
  [[ $counters == '{"failed":0,"processed":1,"skipped":2}' ]] || fail "attempt 2 counters $counters"
  end
fi

if want without_persist_state_no_cache_is_named; then
  begin without_persist_state_no_cache_is_named
  plan "$SAMPLE"
  action
  [[ -z $(out prepare state-key) ]] || fail "state-key set without persist-state"
  end
fi

if want runner_debug_makes_idem_verbose; then
  begin runner_debug_makes_idem_verbose
  plan "$SAMPLE"
  EXTRA_ENV=(RUNNER_DEBUG=1)
  action
  expect_rc 0
  expect_log " --verbose idem.yml"
  end
fi

if want diff_is_passed_through; then
  begin diff_is_passed_through
  plan "$SAMPLE"
  input diff true
  action
  expect_rc 0
  expect_log "apply --diff"
  end
fi

if want idem_output_cannot_issue_workflow_commands; then
  begin idem_output_cannot_issue_workflow_commands
  # The file's content reaches the log through --diff; stop-commands keeps it inert.
  plan 'steps: [{file: a.txt, content: "::error::forged\n"}]
'
  input diff true
  action
  expect_rc 0
  grep -q '^::stop-commands::' "$CASE/log" || fail "no ::stop-commands:: in the log"
  # Every stop is resumed, and the forged command shows only while commands are stopped.
  awk '
    /^::stop-commands::/ { token = substr($0, 18); next }
    token != "" && $0 == "::" token "::" { token = ""; next }
    /::error::forged/ && token == "" { print "live: " $0; bad = 1 }
    END { if (token != "") { print "never resumed"; bad = 1 } exit bad }
  ' "$CASE/log" || fail "idem's output was not kept inert"
  end
fi

if want summary_cells_are_escaped; then
  begin summary_cells_are_escaped
  plan 'steps: [{dir: out, name: "a|b <img src=x> & c"}]
'
  action
  expect_rc 0
  expect_summary '| a\|b &lt;img src=x&gt; &amp; c |'
  end
fi

if want binary_makes_version_moot_with_a_notice; then
  begin binary_makes_version_moot_with_a_notice
  plan "$SAMPLE"
  input version 9.9.9
  action
  expect_rc 0
  expect_log "::notice title=idem action::input 'version' (9.9.9) has no effect: input 'binary' is given"
  end
fi

if want summary_is_cut_below_the_limit_with_a_note; then
  begin summary_is_cut_below_the_limit_with_a_note
  body='steps:'
  for i in $(seq 1 60); do body+=$'\n'"  - dir: directory-with-a-long-name-number-$i"; done
  plan "$body"$'\n'
  EXTRA_ENV=(IDEM_ACTION_SUMMARY_LIMIT=3000)
  action
  expect_rc 0
  size=$(wc -c <"$CASE/summary.run")
  ((size <= 3000)) || fail "summary is $size bytes, over the 3000 limit"
  expect_summary "more steps are not shown"
  expect_summary "| 1 | "
  end
fi

if want summary_of_a_large_plan_stays_under_one_mebibyte; then
  begin summary_of_a_large_plan_stays_under_one_mebibyte
  long=$(printf 'x%.0s' $(seq 1 250))
  {
    echo 'steps:'
    for i in $(seq 1 4000); do echo "  - {dir: d$i, name: \"$long $i\"}"; done
  } >"$WS/idem.yml"
  # A dry run: the summary is the same, without 4000 directories synced to disk.
  input mode plan
  action
  expect_rc 0
  size=$(wc -c <"$CASE/summary.run")
  ((size <= 1048576)) || fail "summary is $size bytes, over 1 MiB"
  expect_summary "more steps are not shown"
  expect_out created 4000
  end
fi

# --- bad inputs: each one stops in prepare with a clear error and runs nothing ------------

bad_input() {
  local name=$1 value=$2 message=$3
  if want "bad_input_$name"; then
    begin "bad_input_${name}_is_refused: $value"
    plan "$SAMPLE"
    printf 'not a program\n' >"$WS/not-executable"
    # The `binary` input makes version moot: test the version's checks without it.
    [[ $name == version ]] && input binary ""
    input "$name" "$value"
    action
    [[ $RC != 0 ]] || fail "accepted $name='$value'"
    expect_log "::error title=idem action::$message"
    [[ ! -e $CASE/output.run ]] || fail "idem ran"
    expect_no_file "$WS/out"
    end
  fi
}
bad_input plan missing.yml "input 'plan': no file 'missing.yml'"
bad_input mode deploy "input 'mode' must be 'apply', 'plan' or 'check', not 'deploy'"
bad_input verify yes "input 'verify' must be 'true' or 'false', not 'yes'"
bad_input diff 1 "input 'diff' must be 'true' or 'false', not '1'"
bad_input fail-on-drift maybe "input 'fail-on-drift' must be 'true' or 'false'"
bad_input root no/such/dir "input 'root': 'no/such/dir' is not a directory"
bad_input state . "input 'state': '.' is a directory"
bad_input persist-state on "input 'persist-state' must be 'true' or 'false', not 'on'"
bad_input state-key "-x" "input 'state-key' must start with a letter"
bad_input version latest "input 'version' must be empty, 'source' or a version like '1.2.3'"
bad_input version 9.9.9 "idem 9.9.9 for x86_64-unknown-linux-gnu is not in this action's SHA-256 table"
bad_input binary not-executable "input 'binary': 'not-executable' is not an executable file"
bad_input binary /nonexistent/idem "input 'binary': '/nonexistent/idem' is not an executable file"
bad_input working-directory nowhere "input 'working-directory': 'nowhere' is not a directory"

if want bad_input_verify_with_check; then
  begin bad_input_verify_with_check_mode_is_refused
  plan "$SAMPLE"
  input mode check
  input verify true
  action
  [[ $RC != 0 ]] || fail "accepted verify with check"
  expect_log "input 'verify' needs mode 'apply'"
  end
fi

if want bad_input_newline; then
  begin bad_input_newline_in_any_input_is_refused
  plan "$SAMPLE"
  input plan $'idem.yml\n::error::forged'
  action
  [[ $RC != 0 ]] || fail "accepted a newline"
  expect_log "input 'plan' contains a control character"
  ! grep -qx '::error::forged' "$CASE/log" || fail "a forged command reached the log"
  end
fi

if want no_github_output; then
  begin no_github_output_means_not_a_runner
  plan "$SAMPLE"
  RC=0
  env -i PATH="$PATH" IDEM_ACTION_BINARY="$IDEM_BIN" bash "$SCRIPT" prepare >"$CASE/log" 2>&1 || RC=$?
  [[ $RC != 0 ]] || fail "ran without GITHUB_OUTPUT"
  expect_log "GITHUB_OUTPUT is not set"
  end
fi

# --- injection: no input value is ever run as code ----------------------------------------

# Every shape of shell injection, in every input. A value must either be refused or reach
# idem as one argument; `pwned` must appear nowhere.
# shellcheck disable=SC2016 # these must stay unexpanded: they are the attacks
INJECTIONS=(
  'x"; touch pwned; "'
  "x'; touch pwned; '"
  '$(touch pwned)'
  '`touch pwned`'
  'x; touch pwned'
  'x && touch pwned'
  'x | touch pwned'
  '${IFS}touch${IFS}pwned'
  '--state=pwned'
)
check_no_pwned() {
  local found
  found=$(find "$CASE" / -maxdepth 1 -name pwned 2>/dev/null; find "$CASE" -name pwned 2>/dev/null)
  [[ -z $found ]] || fail "injection created: $found"
}
if want injection_in_every_input; then
  for name in plan mode verify diff fail-on-drift root state persist-state state-key version binary working-directory; do
    for value in "${INJECTIONS[@]}"; do
      begin "injection_in_${name}_runs_nothing: $value"
      plan "$SAMPLE"
      input "$name" "$value"
      action
      check_no_pwned
      # Refused with the input named, or (state only: any name is a valid file name)
      # passed on whole as one argument.
      if [[ $RC != 0 ]]; then
        expect_log "::error title=idem action::"
      elif [[ $name != state ]]; then
        fail "an injected $name was accepted"
      else
        expect_file "$WS/$value"
      fi
      end
    done
  done
fi

if want injection_through_real_paths; then
  # Files and directories that really have those names: the values pass validation and
  # reach idem as single arguments, and the run succeeds.
  for value in "${INJECTIONS[@]}"; do
    [[ $value == *\`* || $value == --* ]] && continue
    begin "injection_through_real_paths_works_as_plain_names: $value"
    dir="w $value"
    mkdir -p "$WS/$dir/root $value" "$WS/$dir/bin $value"
    plan "$SAMPLE" "$dir/plan $value.yml"
    cp "$IDEM_BIN" "$WS/$dir/bin $value/idem"
    input working-directory "$dir"
    input plan "plan $value.yml"
    input root "root $value"
    input state "state $value.db"
    input binary "bin $value/idem"
    action
    expect_rc 0
    expect_out created 2
    expect_file "$WS/$dir/root $value/out/a.txt"
    check_no_pwned
    end
  done
fi

if want annotation_properties_are_escaped; then
  begin annotation_properties_are_escaped
  plan "$FAILING" 'a,b:c%.yml'
  input plan 'a,b:c%.yml'
  action
  expect_rc 1
  expect_log "::error file=a%2Cb%3Ac%25.yml,line=3,"
  end
fi

# --- where idem comes from ----------------------------------------------------------------

# A copy of the action whose checksum table and PATH the case controls.
action_copy() {
  mkdir -p "$CASE/action-copy/action" "$CASE/fakebin"
  cp "$SCRIPT" "$CASE/action-copy/action/"
  cp "$REPO/action.yml" "$REPO/Cargo.toml" "$CASE/action-copy/"
  printf '# test table\n' >"$CASE/action-copy/action/idem-sha256.txt"
  ACTION_SCRIPT="$CASE/action-copy/action/idem-action.sh"
  PATH_FOR_RUN="$CASE/fakebin:/usr/local/bin:/usr/bin:/bin"
}
OWN_VERSION=$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$REPO/Cargo.toml" | head -n 1)
ARCHIVE="idem-v$OWN_VERSION-x86_64-unknown-linux-gnu.tar.gz"

# A release archive of the real binary, and a curl that "downloads" it.
fake_release() {
  mkdir -p "$CASE/release/idem-v$OWN_VERSION"
  cp "$IDEM_BIN" "$CASE/release/idem-v$OWN_VERSION/idem"
  tar -czf "$CASE/$ARCHIVE" -C "$CASE/release" "idem-v$OWN_VERSION"
  cat >"$CASE/fakebin/curl" <<EOF
#!/bin/sh
echo "curl \$*" >>"$CASE/curl.log"
while [ \$# -gt 1 ]; do [ "\$1" = -o ] && out=\$2; shift; done
case \$1 in */releases/download/v$OWN_VERSION/$ARCHIVE) cp "$CASE/$ARCHIVE" "\$out" ;; *) exit 22 ;; esac
EOF
  chmod +x "$CASE/fakebin/curl"
}

if want release_archive_is_verified_and_installed; then
  begin release_archive_is_verified_and_installed
  action_copy
  fake_release
  (cd "$CASE" && sha256sum "$ARCHIVE") >>"$CASE/action-copy/action/idem-sha256.txt"
  plan "$SAMPLE"
  input binary ""
  INPUTS=()
  input binary ""
  action
  expect_rc 0
  [[ $(out prepare source) == release ]] || fail "source $(out prepare source), expected release"
  expect_log "SHA-256 verified"
  grep -q "https://github.com/example/idem/releases/download/v$OWN_VERSION/$ARCHIVE" "$CASE/curl.log" ||
    fail "curl did not fetch the archive's URL"
  [[ $(out install path) == "$CASE/tool-cache/idem/$OWN_VERSION/x86_64-unknown-linux-gnu/idem" ]] ||
    fail "installed at $(out install path)"
  grep -qx "$CASE/tool-cache/idem/$OWN_VERSION/x86_64-unknown-linux-gnu" "$CASE/path" || fail "not added to GITHUB_PATH"
  expect_out created 2
  end
fi

if want release_archive_with_a_wrong_checksum_is_refused; then
  begin release_archive_with_a_wrong_checksum_is_refused
  action_copy
  fake_release
  printf '%s  %s\n' "$(printf 0%.0s $(seq 1 64))" "$ARCHIVE" >>"$CASE/action-copy/action/idem-sha256.txt"
  plan "$SAMPLE"
  input binary ""
  action
  [[ $RC != 0 ]] || fail "ran an archive whose checksum does not match"
  expect_log "refusing to run it"
  [[ -z $(out install path) ]] || fail "installed anyway"
  expect_no_file "$CASE/tool-cache/idem/$OWN_VERSION"
  end
fi

# A cargo that "builds" by copying the real binary, and logs how it was called.
fake_cargo() {
  cat >"$CASE/fakebin/cargo" <<EOF
#!/bin/sh
echo "cargo \$* (in \$PWD)" >>"$CASE/cargo.log"
mkdir -p "\$CARGO_TARGET_DIR/release" && cp "$IDEM_BIN" "\$CARGO_TARGET_DIR/release/idem"
EOF
  chmod +x "$CASE/fakebin/cargo"
}

if want empty_table_falls_back_to_a_cached_cargo_build; then
  begin empty_table_falls_back_to_a_cached_cargo_build
  action_copy
  # The build hashes the action's source: give the copy some.
  cp -R "$REPO/wit" "$CASE/action-copy/"
  fake_cargo
  plan "$SAMPLE"
  input binary ""
  action
  expect_rc 0
  [[ $(out prepare source) == build ]] || fail "source $(out prepare source), expected build"
  key=$(out prepare build-key)
  [[ $key =~ ^idem-bin-Linux-X64-[0-9a-f]{64}$ ]] || fail "build-key '$key'"
  [[ $(out prepare build-dir) == "$CASE/tool-cache/idem/build-"* ]] || fail "build-dir $(out prepare build-dir)"
  grep -q "^cargo build --release --locked (in $CASE/action-copy)" "$CASE/cargo.log" 2>/dev/null ||
    fail "cargo was not called as 'cargo build --release --locked' in the action's directory"
  expect_out created 2
  # What actions/cache would restore is there: the next run does not build again.
  action
  expect_rc 0
  [[ $(wc -l <"$CASE/cargo.log") == 1 ]] || fail "built twice"
  expect_log "using the cached build"
  # A change to the source is a new key.
  echo "// changed" >>"$CASE/action-copy/wit/types.wit"
  action
  [[ $(out prepare build-key) != "$key" ]] || fail "the build key ignores the source"
  end
fi

if want version_source_builds_even_with_a_release_listed; then
  begin version_source_builds_even_with_a_release_listed
  action_copy
  fake_cargo
  fake_release
  (cd "$CASE" && sha256sum "$ARCHIVE") >>"$CASE/action-copy/action/idem-sha256.txt"
  plan "$SAMPLE"
  input binary ""
  input version source
  action
  expect_rc 0
  [[ $(out prepare source) == build ]] || fail "source $(out prepare source), expected build"
  end
fi

if want build_without_cargo_says_what_to_do; then
  begin build_without_cargo_says_what_to_do
  action_copy
  plan "$SAMPLE"
  input binary ""
  action
  [[ $RC != 0 ]] || fail "passed without a binary"
  expect_log "cargo is not installed"
  end
fi

if want action_yml_maps_every_input_and_pins_every_action; then
  begin action_yml_maps_every_input_and_pins_every_action
  yml="$REPO/action.yml"
  inputs=$(awk '/^inputs:/ { on = 1; next } /^[a-z]/ { on = 0 } on && /^  [a-z-]+:$/ { sub(/:$/, ""); print $1 }' "$yml")
  [[ -n $inputs ]] || fail "found no inputs in action.yml"
  script_steps=$(grep -cF "run: bash \"\$GITHUB_ACTION_PATH/action/idem-action.sh\"" "$yml")
  [[ $script_steps == 3 ]] || fail "$script_steps steps call the script, expected 3"
  for name in $inputs; do
    var="IDEM_ACTION_$(tr 'a-z-' 'A-Z_' <<<"$name")"
    n=$(grep -cF "$var: \${{ inputs.$name }}" "$yml")
    [[ $n == "$script_steps" ]] || fail "input $name reaches $n of the $script_steps script steps as $var"
    grep -q "^| \`$name\` | \`\"" "$REPO/docs/github-action.md" || fail "input $name is not in the docs' table"
    awk -v n="  $name:" '$0 == n { getline; getline; getline; exit !/^    default: "/ }' "$yml" ||
      fail "input $name has no quoted default on its third line"
  done
  ! grep -nE '^\s*run:.*\$\{\{' "$yml" || fail "an expression inside run:"
  ! grep -n 'INPUT_' "$SCRIPT" || fail "the script reads INPUT_*"
  unpinned=$(grep -hE '^\s*(- )?uses:' "$yml" "$REPO"/.github/workflows/*.yml |
    grep -vE 'uses: (\./|[^@ ]+@[0-9a-f]{40} # v[0-9.]+)( |$)' || true)
  [[ -z $unpinned ]] || fail "not pinned by commit SHA: $unpinned"
  grep -qx 'permissions: {}' "$REPO/.github/workflows/action-self-test.yml" || fail "workflow lacks permissions: {}"
  end
fi

if want committed_table_is_well_formed; then
  begin committed_table_is_well_formed
  bad=$(grep -vE '^(#.*|[0-9a-f]{64}  idem-v[0-9][^ ]*\.(tar\.gz|zip))?$' "$REPO/action/idem-sha256.txt" || true)
  [[ -z $bad ]] || fail "malformed lines in action/idem-sha256.txt: $bad"
  end
fi

echo "$passed passed, $failed failed"
((failed == 0))
