//! One state machine per (check, target): ok → firing → resolved, with
//! flapping and needs-human on the side.
//!
//! Only transitions produce [`IncidentTransition`]s, so a unit that stays
//! failed for an hour is one incident, not a stream of alerts. An incident
//! resolves only after its check has passed for `resolve_hold` (hysteresis), so
//! a fix that does not hold keeps the same incident open instead of opening a
//! new one each time.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::events::{IncidentState, IncidentTransition};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub flap_window: Duration,
    pub flap_threshold: u32,
    pub resolve_hold: Duration,
}

/// One evaluation of a check on a target.
#[derive(Debug, Clone)]
pub struct Condition {
    pub check: String,
    pub target: String,
    pub failing: bool,
    pub at: DateTime<Utc>,
    pub severity: String,
    pub reason: String,
    pub observation: serde_json::Value,
    /// The change was caused by our own runbook: it does not count as flapping.
    pub induced: bool,
}

/// An incident that is not resolved yet.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIncident {
    pub id: String,
    pub check: String,
    pub target: String,
    pub severity: String,
    pub state: IncidentState,
    pub opened_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Track {
    failing: bool,
    ok_since: Option<DateTime<Utc>>,
    edges: VecDeque<DateTime<Utc>>,
    open: Option<OpenIncident>,
    last_observation: serde_json::Value,
}

#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    tracks: HashMap<(String, String), Track>,
    /// State changes counted towards flapping since the caller last took them, for
    /// the caller to persist (see [`Engine::take_new_edges`]).
    new_edges: Vec<Edge>,
}

