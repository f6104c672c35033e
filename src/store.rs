//! SQLite: the incident history, runbook runs, rate-limit memory, silences,
//! the agent's status for the CLI, and the outbox of events awaiting evidence.
//!
//! The schema is documented in docs/store.md and is meant to be read with
//! `sqlite3`. Times are Unix microseconds (UTC). Every state change and the
//! event that proves it are written in one transaction: an incident is never
//! recorded without its evidence being queued, and vice versa.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use crate::decide::incident::{Edge, OpenIncident};
use crate::decide::limits::Silence;
use crate::events::{Event, IncidentState, IncidentTransition, RunOutcome, RunbookRun};

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: {message}")]
    Corrupt { path: String, message: String },
}

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id             TEXT PRIMARY KEY,
    check_name     TEXT NOT NULL,
    target         TEXT NOT NULL,
    severity       TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('firing','flapping','needs_human','resolved')),
    opened_at_us   INTEGER NOT NULL,
    updated_at_us  INTEGER NOT NULL,
    resolved_at_us INTEGER,
    detected_at_us INTEGER,
    reason         TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open
    ON incidents (check_name, target) WHERE state != 'resolved';
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents (opened_at_us);
CREATE TABLE IF NOT EXISTS incident_transitions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id      TEXT NOT NULL REFERENCES incidents (id),
    from_state       TEXT,
    to_state         TEXT NOT NULL,
    at_us            INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    observation_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runbook_runs (
    run_id          TEXT PRIMARY KEY,
    incident_id     TEXT NOT NULL REFERENCES incidents (id),
    runbook         TEXT NOT NULL,
    target          TEXT NOT NULL,
    dry_run         INTEGER NOT NULL,
    started_at_us   INTEGER NOT NULL,
    finished_at_us  INTEGER,
    outcome         TEXT NOT NULL CHECK (outcome IN
        ('running','success','failed','dry_run','rate_limited','suppressed','interrupted')),
    steps_json      TEXT NOT NULL,
    rate_limit_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runbook_runs_target ON runbook_runs (runbook, target, started_at_us);
CREATE TABLE IF NOT EXISTS silences (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    target        TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    until_us      INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    created_by    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_status (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS flap_edges (
    check_name TEXT NOT NULL,
    target     TEXT NOT NULL,
    at_us      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flap_edges_at ON flap_edges (at_us);
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id   TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    event_json    TEXT NOT NULL
);
"#;

pub struct Store {
    conn: Connection,
    path: String,
}

/// The error for a failed statement on the database at `path` (for `map_err` where
/// `self` is already borrowed, as by an open transaction).
fn sqlite_err(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

pub fn to_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_us(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Outcomes that used a run of the budget (a refusal did not).
const COUNTED_OUTCOMES: &str = "outcome IN ('running','success','failed','dry_run','interrupted')";

impl Store {
    /// Opens (creating if needed) the database for the daemon.
    pub fn open(path: &Path) -> Result<Store> {
        let p = path.display().to_string();
        let err = sqlite_err(&p);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let store = Store { conn, path: p };
        store.check_version()?;
        Ok(store)
    }

    /// Opens an existing database for reading (the CLI while the daemon runs).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let p = path.display().to_string();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_err(&p))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sqlite_err(&p))?;
        Ok(Store { conn, path: p })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        sqlite_err(&self.path)(source)
    }

    fn check_version(&self) -> Result<()> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key='schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match v {
            None => {
                self.conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                        [SCHEMA_VERSION.to_string()],
                    )
                    .map_err(|e| self.err(e))?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    message: format!(
                        "schema version {v}, this agent knows {SCHEMA_VERSION}: upgrade the agent"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Records a transition, updates the incident row and queues the event.
    pub fn apply_transition(
        &mut self,
        t: &IncidentTransition,
        detected_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let e = sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(e)?;
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
        queue(&tx, &Event::IncidentTransition(t.clone())).map_err(e)?;
        tx.commit().map_err(e)
    }

    pub fn open_incidents(&self) -> Result<Vec<OpenIncident>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, check_name, target, severity, state, opened_at_us FROM incidents
                 WHERE state != 'resolved' ORDER BY opened_at_us",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let state: String = r.get(4)?;
                Ok(OpenIncident {
                    id: r.get(0)?,
                    check: r.get(1)?,
                    target: r.get(2)?,
                    severity: r.get(3)?,
                    state: IncidentState::parse(&state).unwrap_or(IncidentState::Firing),
                    opened_at: from_us(r.get(5)?),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Writes a run before its first step, so a crash leaves a trace that
    /// counts against the limits and is closed as interrupted at next start.
    pub fn begin_run(&mut self, run: &RunbookRun) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO runbook_runs (run_id, incident_id, runbook, target, dry_run,
                    started_at_us, finished_at_us, outcome, steps_json, rate_limit_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 'running', '[]', ?7)",
                params![
                    run.run_id,
                    run.incident_id,
                    run.runbook,
                    run.target,
                    run.dry_run,
                    to_us(run.started_at),
                    serde_json::to_string(&run.rate_limit).unwrap_or_default()
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Closes a run (or records a refusal) and queues its event.
    pub fn finish_run(&mut self, run: &RunbookRun) -> Result<()> {
        let e = sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute(
            "INSERT INTO runbook_runs (run_id, incident_id, runbook, target, dry_run,
                started_at_us, finished_at_us, outcome, steps_json, rate_limit_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (run_id) DO UPDATE SET finished_at_us = excluded.finished_at_us,
                outcome = excluded.outcome, steps_json = excluded.steps_json,
                rate_limit_json = excluded.rate_limit_json",
            params![
                run.run_id,
                run.incident_id,
                run.runbook,
                run.target,
                run.dry_run,
                to_us(run.started_at),
                run.finished_at.map(to_us),
                run.outcome.as_str(),
                serde_json::to_string(&run.steps).unwrap_or_default(),
                serde_json::to_string(&run.rate_limit).unwrap_or_default()
            ],
        )
        .map_err(e)?;
        queue(&tx, &Event::RunbookRun(run.clone())).map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Closes runs a previous process left `running` (it died or was killed
    /// mid-runbook). They keep counting against the limits; none is redone
    /// blindly: the fresh observation decides whether a new run is needed.
    pub fn close_interrupted_runs(&mut self, now: DateTime<Utc>) -> Result<Vec<RunbookRun>> {
        let mut runs = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT run_id, incident_id, runbook, target, dry_run, started_at_us,
                        steps_json, rate_limit_json FROM runbook_runs WHERE outcome = 'running'",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    let steps: String = r.get(6)?;
                    let limits: String = r.get(7)?;
                    Ok(RunbookRun {
                        run_id: r.get(0)?,
                        incident_id: r.get(1)?,
                        runbook: r.get(2)?,
                        target: r.get(3)?,
                        dry_run: r.get(4)?,
                        started_at: from_us(r.get(5)?),
                        finished_at: Some(now),
                        outcome: RunOutcome::Interrupted,
                        steps: serde_json::from_str(&steps).unwrap_or_default(),
                        rate_limit: serde_json::from_str(&limits).unwrap_or_default(),
                    })
                })
                .map_err(|e| self.err(e))?;
            for r in rows {
                runs.push(r.map_err(|e| self.err(e))?);
            }
        }
        for run in &runs {
            self.finish_run(run)?;
        }
        Ok(runs)
    }

    /// Start times of counted runs of `runbook` on `target` since `since`.
    pub fn run_starts(
        &self,
        runbook: &str,
        target: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>> {
        let sql = format!(
            "SELECT started_at_us FROM runbook_runs WHERE runbook = ?1 AND target = ?2
             AND started_at_us > ?3 AND {COUNTED_OUTCOMES} ORDER BY started_at_us"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![runbook, target, to_us(since)], |r| {
                Ok(from_us(r.get(0)?))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    pub fn runs_since(&self, since: DateTime<Utc>) -> Result<u32> {
        let sql = format!(
            "SELECT COUNT(*) FROM runbook_runs WHERE started_at_us > ?1 AND {COUNTED_OUTCOMES}"
        );
        self.conn
            .query_row(&sql, [to_us(since)], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

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

    /// Records state changes that count towards flapping, and forgets those older
    /// than `keep_since` (they are outside every flap window from now on).
    pub fn record_edges(&mut self, edges: &[Edge], keep_since: DateTime<Utc>) -> Result<()> {
        let e = sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(e)?;
        for edge in edges {
            tx.execute(
                "INSERT INTO flap_edges (check_name, target, at_us) VALUES (?1, ?2, ?3)",
                params![edge.check, edge.target, to_us(edge.at)],
            )
            .map_err(e)?;
        }
        tx.execute(
            "DELETE FROM flap_edges WHERE at_us < ?1",
            [to_us(keep_since)],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// State changes at or after `since`, oldest first.
    pub fn edges_since(&self, since: DateTime<Utc>) -> Result<Vec<Edge>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT check_name, target, at_us FROM flap_edges WHERE at_us >= ?1
                 ORDER BY at_us",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([to_us(since)], |r| {
                Ok(Edge {
                    check: r.get(0)?,
                    target: r.get(1)?,
                    at: from_us(r.get(2)?),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    pub fn active_silences(&self, now: DateTime<Utc>) -> Result<Vec<Silence>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, target, until_us, reason FROM silences WHERE until_us > ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([to_us(now)], |r| {
                Ok(Silence {
                    id: r.get(0)?,
                    target: r.get(1)?,
                    until: from_us(r.get(2)?),
                    reason: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    pub fn set_status(&mut self, pairs: &[(&str, String)]) -> Result<()> {
        let e = sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(e)?;
        for (k, v) in pairs {
            tx.execute(
                "INSERT INTO agent_status (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    pub fn status(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM agent_status ORDER BY key")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Incidents for the CLI, newest first, each with its runs.
    pub fn list_incidents(&self, all: bool, limit: u32) -> Result<Vec<IncidentRow>> {
        let sql = format!(
            "SELECT id, check_name, target, severity, state, opened_at_us, updated_at_us,
                resolved_at_us, detected_at_us, reason FROM incidents {}
             ORDER BY opened_at_us DESC LIMIT ?1",
            if all { "" } else { "WHERE state != 'resolved'" }
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(IncidentRow {
                    id: r.get(0)?,
                    check: r.get(1)?,
                    target: r.get(2)?,
                    severity: r.get(3)?,
                    state: r.get(4)?,
                    opened_at: from_us(r.get(5)?),
                    updated_at: from_us(r.get(6)?),
                    resolved_at: r.get::<_, Option<i64>>(7)?.map(from_us),
                    detected_at: r.get::<_, Option<i64>>(8)?.map(from_us),
                    reason: r.get(9)?,
                    runs: Vec::new(),
                })
            })
            .map_err(|e| self.err(e))?;
        let mut out: Vec<IncidentRow> = rows
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let mut runs = self
            .conn
            .prepare(
                "SELECT run_id, runbook, outcome, started_at_us, finished_at_us, dry_run
                 FROM runbook_runs WHERE incident_id = ?1 ORDER BY started_at_us",
            )
            .map_err(|e| self.err(e))?;
        for inc in &mut out {
            let rows = runs
                .query_map([&inc.id], |r| {
                    Ok(RunRow {
                        run_id: r.get(0)?,
                        runbook: r.get(1)?,
                        outcome: r.get(2)?,
                        started_at: from_us(r.get(3)?),
                        finished_at: r.get::<_, Option<i64>>(4)?.map(from_us),
                        dry_run: r.get(5)?,
                    })
                })
                .map_err(|e| self.err(e))?;
            inc.runs = rows
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

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
            let event = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                message: format!("outbox row {id}: {e}"),
            })?;
            out.push((id, event));
        }
        Ok(out)
    }

    pub fn outbox_len(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    pub fn outbox_done(&mut self, id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM outbox WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn queue(tx: &rusqlite::Transaction<'_>, event: &Event) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO outbox (incident_id, created_at_us, event_json) VALUES (?1, ?2, ?3)",
        params![
            event.incident_id(),
            to_us(Utc::now()),
            serde_json::to_string(event).unwrap_or_default()
        ],
    )?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentRow {
    pub id: String,
    pub check: String,
    pub target: String,
    pub severity: String,
    pub state: String,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub detected_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub runs: Vec<RunRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub runbook: String,
    pub outcome: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn transition(
        id: &str,
        from: Option<IncidentState>,
        to: IncidentState,
        at: i64,
    ) -> IncidentTransition {
        IncidentTransition {
            incident_id: id.into(),
            check: "unit_failed".into(),
            target: "demo.service".into(),
            severity: "critical".into(),
            from,
            to,
            at: t(at),
            reason: "r".into(),
            observation: serde_json::json!({"active_state": "failed"}),
        }
    }

    fn run(id: &str, start: i64, outcome: RunOutcome) -> RunbookRun {
        RunbookRun {
            run_id: id.into(),
            incident_id: "INC-1".into(),
            runbook: "RB-SERVICE-001".into(),
            target: "demo.service".into(),
            dry_run: false,
            started_at: t(start),
            finished_at: None,
            outcome,
            steps: vec![],
            rate_limit: vec![],
        }
    }

    #[test]
    fn flap_edges_survive_a_reopen_and_old_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let edge = |at| Edge {
            check: "unit_failed".into(),
            target: "a.service".into(),
            at: t(at),
        };
        {
            let mut s = Store::open(&path).unwrap();
            s.record_edges(&[edge(1), edge(2)], t(0)).unwrap();
            s.record_edges(&[edge(9)], t(2)).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.edges_since(t(0)).unwrap(), vec![edge(2), edge(9)]);
        assert_eq!(s.edges_since(t(3)).unwrap(), vec![edge(9)]);
    }

    #[test]
    fn incidents_runs_and_outbox_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.apply_transition(
                &transition("INC-1", None, IncidentState::Firing, 0),
                Some(t(0)),
            )
            .unwrap();
            s.begin_run(&run("R1", 1, RunOutcome::Success)).unwrap();
            let mut r2 = run("R2", 5, RunOutcome::RateLimited);
            r2.finished_at = Some(t(5));
            s.finish_run(&r2).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let open = s.open_incidents().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, "INC-1");
        // R1 was left running: it is closed as interrupted and still counts
        let interrupted = s.close_interrupted_runs(t(10)).unwrap();
        assert_eq!(interrupted.len(), 1);
        assert_eq!(interrupted[0].run_id, "R1");
        assert_eq!(
            s.run_starts("RB-SERVICE-001", "demo.service", t(-100))
                .unwrap(),
            vec![t(1)]
        );
        assert_eq!(s.runs_since(t(-100)).unwrap(), 1);
        // transition, refusal, interruption: three events, in order
        let out = s.outbox(10).unwrap();
        assert_eq!(out.len(), 3);
        assert!(matches!(out[0].1, Event::IncidentTransition(_)));
        assert!(matches!(&out[2].1, Event::RunbookRun(r) if r.outcome == RunOutcome::Interrupted));
        s.outbox_done(out[0].0).unwrap();
        assert_eq!(s.outbox_len().unwrap(), 2);
    }

    #[test]
    fn only_one_open_incident_per_check_and_target() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("state.db")).unwrap();
        s.apply_transition(&transition("INC-1", None, IncidentState::Firing, 0), None)
            .unwrap();
        let dup = s.apply_transition(&transition("INC-2", None, IncidentState::Firing, 1), None);
        assert!(
            dup.is_err(),
            "a second open incident for the same check and target is refused"
        );
        s.apply_transition(
            &transition(
                "INC-1",
                Some(IncidentState::Firing),
                IncidentState::Resolved,
                2,
            ),
            None,
        )
        .unwrap();
        s.apply_transition(&transition("INC-2", None, IncidentState::Firing, 3), None)
            .unwrap();
        let all = s.list_incidents(true, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, "INC-2", "newest first");
        assert_eq!(all[1].resolved_at, Some(t(2)));
        assert_eq!(s.list_incidents(false, 10).unwrap().len(), 1);
    }
}
