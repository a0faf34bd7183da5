//! A step's policy: what its guest may touch, whether anything may change, and its limits.
//!
//! Policy is data, built before each step (one for the standard operations, one per plugin
//! step) and handed to every capability view, which asks it through pure methods: every path
//! goes through [`Policy::resolve`] before it is touched, every database through
//! [`Policy::resolve_database`] before it is opened. The run's mode (is this a dry run?) is
//! kept here and nowhere else; the capabilities do not consult it to decide whether to write,
//! since the run's sink was chosen from it once (see `cap::fs::Sink`).

use std::fmt;
use std::time::Duration;

/// What kind of run this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Make the changes.
    Apply,
    /// Dry run that reports (`idem plan`).
    Plan,
    /// Dry run whose exit code reports drift (`idem check`).
    Check,
}

impl Mode {
    /// True when nothing on disk or in a database may change.
    pub fn dry_run(self) -> bool {
        !matches!(self, Mode::Apply)
    }

    /// The stable name used in reports and the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Apply => "apply",
            Mode::Plan => "plan",
            Mode::Check => "check",
        }
    }
}

/// The name of idem's own state directory under the root, which no step may touch.
pub const STATE_DIR: &str = ".idem";

/// A path inside the root, normalised: no `.` or `..`, no leading or trailing `/`, components
/// joined by `/`. The empty path is the root itself.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// The root itself.
    pub fn root() -> Self {
        RelPath(String::new())
    }

    /// The path as `/`-joined components (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path to hand to `cap_std::fs::Dir` methods (`.` for the root).
    pub fn as_fs(&self) -> &str {
        if self.0.is_empty() { "." } else { &self.0 }
    }

    /// True for the root itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent directory, or `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => RelPath(self.0[..i].to_string()),
            None => RelPath::root(),
        })
    }

    /// The last component (`""` for the root).
    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// `self/name`, for a single component `name`.
    pub fn join(&self, name: &str) -> RelPath {
        if self.0.is_empty() {
            RelPath(name.to_string())
        } else {
            RelPath(format!("{}/{}", self.0, name))
        }
    }

    /// Every ancestor from the top down, excluding the root and `self`.
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .match_indices('/')
            .map(|(i, _)| RelPath(self.0[..i].to_string()))
    }

    /// True when `self` is `other` or lies under it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        other.0.is_empty()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "." } else { &self.0 })
    }
}

/// Why the policy refused a path. The message names the path as the guest gave it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathDenied {
    #[error("{0:?} is an absolute path; paths are relative to the root")]
    Absolute(String),
    #[error("{0:?} climbs above the root with `..`")]
    Escapes(String),
    #[error("{0:?} is inside idem's own state directory `.idem`, which steps may not touch")]
    StateDir(String),
    #[error("{0:?} is outside the paths this step may touch ({1})")]
    NotAllowed(String, String),
    #[error("{0:?} is under {1}, which a plugin may touch only when its step names it in `paths`")]
    Reserved(String, String),
    #[error(
        "{0:?} is a database the step names: reach it through the sqlite interface, not as a file"
    )]
    DatabaseFile(String),
    #[error("{0:?} is not a valid path (empty component or NUL byte)")]
    Invalid(String),
    #[error("mode {1:o} on {0:?} sets setuid, setgid or sticky bits, which plugins may not set")]
    SpecialMode(String, u32),
    #[error(
        "{0:?} is the root or the top of a path the step was granted; its mode is not the step's to change"
    )]
    GrantTop(String),
}

/// How much a step's guest may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for the step; `None` for none (the standard operations).
    pub time: Option<Duration>,
    /// The most the step's linear memories may grow to, in bytes.
    pub memory: usize,
}

/// What a step's guest may touch, and how much it may use.
#[derive(Clone, Debug)]
pub struct Policy {
    pub mode: Mode,
    pub limits: Limits,
    /// Who is asking, as checkpoint scopes are prefixed: `std/`, or `plugin:PATH/`.
    scope_prefix: String,
    /// Whether modes may carry setuid, setgid and sticky bits, and the root's and the
    /// grants' own modes may change (the plan's own steps: yes; plugins: no).
    trusted_modes: bool,
    /// Paths a plugin step may touch; `None` means the whole root.
    allowed_paths: Option<Vec<RelPath>>,
    /// Subtrees a plugin may not touch although a grant covers them (the repository's
    /// `.git`, the plan file): a path in one needs a grant inside it (`paths: [.git/hooks]`).
    reserved: Vec<RelPath>,
    /// Databases a plugin step may open; `None` means any database under the allowed paths.
    allowed_databases: Option<Vec<RelPath>>,
    /// PostgreSQL databases (URLs and `env:NAME`) a plugin step may open, spelled as the step
    /// names them; `None` (the standard operations) means any.
    allowed_pg: Option<Vec<String>>,
    /// The user's words for the allowed paths, for messages.
    allowed_text: String,
    /// Where the step may send HTTP requests (none but a plugin's `hosts:`).
    pub network: crate::netpolicy::NetPolicy,
}

