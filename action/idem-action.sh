#!/usr/bin/env bash
# idem's GitHub Action, in one script; action.yml calls it once per phase:
#   prepare  validate the inputs, decide where idem comes from, name the state cache
#   install  put an idem binary in place: the `binary` input, a release archive checked
#            against action/idem-sha256.txt, or a cargo build of the action's own source
#   run      run idem, then write the outputs, the job summary and the annotations
# Inputs arrive as IDEM_ACTION_* variables set by action.yml's `env:` blocks. No value is
# ever evaluated as code: values go into arrays, files and quoted expansions only. Each
# phase validates every input again, so a phase never trusts what an earlier one left.
set -euo pipefail
# A failure nobody anticipated still ends with an error the log shows, not a silent exit.
trap 'printf "::error title=idem action::unexpected failure (exit code %s) at line %s of %s\n" "$?" "$LINENO" "${BASH_SOURCE[0]}"' ERR

ACTION_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ACTION_ROOT
readonly CHECKSUMS="$ACTION_ROOT/action/idem-sha256.txt"
# GitHub's limit for one step's job summary; the note that says it was cut fits in the slack.
SUMMARY_LIMIT=$((1024 * 1024))
readonly ANNOTATION_LIMIT=10

# --- workflow commands --------------------------------------------------------------------

