//! The running agent: wires watch → decide → act → (prove, report) together.
//!
//! One task owns the decision state (the incident engine, in-flight runs,
//! deferrals); watchers and runbooks talk to it over channels. Every
//! transition and run is written to SQLite (with its evidence event queued in
//! the same transaction) before anything else is done about it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::act::service_restart;
use crate::config::Config;
use crate::decide::incident::{Edge, Engine, EngineConfig, OpenIncident, chrono_dur};
use crate::decide::limits::{self, History, Limits, Silence, Verdict};
use crate::decide::units::{
    CHECK_CRASH_LOOP, CHECK_UNIT_FAILED, CrashLoops, UnitObservation, unit_failed,
};
use crate::events::{
    IncidentState, IncidentTransition, RateLimitDecision, RunOutcome, RunbookRun, StepRecord,
};
use crate::notify;
use crate::prove::{Evidence, WormStatus};
use crate::report::metrics::{IncidentLabels, Metrics, RunLabels, RunbookLabel};
use crate::store::{AgentStatus, EdgeRow, Store, StoreError};
use crate::watch::units::{UnitWatcher, WatchEvent};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

struct InFlight {
    run: RunbookRun,
    cancel: CancellationToken,
}

pub struct Daemon {
    config: Config,
    config_source: String,
    store: Arc<Mutex<Store>>,
    engine: Engine,
    crash_loops: CrashLoops,
    last_obs: HashMap<String, UnitObservation>,
    in_flight: HashMap<String, InFlight>,
    deferred: HashMap<String, DateTime<Utc>>,
    pending_decisions: HashMap<String, Vec<RateLimitDecision>>,
    suppressed_noted: HashSet<String>,
    run_tx: mpsc::Sender<RunbookRun>,
    run_rx: Option<mpsc::Receiver<RunbookRun>>,
    watched_units: usize,
    bus_connected: bool,
    started_at: DateTime<Utc>,
    last_status_line: String,
    metrics: Arc<Metrics>,
    evidence: Evidence,
    evidence_wake: Arc<tokio::sync::Notify>,
    uploads_seen: (u64, u64),
}

impl Daemon {
    pub fn new(config: Config, config_source: String) -> anyhow::Result<Daemon> {
        let state_dir = &config.agent.state_dir;
        std::fs::create_dir_all(state_dir).with_context(|| {
            format!("cannot create the state directory {}", state_dir.display())
        })?;
        let store = Store::open(&config.db_path())?;
        let evidence = Evidence::open(&config.evidence, state_dir, &config.hostname(), VERSION)
            .context("cannot open the evidence spool")?;
        tracing::info!(
            key_id = %evidence.key_id(),
            spool = %evidence.spool_dir().display(),
            "evidence: signing with {}",
            evidence.public_key_openssh()
        );
        let engine = Engine::new(EngineConfig {
            flap_window: config.incidents.flap_window,
            flap_threshold: *config.incidents.flap_threshold.get_ref(),
            resolve_hold: config.incidents.resolve_hold,
        });
        let (run_tx, run_rx) = mpsc::channel(64);
        Ok(Daemon {
            config,
            config_source,
            store: Arc::new(Mutex::new(store)),
            engine,
            crash_loops: CrashLoops::default(),
            last_obs: HashMap::new(),
            in_flight: HashMap::new(),
            deferred: HashMap::new(),
            pending_decisions: HashMap::new(),
            suppressed_noted: HashSet::new(),
            run_tx,
            run_rx: Some(run_rx),
            watched_units: 0,
            bus_connected: false,
            started_at: Utc::now(),
            last_status_line: String::new(),
            metrics: Metrics::new(),
            evidence,
            evidence_wake: Arc::new(tokio::sync::Notify::new()),
            uploads_seen: (0, 0),
        })
    }

