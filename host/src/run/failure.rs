//! How the host words a guest's failure: a trap, a limit hit, a crash with its own account on
//! stderr, or a component that cannot be a plugin. Each becomes a typed [`StepFailure`].

use std::time::Duration;

use super::store::Ctx;
use crate::report::{FailureKind, StepFailure};

/// What the host knows of `err`, raised by a guest described as `what` running in the store
/// whose data is `ctx`. `plugin` adds which flag raises the limit that was hit.
pub fn describe_trap(err: &wasmtime::Error, ctx: &Ctx, what: &str, plugin: bool) -> StepFailure {
    let limits = ctx.policy.limits;
    if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        let hint = if plugin {
            " (raise it with --plugin-timeout)"
        } else {
            ""
        };
        return time_limit(what, limits.time, ctx.cut_short, hint);
    }
    if ctx.limiter.hit {
        // The guest's own account (an allocation failure, a backtrace) adds nothing here.
        let hint = if plugin {
            " (raise it with --plugin-memory)"
        } else {
            ""
        };
        return StepFailure::new(
            FailureKind::Limit,
            format!(
                "{what} ran out of memory: it asked for more than its limit of {} MiB{hint}",
                limits.memory >> 20
            ),
        );
    }
    if matches!(
        err.downcast_ref::<wasmtime::component::ResourceTableError>(),
        Some(wasmtime::component::ResourceTableError::Full)
    ) {
        return StepFailure::new(
            FailureKind::Limit,
            format!(
                "{what} was stopped: it held more than {} handles open at once (file readers, \
                 databases, statements, WASI streams); drop each handle once done with it",
                super::store::MAX_HANDLES
            ),
        );
    }
    if exceeds_store_items(err) {
        return StepFailure::new(
            FailureKind::Limit,
            format!(
                "{what} was stopped: it asked for more than {} instances, memories or tables \
                 (a component needs a handful; this limit is fixed) ({err:#})",
                super::engine::STORE_ITEMS
            ),
        );
    }
    let stderr = String::from_utf8_lossy(&ctx.stderr.contents())
        .trim()
        .to_string();
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let tail = tail[tail.len().saturating_sub(5)..].join("\n");
    let message = if tail.is_empty() {
        format!("{what} crashed: {err:#}")
    } else {
        format!("{what} crashed: {tail}")
    };
    StepFailure::new(FailureKind::Trap, message)
}

/// The failure of a step stopped at its time limit; `blocked` says where it was waiting.
pub fn time_limit(
    what: &str,
    limit: Option<Duration>,
    blocked: Option<&str>,
    hint: &str,
) -> StepFailure {
    let secs = limit.unwrap_or(Duration::ZERO).as_secs();
    let at = blocked
        .map(|b| format!(" (blocked in {b})"))
        .unwrap_or_default();
    StepFailure::new(
        FailureKind::Limit,
        format!("{what} ran longer than its time limit of {secs} s and was stopped{at}{hint}"),
    )
}

/// True when `err` is a trap, or a limit hit, rather than a mismatch found by the linker.
pub fn is_trap(err: &wasmtime::Error, ctx: &Ctx) -> bool {
    err.downcast_ref::<wasmtime::Trap>().is_some() || ctx.limiter.hit || exceeds_store_items(err)
}

/// True when instantiation stopped at the limiter's count of instances, memories or tables.
/// wasmtime raises that as an untyped error (`resource limit exceeded: instance count too
/// high at 101`, store.rs) and calls no limiter method that could record it, so its wording
/// is the only sign; the test of many instances pins it for this wasmtime line.
fn exceeds_store_items(err: &wasmtime::Error) -> bool {
    err.chain()
        .any(|e| e.to_string().starts_with("resource limit exceeded:"))
}

/// Why `bytes` cannot be a plugin, when the first eight bytes already tell: not WebAssembly
/// at all, or a core module (what `wasm32-unknown-unknown` or `wasm32-wasip1` builds give).
pub fn not_a_component(bytes: &[u8]) -> Option<&'static str> {
    if !bytes.starts_with(b"\0asm") {
        return Some(
            "is not a WebAssembly file (it lacks the `\\0asm` header); give the path of a component built for wasm32-wasip2",
        );
    }
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Some(
            "is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target \
             (or wrap a wasip1 module with `wasm-tools component new`)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_files_that_cannot_be_plugins() {
        let table: &[(&[u8], Option<&str>)] = &[
            (b"hello", Some("not a WebAssembly file")),
            (b"\0asm\x01\0\0\0", Some("core WebAssembly module")),
            (b"\0asm\x0d\0\x01\0", None),
        ];
        for (bytes, want) in table {
            let got = not_a_component(bytes);
            match (want, got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.contains(w), "{g}"),
                _ => panic!("{bytes:?}: {got:?}"),
            }
        }
    }
}
