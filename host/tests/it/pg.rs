//! A real PostgreSQL server for the tests: one throwaway cluster per test process, started by
//! `tests/pg.sh` on first use (on 127.0.0.1 and a Unix socket in a temporary directory) and
//! stopped by it when this process ends. A test that needs it fails, saying why, when the
//! server cannot start; none is skipped.
//!
//! Each test takes a database of its own from [`fresh_db`], so tests run side by side.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The running cluster.
pub struct Server {
    /// The superuser's URL over TCP, password included: `postgresql://idem:PW@127.0.0.1:P/postgres`.
    pub url: String,
    /// The superuser's password, for tests that check it is never printed.
    pub password: String,
    pub port: u16,
    /// The directory holding the Unix socket (connections there are trusted).
    pub socket_dir: PathBuf,
    /// The CA certificate (PEM) that signed the server's TLS certificate, for `localhost`
    /// and `127.0.0.1`.
    pub ca: PathBuf,
}

impl Server {
    /// The URL of database `db` over TCP, with the password.
    pub fn url_of(&self, db: &str) -> String {
        format!(
            "postgresql://idem:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// The URL of database `db` over TCP without a password (give it by `PGPASSWORD`).
    pub fn url_without_password(&self, db: &str) -> String {
        format!("postgresql://idem@127.0.0.1:{}/{db}", self.port)
    }
}

/// The cluster, started on first use.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/pg.sh");
    // Not a TempDir: the script's watcher removes it once this process has exited.
    let base = std::env::temp_dir().join(format!(
        "idem-it-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&base)
        .arg(std::process::id().to_string())
        .output()
        .expect("run tests/pg.sh");
    assert!(
        out.status.success(),
        "the test PostgreSQL server could not start (tests/pg.sh start {}): {}\n\
         PostgreSQL 15 is installed by tests/setup.sh; run it, then the tests again.",
        base.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(base.join("env")).expect("tests/pg.sh wrote no env file");
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing from {}", base.join("env").display()))
            .to_string()
    };
    Server {
        url: get("PG_URL"),
        password: get("PG_PASSWORD"),
        port: get("PG_PORT").parse().unwrap(),
        socket_dir: PathBuf::from(get("PG_SOCKET")),
        ca: PathBuf::from(get("PG_CA")),
    }
}

/// A new, empty database on the server, named after `hint`; returns its name.
pub fn fresh_db(hint: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let clean: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!("t{}_{}", N.fetch_add(1, Ordering::Relaxed), clean);
    psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    name
}

/// Runs `sql` in database `db` as the superuser over the socket; returns what psql printed
/// (unaligned, tuples only: one row a line, columns separated by `|`). Panics on an error.
#[track_caller]
pub fn psql(db: &str, sql: &str) -> String {
    let s = server();
    let out = Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&s.socket_dir)
        .args(["-p", &s.port.to_string(), "-U", "idem", "-d", db, "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql -c {sql:?} in {db}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn the_test_server_answers_on_tcp_with_its_password_and_on_its_socket() {
    let s = server();
    let db = fresh_db("harness");
    assert_eq!(psql(&db, "SELECT 1 + 1"), "2");
    let out = Command::new("psql")
        .args(["-X", "-At", "-c", "SELECT current_user"])
        .arg(s.url_of(&db))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "idem");
    // Over TCP a wrong password is refused: the password in the URL is really checked.
    let out = Command::new("psql")
        .args(["-X", "-At", "-c", "SELECT 1"])
        .arg(format!("postgresql://idem:wrong@127.0.0.1:{}/{db}", s.port))
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The password may come from PGPASSWORD, as libpq reads it.
    let out = Command::new("psql")
        .args(["-X", "-At", "-c", "SELECT 3"])
        .arg(s.url_without_password(&db))
        .env("PGPASSWORD", &s.password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.url.ends_with("/postgres"), "{}", s.url);
}