/// One state change of a (check, target) that counts towards flapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub check: String,
    pub target: String,
    pub at: DateTime<Utc>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            tracks: HashMap::new(),
            new_edges: Vec::new(),
        }
    }

    /// Takes back a state change counted before the agent last stopped, so a
    /// restart does not reset flap detection. Edges older than the flap window are
    /// dropped by the next observation or tick, as live ones are.
    pub fn restore_edge(&mut self, edge: Edge) {
        let track = self.tracks.entry((edge.check, edge.target)).or_default();
        let pos = track.edges.partition_point(|e| *e <= edge.at);
        track.edges.insert(pos, edge.at);
    }

    /// The state changes counted since the last call, oldest first.
    pub fn take_new_edges(&mut self) -> Vec<Edge> {
        std::mem::take(&mut self.new_edges)
    }

    /// Takes back an incident that was open when the agent last stopped, so a
    /// restart neither duplicates it nor forgets it. Until a fresh observation
    /// says otherwise the check is taken as still failing.
    pub fn restore(&mut self, incident: OpenIncident) {
        let key = (incident.check.clone(), incident.target.clone());
        let track = self.tracks.entry(key).or_default();
        track.failing = true;
        track.open = Some(incident);
    }

    pub fn open_incident(&self, check: &str, target: &str) -> Option<&OpenIncident> {
        self.tracks
            .get(&(check.to_string(), target.to_string()))
            .and_then(|t| t.open.as_ref())
    }

    pub fn open_incidents(&self) -> impl Iterator<Item = &OpenIncident> {
        self.tracks.values().filter_map(|t| t.open.as_ref())
    }

    pub fn find(&self, incident_id: &str) -> Option<&OpenIncident> {
        self.open_incidents().find(|i| i.id == incident_id)
    }

    /// Is the check on this target failing right now (as last observed)?
    pub fn is_failing(&self, check: &str, target: &str) -> bool {
        self.tracks
            .get(&(check.to_string(), target.to_string()))
            .is_some_and(|t| t.failing)
    }

    /// Feeds one evaluation; returns the transitions it causes (zero or one).
    pub fn observe(
        &mut self,
        c: Condition,
        new_id: &mut dyn FnMut() -> String,
    ) -> Vec<IncidentTransition> {
        let cfg = self.cfg.clone();
        let track = self
            .tracks
            .entry((c.check.clone(), c.target.clone()))
            .or_default();
        track.last_observation = c.observation.clone();
        let edge = track.failing != c.failing;
        if edge && !c.induced {
            track.edges.push_back(c.at);
            self.new_edges.push(Edge {
                check: c.check.clone(),
                target: c.target.clone(),
                at: c.at,
            });
        }
        prune(&mut track.edges, c.at, cfg.flap_window);
        let flapping = track.edges.len() as u32 >= cfg.flap_threshold;
        let mut out = Vec::new();

        if c.failing {
            track.failing = true;
            track.ok_since = None;
            match &mut track.open {
                None => {
                    let state = if flapping {
                        IncidentState::Flapping
                    } else {
                        IncidentState::Firing
                    };
                    let inc = OpenIncident {
                        id: new_id(),
                        check: c.check.clone(),
                        target: c.target.clone(),
                        severity: c.severity.clone(),
                        state,
                        opened_at: c.at,
                    };
                    out.push(transition(
                        &inc,
                        None,
                        state,
                        c.at,
                        &c.reason,
                        &c.observation,
                    ));
                    track.open = Some(inc);
                }
                Some(inc) => {
                    if flapping && inc.state == IncidentState::Firing {
                        out.push(move_to(inc, IncidentState::Flapping, &c, &track.edges));
                    }
                }
            }
        } else {
            if track.failing {
                track.ok_since = Some(c.at);
            }
            track.failing = false;
            if let Some(inc) = &mut track.open
                && flapping
                && inc.state == IncidentState::Firing
            {
                out.push(move_to(inc, IncidentState::Flapping, &c, &track.edges));
            }
        }
        out
    }

    /// Time passing: resolves incidents whose check held for `resolve_hold`,
    /// and ends flapping once the window has calmed down.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<IncidentTransition> {
        self.tick_with(now, |_| false)
    }

    /// As [`Engine::tick`], but an incident for which `held` is true does not
    /// resolve yet (its runbook is still verifying the fix).
    pub fn tick_with(
        &mut self,
        now: DateTime<Utc>,
        held: impl Fn(&OpenIncident) -> bool,
    ) -> Vec<IncidentTransition> {
        let cfg = self.cfg.clone();
        let mut out = Vec::new();
        for track in self.tracks.values_mut() {
            prune(&mut track.edges, now, cfg.flap_window);
            let flapping = track.edges.len() as u32 >= cfg.flap_threshold;
            let Some(inc) = &mut track.open else { continue };
            if !track.failing && held(inc) {
                continue;
            }
            if !track.failing {
                let held = track
                    .ok_since
                    .is_some_and(|since| now - since >= chrono_dur(cfg.resolve_hold));
                if held && !flapping {
                    let reason = format!("check passed for {}s", cfg.resolve_hold.as_secs_f64());
                    out.push(transition(
                        inc,
                        Some(inc.state),
                        IncidentState::Resolved,
                        now,
                        &reason,
                        &track.last_observation,
                    ));
                    track.open = None;
                    track.ok_since = None;
                }
            } else if inc.state == IncidentState::Flapping && !flapping {
                let reason = format!(
                    "fewer than {} state changes in {}s: no longer flapping",
                    cfg.flap_threshold,
                    cfg.flap_window.as_secs()
                );
                out.push(transition(
                    inc,
                    Some(IncidentState::Flapping),
                    IncidentState::Firing,
                    now,
                    &reason,
                    &track.last_observation,
                ));
                inc.state = IncidentState::Firing;
            }
        }
        out
    }

    /// The next instant at which [`Engine::tick_with`] could produce a transition:
    /// a resolve hold ending, or the oldest state change leaving the flap window
    /// of a flapping incident. Incidents for which `held` is true are left out
    /// (what ends their hold is an input, not time). An instant in the past
    /// means "due now".
    pub fn next_deadline(&self, held: impl Fn(&OpenIncident) -> bool) -> Option<DateTime<Utc>> {
        // prune() keeps an edge exactly `window` old: it leaves just after.
        let window = chrono_dur(self.cfg.flap_window) + chrono::Duration::microseconds(1);
        let hold = chrono_dur(self.cfg.resolve_hold);
        self.tracks
            .values()
            .filter_map(|track| {
                let inc = track.open.as_ref()?;
                let flapping = track.edges.len() as u32 >= self.cfg.flap_threshold;
                let calm = track.edges.front().map(|e| *e + window);
                if !track.failing {
                    if held(inc) {
                        None
                    } else if flapping {
                        calm
                    } else {
                        track.ok_since.map(|s| s + hold)
                    }
                } else if inc.state == IncidentState::Flapping {
                    // still flapping: when the window calms; no longer: due now
                    if flapping {
                        calm
                    } else {
                        Some(DateTime::<Utc>::MIN_UTC)
                    }
                } else {
                    None
                }
            })
            .min()
    }

    /// Closes an open incident at once because its check no longer applies (the
    /// target left the configuration): resolved, with the reason recorded, and the
    /// target forgotten so nothing more is decided about it.
    pub fn retire(
        &mut self,
        check: &str,
        target: &str,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Option<IncidentTransition> {
        let track = self
            .tracks
            .remove(&(check.to_string(), target.to_string()))?;
        let inc = track.open?;
        Some(transition(
            &inc,
            Some(inc.state),
            IncidentState::Resolved,
            at,
            reason,
            &track.last_observation,
        ))
    }

    /// A person must look: remediation was refused or did not hold.
    pub fn escalate(
        &mut self,
        incident_id: &str,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Option<IncidentTransition> {
        let track = self
            .tracks
            .values_mut()
            .find(|t| t.open.as_ref().is_some_and(|i| i.id == incident_id))?;
        let inc = track.open.as_mut()?;
        if inc.state == IncidentState::NeedsHuman {
            return None;
        }
        let t = transition(
            inc,
            Some(inc.state),
            IncidentState::NeedsHuman,
            at,
            reason,
            &track.last_observation,
        );
        inc.state = IncidentState::NeedsHuman;
        Some(t)
    }
}

fn move_to(
    inc: &mut OpenIncident,
    to: IncidentState,
    c: &Condition,
    edges: &VecDeque<DateTime<Utc>>,
) -> IncidentTransition {
    let reason = format!("{} state changes within the flap window", edges.len());
    let t = transition(inc, Some(inc.state), to, c.at, &reason, &c.observation);
    inc.state = to;
    t
}

fn transition(
    inc: &OpenIncident,
    from: Option<IncidentState>,
    to: IncidentState,
    at: DateTime<Utc>,
    reason: &str,
    observation: &serde_json::Value,
) -> IncidentTransition {
    IncidentTransition {
        incident_id: inc.id.clone(),
        check: inc.check.clone(),
        target: inc.target.clone(),
        severity: inc.severity.clone(),
        from,
        to,
        at,
        reason: reason.to_string(),
        observation: observation.clone(),
    }
}

fn prune(edges: &mut VecDeque<DateTime<Utc>>, now: DateTime<Utc>, window: Duration) {
    let horizon = now - chrono_dur(window);
    while edges.front().is_some_and(|t| *t < horizon) {
        edges.pop_front();
    }
}

pub fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use IncidentState::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn engine() -> Engine {
        Engine::new(EngineConfig {
            flap_window: Duration::from_secs(60),
            flap_threshold: 4,
            resolve_hold: Duration::from_secs(5),
        })
    }

    enum Step {
        Obs(i64, bool),
        Tick(i64),
        Escalate(i64),
    }
    use Step::*;

    /// Runs the steps; returns each transition as "from->to".
    fn run(steps: &[Step]) -> Vec<String> {
        let mut e = engine();
        let mut n = 0;
        let mut out = Vec::new();
        for s in steps {
            let ts = match s {
                Obs(at, failing) => e.observe(
                    Condition {
                        check: "unit_failed".into(),
                        target: "demo.service".into(),
                        failing: *failing,
                        at: t(*at),
                        severity: "critical".into(),
                        reason: "r".into(),
                        observation: serde_json::Value::Null,
                        induced: false,
                    },
                    &mut || {
                        n += 1;
                        format!("INC-{n}")
                    },
                ),
                Tick(at) => e.tick(t(*at)),
                Escalate(at) => {
                    let id = e.open_incidents().next().map(|i| i.id.clone());
                    id.and_then(|id| e.escalate(&id, t(*at), "limit"))
                        .into_iter()
                        .collect()
                }
            };
            for tr in ts {
                out.push(format!(
                    "{}:{}->{}",
                    tr.incident_id,
                    tr.from.map(|f| f.as_str()).unwrap_or("none"),
                    tr.to.as_str()
                ));
            }
        }
        out
    }

    #[test]
    fn state_machine_table() {
        let cases: &[(&str, &[Step], &[&str])] = &[
            (
                "steady ok makes nothing",
                &[Obs(0, false), Tick(10), Obs(20, false)],
                &[],
            ),
            (
                "fail then recover resolves after the hold",
                &[Obs(0, true), Obs(1, false), Tick(3), Tick(6)],
                &["INC-1:none->firing", "INC-1:firing->resolved"],
            ),
            (
                "staying failed is one incident",
                &[Obs(0, true), Obs(5, true), Tick(100), Obs(200, true)],
                &["INC-1:none->firing"],
            ),
            (
                "a fix that does not hold keeps the same incident",
                &[
                    Obs(0, true),
                    Obs(1, false),
                    Obs(2, true),
                    Tick(10),
                    Obs(11, false),
                    Tick(17),
                ],
                &["INC-1:none->firing", "INC-1:firing->flapping"],
            ),
            (
                "after resolution a new failure is a new incident",
                &[Obs(0, true), Obs(1, false), Tick(7), Obs(100, true)],
                &[
                    "INC-1:none->firing",
                    "INC-1:firing->resolved",
                    "INC-2:none->firing",
                ],
            ),
            (
                "flapping resolves only once the window calms",
                &[
                    Obs(0, true),
                    Obs(1, false),
                    Obs(2, true),
                    Obs(3, false),
                    Tick(10),
                    Tick(70),
                ],
                &[
                    "INC-1:none->firing",
                    "INC-1:firing->flapping",
                    "INC-1:flapping->resolved",
                ],
            ),
            (
                "flapping then steadily failing returns to firing",
                &[
                    Obs(0, true),
                    Obs(1, false),
                    Obs(2, true),
                    Obs(3, false),
                    Obs(4, true),
                    Tick(70),
                ],
                &[
                    "INC-1:none->firing",
                    "INC-1:firing->flapping",
                    "INC-1:flapping->firing",
                ],
            ),
            (
                "escalation is recorded once and resolves normally",
                &[
                    Obs(0, true),
                    Escalate(1),
                    Escalate(2),
                    Obs(3, false),
                    Tick(9),
                ],
                &[
                    "INC-1:none->firing",
                    "INC-1:firing->needs_human",
                    "INC-1:needs_human->resolved",
                ],
            ),
        ];
        for (name, steps, expected) in cases {
            assert_eq!(run(steps), *expected, "case: {name}");
        }
    }

    #[test]
    fn next_deadline_is_when_tick_would_act() {
        let c = |at, failing| Condition {
            check: "unit_failed".into(),
            target: "demo.service".into(),
            failing,
            at: t(at),
            severity: "critical".into(),
            reason: "r".into(),
            observation: serde_json::Value::Null,
            induced: false,
        };
        let mut ids = || "INC-1".to_string();
        let mut e = engine();
        assert_eq!(e.next_deadline(|_| false), None);
        e.observe(c(0, true), &mut ids);
        assert_eq!(
            e.next_deadline(|_| false),
            None,
            "failing: only an input can help"
        );
        e.observe(c(2, false), &mut ids);
        assert_eq!(
            e.next_deadline(|_| false),
            Some(t(7)),
            "resolve hold of 5 s"
        );
        assert_eq!(e.next_deadline(|_| true), None, "held by a run in flight");
        assert!(e.tick_with(t(8), |_| true).is_empty(), "not while held");
        assert_eq!(e.tick(t(7)).len(), 1, "resolved at the deadline");
        assert_eq!(e.next_deadline(|_| false), None);

        // flapping: the deadline is when the oldest change leaves the 60 s window
        let mut e = engine();
        for (at, failing) in [(0, true), (1, false), (2, true), (3, false)] {
            e.observe(c(at, failing), &mut ids);
        }
        assert_eq!(e.open_incidents().next().unwrap().state, Flapping);
        let calm = t(60) + chrono::Duration::microseconds(1);
        assert_eq!(e.next_deadline(|_| false), Some(calm));
        assert!(e.tick(t(60)).is_empty());
        let ts = e.tick(calm);
        assert_eq!(ts.len(), 1, "calm and held long enough: resolved");
        assert_eq!(ts[0].to, Resolved);
    }

    #[test]
    fn restored_edges_keep_counting_towards_flapping() {
        // Two changes before a restart, two after: the fourth makes it flapping, as
        // it would have without the restart.
        let obs = |e: &mut Engine, at: i64, failing: bool| {
            let mut n = 0;
            e.observe(
                Condition {
                    check: "unit_failed".into(),
                    target: "a.service".into(),
                    failing,
                    at: t(at),
                    severity: "critical".into(),
                    reason: String::new(),
                    observation: serde_json::Value::Null,
                    induced: false,
                },
                &mut || {
                    n += 1;
                    format!("inc-{at}-{n}")
                },
            )
        };
        let mut before = engine();
        obs(&mut before, 0, true);
        obs(&mut before, 1, false);
        let saved = before.take_new_edges();
        assert_eq!(saved.iter().map(|e| e.at).collect::<Vec<_>>(), [t(0), t(1)]);
        assert!(before.take_new_edges().is_empty(), "taken once");

        let mut after = engine();
        for e in saved.into_iter().rev() {
            after.restore_edge(e);
        }
        after.tick(t(10));
        let ts = obs(&mut after, 20, true);
        assert_eq!(ts.len(), 1, "{ts:?}");
        assert_eq!(ts[0].to, Firing, "three changes: not yet flapping");
        let ts = obs(&mut after, 21, false);
        assert_eq!(ts.len(), 1, "{ts:?}");
        assert_eq!(
            (ts[0].from, ts[0].to),
            (Some(Firing), Flapping),
            "four changes in the window across a restart"
        );

        // Edges that left the window by the time they are restored count for nothing.
        let mut late = engine();
        late.restore_edge(Edge {
            check: "unit_failed".into(),
            target: "a.service".into(),
            at: t(0),
        });
        obs(&mut late, 100, true);
        assert_eq!(
            late.open_incident("unit_failed", "a.service")
                .unwrap()
                .state,
            Firing
        );
    }

    #[test]
    fn retired_incident_resolves_at_once_and_is_forgotten() {
        let mut e = engine();
        e.restore(OpenIncident {
            id: "inc-9".into(),
            check: "unit_failed".into(),
            target: "gone.service".into(),
            severity: "critical".into(),
            state: IncidentState::NeedsHuman,
            opened_at: t(0),
        });
        let tr = e
            .retire("unit_failed", "gone.service", t(5), "no longer watched")
            .expect("an open incident is retired");
        assert_eq!(tr.incident_id, "inc-9");
        assert_eq!(tr.from, Some(IncidentState::NeedsHuman));
        assert_eq!(tr.to, IncidentState::Resolved);
        assert_eq!(tr.reason, "no longer watched");
        assert!(e.find("inc-9").is_none());
        assert!(!e.is_failing("unit_failed", "gone.service"));
        assert!(e.tick(t(100)).is_empty());
        assert!(
            e.retire("unit_failed", "gone.service", t(6), "again")
                .is_none()
        );
    }

    #[test]
    fn restored_incident_is_not_duplicated() {
        let mut e = engine();
        e.restore(OpenIncident {
            id: "INC-old".into(),
            check: "unit_failed".into(),
            target: "demo.service".into(),
            severity: "critical".into(),
            state: NeedsHuman,
            opened_at: t(0),
        });
        let c = |at, failing| Condition {
            check: "unit_failed".into(),
            target: "demo.service".into(),
            failing,
            at: t(at),
            severity: "critical".into(),
            reason: "r".into(),
            observation: serde_json::Value::Null,
            induced: false,
        };
        let mut ids = || "INC-new".to_string();
        assert!(e.observe(c(10, true), &mut ids).is_empty());
        assert_eq!(
            e.open_incident("unit_failed", "demo.service").unwrap().id,
            "INC-old"
        );
        assert!(e.observe(c(11, false), &mut ids).is_empty());
        let tr = e.tick(t(20));
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].incident_id, "INC-old");
        assert_eq!(tr[0].to, Resolved);
    }
}
