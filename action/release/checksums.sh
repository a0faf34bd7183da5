#!/usr/bin/env bash
# Writes DIR/SHA256SUMS for the release archives in DIR, in `sha256sum` form and in name
# order: the file published with the release and the input of update-table.sh.
#
#   action/release/checksums.sh DIR
set -euo pipefail

die() {
  printf 'checksums.sh: %s\n' "$*" >&2
  exit 1
}
(($# == 1)) || die "usage: checksums.sh DIR (the directory holding idem-v*.tar.gz)"
dir=$1
[[ -d $dir ]] || die "DIR '$dir' is not a directory"
cd -- "$dir"
shopt -s nullglob
archives=(idem-v*.tar.gz idem-v*.zip)
((${#archives[@]})) || die "no idem-v*.tar.gz or idem-v*.zip in $dir: run package.sh first"
sum() { if command -v sha256sum >/dev/null; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }
printf '%s\n' "${archives[@]}" | LC_ALL=C sort | while IFS= read -r a; do sum "$a"; done >SHA256SUMS.tmp
mv -f SHA256SUMS.tmp SHA256SUMS
cat SHA256SUMS
