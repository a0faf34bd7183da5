//! The write gate: the only door from the file capability's decision code to its [`Sink`],
//! recording every change that goes through.
//!
//! A change is recorded when, and only when, the sink carried it out (or planned it): a
//! failed mutation records nothing, and no mutation reaches the sink unrecorded. What is
//! recorded is what the host saw, so a step's outcome never rests on the guest's word.

use std::io;

use cap_std::fs::Dir;

use super::sink::{Found, Sink};
use crate::bindings::fs::Metadata;
use crate::change::{Change, ChangeKind};
use crate::policy::RelPath;

/// Files larger than this get no diff, only a note.
pub const DIFF_LIMIT: usize = 1 << 20;

/// The file a write replaces: its hash (computed from `data` when not given) and its bytes
/// when the caller has them (without them, a diff is only a note).
pub struct Prior<'a> {
    pub hash: Option<String>,
    pub data: Option<&'a [u8]>,
}

/// The sink of this run and the changes made through it since they were last taken.
pub struct Gate {
    sink: Box<dyn Sink + Send>,
    changes: Vec<Change>,
    /// Where in `changes` the writes a group commit staged are, in write order: recorded in
    /// the order of the calls (as a dry run records them), and taken back out when the
    /// barrier could not put them in place (a write whose rename failed did not happen).
    staged: Vec<usize>,
    /// Counts removals and replacements, so a capability holding a file open (a database
    /// connection) knows when to look again whether it is still the file at its path.
    generation: u64,
    /// Whether to compute diffs of file updates (`--diff`).
    diffs: bool,
}

