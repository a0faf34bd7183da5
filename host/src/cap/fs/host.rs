//! The WIT interface `fs`, implemented on a view that borrows only what it needs: the file
//! capability, the step's policy and the resource table. Each call resolves the guest's path
//! against the policy first; a refusal is an error value, never a trap.

use wasmtime::component::{Resource, ResourceTable};

use super::{CapResult, FsCap};
use crate::bindings::fs::{Change as Done, Entry, Host, HostReader, Metadata};
use crate::bindings::types::Error;
use crate::cap::resources::Reader;
use crate::policy::{Policy, RelPath};

/// What the `fs` interface sees of the store.
pub struct FsView<'a> {
    pub fs: &'a mut FsCap,
    pub policy: &'a Policy,
    pub table: &'a mut ResourceTable,
}

type R<T> = wasmtime::Result<CapResult<T>>;

impl FsView<'_> {
    /// The guest's path, resolved by the policy, and refused when it really leads (through
    /// links inside the root) into idem's state or out of the step's grants. `follow`: the
    /// call follows a link at the path itself (listing, creating under it).
    ///
    /// Under a group commit, a path that a staged write would change settles the group first
    /// (see `Disk`): every call sees the step's own writes in place.
    fn resolve(&mut self, p: &str, follow: bool) -> CapResult<RelPath> {
        let rel = self
            .policy
            .resolve(p)
            .map_err(|e| Error::Denied(e.to_string()))?;
        self.fs.check_real(&rel, follow, self.policy.grants())?;
        self.fs.settle_for(&rel)?;
        self.fs.observe(&rel, false);
        Ok(rel)
    }

    fn path(&mut self, p: &str) -> CapResult<RelPath> {
        self.resolve(p, false)
    }

    /// The path, when the step may also set `mode` on it.
    fn path_for_mode(&mut self, p: &str, mode: Option<u32>) -> CapResult<RelPath> {
        let rel = self.path(p)?;
        if let Some(m) = mode {
            self.policy
                .check_mode(&rel, p, m)
                .map_err(|e| Error::Denied(e.to_string()))?;
        }
        Ok(rel)
    }
}

impl HostReader for FsView<'_> {
    fn next(&mut self, reader: Resource<Reader>, max: u32) -> R<Vec<u8>> {
        let r = self.table.get_mut(&reader)?;
        Ok(r.next_chunk(max).map_err(|e| Error::Io(e.to_string())))
    }

    fn drop(&mut self, reader: Resource<Reader>) -> wasmtime::Result<()> {
        self.table.delete(reader)?;
        Ok(())
    }
}

