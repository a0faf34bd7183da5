//! The file capability: files and directories under the root, and nothing else.
//!
//! It owns a `cap_std` handle on the root, so every open is resolved beneath it by the
//! operating system: absolute paths and `..` are refused lexically by the step's
//! [`Policy`](crate::policy::Policy), and symbolic links that lead out of the root are refused
//! by `cap_std` when they are followed.
//!
//! Every mutating method starts with its guard (mode bits, kind of what is there, parent),
//! decides from the [`Found`] state of the path, and then calls the one write [`Gate`], which
//! hands the change to the run's [`Sink`] (the disk under apply, the [`Overlay`] under a dry
//! run) and records it. The decision code is the same in both modes and never asks which
//! one it is in; later calls see the overlay, so a dry run of dependent steps predicts
//! exactly what an apply does.

mod disk;
mod gate;
mod host;
mod overlay;
mod sink;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::{Dir, MetadataExt};

pub use disk::Disk;
pub use gate::hash;
pub use host::FsView;
pub use overlay::Overlay;
pub use sink::{Found, Planned, Sink};

use self::gate::Gate;
use crate::bindings::fs::{Change as Done, Entry, Kind, Metadata};
use crate::bindings::types::{Datetime, Error};
use crate::cap::resources::Reader;
use crate::change::Change;
use crate::policy::RelPath;

/// The result of a capability call as the guest sees it.
pub type CapResult<T> = Result<T, Error>;

/// What a write replaces: whether it holds the new content already, its hash when known
/// without reading it again, and its bytes when they are at hand (for a diff).
struct Before {
    same: bool,
    hash: Option<String>,
    data: Option<Arc<Vec<u8>>>,
}

/// How many directories' listings a dry run remembers.
const LISTED_DIRS: usize = 1024;

/// The file capability's state for one run.
pub struct FsCap {
    root: Dir,
    gate: Gate,
    /// The process umask, for the mode of new files and directories.
    umask: u32,
    /// While the disk is frozen (a dry run), the kinds of the entries of recently listed
    /// directories, as on disk: they stay true, so a cleanup's removals need not stat again
    /// every file its listing just saw.
    listed: RefCell<HashMap<RelPath, HashMap<String, Metadata>>>,
    /// Where paths must never lead, however they are spelt: idem's own state (the state
    /// directory, or the state store's files), as real absolute paths.
    protected: Vec<PathBuf>,
    /// Real locations of directories, by path, as the kernel resolved them.
    real_dirs: RefCell<HashMap<RelPath, PathBuf>>,
    /// Paths (escaped) of entries that listings left out because their names are not UTF-8,
    /// since the last [`FsCap::take_unreadable`]: no step can name them, so none touches
    /// them, but the step's report counts them.
    unreadable: RefCell<std::collections::BTreeSet<String>>,
    /// Every path a step named and the policy let through, and whether it was listed: what
    /// a saved plan fingerprints, since that is all of the tree the run could have seen.
    observed: RefCell<BTreeMap<RelPath, bool>>,
}

/// The most entries one `list-dir-page` call returns.
pub const LIST_PAGE: usize = 1024;

/// A file name that is not UTF-8, as text for people: valid runs as they are, each other byte
/// as `\xNN` (as `ls -b` and Rust's `{:?}` show them).
pub fn escape_name(name: &[u8]) -> String {
    let mut out = String::new();
    for chunk in name.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The real path of an open directory, as the kernel knows it.
fn real_path_of(dir: &Dir) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()
}

