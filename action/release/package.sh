#!/usr/bin/env bash
# Packs one built idem binary as the release archive the action downloads:
#   OUTDIR/idem-vVERSION-TARGET.tar.gz holding idem-vVERSION-TARGET/{idem,README.md}
#
#   action/release/package.sh BINARY TARGET VERSION OUTDIR
#
# The release workflow calls it on each native runner after `cargo build --release`; it
# runs the same way here on a local build. The binary must run and say `idem VERSION`, so an
# archive can never carry another version than its name. The archive is written beside its
# final name and renamed, so a failed run leaves no half-written archive.
set -euo pipefail

die() {
  printf 'package.sh: %s\n' "$*" >&2
  exit 1
}
(($# == 4)) || die "usage: package.sh BINARY TARGET VERSION OUTDIR (for example target/release/idem x86_64-unknown-linux-musl 0.1.0 dist)"
binary=$1 target=$2 version=${3#v} outdir=$4
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)

[[ -f $binary && -x $binary ]] || die "BINARY '$binary' is not an executable file: build it first (cargo build --release --locked --target $target)"
[[ $target =~ ^(x86_64|aarch64)-(unknown-linux-(gnu|musl)|apple-darwin)$ ]] ||
  die "TARGET '$target' is not one the action installs: x86_64 or aarch64, unknown-linux-musl, unknown-linux-gnu or apple-darwin"
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] || die "VERSION '$3' is not a version like 1.2.3"
# A cross-built aarch64 Linux binary runs here under qemu-user (Debian's qemu-user).
run=()
machine=$(uname -m)
if [[ $target == aarch64-unknown-linux-* && $machine != aarch64 && $machine != arm64 ]]; then
  command -v qemu-aarch64 >/dev/null ||
    die "BINARY '$binary' is for $target: install qemu-user (apt-get install qemu-user) to check it runs here"
  run=(qemu-aarch64)
fi
said=$(${run[@]+"${run[@]}"} "$binary" --version 2>&1) || die "BINARY '$binary' does not run here ($said): package it on a machine of its own platform"
[[ $said == "idem $version" ]] || die "BINARY '$binary' says '$said', not 'idem $version': build the version being released"

name="idem-v$version-$target"
mkdir -p "$outdir"
work=$(mktemp -d "${TMPDIR:-/tmp}/idem-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/$name"
cp "$binary" "$work/$name/idem"
chmod 0755 "$work/$name/idem"
cp "$repo/README.md" "$work/$name/README.md"
chmod 0644 "$work/$name/README.md"

# Reproducible with GNU tar (Linux runners and here): sorted, no owner, one fixed time.
# macOS's bsdtar takes none of those flags; its archives are not byte-reproducible.
tar_flags=()
if tar --version 2>/dev/null | grep -q 'GNU tar'; then
  epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
  tar_flags=(--sort=name --owner=0 --group=0 --numeric-owner "--mtime=@$epoch")
fi
# (An empty array is "unbound" to bash 3.2 under set -u: macOS runners run this too.)
tar ${tar_flags[@]+"${tar_flags[@]}"} -cf - -C "$work" "$name" | gzip -n -9 >"$work/$name.tar.gz"
mv -f "$work/$name.tar.gz" "$outdir/$name.tar.gz"
printf '%s\n' "$outdir/$name.tar.gz"
