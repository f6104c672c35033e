//! Silences set with `msp-agent silence`: `silences`.

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::Serialize;

use super::{Result, Store, time_col, to_us};

/// A silence in force: no remediation of `target` (a unit name or glob) until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SilenceRow {
    pub id: i64,
    pub target: String,
    pub until: DateTime<Utc>,
    pub reason: String,
}

impl Store {
    /// Records a silence; returns its ID.
    pub fn add_silence(
        &mut self,
        target: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        reason: &str,
        by: &str,
    ) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO silences (target, created_at_us, until_us, reason, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![target, to_us(now), to_us(until), reason, by],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Silences that end after `now`, in the order they were set.
    pub fn active_silences(&self, now: DateTime<Utc>) -> Result<Vec<SilenceRow>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, target, until_us, reason FROM silences WHERE until_us > ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([to_us(now)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, target, until, reason) = row.map_err(|e| self.err(e))?;
            out.push(SilenceRow {
                until: time_col(
                    &self.path,
                    "silences",
                    format!("id {id}"),
                    "until_us",
                    until,
                )?,
                id,
                target,
                reason,
            });
        }
        Ok(out)
    }
}
