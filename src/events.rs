//! The events that flow from `decide` and `act` towards `prove` and `report`.
//!
//! Every incident transition and every runbook run is one of these. They are
//! plain data (serde), so the evidence module can seal them into bundles and
//! the store can keep them, without either reaching back up the flow.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One thing that happened and must be proven later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    IncidentTransition(IncidentTransition),
    RunbookRun(RunbookRun),
    /// Evidence not tied to an incident (a control evaluation, a gap in the journal).
    Notice(Notice),
}

impl Event {
    /// The correlation ID shared by the journal, SQLite, the bundle and its S3 key;
    /// `None` for an event that belongs to no incident.
    pub fn incident_id(&self) -> Option<&str> {
        match self {
            Event::IncidentTransition(t) => Some(&t.incident_id),
            Event::RunbookRun(r) => Some(&r.incident_id),
            Event::Notice(_) => None,
        }
    }
}

/// Something worth proving that belongs to no incident.
///
/// Its field `topic` says what it is: the event's own `kind` tag is `notice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// What this notice is about, e.g. `control_evaluation`, `journal_gap`.
    pub topic: String,
    /// What it concerns, e.g. a control ID or a journal source.
    pub subject: String,
    pub at: DateTime<Utc>,
    /// Why it was recorded, in words.
    pub reason: String,
    /// The specifics, as recorded at the time.
    pub detail: serde_json::Value,
}

/// The states an incident moves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// The check fails; remediation may run.
    Firing,
    /// The check keeps changing state; remediation is suppressed.
    Flapping,
    /// Remediation was refused (rate limit, failed verification): a person must look.
    NeedsHuman,
    /// The check passes again; the incident is closed.
    Resolved,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Firing => "firing",
            IncidentState::Flapping => "flapping",
            IncidentState::NeedsHuman => "needs_human",
            IncidentState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "firing" => IncidentState::Firing,
            "flapping" => IncidentState::Flapping,
            "needs_human" => IncidentState::NeedsHuman,
            "resolved" => IncidentState::Resolved,
            _ => return None,
        })
    }

    pub fn is_open(self) -> bool {
        self != IncidentState::Resolved
    }
}

/// An incident opened, changed state, or closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentTransition {
    pub incident_id: String,
    /// The check that fired, e.g. `unit_failed`, `crash_loop`.
    pub check: String,
    /// What the check looks at, e.g. a unit name.
    pub target: String,
    pub severity: String,
    /// `None` when the incident opens.
    pub from: Option<IncidentState>,
    pub to: IncidentState,
    pub at: DateTime<Utc>,
    /// Why the transition happened, in words.
    pub reason: String,
    /// What was observed (unit properties and the like), as recorded at the time.
    pub observation: serde_json::Value,
}

/// One execution of a runbook (or a refusal to execute it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunbookRun {
    /// Unique per run; stable across a crash (the store writes it before the first step).
    pub run_id: String,
    pub incident_id: String,
    pub runbook: String,
    pub target: String,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: RunOutcome,
    pub steps: Vec<StepRecord>,
    /// Every rate-limit decision taken for this run.
    pub rate_limit: Vec<RateLimitDecision>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Steps ran and the verification passed.
    Success,
    /// A step or the verification failed.
    Failed,
    /// Dry-run mode: nothing was done, the steps say what would have been.
    DryRun,
    /// A rate limit refused the run; the incident escalated.
    RateLimited,
    /// A silence or flapping held remediation back.
    Suppressed,
    /// The agent stopped (or died) while the run was in flight.
    Interrupted,
    /// Every step ran, but the problem is still there (the disk is still
    /// above its threshold): a person must look, at once.
    Partial,
    /// The action did not end within its timeout.
    Timeout,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Failed => "failed",
            RunOutcome::DryRun => "dry_run",
            RunOutcome::RateLimited => "rate_limited",
            RunOutcome::Suppressed => "suppressed",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::Partial => "partial",
            RunOutcome::Timeout => "timeout",
        }
    }
}

/// One step of a runbook, with its result and what identifies it in systemd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// `ok`, `failed`, `timeout`, `skipped` or `would_run`.
    pub result: String,
    /// Step specifics: job path and result, invocation ID, journal cursor, figures.
    pub detail: serde_json::Value,
}

/// A rate limiter's answer for one (runbook, target) at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitDecision {
    pub runbook: String,
    pub target: String,
    pub at: DateTime<Utc>,
    pub allowed: bool,
    /// `allowed`, `min_interval`, `max_runs_in_window`, `global_budget`.
    pub rule: String,
    pub runs_in_window: u32,
    pub max_runs: u32,
    pub window_secs: u64,
    pub global_runs_last_hour: u32,
    pub global_budget: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// Bundles already sealed hold these bytes: the form of the existing kinds is fixed.
    #[test]
    fn existing_kinds_serialize_as_before_and_notice_has_no_incident() {
        let transition = Event::IncidentTransition(IncidentTransition {
            incident_id: "INC-1".into(),
            check: "unit_failed".into(),
            target: "demo.service".into(),
            severity: "critical".into(),
            from: None,
            to: IncidentState::Firing,
            at: at(),
            reason: "r".into(),
            observation: serde_json::json!({}),
        });
        let run = Event::RunbookRun(RunbookRun {
            run_id: "R1".into(),
            incident_id: "INC-1".into(),
            runbook: "RB-SERVICE-001".into(),
            target: "demo.service".into(),
            dry_run: false,
            started_at: at(),
            finished_at: None,
            outcome: RunOutcome::DryRun,
            steps: vec![],
            rate_limit: vec![],
        });
        let notice = Event::Notice(Notice {
            topic: "journal_gap".into(),
            subject: "journal".into(),
            at: at(),
            reason: "rotated".into(),
            detail: serde_json::json!({"n": 1}),
        });
        let cases = [
            (
                &transition,
                r#"{"kind":"incident_transition","incident_id":"INC-1","check":"unit_failed","target":"demo.service","severity":"critical","from":null,"to":"firing","at":"2027-01-15T08:00:00Z","reason":"r","observation":{}}"#,
                Some("INC-1"),
            ),
            (
                &run,
                r#"{"kind":"runbook_run","run_id":"R1","incident_id":"INC-1","runbook":"RB-SERVICE-001","target":"demo.service","dry_run":false,"started_at":"2027-01-15T08:00:00Z","finished_at":null,"outcome":"dry_run","steps":[],"rate_limit":[]}"#,
                Some("INC-1"),
            ),
            (
                &notice,
                r#"{"kind":"notice","topic":"journal_gap","subject":"journal","at":"2027-01-15T08:00:00Z","reason":"rotated","detail":{"n":1}}"#,
                None,
            ),
        ];
        for (event, json, incident) in cases {
            assert_eq!(serde_json::to_string(event).unwrap(), json);
            assert_eq!(&serde_json::from_str::<Event>(json).unwrap(), event);
            assert_eq!(event.incident_id(), incident);
        }
    }
}
