//! Runbooks: real actions with steps, timeouts and a verification that the
//! problem is gone. Each returns its outcome and the record of every step;
//! recording and rate limiting happen in the daemon, which owns the store.

pub mod service_restart;

use std::time::Instant;

use chrono::Utc;

use crate::events::StepRecord;

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
