//! wasmtime's engine, the epoch ticker that gives time limits their granularity, and the
//! memory limiter.

use std::time::Duration;

use anyhow::{Result, anyhow};
use wasmtime::{Engine, ResourceLimiter};

/// How often the epoch advances: the granularity of step timeouts.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A wasmtime engine with epoch interruption, and a thread that advances its epoch for as
/// long as the engine lives.
pub fn engine() -> Result<Engine> {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    let engine = Engine::new(&config).map_err(|e| anyhow!(e))?;
    let ticker = engine.weak();
    std::thread::spawn(move || {
        while let Some(engine) = ticker.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    Ok(engine)
}

/// The store's memory limits, from the step's policy.
pub struct Limiter {
    /// The most one linear memory may grow to, in bytes.
    pub memory: usize,
    /// Set when a guest asked for more.
    pub hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
