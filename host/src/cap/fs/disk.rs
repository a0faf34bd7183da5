//! The apply's sink: changes made on disk, durably.
//!
//! Files are replaced atomically (a temporary beside the target, written, fsync'ed, renamed
//! over it, the directory fsync'ed); new directories are fsync'ed into their parent. The
//! temporaries carry [`TMP_MARKER`] and the writer's pid in their name, so a run after a crash
//! can recognise the ones a killed run left.

use std::collections::BTreeSet;
use std::io::{self, Write};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};

use super::sink::{Found, Sink};
use crate::bindings::fs::Metadata;
use crate::policy::RelPath;

/// Temporary files of atomic writes carry this in their name.
pub const TMP_MARKER: &str = ".idem-tmp-";

/// Changes go to the disk.
#[derive(Default)]
pub struct Disk {
    tmp_counter: u64,
}

/// fsync a directory, so a rename or creation in it survives a power cut.
fn sync_dir(root: &Dir, dir: &RelPath) -> io::Result<()> {
    root.open_dir(dir.as_fs())?.open(".")?.sync_all()
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
        self.tmp_counter += 1;
        let tmp = parent.join(&format!(
            ".{}{}{}-{}",
            path.file_name(),
            TMP_MARKER,
            std::process::id(),
            self.tmp_counter
        ));
        let write = || -> io::Result<()> {
            let mut f = root.open_with(
                tmp.as_fs(),
                OpenOptions::new().write(true).create_new(true).mode(mode),
            )?;
            f.write_all(&content)?;
            // The create mode went through the umask; set the exact bits.
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

    fn mirror(
        &mut self,
        _path: &RelPath,
        _copy: std::sync::Arc<std::path::PathBuf>,
        _size: u64,
        _mode: u32,
    ) {
    }

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
                } else if ft.is_file() && name.starts_with('.') && name.contains(TMP_MARKER) {
                    root.remove_file(child.as_fs())?;
                    tracing::info!(path = %child, "removed a temporary file left by an interrupted run");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
