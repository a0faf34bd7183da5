//! The WIT interface `policy`: the guest may ask what kind of run this is. The answer comes
//! from the step's [`Policy`], the one place the run's mode is kept.

use crate::bindings::policy::{Host, RunMode};
use crate::policy::{Mode, Policy};

/// What the `policy` interface sees of the store.
pub struct PolicyView<'a> {
    pub policy: &'a Policy,
}

impl Host for PolicyView<'_> {
    fn mode(&mut self) -> wasmtime::Result<RunMode> {
        Ok(match self.policy.mode {
            Mode::Apply => RunMode::Apply,
            Mode::Plan => RunMode::Plan,
            Mode::Check => RunMode::Check,
        })
    }

    fn dry_run(&mut self) -> wasmtime::Result<bool> {
        Ok(self.policy.mode.dry_run())
    }
}
