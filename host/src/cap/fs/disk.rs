//! The apply's sink: changes made on disk, durably.
//!
//! Files are replaced atomically (a temporary beside the target, written, fsync'ed, renamed
//! over it, the directory fsync'ed); new directories are fsync'ed into their parent. The
//! temporaries carry [`TMP_MARKER`] and the writer's pid in their name, so a run after a crash
//! can recognise the ones a killed run left.
//!
//! **Group commit** (issue 20). An `each` step writes a file or two per record, and two
//! fsyncs per file cost more than everything else it does. Between [`Sink::begin_group`] and
//! the end of the step, a write is *staged*: its temporary is written and closed, unsynced,
//! and its rename waits. [`Sink::settle`] is the barrier, in this order:
//!
//! 1. one `syncfs` of the root's filesystem: every staged temporary's data and every
//!    directory created since the last barrier are durable;
//! 2. each staged temporary renamed over its target, in write order;
//! 3. a second `syncfs`: the renames are durable.
//!
//! (Without `syncfs`, off Linux: each temporary fsync'ed, then the renames, then each
//! directory touched fsync'ed once.) So a rename never exposes data that is not durable:
//! after a power cut a target holds its old content or its new one, never an empty or partial
//! file, exactly as with a write made durable on its own; what the cut can lose is only the
//! rename (the old content stays, its record unmarked, and the re-run redoes it) or a
//! directory created since the last barrier. The caller settles before anything that must
//! come after the writes: before a checkpoint mark is taken (a record is marked only once its
//! effects are durable), before any call that looks at a staged path (so idem always sees its
//! own writes), before a database is opened or used, and when the step ends. A kill -9 leaves
//! staged temporaries behind, which the next run sweeps as any other.
//!
//! The barrier covers the group's removals and mode changes as well (`syncfs` flushes every
//! change of the filesystem), which outside a group are not synced at all.
//!
//! `syncfs` flushes the whole filesystem, other processes' dirty data included: a barrier
//! per batch of records (hundreds of files) costs about one fsync, where the files' own
//! fsyncs cost one or two each. Since Linux 5.8 it reports writeback errors of the filesystem
//! since the root was opened; any error fails the barrier, so nothing is marked.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Write};

use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};

use super::sink::{Found, Sink};
use crate::bindings::fs::Metadata;
use crate::policy::RelPath;

/// Temporary files of atomic writes carry this in their name.
pub const TMP_MARKER: &str = ".idem-tmp-";

/// Whether the process that named a temporary `name` is still running: a run nested in
/// this one, or one on a root inside this one, is writing it, and it is not ours to sweep.
fn writer_alive(name: &str) -> bool {
    let Some(pid) = name
        .rsplit_once(TMP_MARKER)
        .and_then(|(_, rest)| rest.split('-').next())
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return false;
    };
    if pid == std::process::id() as i32 {
        return false;
    }
    // SAFETY: signal 0 only asks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Changes go to the disk.
#[derive(Default)]
pub struct Disk {
    tmp_counter: u64,
    /// While a group commit is open: what its next barrier must make durable.
    group: Option<Group>,
}

/// The writes of a group commit since its last barrier.
#[derive(Default)]
struct Group {
    /// Staged files, in the order they were written: temporary, target, parent.
    staged: Vec<(RelPath, RelPath, RelPath)>,
    /// The targets of staged files.
    targets: HashSet<RelPath>,
    /// Every directory above a staged target, the root included.
    above: HashSet<RelPath>,
    /// Directories whose entries changed unsynced (for the barrier without `syncfs`).
    dirs: BTreeSet<RelPath>,
    /// Whether anything was written or created since the last barrier.
    dirty: bool,
    /// The root opened for reading (the `Dir` handle is `O_PATH`, which `syncfs` refuses),
    /// as at the group's start: `syncfs` reports the filesystem's writeback errors since.
    syncable: Option<cap_std::fs::File>,
}

/// Make everything written to the filesystem holding `root` (open for reading) durable:
/// `syncfs(2)`. `None` when the barrier must sync file by file instead.
#[cfg(target_os = "linux")]
fn sync_filesystem(root: Option<&cap_std::fs::File>) -> Option<io::Result<()>> {
    use std::os::fd::AsRawFd;
    let root = root?;
    // SAFETY: syncfs on a descriptor the `File` owns and keeps open for the call.
    let rc = unsafe { libc::syncfs(root.as_raw_fd()) };
    Some(if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    })
}

/// No `syncfs` here: the barrier syncs file by file.
#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_root: Option<&cap_std::fs::File>) -> Option<io::Result<()>> {
    None
}

/// fsync a directory, so a rename or creation in it survives a power cut.
fn sync_dir(root: &Dir, dir: &RelPath) -> io::Result<()> {
    root.open_dir(dir.as_fs())?.open(".")?.sync_all()
}

