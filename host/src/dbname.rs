//! How a plan or the command line names a database: a file (SQLite), a PostgreSQL URL
//! (`postgres://…` or `postgresql://…`), or `env:NAME`, which reads either from the environment
//! at run time so that secrets stay out of plans.
//!
//! A PostgreSQL name is resolved once into a [`PgTarget`]: the connection settings, and the
//! only form of the name idem ever prints ([`PgTarget::shown`]), which carries no password.
//! Every report, log line, journal entry and error names the database by that form.

use std::fmt;
use std::str::FromStr;

/// A database as named by a plan or the command line, resolved.
#[derive(Clone, Debug)]
pub enum DbName {
    /// A SQLite file, by the path as written (relative to the root for a plan).
    File(String),
    /// A PostgreSQL database.
    Postgres(Box<PgTarget>),
}

/// A PostgreSQL database to connect to.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    shown: String,
    /// `sslmode` and `sslrootcert`, which the driver's own parser does not know in full.
    tls: crate::pgtls::TlsSettings,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the config: its Debug lists the password.
        write!(f, "PgTarget({})", self.shown)
    }
}

impl PgTarget {
    /// The connection settings, with the libpq environment defaults applied.
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// What TLS the connection speaks and checks.
    pub fn tls(&self) -> &crate::pgtls::TlsSettings {
        &self.tls
    }

    /// The name to print: the URL with its password and secrets removed, and the variable it
    /// came from when it came from the environment.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `message` (from the server or the driver) with this target's password replaced,
    /// wherever it came from (the URL, `PGPASSWORD`), so that no error can carry it.
    pub fn scrub(&self, message: &str) -> String {
        match self.config.get_password() {
            Some(pw) if !pw.is_empty() => message.replace(&*String::from_utf8_lossy(pw), "***"),
            _ => message.to_string(),
        }
    }
}

/// Why a database name could not be resolved. Its message never holds a password.
#[derive(Debug, thiserror::Error)]
pub enum DbNameError {
    #[error(
        "environment variable {var} (named by `env:{var}`) is not set: export it with the \
         database's URL or file path"
    )]
    Unset { var: String },
    #[error(
        "`env:{var}` is not a valid environment reference: a variable name is letters, digits \
         and `_`, not starting with a digit"
    )]
    BadVar { var: String },
    #[error("environment variable {var} is empty: it should hold the database's URL or file path")]
    Empty { var: String },
    #[error("environment variable {var} holds `env:…`: it should hold the URL or path itself")]
    Nested { var: String },
    #[error("invalid PostgreSQL URL {shown}: {reason}")]
    BadUrl { shown: String, reason: String },
}

/// True when `text` names a PostgreSQL database directly (not through the environment).
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Resolves a database name, reading `env:NAME` from the process environment.
///
/// A PostgreSQL password (from the URL or `PGPASSWORD`) joins the secrets every output is
/// redacted of ([`crate::redact`]), so even a message that quotes a server's words verbatim
/// cannot show it. (Passwords under 4 characters are left out: hiding every `pw` in a report
/// would mangle it; [`PgTarget::shown`] and scrubbed errors still never show them.)
pub fn resolve(text: &str) -> Result<DbName, DbNameError> {
    let name = resolve_with(text, &|k| std::env::var(k).ok())?;
    if let DbName::Postgres(t) = &name
        && let Some(pw) = t.config.get_password()
        && pw.len() >= 4
    {
        crate::redact::add([String::from_utf8_lossy(pw).into_owned()]);
    }
    Ok(name)
}

