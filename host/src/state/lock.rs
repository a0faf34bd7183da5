//! The run lock: two idem runs on the same root never interleave.
//!
//! An apply takes an exclusive `flock(2)` on a file beside the state store and writes its
//! holder (pid, host, start time) into it. The kernel releases the lock when the holder's
//! process dies, however it dies, so a lock left by a killed run is simply free; the stale
//! holder text is overwritten by the next holder. A dry run takes a shared lock when the lock
//! file exists (it creates nothing), so it never reads a half-applied tree.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A held lock; released when dropped.
pub struct RunLock {
    _file: Option<File>,
    /// The root directory itself, locked as the tree: a dry run locks it even when no lock
    /// file exists yet (it creates nothing), so it never reads a tree an apply is writing.
    _root: Option<File>,
    /// With the state in PostgreSQL: the session holding the advisory lock.
    _pg: Option<super::pg::PgLock>,
}

/// Lock the root directory `root` (shared for a dry run), waiting as for the lock file.
fn lock_root(root: &Path, timeout: Duration, shared: bool, lock_file: &Path) -> Result<File> {
    let dir = File::open(root).with_context(|| format!("opening the root {}", root.display()))?;
    wait_for(&dir, timeout, shared, lock_file, root)?;
    Ok(dir)
}

pub use super::hostname;

/// The lock file for a state store at `state`.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl RunLock {
    /// Take the exclusive lock, waiting up to `timeout`.
    pub fn exclusive(path: &Path, timeout: Duration, root: &Path) -> Result<RunLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let start = Instant::now();
        wait_for(&file, timeout, false, path, root)?;
        let root_lock = lock_root(root, timeout.saturating_sub(start.elapsed()), false, path)?;
        let holder = format!(
            "pid {} on {} since {}",
            std::process::id(),
            hostname(),
            super::timestamp()
        );
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(holder.as_bytes()));
        written.with_context(|| format!("writing the lock file {}", path.display()))?;
        Ok(RunLock {
            _file: Some(file),
            _root: Some(root_lock),
            _pg: None,
        })
    }

    /// Take a shared lock if the lock file exists (a dry run creates nothing).
    pub fn shared(path: &Path, timeout: Duration, root: &Path) -> Result<RunLock> {
        let start = Instant::now();
        let file = match File::open(path) {
            Ok(f) => {
                wait_for(&f, timeout, true, path, root)?;
                Some(f)
            }
            Err(_) => None,
        };
        let root_lock = lock_root(root, timeout.saturating_sub(start.elapsed()), true, path)?;
        Ok(RunLock {
            _file: file,
            _root: Some(root_lock),
            _pg: None,
        })
    }

    /// With the state in PostgreSQL: the advisory lock on the state key (see
    /// [`super::pg::PgLock`]), then the root as for a file store (exclusive for any apply,
    /// so runners that cooperate on one machine each need a root of their own).
    pub fn postgres(
        target: &crate::dbname::PgTarget,
        key: &str,
        mode: super::pg::LockMode,
        timeout: Duration,
        root: &Path,
    ) -> Result<RunLock> {
        let start = Instant::now();
        let pg = super::pg::PgLock::take(target, key, mode, timeout)?;
        let shared = mode == super::pg::LockMode::DryRun;
        let marker = root.join(crate::policy::STATE_DIR);
        let root_lock = lock_root(
            root,
            timeout.saturating_sub(start.elapsed()),
            shared,
            &marker,
        )?;
        Ok(RunLock {
            _file: None,
            _root: Some(root_lock),
            _pg: Some(pg),
        })
    }
}

/// Whether a live process holds the lock at `path` exclusively, without waiting or creating
/// anything: what tells a run that is still going from one that was killed.
pub fn is_held(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

fn wait_for(file: &File, timeout: Duration, shared: bool, path: &Path, root: &Path) -> Result<()> {
    let start = Instant::now();
    let mut announced = false;
    loop {
        let r = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match r {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let holder = read_holder(path);
        if let Some(signal) = crate::signal::requested() {
            bail!(
                "stopped by {} while waiting for another idem run on root {} ({holder}); nothing was done",
                crate::signal::name(signal),
                root.display()
            );
        }
        if start.elapsed() >= timeout {
            bail!(
                "another idem run holds the lock on root {} ({holder}); waited {} s. \
                 Let it finish, or raise --lock-timeout",
                root.display(),
                timeout.as_secs()
            );
        }
        // One message, whatever the log level: a person waiting must know why.
        if !announced {
            eprintln!(
                "idem: waiting for another run on this root ({holder}), up to {} s",
                timeout.as_secs()
            );
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_holder(path: &Path) -> String {
    let mut s = String::new();
    match File::open(path).and_then(|mut f| f.read_to_string(&mut s)) {
        Ok(_) if !s.trim().is_empty() => s.trim().to_string(),
        // Taken a moment ago, its holder not written yet: the kernel knows who it is.
        _ => match flock_holder(path) {
            Some(pid) => format!("pid {pid} on {}, starting", hostname()),
            None => "its holder has not written its name yet".into(),
        },
    }
}

/// The pid holding an flock on the file at `path`, from /proc/locks (Linux).
fn flock_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234567 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_exclusive_lock_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db.lock");
        let _held = RunLock::exclusive(&path, Duration::ZERO, dir.path()).unwrap();
        let err = RunLock::exclusive(&path, Duration::from_millis(200), dir.path())
            .err()
            .expect("the second lock must fail");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("--lock-timeout"), "{msg}");
    }

    /// Issue 14: a run waiting on a lock just taken named its holder "unknown".
    #[test]
    fn a_holder_that_has_not_written_its_name_is_named_by_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let f = File::create(&path).unwrap();
        f.try_lock().unwrap();
        let holder = read_holder(&path);
        assert!(
            holder.contains(&format!("pid {}", std::process::id())),
            "{holder}"
        );
    }

    /// Issue 14: a dry run where no lock file exists yet still waits for an apply.
    #[test]
    fn a_dry_run_waits_for_an_apply_even_without_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let held = File::open(&root).unwrap();
        held.try_lock().unwrap();
        let lock = root.join(".idem/state.db.lock");
        let err = RunLock::shared(&lock, Duration::from_millis(200), &root)
            .err()
            .expect("the dry run must wait for the tree");
        assert!(format!("{err:#}").contains("holds the lock"), "{err:#}");
        assert!(!lock.exists(), "a dry run creates nothing");
        drop(held);
        RunLock::shared(&lock, Duration::ZERO, &root).unwrap();
    }

    #[test]
    fn a_dropped_lock_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        drop(RunLock::exclusive(&path, Duration::ZERO, dir.path()).unwrap());
        RunLock::exclusive(&path, Duration::ZERO, dir.path()).unwrap();
        RunLock::shared(&path, Duration::ZERO, dir.path()).unwrap();
    }

    #[test]
    fn is_held_tells_a_live_holder_from_a_released_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        assert!(!is_held(&path), "no lock file: nobody holds it");
        let held = RunLock::exclusive(&path, Duration::ZERO, dir.path()).unwrap();
        assert!(is_held(&path));
        drop(held);
        assert!(!is_held(&path));
    }
}