impl Host for FsView<'_> {
    fn group_writes(&mut self) -> wasmtime::Result<()> {
        self.fs.begin_group();
        Ok(())
    }

    fn sync(&mut self) -> R<()> {
        Ok(self.fs.settle())
    }

    fn stat(&mut self, path: String) -> R<Option<Metadata>> {
        Ok(self.path(&path).and_then(|p| self.fs.stat(&p)))
    }

    fn stat_many(
        &mut self,
        paths: Vec<String>,
    ) -> wasmtime::Result<Vec<CapResult<Option<Metadata>>>> {
        // Without grants, the one check left after the policy's (that a path does not really
        // lead into idem's state) is made by `stat_many` from the parent handles it opens.
        let here = self.policy.grants().is_none();
        let resolved: Vec<CapResult<RelPath>> = paths
            .iter()
            .map(|p| {
                if !here {
                    return self.path(p);
                }
                let rel = self
                    .policy
                    .resolve(p)
                    .map_err(|e| Error::Denied(e.to_string()))?;
                self.fs.settle_for(&rel)?;
                Ok(rel)
            })
            .collect();
        Ok(self.fs.stat_many(&resolved, here))
    }

    fn read(&mut self, path: String) -> R<Vec<u8>> {
        let p = match self.path(&path) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        if self.policy.confined() {
            let cap = self.policy.limits.memory as u64;
            if let Ok(Some(m)) = self.fs.stat(&p)
                && m.size > cap
            {
                return Ok(Err(Error::Invalid(format!(
                    "{p} is {} MiB, more than `read` hands a plugin (its memory limit, {} MiB): \
                     read it in chunks with `open-reader`",
                    m.size >> 20,
                    cap >> 20
                ))));
            }
        }
        // The plan's own steps read through links inside the root (`latest.csv ->
        // 2026-12-01.csv`); a plugin's reads do not follow links.
        if self.policy.confined() {
            Ok(self.fs.read(&p))
        } else {
            Ok(self.fs.read_through_link(&p))
        }
    }

    fn open_reader(&mut self, path: String) -> R<Resource<Reader>> {
        let confined = self.policy.confined();
        let reader = match self.path(&path).and_then(|p| {
            if confined {
                self.fs.open_reader(&p)
            } else {
                self.fs.open_reader_through_link(&p)
            }
        }) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(reader)?))
    }

    fn list_dir(&mut self, path: String) -> R<Vec<Entry>> {
        let cap = self.policy.listing_cap();
        Ok(self.resolve(&path, true).and_then(|p| {
            self.fs.observe(&p, true);
            match cap {
                Some(cap) => self.fs.list_dir_capped(&p, cap),
                None => self.fs.list_dir(&p),
            }
        }))
    }

    fn list_dir_page(&mut self, path: String, after: Option<String>, limit: u32) -> R<Vec<Entry>> {
        let limit = (limit as usize).clamp(1, super::LIST_PAGE);
        Ok(self.resolve(&path, true).and_then(|p| {
            self.fs.observe(&p, true);
            self.fs.list_dir_page(&p, after.as_deref(), limit)
        }))
    }

    fn create_dir(&mut self, path: String, mode: Option<u32>) -> R<Done> {
        Ok(self
            .resolve(&path, true)
            .and_then(|_| self.path_for_mode(&path, mode))
            .and_then(|p| self.fs.create_dir(&p, mode)))
    }

    fn write_atomic(&mut self, path: String, content: Vec<u8>, mode: Option<u32>) -> R<Done> {
        Ok(self
            .path_for_mode(&path, mode)
            .and_then(|p| self.fs.write_atomic(&p, content, mode)))
    }

    fn copy_file(&mut self, source: String, path: String, mode: Option<u32>) -> R<Done> {
        let follow = !self.policy.confined();
        Ok(self.path(&source).and_then(|src| {
            self.path_for_mode(&path, mode)
                .and_then(|dst| self.fs.copy_file(&src, &dst, mode, follow))
        }))
    }

    fn set_mode(&mut self, path: String, mode: u32) -> R<Done> {
        Ok(self
            .path_for_mode(&path, Some(mode))
            .and_then(|p| self.fs.set_mode(&p, mode)))
    }

    fn remove(&mut self, path: String, recursive: bool) -> R<Done> {
        Ok(self.path(&path).and_then(|p| self.fs.remove(&p, recursive)))
    }

    fn remove_files(&mut self, paths: Vec<String>) -> R<Vec<Done>> {
        let resolved: CapResult<Vec<RelPath>> = paths.iter().map(|p| self.path(p)).collect();
        Ok(resolved.and_then(|ps| self.fs.remove_files(&ps)))
    }

    fn remove_stale_files(
        &mut self,
        paths: Vec<String>,
        older_than: crate::bindings::types::Datetime,
    ) -> R<Vec<Done>> {
        let resolved: CapResult<Vec<RelPath>> = paths.iter().map(|p| self.path(p)).collect();
        let resolved = match resolved {
            Ok(ps) => ps,
            Err(e) => return Ok(Err(e)),
        };
        // The plan file is never stale: a `cleanup` over the root keeps it, as it keeps
        // `.idem`, so the next run still has its plan.
        let (kept, stale): (Vec<&RelPath>, Vec<&RelPath>) =
            resolved.iter().partition(|p| self.policy.is_reserved(p));
        if kept.is_empty() {
            return Ok(self.fs.remove_stale_files(&resolved, older_than));
        }
        let stale: Vec<RelPath> = stale.into_iter().cloned().collect();
        let mut done = match self.fs.remove_stale_files(&stale, older_than) {
            Ok(d) => d.into_iter(),
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(resolved
            .iter()
            .map(|p| {
                if self.policy.is_reserved(p) {
                    Done::Unchanged
                } else {
                    done.next().unwrap_or(Done::Unchanged)
                }
            })
            .collect()))
    }
}
