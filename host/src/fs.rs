//! The file capability: files and directories under the root, and nothing else.
//!
//! It owns a `cap_std` handle on the root, so every open is resolved beneath it by the
//! operating system: absolute paths and `..` are refused lexically by [`Policy::resolve`], and
//! symbolic links that lead out of the root are refused by `cap_std` when they are followed.
//!
//! Every mutating method decides what to do from the [`View`] of the path, then reaches one
//! point where it either writes to disk (apply) or records the change in a virtual overlay
//! (dry run). The decision code is the same in both modes, and later calls see the overlay,
//! so a dry run of dependent steps predicts exactly what an apply does.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::sync::Arc;

use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};
use sha2::{Digest, Sha256};

use crate::bindings::fs::{Change as Done, Entry, Kind, Metadata};
use crate::bindings::types::{Datetime, Error};
use crate::change::{Change, ChangeKind};
use crate::policy::{Policy, RelPath};

/// Files larger than this get no diff, only a note.
const DIFF_LIMIT: usize = 1 << 20;
/// The largest chunk a reader hands out per call.
const MAX_CHUNK: u32 = 4 << 20;
/// Temporary files of atomic writes carry this in their name, so a run after a crash can
/// recognise and remove the ones a killed run left.
pub const TMP_MARKER: &str = ".idem-tmp-";

/// A planned state of one path under a dry run.
#[derive(Clone, Debug)]
enum Node {
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
    /// Planned to be removed.
    Gone,
}

/// How this run sees a path: on disk, planned, or absent.
#[derive(Clone, Debug)]
enum View {
    Absent,
    Real(Metadata),
    Planned(Node),
}