impl Disk {
    /// Write a temporary beside `path` with `fill`, fsync it, rename it over `path`, fsync
    /// the directory. On failure the temporary file is removed.
    fn replace_with(
        &mut self,
        root: &Dir,
        parent: &RelPath,
        path: &RelPath,
        mode: u32,
        fill: &mut dyn FnMut(&mut cap_std::fs::File) -> io::Result<()>,
    ) -> io::Result<()> {
        self.tmp_counter += 1;
        let suffix = format!("{TMP_MARKER}{}-{}", std::process::id(), self.tmp_counter);
        // A name near the 255-byte limit has no room for the suffix: then the temporary is
        // named by the suffix alone.
        let name = if path.file_name().len() + suffix.len() < 255 {
            format!(".{}{suffix}", path.file_name())
        } else {
            format!(".{}", &suffix[1..])
        };
        let tmp = parent.join(&name);
        // The file it replaces keeps its owner and group (as root over /etc, an app:app
        // config must not become root:root).
        let owner = root
            .symlink_metadata(path.as_fs())
            .ok()
            .filter(|m| m.is_file())
            .map(|m| (m.uid(), m.gid()));
        let mut write = || -> io::Result<()> {
            let mut f = root.open_with(
                tmp.as_fs(),
                OpenOptions::new().write(true).create_new(true).mode(mode),
            )?;
            fill(&mut f)?;
            if let Some((uid, gid)) = owner {
                use std::os::fd::AsRawFd;
                // SAFETY: fchown on a descriptor this function owns.
                let rc = unsafe { libc::fchown(f.as_raw_fd(), uid, gid) };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    // Not root: a file of another owner cannot be given back; keep ours.
                    if e.raw_os_error() != Some(libc::EPERM) {
                        return Err(e);
                    }
                }
            }
            // The create mode went through the umask (and chown may clear setuid bits); set
            // the exact bits last.
            f.set_permissions(Permissions::from_mode(mode))?;
            if self.group.is_some() {
                // Made durable, then renamed, at the group's barrier.
                return Ok(());
            }
            f.sync_all()?;
            root.rename(tmp.as_fs(), root, path.as_fs())
        };
        if let Err(e) = write() {
            let _ = root.remove_file(tmp.as_fs());
            return Err(e);
        }
        if let Some(g) = &mut self.group {
            g.dirty = true;
            g.targets.insert(path.clone());
            g.above.insert(RelPath::root());
            g.above.extend(path.ancestors());
            g.dirs.insert(parent.clone());
            g.staged.push((tmp, path.clone(), parent.clone()));
            return Ok(());
        }
        sync_dir(root, parent)
    }

    /// Under a group commit, a removal or mode change at `path` is made durable by the next
    /// barrier too (outside one, as before, it is not synced: see docs/guarantees.md).
    fn touched(&mut self, path: &RelPath) {
        if let Some(g) = &mut self.group {
            g.dirty = true;
            g.dirs.insert(path.parent().unwrap_or_default());
        }
    }

    /// The group's barrier (see the module comment): returns how many staged files were put
    /// in place, and the first error. On error the temporaries not yet renamed are removed.
    fn barrier(&mut self, root: &Dir) -> (usize, io::Result<()>) {
        let Some(g) = &mut self.group else {
            return (0, Ok(()));
        };
        if !g.dirty {
            return (0, Ok(()));
        }
        let staged = std::mem::take(&mut g.staged);
        let dirs = std::mem::take(&mut g.dirs);
        g.targets.clear();
        g.above.clear();
        g.dirty = false;
        let mut renamed = 0;
        let whole = g.syncable.as_ref();
        let result = (|| -> io::Result<()> {
            match sync_filesystem(whole) {
                Some(r) => r?,
                None => {
                    for (tmp, _, _) in &staged {
                        root.open(tmp.as_fs())?.sync_all()?;
                    }
                }
            }
            for (tmp, target, _) in &staged {
                root.rename(tmp.as_fs(), root, target.as_fs())?;
                renamed += 1;
            }
            match sync_filesystem(whole) {
                Some(r) => r,
                None => dirs.iter().try_for_each(|d| sync_dir(root, d)),
            }
        })();
        if result.is_err() {
            for (tmp, _, _) in &staged[renamed..] {
                let _ = root.remove_file(tmp.as_fs());
            }
        }
        (renamed, result)
    }
}

impl Sink for Disk {
    fn planned(&self, _path: &RelPath) -> Option<Found> {
        None
    }

    fn planned_children(&self, _dir: &RelPath) -> Vec<(String, Option<Metadata>)> {
        Vec::new()
    }

    fn disk_is_frozen(&self) -> bool {
        false
    }

    fn mkdir(
        &mut self,
        root: &Dir,
        path: &RelPath,
        mode: Option<u32>,
        _effective: u32,
    ) -> io::Result<()> {
        root.create_dir(path.as_fs())?;
        if let Some(m) = mode {
            root.set_permissions(path.as_fs(), Permissions::from_mode(m))?;
        }
        let parent = path.parent().unwrap_or_default();
        if let Some(g) = &mut self.group {
            g.dirty = true;
            g.dirs.insert(parent);
            return Ok(());
        }
        sync_dir(root, &parent)
    }