/// SHA-256 of `data`, in hex.
pub fn hash(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A unified diff of two versions of `path`, or a note when one cannot be shown.
pub fn diff(path: &str, old: &[u8], new: &[u8]) -> String {
    if old.len() > DIFF_LIMIT || new.len() > DIFF_LIMIT {
        return format!("(no diff: {path} is larger than 1 MiB)\n");
    }
    match (std::str::from_utf8(old), std::str::from_utf8(new)) {
        (Ok(o), Ok(n)) if !o.contains('\0') && !n.contains('\0') => {
            similar::TextDiff::from_lines(o, n)
                .unified_diff()
                .context_radius(3)
                .header(&format!("a/{path}"), &format!("b/{path}"))
                .to_string()
        }
        _ => format!("Binary file {path} differs\n"),
    }
}

/// The change of a file written over `old` (`None`: created), its old hash filled in.
fn file_change(path: &RelPath, old: Option<&Prior<'_>>) -> Change {
    let mut change = Change::new(
        if old.is_some() {
            ChangeKind::UpdateFile
        } else {
            ChangeKind::CreateFile
        },
        path.as_str(),
    );
    change.before = old.and_then(|o| o.hash.clone().or_else(|| o.data.map(hash)));
    change
}

impl Gate {
    pub fn new(sink: Box<dyn Sink + Send>, diffs: bool) -> Self {
        Gate {
            sink,
            changes: Vec::new(),
            staged: Vec::new(),
            generation: 0,
            diffs,
        }
    }

    /// The changes since the last call. Called once a group commit has settled (a step's end
    /// settles first): a write still staged is taken as made.
    pub fn take_changes(&mut self) -> Vec<Change> {
        debug_assert!(self.staged.is_empty(), "changes taken before the barrier");
        self.staged.clear();
        std::mem::take(&mut self.changes)
    }

    fn record(&mut self, change: Change) {
        tracing::debug!(kind = change.kind.as_str(), path = %change.path, "change");
        self.changes.push(change);
    }

    // Queries: what the sink itself holds.

    pub fn planned(&self, path: &RelPath) -> Option<Found> {
        self.sink.planned(path)
    }

    pub fn planned_children(&self, dir: &RelPath) -> Vec<(String, Option<Metadata>)> {
        self.sink.planned_children(dir)
    }

    pub fn disk_is_frozen(&self) -> bool {
        self.sink.disk_is_frozen()
    }

    // Group commit (see `Disk`).

    /// Make later writes durable together, at [`Gate::settle`], until [`Gate::end_group`].
    pub fn begin_group(&mut self, root: &Dir) {
        self.sink.begin_group(root);
    }

    /// Whether a staged write would change what `path` (or a path under it) shows.
    pub fn staged_at(&self, path: &RelPath) -> bool {
        self.sink.staged_at(path)
    }

    /// The barrier: every write since the last one durable and in place, then recorded.
    pub fn settle(&mut self, root: &Dir) -> io::Result<()> {
        let (done, result) = self.sink.settle(root);
        self.put_in_place(done);
        result
    }

    /// Settle, and make each write durable on its own again.
    pub fn end_group(&mut self, root: &Dir) -> io::Result<()> {
        let (done, result) = self.sink.end_group(root);
        self.put_in_place(done);
        result
    }

    /// The first `done` staged writes are in place now; the changes of the rest are taken
    /// back out.
    fn put_in_place(&mut self, done: usize) {
        let staged = std::mem::take(&mut self.staged);
        self.generation += done.min(staged.len()) as u64;
        for &i in staged[done.min(staged.len())..].iter().rev() {
            self.changes.remove(i);
        }
    }

    /// Record the change of a file write the sink made (when it was staged, as made: the
    /// barrier takes it back out if it cannot put the file in place).
    fn record_write(&mut self, path: &RelPath, change: Change) {
        if self.sink.staged_at(path) {
            self.staged.push(self.changes.len());
        } else {
            self.generation += 1;
        }
        self.record(change);
    }

    // Mutations: each carried out by the sink, then recorded.

    pub fn mkdir(
        &mut self,
        root: &Dir,
        path: &RelPath,
        mode: Option<u32>,
        effective: u32,
    ) -> io::Result<()> {
        self.sink.mkdir(root, path, mode, effective)?;
        self.record(Change::new(ChangeKind::CreateDir, path.as_str()));
        Ok(())
    }

    /// How many removals and replacements went through so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// See [`Sink::mirror`].
    pub fn mirror(
        &mut self,
        path: &RelPath,
        copy: std::sync::Arc<std::path::PathBuf>,
        size: u64,
        mode: u32,
    ) {
        self.sink.mirror(path, copy, size, mode);
    }

    /// See [`Sink::unmirror`].
    pub fn unmirror(&mut self, path: &RelPath) {
        self.sink.unmirror(path);
    }

    /// Whether changes carry diffs, so that callers fetch the old bytes only then.
    pub fn wants_diffs(&self) -> bool {
        self.diffs
    }

    /// Write `content` over `old` (`None` for a new file).
    pub fn write_file(
        &mut self,
        root: &Dir,
        parent: &RelPath,
        path: &RelPath,
        content: Vec<u8>,
        mode: u32,
        old: Option<Prior<'_>>,
    ) -> io::Result<()> {
        let mut change = file_change(path, old.as_ref());
        change.after = Some(hash(&content));
        if self.diffs {
            change.diff = Some(match &old {
                None => diff(path.as_str(), b"", &content),
                Some(Prior { data: Some(d), .. }) => diff(path.as_str(), d, &content),
                Some(Prior { data: None, .. }) => {
                    format!("(no diff: {path} is larger than 1 MiB)\n")
                }
            });
        }
        self.sink.replace_file(root, parent, path, content, mode)?;
        self.record_write(path, change);
        Ok(())
    }

    /// Copy what `from` reads over `old` (`None` for a new file), hashing it on the way.
    /// `diff_new` is the new content when the caller has it at hand for a diff.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file(
        &mut self,
        root: &Dir,
        parent: &RelPath,
        path: &RelPath,
        from: &mut dyn io::Read,
        mode: u32,
        old: Option<Prior<'_>>,
        diff_new: Option<&[u8]>,
    ) -> io::Result<()> {
        use sha2::{Digest, Sha256};
        struct Hashing<'a> {
            inner: &'a mut dyn io::Read,
            hash: Sha256,
        }
        impl io::Read for Hashing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.inner.read(buf)?;
                self.hash.update(&buf[..n]);
                Ok(n)
            }
        }
        let mut reader = Hashing {
            inner: from,
            hash: Sha256::new(),
        };
        self.sink.copy_file(root, parent, path, &mut reader, mode)?;
        let after: String = reader
            .hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut change = file_change(path, old.as_ref());
        change.after = Some(after);
        if self.diffs {
            change.diff = Some(match (&old, diff_new) {
                (None, Some(n)) => diff(path.as_str(), b"", n),
                (Some(Prior { data: Some(d), .. }), Some(n)) => diff(path.as_str(), d, n),
                _ => format!("(no diff: {path} is larger than 1 MiB)\n"),
            });
        }
        self.record_write(path, change);
        Ok(())
    }

    pub fn chmod(
        &mut self,
        root: &Dir,
        path: &RelPath,
        mode: u32,
        current: &Found,
    ) -> io::Result<()> {
        self.sink.chmod(root, path, mode, current)?;
        self.record(Change::new(ChangeKind::SetMode, path.as_str()));
        Ok(())
    }

    pub fn unlink(&mut self, root: &Dir, dir: Option<&Dir>, path: &RelPath) -> io::Result<()> {
        self.sink.unlink(root, dir, path)?;
        self.generation += 1;
        self.record(Change::new(ChangeKind::RemoveFile, path.as_str()));
        Ok(())
    }

    pub fn rmdir(&mut self, root: &Dir, path: &RelPath, recursive: bool) -> io::Result<()> {
        if recursive {
            self.sink.rmtree(root, path)?;
        } else {
            self.sink.rmdir(root, path)?;
        }
        self.generation += 1;
        self.record(Change::new(ChangeKind::RemoveDir, path.as_str()));
        Ok(())
    }

    /// Not a change of the tree's planned state: cleaning up after a killed run.
    pub fn sweep_temporaries(&mut self, root: &Dir) -> io::Result<usize> {
        self.sink.sweep_temporaries(root)
    }
}

