//! The compiled-component cache: Cranelift's output for a component, kept on disk so only
//! the first run of a component pays for compiling it.
//!
//! Artefacts are keyed by the component's content hash and the engine's configuration, so a
//! changed engine never loads an incompatible one.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, anyhow};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Compile a component, or load it from the cache in `cache_dir`.
pub fn load_component(
    engine: &Engine,
    cache_dir: Option<&Path>,
    bytes: &[u8],
    content_hash: &str,
) -> Result<Component> {
    let compile = || {
        let started = Instant::now();
        let component = Component::new(engine, bytes).map_err(|e| anyhow!(e))?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "compiled a component"
        );
        Ok::<_, anyhow::Error>(component)
    };
    let Some(dir) = cache_dir else {
        return compile();
    };
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    let path = dir.join(format!(
        "{}-{:016x}.cwasm",
        &content_hash[..32.min(content_hash.len())],
        h.finish()
    ));
    if path.exists() {
        // SAFETY: the file is one this host wrote (named by content and engine hash) in
        // the user's own cache directory; a corrupt one fails to load and is replaced.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring an unusable compiled component: {e}")
            }
        }
    }
    let component = compile()?;
    if let Err(e) = store_cached(dir, &path, &component) {
        tracing::debug!("not caching the compiled component: {e:#}");
    }
    Ok(component)
}

fn store_cached(dir: &Path, path: &Path, component: &Component) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(|e| anyhow!(e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.persist(path)?;
    Ok(())
}
