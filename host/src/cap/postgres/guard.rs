//! What a plugin may send to PostgreSQL: the host's check of each statement before it reaches
//! the server, so that a plugin stays inside the one database its step names, inside the
//! transaction the host owns, and as the role the host connected as.
//!
//! Parsing SQL text is fragile, so this is one of three layers, not the only one:
//!
//! 1. **The extended protocol only.** Every statement goes through Parse/Bind/Execute (the
//!    driver prepares even a statement without parameters), where the server itself refuses
//!    a string holding two commands. A `;` followed by more is also refused here, to say so
//!    plainly.
//! 2. **This allow-list**, on the statement's tokens (comments, strings, dollar-quoted bodies
//!    and quoted identifiers lexed as PostgreSQL lexes them): the statement must begin with a
//!    data or table command (`SELECT`, `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `WITH`,
//!    `VALUES`, `TABLE`, `CREATE`/`ALTER`/`DROP` of tables, indexes, views and sequences,
//!    `TRUNCATE`, `COMMENT`), or for `copy-in`, `COPY … FROM STDIN`. Everything else is
//!    refused by its first words: transaction control (the host owns it: `begin`, `commit`,
//!    `rollback` of the interface), `SET`/`RESET` (roles, `search_path`, session
//!    authorization), `DO`, `CALL`, `LISTEN`/`NOTIFY`, `LOAD`, `CREATE EXTENSION`/
//!    `FUNCTION`/`SERVER`/`ROLE`/…, `COPY` to or from files or programs, `GRANT`, `VACUUM`.
//!    Then, anywhere in the statement, the functions that leave the database or change the
//!    session are refused by name, schema-qualified or not: `dblink*`, `lo_*`,
//!    `pg_read_file` and the other server-file functions, `set_config`, advisory locks
//!    (idem's own run lock is one), `query_to_xml` and friends (they run a query given as
//!    text), `pg_notify`, backend signals. And idem's own schema (`idem.`), which holds
//!    every job's state, is not a plugin's to touch.
//! 3. **The session is checked after each statement**: `current_user`, `session_user` and
//!    `search_path` must be what they were when the plugin first used the connection. A
//!    change made some way this list did not foresee (a `SECURITY DEFINER` function the
//!    database already had, say) fails the step, and the connection is not used again.
//!
//! What stays the database's to refuse: a least-privilege role (docs/plugins.md gives the
//! GRANTs) bounds what even an allowed statement can reach, such as a foreign table someone
//! made with `postgres_fdw` or a function that runs dynamic SQL.

/// What a statement is for, which decides its allowed first words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `execute` and `query`.
    Statement,
    /// `copy-in`.
    CopyIn,
}

#[derive(Debug, PartialEq, Eq)]
enum Tok {
    /// An unquoted word, lowercased.
    Word(String),
    /// A quoted identifier, as written inside the quotes.
    Quoted(String),
    /// A string, dollar-quoted body, number or parameter: a value, never a name.
    Literal,
    Punct(char),
}

/// Functions (or prefixes of their names, ending in `*`) a plugin may not call.
const FUNCTIONS: &[&str] = &[
    "dblink*",
    "lo_*",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "set_config",
    "pg_advisory*",
    "pg_try_advisory*",
    "query_to_xml*",
    "cursor_to_xml*",
    "database_to_xml*",
    "schema_to_xml*",
    "pg_notify",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_*",
    "pg_drop_replication_slot",
    "pg_logical_*",
    "pg_replication_*",
    "pg_backup_*",
    "pg_import_system_collations",
];

