//! The agent's core: one pure step from an input and an instant to the effects
//! the runtime must carry out, in order.
//!
//! `Agent::step` holds every decision the daemon makes: what recovery at start
//! means, what an observation means (through the checks and the incident
//! engine), whether to remediate, defer, escalate or hold back, and what to
//! record. It does no I/O and reads no clock: the runtime hands it each input
//! with the instant, executes the effects (records first, in one SQLite
//! transaction; then runbook starts; then log notes), and sleeps until
//! [`Agent::next_deadline`] or the next input. Model: zincati's update state
//! machine apart from its actor; mini-redis' command enum.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::checks::Check;
use super::disks::{DiskCheck, DiskRules, is_disk_check};
use super::incident::{Condition, Edge, Engine, EngineConfig, OpenIncident, chrono_dur};
use super::limits::{History, Limits, Silence, active_silence};
use super::policy::{self, Answer, Decision, Situation};
use super::units::{CrashLoop, UnitFailed, is_unit_check};
use crate::events::{
    IncidentState, IncidentTransition, RateLimitDecision, RunOutcome, RunbookRun, StepRecord,
};
use crate::units::UnitRules;
use crate::watch::disks::{DiskEvent, DiskObservation};
use crate::watch::units::{UnitEvent, UnitObservation};

/// What the core is handed at construction: its own settings, not the whole config.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub dry_run: bool,
    pub rules: UnitRules,
    pub engine: EngineConfig,
    pub crash_loop_restarts: u32,
    pub crash_loop_window: Duration,
    /// The disk checks' thresholds, per mount.
    pub disks: DiskRules,
    /// Which answer each check gets (`[remediation]`); a check not named gets nothing.
    pub answers: HashMap<String, Answer>,
    /// Each known runbook's limits, by runbook ID.
    pub limits: HashMap<String, Limits>,
}

/// A run that counts against the limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStart {
    pub runbook: String,
    pub target: String,
    pub at: DateTime<Utc>,
}

/// What the store held when the agent started.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Runs a previous process left in flight, already closed as interrupted.
    pub interrupted: Vec<RunbookRun>,
    pub open: Vec<OpenIncident>,
    /// State changes still inside the flap window.
    pub edges: Vec<Edge>,
    /// Counted runs inside the longest limit window.
    pub history: Vec<RunStart>,
    pub silences: Vec<Silence>,
}

#[derive(Debug, Clone)]
pub enum Input {
    /// The first input: the state a previous process left.
    Recovered(Recovered),
    Units(UnitEvent),
    /// One round of disk samples.
    Disks(DiskEvent),
    /// A runbook run came back (or was interrupted by the stop).
    RunFinished(RunbookRun),
    /// The silences in force (the CLI adds them to SQLite beside the daemon).
    Silences(Vec<Silence>),
    /// A deadline passed.
    Tick,
    /// The agent is stopping: the sources are gone, so nothing new is started;
    /// the runs in flight may still come back.
    Stopping,
    /// The agent stops and will not wait for the runs still in flight.
    Abandon,
}

/// A row (and for transitions and finished runs, its evidence event) to commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Transition {
        transition: IncidentTransition,
        /// When systemd says the observed change happened.
        detected_at: Option<DateTime<Utc>>,
    },
    /// Written before the run's first step: a crash from there on is visible and counted.
    RunStarted(RunbookRun),
    RunFinished(RunbookRun),
    /// State changes that count towards flapping, and the instant before which
    /// the older ones can be forgotten.
    Edges {
        edges: Vec<Edge>,
        keep_since: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// A line for the journal, with the fields that correlate it.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub level: Level,
    pub incident_id: Option<String>,
    pub target: Option<String>,
    pub runbook: Option<String>,
    pub message: String,
}

/// What the runtime must do. It executes them in phases, in order within each:
/// every `Record` of a step in one transaction, then every `Start`, then the
/// notes and the records' own log lines.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Record(Record),
    /// Start this run (its `RunStarted` record precedes it).
    Start(RunbookRun),
    Note(Note),
}

/// Where new incident and run IDs come from (UUIDv7 in the daemon, counters in tests).
pub trait Ids: Send {
    fn incident(&mut self) -> String;
    fn run(&mut self) -> String;
}

pub struct UuidIds;