fn datetime_of(meta: &cap_std::fs::Metadata) -> Datetime {
    Datetime {
        seconds: meta.mtime(),
        nanoseconds: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

fn metadata_of(meta: &cap_std::fs::Metadata) -> Metadata {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Directory
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    Metadata {
        kind,
        size: if kind == Kind::Directory {
            0
        } else {
            meta.len()
        },
        mode: meta.mode() & 0o7777,
        modified: datetime_of(meta),
    }
}

/// A path's state from its `lstat` on disk: absent when it (or a parent) is not there.
fn real_state(path: &RelPath, lstat: io::Result<cap_std::fs::Metadata>) -> CapResult<Found> {
    match lstat {
        Ok(m) => Ok(Found::Real(metadata_of(&m))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(Found::Absent)
        }
        Err(e) => Err(io_error(path, e)),
    }
}

/// True for `cap_std`'s refusal of a path that leads out of the root. It is the one
/// `PermissionDenied` that carries no OS error code (a real EACCES always has one).
fn is_escape(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied && e.raw_os_error().is_none()
}

/// Map an I/O error on `path` to the error the guest sees, by kind.
pub fn io_error(path: &RelPath, e: io::Error) -> Error {
    if is_escape(&e) {
        return Error::Denied(format!(
            "{path} leads outside the root through a symbolic link"
        ));
    }
    let msg = format!("{path}: {e}");
    match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound(msg),
        io::ErrorKind::AlreadyExists
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory => Error::WrongKind(msg),
        io::ErrorKind::DirectoryNotEmpty => Error::NotEmpty(msg),
        _ => Error::Io(msg),
    }
}

fn umask() -> u32 {
    // SAFETY: umask only swaps the process mask; it is read and restored at once, before any
    // other thread creates files.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    }
}

/// Fill `buf` as far as the reader goes; 0 at its end.
fn read_full(r: &mut dyn io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn check_mode(mode: Option<u32>) -> CapResult<()> {
    match mode {
        Some(m) if m > 0o7777 => Err(Error::Invalid(format!("mode {m:o} has bits beyond 0o7777"))),
        _ => Ok(()),
    }
}

impl FsCap {
    /// The capability over `root`, opened by the caller (the only ambient-authority step),
    /// with changes going to `sink`.
    pub fn new(root: Dir, sink: Box<dyn Sink + Send>, diffs: bool) -> Self {
        FsCap {
            root,
            gate: Gate::new(sink, diffs),
            umask: umask(),
            listed: RefCell::new(HashMap::new()),
            unreadable: RefCell::default(),
            protected: Vec::new(),
            real_dirs: RefCell::new(HashMap::new()),
            observed: RefCell::default(),
        }
    }

    /// Note that a step named `path` (`listed`: it read the directory's entries).
    pub fn observe(&self, path: &RelPath, listed: bool) {
        let mut seen = self.observed.borrow_mut();
        let was = seen.entry(path.clone()).or_insert(false);
        *was |= listed;
    }

    /// Every path the run's steps named so far, with whether each was listed.
    pub fn observed(&self) -> Vec<(String, bool)> {
        self.observed
            .borrow()
            .iter()
            .map(|(p, l)| (p.as_str().to_owned(), *l))
            .collect()
    }

    /// Never let a path lead to `paths` (real absolute paths), through whatever links.
    pub fn protect(&mut self, paths: Vec<PathBuf>) {
        self.protected = paths;
    }

    /// Where `path` really is: the real location of its nearest directory that exists on disk
    /// (with `follow`, starting from `path` itself, as listing or creating under it would follow
    /// a link there), with the rest of the path appended. `None` when the kernel cannot say.
    pub fn real_location(&self, path: &RelPath, follow: bool) -> Option<PathBuf> {
        let mut dir = if follow {
            Some(path.clone())
        } else {
            path.parent()
        };
        let full = path.as_str();
        while let Some(d) = dir {
            let known = self.real_dirs.borrow().get(&d).cloned();
            let real = match known {
                Some(r) => Some(r),
                None => match self.root.open_dir(d.as_fs()) {
                    Ok(handle) => {
                        let r = real_path_of(&handle)?;
                        self.real_dirs.borrow_mut().insert(d.clone(), r.clone());
                        Some(r)
                    }
                    Err(_) => None,
                },
            };
            if let Some(mut r) = real {
                let consumed = d.as_str().len();
                let tail = full[consumed..].trim_start_matches('/');
                if !tail.is_empty() {
                    r.push(tail);
                }
                return Some(r);
            }
            dir = d.parent();
        }
        None
    }

    /// Refuse `path` when it really leads into idem's state, or (for a step with `grants`)
    /// out of every path the step was granted: a link inside the root (`up -> .`,
    /// `dist/x -> ../secret`) can lead where the path's spelling does not say.
    pub fn check_real(
        &self,
        path: &RelPath,
        follow: bool,
        grants: Option<&[RelPath]>,
    ) -> CapResult<()> {
        if self.protected.is_empty() && grants.is_none() {
            return Ok(());
        }
        let Some(real) = self.real_location(path, follow) else {
            return Ok(());
        };
        self.refuse_protected(path, &real)?;
        if let Some(grants) = grants {
            let inside = grants.iter().any(|g| {
                self.real_location(g, true)
                    .is_some_and(|top| real.starts_with(top))
            });
            if !inside {
                return Err(Error::Denied(format!(
                    "{path} leads outside the paths this step may touch through a symbolic link"
                )));
            }
        }
        Ok(())
    }

    /// Refuse `path`, whose real location is `real`, when that is inside idem's state.
    fn refuse_protected(&self, path: &RelPath, real: &Path) -> CapResult<()> {
        match self.protected.iter().find(|p| real.starts_with(p)) {
            Some(p) => Err(Error::Denied(format!(
                "{path} leads into idem's own state ({}), which steps may not touch",
                p.display()
            ))),
            None => Ok(()),
        }
    }

    /// True when removing the directory at real location `dir` would remove idem's state.
    fn holds_protected(&self, path: &RelPath) -> Option<&Path> {
        let real = self.real_location(path, false)?;
        self.protected
            .iter()
            .find(|p| p.starts_with(&real))
            .map(|p| p.as_path())
    }

    /// The changes since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.gate.take_changes()
    }

    /// How this run sees `path`.
    fn found(&self, path: &RelPath) -> CapResult<Found> {
        match self.gate.planned(path) {
            // A dry run's database grows as it is written: its size is its copy's now.
            Some(Found::Planned(Planned::Spilled {
                copy,
                mode,
                modified,
                ..
            })) => {
                let size = std::fs::metadata(copy.as_path()).map_or(0, |m| m.len());
                Ok(Found::Planned(Planned::Spilled {
                    copy,
                    size,
                    mode,
                    modified,
                }))
            }
            Some(f) => Ok(f),
            None => real_state(path, self.root.symlink_metadata(path.as_fs())),
        }
    }

    /// True when `found` is a directory, following a symbolic link on disk (as `mkdir -p`
    /// does). A link that leads out of the root is `denied`, so the guest hears why, not "not
    /// a directory".
    fn is_dir(&self, path: &RelPath, found: &Found) -> CapResult<bool> {
        match found {
            Found::Real(m) if m.kind == Kind::Symlink => match self.root.metadata(path.as_fs()) {
                Ok(m) => Ok(m.is_dir()),
                Err(e) => match io_error(path, e) {
                    denied @ Error::Denied(_) => Err(denied),
                    _ => Ok(false),
                },
            },
            f => Ok(f.kind() == Some(Kind::Directory)),
        }
    }

    /// The current content of a file as this run sees it.
    fn content(&self, path: &RelPath, found: &Found) -> CapResult<Arc<Vec<u8>>> {
        match found {
            Found::Planned(Planned::File { data: Some(d), .. }) => Ok(d.clone()),
            Found::Planned(Planned::File { data: None, .. }) | Found::Real(_) => {
                if found.kind() != Some(Kind::File) {
                    return Err(Error::WrongKind(format!("{path} is not a regular file")));
                }
                let mut f = self.open_regular(path)?;
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut data).map_err(|e| io_error(path, e))?;
                Ok(Arc::new(data))
            }
            Found::Planned(Planned::Spilled { copy, .. }) => std::fs::read(copy.as_path())
                .map(Arc::new)
                .map_err(|e| io_error(path, e)),
            Found::Planned(Planned::Dir { .. }) => {
                Err(Error::WrongKind(format!("{path} is a directory")))
            }
            Found::Absent => Err(Error::NotFound(format!("{path} does not exist"))),
        }
    }

    /// Open a file for reading that was a regular file when looked at: without blocking (a
    /// FIFO swapped in meanwhile would block an ordinary open forever), and checked again on
    /// the open handle, which is what is then read.
    fn open_regular(&self, path: &RelPath) -> CapResult<cap_std::fs::File> {
        use cap_std::fs::OpenOptionsExt as _;
        let f = self
            .root
            .open_with(
                path.as_fs(),
                cap_std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY),
            )
            .map_err(|e| io_error(path, e))?;
        let meta = f.metadata().map_err(|e| io_error(path, e))?;
        if !meta.is_file() {
            return Err(Error::WrongKind(format!(
                "{path} is not a regular file (it changed while idem looked at it)"
            )));
        }
        Ok(f)
    }

    /// Whether the file at `path` (a regular file of `size` bytes on disk) holds exactly
    /// `content`, compared in chunks: a multi-gigabyte file is never read into memory.
    fn same_content(&self, path: &RelPath, size: u64, content: &[u8]) -> CapResult<bool> {
        if size != content.len() as u64 {
            return Ok(false);
        }
        let mut f = self.open_regular(path)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0;
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| io_error(path, e))?;
            if n == 0 {
                return Ok(at == content.len());
            }
            if at + n > content.len() || buf[..n] != content[at..at + n] {
                return Ok(false);
            }
            at += n;
        }
    }

    /// SHA-256 of a file on disk, read in chunks.
    fn digest_of(&self, path: &RelPath) -> CapResult<String> {
        use sha2::{Digest, Sha256};
        let mut f = self.open_regular(path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| io_error(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// `stat`: the metadata of a path, or none.
    pub fn stat(&self, path: &RelPath) -> CapResult<Option<Metadata>> {
        Ok(self.found(path)?.metadata())
    }

    /// `stat-many`: [`FsCap::stat`] of each path, in order, opening each parent directory
    /// once for the paths under it (a batch of `each` records names its outputs side by side:
    /// `pages/1`, `pages/1/index.txt`, `pages/2`, ...; a few recent parents stay open) and
    /// asking it about the leaf only: one `fstatat` per path instead of a walk from the root.
    /// With `check`, the paths were resolved by the policy only, and each is refused here when
    /// it really leads into idem's state, as [`FsCap::check_real`] refuses it, from the real
    /// location of the parent handle just opened (one `readlink` per new directory, instead
    /// of opening it a second time). A parent that cannot be opened takes [`FsCap::stat`]'s
    /// way, so its error or absence is the same one.
    pub fn stat_many(
        &self,
        paths: &[CapResult<RelPath>],
        check: bool,
    ) -> Vec<CapResult<Option<Metadata>>> {
        /// Parent directories kept open within one call.
        const OPEN_PARENTS: usize = 8;
        let mut parents: Vec<(RelPath, Option<Dir>)> = Vec::with_capacity(OPEN_PARENTS);
        paths
            .iter()
            .map(|path| {
                let path = path.as_ref().map_err(Clone::clone)?;
                let slow = |fs: &Self| -> CapResult<Option<Metadata>> {
                    if check {
                        fs.check_real(path, false, None)?;
                    }
                    fs.stat(path)
                };
                if self.gate.planned(path).is_some() {
                    return slow(self);
                }
                let Some(up) = path.parent() else {
                    return slow(self);
                };
                let at = match parents.iter().position(|(p, _)| *p == up) {
                    Some(i) => i,
                    None => {
                        if parents.len() >= OPEN_PARENTS {
                            parents.remove(0);
                        }
                        let handle = self.root.open_dir(up.as_fs()).ok();
                        parents.push((up.clone(), handle));
                        parents.len() - 1
                    }
                };
                let Some(dir) = parents[at].1.as_ref() else {
                    return slow(self);
                };
                if check && !self.protected.is_empty() {
                    let known = self.real_dirs.borrow().get(&up).cloned();
                    let real = match known.or_else(|| real_path_of(dir)) {
                        Some(r) => r,
                        None => return slow(self),
                    };
                    self.real_dirs
                        .borrow_mut()
                        .entry(up)
                        .or_insert(real.clone());
                    self.refuse_protected(path, &real.join(path.file_name()))?;
                }
                Ok(real_state(path, dir.symlink_metadata(path.file_name()))?.metadata())
            })
            .collect()
    }

    /// `read`: the whole content of a file.
    pub fn read(&self, path: &RelPath) -> CapResult<Vec<u8>> {
        let found = self.found(path)?;
        Ok(Arc::unwrap_or_clone(self.content(path, &found)?))
    }

    /// How a path is seen for reading its content when links inside the root may be followed
    /// (a plan's `latest.csv -> 2026-12-01.csv`): a link on disk to a regular file reads as
    /// that file; one that leads into idem's state is refused, and one that leads out of the
    /// root is refused by `cap_std` as always.
    fn found_through_link(&self, path: &RelPath) -> CapResult<Found> {
        let found = self.found(path)?;
        let Found::Real(m) = &found else {
            return Ok(found);
        };
        if m.kind != Kind::Symlink {
            return Ok(found);
        }
        let target = self
            .root
            .metadata(path.as_fs())
            .map_err(|e| io_error(path, e))?;
        if !target.is_file() {
            return Ok(found);
        }
        let f = self.open_regular(path)?;
        if let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
            && let Some(p) = self.protected.iter().find(|p| real.starts_with(p))
        {
            return Err(Error::Denied(format!(
                "{path} leads into idem's own state ({}), which steps may not touch",
                p.display()
            )));
        }
        Ok(Found::Real(metadata_of(&target)))
    }

    /// `read`, following a link inside the root to a regular file (see
    /// [`FsCap::found_through_link`]).
    pub fn read_through_link(&self, path: &RelPath) -> CapResult<Vec<u8>> {
        let found = self.found_through_link(path)?;
        Ok(Arc::unwrap_or_clone(self.content(path, &found)?))
    }

    /// `open-reader`, following a link inside the root to a regular file.
    pub fn open_reader_through_link(&self, path: &RelPath) -> CapResult<Reader> {
        match self.found_through_link(path)? {
            Found::Real(m) if m.kind == Kind::File => self.open_regular(path).map(Reader::File),
            _ => self.open_reader(path),
        }
    }

    /// `open-reader`: a chunked reader over a file.
    pub fn open_reader(&self, path: &RelPath) -> CapResult<Reader> {
        let found = self.found(path)?;
        match &found {
            Found::Planned(Planned::File { data: Some(d), .. }) => Ok(Reader::Memory {
                data: d.clone(),
                pos: 0,
            }),
            Found::Planned(Planned::Spilled { copy, .. }) => std::fs::File::open(copy.as_path())
                .map(|f| Reader::File(cap_std::fs::File::from_std(f)))
                .map_err(|e| io_error(path, e)),
            f if f.kind() == Some(Kind::File) => self.open_regular(path).map(Reader::File),
            f if f.kind().is_none() => Err(Error::NotFound(format!("{path} does not exist"))),
            _ => Err(Error::WrongKind(format!("{path} is not a regular file"))),
        }
    }

    /// `list-dir`: every entry of a directory with metadata, sorted by name.
    pub fn list_dir(&self, path: &RelPath) -> CapResult<Vec<Entry>> {
        self.list_dir_counting(path).map(|(entries, _)| entries)
    }

    /// `list-dir` for a step whose listing may hold at most `cap` entries: a larger
    /// directory is refused before its entries are gathered.
    pub fn list_dir_capped(&self, path: &RelPath, cap: usize) -> CapResult<Vec<Entry>> {
        // Counting names first costs one more readdir, and only a cheap one.
        if let Ok(dir) = self.root.read_dir(path.as_fs()) {
            let n = dir.take(cap + 1).count();
            if n > cap {
                return Err(Error::Invalid(format!(
                    "{path} has more than {cap} entries, too many for one list-dir: list it a \
                     page at a time with list-dir-page"
                )));
            }
        }
        self.list_dir(path)
    }

    /// `list-dir-page`: at most `limit` entries whose names sort after `after`, sorted. The
    /// directory is read whole, but only the page's names are kept and only they are
    /// stat'ed, so the host's memory is bounded by the page whatever the directory's size.
    pub fn list_dir_page(
        &self,
        path: &RelPath,
        after: Option<&str>,
        limit: usize,
    ) -> CapResult<Vec<Entry>> {
        let real = self.listable(path)?;
        let beyond = |name: &str| after.is_none_or(|a| name > a);
        // Under a dry run: what the run planned here, overriding the disk.
        let planned: HashMap<String, Option<Metadata>> = self
            .gate
            .planned_children(path)
            .into_iter()
            .filter(|(n, _)| beyond(n))
            .collect();
        let mut names: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let keep = |names: &mut std::collections::BTreeSet<String>, name: String| {
            if names.len() < limit {
                names.insert(name);
            } else if names.last().is_some_and(|l| name < *l) {
                names.insert(name);
                names.pop_last();
            }
        };
        if real {
            self.visible_entries(path, |name, _| {
                if beyond(&name) && !planned.contains_key(&name) {
                    keep(&mut names, name);
                }
                Ok(())
            })?;
        }
        for (name, meta) in &planned {
            if meta.is_some() {
                keep(&mut names, name.clone());
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let meta = match planned.get(&name) {
                Some(Some(m)) => *m,
                Some(None) => continue,
                None => match self.root.symlink_metadata(path.join(&name).as_fs()) {
                    Ok(m) => metadata_of(&m),
                    // Gone since it was listed: as if listed a moment later.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(&path.join(&name), e)),
                },
            };
            out.push(Entry {
                name,
                metadata: meta,
            });
        }
        Ok(out)
    }

    /// The paths listings left out since the last call because their names are not UTF-8
    /// (escaped, sorted).
    pub fn take_unreadable(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.unreadable.borrow_mut())
            .into_iter()
            .collect()
    }

    /// Check that `path` can be listed (it exists and is a directory, on disk or as planned);
    /// returns whether its entries on disk count (not when the run planned a new directory
    /// in place of what is there).
    fn listable(&self, path: &RelPath) -> CapResult<bool> {
        let found = self.found(path)?;
        if found.kind().is_none() {
            return Err(Error::NotFound(format!("{path} does not exist")));
        }
        if !self.is_dir(path, &found)? {
            return Err(Error::WrongKind(format!("{path} is not a directory")));
        }
        Ok(!matches!(
            found,
            Found::Planned(Planned::Dir {
                hide_real: true,
                ..
            })
        ))
    }

    /// Hand `visit` each entry on disk in directory `path` that a step may see, by name. Left
    /// out: `.idem` at the root, protected paths (idem's state store, however it is reached),
    /// and names that are not UTF-8, which are recorded (escaped) for the step's warning and
    /// counted in the return value.
    fn visible_entries(
        &self,
        path: &RelPath,
        mut visit: impl FnMut(String, &cap_std::fs::DirEntry) -> CapResult<()>,
    ) -> CapResult<usize> {
        let mut unreadable = 0;
        let real_dir = (!self.protected.is_empty())
            .then(|| self.real_location(path, true))
            .flatten();
        let dir = self
            .root
            .read_dir(path.as_fs())
            .map_err(|e| io_error(path, e))?;
        for entry in dir {
            let entry = entry.map_err(|e| io_error(path, e))?;
            let name = match entry.file_name().into_string() {
                Ok(name) => name,
                Err(raw) => {
                    use std::os::unix::ffi::OsStrExt;
                    unreadable += 1;
                    let name = escape_name(raw.as_bytes());
                    self.unreadable.borrow_mut().insert(if path.is_root() {
                        name
                    } else {
                        format!("{path}/{name}")
                    });
                    continue;
                }
            };
            if (path.is_root() && name == crate::policy::STATE_DIR)
                || real_dir
                    .as_ref()
                    .is_some_and(|r| self.protected.contains(&r.join(&name)))
            {
                continue;
            }
            visit(name, &entry)?;
        }
        Ok(unreadable)
    }

    /// [`FsCap::list_dir`], and how many names on disk it left out for not being UTF-8.
    fn list_dir_counting(&self, path: &RelPath) -> CapResult<(Vec<Entry>, usize)> {
        let mut unreadable = 0;
        let real = self.listable(path)?;
        let mut entries: BTreeMap<String, Metadata> = BTreeMap::new();
        if real {
            let mut kinds = self.gate.disk_is_frozen().then(HashMap::new);
            unreadable = self.visible_entries(path, |name, entry| {
                let meta = metadata_of(
                    &entry
                        .metadata()
                        .map_err(|e| io_error(&path.join(&name), e))?,
                );
                if let Some(k) = &mut kinds {
                    k.insert(name.clone(), meta);
                }
                entries.insert(name, meta);
                Ok(())
            })?;
            if let Some(kinds) = kinds {
                let mut listed = self.listed.borrow_mut();
                if listed.len() >= LISTED_DIRS {
                    listed.clear();
                }
                listed.insert(path.clone(), kinds);
            }
        }
        for (name, meta) in self.gate.planned_children(path) {
            match meta {
                Some(m) => entries.insert(name, m),
                None => entries.remove(&name),
            };
        }
        Ok((
            entries
                .into_iter()
                .map(|(name, metadata)| Entry { name, metadata })
                .collect(),
            unreadable,
        ))
    }

    /// `create-dir`: ensure a directory and its parents.
    pub fn create_dir(&mut self, path: &RelPath, mode: Option<u32>) -> CapResult<Done> {
        check_mode(mode)?;
        let mut result = Done::Unchanged;
        let chain: Vec<RelPath> = path
            .ancestors()
            .chain((!path.is_root()).then(|| path.clone()))
            .collect();
        for dir in &chain {
            let is_target = dir == path;
            let found = self.found(dir)?;
            if found.kind().is_none() {
                let mode = if is_target { mode } else { None };
                let effective = mode.unwrap_or(0o777 & !self.umask);
                self.gate
                    .mkdir(&self.root, dir, mode, effective)
                    .map_err(|e| io_error(dir, e))?;
                if is_target {
                    result = Done::Created;
                }
            } else if !self.is_dir(dir, &found)? {
                return Err(Error::WrongKind(format!(
                    "{dir} exists and is not a directory"
                )));
            }
        }
        if result == Done::Unchanged
            && let Some(m) = mode
            && self.set_mode(path, m)? != Done::Unchanged
        {
            result = Done::Updated;
        }
        Ok(result)
    }

    /// The directory a file at `path` is written into: it must be there (as this run sees
    /// it), and be a directory.
    fn parent_dir(&self, path: &RelPath) -> CapResult<RelPath> {
        let Some(parent) = path.parent() else {
            return Err(Error::WrongKind(
                "the root is a directory, not a file".into(),
            ));
        };
        let pfound = self.found(&parent)?;
        if pfound.kind().is_none() {
            return Err(Error::NotFound(format!(
                "{path}: parent directory {parent} does not exist"
            )));
        }
        if !self.is_dir(&parent, &pfound)? {
            return Err(Error::WrongKind(format!(
                "{path}: {parent} is not a directory"
            )));
        }
        Ok(parent)
    }

    /// `write-atomic`: ensure a file's content (and mode), atomically.
    pub fn write_atomic(
        &mut self,
        path: &RelPath,
        content: Vec<u8>,
        mode: Option<u32>,
    ) -> CapResult<Done> {
        check_mode(mode)?;
        let parent = self.parent_dir(path)?;
        let found = self.found(path)?;
        let old_mode = found.metadata().map(|m| m.mode);
        let old = match found.kind() {
            None => None,
            Some(Kind::File) => Some(match &found {
                Found::Planned(Planned::File { data: Some(_), .. })
                | Found::Planned(Planned::Spilled { .. }) => {
                    let d = self.content(path, &found)?;
                    Before {
                        same: d.as_slice() == content.as_slice(),
                        hash: None,
                        data: Some(d),
                    }
                }
                // On disk: compared in chunks, so a huge file is never held in memory; its
                // bytes are read whole only for a diff of at most DIFF_LIMIT.
                _ => {
                    let size = found.metadata().map_or(0, |m| m.size);
                    let same = self.same_content(path, size, &content)?;
                    let data =
                        (!same && self.gate.wants_diffs() && size <= gate::DIFF_LIMIT as u64)
                            .then(|| self.content(path, &found))
                            .transpose()?;
                    let hash = if same {
                        None
                    } else {
                        Some(self.digest_of(path)?)
                    };
                    Before { same, hash, data }
                }
            }),
            Some(Kind::Directory) => {
                return Err(Error::WrongKind(format!("{path} is a directory")));
            }
            Some(_) => {
                return Err(Error::WrongKind(format!(
                    "{path} is a symbolic link or special file; remove it first"
                )));
            }
        };
        let new_mode = mode.or(old_mode).unwrap_or(0o666 & !self.umask);
        if old.as_ref().is_some_and(|o| o.same) {
            return if old_mode == Some(new_mode) {
                Ok(Done::Unchanged)
            } else {
                self.set_mode(path, new_mode)
            };
        }
        self.gate
            .write_file(
                &self.root,
                &parent,
                path,
                content,
                new_mode,
                old.as_ref().map(|o| gate::Prior {
                    hash: o.hash.clone(),
                    data: o.data.as_deref().map(|d| d.as_slice()),
                }),
            )
            .map_err(|e| io_error(path, e))?;
        Ok(if old.is_some() {
            Done::Updated
        } else {
            Done::Created
        })
    }

    /// A reader over the content of `path`, seen as `found`: planned bytes, a spilled file, or
    /// the file on disk (opened without blocking, checked on the handle).
    fn reader_of(&self, path: &RelPath, found: &Found) -> CapResult<Box<dyn io::Read>> {
        Ok(match found {
            Found::Planned(Planned::File { data: Some(d), .. }) => {
                Box::new(io::Cursor::new(d.as_slice().to_vec()))
            }
            Found::Planned(Planned::Spilled { copy, .. }) => {
                Box::new(std::fs::File::open(copy.as_path()).map_err(|e| io_error(path, e))?)
            }
            _ => Box::new(self.open_regular(path)?),
        })
    }

    /// Whether two readers give the same bytes, compared in chunks.
    fn same_stream(a: &mut dyn io::Read, b: &mut dyn io::Read, at: &RelPath) -> CapResult<bool> {
        let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        loop {
            let n = read_full(a, &mut x).map_err(|e| io_error(at, e))?;
            let m = read_full(b, &mut y).map_err(|e| io_error(at, e))?;
            if n != m || x[..n] != y[..m] {
                return Ok(false);
            }
            if n == 0 {
                return Ok(true);
            }
        }
    }

    /// `copy-file`: ensure `path` holds exactly the content of `source`, copied in chunks.
    /// `follow`: `source` may be a link inside the root (the plan's own steps).
    pub fn copy_file(
        &mut self,
        source: &RelPath,
        path: &RelPath,
        mode: Option<u32>,
        follow: bool,
    ) -> CapResult<Done> {
        check_mode(mode)?;
        let parent = self.parent_dir(path)?;
        let src = if follow {
            self.found_through_link(source)?
        } else {
            self.found(source)?
        };
        match src.kind() {
            Some(Kind::File) => {}
            None => return Err(Error::NotFound(format!("{source} does not exist"))),
            Some(_) => return Err(Error::WrongKind(format!("{source} is not a regular file"))),
        }
        let src_size = src.metadata().map_or(0, |m| m.size);
        let found = self.found(path)?;
        let old_mode = found.metadata().map(|m| m.mode);
        let exists = match found.kind() {
            None => false,
            Some(Kind::File) => true,
            Some(Kind::Directory) => {
                return Err(Error::WrongKind(format!("{path} is a directory")));
            }
            Some(_) => {
                return Err(Error::WrongKind(format!(
                    "{path} is a symbolic link or special file; remove it first"
                )));
            }
        };
        let new_mode = mode.or(old_mode).unwrap_or(0o666 & !self.umask);
        let dst_size = found.metadata().map_or(0, |m| m.size);
        if exists
            && dst_size == src_size
            && Self::same_stream(
                &mut *self.reader_of(source, &src)?,
                &mut *self.reader_of(path, &found)?,
                path,
            )?
        {
            return if old_mode == Some(new_mode) {
                Ok(Done::Unchanged)
            } else {
                self.set_mode(path, new_mode)
            };
        }
        let small = self.gate.wants_diffs()
            && src_size <= gate::DIFF_LIMIT as u64
            && dst_size <= gate::DIFF_LIMIT as u64;
        let new_bytes = small.then(|| self.content(source, &src)).transpose()?;
        let old_bytes = (exists && small)
            .then(|| self.content(path, &found))
            .transpose()?;
        let old_hash = if exists {
            Some(self.digest_found(path, &found)?)
        } else {
            None
        };
        let mut from = self.reader_of(source, &src)?;
        self.gate
            .copy_file(
                &self.root,
                &parent,
                path,
                &mut *from,
                new_mode,
                old_hash.map(|h| gate::Prior {
                    hash: Some(h),
                    data: old_bytes.as_deref().map(|d| d.as_slice()),
                }),
                new_bytes.as_deref().map(|d| d.as_slice()),
            )
            .map_err(|e| io_error(path, e))?;
        Ok(if exists { Done::Updated } else { Done::Created })
    }

    /// SHA-256 of what `path`, seen as `found`, holds, read in chunks.
    fn digest_found(&self, path: &RelPath, found: &Found) -> CapResult<String> {
        use sha2::{Digest, Sha256};
        let mut r = self.reader_of(path, found)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf).map_err(|e| io_error(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// `set-mode`: ensure the permission bits of an existing path.
    pub fn set_mode(&mut self, path: &RelPath, mode: u32) -> CapResult<Done> {
        check_mode(Some(mode))?;
        let found = self.found(path)?;
        let Some(meta) = found.metadata() else {
            return Err(Error::NotFound(format!("{path} does not exist")));
        };
        if meta.kind == Kind::Symlink || meta.kind == Kind::Other {
            return Err(Error::WrongKind(format!(
                "{path} is a symbolic link or special file; its mode cannot be set"
            )));
        }
        if meta.mode == mode {
            return Ok(Done::Unchanged);
        }
        // chmod follows a hard link to wherever else the file is: a link from inside the root
        // to a file outside it would let a step change that file's permissions.
        if let Found::Real(m) = &found
            && m.kind == Kind::File
        {
            let links = self
                .root
                .symlink_metadata(path.as_fs())
                .map_err(|e| io_error(path, e))?
                .nlink();
            if links > 1 {
                return Err(Error::Denied(format!(
                    "{path} has {links} hard links; idem does not change the mode of a file \
                     that other paths share (write its content to give it a file of its own)"
                )));
            }
        }
        self.gate
            .chmod(&self.root, path, mode, &found)
            .map_err(|e| io_error(path, e))?;
        Ok(Done::Updated)
    }

    /// `remove`: ensure nothing is at `path`.
    pub fn remove(&mut self, path: &RelPath, recursive: bool) -> CapResult<Done> {
        if path.is_root() {
            return Err(Error::Denied("refusing to remove the root itself".into()));
        }
        let found = self.found(path)?;
        let Some(kind) = found.kind() else {
            return Ok(Done::Unchanged);
        };
        if kind == Kind::Directory {
            if let Some(p) = self.holds_protected(path) {
                return Err(Error::Denied(format!(
                    "{path} holds idem's own state ({}); refusing to remove it",
                    p.display()
                )));
            }
            // A name that is not UTF-8 is not listed, but the directory is not empty: apply's
            // rmdir would fail where the dry run said `would remove`.
            if !recursive && {
                let (entries, unreadable) = self.list_dir_counting(path)?;
                !entries.is_empty() || unreadable > 0
            } {
                return Err(Error::NotEmpty(format!(
                    "{path} is a directory that is not empty; set recursive to remove it"
                )));
            }
            self.gate
                .rmdir(&self.root, path, recursive)
                .map_err(|e| io_error(path, e))?;
            // Directories under it may come back as other directories (or links).
            self.real_dirs.borrow_mut().clear();
        } else {
            self.gate
                .unlink(&self.root, None, path)
                .map_err(|e| io_error(path, e))?;
        }
        Ok(Done::Removed)
    }

    /// `remove-files`: remove many files in one call.
    ///
    /// Paths come grouped by directory (a cleanup removes a directory's files together), so
    /// each directory is opened once and its files are looked at and removed by name, one
    /// system call each, instead of resolving every path from the root again.
    pub fn remove_files(&mut self, paths: &[RelPath]) -> CapResult<Vec<Done>> {
        self.remove_files_before(paths, None)
    }

    /// `remove-stale-files`: as `remove-files`, leaving (as `unchanged`) a file whose
    /// modification time is no longer before `cutoff` when it comes to remove it. Under apply
    /// the time is read right before the unlink (a log rotated since the listing is fresh
    /// now); under a dry run the disk does not change, and the listing's time is the same.
    pub fn remove_stale_files(
        &mut self,
        paths: &[RelPath],
        cutoff: Datetime,
    ) -> CapResult<Vec<Done>> {
        self.remove_files_before(paths, Some(cutoff))
    }

    fn remove_files_before(
        &mut self,
        paths: &[RelPath],
        cutoff: Option<Datetime>,
    ) -> CapResult<Vec<Done>> {
        let mut out = Vec::with_capacity(paths.len());
        let mut current: Option<(RelPath, Option<Dir>)> = None;
        for path in paths {
            if path.is_root() {
                return Err(Error::WrongKind(
                    "the root is a directory; remove-files takes files only".into(),
                ));
            }
            let parent = path.parent().unwrap_or_default();
            if current.as_ref().is_none_or(|(p, _)| *p != parent) {
                let dir = match self.root.open_dir(parent.as_fs()) {
                    Ok(d) => Some(d),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) =>
                    {
                        None
                    }
                    Err(e) => return Err(io_error(&parent, e)),
                };
                current = Some((parent.clone(), dir));
            }
            let dir = current.as_ref().and_then(|(_, d)| d.as_ref());
            let listed = self
                .listed
                .borrow()
                .get(&parent)
                .map(|entries| entries.get(path.file_name()).copied());
            let found = match (self.gate.planned(path), listed, dir) {
                (Some(f), ..) => f,
                (None, Some(None), _) | (None, None, None) => Found::Absent,
                (None, Some(Some(meta)), _) => Found::Real(meta),
                (None, None, Some(d)) => real_state(path, d.symlink_metadata(path.file_name()))?,
            };
            let fresh = match (cutoff, found.metadata()) {
                (Some(c), Some(m)) => {
                    (m.modified.seconds, m.modified.nanoseconds) >= (c.seconds, c.nanoseconds)
                }
                _ => false,
            };
            if fresh {
                out.push(Done::Unchanged);
                continue;
            }
            match found.kind() {
                None => out.push(Done::Unchanged),
                Some(Kind::Directory) => {
                    return Err(Error::WrongKind(format!(
                        "{path} is a directory; remove-files takes files only"
                    )));
                }
                Some(_) => {
                    self.gate
                        .unlink(&self.root, dir, path)
                        .map_err(|e| io_error(path, e))?;
                    out.push(Done::Removed);
                }
            }
        }
        Ok(out)
    }

    /// Group commit for the rest of the step (see [`Disk`]): writes are staged and made
    /// durable together at the next barrier.
    pub fn begin_group(&mut self) {
        self.gate.begin_group(&self.root);
    }

    /// The barrier, if `path` is (or holds) a staged write: so that any call about a path
    /// sees this run's own writes in place.
    pub fn settle_for(&mut self, path: &RelPath) -> CapResult<()> {
        if self.gate.staged_at(path) {
            return self.settle();
        }
        Ok(())
    }

    /// The barrier: every write since the last one durable and in place.
    pub fn settle(&mut self) -> CapResult<()> {
        self.gate.settle(&self.root).map_err(barrier_error)
    }

    /// Settle, and end the group commit: later writes are durable one by one again.
    pub fn end_group(&mut self) -> CapResult<()> {
        self.gate.end_group(&self.root).map_err(barrier_error)
    }

    /// Remove temporary files that a killed run left behind, anywhere under the root (a dry
    /// run's sink removes none).
    pub fn sweep_temporaries(&mut self) -> io::Result<usize> {
        self.gate.sweep_temporaries(&self.root)
    }
}

/// A failed group-commit barrier: the writes it covered are not known to be durable.
fn barrier_error(e: io::Error) -> Error {
    Error::Io(format!(
        "making this step's writes durable (sync of the root's filesystem, then renames): {e}"
    ))
}

impl crate::cap::Barrier for FsCap {
    fn settle(&mut self) -> CapResult<()> {
        FsCap::settle(self)
    }
}

impl crate::cap::PathProbe for FsCap {
    fn probe(&self, path: &RelPath) -> CapResult<Option<Metadata>> {
        self.stat(path)
    }

    fn check(&self, path: &RelPath, grants: Option<&[RelPath]>) -> CapResult<()> {
        self.check_real(path, false, grants)
    }

    fn generation(&self) -> u64 {
        self.gate.generation()
    }

    fn planned(&self, path: &RelPath) -> CapResult<crate::cap::PlannedContent> {
        use crate::cap::PlannedContent as P;
        Ok(match self.found(path)? {
            Found::Absent => P::Absent,
            Found::Real(_) => P::OnDisk,
            Found::Planned(Planned::Spilled { copy, .. }) => P::Spilled(copy),
            f @ Found::Planned(Planned::File { .. }) => P::Bytes(self.content(path, &f)?),
            Found::Planned(Planned::Dir { .. }) => {
                return Err(Error::WrongKind(format!("{path} is a directory")));
            }
        })
    }

    fn unmirror(&mut self, path: &RelPath) {
        self.gate.unmirror(path);
    }

    fn is_dir(&self, path: &RelPath) -> bool {
        self.found(path)
            .and_then(|f| FsCap::is_dir(self, path, &f))
            .unwrap_or(false)
    }

    fn mirror(&mut self, path: &RelPath, copy: Arc<PathBuf>) {
        let size = std::fs::metadata(copy.as_path()).map_or(0, |m| m.len());
        self.gate.mirror(path, copy, size, 0o666 & !self.umask);
    }
}

impl Default for RelPath {
    fn default() -> Self {
        RelPath::root()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, Policy};

    fn p(s: &str) -> RelPath {
        Policy::new(Mode::Apply).resolve(s).unwrap()
    }

    /// A root on disk with a few entries, and the capability over it with either sink.
    fn cap(dry_run: bool) -> (tempfile::TempDir, FsCap) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d/sub")).unwrap();
        std::fs::write(t.path().join("d/f"), "f\n").unwrap();
        std::fs::write(t.path().join("top"), "top\n").unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("out")).unwrap();
        let root = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let sink: Box<dyn Sink + Send> = if dry_run {
            Box::new(Overlay::new())
        } else {
            Box::new(Disk::default())
        };
        (t, FsCap::new(root, sink, false))
    }

    fn names(fs: &FsCap, dir: &str) -> Vec<String> {
        fs.list_dir(&p(dir))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    /// `stat-many` answers each path exactly as `stat` does, in order, under either sink:
    /// files, directories, links, absent paths, a path under a file, one leading out of the
    /// root, the root, paths planned by an earlier call of a dry run, and a refused path.
    #[test]
    fn stat_many_answers_each_path_as_stat_does() {
        for dry in [false, true] {
            let (_t, mut fs) = cap(dry);
            fs.create_dir(&p("d/planned"), None).unwrap();
            fs.write_atomic(&p("d/planned/x"), b"x".to_vec(), None)
                .unwrap();
            let names = [
                "d/f",
                "d/sub",
                "d/missing",
                "top",
                "top/under",
                "out",
                "out/passwd",
                "",
                "d/planned",
                "d/planned/x",
                "d/f",
                "nowhere/deep/x",
                "d/sub",
            ];
            let paths: Vec<CapResult<RelPath>> = names
                .iter()
                .map(|n| Ok(p(n)))
                .chain([Err(Error::Denied("refused".into()))])
                .collect();
            let many = fs.stat_many(&paths, false);
            let one: Vec<_> = paths
                .iter()
                .map(|r| r.clone().and_then(|rel| fs.stat(&rel)))
                .collect();
            assert_eq!(format!("{many:?}"), format!("{one:?}"), "dry run: {dry}");
            assert!(matches!(
                many[0],
                Ok(Some(Metadata {
                    kind: Kind::File,
                    ..
                }))
            ));
            assert!(matches!(many[2], Ok(None)));
            assert!(matches!(
                many[9],
                Ok(Some(Metadata {
                    kind: Kind::File,
                    ..
                }))
            ));
            assert!(matches!(many[13], Err(Error::Denied(_))));
        }
    }

    /// Issue 20: `stat-many` checks idem's state from the parent handles it opens, and refuses
    /// exactly what `check_real` and `stat` refuse.
    #[test]
    fn stat_many_refuses_paths_into_idems_state_as_check_real_does() {
        let (t, mut fs) = cap(false);
        std::fs::create_dir(t.path().join("state")).unwrap();
        std::fs::write(t.path().join("state/db"), "s").unwrap();
        std::os::unix::fs::symlink("state", t.path().join("link")).unwrap();
        std::fs::create_dir(t.path().join("via")).unwrap();
        std::os::unix::fs::symlink("../state", t.path().join("via/up")).unwrap();
        let state = std::fs::canonicalize(t.path().join("state")).unwrap();
        fs.protect(vec![state]);
        let names = [
            "state/db",
            "link/db",
            "via/up",
            "via/up/db",
            "d/f",
            "link",
            "state",
            "d/sub",
        ];
        let paths: Vec<CapResult<RelPath>> = names.iter().map(|n| Ok(p(n))).collect();
        let many = fs.stat_many(&paths, true);
        let one: Vec<_> = paths
            .iter()
            .map(|r| {
                r.clone().and_then(|rel| {
                    fs.check_real(&rel, false, None)
                        .and_then(|()| fs.stat(&rel))
                })
            })
            .collect();
        assert_eq!(format!("{many:?}"), format!("{one:?}"));
        for (name, got) in names.iter().zip(&many) {
            let refused = matches!(got, Err(Error::Denied(_)));
            let expect = ["state/db", "link/db", "via/up/db", "state"].contains(name);
            assert_eq!(refused, expect, "{name}: {got:?}");
        }
    }

    /// The same calls give the same answers and the same changes under either sink, and
    /// later calls see earlier ones: what makes a dry run predict its apply.
    #[test]
    fn both_sinks_answer_alike_and_later_calls_see_earlier_ones() {
        let mut seen = Vec::new();
        for dry in [false, true] {
            let (_t, mut fs) = cap(dry);
            let mut log = Vec::new();
            log.push(format!("{:?}", fs.create_dir(&p("d/new/deep"), None)));
            log.push(format!(
                "{:?}",
                fs.write_atomic(&p("d/new/deep/x"), b"1".to_vec(), Some(0o600))
            ));
            log.push(format!("{:?}", fs.read(&p("d/new/deep/x"))));
            log.push(format!(
                "{:?}",
                fs.write_atomic(&p("d/new/deep/x"), b"1".to_vec(), None)
            ));
            log.push(format!(
                "{:?}",
                fs.stat(&p("d/new/deep/x")).map(|m| m.map(|m| m.mode))
            ));
            log.push(format!("{:?}", fs.remove(&p("d/sub"), false)));
            log.push(format!("{:?}", names(&fs, "d")));
            log.push(format!("{:?}", fs.remove_files(&[p("d/f"), p("d/none")])));
            log.push(format!("{:?}", names(&fs, "d")));
            log.push(format!("{:?}", fs.remove(&p("d"), true)));
            log.push(format!("{:?}", fs.stat(&p("d/new"))));
            log.push(format!("{:?}", fs.create_dir(&p("d"), Some(0o700))));
            log.push(format!("{:?}", names(&fs, "d")));
            let changes: Vec<String> = fs
                .take_changes()
                .iter()
                .map(|c| format!("{} {}", c.kind.as_str(), c.path))
                .collect();
            seen.push((log, changes));
        }
        assert_eq!(seen[0], seen[1], "apply vs dry run");
        let (log, changes) = &seen[0];
        assert_eq!(log[2], "Ok([49])");
        assert_eq!(log[3], "Ok(Change::Unchanged)");
        assert_eq!(log[6], r#"["f", "new"]"#);
        assert_eq!(log[7], "Ok([Change::Removed, Change::Unchanged])");
        assert_eq!(log[10], "Ok(None)");
        assert_eq!(log[12], "[]");
        assert_eq!(
            changes,
            &[
                "create-dir d/new",
                "create-dir d/new/deep",
                "create-file d/new/deep/x",
                "remove-dir d/sub",
                "remove-file d/f",
                "remove-dir d",
                "create-dir d",
            ]
        );
    }

    #[test]
    fn a_dry_run_leaves_the_disk_as_it_was() {
        let (t, mut fs) = cap(true);
        fs.write_atomic(&p("top"), b"new\n".to_vec(), Some(0o600))
            .unwrap();
        fs.remove(&p("d"), true).unwrap();
        fs.create_dir(&p("e/f"), None).unwrap();
        assert_eq!(fs.read(&p("top")).unwrap(), b"new\n");
        assert_eq!(std::fs::read(t.path().join("top")).unwrap(), b"top\n");
        assert!(t.path().join("d/f").exists());
        assert!(!t.path().join("e").exists());
    }

    #[test]
    fn guards_come_before_any_change() {
        for dry in [false, true] {
            let (_t, mut fs) = cap(dry);
            let table: Vec<(&str, CapResult<Done>)> = vec![
                ("mode", fs.write_atomic(&p("m"), vec![], Some(0o10000))),
                ("no parent", fs.write_atomic(&p("no/f"), vec![], None)),
                ("parent file", fs.write_atomic(&p("top/f"), vec![], None)),
                ("over dir", fs.write_atomic(&p("d"), vec![], None)),
                ("over link", fs.write_atomic(&p("out"), vec![], None)),
                ("dir over file", fs.create_dir(&p("top/x"), None)),
                ("not empty", fs.remove(&p("d"), false)),
                ("root", fs.remove(&RelPath::root(), true)),
                ("link mode", fs.set_mode(&p("out"), 0o700)),
                ("missing mode", fs.set_mode(&p("none"), 0o700)),
            ];
            for (what, r) in table {
                assert!(r.is_err(), "{what} (dry run {dry}): {r:?}");
            }
            assert!(fs.take_changes().is_empty(), "dry run {dry}");
        }
    }

    /// Issue 14: a cleanup judged age when it listed and unlinked a whole walk later: a log
    /// rotated in between was deleted fresh. The time is read again right before the unlink.
    #[test]
    fn a_file_rewritten_after_the_listing_is_not_removed_as_stale() {
        for dry in [false, true] {
            let (t, mut fs) = cap(dry);
            let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(500);
            for name in ["d/f", "top"] {
                std::fs::File::options()
                    .write(true)
                    .open(t.path().join(name))
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
            assert_eq!(fs.list_dir(&p("d")).unwrap().len(), 2);
            // Rotated in place between the listing and the removal (apply only: a dry run's
            // disk does not change, and its listing is as true as a new look).
            if !dry {
                std::fs::write(t.path().join("d/f"), "rotated\n").unwrap();
            }
            let cutoff = Datetime {
                seconds: 1_000,
                nanoseconds: 0,
            };
            let done = fs
                .remove_stale_files(&[p("d/f"), p("top")], cutoff)
                .unwrap();
            let want = if dry {
                [Done::Removed, Done::Removed]
            } else {
                [Done::Unchanged, Done::Removed]
            };
            assert_eq!(done, want, "dry run {dry}");
            assert!(t.path().join("d/f").exists(), "dry run {dry}");
        }
    }

    /// A FIFO swapped in between the lstat and the open must not block the run forever: the
    /// open does not block, and the open handle is checked.
    #[test]
    fn opening_a_fifo_for_reading_neither_blocks_nor_reads_it() {
        let (t, fs) = cap(false);
        let fifo = std::ffi::CString::new(t.path().join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        match fs.open_regular(&p("fifo")) {
            Err(Error::WrongKind(m)) => assert!(m.contains("not a regular file"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_symlink_out_of_the_root_is_denied_by_kind_not_by_message() {
        let (_t, fs) = cap(false);
        match fs.read(&p("out/passwd")) {
            Err(Error::Denied(m)) => assert!(m.contains("outside the root"), "{m}"),
            other => panic!("{other:?}"),
        }
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(io_error(&p("x"), eacces), Error::Io(_)));
    }
}
