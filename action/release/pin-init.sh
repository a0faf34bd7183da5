#!/usr/bin/env bash
# Points the workflow that `idem init` writes at a published release of the action: the
# `uses: OWNER/idem@...` line of host/src/init.rs becomes `uses: REPO@SHA # TAG`, where SHA
# is the commit the tag names (after the release workflow moved it onto the table commit).
#
#   action/release/pin-init.sh REPO TAG SHA [INIT_RS]
#
# The next idem built then writes a workflow pinned to that release. Running it twice with
# the same arguments changes nothing.
set -euo pipefail

die() {
  printf 'pin-init.sh: %s\n' "$*" >&2
  exit 1
}
(($# == 3 || $# == 4)) || die "usage: pin-init.sh OWNER/REPO vX.Y.Z COMMIT_SHA [host/src/init.rs]"
repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
repo=$1 tag=$2 sha=$3 file=${4:-$repo_root/host/src/init.rs}
[[ $repo =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] || die "REPO '$repo' is not OWNER/REPO"
[[ $tag =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] || die "TAG '$tag' is not a tag like v1.2.3"
[[ $sha =~ ^[0-9a-f]{40}$ ]] || die "SHA '$sha' is not a full commit SHA (40 hex digits; git rev-parse $tag^{commit})"
[[ -f $file ]] || die "'$file' is not a file"
# The one step that is not actions/*: idem's own.
line_re='^      - uses: [A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+@[0-9a-f]{40} # '
n=$(grep -E "$line_re" "$file" | grep -cv 'uses: actions/' || true)
[[ $n == 1 ]] || die "$file has $n lines '      - uses: OWNER/idem@<sha> # ...' (actions/* aside), expected 1"

tmp=$(mktemp "$file.XXXXXX")
trap 'rm -f "$tmp"' EXIT
sed -E "/uses: actions\//!s|^      - uses: [A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+@[0-9a-f]{40} # .*$|      - uses: $repo@$sha # $tag|" "$file" >"$tmp"
chmod --reference="$file" "$tmp" 2>/dev/null || chmod 0644 "$tmp"
mv -f "$tmp" "$file"
trap - EXIT
grep -E "$line_re" "$file" | grep -v 'uses: actions/'
