//! Builds the standard operations guest (`guest/`) for `wasm32-wasip2` and hands the
//! component to the host crate, so `cargo build` alone produces a complete `idem`.
//!
//! The guest is built by a nested cargo with its own target directory (no lock contention
//! with the outer build). The wasm target is installed with rustup when missing: a fresh
//! machine needs nothing installed by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    for p in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=IDEM_GUEST_WASM");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let wasm = match std::env::var_os("IDEM_GUEST_WASM") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => build_guest(&workspace),
    };
    let bytes = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("reading the guest component {}: {e}", wasm.display()));
    std::fs::write(out.join("idem_guest.wasm"), &bytes).unwrap();
    std::fs::write(out.join("idem_guest.sha256"), sha256_hex(&bytes)).unwrap();
}

fn ensure_target(rustc: &str) {
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.as_deref().is_some_and(Path::exists) {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target with rustup (once)");
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .expect("running rustup to install the wasm32-wasip2 target; install rustup, or run `rustup target add wasm32-wasip2`");
    assert!(status.success(), "`rustup target add wasm32-wasip2` failed");
}

fn build_guest(workspace: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    ensure_target(&rustc);
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("guest");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "idem-guest",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer build's settings are for the host, not for the guest.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_NET_OFFLINE"
            || k == "RUSTFLAGS"
            || k == "RUSTC"
            || k == "RUSTC_WORKSPACE_WRAPPER"
            || k == "RUSTDOC"
        {
            cmd.env_remove(&k);
        }
    }
    let out = cmd.output().expect("running cargo to build the guest");
    if !out.status.success() {
        panic!(
            "building the standard operations guest (guest/) for wasm32-wasip2 failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    target_dir.join("wasm32-wasip2/release/idem_guest.wasm")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