impl Ids for UuidIds {
    fn incident(&mut self) -> String {
        format!("INC-{}", uuid::Uuid::now_v7().simple())
    }
    fn run(&mut self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

pub struct Agent {
    s: AgentSettings,
    engine: Engine,
    unit_checks: Vec<Box<dyn Check<UnitObservation>>>,
    disk_checks: Vec<Box<dyn Check<DiskObservation>>>,
    /// The level last reported for each open disk incident (its severity is
    /// that of its opening; a change of level is a journal line).
    disk_levels: HashMap<String, String>,
    /// Runs in flight, by run ID.
    in_flight: HashMap<String, RunbookRun>,
    /// Incidents whose next run may not start before an instant, with the
    /// rate-limit decisions taken so far (they go into the run's record).
    deferred: HashMap<String, (DateTime<Utc>, Vec<RateLimitDecision>)>,
    suppression_recorded: HashSet<String>,
    history: Vec<RunStart>,
    silences: Vec<Silence>,
    /// The units source has read the initial state (after a start or reconnect).
    units_ready: bool,
    /// Nothing new is decided: the agent is stopping.
    stopping: bool,
    watched_units: usize,
    /// The last sample of each watched mount, for the status.
    last_disks: Vec<DiskObservation>,
    ids: Box<dyn Ids>,
}

/// One watched mount as `msp-agent status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MountView {
    pub mount: String,
    pub used_ratio: f64,
    pub inodes_used_ratio: Option<f64>,
    pub seconds_to_full: Option<f64>,
    /// `ok`, or the level of its open disk incidents (the highest).
    pub level: String,
    pub remediate: bool,
}

impl Agent {
    pub fn new(s: AgentSettings, ids: Box<dyn Ids>) -> Agent {
        // The checks on units; a new check on units is one line here.
        let unit_checks: Vec<Box<dyn Check<UnitObservation>>> = vec![
            Box::new(UnitFailed::new(s.rules.clone())),
            Box::new(CrashLoop::new(
                s.rules.clone(),
                s.crash_loop_restarts,
                s.crash_loop_window,
            )),
        ];
        // The checks on disks; a new check on disks is one line here.
        let disk_checks: Vec<Box<dyn Check<DiskObservation>>> = vec![
            Box::new(DiskCheck::space(s.disks.clone())),
            Box::new(DiskCheck::inodes(s.disks.clone())),
            Box::new(DiskCheck::fill_rate(s.disks.clone())),
        ];
        Agent {
            engine: Engine::new(s.engine.clone()),
            unit_checks,
            disk_checks,
            disk_levels: HashMap::new(),
            last_disks: Vec::new(),
            in_flight: HashMap::new(),
            deferred: HashMap::new(),
            suppression_recorded: HashSet::new(),
            history: Vec::new(),
            silences: Vec::new(),
            units_ready: false,
            stopping: false,
            watched_units: 0,
            ids,
            s,
        }
    }

    /// The longest window any limit looks back over (the history to load at start).
    pub fn history_horizon(&self) -> Duration {
        self.s
            .limits
            .values()
            .map(|l| l.window)
            .chain([Duration::from_secs(3600)])
            .max()
            .unwrap_or(Duration::from_secs(3600))
    }

    pub fn step(&mut self, input: Input, now: DateTime<Utc>) -> Vec<Effect> {
        let mut fx = Vec::new();
        match input {
            Input::Recovered(r) => self.recover(r, now, &mut fx),
            Input::Units(UnitEvent::Unit(obs)) => self.on_unit(obs, now, &mut fx),
            Input::Units(UnitEvent::Connected { units }) => {
                self.units_ready = true;
                self.watched_units = units;
                self.consider_all(now, &mut fx);
            }
            Input::Units(UnitEvent::Tracking { units }) => self.watched_units = units,
            Input::Units(UnitEvent::Disconnected { .. }) => self.units_ready = false,
            Input::Disks(ev) => self.on_disks(ev, now, &mut fx),
            Input::RunFinished(run) => self.on_run_finished(run, now, &mut fx),
            Input::Silences(s) => self.silences = s,
            Input::Tick => self.on_tick(now, &mut fx),
            Input::Stopping => {
                self.stopping = true;
                self.units_ready = false;
            }
            Input::Abandon => {
                let mut left: Vec<RunbookRun> = self.in_flight.drain().map(|(_, r)| r).collect();
                left.sort_by_key(|r| r.started_at);
                for mut run in left {
                    run.outcome = RunOutcome::Interrupted;
                    run.finished_at = Some(now);
                    fx.push(Effect::Record(Record::RunFinished(run)));
                }
            }
        }
        let edges = self.engine.take_new_edges();
        if !edges.is_empty() {
            fx.push(Effect::Record(Record::Edges {
                edges,
                keep_since: now - chrono_dur(self.s.engine.flap_window),
            }));
        }
        fx
    }

    /// The next instant at which time alone could change a decision.
    pub fn next_deadline(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let engine = self.engine.next_deadline(|inc| self.busy(inc));
        let checks = self
            .unit_checks
            .iter()
            .filter_map(|c| c.next_deadline())
            .chain(self.disk_checks.iter().filter_map(|c| c.next_deadline()));
        let deferred = self
            .deferred
            .values()
            .map(|(until, _)| *until)
            .filter(|until| self.units_ready && *until > now);
        engine.into_iter().chain(checks).chain(deferred).min()
    }

    pub fn open_incidents(&self) -> impl Iterator<Item = &OpenIncident> {
        self.engine.open_incidents()
    }

    pub fn runs_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn in_flight(&self) -> impl Iterator<Item = &RunbookRun> {
        self.in_flight.values()
    }

    pub fn units_ready(&self) -> bool {
        self.units_ready
    }

    pub fn watched_units(&self) -> usize {
        self.watched_units
    }

    /// The watched mounts with their last sample and level.
    pub fn mounts(&self) -> Vec<MountView> {
        let rank = |l: &str| match l {
            "critical" => 2,
            "warning" => 1,
            _ => 0,
        };
        let mut out: Vec<MountView> = self
            .last_disks
            .iter()
            .map(|d| {
                let level = self
                    .engine
                    .open_incidents()
                    .filter(|i| is_disk_check(&i.check) && i.target == d.mount)
                    .map(|i| {
                        self.disk_levels
                            .get(&i.id)
                            .cloned()
                            .unwrap_or_else(|| i.severity.clone())
                    })
                    .max_by_key(|l| rank(l))
                    .unwrap_or_else(|| "ok".to_string());
                MountView {
                    mount: d.mount.clone(),
                    used_ratio: d.used_ratio,
                    inodes_used_ratio: d.inodes_used_ratio,
                    seconds_to_full: d.seconds_to_full,
                    level,
                    remediate: self.s.disks.for_mount(&d.mount).remediate,
                }
            })
            .collect();
        out.sort_by(|a, b| a.mount.cmp(&b.mount));
        out
    }

