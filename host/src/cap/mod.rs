//! The capabilities: one module per WIT interface of `wit/`, each owning its state and
//! implementing its generated `Host` trait on a small view of the store (`FsView`,
//! `SqliteView`, ...), as wasmtime-wasi does with `WasiCtxView`.
//!
//! A capability never reaches into another's fields. Where one needs another, it asks through
//! a narrow trait defined here ([`PathProbe`]: the SQLite capability asks the file capability
//! how a path looks) or in its own module (`checkpoint::Marks`, which the state store
//! implements).

pub mod checkpoint;
pub mod clock;
pub mod fs;
pub mod log;
pub mod policy;
pub mod resources;
pub mod sqlite;

use crate::bindings::fs::Metadata;
use crate::bindings::types::Error;
use crate::policy::RelPath;

/// How the run sees a path (including a dry run's planned changes), for capabilities other
/// than `fs` that must know whether a file is there.
pub trait PathProbe {
    /// The path's metadata as this run sees it, or `None` when nothing is there.
    fn probe(&self, path: &RelPath) -> Result<Option<Metadata>, Error>;

    /// Refuse a path that really leads (through links) into idem's own state, or out of the
    /// step's `grants` when it has some.
    fn check(&self, path: &RelPath, grants: Option<&[RelPath]>) -> Result<(), Error>;
}
