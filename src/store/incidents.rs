//! Incidents and their transitions: `incidents`, `incident_transitions`.

use chrono::{DateTime, Utc};
use rusqlite::{Transaction, params};
use serde::Serialize;

use super::runs::RunRow;
use super::{Result, Store, corrupt, sqlite_err, time_col, to_us};
use crate::events::{IncidentState, IncidentTransition};

const TABLE: &str = "incidents";

/// An incident not yet resolved, as the daemon restores it at start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenIncidentRow {
    pub id: String,
    pub check: String,
    pub target: String,
    pub severity: String,
    pub state: IncidentState,
    pub opened_at: DateTime<Utc>,
}

/// An incident for the CLI, with its runs.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentRow {
    pub id: String,
    pub check: String,
    pub target: String,
    pub severity: String,
    /// One of `firing`, `flapping`, `needs_human`, `resolved` (checked when read).
    pub state: String,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub detected_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub runs: Vec<RunRow>,
}

fn state(path: &str, id: &str, s: &str) -> Result<IncidentState> {
    IncidentState::parse(s).ok_or_else(|| {
        corrupt(
            path,
            TABLE,
            format!("id {id}"),
            format!("state {s:?} is not an incident state"),
        )
    })
}

/// The incident row (inserted when the transition opens it, else updated) and the
/// transition row. The caller queues the event in the same transaction.
pub(super) fn write_transition(
    tx: &Transaction<'_>,
    path: &str,
    t: &IncidentTransition,
    detected_at: Option<DateTime<Utc>>,
) -> Result<()> {
    let e = sqlite_err(path);
    let at = to_us(t.at);
    if t.from.is_none() {
        tx.execute(
            "INSERT INTO incidents (id, check_name, target, severity, state, opened_at_us,
                updated_at_us, resolved_at_us, detected_at_us, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, NULL, ?7, ?8)",
            params![
                t.incident_id,
                t.check,
                t.target,
                t.severity,
                t.to.as_str(),
                at,
                detected_at.map(to_us),
                t.reason
            ],
        )
        .map_err(e)?;
    } else {
        let resolved = (t.to == IncidentState::Resolved).then_some(at);
        tx.execute(
            "UPDATE incidents SET state = ?2, updated_at_us = ?3,
                resolved_at_us = COALESCE(?4, resolved_at_us), reason = ?5
             WHERE id = ?1",
            params![t.incident_id, t.to.as_str(), at, resolved, t.reason],
        )
        .map_err(e)?;
    }
    tx.execute(
        "INSERT INTO incident_transitions (incident_id, from_state, to_state, at_us, reason,
            observation_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            t.incident_id,
            t.from.map(|f| f.as_str()),
            t.to.as_str(),
            at,
            t.reason,
            t.observation.to_string()
        ],
    )
    .map_err(e)?;
    Ok(())
}

impl Store {
    /// Incidents not resolved, oldest first.
    pub fn open_incidents(&self) -> Result<Vec<OpenIncidentRow>> {
        let p = self.path.as_str();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, check_name, target, severity, state, opened_at_us FROM incidents
                 WHERE state != 'resolved' ORDER BY opened_at_us",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, check, target, severity, st, opened) = row.map_err(|e| self.err(e))?;
            out.push(OpenIncidentRow {
                state: state(p, &id, &st)?,
                opened_at: time_col(p, TABLE, format!("id {id}"), "opened_at_us", opened)?,
                id,
                check,
                target,
                severity,
            });
        }
        Ok(out)
    }

    /// Incidents for the CLI, newest first, each with its runs.
    pub fn list_incidents(&self, all: bool, limit: u32) -> Result<Vec<IncidentRow>> {
        let p = self.path.as_str();
        let sql = format!(
            "SELECT id, check_name, target, severity, state, opened_at_us, updated_at_us,
                resolved_at_us, detected_at_us, reason FROM incidents {}
             ORDER BY opened_at_us DESC LIMIT ?1",
            if all { "" } else { "WHERE state != 'resolved'" }
        );
        type Raw = (
            String,
            String,
            String,
            String,
            String,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            String,
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit], |r| -> rusqlite::Result<Raw> {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, check, target, severity, st, opened, updated, resolved, detected, reason) =
                row.map_err(|e| self.err(e))?;
            state(p, &id, &st)?;
            let rid = format!("id {id}");
            let time = |col: &str, us: i64| time_col(p, TABLE, &rid, col, us);
            out.push(IncidentRow {
                opened_at: time("opened_at_us", opened)?,
                updated_at: time("updated_at_us", updated)?,
                resolved_at: resolved.map(|us| time("resolved_at_us", us)).transpose()?,
                detected_at: detected.map(|us| time("detected_at_us", us)).transpose()?,
                runs: self.runs_of(&id)?,
                id,
                check,
                target,
                severity,
                state: st,
                reason,
            });
        }
        Ok(out)
    }

    /// One transition in a batch of its own (tests).
    #[cfg(test)]
    pub fn apply_transition(
        &mut self,
        t: &IncidentTransition,
        detected_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        self.commit(&super::Batch::new(vec![super::Record::Transition {
            transition: t.clone(),
            detected_at,
        }]))
    }
}
