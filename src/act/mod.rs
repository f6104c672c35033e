//! Runbooks: real actions with steps, timeouts and a verification that the
//! problem is gone. Each returns its outcome and the record of every step;
//! whether to run (limits, silences) is decided in `decide/`, and recording is
//! the runtime's.
//!
//! The registry below is the one place that knows every runbook: its ID, its
//! settings and its run function. Adding a runbook: its module, a variant of
//! [`Runbook`], and its line in [`Runbook::id`] and [`Runbook::run`].

pub mod free_disk;
pub mod service_restart;

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use zbus_systemd::systemd1::ManagerProxy;

use crate::bus::connect;

use crate::events::{RunOutcome, StepRecord};

/// Every runbook ID this agent knows (configuration is checked against it).
pub const KNOWN: &[&str] = &[service_restart::RUNBOOK_ID, free_disk::RUNBOOK_ID];

/// One runbook with its settings.
#[derive(Debug, Clone)]
pub enum Runbook {
    ServiceRestart(service_restart::Params),
    FreeDisk(free_disk::Params),
}

impl Runbook {
    pub fn id(&self) -> &'static str {
        match self {
            Runbook::ServiceRestart(_) => service_restart::RUNBOOK_ID,
            Runbook::FreeDisk(_) => free_disk::RUNBOOK_ID,
        }
    }

    /// Runs the steps on `target` until done or `cancel`.
    pub async fn run(
        &self,
        target: &str,
        dry_run: bool,
        cancel: &CancellationToken,
    ) -> (RunOutcome, Vec<StepRecord>) {
        match self {
            Runbook::ServiceRestart(p) => service_restart::run(target, p, dry_run, cancel).await,
            Runbook::FreeDisk(p) => free_disk::run(target, p, dry_run, cancel).await,
        }
    }
}

/// The runbooks by ID.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    runbooks: HashMap<&'static str, Runbook>,
}

impl Registry {
    pub fn new(runbooks: impl IntoIterator<Item = Runbook>) -> Registry {
        Registry {
            runbooks: runbooks.into_iter().map(|r| (r.id(), r)).collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Runbook> {
        self.runbooks.get(id)
    }
}

/// Times a step and turns it into a [`StepRecord`].
pub struct StepTimer {
    name: String,
    started_at: chrono::DateTime<Utc>,
    start: Instant,
}

impl StepTimer {
    pub fn start(name: &str) -> StepTimer {
        StepTimer {
            name: name.to_string(),
            started_at: Utc::now(),
            start: Instant::now(),
        }
    }

    pub fn finish(self, result: &str, detail: serde_json::Value) -> StepRecord {
        StepRecord {
            name: self.name,
            started_at: self.started_at,
            duration_ms: self.start.elapsed().as_millis() as u64,
            result: result.to_string(),
            detail,
        }
    }
}

/// The cursor of the newest journal entry of a unit, so an auditor can find
/// exactly the lines that belong to a step. Best effort: `None` when the
/// journal cannot be read (the agent's user lacks `systemd-journal`).
pub async fn journal_cursor(unit: &str) -> Option<String> {
    let out = tokio::process::Command::new("journalctl")
        .args([
            "--unit",
            unit,
            "--lines",
            "1",
            "--output",
            "json",
            "--no-pager",
            "--quiet",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last()?).ok()?;
    v.get("__CURSOR")?.as_str().map(str::to_string)
}

/// How a restart job ended.
#[derive(Debug, Clone)]
pub struct JobEnd {
    pub job: String,
    pub job_id: u32,
    /// systemd's word: `done`, `failed`, `timeout`, `canceled`, `dependency`, `skipped`.
    pub result: String,
}

impl JobEnd {
    /// The step detail every runbook records for its restart.
    pub fn detail(&self, unit: &str) -> serde_json::Value {
        json!({
            "method": "org.freedesktop.systemd1.Manager.RestartUnit",
            "unit": unit,
            "mode": "replace",
            "job": self.job,
            "job_id": self.job_id,
            "job_result": self.result,
        })
    }
}

#[derive(Debug, Clone)]
pub enum JobError {
    /// The job did not end in time (it may still be running).
    Timeout {
        job: String,
    },
    Other(String),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Timeout { job } => write!(f, "job {job} did not end in time"),
            JobError::Other(e) => f.write_str(e),
        }
    }
}

/// RestartUnit over D-Bus and the job's end. The JobRemoved stream is opened
/// before the call, so the end cannot be missed.
pub async fn restart_and_wait(
    unit: &str,
    timeout: std::time::Duration,
) -> Result<JobEnd, JobError> {
    let other = |e: zbus::Error| JobError::Other(e.to_string());
    let conn = connect()
        .await
        .map_err(|e| JobError::Other(format!("system bus: {e}")))?;
    let manager = ManagerProxy::new(&conn).await.map_err(other)?;
    let mut removed = manager.receive_job_removed().await.map_err(other)?;
    manager.subscribe().await.map_err(other)?;
    let job = manager
        .restart_unit(unit.to_string(), "replace".to_string())
        .await
        .map_err(|e| JobError::Other(format!("RestartUnit {unit}: {e}")))?;
    let wait = async {
        while let Some(sig) = removed.next().await {
            if let Ok(args) = sig.args()
                && *args.job() == job
            {
                return Some((args.id, args.result().to_string()));
            }
        }
        None
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Some((job_id, result))) => Ok(JobEnd {
            job: job.as_str().to_string(),
            job_id,
            result,
        }),
        Ok(None) => Err(JobError::Other(format!(
            "the bus closed before job {} ended",
            job.as_str()
        ))),
        Err(_) => Err(JobError::Timeout {
            job: job.as_str().to_string(),
        }),
    }
}
