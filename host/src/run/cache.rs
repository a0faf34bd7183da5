//! The compiled-component cache: Cranelift's output for a component, kept on disk so only
//! the first run of a component pays for compiling it.
//!
//! A cached artefact is native code that wasmtime maps executable and runs with no further
//! check, so the cache is trusted only as far as nothing but this user's idem can have
//! written it (issue 12):
//!
//! - it is never under the root (canonical paths compared), where every plan step and plugin
//!   may write; with the root at `/` every directory is under it, so nothing is cached;
//! - its directory is created 0700, and used only when it is owned by the effective user and
//!   not writable by group or others;
//! - every artefact carries an HMAC-SHA256 tag, under a per-user random key kept in the
//!   directory (`key`, 0600), over the artefact's name and bytes. The file is read into
//!   memory, its tag checked, and only those checked bytes are deserialized (never the path
//!   again, which could have changed in between), so an artefact that was changed, truncated,
//!   planted or moved from another component's name is recompiled and rewritten, with a
//!   warning, and never run.
//!
//! When the cache cannot be used safely idem says why once on stderr and compiles without it;
//! when it cannot be used at all (a read-only home, say) it compiles without it quietly, as a
//! cache should. Artefacts are named by the component's content hash and the engine's
//! configuration, so a changed engine never loads an incompatible one.

use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component as PathPart, Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The key's file name in the cache directory.
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
/// An HMAC-SHA256 tag, appended to each artefact (so the artefact keeps its offsets).
const TAG_LEN: usize = 32;
/// Part of every artefact's name: artefacts of another layout (the untagged ones of earlier
/// versions) are simply never looked at, rather than each warned about once.
const FORMAT: &str = "hmac-sha256-v1";

/// A compile cache that passed every check: a directory of this user's, outside the root,
/// and the key its artefacts are authenticated with.
pub struct Cache {
    /// Opened once: every later access is relative to this handle, not to a path that could
    /// be swapped for another directory after the checks.
    dir: Dir,
    /// The directory, canonical, for messages.
    path: PathBuf,
    key: [u8; KEY_LEN],
}

/// Why a cache directory is not used.
#[derive(Debug)]
enum Unusable {
    /// Using it could run code someone else wrote: said on stderr, with what to do.
    Unsafe(String),
    /// It cannot be used (a read-only home, say): logged at debug level only.
    Io(String),
}

impl Cache {
    /// The cache in `dir` for a run whose steps may write under `root` (canonical); `None`,
    /// having said why on stderr when it matters, when it cannot be used safely.
    pub fn open(dir: &Path, root: &Path) -> Option<Cache> {
        match Cache::try_open(dir, root) {
            Ok(c) => Some(c),
            Err(Unusable::Unsafe(why)) => {
                eprintln!("idem: warning: {why}");
                None
            }
            Err(Unusable::Io(why)) => {
                tracing::debug!("not caching compiled components: {why}");
                None
            }
        }
    }

