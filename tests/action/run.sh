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
# A plan whose second step fails when it runs: its source is a directory (which the checks
# made before any step cannot know: step 1 makes it). The step starts on line 3.
FAILING='steps:
  - dir: out
  - file: out/a.txt
    source: out
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

# Issue 21: GitHub keeps 10 errors and 10 warnings per step. 10 findings, a count and the
# closing line made 11 errors, and the one dropped was the line that says what to do.
if want annotations_of_each_type_stay_within_ten_and_keep_the_closing_line; then
  begin annotations_of_each_type_stay_within_ten_and_keep_the_closing_line
  body='steps:'
  for i in $(seq 1 13); do body+=$'\n'"  - dir: d$i"; done
  plan "$body"$'\n'
  input mode check
  action
  expect_rc 2
  n=$(count_log '^::error')
  [[ $n == 10 ]] || fail "$n error annotations in the step, expected 10"
  n=$(count_log '^::error file=idem.yml')
  [[ $n == 8 ]] || fail "$n findings annotated, expected 8"
  expect_log "::error title=idem action::5 more findings are not annotated"
  expect_log "::error title=idem action::changes are pending"
  # Warnings have a budget of their own: drift under fail-on-drift false.
  INPUTS=()
  input mode check
  input fail-on-drift false
  action
  expect_rc 0
  n=$(count_log '^::warning')
  [[ $n == 10 ]] || fail "$n warning annotations, expected 10"
  expect_log "::warning title=idem action::4 more findings are not annotated"
  expect_log "::notice title=idem action::changes are pending"
  n=$(count_log '^::error')
  [[ $n == 0 ]] || fail "$n errors under fail-on-drift false"
  end
fi

if want ten_findings_and_a_closing_line_leave_nothing_out; then
  begin ten_findings_and_a_closing_line_leave_nothing_out
  # 9 findings + the closing line fit; no count line is needed.
  body='steps:'
  for i in $(seq 1 9); do body+=$'\n'"  - dir: d$i"; done
  plan "$body"$'\n'
  input mode check
  action
  n=$(count_log '^::error file=idem.yml')
  [[ $n == 9 ]] || fail "$n findings annotated, expected 9"
  expect_no_log "more findings are not annotated"
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
  # Step 1 copies b.txt, which step 2 then changes: every run changes a.txt again.
  plan 'steps:
  - file: a.txt
    source: b.txt
  - file: b.txt
    content: "two\n"
'
  printf 'one\n' >"$WS/b.txt"
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

if want persist_state_names_the_cache_by_run_job_identity_and_attempt; then
  begin persist_state_names_the_cache_by_run_job_identity_and_attempt
  plan "$SAMPLE"
  input persist-state true
  action
  expect_rc 0
  key=$(out prepare state-key)
  [[ $key =~ ^idem-state-4242-test-[0-9a-f]{16}-1$ ]] || fail "state-key $key"
  [[ $(out prepare state-restore-key) == "${key%1}" ]] || fail "restore key $(out prepare state-restore-key)"
  [[ $(out prepare state-files) == "$WS/.idem/state.db"$'\n'"$WS/.idem/state.db-wal" ]] ||
    fail "state-files $(out prepare state-files)"
  INPUTS=()
  input persist-state true
  input state-key nightly-linux
  EXTRA_ENV=(GITHUB_RUN_ATTEMPT=3)
  action
  [[ $(out prepare state-key) =~ ^idem-state-nightly-linux-4242-test-[0-9a-f]{16}-3$ ]] || fail "state-key $(out prepare state-key)"
  end
fi

# Issue 21: with persist-state and no state-key, every job of a run had the key
# idem-state-RUN-ATTEMPT, so a second job restored the first's checkpoints and skipped its
# records. The restore key of a job must never match another job's saved key.
state_key_of() {
  INPUTS=()
  input persist-state true
  local extra=()
  while (($#)); do
    case $1 in
    root=* | state=* | plan=*) input "${1%%=*}" "${1#*=}" ;;
    *) extra+=("$1") ;;
    esac
    shift
  done
  EXTRA_ENV=("${extra[@]}")
  action
  printf '%s %s\n' "$(out prepare state-key)" "$(out prepare state-restore-key)"
}
if want state_keys_tell_jobs_matrix_legs_roots_states_and_plans_apart; then
  begin state_keys_tell_jobs_matrix_legs_roots_states_and_plans_apart
  plan "$SAMPLE"
  plan "$SAMPLE" other.yml
  mkdir -p "$WS/site-a" "$WS/site-b"
  base=(GITHUB_JOB=load 'IDEM_ACTION_MATRIX={"site": "a"}' root=site-a)
  read -r key0 restore0 < <(state_key_of "${base[@]}")
  [[ -n $key0 ]] || fail "no state key"
  # The same job again (another attempt's prepare) gets the same key: resuming works.
  read -r again _ < <(state_key_of "${base[@]}")
  [[ $again == "$key0" ]] || fail "the same job got another key: $again vs $key0"
  # toJSON(matrix)'s layout does not matter.
  read -r again _ < <(state_key_of GITHUB_JOB=load $'IDEM_ACTION_MATRIX={\n  "site":"a"\n}' root=site-a)
  [[ $again == "$key0" ]] || fail "the matrix's layout changed the key"
  for variant in "GITHUB_JOB=other" 'IDEM_ACTION_MATRIX={"site": "b"}' "root=site-b" "state=s.db" "plan=other.yml"; do
    args=("${base[@]}" "$variant")
    read -r key restore < <(state_key_of "${args[@]}")
    [[ $key != "$key0" ]] || fail "$variant: same key as the first job ($key)"
    [[ $key0 != "$restore"* ]] || fail "$variant: its restore key $restore would restore the first job's state $key0"
    [[ $key != "$restore0"* ]] || fail "$variant: the first job's restore key would restore its state"
  done
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
  [[ $(out prepare state-key) == *-2 ]] || fail "state-key $(out prepare state-key)"
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
bad_input verify yes "input 'verify' must be 'true' or 'false' (in any case), not 'yes'"
bad_input diff 1 "input 'diff' must be 'true' or 'false' (in any case), not '1'"
bad_input fail-on-drift maybe "input 'fail-on-drift' must be 'true' or 'false'"
bad_input root no/such/dir "input 'root': 'no/such/dir' is not a directory"
bad_input state . "input 'state': '.' is a directory"
bad_input persist-state on "input 'persist-state' must be 'true' or 'false' (in any case), not 'on'"
bad_input upload-report yes "input 'upload-report' must be 'true' or 'false' (in any case), not 'yes'"
bad_input state-key "-x" "input 'state-key' must start with a letter"
bad_input version latest "input 'version' must be empty, 'source' or a version like '1.2.3'"
bad_input version 9.9.9 "idem 9.9.9 for x86_64-unknown-linux-musl is not in this action's SHA-256 table"
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
  for name in plan mode verify diff fail-on-drift root state persist-state state-key version binary working-directory upload-report; do
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