# The escaping the runner expects in a command's message and in its properties.
escape_data() {
  local s=$1
  s=${s//'%'/%25}
  s=${s//$'\r'/%0D}
  s=${s//$'\n'/%0A}
  printf '%s' "$s"
}
escape_property() {
  local s
  s=$(escape_data "$1")
  s=${s//:/%3A}
  s=${s//,/%2C}
  printf '%s' "$s"
}

error() { printf '::error title=idem action::%s\n' "$(escape_data "$*")"; }
notice() { printf '::notice title=idem action::%s\n' "$(escape_data "$*")"; }
die() {
  error "$@"
  exit 1
}
group() { printf '::group::%s\n' "$(escape_data "$*")"; }
endgroup() { printf '::endgroup::\n'; }

random_token() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# One output of the current step; a value with a newline goes through a random delimiter.
set_output() {
  local name=$1 value=$2 delim
  if [[ $value == *$'\n'* ]]; then
    delim="idem_$(random_token)"
    printf '%s<<%s\n%s\n%s\n' "$name" "$delim" "$value" "$delim" >>"$GITHUB_OUTPUT"
  else
    printf '%s=%s\n' "$name" "$value" >>"$GITHUB_OUTPUT"
  fi
}

# --- inputs -------------------------------------------------------------------------------

# Reject control characters first: a newline in a value could forge a workflow command or
# an output line, and no legitimate path or word needs one.
no_control() {
  local name=$1 value=$2
  if [[ $value =~ [[:cntrl:]] ]]; then
    die "input '$name' contains a control character (a newline?); give a single-line value"
  fi
}

boolean() {
  local name=$1 value=$2
  case $value in
  true | false) ;;
  *) die "input '$name' must be 'true' or 'false', not '$value'" ;;
  esac
}

# Absolute form of a path relative to the current directory (the working directory).
absolute() {
  case $1 in
  /* | [A-Za-z]:[\\/]*) printf '%s' "$1" ;;
  *) printf '%s/%s' "$PWD" "$1" ;;
  esac
}

# Reads, checks and normalises every input, sets the globals the phases use, and moves into
# the working directory.
read_inputs() {
  [[ -n ${GITHUB_OUTPUT:-} ]] || die "GITHUB_OUTPUT is not set: run this script as a step of a GitHub Actions job"
  temp_dir=${RUNNER_TEMP:-${TMPDIR:-/tmp}}
  workspace=${GITHUB_WORKSPACE:-$PWD}

  plan=${IDEM_ACTION_PLAN:-idem.yml}
  mode=${IDEM_ACTION_MODE:-apply}
  verify=${IDEM_ACTION_VERIFY:-false}
  diff=${IDEM_ACTION_DIFF:-false}
  fail_on_drift=${IDEM_ACTION_FAIL_ON_DRIFT:-true}
  root=${IDEM_ACTION_ROOT:-.}
  state=${IDEM_ACTION_STATE:-}
  persist_state=${IDEM_ACTION_PERSIST_STATE:-false}
  state_key=${IDEM_ACTION_STATE_KEY:-}
  version=${IDEM_ACTION_VERSION:-}
  binary=${IDEM_ACTION_BINARY:-}
  working_directory=${IDEM_ACTION_WORKING_DIRECTORY:-.}

  local name
  for name in plan mode verify diff fail_on_drift root state persist_state state_key \
    version binary working_directory; do
    no_control "${name//_/-}" "${!name}"
  done

  case $mode in
  apply | plan | check) ;;
  *) die "input 'mode' must be 'apply', 'plan' or 'check', not '$mode'" ;;
  esac
  boolean verify "$verify"
  boolean diff "$diff"
  boolean fail-on-drift "$fail_on_drift"
  boolean persist-state "$persist_state"
  if [[ $verify == true && $mode != apply ]]; then
    die "input 'verify' needs mode 'apply' (mode is '$mode'): plan and check never change anything to verify"
  fi
  # Starts with a letter so that no key can be a prefix of another run's keys (see docs).
  if [[ -n $state_key && ! $state_key =~ ^[A-Za-z][A-Za-z0-9._-]{0,63}$ ]]; then
    die "input 'state-key' must start with a letter and hold only letters, digits, '.', '_' and '-' (at most 64), not '$state_key'"
  fi
  if [[ -n $version && $version != source &&
    ! $version =~ ^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]]; then
    die "input 'version' must be empty, 'source' or a version like '1.2.3', not '$version'"
  fi
  version=${version#v}

  cd -- "$workspace" || die "GITHUB_WORKSPACE '$workspace' is not a directory"
  if [[ ! -d $working_directory ]]; then
    die "input 'working-directory': '$working_directory' is not a directory (relative to the workspace $workspace)"
  fi
  cd -- "$working_directory"

  if [[ ! -f $plan ]]; then
    die "input 'plan': no file '$plan' in $PWD (a relative plan is taken from the working directory)"
  fi
  # A plan named like an option would be read as one.
  [[ $plan == -* ]] && plan="./$plan"
  if [[ ! -d $root ]]; then
    die "input 'root': '$root' is not a directory (relative to $PWD)"
  fi
  root_abs=$(cd -- "$root" && pwd -P)
  if [[ -n $state ]]; then
    state_abs=$(absolute "$state")
  else
    state_abs="$root_abs/.idem/state.db"
  fi
  if [[ -d $state_abs ]]; then
    die "input 'state': '$state' is a directory; give the database file's path"
  fi
  if [[ -n $binary ]]; then
    binary_abs=$(absolute "$binary")
    if [[ ! -f $binary_abs || ! -x $binary_abs ]]; then
      die "input 'binary': '$binary' is not an executable file (relative to $PWD)"
    fi
  fi
  if [[ $persist_state == true && -z ${GITHUB_RUN_ID:-} ]]; then
    die "input 'persist-state' needs GITHUB_RUN_ID, which the runner sets; is this a GitHub Actions job?"
  fi
}

# --- where idem comes from ----------------------------------------------------------------

sha256() {
  if command -v sha256sum >/dev/null; then
    sha256sum "$@"
  else
    shasum -a 256 "$@"
  fi
}

exe_suffix() {
  if [[ $(platform_os) == windows ]]; then printf '.exe'; fi
}

platform_os() {
  case ${RUNNER_OS:-$(uname -s)} in
  Linux | linux) printf 'linux' ;;
  macOS | Darwin) printf 'macos' ;;
  Windows | MINGW* | MSYS* | CYGWIN*) printf 'windows' ;;
  *) printf 'unknown' ;;
  esac
}

# The Rust target triple of the runner, which names the release archive.
target_triple() {
  local arch
  case ${RUNNER_ARCH:-$(uname -m)} in
  X64 | x86_64 | amd64) arch=x86_64 ;;
  ARM64 | arm64 | aarch64) arch=aarch64 ;;
  *) return 1 ;;
  esac
  case $(platform_os) in
  linux) printf '%s-unknown-linux-gnu' "$arch" ;;
  macos) printf '%s-apple-darwin' "$arch" ;;
  windows) printf '%s-pc-windows-msvc' "$arch" ;;
  *) return 1 ;;
  esac
}

own_version() {
  sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$ACTION_ROOT/Cargo.toml" 2>/dev/null | head -n 1
}

# The committed SHA-256 of one archive, or nothing when the table does not list it.
table_sha256() {
  [[ -f $CHECKSUMS ]] || return 0
  awk -v f="$1" '$1 !~ /^#/ && NF == 2 && $2 == f && $1 ~ /^[0-9a-f]+$/ && length($1) == 64 { print $1; exit }' "$CHECKSUMS"
}

# Hash of everything a build reads, so a cached build is reused only for the same source.
source_hash() {
  (
    cd -- "$ACTION_ROOT"
    { find Cargo.toml Cargo.lock rust-toolchain.toml host guest wit -type f ! -path '*/target/*' 2>/dev/null || true; } |
      LC_ALL=C sort | while IFS= read -r file; do sha256 "$file"; done | sha256 | cut -c1-64
  )
}

# Sets `source` (binary, release or build) and what that source needs.
decide_source() {
  local own triple ext
  if [[ -n $binary ]]; then
    source=binary
    if [[ -n $version && ${1:-} == tell ]]; then
      notice "input 'version' ($version) has no effect: input 'binary' is given"
    fi
    return
  fi
  own=$(own_version)
  if [[ $version != source ]] && triple=$(target_triple); then
    release_version=${version:-$own}
    [[ $(platform_os) == windows ]] && ext=zip || ext=tar.gz
    archive="idem-v$release_version-$triple.$ext"
    archive_sha256=$(table_sha256 "$archive")
    if [[ -n $archive_sha256 ]]; then
      source=release
      return
    fi
    if [[ -n $version && $version != "$own" ]]; then
      die "idem $version for $triple is not in this action's SHA-256 table (action/idem-sha256.txt), so it cannot be verified; use the action at tag v$version, set 'version: source' to build this action's idem $own, or give 'binary'"
    fi
  fi
  source=build
  build_hash=$(source_hash)
  build_dir="${RUNNER_TOOL_CACHE:-$temp_dir}/idem/build-${build_hash:0:16}"
  build_key="idem-bin-${RUNNER_OS:-$(uname -s)}-${RUNNER_ARCH:-$(uname -m)}-$build_hash"
}

# --- phases -------------------------------------------------------------------------------

phase_prepare() {
  group "Check inputs"
  read_inputs
  decide_source tell
  printf 'mode %s, plan %s, root %s, state %s\n' "$mode" "$plan" "$root_abs" "$state_abs"
  printf 'idem comes from: %s\n' "$source"
  endgroup

  set_output source "$source"
  if [[ $source == build ]]; then
    set_output build-dir "$build_dir"
    set_output build-key "$build_key"
  fi
  if [[ $persist_state == true ]]; then
    local prefix="idem-state-${state_key:+$state_key-}$GITHUB_RUN_ID-"
    # SQLite keeps recent writes in the -wal file until a checkpoint; both are the state.
    set_output state-files "$state_abs"$'\n'"$state_abs-wal"
    set_output state-key "$prefix${GITHUB_RUN_ATTEMPT:-1}"
    set_output state-restore-key "$prefix"
  fi
}

phase_install() {
  read_inputs
  decide_source
  local path
  case $source in
  binary)
    path=$binary_abs
    ;;
  release)
    group "Install idem $release_version from a release archive"
    install_release
    path=$installed
    endgroup
    ;;
  build)
    group "Build idem from the action's source"
    install_build
    path=$installed
    endgroup
    ;;
  esac
  printf 'idem: %s\n' "$path"
  "$path" --version || die "$path does not run"
  set_output path "$path"
}

install_release() {
  local repo=${GITHUB_ACTION_REPOSITORY:-${GITHUB_REPOSITORY:-}} dir tmp got bin
  [[ -n $repo ]] || die "cannot tell which repository publishes idem's releases (GITHUB_ACTION_REPOSITORY is empty)"
  local url="${GITHUB_SERVER_URL:-https://github.com}/$repo/releases/download/v$release_version/$archive"
  dir="${RUNNER_TOOL_CACHE:-$temp_dir}/idem/$release_version/$(target_triple)"
  tmp=$(mktemp -d "$temp_dir/idem-download.XXXXXX")
  printf 'downloading %s\n' "$url"
  curl --proto '=https' --tlsv1.2 -fsSL --retry 3 -o "$tmp/$archive" "$url" ||
    die "downloading $url failed"
  got=$(sha256 "$tmp/$archive" | cut -c1-64)
  if [[ $got != "$archive_sha256" ]]; then
    die "$archive has SHA-256 $got but action/idem-sha256.txt says $archive_sha256: refusing to run it"
  fi
  printf 'SHA-256 verified: %s\n' "$got"
  mkdir -p "$tmp/x" "$dir"
  tar -xf "$tmp/$archive" -C "$tmp/x" || die "cannot unpack $archive"
  bin=$(find "$tmp/x" -type f -name "idem$(exe_suffix)" | head -n 1)
  [[ -n $bin ]] || die "$archive holds no idem$(exe_suffix)"
  cp "$bin" "$dir/idem$(exe_suffix)"
  chmod +x "$dir/idem$(exe_suffix)"
  rm -rf "$tmp"
  printf '%s\n' "$dir" >>"${GITHUB_PATH:-/dev/null}"
  installed="$dir/idem$(exe_suffix)"
}

install_build() {
  local bin
  bin="$build_dir/idem$(exe_suffix)"
  if [[ -x $bin ]]; then
    printf 'using the cached build of source %s\n' "$build_hash"
  else
    command -v cargo >/dev/null ||
      die "no prebuilt idem for this runner and cargo is not installed: install Rust first (rustup), or give 'binary'"
    printf 'no release archive in the table for this runner: building source %s\n' "$build_hash"
    # rustup reads rust-toolchain.toml from the current directory, which also adds the
    # wasm32-wasip2 target the guest needs.
    (cd -- "$ACTION_ROOT" && CARGO_TARGET_DIR="$temp_dir/idem-target" cargo build --release --locked) ||
      die "cargo build of idem failed"
    mkdir -p "$build_dir"
    cp "$temp_dir/idem-target/release/idem$(exe_suffix)" "$bin"
  fi
  printf '%s\n' "$build_dir" >>"${GITHUB_PATH:-/dev/null}"
  installed=$bin
}

phase_run() {
  read_inputs
  local bin=${IDEM_ACTION_BIN:-}
  [[ -n $bin && -x $bin ]] || die "no idem binary to run ('$bin'): did the install step fail?"

  local args=("$mode")
  [[ $verify == true ]] && args+=(--verify)
  [[ $diff == true ]] && args+=(--diff)
  args+=(--root "$root_abs" --state "$state_abs" --format json)
  [[ ${RUNNER_DEBUG:-} == 1 ]] && args+=(--verbose)
  args+=("$plan")

  report_dir=$(mktemp -d "$temp_dir/idem-report.XXXXXX")
  report="$report_dir/report.json"
  local code=0 token
  group "idem $mode $plan"
  printf 'idem'
  printf ' %q' "${args[@]}"
  printf '\n'
  # Whatever idem prints (diffs hold file contents) must not be read as workflow commands.
  token=$(random_token)
  printf '::stop-commands::%s\n' "$token"
  "$bin" "${args[@]}" >"$report" || code=$?
  printf '::%s::\n' "$token"
  endgroup

  case $code in
  0) result=success ;;
  2) result=drift ;;
  3) result="verify-failed" ;;
  64) result=usage-error ;;
  *) result=error ;;
  esac

  report_outputs "$code"
  # Step names and diffs are the plan's and the files' text: inert here too.
  token=$(random_token)
  printf '::stop-commands::%s\n' "$token"
  render_log
  printf '::%s::\n' "$token"
  annotate
  render_summary "$code" >>"${GITHUB_STEP_SUMMARY:-/dev/null}"

  if [[ $code == 2 && $mode == check && $fail_on_drift == false ]]; then
    notice "changes are pending (drift); fail-on-drift is false, so the step passes"
    exit 0
  fi
  case $result in
  success) ;;
  drift) error "changes are pending: idem check found drift (set fail-on-drift: false to only report it)" ;;
  verify-failed) error "the apply succeeded, but a second run would still change something" ;;
  usage-error) error "idem rejected its arguments (exit code 64); this is a bug in the action" ;;
  error) error "idem failed with exit code $code" ;;
  esac
  exit "$code"
}

# True when the report is one of idem's JSON reports.
have_report() { jq -e 'type == "object" and has("schema")' "$report" >/dev/null 2>&1; }

report_outputs() {
  local code=$1 key value
  if have_report; then
    while IFS='=' read -r key value; do
      set_output "$key" "$value"
    done < <(jq -r '
      "changed=\(.changed == true)",
      (.summary // {} | "created=\(.created // 0)", "updated=\(.updated // 0)",
        "removed=\(.removed // 0)", "unchanged=\(.unchanged // 0)", "failed=\(.failed // 0)",
        "changes=\(.changes // 0)")' "$report")
  else
    for key in created updated removed unchanged failed changes; do set_output "$key" 0; done
    set_output changed false
  fi
  set_output report "$report"
  set_output exit-code "$code"
  set_output result "$result"
}

# jq helpers shared by the log, the annotations and the summary.
readonly JQ_DEFS='
  def msg: if type == "object" then (.message // tostring) elif . == null then "" else tostring end;
  def cell: tostring | gsub("[\r\n]+"; " ") | gsub("&"; "&amp;") | gsub("<"; "&lt;")
    | gsub(">"; "&gt;") | gsub("\\|"; "\\|");
  def clip(n): if length > n then .[0:n] + "…" else . end;
  def change: "\(.kind) \(.path // "")" + (if .rows then " (\(.rows) rows)" else "" end);
'

render_log() {
  if ! have_report; then
    printf 'idem printed no JSON report; its standard output was:\n'
    head -c 65536 "$report"
    printf '\n'
    return
  fi
  jq -r "$JQ_DEFS"'
    .steps //= []
    | (.steps[] | "\(.index). \(.outcome) \(.name)"
        + (if .error != null then ": \(.error | msg)" else "" end),
        ((.failures // [])[:20][] | "     \(.item): \(.message)"),
        ((.changes // [])[] | select(.diff != null) | .diff | rtrimstr("\n") | split("\n")[] | "    \(.)")),
      (if .error != null then "plan error: \(.error | msg)" else empty end),
      (.summary // {} | "\(.steps // 0) steps: \(.created // 0) created, \(.updated // 0) updated, \(.removed // 0) removed, \(.unchanged // 0) unchanged, \(.failed // 0) failed")' \
    "$report"
}

# Annotations point at the plan's lines; GitHub shows at most ten per step, so the rest are
# counted in one warning. Failures come first, then verify findings, then drift under check.
annotate() {
  have_report || return 0
  local plan_file drift_level=warning
  plan_file=$(absolute "$plan")
  plan_file=${plan_file#"$(cd -- "$workspace" && pwd -P)/"}
  [[ $fail_on_drift == true ]] && drift_level=error
  jq -r --arg file "$plan_file" --arg drift "$drift_level" --arg mode "$mode" \
    --argjson limit "$ANNOTATION_LIMIT" "$JQ_DEFS"'
    def data: gsub("%"; "%25") | gsub("\r"; "%0D") | gsub("\n"; "%0A");
    def prop: data | gsub(":"; "%3A") | gsub(","; "%2C");
    def finding($level; $line; $title; $text): {$level, $line, $title, $text};
    .steps //= []
    | . as $r
    | [ (if .error != null then finding("error"; .error.line; "plan error";
            (.error | msg) + (if .error.hint then " (hint: \(.error.hint))" else "" end)) else empty end),
        (.steps[] | select(.outcome == "failed")
          | finding("error"; .line; "\(.name) failed";
              [(.error | msg), ((.failures // [])[:5][] | "\(.item): \(.message)")]
              | map(select(. != "")) | join("; ") | clip(2000))),
        (((.verify // {}).changes // [])[] | . as $c
          | ([$r.steps[] | select(.index == $c.step)][0] // {}) as $s
          | finding("error"; $s.line; "\($s.name // "step \($c.step)") does not converge";
              "a second run would still make this change: \($c | change)")),
        (if $mode == "check" then
          (.steps[] | select(.outcome == "created" or .outcome == "updated" or .outcome == "removed")
            | finding($drift; .line; "drift: \(.name)";
                "would be \(.outcome): " + ([(.changes // [])[] | change] | join(", ") | clip(2000))))
         else empty end)
      ] as $all
    | ($all[:$limit][]
        | "::\(.level) file=\($file | prop)"
          + (if (.line | type) == "number" and .line > 0 then ",line=\(.line)" else "" end)
          + ",title=\("idem: \(.title)" | prop)::\(.text | data)"),
      (if ($all | length) > $limit then
        "::warning title=idem action::\(($all | length) - $limit) more findings are not annotated (GitHub shows \($limit) per step); see the job summary and the report"
       else empty end)' "$report"
}

# The job summary: a headline, the counts, one table row per step and the errors. Rows are
# dropped from the end when the whole would pass GitHub's 1 MiB per step, with a note.
render_summary() {
  local code=$1 tmp used budget
  if ! have_report; then
    printf '### ❌ idem %s failed (exit code %s)\n\nidem printed no JSON report; see the log of this step.\n' \
      "$mode" "$code"
    return
  fi
  tmp=$(mktemp -d "$temp_dir/idem-summary.XXXXXX")
  jq -r --arg code "$code" --arg result "$result" --arg plan "$plan" --arg pass "$(passes "$code")" \
    --arg mode "$mode" --arg root "$root_abs" "$JQ_DEFS"'
    (if $pass == "true" then (if $result == "drift" then "⚠️" else "✅" end) else "❌" end) as $icon
    | (.summary // {}) as $s
    | "### \($icon) idem \($mode): \($result)",
      "",
      "Plan `\($plan | cell)` · root `\(.root // $root | cell)` · exit code \($code)"
        + (if .dry_run then " · dry run" else "" end) + (if .idem then " · idem \(.idem)" else "" end),
      "",
      "| steps | created | updated | removed | unchanged | failed | changes |",
      "|---:|---:|---:|---:|---:|---:|---:|",
      "| \($s.steps // 0) | \($s.created // 0) | \($s.updated // 0) | \($s.removed // 0) | \($s.unchanged // 0) | \($s.failed // 0) | \($s.changes // 0) |",
      "",
      (if (.steps // [] | length) > 0 then
        "| # | step | \(if .dry_run then "would be" else "outcome" end) | changes | line |",
        "|---:|---|---|---|---:|"
       else empty end)' "$report" >"$tmp/head"
  jq -r "$JQ_DEFS"'
    (.steps // [])[]
    | "| \(.index) | \(.name | cell | clip(300)) | \(.outcome) | "
      + ([(.changes // [])[:5][] | change | cell] + (if (.changes // [] | length) > 5 then ["+\((.changes | length) - 5) more"] else [] end) | join("<br>") | clip(1000))
      + " | \(.line // "") |"' "$report" >"$tmp/rows"
  jq -r "$JQ_DEFS"'
    ([(.steps // [])[] | select(.outcome == "failed")][:10]) as $failed
    | "",
      (if .error != null then
        "**Plan error**" + (if .error.line then " at line \(.error.line)" else "" end)
          + ": \(.error | msg | cell | clip(2000))" + (if .error.hint then " (hint: \(.error.hint | cell))" else "" end), ""
       else empty end),
      (if ($failed | length) > 0 then
        "**Failed steps**", "",
        ($failed[] | "- step \(.index), \(.name | cell | clip(300)): \([(.error | msg), ((.failures // [])[:5][] | "\(.item): \(.message)")] | map(select(. != "")) | join("; ") | cell | clip(2000))"),
        ""
       else empty end),
      (if .verify != null and .verify.ok == false then
        "**Verify:** a second run would still change: "
          + ([.verify.changes[:20][] | "step \(.step): \(change | cell)"] | join(", ")), ""
       else empty end)' "$report" >"$tmp/foot"

  used=$(($(wc -c <"$tmp/head") + $(wc -c <"$tmp/foot")))
  [[ -f ${GITHUB_STEP_SUMMARY:-} ]] && used=$((used + $(wc -c <"$GITHUB_STEP_SUMMARY")))
  budget=$((SUMMARY_LIMIT - used - 512))
  cat "$tmp/head"
  LC_ALL=C awk -v budget="$budget" '
    !cut && used + length($0) + 1 <= budget { used += length($0) + 1; print; next }
    { cut++ }
    END {
      if (cut) printf "\n> **Note:** %d more steps are not shown: GitHub keeps at most 1 MiB of summary per step. The full report is the file in the `report` output.\n", cut
    }' "$tmp/rows"
  cat "$tmp/foot"
  rm -rf "$tmp"
}

# Whether the step passes with this exit code.
passes() {
  if [[ $1 == 0 || ($1 == 2 && $mode == check && $fail_on_drift == false) ]]; then
    printf true
  else
    printf false
  fi
}

main() {
  if [[ -n ${IDEM_ACTION_SUMMARY_LIMIT:-} ]]; then
    # For tests only: a smaller limit shows the cut without a megabyte of plan.
    [[ $IDEM_ACTION_SUMMARY_LIMIT =~ ^[0-9]{1,8}$ ]] || die "IDEM_ACTION_SUMMARY_LIMIT must be a number of bytes"
    SUMMARY_LIMIT=$IDEM_ACTION_SUMMARY_LIMIT
  fi
  command -v jq >/dev/null || die "jq is needed (GitHub's hosted runners have it); install it first"
  case ${1:-} in
  prepare) phase_prepare ;;
  install) phase_install ;;
  run) phase_run ;;
  *) die "usage: idem-action.sh prepare|install|run" ;;
  esac
}

main "$@"
