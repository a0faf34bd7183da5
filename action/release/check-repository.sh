#!/usr/bin/env bash
# Refuses a release whose host/Cargo.toml `repository` is not the repository it is built in:
# `cargo binstall idem` downloads from `{ repo }/releases/...`, so a wrong or placeholder URL
# sends every user to a 404 (or to someone else's archives).
#
#   action/release/check-repository.sh OWNER/NAME      (the release workflow: $GITHUB_REPOSITORY)
set -euo pipefail

die() {
  printf 'check-repository.sh: %s\n' "$*" >&2
  exit 1
}
(($# == 1)) || die "usage: check-repository.sh OWNER/NAME (the repository being released, e.g. \$GITHUB_REPOSITORY)"
want=$1
[[ $want =~ ^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$ ]] || die "OWNER/NAME '$want' is not a GitHub repository name"
manifest=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)/host/Cargo.toml
url=$(sed -n 's/^repository[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$manifest" | head -n 1)
[[ -n $url ]] || die "$manifest has no repository = \"https://github.com/$want\": add it"
[[ $url != *OWNER* ]] ||
  die "$manifest: repository = \"$url\" is still the placeholder: set it to https://github.com/$want and commit before tagging"
[[ $url == "https://github.com/$want" ]] ||
  die "$manifest: repository = \"$url\" is not https://github.com/$want, where this release is published: fix it before tagging"
printf 'repository %s\n' "$url"
