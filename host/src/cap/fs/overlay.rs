//! The dry run's sink: planned states of paths, kept in memory and seen by later calls.
//!
//! Nothing here touches the disk. A path's planned state is decided by the nearest planned
//! ancestor first: under a planned file or removal nothing exists; under a directory this run
//! created (`hide_real`), what is on disk at that path belongs to the removed past and is
//! hidden; otherwise the path's own entry, if any, decides, and without one the disk does.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Arc;

use cap_std::fs::Dir;

use super::sink::{Found, Planned, Sink};
use crate::bindings::fs::{Kind, Metadata};
use crate::bindings::types::Datetime;
use crate::policy::RelPath;

/// What a write done now would leave as its modification time: the wall clock, as a real
/// write would, not the run's clock (which `--now` may pin elsewhere).
fn wall_clock() -> Datetime {
    crate::cap::clock::system_now()
}

/// One path's entry in the overlay.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Is(Planned),
    /// Planned to be removed.
    Gone,
}

/// Planned contents larger than this are kept in a private file, not in memory.
const SPILL_BYTES: usize = 1 << 20;

/// Planned states of paths under a dry run.
pub struct Overlay {
    nodes: BTreeMap<RelPath, Node>,
    /// Where large planned contents are kept (made on first use, removed with the run).
    scratch: Option<tempfile::TempDir>,
    spilled: u64,
}

impl Overlay {
    pub fn new() -> Self {
        Overlay {
            nodes: BTreeMap::new(),
            scratch: None,
            spilled: 0,
        }
    }

    /// Entries strictly under `dir`, in order.
    fn under<'a>(&'a self, dir: &RelPath) -> impl Iterator<Item = (&'a RelPath, &'a Node)> + 'a {
        let prefix = if dir.is_root() {
            String::new()
        } else {
            format!("{}/", dir.as_str())
        };
        self.nodes
            .range(RelPath::root().join(&prefix)..)
            .take_while(move |(k, _)| k.as_str().starts_with(&prefix))
            .filter(|(k, _)| !k.is_root())
    }

    /// A new file in the dry run's private directory (made on first use), for a content too
    /// large to keep in memory.
    fn spill_file(&mut self) -> io::Result<std::path::PathBuf> {
        if self.scratch.is_none() {
            self.scratch = Some(tempfile::Builder::new().prefix("idem-dry-run-").tempdir()?);
        }
        self.spilled += 1;
        Ok(self
            .scratch
            .as_ref()
            .expect("made above")
            .path()
            .join(format!("{}.planned", self.spilled)))
    }

    /// Forget planned entries strictly under `dir` (it is planned away as a whole).
    fn purge_under(&mut self, dir: &RelPath) {
        let doomed: Vec<RelPath> = self.under(dir).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }
}

impl Sink for Overlay {
    fn planned(&self, path: &RelPath) -> Option<Found> {
        if self.nodes.is_empty() {
            return None;
        }
        let mut hidden = false;
        for anc in path.ancestors() {
            match self.nodes.get(&anc) {
                Some(Node::Gone)
                | Some(Node::Is(Planned::File { .. }))
                | Some(Node::Is(Planned::Spilled { .. })) => {
                    return Some(Found::Absent);
                }
                Some(Node::Is(Planned::Dir {
                    hide_real: true, ..
                })) => hidden = true,
                _ => {}
            }
        }
        match self.nodes.get(path) {
            Some(Node::Gone) => Some(Found::Absent),
            Some(Node::Is(p)) => Some(Found::Planned(p.clone())),
            None if hidden => Some(Found::Absent),
            None => None,
        }
    }

    fn planned_children(&self, dir: &RelPath) -> Vec<(String, Option<Metadata>)> {
        let len = if dir.is_root() {
            0
        } else {
            dir.as_str().len() + 1
        };
        self.under(dir)
            .filter(|(k, _)| !k.as_str()[len..].contains('/'))
            .map(|(k, node)| {
                let meta = match node {
                    Node::Gone => None,
                    Node::Is(p) => {
                        let mut meta = Found::Planned(p.clone()).metadata();
                        // A dry run's database grows as it is written, after its copy was
                        // planned: its size is its copy's now (as `FsCap::found` says).
                        if let (Planned::Spilled { copy, .. }, Some(m)) = (p, &mut meta) {
                            m.size = std::fs::metadata(copy.as_path()).map_or(m.size, |c| c.len());
                        }
                        meta
                    }
                };
                (k.file_name().to_string(), meta)
            })
            .collect()
    }

    fn disk_is_frozen(&self) -> bool {
        true
    }

    fn mkdir(
        &mut self,
        _root: &Dir,
        path: &RelPath,
        _mode: Option<u32>,
        effective: u32,
    ) -> io::Result<()> {
        self.nodes.insert(
            path.clone(),
            Node::Is(Planned::Dir {
                mode: effective,
                hide_real: true,
                modified: wall_clock(),
            }),
        );
        Ok(())
    }