    pub fn dry_run(&self) -> bool {
        self.s.dry_run
    }

    /// The one line `systemctl status` shows.
    pub fn summary(&self) -> String {
        let open = self.engine.open_incidents().count();
        let runs = self.in_flight.len();
        format!(
            "watching {} units; {} open incident{}; {} runbook{} running{}{}",
            self.watched_units,
            open,
            if open == 1 { "" } else { "s" },
            runs,
            if runs == 1 { "" } else { "s" },
            if self.s.dry_run { "; dry run" } else { "" },
            if self.units_ready {
                ""
            } else {
                "; system bus lost"
            },
        )
    }

    fn busy(&self, inc: &OpenIncident) -> bool {
        self.in_flight.values().any(|r| r.target == inc.target)
    }

    fn recover(&mut self, r: Recovered, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        for run in &r.interrupted {
            fx.push(note(
                Level::Warn,
                Some(run),
                "a runbook was in flight when the agent last stopped: recorded as interrupted, not repeated blindly".into(),
            ));
        }
        self.history = r.history;
        self.silences = r.silences;
        for inc in r.open {
            let (check, target, id) = (inc.check.clone(), inc.target.clone(), inc.id.clone());
            self.engine.restore(inc);
            if is_unit_check(&check) && !self.s.rules.watches(&target) {
                // Nothing would ever observe the unit again: close the incident now,
                // saying why, rather than leave it open for ever.
                if let Some(t) = self.engine.retire(
                    &check,
                    &target,
                    now,
                    "the unit is no longer watched (the configuration changed); closed without remediation",
                ) {
                    self.record_transition(t, None, fx);
                }
                continue;
            }
            fx.push(Effect::Note(Note {
                level: Level::Info,
                incident_id: Some(id),
                target: Some(target),
                runbook: None,
                message: "incident still open from before the restart".into(),
            }));
        }
        for edge in r.edges {
            self.engine.restore_edge(edge);
        }
    }

    fn on_unit(&mut self, obs: UnitObservation, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        if !self.s.rules.watches(&obs.unit) {
            return;
        }
        // Changes our own runbook causes are not flapping.
        let induced = self.in_flight.values().any(|r| r.target == obs.unit);
        let mut transitions = Vec::new();
        for check in &mut self.unit_checks {
            if let Some(mut cond) = check.observe(&obs) {
                cond.induced = induced;
                let ids = &mut self.ids;
                transitions.extend(self.engine.observe(cond, &mut || ids.incident()));
            }
        }
        for t in transitions {
            self.record_transition(t, obs.state_change, fx);
        }
        // Decide on the event itself, not at a later tick.
        let ids: Vec<String> = self
            .engine
            .open_incidents()
            .filter(|i| i.target == obs.unit)
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            self.consider(&id, now, fx);
        }
    }

