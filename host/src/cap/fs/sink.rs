//! The one way the file capability changes anything: a [`Sink`], chosen once per run.
//!
//! `Disk` makes the change (apply); `Overlay` keeps it as a planned state that later calls see
//! (dry run). The decision code in `FsCap` computes what to do from [`Found`] and calls the
//! sink through the recording `Gate`; it never asks which sink it has. So "under a dry run
//! nothing is written, and every change is recorded" holds by construction.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use cap_std::fs::Dir;

use crate::bindings::fs::{Kind, Metadata};
use crate::bindings::types::Datetime;
use crate::policy::RelPath;

/// A path's planned state under a dry run.
#[derive(Clone, Debug, PartialEq)]
pub enum Planned {
    /// A directory. `hide_real`: it was created by this run, so anything on disk at that path
    /// (left from before a planned removal) is not part of it.
    Dir {
        mode: u32,
        hide_real: bool,
        modified: Datetime,
    },
    /// A file. `data` is `None` when only its mode was planned to change.
    File {
        data: Option<Arc<Vec<u8>>>,
        size: u64,
        mode: u32,
        modified: Datetime,
    },
    /// A file whose planned content is kept in a private file at `copy`, outside the root: a
    /// database a dry run writes (the SQLite capability keeps its copy up to date), or a
    /// large planned write, spilled to disk rather than held in memory.
    Spilled {
        copy: Arc<PathBuf>,
        size: u64,
        mode: u32,
        modified: Datetime,
    },
}

/// How this run sees a path: absent, on disk, or planned by the sink.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    Absent,
    Real(Metadata),
    Planned(Planned),
}

impl Found {
    /// The metadata a guest's `stat` returns.
    pub fn metadata(&self) -> Option<Metadata> {
        match self {
            Found::Absent => None,
            Found::Real(m) => Some(*m),
            Found::Planned(Planned::Dir { mode, modified, .. }) => Some(Metadata {
                kind: Kind::Directory,
                size: 0,
                mode: *mode,
                modified: *modified,
            }),
            Found::Planned(Planned::File {
                size,
                mode,
                modified,
                ..
            })
            | Found::Planned(Planned::Spilled {
                size,
                mode,
                modified,
                ..
            }) => Some(Metadata {
                kind: Kind::File,
                size: *size,
                mode: *mode,
                modified: *modified,
            }),
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        self.metadata().map(|m| m.kind)
    }
}

/// Where the file capability's changes go. Every method is a mutation; the two queries tell
/// the decision code what the sink itself holds (nothing, for the disk).
///
/// Mutations get the root handle and the path, already resolved against the step's policy
/// and checked by the decision code (kind, parent, content); a sink does not decide, it only
/// carries out or plans.
pub trait Sink {
    /// What this sink has planned for `path`, when it decides how the path looks (a dry run's
    /// overlay); `None` means "as on disk".
    fn planned(&self, path: &RelPath) -> Option<Found>;

    /// Planned entries directly under `dir`, by name: `Some` for a planned entry, `None` for
    /// one planned away.
    fn planned_children(&self, dir: &RelPath) -> Vec<(String, Option<Metadata>)>;

    /// True when the disk does not change for the rest of the run, so a listing read now stays
    /// true (a dry run's cleanup need not stat again what its listing just saw).
    fn disk_is_frozen(&self) -> bool;

    /// Create one directory (its parent exists) with exactly `mode` when given; `effective`
    /// is the mode it ends up with either way.
    fn mkdir(
        &mut self,
        root: &Dir,
        path: &RelPath,
        mode: Option<u32>,
        effective: u32,
    ) -> io::Result<()>;

    /// Replace (or create) the file at `path` with `content` and exactly `mode`, atomically.
    fn replace_file(
        &mut self,
        root: &Dir,
        parent: &RelPath,
        path: &RelPath,
        content: Vec<u8>,
        mode: u32,
    ) -> io::Result<()>;

    /// Replace (or create) the file at `path` with what `from` reads, and exactly `mode`,
    /// atomically, in chunks: the content is never held whole.
    fn copy_file(
        &mut self,
        root: &Dir,
        parent: &RelPath,
        path: &RelPath,
        from: &mut dyn io::Read,
        mode: u32,
    ) -> io::Result<()>;

    /// Set the permission bits of an existing path, seen now as `current`.
    fn chmod(&mut self, root: &Dir, path: &RelPath, mode: u32, current: &Found) -> io::Result<()>;

    /// Remove a file or symbolic link; `dir` is its parent, open, when the caller has it.
    fn unlink(&mut self, root: &Dir, dir: Option<&Dir>, path: &RelPath) -> io::Result<()>;

    /// Remove an empty directory.
    fn rmdir(&mut self, root: &Dir, path: &RelPath) -> io::Result<()>;

    /// Remove a directory and everything under it.
    fn rmtree(&mut self, root: &Dir, path: &RelPath) -> io::Result<()>;

    /// Show the database at `path`, which a dry run writes in its private copy `copy`, as a
    /// planned file of `size` bytes (mode `mode` when new). Not a change of its own: the
    /// database's changes are recorded by the SQLite capability. The disk sink has nothing
    /// to do, since under apply SQLite writes the file itself.
    fn mirror(&mut self, path: &RelPath, copy: Arc<PathBuf>, size: u64, mode: u32);

    /// Stop showing a database a dry run created at `path` (its step failed, and under apply
    /// the empty file is removed again). The disk sink has nothing to do.
    fn unmirror(&mut self, path: &RelPath);

    /// Remove the temporary files of atomic writes that a killed run left (by name marker).
    /// Returns how many were removed; a dry run removes none.
    fn sweep_temporaries(&mut self, root: &Dir) -> io::Result<usize>;

    /// Group commit: from now until [`Sink::end_group`], make writes durable together at
    /// [`Sink::settle`] rather than one by one (see `Disk`). A sink that writes nothing durable
    /// (the dry run's overlay) ignores it.
    fn begin_group(&mut self, _root: &Dir) {}

    /// Whether a write was staged since the last [`Sink::settle`]: it is complete in a
    /// temporary file but not yet at its path, so what `path` (or, for a directory, a path
    /// under it) shows would change at the next settle.
    fn staged_at(&self, _path: &RelPath) -> bool {
        false
    }

    /// The barrier: make every write and directory creation since the last settle durable,
    /// putting staged files in place. Returns how many staged files were put in place (in the
    /// order they were written), even on error: the ones after a failure were not.
    fn settle(&mut self, _root: &Dir) -> (usize, io::Result<()>) {
        (0, Ok(()))
    }

    /// Settle, and make each later write durable on its own again.
    fn end_group(&mut self, root: &Dir) -> (usize, io::Result<()>) {
        self.settle(root)
    }
}