    /// Runs the store operation off the async runtime (SQLite fsyncs).
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .expect("store task panicked")
    }

    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        // Recover: runs a previous process left in flight, and open incidents.
        let now = Utc::now();
        let interrupted = self.db(move |s| s.close_interrupted_runs(now)).await?;
        for run in &interrupted {
            self.count_run(run);
            tracing::warn!(
                incident_id = %run.incident_id, runbook = %run.runbook, unit = %run.target,
                run_id = %run.run_id,
                "a runbook was in flight when the agent last stopped: recorded as interrupted, not repeated blindly"
            );
        }
        let open = self.db(|s| s.open_incidents()).await?;
        for inc in open.into_iter().map(|r| OpenIncident {
            id: r.id,
            check: r.check,
            target: r.target,
            severity: r.severity,
            state: r.state,
            opened_at: r.opened_at,
        }) {
            let unit_check = inc.check == CHECK_UNIT_FAILED || inc.check == CHECK_CRASH_LOOP;
            if unit_check && self.config.unit_rule(&inc.target).is_none() {
                // The configuration no longer watches this unit: nothing would ever
                // observe it again, so the incident is closed now, saying why, rather
                // than left open for ever.
                let (check, target) = (inc.check.clone(), inc.target.clone());
                self.engine.restore(inc);
                if let Some(t) = self.engine.retire(
                    &check,
                    &target,
                    now,
                    "the unit is no longer watched (the configuration changed); closed without remediation",
                ) {
                    self.record_transition(t, None).await?;
                }
                continue;
            }
            tracing::info!(incident_id = %inc.id, state = inc.state.as_str(), unit = %inc.target,
                "incident still open from before the restart");
            self.engine.restore(inc);
        }
        // Flap detection carries on where it stopped: the state changes still in
        // the window come back from SQLite.
        let since = now - chrono_dur(self.config.incidents.flap_window);
        for e in self.db(move |s| s.edges_since(since)).await? {
            self.engine.restore_edge(Edge {
                check: e.check,
                target: e.target,
                at: e.at,
            });
        }
        self.write_status("starting").await;

        let (watch_tx, mut watch_rx) = mpsc::channel(4096);
        let watcher = UnitWatcher::new(&self.config, watch_tx);
        let tracker = tokio_util::task::TaskTracker::new();
        let watch_cancel = cancel.child_token();
        tracker.spawn(watcher.run(watch_cancel.clone()));
        // Evidence: the sealer drains the outbox into signed bundles; the uploader
        // drains the spool into the bucket. They stop last, after runs are recorded.
        let evidence_cancel = CancellationToken::new();
        tracker.spawn(seal_outbox(
            self.store.clone(),
            self.evidence.clone(),
            self.evidence_wake.clone(),
            evidence_cancel.clone(),
        ));
        if let Some(s3) = self.config.evidence.s3.clone() {
            tracker.spawn(supervise_upload(
                self.evidence.clone(),
                s3,
                evidence_cancel.clone(),
            ));
        } else {
            tracing::info!("evidence: no [evidence.s3]; bundles stay in the local spool");
        }
        if let Some(addr) = self.config.metrics_addr() {
            tracker.spawn(crate::report::metrics::serve(
                self.metrics.clone(),
                addr,
                watch_cancel.clone(),
            ));
        }
        self.update_open_gauges();

        let mut run_rx = self.run_rx.take().expect("run receiver");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watchdog = notify::watchdog_interval();
        let mut last_ping = tokio::time::Instant::now();
        let mut last_heartbeat = tokio::time::Instant::now();
        let mut ready = false;

        let mut fatal: Option<anyhow::Error> = None;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                ev = watch_rx.recv() => match ev {
                    Some(WatchEvent::Unit(obs)) => self.on_unit(obs).await?,
                    Some(WatchEvent::Connected { units }) => {
                        self.watched_units = units;
                        self.bus_connected = true;
                        self.metrics.watched_units.set(units as i64);
                        self.metrics.bus_connected.set(1);
                        if !ready {
                            ready = true;
                            let line = self.status_line();
                            notify::ready(&line);
                            tracing::info!(units, dry_run = self.config.agent.dry_run, "msp-agent ready");
                        }
                        self.write_status("running").await;
                    }
                    Some(WatchEvent::Tracking { units }) => {
                        self.watched_units = units;
                        self.metrics.watched_units.set(units as i64);
                    }
                    Some(WatchEvent::Disconnected { error }) => {
                        self.bus_connected = false;
                        self.metrics.bus_connected.set(0);
                        self.metrics.bus_reconnects.inc();
                        notify::status(&format!("system bus lost ({error}); reconnecting"));
                        self.write_status("running").await;
                    }
                    // The watcher ends with the shutdown token; otherwise it is a fault,
                    // and the runs in flight are still drained and recorded below.
                    None => {
                        if !cancel.is_cancelled() {
                            fatal = Some(anyhow::anyhow!("the unit watcher stopped"));
                        }
                        break;
                    }
                },
                Some(run) = run_rx.recv() => self.on_run_done(run).await?,
                _ = tick.tick() => {
                    self.on_tick().await?;
                    if let Some(interval) = watchdog
                        && last_ping.elapsed() >= interval {
                            notify::watchdog();
                            last_ping = tokio::time::Instant::now();
                        }
                    if last_heartbeat.elapsed() >= Duration::from_secs(5) {
                        self.write_status("running").await;
                        last_heartbeat = tokio::time::Instant::now();
                    }
                    let line = self.status_line();
                    if ready && line != self.last_status_line {
                        notify::status(&line);
                        self.last_status_line = line;
                    }
                }
            }
        }

        // Shutdown: let runbooks in flight finish within the grace period, then
        // interrupt them; either way each one ends up recorded.
        watch_cancel.cancel();
        notify::stopping("stopping: finishing runbooks in flight");
        let grace = self.config.agent.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let mut cancelled = false;
        while !self.in_flight.is_empty() {
            tracing::info!(
                runs = self.in_flight.len(),
                "waiting for runbooks in flight before stopping"
            );
            let until = if cancelled {
                deadline + Duration::from_secs(5)
            } else {
                deadline
            };
            match tokio::time::timeout_at(until, run_rx.recv()).await {
                Ok(Some(run)) => self.on_run_done(run).await?,
                Ok(None) => break,
                Err(_) if !cancelled => {
                    for f in self.in_flight.values() {
                        f.cancel.cancel();
                    }
                    cancelled = true;
                }
                Err(_) => break,
            }
        }
        let left: Vec<RunbookRun> = self.in_flight.drain().map(|(_, f)| f.run).collect();
        for mut run in left {
            run.outcome = RunOutcome::Interrupted;
            run.finished_at = Some(Utc::now());
            let r = run.clone();
            self.db(move |s| s.finish_run(&r)).await?;
            self.evidence_wake.notify_one();
        }
        evidence_cancel.cancel();
        tracker.close();
        tracker.wait().await;
        self.write_status("stopped").await;
        match fatal {
            Some(e) => Err(e),
            None => {
                tracing::info!("msp-agent stopped");
                Ok(())
            }
        }
    }

    fn status_line(&self) -> String {
        let open = self.engine.open_incidents().count();
        format!(
            "watching {} units; {} open incident{}; {} runbook{} running{}{}",
            self.watched_units,
            open,
            if open == 1 { "" } else { "s" },
            self.in_flight.len(),
            if self.in_flight.len() == 1 { "" } else { "s" },
            if self.config.agent.dry_run {
                "; dry run"
            } else {
                ""
            },
            if self.bus_connected {
                ""
            } else {
                "; system bus lost"
            },
        )
    }

    async fn write_status(&mut self, state: &str) {
        let status = AgentStatus {
            state: state.to_string(),
            pid: std::process::id(),
            version: VERSION.to_string(),
            started_at: Some(self.started_at),
            heartbeat_at: Some(Utc::now()),
            dry_run: self.config.agent.dry_run,
            watched_units: self.watched_units,
            bus_connected: self.bus_connected,
            config: self.config_source.clone(),
            hostname: self.config.hostname(),
            runbooks_in_flight: self.in_flight.len(),
            summary: self.status_line(),
            evidence: serde_json::to_value(self.evidence.stats()).ok(),
        };
        if let Err(e) = self.db(move |s| s.set_status(&status)).await {
            tracing::warn!(error = %e, "cannot write the agent status");
        }
        if let Ok(n) = self.db(|s| s.outbox_len()).await {
            self.metrics.evidence_pending.set(n as i64);
        }
        let stats = self.evidence.stats();
        self.metrics
            .evidence_spool_depth
            .set(stats.spool_depth as i64);
        self.metrics.evidence_last_seq.set(stats.last_seq as i64);
        self.metrics
            .evidence_worm
            .set(i64::from(stats.worm == WormStatus::Enabled));
        let (up, fail) = self.uploads_seen;
        self.metrics
            .evidence_uploaded
            .inc_by(stats.uploaded.saturating_sub(up));
        self.metrics
            .evidence_upload_failures
            .inc_by(stats.upload_failures.saturating_sub(fail));
        self.uploads_seen = (stats.uploaded, stats.upload_failures);
    }

    fn update_open_gauges(&self) {
        let count = |st: IncidentState| {
            self.engine
                .open_incidents()
                .filter(|i| i.state == st)
                .count() as i64
        };
        self.metrics.set_open(&[
            ("firing", count(IncidentState::Firing)),
            ("flapping", count(IncidentState::Flapping)),
            ("needs_human", count(IncidentState::NeedsHuman)),
        ]);
    }

    fn count_run(&self, run: &RunbookRun) {
        self.metrics
            .remediations
            .get_or_create(&RunLabels {
                runbook: run.runbook.clone(),
                outcome: run.outcome.as_str().to_string(),
            })
            .inc();
        if let Some(f) = run.finished_at
            && matches!(
                run.outcome,
                RunOutcome::Success | RunOutcome::Failed | RunOutcome::Interrupted
            )
        {
            self.metrics
                .remediation_duration
                .get_or_create(&RunbookLabel {
                    runbook: run.runbook.clone(),
                })
                .observe((f - run.started_at).num_milliseconds() as f64 / 1000.0);
        }
    }

    /// A run record of RB-SERVICE-001 for this incident, starting now.
    fn new_run(
        &self,
        incident_id: &str,
        target: &str,
        now: DateTime<Utc>,
        outcome: RunOutcome,
    ) -> RunbookRun {
        RunbookRun {
            run_id: uuid::Uuid::now_v7().to_string(),
            incident_id: incident_id.to_string(),
            runbook: service_restart::RUNBOOK_ID.into(),
            target: target.to_string(),
            dry_run: self.config.agent.dry_run,
            started_at: now,
            finished_at: None,
            outcome,
            steps: vec![],
            rate_limit: vec![],
        }
    }

    fn new_incident_id() -> String {
        format!("INC-{}", uuid::Uuid::now_v7().simple())
    }

    async fn on_unit(&mut self, obs: UnitObservation) -> anyhow::Result<()> {
        let Some(rule) = self.config.unit_rule(&obs.unit).cloned() else {
            return Ok(());
        };
        self.last_obs.insert(obs.unit.clone(), obs.clone());
        let mut cond = unit_failed(&obs, rule.expect_active);
        // Changes our own runbook causes are not flapping.
        cond.induced = self.in_flight.contains_key(&obs.unit);
        let mut transitions = self.engine.observe(cond, &mut Self::new_incident_id);
        let crash = self.crash_loops.observe(
            &obs,
            *self.config.incidents.crash_loop_restarts.get_ref(),
            self.config.incidents.crash_loop_window,
        );
        transitions.extend(self.engine.observe(crash, &mut Self::new_incident_id));
        self.save_edges().await?;
        for t in transitions {
            self.record_transition(t, obs.state_change).await?;
        }
        Ok(())
    }

    /// Persists the state changes the engine counted towards flapping.
    async fn save_edges(&mut self) -> anyhow::Result<()> {
        let edges: Vec<EdgeRow> = self
            .engine
            .take_new_edges()
            .into_iter()
            .map(|e| EdgeRow {
                check: e.check,
                target: e.target,
                at: e.at,
            })
            .collect();
        if edges.is_empty() {
            return Ok(());
        }
        let keep_since = Utc::now() - chrono_dur(self.config.incidents.flap_window);
        self.db(move |s| s.record_edges(&edges, keep_since)).await?;
        Ok(())
    }

    async fn record_transition(
        &mut self,
        t: IncidentTransition,
        detected_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        let span = tracing::info_span!("incident", incident_id = %t.incident_id, unit = %t.target);
        let r = t.clone();
        self.db(move |s| s.apply_transition(&r, detected_at))
            .await?;
        self.evidence_wake.notify_one();
        span.in_scope(|| {
            tracing::info!(
                check = %t.check,
                from = t.from.map(|f| f.as_str()).unwrap_or("none"),
                to = t.to.as_str(),
                "incident {} {}: {}",
                t.incident_id,
                t.to.as_str(),
                t.reason
            )
        });
        if t.from.is_none() {
            self.metrics
                .incidents_opened
                .get_or_create(&IncidentLabels {
                    check: t.check.clone(),
                    severity: t.severity.clone(),
                })
                .inc();
        }
        self.update_open_gauges();
        if t.to == IncidentState::Resolved {
            self.deferred.remove(&t.incident_id);
            self.pending_decisions.remove(&t.incident_id);
            self.suppressed_noted.remove(&t.incident_id);
        }
        if t.from.is_none() && t.check == CHECK_CRASH_LOOP {
            // systemd is already restarting it; another restart would not help.
            if let Some(e) = self.engine.escalate(
                &t.incident_id,
                t.at,
                "crash loop under systemd's own Restart=: no runbook applies, a person must look",
            ) {
                Box::pin(self.record_transition(e, None)).await?;
            }
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> anyhow::Result<()> {
        let now = Utc::now();
        for t in self.engine.tick(now) {
            self.record_transition(t, None).await?;
        }
        let conds = self.crash_loops.tick(
            now,
            *self.config.incidents.crash_loop_restarts.get_ref(),
            self.config.incidents.crash_loop_window,
            &self.last_obs,
        );
        for c in conds {
            for t in self.engine.observe(c, &mut Self::new_incident_id) {
                self.record_transition(t, None).await?;
            }
        }
        self.save_edges().await?;
        // Decide nothing before the initial state is read (after a start or a
        // reconnect): a restored incident may already be fixed.
        if !self.bus_connected {
            return Ok(());
        }
        let open: Vec<String> = self
            .engine
            .open_incidents()
            .filter(|i| i.check == CHECK_UNIT_FAILED)
            .map(|i| i.id.clone())
            .collect();
        for id in open {
            self.consider(&id, now).await?;
        }
        Ok(())
    }

    /// Decides whether an open incident gets a runbook run now.
    async fn consider(&mut self, incident_id: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
        let Some(inc) = self.engine.find(incident_id).cloned() else {
            return Ok(());
        };
        let remediate = self
            .config
            .unit_rule(&inc.target)
            .is_some_and(|r| r.remediate);
        if !remediate
            || self.in_flight.contains_key(&inc.target)
            || !self.engine.is_failing(&inc.check, &inc.target)
        {
            return Ok(());
        }
        let span = tracing::info_span!("incident", incident_id = %inc.id, unit = %inc.target,
            runbook = service_restart::RUNBOOK_ID);
        match inc.state {
            IncidentState::Firing => {}
            IncidentState::Flapping => {
                let detail = serde_json::json!({"reason": "the unit is flapping; remediation is suppressed"});
                return self
                    .note_suppressed(&inc.id, &inc.target, now, detail)
                    .instrument(span)
                    .await;
            }
            IncidentState::NeedsHuman | IncidentState::Resolved => return Ok(()),
        }
        let silences: Vec<Silence> = self
            .db(move |s| s.active_silences(now))
            .await?
            .into_iter()
            .map(|s| Silence {
                id: s.id,
                target: s.target,
                until: s.until,
                reason: s.reason,
            })
            .collect();
        if let Some(s) = limits::active_silence(&silences, &inc.target, now) {
            let detail = serde_json::json!({
                "reason": "silenced", "silence_id": s.id, "silence_target": s.target,
                "until": s.until, "silence_reason": s.reason,
            });
            return self
                .note_suppressed(&inc.id, &inc.target, now, detail)
                .instrument(span)
                .await;
        }
        if self.deferred.get(&inc.id).is_some_and(|until| *until > now) {
            return Ok(());
        }
        let sr = &self.config.runbooks.service_restart;
        let lim = Limits {
            max_runs: *sr.max_runs.get_ref(),
            window: sr.window,
            min_interval: sr.min_interval,
            global_per_hour: *self.config.limits.global_per_hour.get_ref(),
        };
        let (target, since) = (inc.target.clone(), now - chrono_dur(sr.window));
        let hour_ago = now - chrono::Duration::hours(1);
        let history = self
            .db(move |s| {
                Ok(History {
                    target_starts: s.run_starts(service_restart::RUNBOOK_ID, &target, since)?,
                    global_last_hour: s.runs_since(hour_ago)?,
                })
            })
            .await?;
        let (verdict, decision) = limits::decide(
            &lim,
            &history,
            service_restart::RUNBOOK_ID,
            &inc.target,
            now,
        );
        let _enter = span.enter();
        tracing::info!(
            allowed = decision.allowed,
            rule = %decision.rule,
            runs_in_window = decision.runs_in_window,
            "rate limit decision for {}: {}",
            inc.target,
            decision.rule
        );
        drop(_enter);
        let mut decisions = self.pending_decisions.remove(&inc.id).unwrap_or_default();
        decisions.push(decision.clone());
        match verdict {
            Verdict::Allow => {
                self.deferred.remove(&inc.id);
                self.start_run(&inc.id, &inc.target, now, decisions, span)
                    .await?;
            }
            Verdict::Defer(until) => {
                self.deferred.insert(inc.id.clone(), until);
                self.pending_decisions.insert(inc.id.clone(), decisions);
            }
            Verdict::Escalate => {
                let run = RunbookRun {
                    finished_at: Some(now),
                    rate_limit: decisions,
                    ..self.new_run(&inc.id, &inc.target, now, RunOutcome::RateLimited)
                };
                self.count_run(&run);
                self.db(move |s| s.finish_run(&run)).await?;
                self.evidence_wake.notify_one();
                let reason = format!(
                    "rate limit `{}` refused {} on {} ({} runs in {}s, global {} of {} per hour): a person must look",
                    decision.rule,
                    service_restart::RUNBOOK_ID,
                    inc.target,
                    decision.runs_in_window,
                    decision.window_secs,
                    decision.global_runs_last_hour,
                    decision.global_budget
                );
                span.in_scope(|| tracing::warn!("{reason}"));
                if let Some(t) = self.engine.escalate(&inc.id, now, &reason) {
                    self.record_transition(t, None).await?;
                }
            }
        }
        Ok(())
    }

    /// Records once per incident that remediation was held back, and why.
    async fn note_suppressed(
        &mut self,
        incident_id: &str,
        target: &str,
        now: DateTime<Utc>,
        detail: serde_json::Value,
    ) -> anyhow::Result<()> {
        if !self.suppressed_noted.insert(incident_id.to_string()) {
            return Ok(());
        }
        tracing::warn!(detail = %detail, "remediation of {target} suppressed");
        let run = RunbookRun {
            finished_at: Some(now),
            steps: vec![StepRecord {
                name: "check_suppression".into(),
                started_at: now,
                duration_ms: 0,
                result: "skipped".into(),
                detail,
            }],
            ..self.new_run(incident_id, target, now, RunOutcome::Suppressed)
        };
        self.count_run(&run);
        self.db(move |s| s.finish_run(&run)).await?;
        self.evidence_wake.notify_one();
        Ok(())
    }

    async fn start_run(
        &mut self,
        incident_id: &str,
        target: &str,
        now: DateTime<Utc>,
        decisions: Vec<RateLimitDecision>,
        span: tracing::Span,
    ) -> anyhow::Result<()> {
        // Recorded as interrupted unless the run reports back.
        let run = RunbookRun {
            rate_limit: decisions,
            ..self.new_run(incident_id, target, now, RunOutcome::Interrupted)
        };
        // Written before the first step: a crash from here on is visible and counted.
        let r = run.clone();
        self.db(move |s| s.begin_run(&r)).await?;
        span.in_scope(|| {
            tracing::info!(run_id = %run.run_id, dry_run = run.dry_run,
            "starting {} on {}", run.runbook, run.target)
        });
        let cancel = CancellationToken::new();
        let params = service_restart::Params {
            job_timeout: self.config.runbooks.service_restart.job_timeout,
            settle: self.config.runbooks.service_restart.settle,
            dry_run: self.config.agent.dry_run,
        };
        let tx = self.run_tx.clone();
        let mut task_run = run.clone();
        let task_cancel = cancel.clone();
        tokio::spawn(
            async move {
                let (outcome, steps) =
                    service_restart::run(&task_run.target, &params, &task_cancel).await;
                task_run.outcome = outcome;
                task_run.steps = steps;
                task_run.finished_at = Some(Utc::now());
                let _ = tx.send(task_run).await;
            }
            .instrument(span),
        );
        self.in_flight
            .insert(target.to_string(), InFlight { run, cancel });
        Ok(())
    }

    async fn on_run_done(&mut self, run: RunbookRun) -> anyhow::Result<()> {
        self.in_flight.remove(&run.target);
        self.count_run(&run);
        let r = run.clone();
        self.db(move |s| s.finish_run(&r)).await?;
        self.evidence_wake.notify_one();
        let span = tracing::info_span!("incident", incident_id = %run.incident_id, unit = %run.target,
            runbook = %run.runbook);
        let _e = span.enter();
        let took = run
            .finished_at
            .map(|f| (f - run.started_at).num_milliseconds())
            .unwrap_or(0);
        match run.outcome {
            RunOutcome::Success => tracing::info!(run_id = %run.run_id, duration_ms = took,
                "{} on {} succeeded: the unit stayed active", run.runbook, run.target),
            RunOutcome::DryRun => tracing::info!(run_id = %run.run_id,
                "dry run: {} on {} would have run", run.runbook, run.target),
            other => {
                tracing::warn!(run_id = %run.run_id, duration_ms = took, outcome = other.as_str(),
                steps = %serde_json::to_string(&run.steps).unwrap_or_default(),
                "{} on {} ended {}", run.runbook, run.target, other.as_str())
            }
        }
        Ok(())
    }
}

/// Seals outbox events into evidence bundles, in order, until `cancel`; then
/// drains once more so that everything recorded before the stop is sealed.
/// A row leaves the outbox only after its bundle is durable, so a crash in
/// between seals that event again at the next start (at least once, never lost).
async fn seal_outbox(
    store: Arc<Mutex<Store>>,
    evidence: Evidence,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = wake.notified() => false,
            _ = tokio::time::sleep(Duration::from_secs(if failing { 5 } else { 1 })) => false,
        };
        let (store2, ev2) = (store.clone(), evidence.clone());
        let result = tokio::task::spawn_blocking(move || drain_outbox(&store2, &ev2))
            .await
            .unwrap_or_else(|e| Err(format!("sealer panicked: {e}")));
        match result {
            Ok(_) => {
                if failing {
                    tracing::info!("evidence sealing works again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "cannot seal evidence; events stay queued in the state database and are retried");
                }
                failing = true;
            }
        }
        if stopping {
            return;
        }
    }
}

