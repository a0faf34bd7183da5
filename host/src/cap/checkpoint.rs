//! The checkpoint capability: progress marks in the state store, so a retried run resumes.
//!
//! Scopes are namespaced by who asks (the standard operations, or a plugin by its path: the
//! step's [`Policy`] says which), so two plugins never see each other's marks. The store
//! itself is reached through the narrow [`Marks`] trait, which the state store implements;
//! under a dry run it keeps marks in memory only.

use crate::bindings::checkpoint::Host;
use crate::bindings::types::Error;
use crate::policy::Policy;

/// What the checkpoint capability needs of a store of marks.
pub trait Marks {
    /// Which of `keys` are marked done in `scope`, one answer per key.
    fn done(&self, scope: &str, keys: &[String]) -> anyhow::Result<Vec<bool>>;
    /// Mark `keys` done in `scope`.
    fn mark(&mut self, scope: &str, keys: &[String]) -> anyhow::Result<()>;
    /// Forget every mark of `scope`.
    fn clear(&mut self, scope: &str) -> anyhow::Result<()>;
    /// The value each of `keys` was marked with (`Some("")` for a bare mark), or `None`.
    fn values(&self, scope: &str, keys: &[String]) -> anyhow::Result<Vec<Option<String>>>;
    /// Mark each key done with its value.
    fn mark_values(&mut self, scope: &str, entries: &[(String, String)]) -> anyhow::Result<()>;
    /// At most `limit` marks of `scope` with keys after `after`, in key order, with values.
    fn list(
        &mut self,
        scope: &str,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<(String, String)>>;
    /// Forget the marks of `keys` in `scope`.
    fn unmark(&mut self, scope: &str, keys: &[String]) -> anyhow::Result<()>;
    /// Which of `entries` (a key and the mark the caller saw) this runner takes.
    fn claim(
        &mut self,
        scope: &str,
        entries: &[(String, Option<String>)],
    ) -> anyhow::Result<Vec<bool>>;
}

/// The most marks one `list` call returns, whatever the guest asks: a page's memory in the
/// host is bounded, however large the scope.
pub const LIST_PAGE: usize = 1024;

/// What the `checkpoint` interface sees of the store.
pub struct CheckpointView<'a> {
    pub marks: &'a mut dyn Marks,
    pub policy: &'a Policy,
    /// The file capability's group-commit barrier: settled before any mark is taken, so a
    /// mark is never written before the effects it stands for are durable.
    pub files: &'a mut dyn crate::cap::Barrier,
}

type R<T> = wasmtime::Result<Result<T, Error>>;

fn state_error(e: anyhow::Error) -> Error {
    Error::Io(format!("state store: {e:#}"))
}

impl Host for CheckpointView<'_> {
    fn done(&mut self, scope: String, keys: Vec<String>) -> R<Vec<bool>> {
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.marks.done(&scope, &keys).map_err(state_error))
    }

    fn mark(&mut self, scope: String, keys: Vec<String>) -> R<()> {
        if let Err(e) = self.files.settle() {
            return Ok(Err(e));
        }
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.marks.mark(&scope, &keys).map_err(state_error))
    }

    fn values(&mut self, scope: String, keys: Vec<String>) -> R<Vec<Option<String>>> {
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.marks.values(&scope, &keys).map_err(state_error))
    }

    fn mark_values(&mut self, scope: String, entries: Vec<(String, String)>) -> R<()> {
        if let Err(e) = self.files.settle() {
            return Ok(Err(e));
        }
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self
            .marks
            .mark_values(&scope, &entries)
            .map_err(state_error))
    }

    fn list(
        &mut self,
        scope: String,
        after: Option<String>,
        limit: u32,
    ) -> R<Vec<(String, String)>> {
        let scope = self.policy.checkpoint_scope(&scope);
        let limit = (limit as usize).min(LIST_PAGE);
        Ok(self
            .marks
            .list(&scope, after.as_deref(), limit)
            .map_err(state_error))
    }

    fn unmark(&mut self, scope: String, keys: Vec<String>) -> R<()> {
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.marks.unmark(&scope, &keys).map_err(state_error))
    }

    fn claim(&mut self, scope: String, entries: Vec<(String, Option<String>)>) -> R<Vec<bool>> {
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.marks.claim(&scope, &entries).map_err(state_error))
    }

    fn clear(&mut self, scope: String) -> R<()> {
        let scope = self.policy.checkpoint_scope(&scope);
        Ok(self.marks.clear(&scope).map_err(state_error))
    }
}