# A copy of the action whose checksum table and PATH the case controls, laid out as the
# runner checks out an action: RUNNER/_actions/OWNER/REPO/REF. Its owner and name differ
# from the consumer's repository (GITHUB_REPOSITORY=acme/infra below): the releases must be
# fetched from the action's repository.
ACTION_OWNER_REPO=idem-dev/idem
action_copy() {
  local dir="$CASE/runner/_actions/$ACTION_OWNER_REPO/v$OWN_VERSION"
  mkdir -p "$dir/action" "$CASE/fakebin"
  cp "$SCRIPT" "$dir/action/"
  cp "$REPO/action.yml" "$REPO/Cargo.toml" "$dir/"
  printf '# test table\n' >"$dir/action/idem-sha256.txt"
  TABLE="$dir/action/idem-sha256.txt"
  ACTION_SCRIPT="$dir/action/idem-action.sh"
  PATH_FOR_RUN="$CASE/fakebin:/usr/local/bin:/usr/bin:/bin"
  EXTRA_ENV+=(GITHUB_REPOSITORY=acme/infra)
}
OWN_VERSION=$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$REPO/Cargo.toml" | head -n 1)
TRIPLE=x86_64-unknown-linux-musl
ARCHIVE="idem-v$OWN_VERSION-$TRIPLE.tar.gz"

# --- the release path, end to end over HTTPS ----------------------------------------------
# The archive is the real idem binary packed by the release script (action/release/
# package.sh), served by a real HTTPS server on 127.0.0.1 (tests/action/https-server.py)
# whose certificate is signed by a CA made here; curl gets the CA through CURL_CA_BUNDLE.
# The server is started once, on first use, and stopped when the tests end.
SERVER_PID=""
serve_releases() {
  [[ -n $SERVER_PID ]] && return 0
  local pki="$TMP_ROOT/pki"
  mkdir -p "$pki" "$TMP_ROOT/releases"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=idem test CA" \
    -keyout "$pki/ca.key" -out "$pki/ca.pem" >/dev/null 2>&1 || return 1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$pki/server.key" -out "$pki/server.csr" >/dev/null 2>&1 || return 1
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$pki/ext"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 1 -extfile "$pki/ext" -out "$pki/server.pem" >/dev/null 2>&1 || return 1
  python3 "$REPO/tests/action/https-server.py" "$TMP_ROOT/releases" "$pki/server.pem" \
    "$pki/server.key" "$TMP_ROOT/port" "$TMP_ROOT/requests.log" 2>"$TMP_ROOT/server.err" &
  SERVER_PID=$!
  local i
  for i in $(seq 1 100); do
    [[ -s $TMP_ROOT/port ]] && break
    sleep 0.1
  done
  [[ -s $TMP_ROOT/port ]] || return 1
  SERVER_URL="https://127.0.0.1:$(cat "$TMP_ROOT/port")"
  CA_BUNDLE="$pki/ca.pem"
  # The release archive of this worktree's idem, packed once by the release script.
  bash "$REPO/action/release/package.sh" "$IDEM_BIN" "$TRIPLE" "$OWN_VERSION" "$TMP_ROOT/dist" >/dev/null || return 1
  REAL_ARCHIVE="$TMP_ROOT/dist/$ARCHIVE"
  REAL_SHA256=$(sha256sum "$REAL_ARCHIVE" | cut -c1-64)
}
# publish FILE NAME [REPO]: puts FILE on the server as release v$OWN_VERSION's asset NAME.
publish() {
  local dir="$TMP_ROOT/releases/${3:-$ACTION_OWNER_REPO}/releases/download/v$OWN_VERSION"
  mkdir -p "$dir"
  cp "$1" "$dir/$2"
}
# The environment of a case that installs over HTTPS from the local server.
use_server() {
  serve_releases || {
    fail "could not start the HTTPS server: $(cat "$TMP_ROOT/server.err" 2>/dev/null)"
    return 1
  }
  action_copy
  EXTRA_ENV+=(GITHUB_SERVER_URL="$SERVER_URL" CURL_CA_BUNDLE="$CA_BUNDLE")
  rm -f "$TMP_ROOT/requests.log"
}
stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  rm -rf "$TMP_ROOT"
}
trap stop_server EXIT