    fn try_open(dir: &Path, root: &Path) -> std::result::Result<Cache, Unusable> {
        let failed = |what: &str, p: &Path, e: io::Error| {
            Unusable::Io(format!("{what} {}: {e}", p.display()))
        };
        let given = std::path::absolute(dir).map_err(|e| failed("resolving", dir, e))?;
        // Checked before anything is created, so a refused directory is never made under the
        // root (a dry run must leave the tree as it was).
        let resolved = resolve(&given).map_err(|e| failed("resolving", &given, e))?;
        outside_root(dir, &resolved, root)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&resolved)
            .map_err(|e| failed("creating", &resolved, e))?;
        // Again on the directory that now exists, in case a link appeared on the way.
        let path = resolved
            .canonicalize()
            .map_err(|e| failed("resolving", &resolved, e))?;
        outside_root(dir, &path, root)?;
        let handle = Dir::open_ambient_dir(&path, cap_std::ambient_authority())
            .map_err(|e| failed("opening", &path, e))?;
        let meta = handle
            .dir_metadata()
            .map_err(|e| failed("reading", &path, e))?;
        let me = euid();
        if meta.uid() != me {
            return Err(Unusable::Unsafe(format!(
                "not using the compile cache {}: it is owned by uid {}, not by you (uid {me}), \
                 so its owner could put native code in it that idem would run. Compiling \
                 without caching; pass --cache-dir with a directory of your own, or --no-cache",
                path.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(Unusable::Unsafe(format!(
                "not using the compile cache {}: it is writable by {} (mode {:04o}), who could \
                 put native code in it that idem would run. Compiling without caching; run \
                 `chmod 700 {}`, or pass --cache-dir with another directory, or --no-cache",
                path.display(),
                if meta.mode() & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                },
                meta.mode() & 0o7777,
                path.display()
            )));
        }
        let key = load_or_create_key(&handle, &path)?;
        Ok(Cache {
            dir: handle,
            path,
            key,
        })
    }

    /// The artefact called `name`, its tag checked, without the tag.
    fn read_verified(&self, name: &str) -> Lookup {
        let mut file = match self.dir.open(name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Missing,
            Err(e) => return Lookup::Rejected(format!("it cannot be read ({e})")),
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.read_to_end(&mut bytes) {
            return Lookup::Rejected(format!("it cannot be read ({e})"));
        }
        let Some(len) = bytes.len().checked_sub(TAG_LEN) else {
            return Lookup::Rejected("it is too short to carry an authentication tag".into());
        };
        let (artefact, tag) = bytes.split_at(len);
        if self.mac(name, artefact).verify_slice(tag).is_err() {
            return Lookup::Rejected(
                "its authentication tag does not match (the file was changed, truncated or \
                 not written by your idem)"
                    .into(),
            );
        }
        bytes.truncate(len);
        Lookup::Verified(bytes)
    }

    /// Write `artefact` with its tag as `name`, atomically: a reader sees the old file or the
    /// new one, whole.
    fn store(&self, name: &str, artefact: &[u8]) -> io::Result<()> {
        let tag = self.mac(name, artefact).finalize().into_bytes();
        let (tmp, mut file) = create_temp(&self.dir)?;
        let written = file
            .write_all(artefact)
            .and_then(|()| file.write_all(&tag))
            .and_then(|()| self.dir.rename(&tmp, &self.dir, name));
        if written.is_err() {
            let _ = self.dir.remove_file(&tmp);
        }
        written
    }

    /// The MAC over an artefact and its name: binding the name means a genuine artefact of
    /// one component, copied over another's, is not loaded in its place.
    fn mac(&self, name: &str, artefact: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(b"idem compiled component\0");
        mac.update(name.as_bytes());
        mac.update(b"\0");
        mac.update(artefact);
        mac
    }
}

/// What the cache holds under one name.
enum Lookup {
    Missing,
    Verified(Vec<u8>),
    /// Present but not to be run, and why.
    Rejected(String),
}

/// Compile a component, or load it from `cache`. `compiling` is told just before a compile
/// starts (with whether its result will be cached), so a display can say what the time goes
/// to; a load from the cache never calls it.
pub fn load_component(
    engine: &Engine,
    cache: Option<&Cache>,
    bytes: &[u8],
    content_hash: &str,
    compiling: &dyn Fn(bool),
) -> Result<Component> {
    let Some(cache) = cache else {
        compiling(false);
        return compile(engine, bytes);
    };
    let name = artefact_name(engine, content_hash);
    match cache.read_verified(&name) {
        Lookup::Missing => {}
        Lookup::Verified(artefact) => {
            // SAFETY: these are the very bytes this user's idem serialized under this name:
            // their HMAC, under a key only this user can read, checks out, and they are
            // deserialized from memory, so nothing can swap them after the check. The name
            // binds wasmtime's engine configuration and idem's version.
            match unsafe { Component::deserialize(engine, &artefact) } {
                Ok(c) => return Ok(c),
                Err(e) => eprintln!(
                    "idem: warning: the compiled component {} could not be loaded ({e}); \
                     recompiling it",
                    cache.path.join(&name).display()
                ),
            }
        }
        Lookup::Rejected(why) => eprintln!(
            "idem: warning: not running the compiled component {}: {why}; recompiling it and \
             replacing the file",
            cache.path.join(&name).display()
        ),
    }
    compiling(true);
    let component = compile(engine, bytes)?;
    let stored = component
        .serialize()
        .map_err(|e| anyhow!(e))
        .and_then(|a| cache.store(&name, &a).map_err(anyhow::Error::from));
    if let Err(e) = stored {
        tracing::debug!("not caching the compiled component: {e:#}");
    }
    Ok(component)
}

fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component> {
    let started = Instant::now();
    let component = Component::new(engine, bytes).map_err(|e| anyhow!(e))?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "compiled a component"
    );
    Ok(component)
}

/// `HASH-ENGINE.cwasm`: the component's content hash (its first 32 hex digits) and a hash of
/// what makes an artefact loadable (wasmtime's configuration, idem's version, the format).
fn artefact_name(engine: &Engine, content_hash: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    FORMAT.hash(&mut h);
    format!(
        "{}-{:016x}.cwasm",
        &content_hash[..32.min(content_hash.len())],
        h.finish()
    )
}

/// `path` (absolute) as it will be once created: its longest existing prefix canonical (links
/// resolved), then the rest, which does not exist and so holds no link.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let parts: Vec<PathPart> = path.components().collect();
    let mut n = parts.len();
    // lstat, not stat: a dangling link exists, and canonicalizing it fails below rather than
    // letting the directory be created wherever it points.
    while n > 1
        && parts[..n]
            .iter()
            .collect::<PathBuf>()
            .symlink_metadata()
            .is_err()
    {
        n -= 1;
    }
    let mut out = parts[..n].iter().collect::<PathBuf>().canonicalize()?;
    for part in &parts[n..] {
        match part {
            PathPart::ParentDir => {
                out.pop();
            }
            PathPart::Normal(name) => out.push(name),
            _ => {}
        }
    }
    Ok(out)
}