    fn replace_file(
        &mut self,
        root: &Dir,
        parent: &RelPath,
        path: &RelPath,
        content: Vec<u8>,
        mode: u32,
    ) -> io::Result<()> {
        self.replace_with(root, parent, path, mode, &mut |f| f.write_all(&content))
    }

    fn copy_file(
        &mut self,
        root: &Dir,
        parent: &RelPath,
        path: &RelPath,
        from: &mut dyn io::Read,
        mode: u32,
    ) -> io::Result<()> {
        self.replace_with(root, parent, path, mode, &mut |f| {
            io::copy(from, f).map(|_| ())
        })
    }

    fn mirror(
        &mut self,
        _path: &RelPath,
        _copy: std::sync::Arc<std::path::PathBuf>,
        _size: u64,
        _mode: u32,
    ) {
    }

    fn unmirror(&mut self, _path: &RelPath) {}

    fn chmod(&mut self, root: &Dir, path: &RelPath, mode: u32, _current: &Found) -> io::Result<()> {
        root.set_permissions(path.as_fs(), Permissions::from_mode(mode))?;
        self.touched(path);
        Ok(())
    }

    fn unlink(&mut self, root: &Dir, dir: Option<&Dir>, path: &RelPath) -> io::Result<()> {
        match dir {
            Some(d) => d.remove_file(path.file_name()),
            None => root.remove_file(path.as_fs()),
        }?;
        self.touched(path);
        Ok(())
    }

    fn rmdir(&mut self, root: &Dir, path: &RelPath) -> io::Result<()> {
        root.remove_dir(path.as_fs())?;
        self.touched(path);
        Ok(())
    }

    fn rmtree(&mut self, root: &Dir, path: &RelPath) -> io::Result<()> {
        root.remove_dir_all(path.as_fs())?;
        self.touched(path);
        Ok(())
    }

    fn begin_group(&mut self, root: &Dir) {
        if self.group.is_none() {
            self.group = Some(Group {
                // Unreadable root: the barrier syncs file by file.
                syncable: root.open(".").ok(),
                ..Group::default()
            });
        }
    }

    fn staged_at(&self, path: &RelPath) -> bool {
        self.group
            .as_ref()
            .is_some_and(|g| g.targets.contains(path) || g.above.contains(path))
    }

    fn settle(&mut self, root: &Dir) -> (usize, io::Result<()>) {
        self.barrier(root)
    }

    fn end_group(&mut self, root: &Dir) -> (usize, io::Result<()>) {
        let done = self.barrier(root);
        self.group = None;
        done
    }

    /// Called only after a crashed run, under the lock, so no live writer owns them.
    fn sweep_temporaries(&mut self, root: &Dir) -> io::Result<usize> {
        let mut removed = 0;
        let mut stack = vec![RelPath::root()];
        let mut seen = BTreeSet::new();
        while let Some(dir) = stack.pop() {
            if !seen.insert(dir.clone()) {
                continue;
            }
            let Ok(entries) = root.read_dir(dir.as_fs()) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if dir.is_root() && name == crate::policy::STATE_DIR {
                    continue;
                }
                let child = dir.join(&name);
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(child);
                } else if ft.is_file()
                    && name.starts_with('.')
                    && name.contains(TMP_MARKER)
                    && !writer_alive(&name)
                {
                    root.remove_file(child.as_fs())?;
                    tracing::info!(path = %child, "removed a temporary file left by an interrupted run");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, Policy};

    fn p(s: &str) -> RelPath {
        Policy::new(Mode::Apply).resolve(s).unwrap()
    }

    /// Issue 14: the temporary's suffix made a write of a name near 255 bytes fail.
    #[test]
    fn a_name_near_the_limit_is_written_atomically_too() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let name = "n".repeat(250);
        Disk::default()
            .replace_file(&root, &RelPath::root(), &p(&name), b"x".to_vec(), 0o644)
            .unwrap();
        assert_eq!(std::fs::read(t.path().join(&name)).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    /// Issue 14: the sweep after an interrupted run deleted a live nested run's temporaries.
    #[test]
    fn the_sweep_removes_only_temporaries_of_writers_that_are_gone() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = format!(".a{TMP_MARKER}{}-1", child.id());
        // A pid far above pid_max: no such process.
        let dead = format!(".b{TMP_MARKER}{}-1", 99_999_999);
        std::fs::write(t.path().join(&live), "live").unwrap();
        std::fs::write(t.path().join(&dead), "dead").unwrap();
        assert_eq!(Disk::default().sweep_temporaries(&root).unwrap(), 1);
        assert!(t.path().join(&live).exists());
        assert!(!t.path().join(&dead).exists());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