    fn replace_file(
        &mut self,
        _root: &Dir,
        _parent: &RelPath,
        path: &RelPath,
        content: Vec<u8>,
        mode: u32,
    ) -> io::Result<()> {
        let size = content.len() as u64;
        let planned = if content.len() > SPILL_BYTES {
            // A dry run's footprint must not grow with what it plans to write.
            let file = self.spill_file()?;
            std::fs::write(&file, &content)?;
            Planned::Spilled {
                copy: Arc::new(file),
                size,
                mode,
                modified: wall_clock(),
            }
        } else {
            Planned::File {
                size,
                data: Some(Arc::new(content)),
                mode,
                modified: wall_clock(),
            }
        };
        self.nodes.insert(path.clone(), Node::Is(planned));
        Ok(())
    }

    fn copy_file(
        &mut self,
        root: &Dir,
        parent: &RelPath,
        path: &RelPath,
        from: &mut dyn io::Read,
        mode: u32,
    ) -> io::Result<()> {
        let mut head = Vec::new();
        from.take(SPILL_BYTES as u64 + 1).read_to_end(&mut head)?;
        if head.len() <= SPILL_BYTES {
            return self.replace_file(root, parent, path, head, mode);
        }
        let file = self.spill_file()?;
        let mut out = std::fs::File::create(&file)?;
        std::io::Write::write_all(&mut out, &head)?;
        let rest = io::copy(from, &mut out)?;
        self.nodes.insert(
            path.clone(),
            Node::Is(Planned::Spilled {
                copy: Arc::new(file),
                size: head.len() as u64 + rest,
                mode,
                modified: wall_clock(),
            }),
        );
        Ok(())
    }

