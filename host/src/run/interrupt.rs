//! How a running guest is stopped: by its time limit, or by SIGINT/SIGTERM
//! ([`crate::signal`]), whichever store it runs in.
//!
//! A store's epoch deadline comes round every [`CHECK_EVERY`] ticks of the engine's epoch;
//! the callback then traps (`Trap::Interrupt`) when a signal asked the run to stop or the
//! step's time limit is spent, and otherwise lets the guest go on. Wasm code reaches epoch
//! checks only between host calls, so the trap never tears a host write: the plan loop closes
//! the step as any other (checkpoints flushed, changes recorded) and records whose marks had
//! not reached the host are done again by the next run (at least once).

use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::engine::EPOCH_TICK;

/// Epoch ticks between two looks at the signal and the clock: at most this long
/// ([`EPOCH_TICK`] each) between Ctrl-C and the guest stopping, while it runs wasm code.
const CHECK_EVERY: u64 = 5;

/// Stop the guest of `store` on a signal, or once `time` has passed (from now).
pub fn arm<T>(store: &mut Store<T>, time: Option<Duration>) {
    let deadline = time.map(|t| Instant::now() + t.max(EPOCH_TICK));
    store.set_epoch_deadline(CHECK_EVERY);
    store.epoch_deadline_callback(move |_| {
        if crate::signal::requested().is_some() || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Continue(CHECK_EVERY))
    });
}
