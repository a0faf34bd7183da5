#!/usr/bin/env bash
# Build the Python example plugin into a WebAssembly component.
#
#   examples/plugins/python/build.sh [OUT.wasm]     (default: plugin.wasm beside this script)
#
# Needs componentize-py (tests/setup.sh installs the pinned version). The bindings are
# generated from idem's WIT at build time, so nothing generated is kept in the repository.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/plugin.wasm}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
if ! command -v componentize-py >/dev/null 2>&1; then
  echo "componentize-py is not installed; run tests/setup.sh (or: pip install componentize-py)" >&2
  exit 1
fi
cd "$here"
componentize-py -d ../../../wit -w plugin componentize app -o "$out"