/// Refuse a cache directory (canonical: `path`; as given: `given`) under the root, where any
/// step may write.
fn outside_root(given: &Path, path: &Path, root: &Path) -> std::result::Result<(), Unusable> {
    let shown = if given == path {
        path.display().to_string()
    } else {
        format!("{} (= {})", given.display(), path.display())
    };
    if root.parent().is_none() {
        return Err(Unusable::Unsafe(format!(
            "not using the compile cache {shown}: the root is {}, so every directory is under \
             it, and a plan step or plugin could write native code there that a later run \
             would execute. Compiling without caching; pass --no-cache to say so",
            root.display()
        )));
    }
    if path.starts_with(root) {
        return Err(Unusable::Unsafe(format!(
            "not using the compile cache {shown}: it is under the root {}, where a plan step \
             or plugin could write native code that a later run would execute. Compiling \
             without caching; pass --cache-dir with a directory outside the root, or --no-cache",
            root.display()
        )));
    }
    Ok(())
}

/// The directory's key, made on first use: 32 random bytes in a file of mode 0600, which
/// appears whole or not at all (written under a temporary name, then linked into place, so
/// two first runs at once agree on one key).
fn load_or_create_key(dir: &Dir, path: &Path) -> std::result::Result<[u8; KEY_LEN], Unusable> {
    let key_path = path.join(KEY_FILE);
    let failed = |e: io::Error| Unusable::Io(format!("the cache key {}: {e}", key_path.display()));
    for _ in 0..2 {
        match read_key(dir, &key_path) {
            Err(Unusable::Io(_)) if dir.symlink_metadata(KEY_FILE).is_err() => {}
            other => return other,
        }
        let mut key = [0u8; KEY_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(failed)?;
        let (tmp, mut file) = create_temp(dir).map_err(failed)?;
        let linked = file
            .write_all(&key)
            .and_then(|()| file.sync_all())
            .and_then(|()| dir.hard_link(&tmp, dir, KEY_FILE));
        let _ = dir.remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(key),
            // Another run made it first: use that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed(e)),
        }
    }
    read_key(dir, &key_path)
}

/// What to do about a bad key.
const KEY_FIX: &str = "remove it (idem makes a new one), or pass --cache-dir with another \
    directory, or --no-cache. Compiling without caching";

