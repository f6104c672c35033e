//! State changes that count towards flapping: `flap_edges`, pruned to the flap window.

use chrono::{DateTime, Utc};
use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store, sqlite_err, time_col, to_us};

/// One counted state change of a (check, target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRow {
    pub check: String,
    pub target: String,
    pub at: DateTime<Utc>,
}

/// Inserts `edges`, then forgets those older than `keep_since` (they are outside
/// every flap window from now on).
pub(super) fn write(
    tx: &Transaction<'_>,
    path: &str,
    edges: &[EdgeRow],
    keep_since: DateTime<Utc>,
) -> Result<()> {
    let e = sqlite_err(path);
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO flap_edges (check_name, target, at_us) VALUES (?1, ?2, ?3)",
            )
            .map_err(e)?;
        for edge in edges {
            insert
                .execute(params![edge.check, edge.target, to_us(edge.at)])
                .map_err(e)?;
        }
    }
    tx.execute(
        "DELETE FROM flap_edges WHERE at_us < ?1",
        [to_us(keep_since)],
    )
    .map_err(e)?;
    Ok(())
}

impl Store {
    /// State changes at or after `since`, oldest first.
    pub fn edges_since(&self, since: DateTime<Utc>) -> Result<Vec<EdgeRow>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT rowid, check_name, target, at_us FROM flap_edges WHERE at_us >= ?1
                 ORDER BY at_us, rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([to_us(since)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (rowid, check, target, at) = row.map_err(|e| self.err(e))?;
            out.push(EdgeRow {
                at: time_col(
                    &self.path,
                    "flap_edges",
                    format!("rowid {rowid}"),
                    "at_us",
                    at,
                )?,
                check,
                target,
            });
        }
        Ok(out)
    }

    /// Edges in a batch of their own (tests).
    #[cfg(test)]
    pub fn record_edges(&mut self, edges: &[EdgeRow], keep_since: DateTime<Utc>) -> Result<()> {
        self.commit(&super::Batch::new(vec![super::Record::Edges {
            edges: edges.to_vec(),
            keep_since,
        }]))
    }
}
