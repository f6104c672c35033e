//! What a unit observation means: the `unit_failed` and `crash_loop` checks.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::incident::{Condition, chrono_dur};

pub const CHECK_UNIT_FAILED: &str = "unit_failed";
pub const CHECK_CRASH_LOOP: &str = "crash_loop";

/// The state of one unit as systemd reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitObservation {
    pub unit: String,
    pub active_state: String,
    pub sub_state: String,
    /// The service's `Result` (empty for units that are not services).
    pub result: String,
    pub n_restarts: u32,
    /// The invocation this state belongs to, as hex.
    pub invocation_id: String,
    /// When systemd says the state last changed.
    pub state_change: Option<DateTime<Utc>>,
    /// When the agent saw it.
    pub seen_at: DateTime<Utc>,
}

pub fn unit_failed(obs: &UnitObservation, expect_active: bool) -> Condition {
    let failed = obs.active_state == "failed";
    let down = expect_active && obs.active_state == "inactive";
    let reason = if failed {
        format!(
            "{} entered failed ({}, result {})",
            obs.unit, obs.sub_state, obs.result
        )
    } else if down {
        format!("{} is inactive but is expected to be active", obs.unit)
    } else {
        format!("{} is {} ({})", obs.unit, obs.active_state, obs.sub_state)
    };
    Condition {
        check: CHECK_UNIT_FAILED.into(),
        target: obs.unit.clone(),
        failing: failed || down,
        at: obs.seen_at,
        severity: "critical".into(),
        reason,
        observation: serde_json::to_value(obs).unwrap_or_default(),
        induced: false,
    }
}

/// Watches `NRestarts` (systemd's own `Restart=`) for crash loops.
#[derive(Debug, Default)]
pub struct CrashLoops {
    history: HashMap<String, VecDeque<(DateTime<Utc>, u32)>>,
}

impl CrashLoops {
    /// Records the observation and evaluates the check at `obs.seen_at`.
    pub fn observe(
        &mut self,
        obs: &UnitObservation,
        threshold: u32,
        window: Duration,
    ) -> Condition {
        let h = self.history.entry(obs.unit.clone()).or_default();
        if h.back().is_none_or(|(_, n)| *n != obs.n_restarts) {
            h.push_back((obs.seen_at, obs.n_restarts));
        }
        Self::evaluate(h, &obs.unit, obs.seen_at, threshold, window, obs)
    }

    /// Re-evaluates every unit at `now`, so a loop that stopped can end.
    pub fn tick(
        &mut self,
        now: DateTime<Utc>,
        threshold: u32,
        window: Duration,
        last: &HashMap<String, UnitObservation>,
    ) -> Vec<Condition> {
        let mut out = Vec::new();
        for (unit, h) in self.history.iter_mut() {
            if let Some(obs) = last.get(unit) {
                let mut obs = obs.clone();
                obs.seen_at = now;
                out.push(Self::evaluate(h, unit, now, threshold, window, &obs));
            }
        }
        out
    }

    fn evaluate(
        h: &mut VecDeque<(DateTime<Utc>, u32)>,
        unit: &str,
        now: DateTime<Utc>,
        threshold: u32,
        window: Duration,
        obs: &UnitObservation,
    ) -> Condition {
        let horizon = now - chrono_dur(window);
        // keep one sample older than the window as the baseline
        while h.len() > 1 && h[1].0 <= horizon {
            h.pop_front();
        }
        let first = h.front().map(|(_, n)| *n).unwrap_or(0);
        let last = h.back().map(|(_, n)| *n).unwrap_or(0);
        let rise = last.saturating_sub(first);
        Condition {
            check: CHECK_CRASH_LOOP.into(),
            target: unit.to_string(),
            failing: rise >= threshold,
            at: now,
            severity: "critical".into(),
            reason: format!(
                "{unit} was restarted by systemd {rise} times within {}s",
                window.as_secs()
            ),
            observation: serde_json::to_value(obs).unwrap_or_default(),
            induced: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at: i64, active: &str, n: u32) -> UnitObservation {
        UnitObservation {
            unit: "demo.service".into(),
            active_state: active.into(),
            sub_state: "x".into(),
            result: "signal".into(),
            n_restarts: n,
            invocation_id: String::new(),
            state_change: None,
            seen_at: DateTime::from_timestamp(1_800_000_000 + at, 0).unwrap(),
        }
    }

    #[test]
    fn unit_failed_table() {
        let cases = [
            ("failed", false, true),
            ("failed", true, true),
            ("inactive", false, false),
            ("inactive", true, true),
            ("active", true, false),
            ("activating", true, false),
        ];
        for (state, expect_active, failing) in cases {
            assert_eq!(
                unit_failed(&obs(0, state, 0), expect_active).failing,
                failing,
                "{state} expect_active={expect_active}"
            );
        }
    }

    #[test]
    fn crash_loop_needs_enough_restarts_within_the_window() {
        let mut c = CrashLoops::default();
        let w = Duration::from_secs(60);
        assert!(!c.observe(&obs(0, "active", 0), 3, w).failing);
        assert!(!c.observe(&obs(10, "activating", 2), 3, w).failing);
        assert!(c.observe(&obs(20, "activating", 3), 3, w).failing);
        // no new restarts: once the samples age out the loop has ended
        let last: HashMap<_, _> = [("demo.service".to_string(), obs(20, "active", 3))].into();
        let now = DateTime::from_timestamp(1_800_000_000 + 100, 0).unwrap();
        let conds = c.tick(now, 3, w, &last);
        assert_eq!(conds.len(), 1);
        assert!(!conds[0].failing);
    }
}