if want release_install_over_https_downloads_verifies_unpacks_and_runs; then
  begin release_install_over_https_downloads_verifies_unpacks_and_runs
  if use_server; then
    publish "$REAL_ARCHIVE" "$ARCHIVE"
    printf '%s  %s\n' "$REAL_SHA256" "$ARCHIVE" >>"$TABLE"
    plan "$SAMPLE"
    input binary ""
    t0=$(date +%s%N)
    phase prepare && phase install
    RC=$?
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    printf '    install from the release archive over HTTPS took %d ms (limit 10000)\n' "$ms"
    ((ms < 10000)) || fail "the install took $ms ms, over 10 s"
    expect_rc 0
    [[ $(out prepare source) == release ]] || fail "source $(out prepare source), expected release"
    expect_log "SHA-256 verified: $REAL_SHA256"
    grep -qx "GET /$ACTION_OWNER_REPO/releases/download/v$OWN_VERSION/$ARCHIVE" "$TMP_ROOT/requests.log" ||
      fail "the archive was not fetched from the action's repository: $(cat "$TMP_ROOT/requests.log" 2>/dev/null)"
    dir="$CASE/tool-cache/idem/$OWN_VERSION/$TRIPLE"
    [[ $(out install path) == "$dir/idem" ]] || fail "installed at $(out install path)"
    grep -qx "$dir" "$CASE/path" || fail "not added to GITHUB_PATH"
    [[ $(out install version) == "$OWN_VERSION" ]] || fail "version output '$(out install version)'"
    [[ $(out install cache-hit) == false ]] || fail "cache-hit '$(out install cache-hit)' on a download"
    cmp -s "$dir/idem" "$IDEM_BIN" || fail "the installed binary is not the packed one"
    phase run IDEM_ACTION_BIN="$(out install path)" || RC=$?
    expect_rc 0
    expect_out created 2
    # A tool cache that outlives the job (self-hosted) is used without a download.
    rm -f "$TMP_ROOT/requests.log"
    action
    expect_rc 0
    [[ $(out install cache-hit) == true ]] || fail "cache-hit '$(out install cache-hit)' with the tool cache filled"
    [[ ! -s $TMP_ROOT/requests.log ]] || fail "downloaded again: $(cat "$TMP_ROOT/requests.log")"
  fi
  end
fi

if want release_url_comes_from_github_action_repository_when_the_path_does_not_say; then
  begin release_url_comes_from_github_action_repository_when_the_path_does_not_say
  if use_server; then
    publish "$REAL_ARCHIVE" "$ARCHIVE" other-owner/idem-fork
    printf '%s  %s\n' "$REAL_SHA256" "$ARCHIVE" >>"$TABLE"
    # The copy moves out of the _actions layout: only IDEM_ACTION_REPOSITORY tells.
    mv "$CASE/runner/_actions/$ACTION_OWNER_REPO/v$OWN_VERSION" "$CASE/elsewhere"
    ACTION_SCRIPT="$CASE/elsewhere/action/idem-action.sh"
    plan "$SAMPLE"
    input binary ""
    EXTRA_ENV+=(IDEM_ACTION_REPOSITORY=other-owner/idem-fork)
    action
    expect_rc 0
    grep -q "GET /other-owner/idem-fork/releases/download/" "$TMP_ROOT/requests.log" 2>/dev/null ||
      fail "not fetched from other-owner/idem-fork"
    # Neither the layout nor the variable: refused, never the consumer's repository.
    EXTRA_ENV=(GITHUB_REPOSITORY=acme/infra GITHUB_SERVER_URL="$SERVER_URL" CURL_CA_BUNDLE="$CA_BUNDLE")
    rm -rf "$CASE/tool-cache/idem"
    action
    [[ $RC != 0 ]] || fail "installed without knowing the action's repository"
    expect_log "cannot tell which repository publishes idem's releases"
  fi
  end
fi

if want tampered_release_archive_is_refused; then
  begin tampered_release_archive_is_refused
  if use_server; then
    # The table holds the real archive's SHA-256; the server hands out one byte more.
    cp "$REAL_ARCHIVE" "$CASE/tampered.tar.gz"
    printf 'x' >>"$CASE/tampered.tar.gz"
    publish "$CASE/tampered.tar.gz" "$ARCHIVE"
    printf '%s  %s\n' "$REAL_SHA256" "$ARCHIVE" >>"$TABLE"
    plan "$SAMPLE"
    input binary ""
    action
    [[ $RC != 0 ]] || fail "ran a tampered archive"
    expect_log "$ARCHIVE from $SERVER_URL/$ACTION_OWNER_REPO/releases/download/v$OWN_VERSION/$ARCHIVE has SHA-256"
    expect_log "but action/idem-sha256.txt says $REAL_SHA256: refusing to run it"
    [[ -z $(out install path) ]] || fail "installed anyway"
    [[ ! -e $CASE/output.run ]] || fail "idem ran"
    expect_no_file "$CASE/tool-cache/idem/$OWN_VERSION"
    [[ -z $(find "$CASE/temp" -name 'idem-download.*') ]] || fail "the download was left in RUNNER_TEMP"
  fi
  end
