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
    fn path(&self, p: &str) -> CapResult<RelPath> {
        self.policy
            .resolve(p)
            .map_err(|e| Error::Denied(e.to_string()))
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
