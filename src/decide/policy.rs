//! Whether an open incident gets a runbook run now: the remediation policy as
//! one pure function over the incident's situation, the limits and the run
//! history, so every branch is a row in the table below.

use chrono::{DateTime, Utc};

use super::incident::OpenIncident;
use super::limits::{self, History, Limits, Silence, Verdict};
use crate::events::{IncidentState, RateLimitDecision};

/// What answers a check when it fires (configuration, `[remediation]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Run this runbook on the target, if the target may be remediated.
    Runbook(String),
    /// No runbook applies: a person must look, at once.
    Escalate,
    /// Record the incident, do nothing about it.
    Nothing,
}

/// Everything the policy looks at for one incident.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub incident: &'a OpenIncident,
    /// The check fails right now (as last observed).
    pub failing: bool,
    pub answer: &'a Answer,
    /// The target's watch rule allows remediation.
    pub remediable: bool,
    /// A run on this target is in flight.
    pub in_flight: bool,
    /// The decision to hold remediation back was already recorded for this incident.
    pub suppression_recorded: bool,
    pub silence: Option<&'a Silence>,
    /// A previous verdict said "not before".
    pub deferred_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to do now; the reason names the branch.
    Wait(&'static str),
    /// Remediation is held back (flapping, silenced): record that once.
    Suppress { detail: serde_json::Value },
    /// No runbook applies: a person must look.
    Escalate { reason: String },
    /// The limiter allows a run.
    Start {
        runbook: String,
        decision: RateLimitDecision,
    },
    /// Too soon after the previous run: ask again at `until`.
    Defer {
        until: DateTime<Utc>,
        decision: RateLimitDecision,
    },
    /// A budget is spent: record the refusal and escalate.
    Refuse {
        runbook: String,
        decision: RateLimitDecision,
        reason: String,
    },
}