fi

if want unknown_version_is_refused_naming_what_to_do; then
  begin unknown_version_is_refused_naming_what_to_do
  if use_server; then
    printf '%s  %s\n' "$REAL_SHA256" "$ARCHIVE" >>"$TABLE"
    plan "$SAMPLE"
    input binary ""
    input version 0.0.9
    action
    [[ $RC != 0 ]] || fail "accepted a version the table does not list"
    expect_log "idem 0.0.9 for $TRIPLE is not in this action's SHA-256 table"
    expect_log "pin the action to a release tag"
    expect_log "set 'version: source' to build"
    [[ ! -s $TMP_ROOT/requests.log ]] || fail "downloaded an unverifiable archive"
    # Without `version`, an action whose table lacks its own version says the same.
    INPUTS=()
    input binary ""
    printf '# test table\n' >"$TABLE"
    action
    [[ $RC != 0 ]] || fail "an empty table was not refused"
    expect_log "idem $OWN_VERSION for $TRIPLE is not in this action's SHA-256 table"
  fi
  end
fi

if want release_zip_is_unpacked_with_unzip; then
  begin release_zip_is_unpacked_with_unzip
  if use_server; then
    zip_name="idem-v$OWN_VERSION-$TRIPLE.zip"
    mkdir -p "$CASE/zip/idem-v$OWN_VERSION"
    cp "$IDEM_BIN" "$CASE/zip/idem-v$OWN_VERSION/idem"
    (cd "$CASE/zip" && zip -q -r "$CASE/$zip_name" "idem-v$OWN_VERSION")
    publish "$CASE/$zip_name" "$zip_name"
    printf '%s  %s\n' "$(sha256sum "$CASE/$zip_name" | cut -c1-64)" "$zip_name" >>"$TABLE"
    plan "$SAMPLE"
    input binary ""
    action
    expect_rc 0
    expect_out created 2
    cmp -s "$(out install path)" "$IDEM_BIN" || fail "the unzipped binary is not the real one"
  fi
  end
fi

if want windows_runner_is_refused_with_the_reason; then
  begin windows_runner_is_refused_with_the_reason
  plan "$SAMPLE"
  EXTRA_ENV=(RUNNER_OS=Windows)
  action
  [[ $RC != 0 ]] || fail "ran on a Windows runner"
  expect_log "Windows runners are not supported yet: idem has not been built or tested on Windows"
  [[ ! -e $CASE/output.run ]] || fail "idem ran"
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

if want version_source_builds_once_and_caches_the_build; then
  begin version_source_builds_once_and_caches_the_build
  action_copy
  # The build hashes the action's source: give the copy some.
  copy_root=$(dirname -- "$(dirname -- "$ACTION_SCRIPT")")
  cp -R "$REPO/wit" "$copy_root/"
  fake_cargo
  plan "$SAMPLE"
  input binary ""
  input version source
  action
  expect_rc 0
  [[ $(out prepare source) == build ]] || fail "source $(out prepare source), expected build"
  key=$(out prepare build-key)
  [[ $key =~ ^idem-bin-Linux-X64-[0-9a-f]{64}$ ]] || fail "build-key '$key'"
  [[ $(out prepare build-dir) == "$CASE/tool-cache/idem/build-"* ]] || fail "build-dir $(out prepare build-dir)"
  grep -q "^cargo build --release --locked (in $copy_root)" "$CASE/cargo.log" 2>/dev/null ||
    fail "cargo was not called as 'cargo build --release --locked' in the action's directory"
  expect_log "about 16 minutes"
  [[ $(out install cache-hit) == false ]] || fail "cache-hit on a fresh build"
  expect_out created 2
  # What actions/cache would restore is there: the next run does not build again.
  action
  expect_rc 0
  [[ $(wc -l <"$CASE/cargo.log") == 1 ]] || fail "built twice"
  expect_log "using the cached build"
  [[ $(out install cache-hit) == true ]] || fail "cache-hit '$(out install cache-hit)' on a cached build"
  # A change to the source is a new key.
  echo "// changed" >>"$copy_root/wit/types.wit"
  action
  [[ $(out prepare build-key) != "$key" ]] || fail "the build key ignores the source"
  end
fi

if want version_source_builds_even_with_a_release_listed; then
  begin version_source_builds_even_with_a_release_listed
  action_copy
  fake_cargo
  printf '%s  %s\n' "$(printf 0%.0s $(seq 1 64))" "$ARCHIVE" >>"$TABLE"
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
  input version source
  action
  [[ $RC != 0 ]] || fail "passed without a binary"
  expect_log "'version: source' builds idem with cargo, which is not installed"
  end
fi

# --- issue 21: the summary, the report, the inputs ----------------------------------------

