//! How far each source (the journal, ...) has been read: `source_cursors`.

use chrono::Utc;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store, sqlite_err, to_us};

/// A source's cursor, written in the same transaction as what was read up to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub source: String,
    pub cursor: String,
}

pub(super) fn write(tx: &Transaction<'_>, path: &str, c: &Checkpoint) -> Result<()> {
    tx.execute(
        "INSERT INTO source_cursors (source, cursor, updated_at_us) VALUES (?1, ?2, ?3)
         ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor,
            updated_at_us = excluded.updated_at_us",
        params![c.source, c.cursor, to_us(Utc::now())],
    )
    .map_err(sqlite_err(path))?;
    Ok(())
}

impl Store {
    /// The last cursor committed for `source`, if any.
    pub fn cursor(&self, source: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT cursor FROM source_cursors WHERE source = ?1",
                [source],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}
