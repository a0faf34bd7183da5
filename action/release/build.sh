#!/usr/bin/env bash
# Builds the release binary of idem for TARGET, the same way here and in the release workflow:
#
#   action/release/build.sh TARGET [TARGET_DIR]
#
# prints the binary's path. Native targets build with `cargo build --release --locked`. An
# aarch64 Linux target on an x86_64 machine is cross-compiled: Rust's musl target brings its own
# libc and start files, Debian's gcc-aarch64-linux-gnu compiles SQLite's C code and links, and
# the binary is static, so qemu-user runs it without an aarch64 sysroot. (tests/release-cross.sh
# installs those packages and runs the binary under qemu.)
set -euo pipefail

die() {
  printf 'build.sh: %s\n' "$*" >&2
  exit 1
}
(($# == 1 || $# == 2)) || die "usage: build.sh TARGET [TARGET_DIR] (for example aarch64-unknown-linux-musl target/cross)"
target=$1 target_dir=${2:-target}
[[ $target =~ ^(x86_64|aarch64)-(unknown-linux-(gnu|musl)|apple-darwin)$ ]] ||
  die "TARGET '$target' is not one the action installs: x86_64 or aarch64, unknown-linux-musl, unknown-linux-gnu or apple-darwin"
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd -- "$repo"

rustup target add "$target" >/dev/null
machine=$(uname -m)
[[ $machine == arm64 ]] && machine=aarch64
if [[ $target == aarch64-unknown-linux-* && $machine != aarch64 ]]; then
  command -v aarch64-linux-gnu-gcc >/dev/null ||
    die "cross-compiling $target needs aarch64-linux-gnu-gcc: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
  upper=$(printf '%s' "$target" | tr 'a-z-' 'A-Z_')
  lower=$(printf '%s' "$target" | tr '-' '_')
  export "CARGO_TARGET_${upper}_LINKER=aarch64-linux-gnu-gcc"
  export "AR_${lower}=aarch64-linux-gnu-ar"
  if [[ $target == *-musl ]]; then
    # C code must see musl's headers, not glibc's (action/release/zig-cc.sh says why).
    python3 -m ziglang version >/dev/null 2>&1 ||
      die "cross-compiling $target needs zig's C compiler for musl's headers: pip install ziglang==0.13.0.post1"
    export "CC_${lower}=$repo/action/release/zig-cc.sh"
  else
    export "CC_${lower}=aarch64-linux-gnu-gcc"
  fi
  # A static binary, also for -gnu, so that it runs under qemu-user and on any distribution.
  export "CARGO_TARGET_${upper}_RUSTFLAGS=-C target-feature=+crt-static"
elif [[ $target == x86_64-* && $machine != x86_64 ]]; then
  die "TARGET '$target' is built on an x86_64 machine only (this one is $machine)"
fi
cargo build --release --locked -p idem --target "$target" --target-dir "$target_dir" >&2
printf '%s\n' "$target_dir/$target/release/idem"