/// The policy. `budget` gives a runbook's limits and the runs that count
/// against them (`None`: no such runbook).
pub fn decide(
    s: &Situation<'_>,
    budget: impl FnOnce(&str) -> Option<(Limits, History)>,
    now: DateTime<Utc>,
) -> Decision {
    let inc = s.incident;
    if matches!(
        inc.state,
        IncidentState::NeedsHuman | IncidentState::Resolved
    ) {
        return Decision::Wait("a person must look already");
    }
    let runbook = match s.answer {
        Answer::Nothing => return Decision::Wait("no runbook answers this check"),
        Answer::Escalate => {
            return Decision::Escalate {
                reason: match inc.check.as_str() {
                    super::units::CHECK_CRASH_LOOP => "crash loop under systemd's own Restart=: no runbook applies, a person must look".to_string(),
                    check => format!("no runbook answers {check}: a person must look"),
                },
            };
        }
        Answer::Runbook(r) => r,
    };
    if !s.remediable {
        return Decision::Wait("the target may not be remediated");
    }
    if s.in_flight {
        return Decision::Wait("a run is in flight");
    }
    if !s.failing {
        return Decision::Wait("the check passes");
    }
    if inc.state == IncidentState::Flapping {
        if s.suppression_recorded {
            return Decision::Wait("suppression already recorded");
        }
        return Decision::Suppress {
            detail: serde_json::json!({"reason": "the unit is flapping; remediation is suppressed"}),
        };
    }
    if let Some(sil) = s.silence {
        if s.suppression_recorded {
            return Decision::Wait("suppression already recorded");
        }
        return Decision::Suppress {
            detail: serde_json::json!({
                "reason": "silenced", "silence_id": sil.id, "silence_target": sil.target,
                "until": sil.until, "silence_reason": sil.reason,
            }),
        };
    }
    if s.deferred_until.is_some_and(|until| until > now) {
        return Decision::Wait("deferred by min_interval");
    }
    let Some((lim, history)) = budget(runbook) else {
        return Decision::Escalate {
            reason: format!("runbook {runbook} is not known to this agent: a person must look"),
        };
    };
    let (verdict, decision) = limits::decide(&lim, &history, runbook, &inc.target, now);
    match verdict {
        Verdict::Allow => Decision::Start {
            runbook: runbook.clone(),
            decision,
        },
        Verdict::Defer(until) => Decision::Defer { until, decision },
        Verdict::Escalate => Decision::Refuse {
            runbook: runbook.clone(),
            reason: format!(
                "rate limit `{}` refused {} on {} ({} runs in {}s, global {} of {} per hour): a person must look",
                decision.rule,
                runbook,
                inc.target,
                decision.runs_in_window,
                decision.window_secs,
                decision.global_runs_last_hour,
                decision.global_budget
            ),
            decision,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn incident(check: &str, state: IncidentState) -> OpenIncident {
        OpenIncident {
            id: "INC-1".into(),
            check: check.into(),
            target: "demo.service".into(),
            severity: "critical".into(),
            state,
            opened_at: t(0),
        }
    }

    /// One row: how the situation differs from a plain firing, remediable
    /// incident, the earlier run starts, and the expected branch.
    struct Row {
        name: &'static str,
        check: &'static str,
        state: IncidentState,
        answer: Answer,
        remediable: bool,
        in_flight: bool,
        failing: bool,
        recorded: bool,
        silenced: bool,
        deferred_until: Option<i64>,
        starts: &'static [i64],
        global: u32,
        expect: &'static str,
    }

    const BASE: Row = Row {
        name: "",
        check: "unit_failed",
        state: IncidentState::Firing,
        answer: Answer::Nothing,
        remediable: true,
        in_flight: false,
        failing: true,
        recorded: false,
        silenced: false,
        deferred_until: None,
        starts: &[],
        global: 0,
        expect: "",
    };

    fn label(d: &Decision) -> String {
        match d {
            Decision::Wait(why) => format!("wait: {why}"),
            Decision::Suppress { detail } => {
                format!("suppress: {}", detail["reason"].as_str().unwrap())
            }
            Decision::Escalate { .. } => "escalate".into(),
            Decision::Start { runbook, .. } => format!("start {runbook}"),
            Decision::Defer { until, decision } => {
                format!(
                    "defer {} until +{}",
                    decision.rule,
                    (*until - t(0)).num_seconds()
                )
            }
            Decision::Refuse { decision, .. } => format!("refuse: {}", decision.rule),
        }
    }

    #[test]
    fn remediation_policy_table() {
        let rb = || Answer::Runbook("RB-SERVICE-001".into());
        let rows = vec![
            Row {
                name: "allowed",
                answer: rb(),
                expect: "start RB-SERVICE-001",
                ..BASE
            },
            Row {
                name: "not remediable",
                answer: rb(),
                remediable: false,
                expect: "wait: the target may not be remediated",
                ..BASE
            },
            Row {
                name: "no runbook configured",
                expect: "wait: no runbook answers this check",
                ..BASE
            },
            Row {
                name: "in flight",
                answer: rb(),
                in_flight: true,
                expect: "wait: a run is in flight",
                ..BASE
            },
            Row {
                name: "check passes again",
                answer: rb(),
                failing: false,
                expect: "wait: the check passes",
                ..BASE
            },
            Row {
                name: "flapping",
                answer: rb(),
                state: IncidentState::Flapping,
                expect: "suppress: the unit is flapping; remediation is suppressed",
                ..BASE
            },
            Row {
                name: "flapping, already recorded",
                answer: rb(),
                state: IncidentState::Flapping,
                recorded: true,
                expect: "wait: suppression already recorded",
                ..BASE
            },
            Row {
                name: "silenced",
                answer: rb(),
                silenced: true,
                expect: "suppress: silenced",
                ..BASE
            },
            Row {
                name: "silenced, already recorded",
                answer: rb(),
                silenced: true,
                recorded: true,
                expect: "wait: suppression already recorded",
                ..BASE
            },
            Row {
                name: "deferred",
                answer: rb(),
                deferred_until: Some(400),
                starts: &[0],
                expect: "wait: deferred by min_interval",
                ..BASE
            },
            Row {
                name: "deferral over",
                answer: rb(),
                deferred_until: Some(300),
                starts: &[0],
                expect: "start RB-SERVICE-001",
                ..BASE
            },
            Row {
                name: "too soon: deferred",
                answer: rb(),
                starts: &[200],
                expect: "defer min_interval until +500",
                ..BASE
            },
            Row {
                name: "window spent: escalated",
                answer: rb(),
                starts: &[0, 100, 200],
                expect: "refuse: max_runs_in_window",
                ..BASE
            },
            Row {
                name: "global budget spent",
                answer: rb(),
                global: 10,
                expect: "refuse: global_budget",
                ..BASE
            },
            Row {
                name: "needs a human already",
                answer: rb(),
                state: IncidentState::NeedsHuman,
                expect: "wait: a person must look already",
                ..BASE
            },
            Row {
                name: "crash loop escalates at once",
                check: "crash_loop",
                answer: Answer::Escalate,
                remediable: false,
                expect: "escalate",
                ..BASE
            },
            Row {
                name: "crash loop escalated once",
                check: "crash_loop",
                answer: Answer::Escalate,
                state: IncidentState::NeedsHuman,
                expect: "wait: a person must look already",
                ..BASE
            },
            Row {
                name: "unknown runbook",
                answer: Answer::Runbook("RB-NOPE".into()),
                expect: "escalate",
                ..BASE
            },
        ];
        let silence = Silence {
            id: 1,
            target: "demo*".into(),
            until: t(10_000),
            reason: "m".into(),
        };
        for row in rows {
            let inc = incident(row.check, row.state);
            let s = Situation {
                incident: &inc,
                failing: row.failing,
                answer: &row.answer,
                remediable: row.remediable,
                in_flight: row.in_flight,
                suppression_recorded: row.recorded,
                silence: row.silenced.then_some(&silence),
                deferred_until: row.deferred_until.map(t),
            };
            let budget = |runbook: &str| {
                (runbook == "RB-SERVICE-001").then(|| {
                    (
                        Limits {
                            max_runs: 3,
                            window: Duration::from_secs(1800),
                            min_interval: Duration::from_secs(300),
                            global_per_hour: 10,
                        },
                        History {
                            target_starts: row.starts.iter().map(|s| t(*s)).collect(),
                            global_last_hour: row.global,
                        },
                    )
                })
            };
            assert_eq!(
                label(&decide(&s, budget, t(300))),
                row.expect,
                "row: {}",
                row.name
            );
        }
    }
}