/// [`resolve`] with the environment given, for tests.
pub fn resolve_with(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DbName, DbNameError> {
    if let Some(var) = text.strip_prefix("env:") {
        if !valid_var(var) {
            return Err(DbNameError::BadVar { var: var.into() });
        }
        let value = env(var).ok_or_else(|| DbNameError::Unset { var: var.into() })?;
        if value.is_empty() {
            return Err(DbNameError::Empty { var: var.into() });
        }
        if value.starts_with("env:") {
            return Err(DbNameError::Nested { var: var.into() });
        }
        return Ok(match resolve_direct(&value, env)? {
            DbName::Postgres(t) => DbName::Postgres(Box::new(PgTarget {
                shown: format!("{} (from env:{var})", t.shown),
                config: t.config,
                tls: t.tls,
            })),
            file => file,
        });
    }
    resolve_direct(text, env)
}

fn resolve_direct(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<DbName, DbNameError> {
    if !is_postgres_url(text) {
        return Ok(DbName::File(text.into()));
    }
    let shown = redact(text);
    let (text, tls) = take_tls(text, env).map_err(|reason| DbNameError::BadUrl {
        shown: shown.clone(),
        reason,
    })?;
    let text = text.as_str();
    let mut config = postgres::Config::from_str(text).map_err(|e| DbNameError::BadUrl {
        shown: shown.clone(),
        // The parser's messages name options and positions, never values; scrub anyway.
        reason: scrub(&e.to_string(), text),
    })?;
    // libpq's environment defaults, for what the URL leaves out.
    if config.get_user().is_none()
        && let Some(u) = env("PGUSER").or_else(|| env("USER"))
    {
        config.user(&u);
    }
    if config.get_password().is_none()
        && let Some(p) = env("PGPASSWORD")
    {
        config.password(p);
    }
    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(h) if h.starts_with('/') => {
                config.host_path(h);
            }
            Some(h) => {
                config.host(&h);
            }
            None => {
                config.host_path("/var/run/postgresql");
            }
        }
    }
    if config.get_ports().is_empty()
        && let Some(p) = env("PGPORT").and_then(|p| p.parse().ok())
    {
        config.port(p);
    }
    if config.get_dbname().is_none()
        && let Some(d) = env("PGDATABASE")
    {
        config.dbname(&d);
    }
    config.application_name("idem");
    config.ssl_mode(match tls.mode {
        TlsMode::Disable => postgres::config::SslMode::Disable,
        TlsMode::Prefer => postgres::config::SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => {
            postgres::config::SslMode::Require
        }
    });
    Ok(DbName::Postgres(Box::new(PgTarget { config, shown, tls })))
}

use crate::pgtls::{Roots, TlsMode, TlsSettings};

/// The URL without its TLS parameters, which idem reads itself (`sslmode`, `sslrootcert`,
/// and libpq's `PGSSLMODE`, `PGSSLROOTCERT` for what the URL leaves out); client
/// certificates are refused with the reason.
fn take_tls(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, TlsSettings), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "sslmode" => mode = Some(percent_decode(v)),
            "sslrootcert" => root = Some(percent_decode(v)),
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" => {
                return Err(format!(
                    "`{k}` is not supported: idem speaks TLS without client certificates \
                     (sslmode, sslrootcert)"
                ));
            }
            _ => kept.push(kv),
        }
    }
    let mode_text = mode
        .or_else(|| env("PGSSLMODE"))
        .unwrap_or_else(|| "prefer".into());
    let mode = TlsMode::parse(&mode_text).ok_or_else(|| {
        format!(
            "sslmode `{mode_text}` is not one of disable, allow, prefer, require, verify-ca, \
             verify-full"
        )
    })?;
    let roots = root
        .or_else(|| env("PGSSLROOTCERT"))
        .map(|r| match r.as_str() {
            "system" => Roots::System,
            path => Roots::File(path.into()),
        });
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, TlsSettings { mode, roots }))
}

/// `%2F` and friends decoded; anything malformed left as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn valid_var(v: &str) -> bool {
    let mut chars = v.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "passfile", "sslkey"];