impl Policy {
    /// The most entries one `list-dir` call may return to this step, when bounded: a
    /// plugin's listing is held whole in the host, so a huge directory must be paged.
    pub fn listing_cap(&self) -> Option<usize> {
        (!self.trusted_modes).then_some(10_000)
    }

    /// The policy of the standard operations: the whole root, no time limit, 2 GiB.
    pub fn new(mode: Mode) -> Self {
        Policy {
            mode,
            limits: Limits {
                time: None,
                memory: 2 << 30,
            },
            scope_prefix: "std/".into(),
            trusted_modes: true,
            allowed_paths: None,
            reserved: Vec::new(),
            allowed_databases: None,
            allowed_pg: None,
            allowed_text: String::new(),
            network: crate::netpolicy::NetPolicy::none(),
        }
    }

    /// A narrower policy for the plugin at `plugin`: exactly the `paths` named (none: no file
    /// at all; `.` for the whole root), exactly the `databases` named, and `limits`. Each
    /// entry is itself resolved against the root. `plan` is the plan file, when it lies under
    /// the root: like `.git`, a plugin may touch it only when a grant names it.
    pub fn for_plugin(
        mode: Mode,
        plugin: &str,
        paths: &[String],
        databases: &[String],
        limits: Limits,
    ) -> Result<Self, PathDenied> {
        let base = Policy::new(mode);
        let allowed_paths = paths
            .iter()
            .map(|p| base.resolve(p))
            .collect::<Result<Vec<_>, _>>()?;
        // PostgreSQL names are no files: the postgres capability checks them. `env:NAME`
        // may name either, and is allowed to both.
        let allowed_pg = databases
            .iter()
            .filter(|d| crate::dbname::is_postgres_url(d) || d.starts_with("env:"))
            .cloned()
            .collect();
        let allowed_databases = databases
            .iter()
            .filter(|d| !crate::dbname::is_postgres_url(d) && !d.starts_with("env:"))
            .map(|p| base.resolve(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            mode,
            limits,
            scope_prefix: format!("plugin:{plugin}/"),
            trusted_modes: false,
            allowed_text: if paths.is_empty() {
                "none: the step names no `paths` (use `paths: [.]` for the whole root)".into()
            } else {
                paths.join(", ")
            },
            reserved: vec![RelPath(".git".into())],
            allowed_paths: Some(allowed_paths),
            allowed_databases: Some(allowed_databases),
            allowed_pg: Some(allowed_pg),
            network: crate::netpolicy::NetPolicy::none(),
        })
    }

    /// Give the step the network its plan names.
    pub fn with_network(mut self, network: crate::netpolicy::NetPolicy) -> Self {
        self.network = network;
        self
    }

    /// Reserve the plan file at `plan` (relative to the root) from plugins, unless a grant
    /// names it.
    pub fn reserve(mut self, plan: RelPath) -> Self {
        if !self.reserved.contains(&plan) {
            self.reserved.push(plan);
        }
        self
    }

    /// Whether `rel` is a path reserved from the step (the plan file, `.git`) itself.
    pub fn is_reserved(&self, rel: &RelPath) -> bool {
        self.reserved.contains(rel)
    }