    fn chmod(&mut self, _root: &Dir, path: &RelPath, mode: u32, current: &Found) -> io::Result<()> {
        let planned = match current.clone() {
            Found::Planned(Planned::Dir {
                hide_real,
                modified,
                ..
            }) => Planned::Dir {
                mode,
                hide_real,
                modified,
            },
            Found::Planned(Planned::File {
                data,
                size,
                modified,
                ..
            }) => Planned::File {
                data,
                size,
                mode,
                modified,
            },
            Found::Planned(Planned::Spilled {
                copy,
                size,
                modified,
                ..
            }) => Planned::Spilled {
                copy,
                size,
                mode,
                modified,
            },
            Found::Real(m) if m.kind == Kind::Directory => Planned::Dir {
                mode,
                hide_real: false,
                modified: m.modified,
            },
            Found::Real(m) => Planned::File {
                data: None,
                size: m.size,
                mode,
                modified: m.modified,
            },
            Found::Absent => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{path} does not exist"),
                ));
            }
        };
        self.nodes.insert(path.clone(), Node::Is(planned));
        Ok(())
    }

    fn mirror(&mut self, path: &RelPath, copy: Arc<std::path::PathBuf>, size: u64, mode: u32) {
        let mode = match self.nodes.get(path) {
            Some(Node::Is(Planned::Spilled { mode, .. })) => *mode,
            _ => mode,
        };
        self.nodes.insert(
            path.clone(),
            Node::Is(Planned::Spilled {
                copy,
                size,
                mode,
                modified: wall_clock(),
            }),
        );
    }

    fn unmirror(&mut self, path: &RelPath) {
        if matches!(
            self.nodes.get(path),
            Some(Node::Is(Planned::Spilled { .. }))
        ) {
            self.nodes.insert(path.clone(), Node::Gone);
        }
    }

    fn unlink(&mut self, _root: &Dir, _dir: Option<&Dir>, path: &RelPath) -> io::Result<()> {
        self.nodes.insert(path.clone(), Node::Gone);
        Ok(())
    }

    fn rmdir(&mut self, _root: &Dir, path: &RelPath) -> io::Result<()> {
        self.purge_under(path);
        self.nodes.insert(path.clone(), Node::Gone);
        Ok(())
    }

    fn rmtree(&mut self, root: &Dir, path: &RelPath) -> io::Result<()> {
        self.rmdir(root, path)
    }

    fn sweep_temporaries(&mut self, _root: &Dir) -> io::Result<usize> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, Policy};

    fn p(s: &str) -> RelPath {
        Policy::new(Mode::Plan).resolve(s).unwrap()
    }

    fn root() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        (t, d)
    }

    fn kind(o: &Overlay, path: &str) -> Option<Option<Kind>> {
        o.planned(&p(path)).map(|f| f.kind())
    }

    #[test]
    fn planned_states_decide_from_the_nearest_ancestor_down() {
        let (_t, r) = root();
        let mut o = Overlay::new();
        assert_eq!(kind(&o, "a"), None, "an empty overlay decides nothing");
        o.mkdir(&r, &p("new"), None, 0o755).unwrap();
        o.replace_file(&r, &p("new"), &p("new/f"), b"x".to_vec(), 0o644)
            .unwrap();
        o.replace_file(&r, &p(""), &p("file"), b"y".to_vec(), 0o600)
            .unwrap();
        o.unlink(&r, None, &p("gone")).unwrap();
        // (path, what the overlay says: None = ask the disk, Some(None) = absent)
        let table: &[(&str, Option<Option<Kind>>)] = &[
            ("new", Some(Some(Kind::Directory))),
            ("new/f", Some(Some(Kind::File))),
            // Created by this run: whatever the disk had there is hidden.
            ("new/old-on-disk", Some(None)),
            ("new/deep/er", Some(None)),
            ("file", Some(Some(Kind::File))),
            // Nothing can be under a file.
            ("file/child", Some(None)),
            ("gone", Some(None)),
            ("gone/child", Some(None)),
            // Untouched paths are the disk's to say.
            ("other", None),
            ("other/x", None),
        ];
        for (path, want) in table {
            assert_eq!(kind(&o, path), *want, "path {path}");
        }
    }

    #[test]
    fn a_removed_then_recreated_directory_hides_its_old_content() {
        let (_t, r) = root();
        let mut o = Overlay::new();
        o.replace_file(&r, &p("d"), &p("d/planned"), b"1".to_vec(), 0o644)
            .unwrap();
        o.rmtree(&r, &p("d")).unwrap();
        assert_eq!(kind(&o, "d/planned"), Some(None));
        o.mkdir(&r, &p("d"), None, 0o700).unwrap();
        assert_eq!(kind(&o, "d"), Some(Some(Kind::Directory)));
        assert_eq!(kind(&o, "d/planned"), Some(None), "purged with its parent");
        assert_eq!(kind(&o, "d/on-disk"), Some(None), "hidden: d is new");
        assert_eq!(o.planned_children(&p("d")), vec![]);
    }

    #[test]
    fn a_mode_change_keeps_what_was_planned_or_seen() {
        let (_t, r) = root();
        let mut o = Overlay::new();
        o.replace_file(&r, &p(""), &p("f"), b"abc".to_vec(), 0o644)
            .unwrap();
        let current = o.planned(&p("f")).unwrap();
        o.chmod(&r, &p("f"), 0o600, &current).unwrap();
        match o.planned(&p("f")) {
            Some(Found::Planned(Planned::File {
                data: Some(d),
                size: 3,
                mode: 0o600,
                ..
            })) => assert_eq!(d.as_slice(), b"abc"),
            other => panic!("{other:?}"),
        }
        let real = Found::Real(Metadata {
            kind: Kind::Directory,
            size: 0,
            mode: 0o755,
            modified: Datetime {
                seconds: 5,
                nanoseconds: 0,
            },
        });
        o.chmod(&r, &p("dir"), 0o700, &real).unwrap();
        assert_eq!(
            o.planned(&p("dir")),
            Some(Found::Planned(Planned::Dir {
                mode: 0o700,
                hide_real: false,
                modified: Datetime {
                    seconds: 5,
                    nanoseconds: 0
                }
            })),
            "a real directory keeps its entries: it is not hidden"
        );
        assert_eq!(kind(&o, "dir/x"), None);
        assert!(o.chmod(&r, &p("none"), 0o700, &Found::Absent).is_err());
    }

    #[test]
    fn children_are_listed_one_level_deep_with_removals() {
        let (_t, r) = root();
        let mut o = Overlay::new();
        o.mkdir(&r, &p("a"), None, 0o755).unwrap();
        o.mkdir(&r, &p("a/b"), None, 0o755).unwrap();
        o.replace_file(&r, &p("a/b"), &p("a/b/c"), vec![], 0o644)
            .unwrap();
        o.unlink(&r, None, &p("a/x")).unwrap();
        o.replace_file(&r, &p(""), &p("ab"), vec![], 0o644).unwrap();
        let names: Vec<(String, bool)> = o
            .planned_children(&p("a"))
            .into_iter()
            .map(|(n, m)| (n, m.is_some()))
            .collect();
        assert_eq!(names, [("b".to_string(), true), ("x".to_string(), false)]);
        let top: Vec<String> = o
            .planned_children(&RelPath::root())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(top, ["a", "ab"]);
    }

    /// Issue 14: a dry run held every planned file's content in memory.
    #[test]
    fn a_large_planned_write_is_kept_on_disk_outside_the_root() {
        let (t, r) = root();
        let mut o = Overlay::new();
        let big = vec![7u8; SPILL_BYTES + 1];
        o.replace_file(&r, &p(""), &p("big"), big.clone(), 0o644)
            .unwrap();
        match o.planned(&p("big")) {
            Some(Found::Planned(Planned::Spilled { copy, size, .. })) => {
                assert_eq!(size, big.len() as u64);
                assert!(!copy.starts_with(t.path()), "kept outside the root");
                assert_eq!(std::fs::read(copy.as_path()).unwrap(), big);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_overlay_never_touches_the_disk() {
        let (t, r) = root();
        let mut o = Overlay::new();
        o.mkdir(&r, &p("d"), Some(0o700), 0o700).unwrap();
        o.replace_file(&r, &p(""), &p("f"), b"x".to_vec(), 0o644)
            .unwrap();
        o.unlink(&r, None, &p("f")).unwrap();
        o.rmtree(&r, &p("d")).unwrap();
        assert_eq!(o.sweep_temporaries(&r).unwrap(), 0);
        assert!(o.disk_is_frozen());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
