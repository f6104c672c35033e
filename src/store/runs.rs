//! Runbook runs and refusals: `runbook_runs`. The rate limits are computed from it.

use chrono::{DateTime, Utc};
use rusqlite::{Transaction, params};
use serde::Serialize;

use super::{Batch, Record, Result, Store, corrupt, encode, json_col, sqlite_err, time_col, to_us};
use crate::events::{RunOutcome, RunbookRun};

const TABLE: &str = "runbook_runs";

/// Outcomes that used a run of the budget (a refusal did not).
const COUNTED_OUTCOMES: &str =
    "outcome IN ('running','success','failed','dry_run','interrupted','partial','timeout')";

/// Every value the `outcome` column may hold.
const OUTCOMES: &[&str] = &[
    "running",
    "success",
    "failed",
    "dry_run",
    "rate_limited",
    "suppressed",
    "interrupted",
    "partial",
    "timeout",
];

/// A run as the CLI lists it under its incident.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub runbook: String,
    /// `running` or a [`RunOutcome`] (checked when read).
    pub outcome: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub dry_run: bool,
}

/// A counted run, for the rate limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunStartRow {
    pub runbook: String,
    pub target: String,
    pub started_at: DateTime<Utc>,
}

pub(super) fn write_started(tx: &Transaction<'_>, path: &str, run: &RunbookRun) -> Result<()> {
    tx.execute(
        "INSERT INTO runbook_runs (run_id, incident_id, runbook, target, dry_run,
            started_at_us, finished_at_us, outcome, steps_json, rate_limit_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 'running', ?7, ?8)",
        params![
            run.run_id,
            run.incident_id,
            run.runbook,
            run.target,
            run.dry_run,
            to_us(run.started_at),
            encode(path, "the steps of a run", &run.steps)?,
            encode(path, "the rate-limit decisions of a run", &run.rate_limit)?
        ],
    )
    .map_err(sqlite_err(path))?;
    Ok(())
}

pub(super) fn write_finished(tx: &Transaction<'_>, path: &str, run: &RunbookRun) -> Result<()> {
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
            encode(path, "the steps of a run", &run.steps)?,
            encode(path, "the rate-limit decisions of a run", &run.rate_limit)?
        ],
    )
    .map_err(sqlite_err(path))?;
    Ok(())
}

impl Store {
    /// Closes runs a previous process left `running` (it died or was killed
    /// mid-runbook), in one transaction, each with its event queued. They keep
    /// counting against the limits; none is redone blindly: the fresh observation
    /// decides whether a new run is needed.
    pub fn close_interrupted_runs(&mut self, now: DateTime<Utc>) -> Result<Vec<RunbookRun>> {
        let p = self.path.as_str();
        type Raw = (String, String, String, String, bool, i64, String, String);
        let raw: Vec<Raw> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT run_id, incident_id, runbook, target, dry_run, started_at_us,
                        steps_json, rate_limit_json FROM runbook_runs WHERE outcome = 'running'
                     ORDER BY started_at_us, run_id",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.err(e))?
        };
        let mut runs = Vec::with_capacity(raw.len());
        for (run_id, incident_id, runbook, target, dry_run, started, steps, limits) in raw {
            let row = format!("run_id {run_id}");
            runs.push(RunbookRun {
                started_at: time_col(p, TABLE, &row, "started_at_us", started)?,
                finished_at: Some(now),
                outcome: RunOutcome::Interrupted,
                steps: json_col(p, TABLE, &row, "steps_json", &steps)?,
                rate_limit: json_col(p, TABLE, &row, "rate_limit_json", &limits)?,
                run_id,
                incident_id,
                runbook,
                target,
                dry_run,
            });
        }
        if !runs.is_empty() {
            let records = runs.iter().cloned().map(Record::RunFinished).collect();
            self.commit(&Batch::new(records))?;
        }
        Ok(runs)
    }

    /// Counted runs (outcomes `running`, `success`, `failed`, `dry_run`,
    /// `interrupted`, `partial`, `timeout`) started after `since`, oldest first.
    pub fn run_history(&self, since: DateTime<Utc>) -> Result<Vec<RunStartRow>> {
        let p = self.path.as_str();
        let sql = format!(
            "SELECT run_id, runbook, target, started_at_us FROM runbook_runs
             WHERE started_at_us > ?1 AND {COUNTED_OUTCOMES} ORDER BY started_at_us, run_id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([to_us(since)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (run_id, runbook, target, started) = row.map_err(|e| self.err(e))?;
            out.push(RunStartRow {
                started_at: time_col(
                    p,
                    TABLE,
                    format!("run_id {run_id}"),
                    "started_at_us",
                    started,
                )?,
                runbook,
                target,
            });
        }
        Ok(out)
    }

    /// The runs of one incident, oldest first, for the CLI.
    pub(super) fn runs_of(&self, incident_id: &str) -> Result<Vec<RunRow>> {
        let p = self.path.as_str();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT run_id, runbook, outcome, started_at_us, finished_at_us, dry_run
                 FROM runbook_runs WHERE incident_id = ?1 ORDER BY started_at_us",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([incident_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (run_id, runbook, outcome, started, finished, dry_run) =
                row.map_err(|e| self.err(e))?;
            let rid = format!("run_id {run_id}");
            if !OUTCOMES.contains(&outcome.as_str()) {
                return Err(corrupt(
                    p,
                    TABLE,
                    rid,
                    format!("outcome {outcome:?} is not a run outcome"),
                ));
            }
            out.push(RunRow {
                started_at: time_col(p, TABLE, &rid, "started_at_us", started)?,
                finished_at: finished
                    .map(|us| time_col(p, TABLE, &rid, "finished_at_us", us))
                    .transpose()?,
                run_id,
                runbook,
                outcome,
                dry_run,
            });
        }
        Ok(out)
    }

    /// Start times of counted runs of `runbook` on `target` after `since` (tests).
    #[cfg(test)]
    pub fn run_starts(
        &self,
        runbook: &str,
        target: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>> {
        Ok(self
            .run_history(since)?
            .into_iter()
            .filter(|r| r.runbook == runbook && r.target == target)
            .map(|r| r.started_at)
            .collect())
    }

    /// How many counted runs started after `since` (tests).
    #[cfg(test)]
    pub fn runs_since(&self, since: DateTime<Utc>) -> Result<u32> {
        Ok(self.run_history(since)?.len() as u32)
    }
}
