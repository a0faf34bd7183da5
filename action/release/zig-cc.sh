#!/usr/bin/env bash
# The C compiler for aarch64 musl on an x86_64 machine: zig's clang with musl's own headers,
# called by the `cc` crate for SQLite's and ring's C code (action/release/build.sh sets
# CC_aarch64_unknown_linux_musl to this script).
#
# Why not Debian's gcc-aarch64-linux-gnu alone: it compiles against glibc's headers, which
# turn open/stat/pread into open64/stat64/pread64; musl (1.2.4 and later, as Rust's
# self-contained musl is) has no such symbols, so the link fails. zig ships musl's headers for
# every target and comes from PyPI (`pip install ziglang`), which these machines and GitHub's
# runners reach.
#
# `cc` passes clang-style `--target=aarch64-unknown-linux-musl`, which zig spells
# `aarch64-linux-musl`: this script drops the caller's target and gives zig its own.
set -euo pipefail
args=()
skip=0
for a in "$@"; do
  if ((skip)); then skip=0; continue; fi
  case $a in
    --target=* | -target=*) ;;
    -target | --target) skip=1 ;;
    *) args+=("$a") ;;
  esac
done
exec python3 -m ziglang cc -target aarch64-linux-musl "${args[@]}"