#[cfg(test)]
mod tests {
    use super::super::disk::Disk;
    use super::super::overlay::Overlay;
    use super::*;
    use crate::bindings::types::Datetime;
    use crate::policy::{Mode, Policy};

    fn p(s: &str) -> RelPath {
        Policy::new(Mode::Apply).resolve(s).unwrap()
    }

    fn sinks() -> Vec<(&'static str, Box<dyn Sink + Send>)> {
        vec![
            ("disk", Box::new(Disk::default())),
            ("overlay", Box::new(Overlay::new())),
        ]
    }

    /// Every mutation, through either sink, records exactly one change of its kind; the
    /// overlay leaves the directory as it was, the disk does what it says.
    #[test]
    fn every_mutation_is_recorded_once_whichever_the_sink() {
        for (name, sink) in sinks() {
            let t = tempfile::tempdir().unwrap();
            std::fs::write(t.path().join("old"), "old").unwrap();
            std::fs::create_dir(t.path().join("full")).unwrap();
            std::fs::write(t.path().join("full/x"), "x").unwrap();
            let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
            let mut g = Gate::new(sink, true);
            let real = Found::Real(Metadata {
                kind: crate::bindings::fs::Kind::File,
                size: 3,
                mode: 0o644,
                modified: Datetime {
                    seconds: 0,
                    nanoseconds: 0,
                },
            });
            g.mkdir(&root, &p("d"), Some(0o700), 0o700).unwrap();
            g.write_file(&root, &p(""), &p("new"), b"n\n".to_vec(), 0o644, None)
                .unwrap();
            g.write_file(
                &root,
                &p(""),
                &p("old"),
                b"o2\n".to_vec(),
                0o644,
                Some(Prior {
                    hash: None,
                    data: Some(b"old"),
                }),
            )
            .unwrap();
            g.chmod(&root, &p("old"), 0o600, &real).unwrap();
            g.unlink(&root, None, &p("new")).unwrap();
            g.rmdir(&root, &p("d"), false).unwrap();
            g.rmdir(&root, &p("full"), true).unwrap();
            let kinds: Vec<(&str, String)> = g
                .take_changes()
                .iter()
                .map(|c| (c.kind.as_str(), c.path.clone()))
                .collect();
            let want: Vec<(&str, String)> = [
                ("create-dir", "d"),
                ("create-file", "new"),
                ("update-file", "old"),
                ("set-mode", "old"),
                ("remove-file", "new"),
                ("remove-dir", "d"),
                ("remove-dir", "full"),
            ]
            .iter()
            .map(|(k, p)| (*k, p.to_string()))
            .collect();
            assert_eq!(kinds, want, "sink {name}");
            assert!(g.take_changes().is_empty(), "taken once");
            let mut left: Vec<String> = std::fs::read_dir(t.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            left.sort();
            match name {
                "disk" => {
                    assert_eq!(left, ["old"]);
                    assert_eq!(std::fs::read(t.path().join("old")).unwrap(), b"o2\n");
                }
                _ => {
                    assert_eq!(left, ["full", "old"]);
                    assert_eq!(std::fs::read(t.path().join("old")).unwrap(), b"old");
                }
            }
        }
    }

    /// Issue 20: under a group commit a write is staged and in place only at the barrier,
    /// recorded in the order of the calls; the barrier leaves no temporary, and after the
    /// group writes are made one by one again.
    #[test]
    fn a_group_commit_puts_its_writes_in_place_and_records_them_at_the_barrier() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("old"), "old").unwrap();
        let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let mut g = Gate::new(Box::new(Disk::default()), false);
        g.begin_group(&root);
        g.mkdir(&root, &p("d"), None, 0o755).unwrap();
        g.write_file(&root, &p("d"), &p("d/new"), b"n".to_vec(), 0o640, None)
            .unwrap();
        let prior = Prior {
            hash: None,
            data: Some(b"old"),
        };
        g.write_file(&root, &p(""), &p("old"), b"o2".to_vec(), 0o644, Some(prior))
            .unwrap();
        // Staged: the temporaries are there, the targets not yet.
        assert!(!t.path().join("d/new").exists());
        assert_eq!(std::fs::read(t.path().join("old")).unwrap(), b"old");
        for (path, staged) in [("d/new", true), ("d", true), ("", true), ("old", true)] {
            assert_eq!(g.staged_at(&p(path)), staged, "{path}");
        }
        assert!(!g.staged_at(&p("d/other")));
        let generation = g.generation();
        g.settle(&root).unwrap();
        assert_eq!(std::fs::read(t.path().join("d/new")).unwrap(), b"n");
        assert_eq!(std::fs::read(t.path().join("old")).unwrap(), b"o2");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path().join("d/new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        let after: Vec<(String, String)> = g
            .take_changes()
            .iter()
            .map(|c| (c.kind.as_str().to_string(), c.path.clone()))
            .collect();
        assert_eq!(
            after,
            [
                ("create-dir".to_string(), "d".to_string()),
                ("create-file".to_string(), "d/new".to_string()),
                ("update-file".to_string(), "old".to_string())
            ],
            "in the order of the calls"
        );
        assert_eq!(g.generation(), generation + 2);
        assert!(!g.staged_at(&p("d/new")) && !g.staged_at(&p("")));
        let names = |dir: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(t.path().join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(""), ["d", "old"]);
        assert_eq!(names("d"), ["new"]);
        // Settled with nothing staged: nothing to do. Ended: a write is in place at once.
        g.settle(&root).unwrap();
        g.end_group(&root).unwrap();
        g.write_file(&root, &p(""), &p("after"), b"a".to_vec(), 0o644, None)
            .unwrap();
        assert_eq!(std::fs::read(t.path().join("after")).unwrap(), b"a");
        assert_eq!(g.take_changes().len(), 1);
    }