fn drain_outbox(store: &Mutex<Store>, evidence: &Evidence) -> Result<usize, String> {
    let mut sealed = 0;
    loop {
        let rows = store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .outbox(256)
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(sealed);
        }
        for (id, event) in rows {
            let s = evidence.record(&event).map_err(|e| e.to_string())?;
            store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .outbox_done(id)
                .map_err(|e| e.to_string())?;
            tracing::debug!(incident_id = %s.incident_id, seq = s.seq, "evidence sealed");
            sealed += 1;
        }
    }
}

/// Runs the uploader and restarts it (with backoff) if it dies: a crash there must
/// cost a delay in reaching the bucket, never the bundles (they stay in the spool).
async fn supervise_upload(
    evidence: Evidence,
    s3: crate::prove::S3Config,
    cancel: CancellationToken,
) {
    let mut delay = Duration::from_secs(5);
    loop {
        let task = tokio::spawn(crate::prove::upload::run(
            evidence.clone(),
            s3.clone(),
            cancel.clone(),
        ));
        match task.await {
            Ok(()) => return,
            Err(e) => {
                let why = if e.is_panic() {
                    let p = e.into_panic();
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".to_string())
                } else {
                    e.to_string()
                };
                tracing::error!(
                    error = %why,
                    retry_in_secs = delay.as_secs(),
                    "the evidence uploader stopped; bundles stay in the spool until it runs again"
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(300));
    }
}