impl View {
    fn metadata(&self) -> Option<Metadata> {
        match self {
            View::Absent | View::Planned(Node::Gone) => None,
            View::Real(m) => Some(*m),
            View::Planned(Node::Dir { mode, modified, .. }) => Some(Metadata {
                kind: Kind::Directory,
                size: 0,
                mode: *mode,
                modified: *modified,
            }),
            View::Planned(Node::File {
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

    fn kind(&self) -> Option<Kind> {
        self.metadata().map(|m| m.kind)
    }
}

/// Read access to one file, handed to the guest as a `reader` resource.
pub enum Reader {
    File(cap_std::fs::File),
    Memory { data: Arc<Vec<u8>>, pos: usize },
}

impl Reader {
    /// Up to `max` next bytes; empty at end of file.
    pub fn next_chunk(&mut self, max: u32) -> io::Result<Vec<u8>> {
        let max = max.clamp(1, MAX_CHUNK) as usize;
        match self {
            Reader::File(f) => {
                let mut buf = vec![0; max];
                let mut filled = 0;
                // Fill the buffer: fewer calls across the boundary for the same bytes.
                while filled < max {
                    match f.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok(buf)
            }
            Reader::Memory { data, pos } => {
                let end = (*pos + max).min(data.len());
                let chunk = data[*pos..end].to_vec();
                *pos = end;
                Ok(chunk)
            }
        }
    }
}

/// The file capability's state for one run.
pub struct FsCap {
    root: Dir,
    dry_run: bool,
    /// Planned states of paths, under a dry run. Empty under apply.
    overlay: BTreeMap<RelPath, Node>,
    /// Changes made or planned since the last [`FsCap::take_changes`].
    changes: Vec<Change>,
    /// The run's clock, used as the modification time of planned writes.
    now: Datetime,
    /// The process umask, for the mode of new files and directories.
    umask: u32,
    /// Whether to compute diffs of file updates.
    diffs: bool,
    tmp_counter: u64,
    /// Under a dry run, the kinds of the entries of recently listed directories, as on disk.
    /// Nothing on disk changes in a dry run, so they stay true, and a cleanup's removals need
    /// not stat again every file its listing just saw.
    listed: RefCell<HashMap<RelPath, HashMap<String, Kind>>>,
}

/// How many directories' listings a dry run remembers.
const LISTED_DIRS: usize = 1024;

/// The result of a capability call as the guest sees it.
pub type CapResult<T> = Result<T, Error>;

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

/// A path's view from its `lstat` on disk: absent when it (or a parent) is not there.
fn real_view(path: &RelPath, lstat: io::Result<cap_std::fs::Metadata>) -> CapResult<View> {
    match lstat {
        Ok(m) => Ok(View::Real(metadata_of(&m))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(View::Absent)
        }
        Err(e) => Err(io_error(path, e)),
    }
}

/// Map an I/O error on `path` to the error the guest sees.
pub fn io_error(path: &RelPath, e: io::Error) -> Error {
    let msg = format!("{path}: {e}");
    if e.to_string().contains("outside of the filesystem") {
        return Error::Denied(format!(
            "{path} leads outside the root through a symbolic link"
        ));
    }
    match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound(msg),
        io::ErrorKind::AlreadyExists
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory => Error::WrongKind(msg),
        io::ErrorKind::DirectoryNotEmpty => Error::NotEmpty(msg),
        _ => Error::Io(msg),
    }
}

/// SHA-256 of `data`, in hex.
pub fn hash(data: &[u8]) -> String {
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

fn umask() -> u32 {
    // SAFETY: umask only swaps the process mask; it is read and restored at once, before any
    // other thread creates files.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    }
}

impl FsCap {
    /// The capability over `root`, opened by the caller (the only ambient-authority step).
    pub fn new(root: Dir, dry_run: bool, now: Datetime, diffs: bool) -> Self {
        FsCap {
            root,
            dry_run,
            overlay: BTreeMap::new(),
            changes: Vec::new(),
            now,
            umask: umask(),
            diffs,
            tmp_counter: 0,
            listed: RefCell::new(HashMap::new()),
        }
    }

    /// The changes since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn record(&mut self, change: Change) {
        tracing::debug!(kind = change.kind.as_str(), path = %change.path, dry_run = self.dry_run, "change");
        self.changes.push(change);
    }

    /// How this run sees `path`.
    fn view(&self, path: &RelPath) -> CapResult<View> {
        match self.planned(path) {
            Some(v) => Ok(v),
            None => real_view(path, self.root.symlink_metadata(path.as_fs())),
        }
    }

    /// What the overlay says of `path`, when it decides (under apply it never does).
    fn planned(&self, path: &RelPath) -> Option<View> {
        if !self.overlay.is_empty() {
            let mut hidden = false;
            for anc in path.ancestors() {
                match self.overlay.get(&anc) {
                    Some(Node::Gone) | Some(Node::File { .. }) => return Some(View::Absent),
                    Some(Node::Dir {
                        hide_real: true, ..
                    }) => hidden = true,
                    _ => {}
                }
            }
            match self.overlay.get(path) {
                Some(Node::Gone) => return Some(View::Absent),
                Some(node) => return Some(View::Planned(node.clone())),
                None if hidden => return Some(View::Absent),
                None => {}
            }
        }
        None
    }

    /// True when `view` is a directory, following a symbolic link on disk (as `mkdir -p` does).
    /// A link that leads out of the root is `denied`, so the guest hears why, not "not a
    /// directory".
    fn is_dir(&self, path: &RelPath, view: &View) -> CapResult<bool> {
        match view {
            View::Real(m) if m.kind == Kind::Symlink => match self.root.metadata(path.as_fs()) {
                Ok(m) => Ok(m.is_dir()),
                Err(e) => match io_error(path, e) {
                    denied @ Error::Denied(_) => Err(denied),
                    _ => Ok(false),
                },
            },
            v => Ok(v.kind() == Some(Kind::Directory)),
        }
    }

    /// The current content of a file as this run sees it.
    fn content(&self, path: &RelPath, view: &View) -> CapResult<Arc<Vec<u8>>> {
        match view {
            View::Planned(Node::File { data: Some(d), .. }) => Ok(d.clone()),
            View::Planned(Node::File { data: None, .. }) | View::Real(_) => {
                if view.kind() != Some(Kind::File) {
                    return Err(Error::WrongKind(format!("{path} is not a regular file")));
                }
                self.root
                    .read(path.as_fs())
                    .map(Arc::new)
                    .map_err(|e| io_error(path, e))
            }
            View::Planned(Node::Dir { .. }) => {
                Err(Error::WrongKind(format!("{path} is a directory")))
            }
            View::Absent | View::Planned(Node::Gone) => {
                Err(Error::NotFound(format!("{path} does not exist")))
            }
        }
    }

    /// `stat`: the metadata of a path, or none.
    pub fn stat(&self, path: &RelPath) -> CapResult<Option<Metadata>> {
        Ok(self.view(path)?.metadata())
    }

    /// `read`: the whole content of a file.
    pub fn read(&self, path: &RelPath) -> CapResult<Vec<u8>> {
        let view = self.view(path)?;
        Ok(Arc::unwrap_or_clone(self.content(path, &view)?))
    }

    /// `open-reader`: a chunked reader over a file.
    pub fn open_reader(&self, path: &RelPath) -> CapResult<Reader> {
        let view = self.view(path)?;
        match &view {
            View::Planned(Node::File { data: Some(d), .. }) => Ok(Reader::Memory {
                data: d.clone(),
                pos: 0,
            }),
            v if v.kind() == Some(Kind::File) => self
                .root
                .open(path.as_fs())
                .map(Reader::File)
                .map_err(|e| io_error(path, e)),
            v if v.kind().is_none() => Err(Error::NotFound(format!("{path} does not exist"))),
            _ => Err(Error::WrongKind(format!("{path} is not a regular file"))),
        }
    }

    /// `list-dir`: every entry of a directory with metadata, sorted by name.
    pub fn list_dir(&self, path: &RelPath) -> CapResult<Vec<Entry>> {
        let view = self.view(path)?;
        if view.kind().is_none() {
            return Err(Error::NotFound(format!("{path} does not exist")));
        }
        if !self.is_dir(path, &view)? {
            return Err(Error::WrongKind(format!("{path} is not a directory")));
        }
        let mut entries: BTreeMap<String, Metadata> = BTreeMap::new();
        let real = !matches!(
            view,
            View::Planned(Node::Dir {
                hide_real: true,
                ..
            })
        );
        if real {
            let mut kinds = self.dry_run.then(HashMap::new);
            let dir = self
                .root
                .read_dir(path.as_fs())
                .map_err(|e| io_error(path, e))?;
            for entry in dir {
                let entry = entry.map_err(|e| io_error(path, e))?;
                let Ok(name) = entry.file_name().into_string() else {
                    tracing::warn!(dir = %path, "skipping an entry whose name is not UTF-8");
                    continue;
                };
                if path.is_root() && name == crate::policy::STATE_DIR {
                    continue;
                }
                let meta = metadata_of(
                    &entry
                        .metadata()
                        .map_err(|e| io_error(&path.join(&name), e))?,
                );
                if let Some(k) = &mut kinds {
                    k.insert(name.clone(), meta.kind);
                }
                entries.insert(name, meta);
            }
            if let Some(kinds) = kinds {
                let mut listed = self.listed.borrow_mut();
                if listed.len() >= LISTED_DIRS {
                    listed.clear();
                }
                listed.insert(path.clone(), kinds);
            }
        }
        if !self.overlay.is_empty() {
            for (child, node) in self.children(path) {
                let name = child.file_name().to_string();
                match View::Planned(node.clone()).metadata() {
                    Some(m) => entries.insert(name, m),
                    None => entries.remove(&name),
                };
            }
        }
        Ok(entries
            .into_iter()
            .map(|(name, metadata)| Entry { name, metadata })
            .collect())
    }

    /// Overlay entries directly under `dir`.
    fn children<'a>(&'a self, dir: &RelPath) -> impl Iterator<Item = (&'a RelPath, &'a Node)> + 'a {
        let prefix = if dir.is_root() {
            String::new()
        } else {
            format!("{}/", dir.as_str())
        };
        let start = RelPath::root().join(&prefix);
        let len = prefix.len();
        self.overlay
            .range(start..)
            .take_while(move |(k, _)| k.as_str().starts_with(&prefix))
            .filter(move |(k, _)| !k.as_str()[len..].contains('/'))
    }

    /// Drop overlay entries strictly under `dir`.
    fn purge_under(&mut self, dir: &RelPath) {
        let prefix = format!("{}/", dir.as_str());
        let doomed: Vec<RelPath> = self
            .overlay
            .range(RelPath::root().join(&prefix)..)
            .take_while(|(k, _)| k.as_str().starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.overlay.remove(&k);
        }
    }

    fn check_mode(mode: Option<u32>) -> CapResult<()> {
        match mode {
            Some(m) if m > 0o7777 => {
                Err(Error::Invalid(format!("mode {m:o} has bits beyond 0o7777")))
            }
            _ => Ok(()),
        }
    }

    /// fsync a directory, so a rename or creation in it survives a power cut.
    fn sync_dir(&self, dir: &RelPath) -> CapResult<()> {
        let d = self
            .root
            .open_dir(dir.as_fs())
            .map_err(|e| io_error(dir, e))?;
        let f = d.open(".").map_err(|e| io_error(dir, e))?;
        f.sync_all().map_err(|e| io_error(dir, e))
    }

    /// `create-dir`: ensure a directory and its parents.
    pub fn create_dir(&mut self, path: &RelPath, mode: Option<u32>) -> CapResult<Done> {
        Self::check_mode(mode)?;
        let mut result = Done::Unchanged;
        let chain: Vec<RelPath> = path
            .ancestors()
            .chain((!path.is_root()).then(|| path.clone()))
            .collect();
        for dir in &chain {
            let is_target = dir == path;
            let view = self.view(dir)?;
            if view.kind().is_none() {
                let mode = if is_target { mode } else { None };
                self.make_dir(dir, mode)?;
                if is_target {
                    result = Done::Created;
                }
            } else if !self.is_dir(dir, &view)? {
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

    fn make_dir(&mut self, dir: &RelPath, mode: Option<u32>) -> CapResult<()> {
        let effective = mode.unwrap_or(0o777 & !self.umask);
        if self.dry_run {
            self.overlay.insert(
                dir.clone(),
                Node::Dir {
                    mode: effective,
                    hide_real: true,
                    modified: self.now,
                },
            );
        } else {
            self.root
                .create_dir(dir.as_fs())
                .map_err(|e| io_error(dir, e))?;
            if let Some(m) = mode {
                self.root
                    .set_permissions(dir.as_fs(), Permissions::from_mode(m))
                    .map_err(|e| io_error(dir, e))?;
            }
            self.sync_dir(&dir.parent().unwrap_or_default())?;
        }
        self.record(Change::new(ChangeKind::CreateDir, dir.as_str()));
        Ok(())
    }

    /// `write-atomic`: ensure a file's content (and mode), atomically.
    pub fn write_atomic(
        &mut self,
        path: &RelPath,
        content: Vec<u8>,
        mode: Option<u32>,
    ) -> CapResult<Done> {
        Self::check_mode(mode)?;
        let Some(parent) = path.parent() else {
            return Err(Error::WrongKind(
                "the root is a directory, not a file".into(),
            ));
        };
        let pview = self.view(&parent)?;
        if pview.kind().is_none() {
            return Err(Error::NotFound(format!(
                "{path}: parent directory {parent} does not exist"
            )));
        }
        if !self.is_dir(&parent, &pview)? {
            return Err(Error::WrongKind(format!(
                "{path}: {parent} is not a directory"
            )));
        }
        let view = self.view(path)?;
        let (old, old_mode) = match view.kind() {
            None => (None, None),
            Some(Kind::File) => (
                Some(self.content(path, &view)?),
                view.metadata().map(|m| m.mode),
            ),
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
        if let Some(old) = &old
            && old.as_slice() == content.as_slice()
        {
            return if old_mode == Some(new_mode) {
                Ok(Done::Unchanged)
            } else {
                self.set_mode(path, new_mode)
            };
        }
        let mut change = Change::new(
            if old.is_some() {
                ChangeKind::UpdateFile
            } else {
                ChangeKind::CreateFile
            },
            path.as_str(),
        );
        change.before = old.as_ref().map(|o| hash(o));
        change.after = Some(hash(&content));
        if self.diffs {
            change.diff = Some(diff(
                path.as_str(),
                old.as_ref().map(|o| o.as_slice()).unwrap_or_default(),
                &content,
            ));
        }
        if self.dry_run {
            self.overlay.insert(
                path.clone(),
                Node::File {
                    size: content.len() as u64,
                    data: Some(Arc::new(content)),
                    mode: new_mode,
                    modified: self.now,
                },
            );
        } else {
            self.replace_file(&parent, path, &content, new_mode)?;
        }
        self.record(change);
        Ok(if old.is_some() {
            Done::Updated
        } else {
            Done::Created
        })
    }

    /// Write `content` to a temporary file beside `path`, fsync it, rename it over `path`,
    /// fsync the directory. On failure the temporary file is removed.
    fn replace_file(
        &mut self,
        parent: &RelPath,
        path: &RelPath,
        content: &[u8],
        mode: u32,
    ) -> CapResult<()> {
        self.tmp_counter += 1;
        let tmp = parent.join(&format!(
            ".{}{}{}-{}",
            path.file_name(),
            TMP_MARKER,
            std::process::id(),
            self.tmp_counter
        ));
        let write = || -> io::Result<()> {
            let mut f = self.root.open_with(
                tmp.as_fs(),
                OpenOptions::new().write(true).create_new(true).mode(mode),
            )?;
            f.write_all(content)?;
            // The create mode went through the umask; set the exact bits.
            f.set_permissions(Permissions::from_mode(mode))?;
            f.sync_all()?;
            self.root.rename(tmp.as_fs(), &self.root, path.as_fs())
        };
        if let Err(e) = write() {
            let _ = self.root.remove_file(tmp.as_fs());
            return Err(io_error(path, e));
        }
        self.sync_dir(parent)
    }

    /// `set-mode`: ensure the permission bits of an existing path.
    pub fn set_mode(&mut self, path: &RelPath, mode: u32) -> CapResult<Done> {
        Self::check_mode(Some(mode))?;
        let view = self.view(path)?;
        let Some(meta) = view.metadata() else {
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
        if self.dry_run {
            let node = match view {
                View::Planned(Node::Dir {
                    hide_real,
                    modified,
                    ..
                }) => Node::Dir {
                    mode,
                    hide_real,
                    modified,
                },
                View::Planned(Node::File {
                    data,
                    size,
                    modified,
                    ..
                }) => Node::File {
                    data,
                    size,
                    mode,
                    modified,
                },
                _ if meta.kind == Kind::Directory => Node::Dir {
                    mode,
                    hide_real: false,
                    modified: meta.modified,
                },
                _ => Node::File {
                    data: None,
                    size: meta.size,
                    mode,
                    modified: meta.modified,
                },
            };
            self.overlay.insert(path.clone(), node);
        } else {
            self.root
                .set_permissions(path.as_fs(), Permissions::from_mode(mode))
                .map_err(|e| io_error(path, e))?;
        }
        self.record(Change::new(ChangeKind::SetMode, path.as_str()));
        Ok(Done::Updated)
    }

    /// `remove`: ensure nothing is at `path`.
    pub fn remove(&mut self, path: &RelPath, recursive: bool) -> CapResult<Done> {
        if path.is_root() {
            return Err(Error::Denied("refusing to remove the root itself".into()));
        }
        let view = self.view(path)?;
        let Some(kind) = view.kind() else {
            return Ok(Done::Unchanged);
        };
        if kind == Kind::Directory {
            if !recursive && !self.list_dir(path)?.is_empty() {
                return Err(Error::NotEmpty(format!(
                    "{path} is a directory that is not empty; set recursive to remove it"
                )));
            }
            if self.dry_run {
                self.purge_under(path);
                self.overlay.insert(path.clone(), Node::Gone);
            } else {
                let r = if recursive {
                    self.root.remove_dir_all(path.as_fs())
                } else {
                    self.root.remove_dir(path.as_fs())
                };
                r.map_err(|e| io_error(path, e))?;
            }
            self.record(Change::new(ChangeKind::RemoveDir, path.as_str()));
        } else {
            self.remove_one_file(path)?;
        }
        Ok(Done::Removed)
    }

    fn remove_one_file(&mut self, path: &RelPath) -> CapResult<()> {
        if self.dry_run {
            self.overlay.insert(path.clone(), Node::Gone);
        } else {
            self.root
                .remove_file(path.as_fs())
                .map_err(|e| io_error(path, e))?;
        }
        self.record(Change::new(ChangeKind::RemoveFile, path.as_str()));
        Ok(())
    }

    /// `remove-files`: remove many files in one call.
    ///
    /// Paths come grouped by directory (a cleanup removes a directory's files together), so
    /// each directory is opened once and its files are looked at and removed by name, one
    /// system call each, instead of resolving every path from the root again.
    pub fn remove_files(&mut self, paths: &[RelPath]) -> CapResult<Vec<Done>> {
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
                .map(|kinds| kinds.get(path.file_name()).copied());
            let view = match (self.planned(path), listed, dir) {
                (Some(v), ..) => v,
                (None, Some(None), _) | (None, None, None) => View::Absent,
                (None, Some(Some(kind)), _) => View::Real(Metadata {
                    kind,
                    size: 0,
                    mode: 0,
                    modified: self.now,
                }),
                (None, None, Some(d)) => real_view(path, d.symlink_metadata(path.file_name()))?,
            };
            match view.kind() {
                None => out.push(Done::Unchanged),
                Some(Kind::Directory) => {
                    return Err(Error::WrongKind(format!(
                        "{path} is a directory; remove-files takes files only"
                    )));
                }
                Some(_) => {
                    if self.dry_run {
                        self.overlay.insert(path.clone(), Node::Gone);
                    } else {
                        // Under apply the view came from the disk, so the directory is open.
                        let d =
                            dir.ok_or_else(|| Error::NotFound(format!("{path} does not exist")))?;
                        d.remove_file(path.file_name())
                            .map_err(|e| io_error(path, e))?;
                    }
                    self.record(Change::new(ChangeKind::RemoveFile, path.as_str()));
                    out.push(Done::Removed);
                }
            }
        }
        Ok(out)
    }

    /// Remove temporary files that a killed run left behind, anywhere under the root. Called
    /// only after a crashed run, under the lock, so no live writer owns them.
    pub fn sweep_temporaries(&self) -> io::Result<usize> {
        let mut removed = 0;
        let mut stack = vec![RelPath::root()];
        let mut seen = BTreeSet::new();
        while let Some(dir) = stack.pop() {
            if !seen.insert(dir.clone()) {
                continue;
            }
            let Ok(entries) = self.root.read_dir(dir.as_fs()) else {
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
                    self.root.remove_file(child.as_fs())?;
                    tracing::info!(path = %child, "removed a temporary file left by an interrupted run");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

impl Default for RelPath {
    fn default() -> Self {
        RelPath::root()
    }
}

/// Resolve a guest path against the policy, mapping a refusal to the guest's error.
pub fn resolve(policy: &Policy, path: &str) -> CapResult<RelPath> {
    policy
        .resolve(path)
        .map_err(|e| Error::Denied(e.to_string()))
}

// The WIT interface, implemented on the store's data. Each method resolves the guest's path
// against the policy first; denial is an error value, never a trap.
mod host {
    use wasmtime::component::Resource;

    use super::*;
    use crate::bindings::fs::{Host, HostReader};
    use crate::engine::Ctx;

    type R<T> = wasmtime::Result<CapResult<T>>;

    impl Ctx {
        fn path(&self, p: &str) -> CapResult<RelPath> {
            resolve(&self.policy, p)
        }
    }

    impl HostReader for Ctx {
        fn next(&mut self, reader: Resource<Reader>, max: u32) -> R<Vec<u8>> {
            let r = self.table.get_mut(&reader)?;
            Ok(r.next_chunk(max).map_err(|e| Error::Io(e.to_string())))
        }

        fn drop(&mut self, reader: Resource<Reader>) -> wasmtime::Result<()> {
            self.table.delete(reader)?;
            Ok(())
        }
    }

    impl Host for Ctx {
        fn stat(&mut self, path: String) -> R<Option<Metadata>> {
            Ok(self.path(&path).and_then(|p| self.fs.stat(&p)))
        }

        fn read(&mut self, path: String) -> R<Vec<u8>> {
            Ok(self.path(&path).and_then(|p| self.fs.read(&p)))
        }

        fn open_reader(&mut self, path: String) -> R<Resource<Reader>> {
            let reader = match self.path(&path).and_then(|p| self.fs.open_reader(&p)) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            Ok(Ok(self.table.push(reader)?))
        }

        fn list_dir(&mut self, path: String) -> R<Vec<Entry>> {
            Ok(self.path(&path).and_then(|p| self.fs.list_dir(&p)))
        }

        fn create_dir(&mut self, path: String, mode: Option<u32>) -> R<Done> {
            Ok(self.path(&path).and_then(|p| self.fs.create_dir(&p, mode)))
        }

        fn write_atomic(&mut self, path: String, content: Vec<u8>, mode: Option<u32>) -> R<Done> {
            Ok(self
                .path(&path)
                .and_then(|p| self.fs.write_atomic(&p, content, mode)))
        }

        fn set_mode(&mut self, path: String, mode: u32) -> R<Done> {
            Ok(self.path(&path).and_then(|p| self.fs.set_mode(&p, mode)))
        }

        fn remove(&mut self, path: String, recursive: bool) -> R<Done> {
            Ok(self.path(&path).and_then(|p| self.fs.remove(&p, recursive)))
        }

        fn remove_files(&mut self, paths: Vec<String>) -> R<Vec<Done>> {
            let resolved: CapResult<Vec<RelPath>> = paths.iter().map(|p| self.path(p)).collect();
            Ok(resolved.and_then(|ps| self.fs.remove_files(&ps)))
        }
    }
}