if want plan_with_diff_puts_the_diffs_in_the_job_summary; then
  begin plan_with_diff_puts_the_diffs_in_the_job_summary
  plan "$SAMPLE"
  input mode plan
  input diff true
  action
  expect_rc 0
  expect_summary "**Diffs** (the first 20 lines of each)"
  expect_summary "<details><summary>step 2: create-file out/a.txt (4 lines)</summary>"
  expect_summary '```diff'
  expect_summary "+hi"
  expect_no_file "$WS/out"
  end
fi

if want drift_summary_shows_the_first_lines_of_each_diff_fenced_safely; then
  begin drift_summary_shows_the_first_lines_of_each_diff_fenced_safely
  # 30 lines, one of them a run of backticks that would close a ``` fence.
  content=$(for i in $(seq 1 29); do printf 'line %s\\n' "$i"; done)
  plan "steps: [{file: long.txt, content: \"\`\`\`\`\\n$content\"}]
"
  input mode check
  input diff true
  action
  expect_rc 2
  expect_summary "(33 lines, first 20 shown)"
  expect_summary '`````diff'
  expect_summary "+line 16"
  ! grep -qF "+line 17" "$CASE/summary.run" || fail "more than 20 lines of the diff"
  end
fi

if want diffs_are_dropped_whole_past_the_summary_limit; then
  begin diffs_are_dropped_whole_past_the_summary_limit
  body='steps:'
  for i in $(seq 1 30); do body+=$'\n'"  - {file: f$i.txt, content: \"$(printf 'x%.0s' $(seq 1 200))\\n\"}"; done
  plan "$body"$'\n'
  input mode plan
  input diff true
  EXTRA_ENV=(IDEM_ACTION_SUMMARY_LIMIT=12000)
  action
  expect_rc 0
  size=$(wc -c <"$CASE/summary.run")
  ((size <= 12000)) || fail "summary is $size bytes, over the 12000 limit"
  expect_summary "more diffs are not shown"
  opened=$(grep -c '^<details>' "$CASE/summary.run")
  closed=$(grep -c '^</details>' "$CASE/summary.run")
  [[ $opened == "$closed" && $opened -gt 0 ]] || fail "$opened diff blocks opened, $closed closed"
  end
fi

if want summary_has_a_timeline_and_counts_per_step; then
  begin summary_has_a_timeline_and_counts_per_step
  plan 'steps:
  - dir: out
  - each: users.csv
    key: id
    steps:
      - file: "out/{id}.txt"
        content: "{id}\n"
'
  printf 'id\n1\n2\n3\n' >"$WS/users.csv"
  action
  expect_rc 0
  expect_summary '```mermaid'
  expect_summary "    dateFormat x"
  grep -qE '^    1 dir out \(created\) :active, s1, 0, [0-9]+$' "$CASE/summary.run" ||
    fail "no timeline task for step 1"
  grep -qE '^    2 each users.csv .*:s?[a-z, ]*s2, [0-9]+, [0-9]+$' "$CASE/summary.run" ||
    grep -qE '^    2 .*, s2, [0-9]+, [0-9]+$' "$CASE/summary.run" || fail "no timeline task for step 2"
  expect_summary "| # | step | outcome | changes | records | time | line |"
  grep -qE '^\| 2 \| each users.csv \| created \| .* \| processed 3, skipped 0, failed 0 \| [0-9.]+ ms \| 3 \|$' "$CASE/summary.run" ||
    fail "step 2's row lacks its record counts or time"
  end
fi

if want timeline_of_many_steps_is_kept_short; then
  begin timeline_of_many_steps_is_kept_short
  body='steps:'
  for i in $(seq 1 60); do body+=$'\n'"  - dir: \"d:$i#;\""; done
  plan "$body"$'\n'
  input mode plan
  action
  expect_rc 0
  tasks=$(awk '/^```mermaid/ { on = 1; next } on && /^```/ { on = 0 } on && / :/' "$CASE/summary.run" | wc -l)
  [[ $tasks == 40 ]] || fail "$tasks timeline tasks, expected 39 and one for the rest"
  expect_summary "    21 more steps :m, "
  ! awk '/^```mermaid/ { on = 1; next } on && /^```/ { on = 0 } on && / :/ { sub(/ :[^:]*$/, ""); if ($0 ~ /[:#;]/) bad = 1 } END { exit !bad }' "$CASE/summary.run" ||
    fail "a task name holds : # or ;, which Mermaid reads as syntax"
  end
fi

# A stand-in for an idem that dies before it prints: the real binary, killed at once (or
# silenced, for an exit code 0 that must not pass for success).
dying_idem() {
  cat >"$WS/dying-idem" <<EOF
#!/bin/sh
[ "\$1" = --version ] && exec "$IDEM_BIN" --version
case "$1" in
killed) "$IDEM_BIN" "\$@" & pid=\$!; kill -9 \$pid; wait \$pid ;;
silent) "$IDEM_BIN" "\$@" >/dev/null; exit 0 ;;
esac
EOF
  chmod +x "$WS/dying-idem"
}
for how in killed silent; do
  if want "idem_that_prints_no_report_fails_the_step_$how"; then
    begin "idem_that_prints_no_report_fails_the_step_$how"
    plan "$SAMPLE"
    dying_idem "$how"
    input binary dying-idem
    action
    [[ $RC != 0 ]] || fail "the step passed without a report"
    expect_out result error
    expect_out failed 0
    expect_out changed false
    expect_log "printed no JSON report"
    expect_summary "idem printed no JSON report"
    end
  fi