    /// Turn a guest's path into a normalised path inside the root, or say why not. Purely
    /// lexical: symbolic links are checked by the file capability when it opens the path.
    pub fn resolve(&self, path: &str) -> Result<RelPath, PathDenied> {
        if path.contains('\0') {
            return Err(PathDenied::Invalid(path.into()));
        }
        if path.starts_with('/') {
            return Err(PathDenied::Absolute(path.into()));
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(PathDenied::Escapes(path.into()));
                    }
                }
                p => parts.push(p),
            }
        }
        // Case-insensitively: on a case-folding file system (macOS) `.IDEM` is `.idem`.
        if parts
            .first()
            .is_some_and(|p| p.eq_ignore_ascii_case(STATE_DIR))
        {
            return Err(PathDenied::StateDir(path.into()));
        }
        let rel = RelPath(parts.join("/"));
        if let Some(allowed) = &self.allowed_paths {
            if !allowed.iter().any(|a| rel.starts_with(a)) {
                return Err(PathDenied::NotAllowed(
                    path.into(),
                    self.allowed_text.clone(),
                ));
            }
            for r in &self.reserved {
                if rel.starts_with(r)
                    && !allowed
                        .iter()
                        .any(|a| a.starts_with(r) && rel.starts_with(a))
                {
                    return Err(PathDenied::Reserved(path.into(), r.to_string()));
                }
            }
            if self.is_database_file(&rel) {
                return Err(PathDenied::DatabaseFile(path.into()));
            }
        }
        Ok(rel)
    }

    /// Resolve a database path: inside the root (not only the step's paths) and named in the
    /// step's databases, when the step is a plugin.
    pub fn resolve_database(&self, path: &str) -> Result<RelPath, PathDenied> {
        let rel = Policy::new(self.mode).resolve(path)?;
        if self.allows_database(&rel) {
            Ok(rel)
        } else {
            Err(PathDenied::NotAllowed(
                path.into(),
                format!(
                    "databases named by the step: {}",
                    self.allowed_databases
                        .iter()
                        .flatten()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }

    /// Whether the step may set `mode` on `path` (already resolved). Plugins may not set
    /// setuid, setgid or sticky bits (dangerous when idem runs as root, as provisioning does),
    /// nor change the mode of the root or of a path they were granted as a whole.
    pub fn check_mode(&self, path: &RelPath, given: &str, mode: u32) -> Result<(), PathDenied> {
        if self.trusted_modes {
            return Ok(());
        }
        if mode & 0o7000 != 0 {
            return Err(PathDenied::SpecialMode(given.into(), mode));
        }
        let top = path.is_root()
            || self
                .allowed_paths
                .as_ref()
                .is_some_and(|grants| grants.contains(path));
        if top {
            return Err(PathDenied::GrantTop(given.into()));
        }
        Ok(())
    }

    /// True for a plugin's policy: its reads are bounded by its memory limit, as the host
    /// would otherwise allocate what the guest could never hold.
    pub fn confined(&self) -> bool {
        !self.trusted_modes
    }

    /// The checkpoint scope `scope` within this caller's namespace.
    pub fn checkpoint_scope(&self, scope: &str) -> String {
        format!("{}{scope}", self.scope_prefix)
    }

    /// Whether the step may open the PostgreSQL database `name`: the standard operations any;
    /// a plugin those its step names in `databases:`, spelled alike. The reason when not.
    pub fn may_open_postgres(&self, name: &str) -> Result<(), String> {
        match &self.allowed_pg {
            None => Ok(()),
            Some(names) if names.iter().any(|n| n == name) => Ok(()),
            Some(names) if names.is_empty() => Err(format!(
                "{}: the step names no PostgreSQL database in `databases:`",
                crate::dbname::redact(name)
            )),
            Some(names) => Err(format!(
                "{}: not among the step's databases ({}); name it in `databases:` as the plugin spells it",
                crate::dbname::redact(name),
                names
                    .iter()
                    .map(|n| crate::dbname::redact(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Whether the step is a plugin's, whose PostgreSQL statements the host checks
    /// ([`crate::cap::postgres`]'s guard).
    pub fn checks_sql(&self) -> bool {
        self.allowed_pg.is_some()
    }

    /// The databases the step names (none for the standard operations, which may open any).
    pub fn databases(&self) -> &[RelPath] {
        self.allowed_databases.as_deref().unwrap_or_default()
    }

    /// Whether `path` is one of the step's databases or a side file of one (`-wal`, `-shm`,
    /// `-journal`), which the step reaches through sqlite only.
    fn is_database_file(&self, path: &RelPath) -> bool {
        self.databases().iter().any(|d| {
            path == d
                || ["-wal", "-shm", "-journal"]
                    .iter()
                    .any(|side| path.as_str().strip_suffix(side) == Some(d.as_str()))
        })
    }

    /// The paths the step was granted (`None`: the whole root).
    pub fn grants(&self) -> Option<&[RelPath]> {
        self.allowed_paths.as_deref()
    }

    /// Whether a database at `path` (already resolved) may be opened.
    pub fn allows_database(&self, path: &RelPath) -> bool {
        match &self.allowed_databases {
            None => true,
            Some(list) => list.contains(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_lexically_inside_the_root() {
        let p = Policy::new(Mode::Apply);
        let table: &[(&str, Result<&str, &str>)] = &[
            ("a/b", Ok("a/b")),
            ("./a//b/", Ok("a/b")),
            ("a/../b", Ok("b")),
            ("", Ok("")),
            (".", Ok("")),
            ("a/..", Ok("")),
            ("..", Err("climbs")),
            ("a/../../etc", Err("climbs")),
            ("/etc/passwd", Err("absolute")),
            (".idem/state.db", Err("state directory")),
            ("x/../.idem", Err("state directory")),
            (".idemx/ok", Ok(".idemx/ok")),
            ("a\0b", Err("not a valid path")),
        ];
        for (input, want) in table {
            let got = p.resolve(input);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g.as_str(), *w, "input {input:?}"),
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "input {input:?}: {e}"),
                _ => panic!("input {input:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn plugin_policy_narrows_paths_and_databases() {
        let limits = Limits {
            time: Some(Duration::from_secs(2)),
            memory: 1 << 20,
        };
        let p = Policy::for_plugin(
            Mode::Plan,
            "p.wasm",
            &["logs".into()],
            &["data/app.db".into()],
            limits,
        )
        .unwrap();
        assert_eq!(p.limits, limits);
        assert_eq!(p.checkpoint_scope("s"), "plugin:p.wasm/s");
        assert_eq!(Policy::new(Mode::Plan).checkpoint_scope("s"), "std/s");
        assert_eq!(p.databases(), [p.base_resolve("data/app.db")]);
        assert!(p.resolve("logs/a.log").is_ok());
        assert!(p.resolve("logs").is_ok());
        assert!(p.resolve("logsx/a").is_err());
        assert!(p.resolve("etc/x").is_err());
        assert!(
            p.resolve(".IDEM/state.db").is_err(),
            "case-folded state dir"
        );
        assert!(p.allows_database(&p.base_resolve("data/app.db")));
        assert!(!p.allows_database(&p.base_resolve("data/other.db")));
        assert!(p.mode.dry_run());
    }

    #[test]
    fn plugins_get_only_what_their_step_names() {
        let limits = Limits {
            time: None,
            memory: 1,
        };
        let none =
            Policy::for_plugin(Mode::Apply, "p.wasm", &[], &["app.db".into()], limits).unwrap();
        let all = Policy::for_plugin(
            Mode::Apply,
            "p.wasm",
            &[".".into()],
            &["app.db".into()],
            limits,
        )
        .unwrap()
        .reserve(Policy::new(Mode::Apply).resolve("idem.yml").unwrap());
        let git = Policy::for_plugin(
            Mode::Apply,
            "p.wasm",
            &[".".into(), ".git/hooks".into()],
            &[],
            limits,
        )
        .unwrap();
        // (policy, path, allowed)
        let table: &[(&Policy, &str, bool)] = &[
            (&none, "a.txt", false),
            (&none, "app.db", false),
            (&all, "a.txt", true),
            (&all, "dist/x", true),
            (&all, ".git/config", false),
            (&all, ".git", false),
            (&all, ".gitignore", true),
            (&all, "idem.yml", false),
            (&all, "app.db", false),
            (&all, "app.db-wal", false),
            (&all, "app.db.bak", true),
            (&git, ".git/hooks/pre-commit", true),
            (&git, ".git/config", false),
        ];
        for (policy, path, ok) in table {
            assert_eq!(
                policy.resolve(path).is_ok(),
                *ok,
                "{path}: {:?}",
                policy.resolve(path)
            );
        }
        assert!(
            none.resolve_database("app.db").is_ok(),
            "databases through sqlite"
        );
    }

    #[test]
    fn plugins_may_not_set_special_bits_or_the_mode_of_a_grant() {
        let limits = Limits {
            time: None,
            memory: 1,
        };
        let plugin =
            Policy::for_plugin(Mode::Apply, "p.wasm", &["dist".into()], &[], limits).unwrap();
        let plan = Policy::new(Mode::Apply);
        let r = |s: &str| plan.resolve(s).unwrap();
        // (path, mode, plugin allowed)
        let table: &[(&str, u32, bool)] = &[
            ("dist/a", 0o644, true),
            ("dist/a", 0o4755, false),
            ("dist/a", 0o2755, false),
            ("dist/d", 0o1777, false),
            ("dist", 0o700, false),
            ("", 0o700, false),
        ];
        for (path, mode, ok) in table {
            assert_eq!(
                plugin.check_mode(&r(path), path, *mode).is_ok(),
                *ok,
                "{path} {mode:o}"
            );
            assert!(
                plan.check_mode(&r(path), path, *mode).is_ok(),
                "the plan's own steps"
            );
        }
    }

    #[test]
    fn relpath_helpers() {
        let p = Policy::new(Mode::Apply).resolve("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        let anc: Vec<_> = p.ancestors().map(|a| a.as_str().to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert!(p.starts_with(&RelPath::root()));
        assert_eq!(RelPath::root().as_fs(), ".");
        assert_eq!(RelPath::root().parent(), None);
    }

    impl Policy {
        fn base_resolve(&self, p: &str) -> RelPath {
            Policy::new(self.mode).resolve(p).unwrap()
        }
    }
}