    fn on_disks(&mut self, ev: DiskEvent, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        self.last_disks = ev.disks.clone();
        let mut conds = Vec::new();
        for obs in &ev.disks {
            for check in &mut self.disk_checks {
                conds.extend(check.observe(obs));
            }
        }
        let mut targets: Vec<String> = conds.iter().map(|c| c.target.clone()).collect();
        self.observe_disk_conditions(conds, fx);
        targets.sort();
        targets.dedup();
        let ids: Vec<String> = self
            .engine
            .open_incidents()
            .filter(|i| is_disk_check(&i.check) && targets.contains(&i.target))
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            self.consider(&id, now, fx);
        }
    }

    /// Feeds disk conditions to the engine; a level that changes under an open
    /// incident is said in the journal (the incident keeps its first severity).
    fn observe_disk_conditions(&mut self, conds: Vec<Condition>, fx: &mut Vec<Effect>) {
        let mut transitions = Vec::new();
        for cond in conds {
            let ids = &mut self.ids;
            let (check, target, failing, level) = (
                cond.check.clone(),
                cond.target.clone(),
                cond.failing,
                cond.severity.clone(),
            );
            let reason = cond.reason.clone();
            transitions.extend(self.engine.observe(cond, &mut || ids.incident()));
            if !failing {
                continue;
            }
            if let Some(inc) = self.engine.open_incident(&check, &target) {
                let last = self
                    .disk_levels
                    .entry(inc.id.clone())
                    .or_insert_with(|| inc.severity.clone());
                if *last != level {
                    fx.push(Effect::Note(Note {
                        level: Level::Warn,
                        incident_id: Some(inc.id.clone()),
                        target: Some(target.clone()),
                        runbook: None,
                        message: format!(
                            "{check} on {target} is {level} now (the incident opened as {}): {reason}",
                            inc.severity
                        ),
                    }));
                    *last = level;
                }
            }
        }
        for t in transitions {
            self.record_transition(t, None, fx);
        }
    }

    fn on_run_finished(&mut self, run: RunbookRun, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        self.in_flight.remove(&run.run_id);
        let took = run
            .finished_at
            .map(|f| (f - run.started_at).num_milliseconds())
            .unwrap_or(0);
        let (level, message) = match run.outcome {
            RunOutcome::Success => (
                Level::Info,
                format!(
                    "{} on {} succeeded in {took} ms: the check's verification passed",
                    run.runbook, run.target
                ),
            ),
            RunOutcome::DryRun => (
                Level::Info,
                format!("dry run: {} on {} would have run", run.runbook, run.target),
            ),
            other => (
                Level::Warn,
                format!(
                    "{} on {} ended {} after {took} ms; steps: {}",
                    run.runbook,
                    run.target,
                    other.as_str(),
                    serde_json::to_string(&run.steps).unwrap_or_default()
                ),
            ),
        };
        fx.push(note(level, Some(&run), message));
        let escalate = (run.outcome == RunOutcome::Partial).then(|| {
            (
                run.incident_id.clone(),
                format!(
                    "{} on {} ran every step and the problem is still there: a person must look",
                    run.runbook, run.target
                ),
            )
        });
        fx.push(Effect::Record(Record::RunFinished(run)));
        // Another run of the same steps would free nothing more.
        if let Some((id, reason)) = escalate
            && let Some(t) = self.engine.escalate(&id, now, &reason)
        {
            fx.push(Effect::Note(Note {
                level: Level::Warn,
                incident_id: Some(t.incident_id.clone()),
                target: Some(t.target.clone()),
                runbook: None,
                message: reason,
            }));
            self.record_transition(t, None, fx);
        }
        // The hold the run kept may have ended; the incident may need the next decision.
        self.on_tick(now, fx);
    }

    fn on_tick(&mut self, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        let in_flight: Vec<String> = self.in_flight.values().map(|r| r.target.clone()).collect();
        let mut transitions = self
            .engine
            .tick_with(now, |inc| in_flight.contains(&inc.target));
        for check in &mut self.unit_checks {
            for cond in check.tick(now) {
                let ids = &mut self.ids;
                transitions.extend(self.engine.observe(cond, &mut || ids.incident()));
            }
        }
        for t in transitions {
            self.record_transition(t, None, fx);
        }
        let mut disk_conds = Vec::new();
        for check in &mut self.disk_checks {
            disk_conds.extend(check.tick(now));
        }
        self.observe_disk_conditions(disk_conds, fx);
        self.consider_all(now, fx);
    }

    fn consider_all(&mut self, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        let mut ids: Vec<(DateTime<Utc>, String)> = self
            .engine
            .open_incidents()
            .map(|i| (i.opened_at, i.id.clone()))
            .collect();
        ids.sort();
        for (_, id) in ids {
            self.consider(&id, now, fx);
        }
    }

    fn answer(&self, check: &str) -> Answer {
        self.s
            .answers
            .get(check)
            .cloned()
            .unwrap_or(Answer::Nothing)
    }

    fn budget(&self, runbook: &str, target: &str, now: DateTime<Utc>) -> Option<(Limits, History)> {
        let limits = self.s.limits.get(runbook)?.clone();
        let since = now - chrono_dur(limits.window);
        let hour_ago = now - chrono::Duration::hours(1);
        let history = History {
            target_starts: self
                .history
                .iter()
                .filter(|r| r.runbook == runbook && r.target == target && r.at > since)
                .map(|r| r.at)
                .collect(),
            global_last_hour: self.history.iter().filter(|r| r.at > hour_ago).count() as u32,
        };
        Some((limits, history))
    }

    /// Decides whether an open incident gets a runbook run now.
    fn consider(&mut self, incident_id: &str, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        // Decide nothing before the initial state is read (a restored incident
        // may already be fixed), nor once the sources are gone at a stop (what a
        // run fixed can no longer be observed).
        if !self.units_ready || self.stopping {
            return;
        }
        let Some(inc) = self.engine.find(incident_id).cloned() else {
            return;
        };
        let answer = self.answer(&inc.check);
        let remediable = if is_unit_check(&inc.check) {
            self.s.rules.may_remediate(&inc.target)
        } else if is_disk_check(&inc.check) {
            self.s.disks.for_mount(&inc.target).remediate
        } else {
            true
        };
        let situation = Situation {
            incident: &inc,
            failing: self.engine.is_failing(&inc.check, &inc.target),
            answer: &answer,
            remediable,
            in_flight: self.busy(&inc),
            suppression_recorded: self.suppression_recorded.contains(&inc.id),
            silence: active_silence(&self.silences, &inc.target, now),
            deferred_until: self.deferred.get(&inc.id).map(|(u, _)| *u),
        };
        let decision = policy::decide(
            &situation,
            |runbook| self.budget(runbook, &inc.target, now),
            now,
        );
        match decision {
            Decision::Wait(_) => {}
            Decision::Suppress { detail } => {
                self.suppression_recorded.insert(inc.id.clone());
                let runbook = match &answer {
                    Answer::Runbook(r) => r.clone(),
                    _ => String::new(),
                };
                let run = RunbookRun {
                    finished_at: Some(now),
                    steps: vec![StepRecord {
                        name: "check_suppression".into(),
                        started_at: now,
                        duration_ms: 0,
                        result: "skipped".into(),
                        detail: detail.clone(),
                    }],
                    ..self.new_run(&inc, &runbook, now, RunOutcome::Suppressed)
                };
                fx.push(note(
                    Level::Warn,
                    Some(&run),
                    format!("remediation of {} suppressed: {detail}", inc.target),
                ));
                fx.push(Effect::Record(Record::RunFinished(run)));
            }
            Decision::Escalate { reason } => {
                fx.push(Effect::Note(Note {
                    level: Level::Warn,
                    incident_id: Some(inc.id.clone()),
                    target: Some(inc.target.clone()),
                    runbook: None,
                    message: reason.clone(),
                }));
                if let Some(t) = self.engine.escalate(&inc.id, now, &reason) {
                    self.record_transition(t, None, fx);
                }
            }
            Decision::Start { runbook, decision } => {
                let mut decisions = self
                    .deferred
                    .remove(&inc.id)
                    .map(|(_, d)| d)
                    .unwrap_or_default();
                decisions.push(decision.clone());
                // Recorded as interrupted unless the run reports back.
                let run = RunbookRun {
                    rate_limit: decisions,
                    ..self.new_run(&inc, &runbook, now, RunOutcome::Interrupted)
                };
                fx.push(limit_note(&run, &decision));
                fx.push(note(
                    Level::Info,
                    Some(&run),
                    format!(
                        "starting {} on {} (run {}{})",
                        run.runbook,
                        run.target,
                        run.run_id,
                        if run.dry_run { ", dry run" } else { "" }
                    ),
                ));
                self.history.push(RunStart {
                    runbook: runbook.clone(),
                    target: inc.target.clone(),
                    at: now,
                });
                let horizon = now - chrono_dur(self.history_horizon());
                self.history.retain(|r| r.at > horizon);
                self.in_flight.insert(run.run_id.clone(), run.clone());
                fx.push(Effect::Record(Record::RunStarted(run.clone())));
                fx.push(Effect::Start(run));
            }
            Decision::Defer { until, decision } => {
                fx.push(Effect::Note(Note {
                    level: Level::Info,
                    incident_id: Some(inc.id.clone()),
                    target: Some(inc.target.clone()),
                    runbook: Some(decision.runbook.clone()),
                    message: limit_message(&decision),
                }));
                let entry = self
                    .deferred
                    .entry(inc.id.clone())
                    .or_insert((until, Vec::new()));
                entry.0 = until;
                entry.1.push(decision);
            }
            Decision::Refuse {
                runbook,
                decision,
                reason,
            } => {
                let mut decisions = self
                    .deferred
                    .remove(&inc.id)
                    .map(|(_, d)| d)
                    .unwrap_or_default();
                decisions.push(decision.clone());
                let run = RunbookRun {
                    finished_at: Some(now),
                    rate_limit: decisions,
                    ..self.new_run(&inc, &runbook, now, RunOutcome::RateLimited)
                };
                fx.push(limit_note(&run, &decision));
                fx.push(note(Level::Warn, Some(&run), reason.clone()));
                fx.push(Effect::Record(Record::RunFinished(run)));
                if let Some(t) = self.engine.escalate(&inc.id, now, &reason) {
                    self.record_transition(t, None, fx);
                }
            }
        }
    }

    fn record_transition(
        &mut self,
        t: IncidentTransition,
        detected_at: Option<DateTime<Utc>>,
        fx: &mut Vec<Effect>,
    ) {
        if t.to == IncidentState::Resolved {
            self.deferred.remove(&t.incident_id);
            self.suppression_recorded.remove(&t.incident_id);
            self.disk_levels.remove(&t.incident_id);
        }
        fx.push(Effect::Record(Record::Transition {
            transition: t,
            detected_at,
        }));
    }

    fn new_run(
        &mut self,
        inc: &OpenIncident,
        runbook: &str,
        now: DateTime<Utc>,
        outcome: RunOutcome,
    ) -> RunbookRun {
        RunbookRun {
            run_id: self.ids.run(),
            incident_id: inc.id.clone(),
            runbook: runbook.to_string(),
            target: inc.target.clone(),
            dry_run: self.s.dry_run,
            started_at: now,
            finished_at: None,
            outcome,
            steps: vec![],
            rate_limit: vec![],
        }
    }
}

