#!/usr/bin/env bash
# Cross-builds the aarch64 Linux release archive on an x86_64 machine and runs it under
# qemu-user: the same commands as the release workflow's aarch64 job (.github/workflows/
# release.yml). Installs Debian's gcc-aarch64-linux-gnu and qemu-user, and zig's C compiler
# (PyPI's ziglang, for musl's headers: action/release/zig-cc.sh), when missing.
#
#   tests/release-cross.sh [OUTDIR]     default: target/cross/dist
#
# Takes long (a release build of wasmtime: ~25 min on 2 shared cores): not part of
# tests/run.sh; run it before a release, under `nice`.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
target=aarch64-unknown-linux-musl
outdir=${1:-target/cross/dist}
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi
python3 -m ziglang version >/dev/null 2>&1 || pip install --quiet "ziglang==0.13.0.post1"
version=$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
start=$SECONDS
binary=$(bash action/release/build.sh "$target" target/cross)
echo "built $binary in $((SECONDS - start)) s"
file "$binary" | grep -q 'ARM aarch64.*statically linked' || { file "$binary"; echo "release-cross.sh: $binary is not a static aarch64 binary" >&2; exit 1; }
archive=$(bash action/release/package.sh "$binary" "$target" "$version" "$outdir")
echo "packed $archive"

# Unpack the archive as the action does and run what it holds: --version, the demo plan applied
# with --verify (a second apply changes nothing), then its dry run.
work=$(mktemp -d "${TMPDIR:-/tmp}/idem-cross.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xzf "$archive" -C "$work"
idem=$work/idem-v$version-$target/idem
qemu-aarch64 "$idem" --version
cp -R examples/demo "$work/demo"
cd "$work/demo"
# --verify applies a second time and fails unless that second run changes nothing.
qemu-aarch64 "$idem" apply --verify
# check exits 2 on drift: after apply there is none.
qemu-aarch64 "$idem" check
echo "release-cross.sh: $target runs under qemu: --version, apply --verify, check"
