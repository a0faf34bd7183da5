#!/usr/bin/env bash
# Installs what the tests need that is not a Rust crate, from PyPI and Debian's packages, only
# when missing. Each part appends its own lines; keep them idempotent.
set -euo pipefail

# The plan schema's tests validate plans with check-jsonschema.
command -v check-jsonschema >/dev/null || pip install --quiet "check-jsonschema==0.39.0"

# The live-output tests (host/tests/it/live.rs) run idem on a pseudo-terminal with script(1),
# from util-linux's bsdutils.
command -v script >/dev/null || { apt-get update -qq && apt-get install -y -qq bsdutils; }
# The memory tests read a run's peak RSS with GNU time(1) (host/tests/it/plugins.rs says why).
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }

# The Python example plugin (examples/plugins/python) is built into a component by
# componentize-py; host/tests/it/plugins.rs fails, naming this script, when it is missing.
command -v componentize-py >/dev/null || pip install --quiet "componentize-py==0.25.1"

# The JavaScript example plugin (examples/plugins/release-js) is built by componentize-js,
# pinned with jco in its package.json and package-lock.json and installed there by `npm ci`;
# host/tests/it/plugins.rs fails, naming this script, when it is missing.
if [[ ! -x examples/plugins/release-js/node_modules/.bin/componentize-js ]]; then
  if ! command -v npm >/dev/null; then
    sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq nodejs npm >/dev/null
  fi
  (cd examples/plugins/release-js && npm ci --no-audit --no-fund --loglevel=error)
fi

# The kill-point explorer (host/tests/it/generated.rs) kills apply at chosen system calls with
# strace's fault injection.
if ! command -v strace >/dev/null; then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq strace >/dev/null
fi

# The GitHub Action's tests and lints: act, zizmor, actionlint, check-jsonschema, jq, shellcheck.
bash tests/action/setup.sh

# PostgreSQL 15's server, for the tests and benchmarks of PostgreSQL targets and state
# (tests/pg.sh starts a throwaway cluster; host/tests/it/pg.rs uses it). Running as root, the
# server runs as the package's `postgres` user.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null; then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
fi
# tests/pg.sh makes the test cluster's TLS CA and certificate with openssl.
if ! command -v openssl >/dev/null; then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq openssl >/dev/null
fi