fn note(level: Level, run: Option<&RunbookRun>, message: String) -> Effect {
    Effect::Note(Note {
        level,
        incident_id: run.map(|r| r.incident_id.clone()),
        target: run.map(|r| r.target.clone()),
        runbook: run.map(|r| r.runbook.clone()).filter(|r| !r.is_empty()),
        message,
    })
}

fn limit_note(run: &RunbookRun, d: &RateLimitDecision) -> Effect {
    note(Level::Info, Some(run), limit_message(d))
}

fn limit_message(d: &RateLimitDecision) -> String {
    format!(
        "rate limit decision for {}: {} ({} runs in {}s, allowed: {})",
        d.target, d.rule, d.runs_in_window, d.window_secs, d.allowed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::UnitProperties;
    use crate::units::{UnitPattern, UnitRule};
    use crate::watch::disks::DiskObservation;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    struct Counter(u32, u32);
    impl Ids for Counter {
        fn incident(&mut self) -> String {
            self.0 += 1;
            format!("INC-{}", self.0)
        }
        fn run(&mut self) -> String {
            self.1 += 1;
            format!("R{}", self.1)
        }
    }

    fn agent(remediate: bool) -> Agent {
        let rules = UnitRules::new(vec![UnitRule {
            pattern: UnitPattern::new("demo*.service").unwrap(),
            remediate,
            expect_active: false,
        }]);
        Agent::new(
            AgentSettings {
                dry_run: false,
                rules,
                engine: EngineConfig {
                    flap_window: Duration::from_secs(600),
                    flap_threshold: 6,
                    resolve_hold: Duration::from_secs(10),
                },
                crash_loop_restarts: 3,
                crash_loop_window: Duration::from_secs(300),
                disks: DiskRules::default(),
                answers: [
                    (
                        "unit_failed".to_string(),
                        Answer::Runbook("RB-SERVICE-001".into()),
                    ),
                    ("crash_loop".to_string(), Answer::Escalate),
                ]
                .into(),
                limits: [(
                    "RB-SERVICE-001".to_string(),
                    Limits {
                        max_runs: 3,
                        window: Duration::from_secs(1800),
                        min_interval: Duration::from_secs(300),
                        global_per_hour: 20,
                    },
                )]
                .into(),
            },
            Box::new(Counter(0, 0)),
        )
    }

    fn unit(at: i64, active: &str, n_restarts: u32) -> Input {
        Input::Units(UnitEvent::Unit(UnitObservation {
            props: UnitProperties {
                unit: "demo.service".into(),
                active_state: active.into(),
                sub_state: "x".into(),
                result: "signal".into(),
                n_restarts,
                invocation_id: String::new(),
                state_change: Some(t(at)),
            },
            seen_at: t(at),
        }))
    }

    fn connected() -> Input {
        Input::Units(UnitEvent::Connected { units: 1 })
    }

    /// The effects as short words, notes left out.
    fn words(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Record(Record::Transition { transition: t, .. }) => Some(format!(
                    "{}:{}->{}",
                    t.incident_id,
                    t.from.map(|f| f.as_str()).unwrap_or("none"),
                    t.to.as_str()
                )),
                Effect::Record(Record::RunStarted(r)) => Some(format!("begin {}", r.run_id)),
                Effect::Record(Record::RunFinished(r)) => {
                    Some(format!("end {} {}", r.run_id, r.outcome.as_str()))
                }
                Effect::Record(Record::Edges { edges, .. }) => {
                    Some(format!("edges {}", edges.len()))
                }
                Effect::Start(r) => Some(format!("start {} {}", r.runbook, r.target)),
                Effect::Note(_) => None,
            })
            .collect()
    }

    fn finished(a: &Agent, at: i64, outcome: RunOutcome) -> Input {
        let mut run = a.in_flight().next().expect("a run in flight").clone();
        run.outcome = outcome;
        run.finished_at = Some(t(at));
        Input::RunFinished(run)
    }

    #[test]
    fn a_failed_unit_is_restarted_on_the_event_itself() {
        let mut a = agent(true);
        a.step(Input::Recovered(Recovered::default()), t(0));
        assert!(words(&a.step(unit(0, "active", 0), t(0))).is_empty());
        a.step(connected(), t(1));
        let fx = a.step(unit(100, "failed", 0), t(100));
        assert_eq!(
            words(&fx),
            [
                "INC-1:none->firing",
                "begin R1",
                "start RB-SERVICE-001 demo.service",
                "edges 1"
            ]
        );
        if let Effect::Record(Record::Transition { detected_at, .. }) = &fx[0] {
            assert_eq!(
                *detected_at,
                Some(t(100)),
                "systemd's timestamp of the change"
            );
        }
    }

    #[test]
    fn nothing_is_decided_before_the_initial_state_is_read() {
        let mut a = agent(true);
        a.step(
            Input::Recovered(Recovered {
                open: vec![OpenIncident {
                    id: "INC-old".into(),
                    check: "unit_failed".into(),
                    target: "demo.service".into(),
                    severity: "critical".into(),
                    state: IncidentState::Firing,
                    opened_at: t(0),
                }],
                ..Recovered::default()
            }),
            t(10),
        );
        // the initial read says it is fixed already: no run, then resolution
        assert_eq!(words(&a.step(unit(11, "active", 0), t(11))), ["edges 1"]);
        assert!(words(&a.step(connected(), t(12))).is_empty());
        assert_eq!(a.next_deadline(t(12)), Some(t(11 + 10_000)));
        assert_eq!(
            words(&a.step(Input::Tick, t(11 + 10_000))),
            ["INC-old:firing->resolved"]
        );
        assert_eq!(
            a.next_deadline(t(11 + 10_000)),
            None,
            "idle: nothing to wake for"
        );
    }

    #[test]
    fn no_resolution_while_the_run_is_verifying() {
        let mut a = agent(true);
        a.step(connected(), t(0));
        a.step(unit(0, "failed", 0), t(0));
        // the restart brings the unit back at once; the run still verifies
        a.step(unit(500, "active", 0), t(500));
        assert_eq!(a.next_deadline(t(500)), None, "held by the run in flight");
        assert!(words(&a.step(Input::Tick, t(20_000))).is_empty());
        let fx = a.step(finished(&a, 20_500, RunOutcome::Success), t(20_500));
        assert_eq!(words(&fx), ["end R1 success", "INC-1:firing->resolved"]);
    }

    #[test]
    fn repeated_failures_are_spaced_then_escalated() {
        let mut a = agent(true);
        a.step(connected(), t(0));
        let s = 1000;
        let mut log = Vec::new();
        a.step(unit(0, "failed", 0), t(0));
        // each run ends failed: the next waits for min_interval (5 min), the fourth is refused
        for i in 0..3 {
            let end = i * 300 * s + 15 * s;
            log.extend(words(
                &a.step(finished(&a, end, RunOutcome::Failed), t(end)),
            ));
            let deadline = a.next_deadline(t(end));
            if i < 2 {
                assert_eq!(deadline, Some(t((i + 1) * 300 * s)), "run {i}");
                log.extend(words(&a.step(Input::Tick, deadline.unwrap())));
            } else {
                assert_eq!(deadline, None, "refused at once: nothing to wait for");
            }
        }
        assert_eq!(
            log,
            [
                "end R1 failed",
                "begin R2",
                "start RB-SERVICE-001 demo.service",
                "end R2 failed",
                "begin R3",
                "start RB-SERVICE-001 demo.service",
                "end R3 failed",
                "end R4 rate_limited",
                "INC-1:firing->needs_human",
            ]
        );
        assert!(
            words(&a.step(unit(2000 * s, "failed", 0), t(2000 * s))).is_empty(),
            "never retried"
        );
    }

    #[test]
    fn crash_loop_escalates_at_once_and_unremediable_units_only_record() {
        let mut a = agent(false);
        a.step(connected(), t(0));
        a.step(unit(0, "active", 0), t(0));
        a.step(unit(1000, "activating", 2), t(1000));
        let fx = a.step(unit(2000, "activating", 3), t(2000));
        assert_eq!(
            words(&fx),
            ["INC-1:none->firing", "INC-1:firing->needs_human", "edges 1"]
        );
        let fx = a.step(unit(3000, "failed", 3), t(3000));
        assert_eq!(
            words(&fx),
            ["INC-2:none->firing", "edges 1"],
            "recorded, not restarted"
        );
    }

    #[test]
    fn recovery_closes_incidents_of_units_no_longer_watched() {
        let mut a = agent(true);
        let fx = a.step(
            Input::Recovered(Recovered {
                open: vec![OpenIncident {
                    id: "INC-9".into(),
                    check: "unit_failed".into(),
                    target: "gone.service".into(),
                    severity: "critical".into(),
                    state: IncidentState::NeedsHuman,
                    opened_at: t(0),
                }],
                ..Recovered::default()
            }),
            t(5),
        );
        assert_eq!(words(&fx), ["INC-9:needs_human->resolved"]);
        assert_eq!(a.open_incidents().count(), 0);
    }

    #[test]
    fn silence_and_flapping_are_recorded_once() {
        let mut a = agent(true);
        a.step(connected(), t(0));
        a.step(
            Input::Silences(vec![Silence {
                id: 1,
                target: "demo*".into(),
                until: t(3_600_000),
                reason: "maintenance".into(),
            }]),
            t(0),
        );
        let fx = a.step(unit(0, "failed", 0), t(0));
        assert_eq!(
            words(&fx),
            ["INC-1:none->firing", "end R1 suppressed", "edges 1"]
        );
        assert!(words(&a.step(Input::Tick, t(1000))).is_empty(), "once");
    }

    #[test]
    fn nothing_new_starts_once_stopping() {
        let mut a = agent(true);
        a.step(connected(), t(0));
        a.step(unit(0, "failed", 0), t(0));
        assert!(words(&a.step(Input::Stopping, t(100))).is_empty());
        // the run comes back; the unit's recovery can no longer be seen: no second run
        let fx = a.step(finished(&a, 5_000, RunOutcome::Success), t(5_000));
        assert_eq!(words(&fx), ["end R1 success"]);
        assert_eq!(a.runs_in_flight(), 0);
        assert_eq!(a.next_deadline(t(5_000)), None);
    }

    #[test]
    fn abandoned_runs_are_recorded_interrupted() {
        let mut a = agent(true);
        a.step(connected(), t(0));
        a.step(unit(0, "failed", 0), t(0));
        assert_eq!(
            words(&a.step(Input::Abandon, t(100))),
            ["end R1 interrupted"]
        );
        assert_eq!(a.runs_in_flight(), 0);
    }

    /// A round of samples of `/`, at `secs`.
    fn disks(secs: i64, used_ratio: f64) -> Input {
        let used = (used_ratio * 1e9) as u64;
        let at = t(secs * 1000);
        Input::Disks(DiskEvent {
            at,
            disks: vec![DiskObservation {
                mount: "/".into(),
                device: "8:1".into(),
                fs_type: "ext4".into(),
                source: "/dev/sda1".into(),
                used_bytes: used,
                available_bytes: 1_000_000_000 - used,
                used_ratio,
                inodes_used: None,
                inodes_available: None,
                inodes_used_ratio: None,
                fill_rate_bytes_per_second: None,
                seconds_to_full: None,
                seen_at: at,
            }],
            errors: 0,
        })
    }

    fn notes(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Note(n) => Some(n.message.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_full_disk_is_recorded_not_remediated() {
        let mut a = agent(true);
        a.step(connected(), t(0));
        assert!(words(&a.step(disks(0, 0.95), t(0))).is_empty());
        assert_eq!(a.next_deadline(t(0)), Some(t(60_000)), "the hold ends");
        let fx = a.step(Input::Tick, t(60_000));
        assert_eq!(words(&fx), ["INC-1:none->firing", "edges 1"]);
        if let Effect::Record(Record::Transition { transition, .. }) = &fx[0] {
            assert_eq!(transition.check, "disk_space");
            assert_eq!(transition.target, "/");
            assert_eq!(transition.severity, "warning");
        }
        assert_eq!(
            a.next_deadline(t(60_000)),
            None,
            "idle until the next sample"
        );
        // critical: the same incident, said in the journal once
        a.step(disks(70, 0.99), t(70_000));
        let fx = a.step(Input::Tick, t(130_000));
        assert!(
            words(&fx).is_empty(),
            "no run, no new incident: {:?}",
            words(&fx)
        );
        assert!(notes(&fx)[0].contains("is critical now (the incident opened as warning)"));
        assert!(notes(&a.step(disks(140, 0.99), t(140_000))).is_empty());
        // freed: resolves after the resolve hold
        assert_eq!(words(&a.step(disks(150, 0.5), t(150_000))), ["edges 1"]);
        assert_eq!(
            words(&a.step(Input::Tick, t(160_000))),
            ["INC-1:firing->resolved"]
        );
    }

    /// An agent whose `/` may be freed by RB-DISK-001 (one run an hour).
    fn disk_agent() -> Agent {
        let mut a = agent(false);
        let mut s = a.s.clone();
        s.disks.default.remediate = true;
        s.answers
            .insert("disk_space".into(), Answer::Runbook("RB-DISK-001".into()));
        s.limits.insert(
            "RB-DISK-001".into(),
            Limits {
                max_runs: 1,
                window: Duration::from_secs(3600),
                min_interval: Duration::from_secs(600),
                global_per_hour: 20,
            },
        );
        a = Agent::new(s, Box::new(Counter(0, 0)));
        a.step(Input::Recovered(Recovered::default()), t(0));
        a.step(connected(), t(0));
        a
    }

    #[test]
    fn a_full_remediable_disk_is_freed_and_resolves_from_the_samples() {
        let mut a = disk_agent();
        a.step(disks(0, 0.95), t(0));
        let fx = a.step(Input::Tick, t(60_000));
        assert_eq!(
            words(&fx),
            [
                "INC-1:none->firing",
                "begin R1",
                "start RB-DISK-001 /",
                "edges 1"
            ]
        );
        // no resolution while the run is in flight, even once the disk is freed
        a.step(disks(61, 0.5), t(61_000));
        assert!(words(&a.step(Input::Tick, t(75_000))).is_empty());
        // once the run is back, the samples (below warn_clear for the resolve hold) resolve it
        let fx = a.step(finished(&a, 76_000, RunOutcome::Success), t(76_000));
        assert_eq!(words(&fx), ["end R1 success", "INC-1:firing->resolved"]);
    }

    #[test]
    fn a_partial_run_escalates_at_once_and_is_not_repeated() {
        let mut a = disk_agent();
        a.step(disks(0, 0.95), t(0));
        a.step(Input::Tick, t(60_000));
        let fx = a.step(finished(&a, 70_000, RunOutcome::Partial), t(70_000));
        assert_eq!(words(&fx), ["end R1 partial", "INC-1:firing->needs_human"]);
        assert!(notes(&fx).iter().any(|n| n.contains("a person must look")));
        // later samples, still full: nothing more is started
        for s in [80, 700, 1300] {
            let fx = a.step(disks(s, 0.95), t(s * 1000));
            assert!(words(&fx).iter().all(|w| !w.starts_with("start")), "{fx:?}");
            let fx = a.step(Input::Tick, t(s * 1000 + 1));
            assert!(words(&fx).iter().all(|w| !w.starts_with("start")), "{fx:?}");
        }
    }

    #[test]
    fn a_failed_disk_run_is_refused_a_second_time_within_the_window() {
        let mut a = disk_agent();
        a.step(disks(0, 0.95), t(0));
        a.step(Input::Tick, t(60_000));
        // not escalated as a partial is: the limits decide, and one run an hour is spent
        let fx = a.step(finished(&a, 70_000, RunOutcome::Timeout), t(70_000));
        assert_eq!(
            words(&fx),
            [
                "end R1 timeout",
                "end R2 rate_limited",
                "INC-1:firing->needs_human"
            ]
        );
    }

    #[test]
    fn a_mount_without_remediate_is_not_freed() {
        let mut a = disk_agent();
        let mut s = a.s.clone();
        s.disks.default.remediate = false;
        a = Agent::new(s, Box::new(Counter(0, 0)));
        a.step(Input::Recovered(Recovered::default()), t(0));
        a.step(connected(), t(0));
        a.step(disks(0, 0.95), t(0));
        assert_eq!(
            words(&a.step(Input::Tick, t(60_000))),
            ["INC-1:none->firing", "edges 1"]
        );
    }

    #[test]
    fn mounts_show_their_last_sample_and_level() {
        let mut a = disk_agent();
        assert!(a.mounts().is_empty());
        a.step(disks(0, 0.95), t(0));
        assert_eq!(a.mounts()[0].level, "ok", "not yet held");
        a.step(Input::Tick, t(60_000));
        let m = &a.mounts()[0];
        assert_eq!((m.mount.as_str(), m.level.as_str()), ("/", "warning"));
        assert!(m.remediate);
        assert_eq!(m.used_ratio, 0.95);
    }

    #[test]
    fn summary_line() {
        let mut a = agent(true);
        assert_eq!(
            a.summary(),
            "watching 0 units; 0 open incidents; 0 runbooks running; system bus lost"
        );
        a.step(connected(), t(0));
        a.step(unit(0, "failed", 0), t(0));
        assert_eq!(
            a.summary(),
            "watching 1 units; 1 open incident; 1 runbook running"
        );
    }
}
