//! The SQL authorizer: which statements a guest may prepare on its one database.
//!
//! Denied: whatever reaches beyond the database (ATTACH, DETACH; `VACUUM INTO` is also
//! stopped by the connection's attached-database limit of 0), transaction control in SQL
//! (the host's `begin`/`commit`/`rollback` keep transactions accounted for), loading
//! extensions, and pragmas outside a read-mostly allow-list. Host statements run with the
//! [`Guard`]'s `internal` flag set and are always allowed.
//!
//! When it denies, the authorizer says so in the guard, so the error that follows is
//! classified as a denial by that fact, never by the words of SQLite's message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Pragmas a guest may use: reading the schema, checks, and per-connection switches that
/// cannot change how the file is written.
const ALLOWED_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "user_version",
    "application_id",
    "schema_version",
    "page_count",
    "page_size",
    "freelist_count",
    "foreign_keys",
    "defer_foreign_keys",
    "recursive_triggers",
    "data_version",
    "collation_list",
    "function_list",
    "pragma_list",
    "compile_options",
];

/// Pragmas that read a value of the database header when given no value, and write it when
/// given one: a guest may read them only. A write would change the file (`user_version`,
/// `application_id`) or corrupt it (`schema_version`), and SQLite reports no rows changed.
const HEADER_PRAGMAS: &[&str] = &[
    "user_version",
    "application_id",
    "schema_version",
    "page_size",
];

/// Shared between a connection's authorizer and the capability that owns the connection.
#[derive(Clone, Default)]
pub struct Guard {
    /// Set while the host runs its own statements.
    internal: Arc<AtomicBool>,
    /// Set by the authorizer when it denied something since the last [`Guard::take_denied`].
    denied: Arc<AtomicBool>,
}

impl Guard {
    /// Run `f` as the host: the authorizer allows everything meanwhile.
    pub fn as_host<T>(&self, f: impl FnOnce() -> T) -> T {
        self.internal.store(true, Ordering::Relaxed);
        let r = f();
        self.internal.store(false, Ordering::Relaxed);
        r
    }

    /// Whether the authorizer denied something since the last call.
    pub fn take_denied(&self) -> bool {
        self.denied.swap(false, Ordering::Relaxed)
    }

    /// The authorizer callback for this guard's connection.
    pub fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        if self.internal.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        let verdict = decide(&ctx.action);
        if verdict == Authorization::Deny {
            self.denied.store(true, Ordering::Relaxed);
        }
        verdict
    }
}

/// The pure decision for one action a guest's statement needs.
fn decide(action: &AuthAction<'_>) -> Authorization {
    match action {
        AuthAction::Attach { .. }
        | AuthAction::Detach { .. }
        | AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. } => Authorization::Deny,
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            if HEADER_PRAGMAS.contains(&name.as_str()) && pragma_value.is_some() {
                Authorization::Deny
            } else if ALLOWED_PRAGMAS.contains(&name.as_str()) {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::hooks::TransactionOperation;

    #[test]
    fn actions_are_allowed_or_denied_as_documented() {
        use Authorization::{Allow, Deny};
        let table: &[(AuthAction<'_>, Authorization)] = &[
            (
                AuthAction::Attach {
                    filename: "/tmp/x.db",
                },
                Deny,
            ),
            (AuthAction::Detach { database_name: "x" }, Deny),
            (
                AuthAction::Transaction {
                    operation: TransactionOperation::Begin,
                },
                Deny,
            ),
            (
                AuthAction::Pragma {
                    pragma_name: "journal_mode",
                    pragma_value: Some("OFF"),
                },
                Deny,
            ),
            (
                AuthAction::Pragma {
                    pragma_name: "writable_schema",
                    pragma_value: Some("ON"),
                },
                Deny,
            ),
            (
                AuthAction::Pragma {
                    pragma_name: "TABLE_INFO",
                    pragma_value: Some("t"),
                },
                Allow,
            ),
            (
                AuthAction::Pragma {
                    pragma_name: "user_version",
                    pragma_value: None,
                },
                Allow,
            ),
            (
                AuthAction::Pragma {
                    pragma_name: "user_version",
                    pragma_value: Some("5"),
                },
                Deny,
            ),
            (
                AuthAction::Pragma {
                    pragma_name: "Schema_Version",
                    pragma_value: Some("1"),
                },
                Deny,
            ),
            (
                AuthAction::Pragma {
                    pragma_name: "page_size",
                    pragma_value: Some("512"),
                },
                Deny,
            ),
            (
                AuthAction::Pragma {
                    pragma_name: "foreign_keys",
                    pragma_value: Some("ON"),
                },
                Allow,
            ),
            (
                AuthAction::Function {
                    function_name: "LOAD_EXTENSION",
                },
                Deny,
            ),
            (
                AuthAction::Function {
                    function_name: "lower",
                },
                Allow,
            ),
            (AuthAction::Insert { table_name: "t" }, Allow),
        ];
        for (action, want) in table {
            assert_eq!(decide(action), *want, "{action:?}");
        }
    }

    fn conn() -> (rusqlite::Connection, Guard) {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        c.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)
            .unwrap();
        let g = Guard::default();
        let g2 = g.clone();
        c.authorizer(Some(move |ctx: AuthContext<'_>| g2.authorize(ctx)))
            .unwrap();
        (c, g)
    }

    #[test]
    fn a_denied_statement_is_known_as_denied_and_host_statements_pass() {
        let (c, g) = conn();
        assert!(c.execute_batch("BEGIN").is_err());
        assert!(g.take_denied(), "the authorizer said so");
        assert!(!g.take_denied(), "taken once");
        g.as_host(|| c.execute_batch("BEGIN; COMMIT")).unwrap();
        assert!(!g.take_denied());
        c.execute_batch("CREATE TABLE t (x)").unwrap();
        assert!(!g.take_denied());
        assert!(c.execute_batch("SELECT * FROM nope").is_err());
        assert!(!g.take_denied(), "an ordinary error is not a denial");
    }

    #[test]
    fn vacuum_into_is_refused_as_a_denial() {
        let (c, g) = conn();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy.db");
        let r = c.execute_batch(&format!("VACUUM INTO '{}'", target.display()));
        assert!(r.is_err());
        assert!(g.take_denied(), "{r:?}");
        assert!(!target.exists());
    }
}
