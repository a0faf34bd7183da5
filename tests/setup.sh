#!/usr/bin/env bash
# Installs what the tests need that is not a Rust crate, from PyPI and Debian's packages, only
# when missing. Each part appends its own lines; keep them idempotent.
set -euo pipefail