/// Whether a plugin may run `sql` through `entry`; the reason when not, naming what it saw.
pub fn check(sql: &str, entry: Entry) -> Result<(), String> {
    let toks = lex(sql)?;
    let words: Vec<&str> = toks
        .iter()
        .filter_map(|t| match t {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .take(5)
        .collect();
    if let Some(i) = toks.iter().position(|t| *t == Tok::Punct(';'))
        && i + 1 < toks.len()
    {
        return Err("one statement per call: the string holds more after a `;`".into());
    }
    let first = match toks.first() {
        Some(Tok::Word(w)) => w.as_str(),
        Some(Tok::Punct('(')) => "(",
        None => return Err("the statement is empty".into()),
        _ => return Err("a statement begins with a command word".into()),
    };
    match entry {
        Entry::CopyIn => {
            let from = toks.iter().position(|t| *t == Tok::Word("from".into()));
            let stdin = from.and_then(|i| toks.get(i + 1)) == Some(&Tok::Word("stdin".into()));
            if first != "copy" || !stdin {
                return Err(
                    "`copy-in` runs only `COPY table [(columns)] FROM STDIN …`: no files, \
                     no PROGRAM, no COPY TO"
                        .into(),
                );
            }
        }
        Entry::Statement => allowed_command(first, &words)?,
    }
    for (i, t) in toks.iter().enumerate() {
        let name = match t {
            Tok::Word(w) => w.as_str(),
            Tok::Quoted(q) => q.as_str(),
            _ => continue,
        };
        if name == "idem" && toks.get(i + 1) == Some(&Tok::Punct('.')) {
            return Err(
                "idem's own schema `idem` holds the state of every job and is not a plugin's"
                    .into(),
            );
        }
        let called = matches!(toks.get(i + 1), Some(Tok::Punct('(')));
        let denied = FUNCTIONS.iter().any(|f| match f.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *f,
        });
        // A prefix such as `lo_` is refused only where it is called, so a column named
        // `lo_water` stays usable; an exact name is refused anywhere it appears (a function
        // may be named without a call, as a `regproc` or in `FROM f(...)`).
        let exact = FUNCTIONS.contains(&name);
        if denied && (called || exact) {
            return Err(format!(
                "`{name}` reaches outside the database or changes the session, and plugins may \
                 not call it"
            ));
        }
    }
    Ok(())
}

fn allowed_command(first: &str, words: &[&str]) -> Result<(), String> {
    let second = words.get(1).copied().unwrap_or("");
    let objects = ["table", "index", "view", "sequence"];
    let ok = match first {
        "select" | "insert" | "update" | "delete" | "merge" | "with" | "values" | "table"
        | "truncate" | "comment" | "(" => true,
        "create" => {
            // CREATE [OR REPLACE] [TEMP|TEMPORARY|UNLOGGED] [UNIQUE] TABLE|INDEX|VIEW|SEQUENCE,
            // or MATERIALIZED VIEW.
            let rest: Vec<&str> = words[1..]
                .iter()
                .copied()
                .filter(|w| {
                    !matches!(
                        *w,
                        "or" | "replace"
                            | "temp"
                            | "temporary"
                            | "unlogged"
                            | "unique"
                            | "local"
                            | "global"
                    )
                })
                .collect();
            match rest.first() {
                Some(&"materialized") => rest.get(1) == Some(&"view"),
                Some(w) => objects.contains(w),
                None => false,
            }
        }
        "alter" | "drop" => {
            objects.contains(&second) || (second == "materialized" && words.get(2) == Some(&"view"))
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let shown = words
        .iter()
        .take(2)
        .map(|w| w.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(" ");
    let why = match first {
        "begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release"
        | "prepare" => {
            "the host owns the transaction: use the interface's `begin`, `commit` and \
             `rollback`"
        }
        "set" | "reset" => "a plugin may not change the session's role or settings",
        "copy" => "COPY runs only through `copy-in`, and only FROM STDIN",
        "do" | "call" => "a plugin may not run code blocks or procedures",
        "listen" | "notify" | "unlisten" => "notifications reach other sessions outside the run",
        _ => {
            "plugins may run data and table commands only (SELECT, INSERT, UPDATE, DELETE, \
             MERGE, WITH, VALUES, CREATE/ALTER/DROP of tables, indexes, views and sequences, \
             TRUNCATE, COMMENT)"
        }
    };
    Err(format!("`{shown}` is refused: {why}"))
}

/// The statement's tokens, lexed as PostgreSQL does where it matters: `--` and nested
/// `/* */` comments skipped, `'…'`, `E'…'` (with backslash escapes) and `$tag$…$tag$`
/// strings as literals, `"…"` identifiers kept as written. `U&` identifiers are refused:
/// their escapes could spell any name.
fn lex(sql: &str) -> Result<Vec<Tok>, String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let unterminated = |what: &str| Err(format!("an unterminated {what}"));
    while i < b.len() {
        let c = b[i];
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                loop {
                    if i + 1 >= b.len() {
                        return unterminated("comment");
                    }
                    if b[i] == b'/' && b[i + 1] == b'*' {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b[i + 1] == b'/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                i = string_end(b, i + 1, false).ok_or("an unterminated string")?;
                out.push(Tok::Literal);
            }
            b'"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return unterminated("quoted identifier"),
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                            s.push('"');
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => {
                            let ch = sql[i..].chars().next().unwrap_or('\u{fffd}');
                            s.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push(Tok::Quoted(s));
            }
            b'$' => {
                // `$1` is a parameter; `$tag$` or `$$` opens a dollar-quoted string.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e) if b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &sql[i..=e];
                        let body = &sql[e + 1..];
                        let close = body
                            .find(tag)
                            .ok_or("an unterminated dollar-quoted string")?;
                        i = e + 1 + close + tag.len();
                        out.push(Tok::Literal);
                    }
                    _ => {
                        i += 1;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                        out.push(Tok::Literal);
                    }
                }
            }
            _ if c.is_ascii_digit() => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                out.push(Tok::Literal);
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                let word = sql[start..i].to_ascii_lowercase();
                match (word.as_str(), b.get(i)) {
                    ("e", Some(b'\'')) => {
                        i = string_end(b, i + 1, true).ok_or("an unterminated string")?;
                        out.push(Tok::Literal);
                    }
                    ("b" | "x" | "n", Some(b'\'')) => {
                        i = string_end(b, i + 1, false).ok_or("an unterminated string")?;
                        out.push(Tok::Literal);
                    }
                    ("u", Some(b'&')) => {
                        return Err(
                            "U& escapes are refused in a plugin's statements (write the name or \
                             string plainly)"
                                .into(),
                        );
                    }
                    _ => out.push(Tok::Word(word)),
                }
            }
            _ => {
                out.push(Tok::Punct(c as char));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The index just past the string whose body starts at `i` (`''` is a quote; with
/// `backslash`, `\` escapes the next byte).
fn string_end(b: &[u8], mut i: usize, backslash: bool) -> Option<usize> {
    loop {
        match b.get(i)? {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_table_commands_pass() {
        for sql in [
            "SELECT 1",
            "select * from t where name = 'COMMIT; DROP'",
            "INSERT INTO t (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "UPDATE t SET lo_water = 1",
            "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)",
            "CREATE UNIQUE INDEX t_i ON t (id)",
            "create temp table s as select 1",
            "ALTER TABLE t ADD COLUMN n int",
            "DROP TABLE t",
            "-- a comment\nSELECT $$COMMIT$$",
            "/* nested /* comment */ */ SELECT 1;",
            "SELECT E'it\\'s'",
        ] {
            assert_eq!(check(sql, Entry::Statement), Ok(()), "{sql}");
        }
        assert_eq!(check("COPY t (id) FROM STDIN", Entry::CopyIn), Ok(()));
    }

    #[test]
    fn escapes_are_refused() {
        for sql in [
            "BEGIN",
            "  commit",
            "/* x */ ROLLBACK",
            "SAVEPOINT s",
            "SET ROLE postgres",
            "SET SESSION AUTHORIZATION postgres",
            "RESET ROLE",
            "SELECT set_config('role', 'postgres', false)",
            "SELECT pg_catalog.set_config('search_path', 'x', false)",
            "SELECT \"set_config\"('role', 'x', false)",
            "SELECT dblink_exec('host=x', 'DROP TABLE t')",
            "SELECT * FROM dblink('x', 'select 1') AS t(a int)",
            "CREATE EXTENSION dblink",
            "CREATE EXTENSION postgres_fdw",
            "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw",
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "DO $$BEGIN EXECUTE 'COMMIT'; END$$",
            "CALL p()",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT lo_export(1, '/tmp/x')",
            "LISTEN x",
            "NOTIFY x",
            "SELECT pg_notify('x', 'y')",
            "SELECT pg_advisory_unlock_all()",
            "SELECT query_to_xml('select 1', true, true, '')",
            "SELECT 1; COMMIT",
            "DELETE FROM idem.checkpoints",
            "SELECT * FROM \"idem\".runs",
            "COPY t FROM '/etc/passwd'",
            "SELECT U&\"d\\0062link\"('x')",
            "VACUUM",
            "GRANT ALL ON t TO public",
            "LOAD 'x'",
            "",
        ] {
            assert!(check(sql, Entry::Statement).is_err(), "{sql:?} passed");
        }
        for sql in [
            "COPY t FROM PROGRAM 'id'",
            "COPY t TO '/tmp/x'",
            "COPY t FROM '/etc/passwd'",
            "COPY (SELECT 1) TO STDOUT",
            "SELECT 1",
        ] {
            assert!(check(sql, Entry::CopyIn).is_err(), "{sql:?} passed copy-in");
        }
    }
}