/// The URL without its password: `postgres://user:secret@host/db?password=x` becomes
/// `postgres://user@host/db?password=***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    // The authority ends at the first '/' after the last '@' (a password may hold '/').
    let from = before_query.rfind('@').map_or(0, |i| i + 1);
    let (authority, path) = match before_query[from..].find('/') {
        Some(j) => before_query.split_at(from + j),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{user}@{host}")
        }
        None => authority.into(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if SECRET_PARAMS.contains(&k) => format!("{k}=***"),
                _ => kv.into(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// `message` with any secret part of `url` replaced, for errors that quote their input.
pub fn scrub(message: &str, url: &str) -> String {
    let mut out = message.to_string();
    for secret in secrets_of(url) {
        if !secret.is_empty() {
            out = out.replace(&secret, "***");
        }
    }
    out
}

fn secrets_of(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let before_query = rest.split_once('?').map_or(rest, |(a, _)| a);
        if let Some((userinfo, _)) = before_query.rsplit_once('@')
            && let Some((_, pw)) = userinfo.split_once(':')
        {
            found.push(pw.to_string());
        }
        if let Some((_, q)) = rest.split_once('?') {
            for kv in q.split('&') {
                if let Some((k, v)) = kv.split_once('=')
                    && SECRET_PARAMS.contains(&k)
                {
                    found.push(v.to_string());
                }
            }
        }
    }
    found
}

/// Which server and database a connection reaches, however it was named (two URLs of one
/// database, through TCP and through the Unix socket, give the same answer): the cluster's
/// system identifier where the role may read it, the postmaster's start time, and the
/// database's OID and name.
pub fn server_identity(c: &mut postgres::Client) -> Result<String, postgres::Error> {
    let row = c.query_one(
        "SELECT CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
                     THEN (SELECT system_identifier::text FROM pg_control_system()) ELSE '' END
                || '/' || pg_postmaster_start_time()::text
                || '/' || (SELECT oid FROM pg_database WHERE datname = current_database())::text
                || '/' || current_database()",
        &[],
    )?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_url_is_shown_without_its_password() {
        let cases = [
            (
                "postgres://app:s3cret@db.example.com:5432/prod",
                "postgres://app@db.example.com:5432/prod",
            ),
            (
                "postgresql://app:p@ss/w@rd@db/prod?sslmode=require",
                "postgresql://app@db/prod?sslmode=require",
            ),
            (
                "postgres://db/prod?user=app&password=hunter2",
                "postgres://db/prod?user=app&password=***",
            ),
            ("postgres://app@db/prod", "postgres://app@db/prod"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
            assert!(!redact(url).contains("s3cret") && !redact(url).contains("hunter2"));
        }
    }

    #[test]
    fn a_file_is_a_file_and_a_url_is_postgres() {
        let none = env(&[]);
        assert!(
            matches!(resolve_with("data/app.db", &none).unwrap(), DbName::File(p) if p == "data/app.db")
        );
        let DbName::Postgres(t) = resolve_with("postgres://u:pw@127.0.0.1:5433/d", &none).unwrap()
        else {
            panic!("not postgres")
        };
        assert_eq!(t.shown(), "postgres://u@127.0.0.1:5433/d");
        assert_eq!(t.config().get_password(), Some(&b"pw"[..]));
        assert_eq!(t.config().get_ports(), &[5433]);
        assert!(!format!("{t:?}").contains("pw@"));
    }

    #[test]
    fn env_reads_the_url_at_run_time_and_names_the_variable() {
        let e = env(&[
            ("DB", "postgres://u:topsecret@h/d"),
            ("PGPASSWORD", "other"),
        ]);
        let DbName::Postgres(t) = resolve_with("env:DB", &e).unwrap() else {
            panic!("not postgres")
        };
        assert_eq!(t.shown(), "postgres://u@h/d (from env:DB)");
        // The URL's own password wins over PGPASSWORD.
        assert_eq!(t.config().get_password(), Some(&b"topsecret"[..]));
        let e = env(&[("DB", "postgres://u@h/d"), ("PGPASSWORD", "frompg")]);
        let DbName::Postgres(t) = resolve_with("env:DB", &e).unwrap() else {
            panic!("not postgres")
        };
        assert_eq!(t.config().get_password(), Some(&b"frompg"[..]));
        let e = env(&[("F", "local.db")]);
        assert!(matches!(resolve_with("env:F", &e).unwrap(), DbName::File(p) if p == "local.db"));
    }

    #[test]
    fn bad_names_say_what_to_do_and_never_print_the_password() {
        let none = env(&[]);
        let msg = resolve_with("env:MISSING", &none).unwrap_err().to_string();
        assert!(msg.contains("MISSING") && msg.contains("not set"), "{msg}");
        let msg = resolve_with("env:1X", &none).unwrap_err().to_string();
        assert!(msg.contains("not a valid"), "{msg}");
        let e = env(&[("E", "")]);
        assert!(
            resolve_with("env:E", &e)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let msg = resolve_with("postgres://u:hunter2@h:notaport/d", &none)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("invalid PostgreSQL URL"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}
