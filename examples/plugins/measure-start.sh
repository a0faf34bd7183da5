#!/usr/bin/env bash
# Cold and warm start of a plugin: the wall time of `idem run` on a small directory, with
# the plugin's compiled code absent from the cache (cold: Cranelift compiles it) and present
# (warm: loaded from the cache). The standard guest is cached in both cases, as it is after
# a user's first run. Prints the median of RUNS runs of each, in milliseconds.
#
#   examples/plugins/measure-start.sh          (IDEM_BIN=path/to/idem, RUNS=5 to change)
#
# Needs componentize-py for the Python example (tests/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${RUNS:-5}"
idem="${IDEM_BIN:-$PWD/target/release/idem}"
[ -x "$idem" ] || cargo build --release -p idem
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo build --quiet --release --target wasm32-wasip2 -p idem-plugin-manifest --target-dir target/guest
cp target/guest/wasm32-wasip2/release/idem_plugin_manifest.wasm "$work/rust.wasm"
examples/plugins/python/build.sh "$work/python.wasm" >/dev/null

mkdir -p "$work/root/dist/sub"
for i in 1 2 3 4 5 6 7 8; do printf 'file %s\n' "$i" >"$work/root/dist/sub/f$i.txt"; done
export IDEM_CACHE_DIR="$work/cache"
"$idem" -C "$work/root" schema >/dev/null   # the standard guest, compiled once

ms() { # run idem once, print its wall time in ms
  local start end
  start=$(date +%s%N)
  "$idem" -C "$work/root" -q run "$1" --path dist --config-json '{"dir": "dist"}' >/dev/null
  end=$(date +%s%N)
  echo $(((end - start) / 1000000))
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for plugin in rust python; do
  cp "$work/$plugin.wasm" "$work/root/$plugin.wasm"
  hash=$(sha256sum "$work/$plugin.wasm" | cut -c1-32)
  cold=$(for _ in $(seq "$runs"); do rm -f "$IDEM_CACHE_DIR/$hash"-*.cwasm; ms "$plugin.wasm"; done | median)
  warm=$(for _ in $(seq "$runs"); do ms "$plugin.wasm"; done | median)
  size=$(du -k "$work/$plugin.wasm" | cut -f1)
  echo "$plugin: ${size} KiB component, cold ${cold} ms, warm ${warm} ms (median of $runs)"
done
