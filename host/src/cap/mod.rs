//! The capabilities: one module per WIT interface of `wit/`, each owning its state and
//! implementing its generated `Host` trait on a small view of the store (`FsView`,
//! `SqliteView`, ...), as wasmtime-wasi does with `WasiCtxView`.
//!
//! A capability never reaches into another's fields. Where one needs another, it asks through
//! a narrow trait defined here ([`PathProbe`]: the SQLite capability asks the file capability
//! how a path looks, and shows a dry run's database as a file there) or in its own module
//! (`checkpoint::Marks`, which the state store implements). So the tree and its databases are
//! one view: a database a dry run writes exists as a file for later steps, and a file a step
//! removes or replaces is not the database a connection still holds.

pub mod checkpoint;
pub mod clock;
pub mod fs;
pub mod http;
pub mod log;
pub mod policy;
pub mod postgres;
pub mod resources;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use crate::bindings::fs::Metadata;
use crate::bindings::types::Error;
use crate::policy::RelPath;

/// What is at a path for this run, for a database about to be opened.
pub enum PlannedContent {
    /// Nothing.
    Absent,
    /// The file on disk, untouched by this run.
    OnDisk,
    /// Bytes a dry run planned there (a copy of a template, say).
    Bytes(Arc<Vec<u8>>),
    /// Content a dry run keeps in a private file: a database it writes, or a large write.
    Spilled(Arc<PathBuf>),
}

/// The file capability's group-commit barrier (see `cap::fs::Disk`), for a capability whose
/// effects must come after the files written so far are durable and in place: a checkpoint
/// mark, a database opened or used.
pub trait Barrier {
    /// Make every write since the last barrier durable and put staged files in place; nothing
    /// to do outside a group commit.
    fn settle(&mut self) -> Result<(), Error>;
}

/// How the run sees a path (including a dry run's planned changes), for capabilities other
/// than `fs` that must know whether a file is there.
pub trait PathProbe: Barrier {
    /// The path's metadata as this run sees it, or `None` when nothing is there.
    fn probe(&self, path: &RelPath) -> Result<Option<Metadata>, Error>;

    /// Refuse a path that really leads (through links) into idem's own state, or out of the
    /// step's `grants` when it has some.
    fn check(&self, path: &RelPath, grants: Option<&[RelPath]>) -> Result<(), Error>;

    /// A count of removals and replacements in the tree so far: when it moves, a file held
    /// open may no longer be the one at its path.
    fn generation(&self) -> u64;

    /// What is at `path` for this run, with a dry run's planned content.
    fn planned(&self, path: &RelPath) -> Result<PlannedContent, Error>;

    /// Show the database a dry run writes in its private `copy` as the file at `path`.
    fn mirror(&mut self, path: &RelPath, copy: Arc<PathBuf>);

    /// Stop showing a database a dry run created at `path` (its step failed).
    fn unmirror(&mut self, path: &RelPath);

    /// Whether `path` is a directory as this run sees it, following a link on disk.
    fn is_dir(&self, path: &RelPath) -> bool;
}
