#!/usr/bin/env bash
# idem's GitHub Action, in one script; action.yml calls it once per phase:
#   prepare  validate the inputs, decide where idem comes from, name the state cache
#   install  put an idem binary in place: the `binary` input, a release archive checked
#            against action/idem-sha256.txt, or a cargo build of the action's own source
#   run      run idem, then write the outputs, the job summary and the annotations
#   link     add the link to the uploaded report (upload-report) to the job summary
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

# Checks a boolean input held in variable VAR and lower-cases it in place: YAML 1.2 and
# GitHub's own expressions take `True` and `TRUE` as true, so the action does too.
boolean() {
  local name=$1 var=$2 value lower
  value=${!var}
  lower=$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')
  case $lower in
  true | false) printf -v "$var" '%s' "$lower" ;;
  *) die "input '$name' must be 'true' or 'false' (in any case), not '$value'" ;;
  esac
}

# Absolute form of a path relative to the current directory (the working directory).
absolute() {
  case $1 in
  /* | [A-Za-z]:[\\/]*) printf '%s' "$1" ;;
  *) printf '%s/%s' "$PWD" "$1" ;;
  esac
}

# A path under the workspace relative to it (as annotations and cache keys want it), any
# other path as it is.
relative() {
  case $1 in
  "$workspace"/*) printf '%s' "${1#"$workspace"/}" ;;
  *) printf '%s' "$1" ;;
  esac
}

# Reads, checks and normalises every input, sets the globals the phases use, and moves into
# the working directory.
read_inputs() {
  [[ -n ${GITHUB_OUTPUT:-} ]] || die "GITHUB_OUTPUT is not set: run this script as a step of a GitHub Actions job"
  # Not a guess that it fails: nothing of idem or of this action has been run on Windows yet
  # (docs/github-action.md, "Platforms"), and Git Bash's /d/a/... paths would reach the
  # cache actions unconverted. Refusing says so instead of failing half-way.
  if [[ $(platform_os) == windows ]]; then
    die "Windows runners are not supported yet: idem has not been built or tested on Windows (see docs/github-action.md, Platforms); run this job on ubuntu-latest or macos-latest"
  fi
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
  upload_report=${IDEM_ACTION_UPLOAD_REPORT:-false}
  cooperate=${IDEM_ACTION_COOPERATE:-false}
  plan_out=${IDEM_ACTION_PLAN_OUT:-}
  saved_plan=${IDEM_ACTION_SAVED_PLAN:-}

  local name
  for name in plan mode verify diff fail_on_drift root state persist_state state_key \
    version binary working_directory upload_report cooperate plan_out saved_plan; do
    no_control "${name//_/-}" "${!name}"
  done

  case $mode in
  apply | plan | check) ;;
  *) die "input 'mode' must be 'apply', 'plan' or 'check', not '$mode'" ;;
  esac
  boolean verify verify
  boolean diff diff
  boolean fail-on-drift fail_on_drift
  boolean persist-state persist_state
  boolean upload-report upload_report
  boolean cooperate cooperate
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
  # Physical paths throughout: a workspace reached through a symbolic link would otherwise
  # give annotation paths that are not relative to it, and two names for one state.
  workspace=$(pwd -P)
  cd -- "$workspace"
  if [[ ! -d $working_directory ]]; then
    die "input 'working-directory': '$working_directory' is not a directory (relative to the workspace $workspace)"
  fi
  cd -- "$working_directory"

  if [[ -n $plan_out && $mode != plan ]]; then
    die "input 'plan-out' needs mode 'plan' (mode is '$mode'): only a dry run is saved for a later apply"
  fi
  if [[ -n $saved_plan ]]; then
    [[ $mode == apply ]] || die "input 'saved-plan' needs mode 'apply' (mode is '$mode'): a saved plan is there to be applied"
    if [[ ! -f $saved_plan ]]; then
      die "input 'saved-plan': no file '$saved_plan' in $PWD (download the artifact the plan job uploaded first)"
    fi
    if ! jq -e '.format == "idem-saved-plan"' "$saved_plan" >/dev/null 2>&1; then
      die "input 'saved-plan': '$saved_plan' is not a saved plan (write one with mode 'plan' and input 'plan-out')"
    fi
    [[ $saved_plan == -* ]] && saved_plan="./$saved_plan"
  elif [[ ! -f $plan ]]; then
    die "input 'plan': no file '$plan' in $PWD (a relative plan is taken from the working directory)"
  fi
  if [[ -n $plan_out ]]; then
    [[ $plan_out == -* ]] && plan_out="./$plan_out"
    [[ -d $(dirname -- "$plan_out") ]] || die "input 'plan-out': the directory of '$plan_out' does not exist (relative to $PWD)"
    [[ ! -d $plan_out ]] || die "input 'plan-out': '$plan_out' is a directory; give the saved plan's file name"
  fi
  # A plan named like an option would be read as one.
  [[ $plan == -* ]] && plan="./$plan"
  plan_abs="$(cd -- "$(dirname -- "$plan")" && pwd -P)/$(basename -- "$plan")"
  if [[ ! -d $root ]]; then
    die "input 'root': '$root' is not a directory (relative to $PWD)"
  fi
  root_abs=$(cd -- "$root" && pwd -P)
  state_remote=false
  if [[ $state == postgres://* || $state == postgresql://* || $state == env:* ]]; then
    # A PostgreSQL state (a URL from a secret, or env:NAME naming a variable that holds one)
    # is shared by every runner and survives them all: nothing to cache, and the URL never
    # reaches the log (masked, shown without its password, passed to idem in IDEM_STATE).
    state_remote=true
    if [[ $state != env:* ]]; then
      printf '::add-mask::%s\n' "$state"
      local userinfo=${state#*://}
      userinfo=${userinfo%%@*}
      if [[ $state == *@* && $userinfo == *:* ]]; then
        printf '::add-mask::%s\n' "${userinfo#*:}"
      fi
    fi
    if [[ $persist_state == true ]]; then
      die "input 'persist-state' is for a state file on the runner; a PostgreSQL state (input 'state') is kept by the server and needs no cache: drop persist-state"
    fi
    state_abs=$(printf '%s' "$state" | sed -E 's#^(postgres(ql)?://)([^:@/]*):[^@]*@#\1\3@#')
  elif [[ -n $state ]]; then
    state_abs=$(absolute "$state")
  else
    state_abs="$root_abs/.idem/state.db"
  fi
  if [[ $state_remote == false && -d $state_abs ]]; then
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
  linux) printf '%s-unknown-linux-musl' "$arch" ;;
  macos) printf '%s-apple-darwin' "$arch" ;;
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

# The repository that publishes idem's releases: the action's own, never the consumer's.
# GITHUB_ACTION_REPOSITORY is empty inside a composite action's `run:` steps (a runner
# limitation), so the runner's checkout of the action tells: .../_actions/OWNER/REPO/REF.
# action.yml also passes `github.action_repository` as IDEM_ACTION_REPOSITORY for runners
# that lay actions out otherwise. `uses: ./` runs the workspace's own copy, whose repository
# is then GITHUB_REPOSITORY. Sets `repo` (not printed: a `die` must reach the log).
release_repository() {
  local path=${GITHUB_ACTION_PATH:-$ACTION_ROOT}
  repo=""
  path=${path%/}
  if [[ $path =~ /_actions/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/[^/]+$ ]]; then
    repo="${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
  elif [[ -n ${IDEM_ACTION_REPOSITORY:-} ]]; then
    repo=$IDEM_ACTION_REPOSITORY
  elif [[ $ACTION_ROOT == "$workspace" || $ACTION_ROOT == "$workspace"/* ]]; then
    repo=${GITHUB_REPOSITORY:-}
  fi
  if [[ ! $repo =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]]; then
    die "cannot tell which repository publishes idem's releases: the action is at '$path', not under the runner's _actions/OWNER/REPO/REF, and github.action_repository is empty; give 'binary', or 'version: source'"
  fi
}

# How long a build from source takes, measured on a 2-core machine (docs/github-action.md).
readonly BUILD_TIME="about 16 minutes on a 2-core runner, the first time; cached after"

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
  if [[ $version != source ]]; then
    triple=$(target_triple) ||
      die "no idem release is built for this runner (${RUNNER_OS:-$(uname -s)} ${RUNNER_ARCH:-$(uname -m)}); set 'version: source' to build it ($BUILD_TIME), or give 'binary'"
    release_version=${version:-$own}
    # Releases publish .tar.gz; a .zip the table lists is taken too (unpacked with unzip).
    for ext in tar.gz zip; do
      archive="idem-v$release_version-$triple.$ext"
      archive_sha256=$(table_sha256 "$archive")
      if [[ -n $archive_sha256 ]]; then
        source=release
        return
      fi
    done
    die "idem $release_version for $triple is not in this action's SHA-256 table (action/idem-sha256.txt), so no download can be verified: pin the action to a release tag (OWNER/idem@<sha> # vX.Y.Z, see docs/github-action.md), set 'version' to a version the table lists, set 'version: source' to build idem $own from the action's source ($BUILD_TIME), or give 'binary'"
  fi
  source=build
  build_hash=$(source_hash)
  build_dir="${RUNNER_TOOL_CACHE:-$temp_dir}/idem/build-${build_hash:0:16}"
  build_key="idem-bin-${RUNNER_OS:-$(uname -s)}-${RUNNER_ARCH:-$(uname -m)}-$build_hash"
}

# What tells this job's state apart from every other job's: the job, the matrix leg, and
# the root, state and plan (relative to the workspace). Jobs of one run that share a
# run id would otherwise restore each other's checkpoints and skip records they never did.
state_identity() {
  local matrix=${IDEM_ACTION_MATRIX:-null}
  # toJSON(matrix) is pretty-printed; keep the key independent of its layout.
  matrix=$(jq -cS . <<<"$matrix" 2>/dev/null || printf '%s' "$matrix")
  printf 'job %s\nmatrix %s\nroot %s\nstate %s\nplan %s\n' "${GITHUB_JOB:-}" "$matrix" \
    "$(relative "$root_abs")" "$(relative "$state_abs")" "$(relative "$plan_abs")" |
    sha256 | cut -c1-16
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
  set_output persist-state "$persist_state"
  set_output upload-report "$upload_report"
  local identity job
  identity=$(state_identity)
  job=$(printf '%s' "${GITHUB_JOB:-job}" | tr -c 'A-Za-z0-9_.-' '_' | cut -c1-40)
  if [[ $upload_report == true ]]; then
    set_output report-artifact "idem-report-$job-$identity-${GITHUB_RUN_ATTEMPT:-1}"
  fi
  if [[ $persist_state == true ]]; then
    local prefix="idem-state-${state_key:+$state_key-}$GITHUB_RUN_ID-$job-$identity-"
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
  cache_hit=false
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
  local said
  said=$("$path" --version) || die "$path does not run (is it built for this runner's platform?)"
  printf '%s\n' "$said"
  set_output path "$path"
  set_output version "${said#idem }"
  set_output cache-hit "$cache_hit"
}

install_release() {
  local dir tmp got bin exe
  release_repository
  exe="idem$(exe_suffix)"
  dir="${RUNNER_TOOL_CACHE:-$temp_dir}/idem/$release_version/$(target_triple)"
  # A tool cache that outlives the job (self-hosted runners) already holds this archive's
  # binary: the checksum file beside it says which archive it came from.
  if [[ -x $dir/$exe && $(cat "$dir/archive.sha256" 2>/dev/null) == "$archive_sha256" ]]; then
    printf 'using %s from the tool cache (archive SHA-256 %s)\n' "$dir/$exe" "$archive_sha256"
    cache_hit=true
    printf '%s\n' "$dir" >>"${GITHUB_PATH:-/dev/null}"
    installed="$dir/$exe"
    return
  fi
  local url="${GITHUB_SERVER_URL:-https://github.com}/$repo/releases/download/v$release_version/$archive"
  tmp=$(mktemp -d "$temp_dir/idem-download.XXXXXX")
  printf 'downloading %s\n' "$url"
  curl --proto '=https' --tlsv1.2 -fsSL --retry 3 -o "$tmp/$archive" "$url" ||
    die "downloading $url failed (curl exit code $?): is release v$release_version published in $repo with $archive?"
  got=$(sha256 "$tmp/$archive" | cut -c1-64)
  if [[ $got != "$archive_sha256" ]]; then
    rm -rf "$tmp"
    die "$archive from $url has SHA-256 $got, but action/idem-sha256.txt says $archive_sha256: refusing to run it (a tampered or replaced archive; report it to $repo)"
  fi
  printf 'SHA-256 verified: %s\n' "$got"
  mkdir -p "$tmp/x"
  case $archive in
  *.zip)
    command -v unzip >/dev/null || die "unzip is needed to unpack $archive; install it first"
    unzip -q "$tmp/$archive" -d "$tmp/x" || die "cannot unpack $archive with unzip"
    ;;
  *) tar -xzf "$tmp/$archive" -C "$tmp/x" || die "cannot unpack $archive with tar" ;;
  esac
  bin=$(find "$tmp/x" -type f -name "$exe" | head -n 1)
  [[ -n $bin ]] || die "$archive holds no $exe"
  # Into place whole or not at all: a half-copied binary must never look installed.
  mkdir -p "$dir"
  cp "$bin" "$dir/$exe.tmp"
  chmod +x "$dir/$exe.tmp"
  mv -f "$dir/$exe.tmp" "$dir/$exe"
  printf '%s\n' "$archive_sha256" >"$dir/archive.sha256"
  rm -rf "$tmp"
  printf '%s\n' "$dir" >>"${GITHUB_PATH:-/dev/null}"
  installed="$dir/$exe"
}

install_build() {
  local bin
  bin="$build_dir/idem$(exe_suffix)"
  if [[ -x $bin ]]; then
    printf 'using the cached build of source %s\n' "$build_hash"
    cache_hit=true
  else
    command -v cargo >/dev/null ||
      die "'version: source' builds idem with cargo, which is not installed: install Rust first (rustup), or give 'binary'"
    printf "building idem from the action's source %s (version: source): %s\n" "$build_hash" "$BUILD_TIME"
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
  args+=(--root "$root_abs")
  if [[ $state_remote == true ]]; then
    export IDEM_STATE="$state"
    [[ -n $state_key ]] && args+=(--state-key "$state_key")
  else
    args+=(--state "$state_abs")
  fi
  [[ $cooperate == true ]] && args+=(--cooperate)
  args+=(--format json)
  [[ ${RUNNER_DEBUG:-} == 1 ]] && args+=(--verbose)
  [[ -n $plan_out ]] && args+=(--out "$plan_out")
  if [[ -n $saved_plan ]]; then
    args+=("$saved_plan")
  else
    args+=("$plan")
  fi

  report_dir=$(mktemp -d "$temp_dir/idem-report.XXXXXX")
  report="$report_dir/report.json"
  local code=0 token
  group "idem $mode ${saved_plan:-$plan}"
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
  # idem always prints its report; without one it died first (killed, out of memory), and
  # no exit code it left can be taken as a pass.
  local no_report=false
  if ! have_report; then
    no_report=true
    result=error
  fi

  report_outputs "$code"
  if [[ -n $plan_out && $code == 0 && -f $plan_out ]]; then
    set_output saved-plan "$(absolute "$plan_out")"
  else
    set_output saved-plan ""
  fi
  # Step names and diffs are the plan's and the files' text: inert here too.
  token=$(random_token)
  printf '::stop-commands::%s\n' "$token"
  render_log
  printf '::%s::\n' "$token"

  # The closing line tells the user what to do; it counts in the budget of its type.
  local closing=none
  if [[ $no_report == false && $code == 2 && $mode == check && $fail_on_drift == false ]]; then
    closing=notice
  elif [[ $result != success ]]; then
    closing=error
  fi
  annotate "$closing"
  render_summary "$code" >>"${GITHUB_STEP_SUMMARY:-/dev/null}"

  if [[ $no_report == true ]]; then
    error "idem exited with code $code and printed no JSON report (it died before it could: see the log of this step); the run's outcome is unknown, so the step fails"
    ((code == 0 || code == 2 || code == 3)) && code=1
    exit "$code"
  fi
  if [[ $closing == notice ]]; then
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

# True when the report is one of idem's JSON reports: exactly one JSON object with a schema.
# Slurped, so that an empty file is an empty list and fails the test; `jq -e` on an empty
# file exits 0 with jq 1.6 (Ubuntu 22.04's), which took a dead idem for a valid report.
have_report() {
  [[ -s $report ]] &&
    jq -es 'length == 1 and (.[0] | type == "object" and has("schema"))' "$report" >/dev/null 2>&1
}

report_outputs() {
  local code=$1 key value
  if have_report; then
    while IFS='=' read -r key value; do
      set_output "$key" "$value"
    done < <(jq -r '
      "changed=\(.changed == true)",
      (.summary // {} | "created=\(.created // 0)", "updated=\(.updated // 0)",
        "removed=\(.removed // 0)", "unchanged=\(.unchanged // 0)", "failed=\(.failed // 0)",
        "not-run=\(.not_run // 0)", "changes=\(.changes // 0)")' "$report")
  else
    for key in created updated removed unchanged failed not-run changes; do set_output "$key" 0; done
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
  def ms: if . == null then "" elif . >= 1000 then "\(. / 10 | floor / 100) s"
    else "\(. * 100 | floor / 100) ms" end;
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

# Annotations point at the plan's lines. GitHub keeps ten errors and ten warnings per step
# and drops the rest: the budget of each type holds everything this step writes of it, the
# closing line (CLOSING: error, notice or none) included, since that is the line that says
# what to do. When findings overflow, the last slot counts the rest. Failures come first,
# then verify findings, then drift under check.
annotate() {
  local closing=$1
  have_report || return 0
  local plan_file drift_level=warning
  plan_file=$(relative "$plan_abs")
  [[ $fail_on_drift == true ]] && drift_level=error
  jq -r --arg file "$plan_file" --arg drift "$drift_level" --arg mode "$mode" \
    --arg closing "$closing" --argjson limit "$ANNOTATION_LIMIT" "$JQ_DEFS"'
    def data: gsub("%"; "%25") | gsub("\r"; "%0D") | gsub("\n"; "%0A");
    def prop: data | gsub(":"; "%3A") | gsub(","; "%2C");
    def finding($level; $line; $title; $text): {$level, $line, $title, $text};
    def line: "::\(.level) file=\($file | prop)"
      + (if (.line | type) == "number" and .line > 0 then ",line=\(.line)" else "" end)
      + ",title=\("idem: \(.title)" | prop)::\(.text | data)";
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
    | ("error", "warning") as $level
    | [$all[] | select(.level == $level)] as $mine
    | ($limit - (if $closing == $level then 1 else 0 end)) as $room
    | if ($mine | length) <= $room then $mine[] | line
      else ($mine[:$room - 1][] | line),
        "::\($level) title=idem action::\(($mine | length) - $room + 1) more findings are not annotated (GitHub keeps \($limit) of each type per step); see the job summary and the report"
      end' "$report"
}

# The job summary: a headline, the counts, a timeline of the steps, one table row per step,
# the errors, and the first lines of each diff. Rows, then diffs, are dropped from the end
# when the whole would pass GitHub's 1 MiB per step, with a note.
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
        + (if .dry_run then " · dry run" else "" end) + (if .idem then " · idem \(.idem)" else "" end)
        + (if .duration_ms then " · \(.duration_ms | ms)" else "" end),
      "",
      "| steps | created | updated | removed | unchanged | failed | not run | changes |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|",
      "| \($s.steps // 0) | \($s.created // 0) | \($s.updated // 0) | \($s.removed // 0) | \($s.unchanged // 0) | \($s.failed // 0) | \($s.not_run // 0) | \($s.changes // 0) |",
      ""' "$report" >"$tmp/head"
  # The timeline: Mermaid draws it in the summary. Steps run one after another, so each
  # starts where the last ended; times are milliseconds from the start (dateFormat x).
  jq -r --argjson max 40 '
    def task_name: tostring | gsub("[^A-Za-z0-9 ._/()+=-]"; "_") | .[0:60];
    def tag: {"failed": "crit, ", "created": "active, ", "updated": "active, ",
      "removed": "active, ", "unchanged": "done, "}[.] // "";
    (.steps // []) as $steps
    | if ($steps | length) == 0 then empty else
      ([$steps[] | (.duration_ms // 0)] | reduce .[] as $d ([0]; . + [.[-1] + $d])) as $at
      | "```mermaid",
        "gantt",
        "    title Steps over time (ms from the start of the run)",
        "    dateFormat x",
        "    axisFormat %S.%L",
        "    section steps",
        ($steps | to_entries[] | select(.key < $max - 1 or ($steps | length) <= $max)
          | .key as $i | .value
          | "    \(.index) \(.name | task_name) (\(.outcome)) :\(.outcome | tag)s\(.index), \($at[$i] | floor), \([($at[$i + 1] | ceil), ($at[$i] | floor) + 1] | max)"),
        (if ($steps | length) > $max then
          "    \(($steps | length) - $max + 1) more steps :m, \($at[$max - 1] | floor), \([($at[-1] | ceil), ($at[$max - 1] | floor) + 1] | max)"
         else empty end),
        "```",
        ""
      end' "$report" >"$tmp/timeline"
  jq -r 'if (.steps // [] | length) > 0 then
      "| # | step | \(if .dry_run then "would be" else "outcome" end) | changes | records | time | line |",
      "|---:|---|---|---|---|---:|---:|"
    else empty end' "$report" >>"$tmp/head"
  jq -r "$JQ_DEFS"'
    (.steps // [])[]
    | "| \(.index) | \(.name | cell | clip(300)) | \(.outcome) | "
      + ([(.changes // [])[:5][] | change | cell] + (if (.changes // [] | length) > 5 then ["+\((.changes | length) - 5) more"] else [] end) | join("<br>") | clip(1000))
      + " | \(.counters // {} | to_entries | map("\(.key) \(.value)") | join(", ") | cell)"
      + " | \(.duration_ms | ms) | \(.line // "") |"' "$report" >"$tmp/rows"
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

  used=0
  for part in head foot; do used=$((used + $(wc -c <"$tmp/$part"))); done
  [[ -f ${GITHUB_STEP_SUMMARY:-} ]] && used=$((used + $(wc -c <"$GITHUB_STEP_SUMMARY")))
  budget=$((SUMMARY_LIMIT - used - 512))
  # The timeline (a few KiB at most) only when it leaves at least half the room to the rows.
  if (($(wc -c <"$tmp/timeline") * 2 > budget)); then
    : >"$tmp/timeline"
  fi
  budget=$((budget - $(wc -c <"$tmp/timeline")))
  LC_ALL=C awk -v budget="$budget" '
    !cut && used + length($0) + 1 <= budget { used += length($0) + 1; print; next }
    { cut++ }
    END {
      if (cut) printf "\n> **Note:** %d more steps are not shown: GitHub keeps at most 1 MiB of summary per step. The full report is the file in the `report` output.\n", cut
    }' "$tmp/rows" >"$tmp/rows.shown"
  budget=$((budget - $(wc -c <"$tmp/rows.shown")))
  # Each diff's first lines, in a fence longer than any run of backticks in it, so that no
  # file's content can close the fence. Whole blocks only: the budget drops the rest.
  jq -r --argjson budget "$budget" --argjson lines 20 "$JQ_DEFS"'
    [(.steps // [])[] | .index as $step | (.changes // [])[] | select(.diff != null)
      | (.diff | rtrimstr("\n") | split("\n")) as $l
      | ([.diff | match("`+"; "g") | .length] | max // 0) as $ticks
      | ("`" * ([$ticks + 1, 3] | max)) as $fence
      | "<details><summary>step \($step): \(change | cell) (\($l | length) lines"
        + (if ($l | length) > $lines then ", first \($lines) shown" else "" end) + ")</summary>\n\n"
        + $fence + "diff\n" + ($l[:$lines] | join("\n")) + "\n" + $fence + "\n\n</details>\n"
    ] as $blocks
    | if ($blocks | length) == 0 then empty else
      (reduce $blocks[] as $b ({used: 0, shown: [], cut: 0};
        ($b | utf8bytelength) as $n
        | if .cut == 0 and .used + $n + 1 <= $budget - 200 then .used += $n + 1 | .shown += [$b]
          else .cut += 1 end)) as $r
      | "**Diffs** (the first \($lines) lines of each)", "",
        $r.shown[],
        (if $r.cut > 0 then "> **Note:** \($r.cut) more diffs are not shown (GitHub keeps at most 1 MiB of summary per step); they are in the log and the report." else empty end)
      end' "$report" >"$tmp/diffs"
  # The timeline goes above the table: the head ends with the table's header, so split it.
  sed '/^| # | step |/,$d' "$tmp/head"
  cat "$tmp/timeline"
  sed -n '/^| # | step |/,$p' "$tmp/head"
  cat "$tmp/rows.shown" "$tmp/foot" "$tmp/diffs"
  rm -rf "$tmp"
}

# Appends the link to the uploaded JSON report to the job summary (the `link` phase, after
# actions/upload-artifact).
phase_link() {
  local url=${IDEM_ACTION_ARTIFACT_URL:-} name=${IDEM_ACTION_ARTIFACT_NAME:-report}
  no_control artifact-url "$url"
  no_control artifact-name "$name"
  if [[ ! $url =~ ^https://[^[:space:]\)\(]+$ ]]; then
    error "upload-report: actions/upload-artifact gave no artifact URL ('$url'); the report was not uploaded, see that step's log"
    exit 1
  fi
  printf '\n📎 The full JSON report: [%s](%s) (a zip artifact of this run)\n' "$name" "$url" \
    >>"${GITHUB_STEP_SUMMARY:-/dev/null}"
  printf 'report uploaded: %s\n' "$url"
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
  link) phase_link ;;
  *) die "usage: idem-action.sh prepare|install|run|link" ;;
  esac
}

main "$@"