done

if want booleans_are_taken_in_any_case; then
  begin booleans_are_taken_in_any_case
  plan "$SAMPLE"
  input verify True
  input diff TRUE
  input persist-state False
  input fail-on-drift FALSE
  action
  expect_rc 0
  expect_log "apply --verify --diff"
  [[ $(out prepare persist-state) == false ]] || fail "persist-state output '$(out prepare persist-state)'"
  [[ -z $(out prepare state-key) ]] || fail "a state key without persist-state"
  end
fi

if want symlinked_workspace_gives_relative_annotation_paths; then
  begin symlinked_workspace_gives_relative_annotation_paths
  plan "$FAILING" ops/deploy.yml
  ln -s "$WS" "$CASE/link"
  input plan ops/deploy.yml
  EXTRA_ENV=(GITHUB_WORKSPACE="$CASE/link")
  action
  expect_rc 1
  expect_log "::error file=ops/deploy.yml,line=3,"
  expect_no_log "::error file=/"
  end
fi

if want outputs_tell_version_cache_hit_and_not_run; then
  begin outputs_tell_version_cache_hit_and_not_run
  plan "$FAILING"'  - dir: later
  - dir: later-still
'
  action
  expect_rc 1
  expect_out failed 1
  expect_out not-run 2
  [[ $(out install version) == "$OWN_VERSION" ]] || fail "version '$(out install version)'"
  [[ $(out install cache-hit) == false ]] || fail "cache-hit '$(out install cache-hit)' with 'binary'"
  expect_summary "| not run |"
  end
fi

if want upload_report_names_an_artifact_and_links_it_from_the_summary; then
  begin upload_report_names_an_artifact_and_links_it_from_the_summary
  plan "$SAMPLE"
  input upload-report true
  action
  expect_rc 0
  name=$(out prepare report-artifact)
  [[ $name =~ ^idem-report-test-[0-9a-f]{16}-1$ ]] || fail "artifact name '$name'"
  [[ $(out prepare upload-report) == true ]] || fail "upload-report output"
  # What actions/upload-artifact hands to the link step.
  url=https://github.com/acme/infra/actions/runs/4242/artifacts/99
  phase link IDEM_ACTION_ARTIFACT_URL="$url" IDEM_ACTION_ARTIFACT_NAME="$name" || RC=$?
  grep -qF "The full JSON report: [$name]($url)" "$CASE/summary.link" || fail "no link in the summary"
  # No URL (the upload failed): an error, not a dead link.
  RC=0
  phase link IDEM_ACTION_ARTIFACT_URL="" IDEM_ACTION_ARTIFACT_NAME="$name" || RC=$?
  [[ $RC != 0 ]] || fail "linked an empty URL"
  expect_log "upload-report: actions/upload-artifact gave no artifact URL"
  # Off by default: no artifact is named.
  INPUTS=()
  action
  [[ -z $(out prepare report-artifact) ]] || fail "an artifact without upload-report"
  end
fi

# --- the release scripts (action/release/), as release.yml runs them ----------------------

