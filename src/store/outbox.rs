//! Events awaiting evidence: `outbox`. A row is written in the same transaction as
//! what it proves, and deleted only once its bundle is durable.

use chrono::Utc;
use rusqlite::{Transaction, params};

use super::{Result, Store, encode, json_col, sqlite_err, to_us};
use crate::events::Event;

pub(super) fn queue(tx: &Transaction<'_>, path: &str, event: &Event) -> Result<()> {
    tx.execute(
        "INSERT INTO outbox (incident_id, created_at_us, event_json) VALUES (?1, ?2, ?3)",
        params![
            event.incident_id(),
            to_us(Utc::now()),
            encode(path, "an outbox event", event)?
        ],
    )
    .map_err(sqlite_err(path))?;
    Ok(())
}

impl Store {
    /// The oldest events not yet sealed as evidence, in order.
    pub fn outbox(&self, limit: u32) -> Result<Vec<(i64, Event)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, event_json FROM outbox ORDER BY id LIMIT ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(|e| self.err(e))?;
            let event = json_col(
                &self.path,
                "outbox",
                format!("id {id}"),
                "event_json",
                &json,
            )?;
            out.push((id, event));
        }
        Ok(out)
    }

    pub fn outbox_len(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Forgets an event whose bundle is durable.
    pub fn outbox_done(&mut self, id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}
