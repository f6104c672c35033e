//! Rate limits for runbooks and silences, as pure decisions over the history
//! the store keeps (so an agent restart resets nothing).
//!
//! Two kinds of "no": `min_interval` means "not yet" (the run is deferred to a
//! known instant), while a full window or an exhausted global budget means
//! "not without a person" (the incident escalates and is never retried in a
//! loop).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::incident::chrono_dur;
use crate::events::RateLimitDecision;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_runs: u32,
    pub window: Duration,
    pub min_interval: Duration,
    pub global_per_hour: u32,
}

/// Start times of earlier runs, as the store returns them.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Runs of this runbook on this target that started within `window`.
    pub target_starts: Vec<DateTime<Utc>>,
    /// Runs of any runbook on any target within the last hour.
    pub global_last_hour: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow,
    /// Too soon after the previous run: try again at this instant.
    Defer(DateTime<Utc>),
    /// A budget is spent: a person must look.
    Escalate,
}

pub fn decide(
    limits: &Limits,
    history: &History,
    runbook: &str,
    target: &str,
    now: DateTime<Utc>,
) -> (Verdict, RateLimitDecision) {
    let horizon = now - chrono_dur(limits.window);
    let in_window: Vec<_> = history
        .target_starts
        .iter()
        .filter(|t| **t > horizon)
        .collect();
    let runs_in_window = in_window.len() as u32;
    let last = in_window.iter().max().copied().copied();

    let (verdict, rule) = if history.global_last_hour >= limits.global_per_hour {
        (Verdict::Escalate, "global_budget")
    } else if runs_in_window >= limits.max_runs {
        (Verdict::Escalate, "max_runs_in_window")
    } else if let Some(last) = last.filter(|l| now - *l < chrono_dur(limits.min_interval)) {
        (
            Verdict::Defer(last + chrono_dur(limits.min_interval)),
            "min_interval",
        )
    } else {
        (Verdict::Allow, "allowed")
    };
    let decision = RateLimitDecision {
        runbook: runbook.to_string(),
        target: target.to_string(),
        at: now,
        allowed: verdict == Verdict::Allow,
        rule: rule.to_string(),
        runs_in_window,
        max_runs: limits.max_runs,
        window_secs: limits.window.as_secs(),
        global_runs_last_hour: history.global_last_hour,
        global_budget: limits.global_per_hour,
    };
    (verdict, decision)
}

/// A silence stops remediation of matching targets until it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    pub id: i64,
    pub target: String,
    pub until: DateTime<Utc>,
    pub reason: String,
}

pub fn active_silence<'a>(
    silences: &'a [Silence],
    target: &str,
    now: DateTime<Utc>,
) -> Option<&'a Silence> {
    silences.iter().find(|s| {
        s.until > now
            && (s.target == target
                || crate::units::UnitPattern::new(&s.target).is_ok_and(|p| p.matches(target)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn check(starts: &[i64], global: u32, now: i64, expected: (Verdict, &str)) {
        let limits = Limits {
            max_runs: 3,
            window: Duration::from_secs(1800),
            min_interval: Duration::from_secs(300),
            global_per_hour: 10,
        };
        let history = History {
            target_starts: starts.iter().map(|s| t(*s)).collect(),
            global_last_hour: global,
        };
        let (v, d) = decide(&limits, &history, "RB-SERVICE-001", "demo.service", t(now));
        assert_eq!(
            (v.clone(), d.rule.as_str()),
            expected,
            "starts {starts:?} now {now}"
        );
        assert_eq!(d.allowed, v == Verdict::Allow);
    }

    #[test]
    fn rate_limit_table() {
        check(&[], 0, 0, (Verdict::Allow, "allowed"));
        check(&[0], 1, 100, (Verdict::Defer(t(300)), "min_interval"));
        check(&[0], 1, 300, (Verdict::Allow, "allowed"));
        check(&[0, 300], 2, 700, (Verdict::Allow, "allowed"));
        check(
            &[0, 300, 600],
            3,
            1000,
            (Verdict::Escalate, "max_runs_in_window"),
        );
        // the oldest run left the 30 minute window
        check(&[0, 300, 600], 3, 1801, (Verdict::Allow, "allowed"));
        check(&[], 10, 0, (Verdict::Escalate, "global_budget"));
        // a full window wins over a pending spacing: escalate, do not wait
        check(
            &[0, 10, 20],
            3,
            30,
            (Verdict::Escalate, "max_runs_in_window"),
        );
    }

    #[test]
    fn silences_match_names_and_globs_until_they_end() {
        let s = vec![
            Silence {
                id: 1,
                target: "demo.service".into(),
                until: t(100),
                reason: "m".into(),
            },
            Silence {
                id: 2,
                target: "db-*.service".into(),
                until: t(50),
                reason: "m".into(),
            },
        ];
        assert_eq!(active_silence(&s, "demo.service", t(0)).unwrap().id, 1);
        assert!(active_silence(&s, "demo.service", t(100)).is_none());
        assert_eq!(active_silence(&s, "db-main.service", t(49)).unwrap().id, 2);
        assert!(active_silence(&s, "db-main.service", t(51)).is_none());
        assert!(active_silence(&s, "web.service", t(0)).is_none());
    }
}