if want release_scripts_package_sum_and_update_the_table; then
  begin release_scripts_package_sum_and_update_the_table
  rel="$REPO/action/release"
  bash "$rel/package.sh" "$IDEM_BIN" "$TRIPLE" "$OWN_VERSION" "$CASE/dist" >>"$CASE/log" 2>&1 || fail "package.sh failed"
  listing=$(tar -tzf "$CASE/dist/$ARCHIVE" 2>/dev/null | LC_ALL=C sort | tr '\n' ' ')
  [[ $listing == "idem-v$OWN_VERSION-$TRIPLE/ idem-v$OWN_VERSION-$TRIPLE/README.md idem-v$OWN_VERSION-$TRIPLE/idem " ]] ||
    fail "archive holds: $listing"
  # Reproducible: the same binary packs to the same bytes.
  first=$(sha256sum "$CASE/dist/$ARCHIVE" | cut -c1-64)
  bash "$rel/package.sh" "$IDEM_BIN" "$TRIPLE" "$OWN_VERSION" "$CASE/dist" >>"$CASE/log" 2>&1
  [[ $(sha256sum "$CASE/dist/$ARCHIVE" | cut -c1-64) == "$first" ]] || fail "packing twice gave two archives"
  # An archive can never carry another version than its name.
  RC=0
  bash "$rel/package.sh" "$IDEM_BIN" "$TRIPLE" 9.9.9 "$CASE/dist" >>"$CASE/log" 2>&1 || RC=$?
  [[ $RC != 0 ]] || fail "packed idem $OWN_VERSION as 9.9.9"
  expect_log "says 'idem $OWN_VERSION', not 'idem 9.9.9'"
  expect_no_file "$CASE/dist/idem-v9.9.9-$TRIPLE.tar.gz"
  RC=0
  bash "$rel/package.sh" "$IDEM_BIN" x86_64-pc-windows-msvc "$OWN_VERSION" "$CASE/dist" >>"$CASE/log" 2>&1 || RC=$?
  [[ $RC != 0 ]] || fail "packed a Windows target"
  expect_log "TARGET 'x86_64-pc-windows-msvc' is not one the action installs"

  bash "$rel/checksums.sh" "$CASE/dist" >>"$CASE/log" 2>&1 || fail "checksums.sh failed"
  [[ $(cat "$CASE/dist/SHA256SUMS") == "$first  $ARCHIVE" ]] || fail "SHA256SUMS: $(cat "$CASE/dist/SHA256SUMS")"

  cp "$REPO/action/idem-sha256.txt" "$CASE/table"
  printf '%s  idem-v0.0.1-aarch64-apple-darwin.tar.gz\n' "$(printf 1%.0s $(seq 1 64))" >>"$CASE/table"
  printf '%s  %s\n' "$(printf 2%.0s $(seq 1 64))" "$ARCHIVE" >>"$CASE/table"
  bash "$rel/update-table.sh" "$CASE/dist/SHA256SUMS" "$CASE/table" >>"$CASE/log" 2>&1 || fail "update-table.sh failed"
  grep -qx "$first  $ARCHIVE" "$CASE/table" || fail "the new line is not in the table"
  ! grep -q "^2222" "$CASE/table" || fail "the old line of the same archive stayed"
  grep -q "idem-v0.0.1-aarch64-apple-darwin.tar.gz" "$CASE/table" || fail "another archive's line was dropped"
  [[ $(head -n 1 "$CASE/table") == "# SHA-256 of idem's release archives"* ]] || fail "the comments are no longer on top"
  cp "$CASE/table" "$CASE/table.once"
  bash "$rel/update-table.sh" "$CASE/dist/SHA256SUMS" "$CASE/table" >>"$CASE/log" 2>&1
  cmp -s "$CASE/table" "$CASE/table.once" || fail "a second update changed the table"
  # The table the action reads accepts what the script wrote.
  bad=$(grep -vE '^(#.*|[0-9a-f]{64}  idem-v[0-9][^ ]*\.(tar\.gz|zip))?$' "$CASE/table" || true)
  [[ -z $bad ]] || fail "malformed: $bad"
  # A malformed sums file stops it and leaves the table as it was.
  printf 'not-a-sum  idem-v1.0.0-x86_64-unknown-linux-musl.tar.gz\n' >"$CASE/bad-sums"
  RC=0
  bash "$rel/update-table.sh" "$CASE/bad-sums" "$CASE/table" >>"$CASE/log" 2>&1 || RC=$?
  [[ $RC != 0 ]] || fail "took a malformed sums file"
  expect_log "bad-sums line 1 is not '<64 hex digits>  idem-vVERSION-TARGET.tar.gz'"
  cmp -s "$CASE/table" "$CASE/table.once" || fail "the table changed on a refused update"
  end
fi

if want release_pin_init_points_the_sample_workflow_at_a_release; then
  begin release_pin_init_points_the_sample_workflow_at_a_release
  cp "$REPO/host/src/init.rs" "$CASE/init.rs"
  sha=$(printf 'ab%.0s' $(seq 1 20))
  bash "$REPO/action/release/pin-init.sh" idem-dev/idem v1.2.3 "$sha" "$CASE/init.rs" >>"$CASE/log" 2>&1 || fail "pin-init.sh failed"
  grep -qx "      - uses: idem-dev/idem@$sha # v1.2.3" "$CASE/init.rs" || fail "the idem step is not pinned"
  grep -q "uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2" "$CASE/init.rs" ||
    fail "actions/checkout's pin was touched"
  cp "$CASE/init.rs" "$CASE/init.once"
  bash "$REPO/action/release/pin-init.sh" idem-dev/idem v1.2.3 "$sha" "$CASE/init.rs" >>"$CASE/log" 2>&1
  cmp -s "$CASE/init.rs" "$CASE/init.once" || fail "a second pin changed the file"
  RC=0
  bash "$REPO/action/release/pin-init.sh" idem-dev/idem v1.2.3 abc123 "$CASE/init.rs" >>"$CASE/log" 2>&1 || RC=$?
  [[ $RC != 0 ]] || fail "took a short SHA"
  expect_log "SHA 'abc123' is not a full commit SHA"
  end
fi