fn read_key(dir: &Dir, key_path: &Path) -> std::result::Result<[u8; KEY_LEN], Unusable> {
    let failed = |e: io::Error| Unusable::Io(format!("the cache key {}: {e}", key_path.display()));
    let mut file = dir.open(KEY_FILE).map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    let me = euid();
    if meta.uid() != me {
        return Err(Unusable::Unsafe(format!(
            "not using the compile cache: its key {} is owned by uid {}, not by you (uid {me}), \
             so its owner could forge artefacts idem would run; {KEY_FIX}",
            key_path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(Unusable::Unsafe(format!(
            "not using the compile cache: its key {} has mode {:04o}, so others may read or \
             change it and forge artefacts idem would run; {KEY_FIX}",
            key_path.display(),
            meta.mode() & 0o7777
        )));
    }
    let mut key = [0u8; KEY_LEN];
    let mut extra = [0u8; 1];
    let whole = file.read_exact(&mut key).is_ok() && matches!(file.read(&mut extra), Ok(0));
    if !meta.is_file() || !whole {
        return Err(Unusable::Unsafe(format!(
            "not using the compile cache: its key {} is not a file of {KEY_LEN} bytes; {KEY_FIX}",
            key_path.display()
        )));
    }
    Ok(key)
}

/// A new file of mode 0600 under a name no one else uses (`O_EXCL`), and that name.
fn create_temp(dir: &Dir) -> io::Result<(String, cap_std::fs::File)> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    for attempt in 0u32.. {
        let name = format!(".tmp-{}-{nanos:08x}-{attempt}", std::process::id());
        match dir.open_with(&name, &options) {
            Ok(f) => return Ok((name, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {}
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_resolved_through_its_existing_links_then_lexically() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("link")).unwrap();
        let cases = [
            ("link/new/idem", "a/new/idem"),
            ("a/x/../y", "a/y"),
            ("link", "a"),
            ("missing", "missing"),
        ];
        for (given, want) in cases {
            assert_eq!(
                resolve(&real.join(given)).unwrap(),
                real.join(want),
                "{given}"
            );
        }
        // A dangling link is not resolved past: creating through it would land wherever it
        // points.
        std::os::unix::fs::symlink(real.join("gone"), real.join("dangling")).unwrap();
        assert!(resolve(&real.join("dangling/idem")).is_err());
    }

    #[test]
    fn a_cache_under_the_root_or_any_cache_with_the_root_at_slash_is_refused() {
        let root = Path::new("/home/u");
        let cases = [
            ("/home/u/.cache/idem", false),
            ("/home/u", false),
            ("/home/user/.cache/idem", true),
            ("/var/cache/idem", true),
        ];
        for (dir, ok) in cases {
            let r = outside_root(Path::new(dir), Path::new(dir), root);
            assert_eq!(r.is_ok(), ok, "{dir}: {r:?}");
        }
        let r = outside_root(Path::new("/c"), Path::new("/c"), Path::new("/"));
        assert!(matches!(r, Err(Unusable::Unsafe(m)) if m.contains("the root is /")));
    }

    #[test]
    fn an_artefact_is_loaded_only_as_written_under_its_own_name() {
        let t = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(&t.path().join("c"), &root.path().canonicalize().unwrap())
            .expect("a fresh cache");
        cache.store("a.cwasm", b"native code").unwrap();
        assert!(
            matches!(cache.read_verified("a.cwasm"), Lookup::Verified(b) if b == b"native code")
        );
        assert!(matches!(cache.read_verified("b.cwasm"), Lookup::Missing));

        let file = t.path().join("c/a.cwasm");
        let good = std::fs::read(&file).unwrap();
        let mut flipped = good.clone();
        flipped[3] ^= 1;
        std::fs::write(&file, &flipped).unwrap();
        assert!(matches!(
            cache.read_verified("a.cwasm"),
            Lookup::Rejected(_)
        ));
        std::fs::write(&file, &good[..good.len() - 1]).unwrap();
        assert!(matches!(
            cache.read_verified("a.cwasm"),
            Lookup::Rejected(_)
        ));
        std::fs::write(&file, b"short").unwrap();
        assert!(matches!(
            cache.read_verified("a.cwasm"),
            Lookup::Rejected(_)
        ));
        // A genuine artefact under another name.
        std::fs::write(t.path().join("c/b.cwasm"), &good).unwrap();
        assert!(matches!(
            cache.read_verified("b.cwasm"),
            Lookup::Rejected(_)
        ));
    }
}
