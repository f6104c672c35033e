//! The checks on systemd units: `unit_failed` (failed, or inactive where the
//! unit is expected to be active) and `crash_loop` (systemd's own `Restart=`
//! raising `NRestarts` within a window).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::checks::Check;
use super::incident::{Condition, chrono_dur};
use crate::units::UnitRules;
use crate::watch::units::UnitObservation;

pub const CHECK_UNIT_FAILED: &str = "unit_failed";
pub const CHECK_CRASH_LOOP: &str = "crash_loop";

/// Is this check about units (so its target is a unit name)?
pub fn is_unit_check(check: &str) -> bool {
    check == CHECK_UNIT_FAILED || check == CHECK_CRASH_LOOP
}

/// `unit_failed`: stateless apart from the rules it is handed.
pub struct UnitFailed {
    rules: UnitRules,
}

impl UnitFailed {
    pub fn new(rules: UnitRules) -> UnitFailed {
        UnitFailed { rules }
    }
}

impl Check<UnitObservation> for UnitFailed {
    fn name(&self) -> &'static str {
        CHECK_UNIT_FAILED
    }

    fn observe(&mut self, obs: &UnitObservation) -> Option<Condition> {
        let rule = self.rules.rule(&obs.unit)?;
        Some(unit_failed(obs, rule.expect_active))
    }

    fn tick(&mut self, _now: DateTime<Utc>) -> Vec<Condition> {
        Vec::new()
    }

    fn next_deadline(&self) -> Option<DateTime<Utc>> {
        None
    }
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

/// `crash_loop`: watches `NRestarts` per unit; keeps the samples of the window
/// (and one older sample as the baseline) and the last observation, so time
/// passing can end a loop that stopped.
pub struct CrashLoop {
    rules: UnitRules,
    threshold: u32,
    window: Duration,
    history: HashMap<String, VecDeque<(DateTime<Utc>, u32)>>,
    last: HashMap<String, UnitObservation>,
}

impl CrashLoop {
    pub fn new(rules: UnitRules, threshold: u32, window: Duration) -> CrashLoop {
        CrashLoop {
            rules,
            threshold,
            window,
            history: HashMap::new(),
            last: HashMap::new(),
        }
    }

    fn evaluate(&mut self, unit: &str, now: DateTime<Utc>) -> Option<Condition> {
        let h = self.history.get_mut(unit)?;
        let obs = self.last.get(unit)?;
        let horizon = now - chrono_dur(self.window);
        // keep one sample older than the window as the baseline
        while h.len() > 1 && h[1].0 <= horizon {
            h.pop_front();
        }
        let first = h.front().map(|(_, n)| *n).unwrap_or(0);
        let last = h.back().map(|(_, n)| *n).unwrap_or(0);
        let rise = last.saturating_sub(first);
        let mut obs = obs.clone();
        obs.seen_at = now;
        Some(Condition {
            check: CHECK_CRASH_LOOP.into(),
            target: unit.to_string(),
            failing: rise >= self.threshold,
            at: now,
            severity: "critical".into(),
            reason: format!(
                "{unit} was restarted by systemd {rise} times within {}s",
                self.window.as_secs()
            ),
            observation: serde_json::to_value(&obs).unwrap_or_default(),
            induced: false,
        })
    }
}

impl Check<UnitObservation> for CrashLoop {
    fn name(&self) -> &'static str {
        CHECK_CRASH_LOOP
    }

    fn observe(&mut self, obs: &UnitObservation) -> Option<Condition> {
        if !self.rules.watches(&obs.unit) {
            return None;
        }
        let h = self.history.entry(obs.unit.clone()).or_default();
        if h.back().is_none_or(|(_, n)| *n != obs.n_restarts) {
            h.push_back((obs.seen_at, obs.n_restarts));
        }
        self.last.insert(obs.unit.clone(), obs.clone());
        self.evaluate(&obs.unit.clone(), obs.seen_at)
    }

    fn tick(&mut self, now: DateTime<Utc>) -> Vec<Condition> {
        let units: Vec<String> = self
            .history
            .iter()
            .filter(|(_, h)| h.len() > 1)
            .map(|(u, _)| u.clone())
            .collect();
        units.iter().filter_map(|u| self.evaluate(u, now)).collect()
    }

    /// When the oldest sample in the window leaves it (the rise can only fall then).
    fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.history
            .values()
            .filter(|h| h.len() > 1)
            .map(|h| h[1].0 + chrono_dur(self.window))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::UnitProperties;
    use crate::units::{UnitPattern, UnitRule};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn obs(at: i64, unit: &str, active: &str, n: u32) -> UnitObservation {
        UnitObservation {
            props: UnitProperties {
                unit: unit.into(),
                active_state: active.into(),
                sub_state: "x".into(),
                result: "signal".into(),
                n_restarts: n,
                invocation_id: String::new(),
                state_change: None,
            },
            seen_at: t(at),
        }
    }

    fn rules(expect_active: bool) -> UnitRules {
        UnitRules::new(vec![UnitRule {
            pattern: UnitPattern::new("demo*.service").unwrap(),
            remediate: true,
            expect_active,
        }])
    }

    #[test]
    fn unit_failed_table() {
        let cases = [
            ("failed", false, Some(true)),
            ("failed", true, Some(true)),
            ("inactive", false, Some(false)),
            ("inactive", true, Some(true)),
            ("active", true, Some(false)),
            ("activating", true, Some(false)),
        ];
        for (state, expect_active, failing) in cases {
            let mut c = UnitFailed::new(rules(expect_active));
            assert_eq!(
                c.observe(&obs(0, "demo.service", state, 0))
                    .map(|c| c.failing),
                failing,
                "{state} expect_active={expect_active}"
            );
        }
        let mut c = UnitFailed::new(rules(false));
        assert!(
            c.observe(&obs(0, "other.service", "failed", 0)).is_none(),
            "an unwatched unit is not evaluated"
        );
    }

    #[test]
    fn crash_loop_needs_enough_restarts_within_the_window() {
        let mut c = CrashLoop::new(rules(false), 3, Duration::from_secs(60));
        let failing = |c: &mut CrashLoop, o| c.observe(&o).unwrap().failing;
        assert!(!failing(&mut c, obs(0, "demo.service", "active", 0)));
        assert!(
            c.next_deadline().is_none(),
            "one sample: nothing to age out"
        );
        assert!(!failing(&mut c, obs(10, "demo.service", "activating", 2)));
        assert_eq!(c.next_deadline(), Some(t(70)));
        assert!(failing(&mut c, obs(20, "demo.service", "activating", 3)));
        // no new restarts: once the samples age out the loop has ended
        assert!(c.tick(t(69)).iter().all(|c| c.failing));
        let conds = c.tick(t(100));
        assert_eq!(conds.len(), 1);
        assert!(!conds[0].failing, "{}", conds[0].reason);
        assert!(
            c.next_deadline().is_none(),
            "the last sample is the baseline now"
        );
        let conds = c.observe(&obs(101, "demo.service", "active", 3)).unwrap();
        assert!(!conds.failing);
    }

    #[test]
    fn crash_loop_ends_by_time_alone() {
        let mut c = CrashLoop::new(rules(false), 3, Duration::from_secs(60));
        c.observe(&obs(0, "demo.service", "active", 0));
        c.observe(&obs(5, "demo.service", "activating", 3));
        let deadline = c.next_deadline().unwrap();
        assert_eq!(deadline, t(65));
        let conds = c.tick(deadline);
        assert_eq!(conds.len(), 1);
        assert!(!conds[0].failing, "{}", conds[0].reason);
    }
}
