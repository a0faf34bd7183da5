#!/usr/bin/env bash
# Puts the lines of a SHA256SUMS file into the action's table of trusted archives,
# action/idem-sha256.txt (or TABLE): a line for an archive already listed is replaced, the
# others are added, the comments stay on top and the entries are sorted by name. Running it
# twice with the same sums changes nothing. Every line is checked first: a malformed one
# stops it with the table untouched.
#
#   action/release/update-table.sh SHA256SUMS [TABLE]
set -euo pipefail

die() {
  printf 'update-table.sh: %s\n' "$*" >&2
  exit 1
}
(($# == 1 || $# == 2)) || die "usage: update-table.sh SHA256SUMS [TABLE]"
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
sums=$1 table=${2:-$repo/action/idem-sha256.txt}
[[ -f $sums ]] || die "SHA256SUMS '$sums' is not a file: run checksums.sh first"
[[ -f $table ]] || die "TABLE '$table' is not a file"

line_re='^[0-9a-f]{64}  idem-v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?-(x86_64|aarch64)-(unknown-linux-(gnu|musl)|apple-darwin|pc-windows-msvc)\.(tar\.gz|zip)$'
n=0 new_names=()
while IFS= read -r line || [[ -n $line ]]; do
  n=$((n + 1))
  [[ -z $line ]] && continue
  [[ $line =~ $line_re ]] ||
    die "$sums line $n is not '<64 hex digits>  idem-vVERSION-TARGET.tar.gz': '$line'"
  new_names+=("${line#*  }")
done <"$sums"
((${#new_names[@]})) || die "$sums lists no archive"

tmp=$(mktemp "$table.XXXXXX")
trap 'rm -f "$tmp"' EXIT
{
  grep '^#' "$table" || true
  {
    # Kept: entries of other archives. Replaced: those the sums list again.
    grep -v '^#' "$table" | grep -v '^$' |
      awk 'NR == FNR { drop[$0] = 1; next } !($2 in drop)' <(printf '%s\n' "${new_names[@]}") - || true
    grep -v '^$' "$sums"
  } | LC_ALL=C sort -k2,2
} >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$table"
trap - EXIT
printf 'update-table.sh: %s now lists %s archives\n' "$table" "$(grep -vc '^#' "$table")"
