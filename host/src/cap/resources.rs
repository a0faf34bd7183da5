//! What the guest's resource handles stand for on the host side: a file reader, a database
//! and a prepared statement. They live here, apart from the capabilities that use them, so the
//! bindings can name them without depending on those capabilities.

use std::io::{self, Read};
use std::sync::Arc;

/// The largest chunk a reader hands out per call.
const MAX_CHUNK: u32 = 4 << 20;

/// Read access to one file, handed to the guest as a `reader` resource.
pub enum Reader {
    File(cap_std::fs::File),
    /// A file planned by a dry run: its planned content.
    Memory {
        data: Arc<Vec<u8>>,
        pos: usize,
    },
}

impl Reader {
    /// Up to `max` next bytes; empty at end of file.
    pub fn next_chunk(&mut self, max: u32) -> io::Result<Vec<u8>> {
        let max = max.clamp(1, MAX_CHUNK) as usize;
        match self {
            Reader::File(f) => {
                let mut buf = vec![0; max];
                let mut filled = 0;
                // Fill the buffer: fewer calls across the boundary for the same bytes.
                while filled < max {
                    match f.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok(buf)
            }
            Reader::Memory { data, pos } => {
                let end = (*pos + max).min(data.len());
                let chunk = data[*pos..end].to_vec();
                *pos = end;
                Ok(chunk)
            }
        }
    }
}

/// The guest's handle on a database: an index into the step's databases.
pub struct DbHandle(pub usize);

/// The guest's handle on a prepared statement: the database and the SQL text; the
/// connection's statement cache keeps the compiled form.
pub struct StmtHandle {
    pub db: usize,
    pub sql: String,
}

/// The guest's handle on a PostgreSQL connection: an index into the scope's connections.
pub struct PgHandle(pub usize);
