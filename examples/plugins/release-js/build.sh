#!/usr/bin/env bash
# Build the JavaScript release plugin into a component with componentize-js's default flags
# (no --disable: the component imports wasi:http, which `fetch` runs on, and idem provides).
#   bash build.sh [OUT]     # default: release.wasm beside this script
# Needs the pinned componentize-js in node_modules: `npm ci` here (tests/setup.sh runs it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/release.wasm}")
bin="$here/node_modules/.bin/componentize-js"
if [[ ! -x $bin ]]; then
  echo "componentize-js is not installed in $here/node_modules; run \`npm ci\` there (or tests/setup.sh)" >&2
  exit 1
fi
cd "$here"
"$bin" --wit ../../../wit --world-name plugin --out "$out" app.js