if want binstall_metadata_names_the_release_archive; then
  begin binstall_metadata_names_the_release_archive
  # cargo binstall fills { repo }, { version }, { target }, { bin } and { binary-ext }; the
  # result must be the archive package.sh makes and the binary's path inside it.
  read -r url bin < <(python3 -c '
import sys, tomllib
m = tomllib.load(open(sys.argv[1], "rb"))["package"]["metadata"]["binstall"]
assert m["pkg-fmt"] == "tgz", m
v = {"{ repo }": "https://github.com/idem-dev/idem", "{ version }": sys.argv[2],
     "{ target }": sys.argv[3], "{ bin }": "idem", "{ binary-ext }": ""}
def fill(s):
    for k, x in v.items():
        s = s.replace(k, x)
    return s
print(fill(m["pkg-url"]), fill(m["bin-dir"]))' "$REPO/host/Cargo.toml" "$OWN_VERSION" "$TRIPLE" 2>>"$CASE/log")
  [[ $url == "https://github.com/idem-dev/idem/releases/download/v$OWN_VERSION/$ARCHIVE" ]] ||
    fail "binstall's URL is '$url'"
  bash "$REPO/action/release/package.sh" "$IDEM_BIN" "$TRIPLE" "$OWN_VERSION" "$CASE/dist" >>"$CASE/log" 2>&1
  tar -tzf "$CASE/dist/$ARCHIVE" | grep -qx "$bin" || fail "the archive has no $bin"
  end
fi

if want action_yml_maps_every_input_and_pins_every_action; then
  begin action_yml_maps_every_input_and_pins_every_action
  yml="$REPO/action.yml"
  inputs=$(awk '/^inputs:/ { on = 1; next } /^[a-z]/ { on = 0 } on && /^  [a-z-]+:$/ { sub(/:$/, ""); print $1 }' "$yml")
  [[ -n $inputs ]] || fail "found no inputs in action.yml"
  script_steps=$(grep -cE "run: bash \"\\\$GITHUB_ACTION_PATH/action/idem-action.sh\" (prepare|install|run)\$" "$yml")
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

# Issue 15: a PostgreSQL state from a secret is masked, never printed with its password,
# reaches idem through IDEM_STATE (not the command line), and refuses a cache.
if want postgres_state_is_masked_and_kept_on_the_server; then
  begin postgres_state_is_masked_and_kept_on_the_server
  pg_dir="$TMP_ROOT/pg"
  bash "$REPO/tests/pg.sh" start "$pg_dir" $$ >/dev/null
  pg_port=$(sed -n 's/^PG_PORT=//p' "$pg_dir/env")
  pg_password=$(sed -n 's/^PG_PASSWORD=//p' "$pg_dir/env")
  url="postgresql://idem:$pg_password@127.0.0.1:$pg_port/postgres"
  plan "$SAMPLE"
  input state "$url"
  input state-key action-test
  action
  expect_rc 0
  expect_log "::add-mask::$url"
  expect_log "::add-mask::$pg_password"
  expect_log "state postgresql://idem@127.0.0.1:$pg_port/postgres"
  expect_log "--state-key action-test"
  ! grep -F -- "$pg_password" "$CASE/log" | grep -v '^::add-mask::' || fail "the password is printed beyond its masks"
  expect_no_file "$WS/.idem/state.db"
  runs=$(psql -X -At -h "$(sed -n 's/^PG_SOCKET=//p' "$pg_dir/env")" -p "$pg_port" -U idem -d postgres \
    -c "SELECT count(*) FROM idem.runs WHERE state_key = 'action-test' AND outcome = 'ok'")
  [[ $runs == 1 ]] || fail "runs recorded on the server: $runs"
  INPUTS=()
  input state "$url"
  input persist-state true
  action
  expect_rc 1
  expect_log "needs no cache"
  bash "$REPO/tests/pg.sh" stop "$pg_dir"
  end
fi

# --- plan, approve, apply: a saved plan ----------------------------------------------------

if want saved_plan_from_a_plan_run_is_applied_by_a_later_run; then
  begin saved_plan_from_a_plan_run_is_applied_by_a_later_run
  plan "$SAMPLE"
  input mode plan
  input plan-out reviewed.json
  action
  expect_rc 0
  expect_out saved-plan "$WS/reviewed.json"
  expect_file "$WS/reviewed.json"
  expect_no_file "$WS/out"
  jq -e '.format == "idem-saved-plan" and .version == 1 and (.changes | length) == 2' \
    "$WS/reviewed.json" >/dev/null || fail "reviewed.json is not a saved plan of 2 changes"
  # The apply job: a fresh runner, the artifact downloaded, only the saved plan named.
  INPUTS=()
  input mode apply
  input saved-plan reviewed.json
  action
  expect_rc 0
  expect_out created 2
  [[ $(cat "$WS/out/a.txt" 2>/dev/null) == hi ]] || fail "out/a.txt does not hold 'hi'"
  expect_out saved-plan ""
  expect_log "::group::idem apply reviewed.json"
  end
fi

if want saved_plan_is_refused_when_the_world_changed_after_the_plan; then
  begin saved_plan_is_refused_when_the_world_changed_after_the_plan
  plan "$SAMPLE"
  input mode plan
  input plan-out reviewed.json
  action
  expect_rc 0
  mkdir -p "$WS/out"
  printf 'by hand\n' >"$WS/out/a.txt"
  INPUTS=()
  input mode apply
  input saved-plan reviewed.json
  action
  expect_rc 1
  expect_out result error
  expect_log "nothing was applied"
  expect_log "was created since the plan"
  [[ $(cat "$WS/out/a.txt") == "by hand" ]] || fail "out/a.txt was overwritten"
  end
fi

if want saved_plan_inputs_are_checked; then
  begin saved_plan_inputs_are_checked
  plan "$SAMPLE"
  input mode apply
  input plan-out reviewed.json
  action
  [[ $RC != 0 ]] || fail "accepted plan-out with mode apply"
  expect_log "input 'plan-out' needs mode 'plan'"
  INPUTS=()
  input mode plan
  input saved-plan idem.yml
  action
  [[ $RC != 0 ]] || fail "accepted saved-plan with mode plan"
  expect_log "input 'saved-plan' needs mode 'apply'"
  INPUTS=()
  input saved-plan idem.yml
  action
  [[ $RC != 0 ]] || fail "accepted a plan file as a saved plan"
  expect_log "input 'saved-plan': 'idem.yml' is not a saved plan"
  INPUTS=()
  input saved-plan missing.json
  action
  [[ $RC != 0 ]] || fail "accepted a missing saved plan"
  expect_log "input 'saved-plan': no file 'missing.json'"
  expect_no_file "$WS/out"
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
