//! The apply's sink: changes made on disk, durably.
//!
//! Files are replaced atomically (a temporary beside the target, written, fsync'ed, renamed
//! over it, the directory fsync'ed); new directories are fsync'ed into their parent. The
//! temporaries carry [`TMP_MARKER`] and the writer's pid in their name, so a run after a crash
//! can recognise the ones a killed run left.

use std::collections::BTreeSet;
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
            f.sync_all()?;
            root.rename(tmp.as_fs(), root, path.as_fs())
        };
        if let Err(e) = write() {
            let _ = root.remove_file(tmp.as_fs());
            return Err(e);
        }
        sync_dir(root, parent)
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
        sync_dir(root, &path.parent().unwrap_or_default())
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
        root.set_permissions(path.as_fs(), Permissions::from_mode(mode))
    }

    fn unlink(&mut self, root: &Dir, dir: Option<&Dir>, path: &RelPath) -> io::Result<()> {
        match dir {
            Some(d) => d.remove_file(path.file_name()),
            None => root.remove_file(path.as_fs()),
        }
    }

    fn rmdir(&mut self, root: &Dir, path: &RelPath) -> io::Result<()> {
        root.remove_dir(path.as_fs())
    }

    fn rmtree(&mut self, root: &Dir, path: &RelPath) -> io::Result<()> {
        root.remove_dir_all(path.as_fs())
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
