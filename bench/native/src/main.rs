//! The native references of idem's benchmarks (`bench/run.sh`): the same work as idem's
//! plans, written as a careful Rust program would do it, with no sandbox and no checkpoints.
//!
//! ```text
//! idem-bench-native upsert DB TABLE CSV   one transaction, one cached prepared statement
//! idem-bench-native each CSV ROOT         per record, ensure ROOT/spool/{id}.lock is absent
//! idem-bench-native stat-pages CSV ROOT   per record, stat ROOT/pages/{id} and its index.txt
//! ```
//! Each prints one line of counts, which the harness checks against idem's report.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["upsert", db, table, csv] => upsert(db, table, csv),
        ["each", csv, root] => each(csv, root),
        ["stat-pages", csv, root] => stat_pages(csv, root),
        _ => Err(
            "usage: idem-bench-native upsert DB TABLE CSV | each CSV ROOT | stat-pages CSV ROOT"
                .into(),
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idem-bench-native: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The lines of a CSV file after its header. The generated data has no quoting, so a split
/// on commas is exact (and is what a hand-written loader would do).
fn rows(csv: &str) -> Result<impl Iterator<Item = std::io::Result<String>>> {
    let mut lines = BufReader::with_capacity(64 * 1024, File::open(csv)?).lines();
    lines.next().transpose()?.ok_or("empty CSV")?;
    Ok(lines)
}

/// Upsert `id,name,email` rows: `INSERT ... ON CONFLICT(id) DO UPDATE ... WHERE` a column
/// differs, so unchanged rows are not written; counts rows written and left alone.
fn upsert(db: &str, table: &str, csv: &str) -> Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    let t = format!("\"{}\"", table.replace('"', "\"\""));
    let sql = format!(
        "INSERT INTO {t} (id, name, email) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET \
         name = excluded.name, email = excluded.email \
         WHERE {t}.name IS NOT excluded.name OR {t}.email IS NOT excluded.email"
    );
    let tx = conn.transaction()?;
    let (mut written, mut unchanged) = (0u64, 0u64);
    {
        let mut stmt = tx.prepare_cached(&sql)?;
        for line in rows(csv)? {
            let line = line?;
            let mut f = line.splitn(3, ',');
            let (Some(id), Some(name), Some(email)) = (f.next(), f.next(), f.next()) else {
                return Err(format!("bad row: {line}").into());
            };
            let id: i64 = id.parse()?;
            match stmt.execute(rusqlite::params![id, name, email])? {
                0 => unchanged += 1,
                _ => written += 1,
            }
        }
    }
    tx.commit()?;
    println!("written {written} unchanged {unchanged}");
    Ok(())
}

/// The plain loop of the `each` workload, without checkpoints: for every record, make sure
/// `spool/{id}.lock` is absent (like `rm -f`).
fn each(csv: &str, root: &str) -> Result<()> {
    let (mut removed, mut absent) = (0u64, 0u64);
    let mut path = String::new();
    for line in rows(csv)? {
        let line = line?;
        let id = line.split(',').next().unwrap_or_default();
        path.clear();
        path.push_str(root);
        path.push_str("/spool/");
        path.push_str(id);
        path.push_str(".lock");
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => absent += 1,
            Err(e) => return Err(format!("{path}: {e}").into()),
        }
    }
    println!("removed {removed} absent {absent}");
    Ok(())
}

/// What a converged re-run of the `each` that writes pages must at least do, without
/// checkpoints or fingerprints: for every record, `lstat` its directory `pages/{id}` and its
/// file `pages/{id}/index.txt`, as a build tool stats its outputs. Counts the outputs present.
fn stat_pages(csv: &str, root: &str) -> Result<()> {
    let (mut present, mut missing) = (0u64, 0u64);
    let mut path = String::new();
    for line in rows(csv)? {
        let line = line?;
        let id = line.split(',').next().unwrap_or_default();
        path.clear();
        path.push_str(root);
        path.push_str("/pages/");
        path.push_str(id);
        for leaf in ["", "/index.txt"] {
            let at = path.len();
            path.push_str(leaf);
            match std::fs::symlink_metadata(&path) {
                Ok(_) => present += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing += 1,
                Err(e) => return Err(format!("{path}: {e}").into()),
            }
            path.truncate(at);
        }
    }
    println!("present {present} missing {missing}");
    Ok(())
}
