#!/usr/bin/env bash
# Installs what the tests need that is not a Rust crate, from PyPI and Debian's packages, only
# when missing. Each part appends its own lines; keep them idempotent.
set -euo pipefail

# The plan schema's tests validate plans with check-jsonschema.
command -v check-jsonschema >/dev/null || pip install --quiet "check-jsonschema==0.39.0"
