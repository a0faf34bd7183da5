//! SIGINT and SIGTERM: the first asks the run to stop at its next safe point, the second ends
//! the process at once.
//!
//! The handler only stores the signal's number; the run reads it where stopping is safe: the
//! wasm code of whichever store is running traps at its next epoch check (between host calls,
//! so no host write is torn; see `run::interrupt`), the plan loop closes the step as any
//! other (checkpoints flushed) and runs no further step, and a wait for the run lock gives up.
//! A leaf module so that every layer may ask.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first signal received, 0 while none was.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The signal's name, for messages and reports.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The exit code after `signal`: 128 plus its number, as shells report it (130, 143).
pub fn exit_code(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

extern "C" fn on_signal(signal: libc::c_int) {
    if RECEIVED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        return;
    }
    // The second signal: the person wants out now. Only async-signal-safe calls here.
    const MSG: &[u8] = b"\nidem: stopped at once (second signal); marks of the last moments may be lost and those records are done again next run\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::_exit(i32::from(exit_code(signal)));
    }
}

/// Install the handlers for SIGINT and SIGTERM. `SA_RESTART` keeps the host's own system
/// calls from failing with `EINTR`.
pub fn install() {
    // SAFETY: a zeroed sigaction is valid; the handler only touches an atomic, or calls
    // async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
