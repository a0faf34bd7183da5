#!/usr/bin/env bash
# Install or build what the benchmarks compare idem with. Every step is skipped when its tool
# is already there, and a reference that cannot be had is reported, never fatal: the harness
# then prints a "skipped" line for it.
#
#   bench/setup.sh            the sqlite3 shell (apt), sqlite-utils (PyPI, in a venv under
#                             target/bench), the native rusqlite program (bench/native)
set -uo pipefail
cd "$(dirname "$0")/.."

note() { printf 'bench/setup: %s\n' "$*" >&2; }

if ! command -v sqlite3 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        note "installing the sqlite3 shell with apt-get"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3; } >/dev/null \
            || note "apt-get could not install sqlite3: the sqlite3 shell reference will be skipped"
    else
        note "no sqlite3 and no apt-get as root: the sqlite3 shell reference will be skipped"
    fi
fi

# sqlite-utils in a private venv: nothing installed into the user's Python.
venv=target/bench/venv
if [ ! -x "$venv/bin/sqlite-utils" ]; then
    note "installing sqlite-utils into $venv"
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q sqlite-utils; } >/dev/null \
        || note "could not install sqlite-utils: its reference will be skipped"
fi

note "building the native reference (bench/native)"
cargo build -q --release --locked --manifest-path bench/native/Cargo.toml --target-dir target/bench \
    || note "the native reference did not build: it will be skipped"
