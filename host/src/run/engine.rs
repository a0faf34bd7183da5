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

/// How many instances, memories and tables one store may hold. A component is a handful of
/// core instances (componentize-py's, the largest seen, about a dozen); wasmtime's default
/// of 10,000 would let a guest multiply its memory limit.
pub const STORE_ITEMS: usize = 100;

/// The store's memory limits, from the step's policy.
pub struct Limiter {
    /// The most all linear memories of the store together may grow to, in bytes.
    pub memory: usize,
    /// What they hold now.
    pub used: usize,
    /// Set when a guest asked for more.
    pub hit: bool,
}

impl Limiter {
    pub fn new(memory: usize) -> Self {
        Limiter {
            memory,
            used: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.memory {
            self.hit = true;
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        STORE_ITEMS
    }

    fn memories(&self) -> usize {
        STORE_ITEMS
    }

    fn tables(&self) -> usize {
        STORE_ITEMS
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