    /// A barrier whose rename fails records only the writes it put in place, and leaves no
    /// temporary behind.
    #[test]
    fn a_failed_barrier_records_only_what_it_put_in_place() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let mut g = Gate::new(Box::new(Disk::default()), false);
        g.begin_group(&root);
        g.write_file(&root, &p(""), &p("a"), b"a".to_vec(), 0o644, None)
            .unwrap();
        g.write_file(&root, &p("d"), &p("d/b"), b"b".to_vec(), 0o644, None)
            .unwrap();
        // Something else puts a non-empty directory where `d/b` goes: its rename fails.
        std::fs::create_dir_all(t.path().join("d/b/x")).unwrap();
        assert!(g.settle(&root).is_err());
        let recorded: Vec<String> = g.take_changes().iter().map(|c| c.path.clone()).collect();
        assert_eq!(recorded, ["a"]);
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"a");
        let left: Vec<String> = std::fs::read_dir(t.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["b"], "no temporary left");
    }

    #[test]
    fn a_failed_mutation_records_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let mut g = Gate::new(Box::new(Disk::default()), false);
        assert!(g.unlink(&root, None, &p("missing")).is_err());
        assert!(g.mkdir(&root, &p("no/parent"), None, 0o755).is_err());
        assert!(
            g.write_file(&root, &p("no"), &p("no/f"), vec![], 0o644, None)
                .is_err()
        );
        assert!(g.take_changes().is_empty());
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "no temporary left"
        );
    }

    #[test]
    fn file_writes_carry_hashes_and_a_diff_when_asked() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let mut g = Gate::new(Box::new(Disk::default()), true);
        g.write_file(
            &root,
            &p(""),
            &p("f"),
            b"b\n".to_vec(),
            0o644,
            Some(Prior {
                hash: None,
                data: Some(b"a\n"),
            }),
        )
        .unwrap();
        let c = &g.take_changes()[0];
        assert_eq!(c.before.as_deref(), Some(hash(b"a\n").as_str()));
        assert_eq!(c.after.as_deref(), Some(hash(b"b\n").as_str()));
        let d = c.diff.as_deref().unwrap();
        assert!(d.contains("-a\n") && d.contains("+b\n"), "{d}");
        assert_eq!(diff("x", b"\0", b"y"), "Binary file x differs\n");
    }
}
