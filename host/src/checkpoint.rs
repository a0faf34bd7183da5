//! The checkpoint capability: progress marks in the state store, so a retried run resumes.
//!
//! Scopes are namespaced by who asks (the standard operations, or a plugin by its path), so
//! two plugins never see each other's marks. Under a dry run marks live in memory only.

use crate::bindings::checkpoint::Host;
use crate::bindings::types::Error;
use crate::engine::Ctx;

type R<T> = wasmtime::Result<Result<T, Error>>;

fn state_error(e: anyhow::Error) -> Error {
    Error::Io(format!("state store: {e:#}"))
}

impl Ctx {
    /// The guest's scope within this caller's namespace.
    pub fn scoped(&self, scope: &str) -> String {
        format!("{}{scope}", self.scope_prefix)
    }
}

impl Host for Ctx {
    fn done(&mut self, scope: String, keys: Vec<String>) -> R<Vec<bool>> {
        let scope = self.scoped(&scope);
        Ok(self.state.done(&scope, &keys).map_err(state_error))
    }

    fn mark(&mut self, scope: String, keys: Vec<String>) -> R<()> {
        let scope = self.scoped(&scope);
        Ok(self.state.mark(&scope, &keys).map_err(state_error))
    }

    fn clear(&mut self, scope: String) -> R<()> {
        let scope = self.scoped(&scope);
        Ok(self.state.clear(&scope).map_err(state_error))
    }
}
