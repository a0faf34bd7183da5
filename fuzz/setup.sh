#!/usr/bin/env bash
# Installs cargo-fuzz from crates.io when missing (for fuzz/run.sh). Idempotent.
set -euo pipefail
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
