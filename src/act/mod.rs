//! Runbooks: real actions with steps, timeouts and a verification that the
//! problem is gone. Each returns its outcome and the record of every step;
//! whether to run (limits, silences) is decided in `decide/`, and recording is
//! the runtime's.
//!
//! The registry below is the one place that knows every runbook: its ID, its
//! settings and its run function. Adding a runbook: its module, a variant of
//! [`Runbook`], and its line in [`Runbook::id`] and [`Runbook::run`].

pub mod service_restart;

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::events::{RunOutcome, StepRecord};

/// Every runbook ID this agent knows (configuration is checked against it).
pub const KNOWN: &[&str] = &[service_restart::RUNBOOK_ID];

/// One runbook with its settings.
#[derive(Debug, Clone)]
pub enum Runbook {
    ServiceRestart(service_restart::Params),
}

impl Runbook {
    pub fn id(&self) -> &'static str {
        match self {
            Runbook::ServiceRestart(_) => service_restart::RUNBOOK_ID,
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
