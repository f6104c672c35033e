//! The runtime: a thin loop around the pure core (`decide::agent::Agent`).
//!
//! It turns what happens (a source's event, a runbook coming back, a deadline)
//! into an input, hands it to `Agent::step` with the instant, and carries out
//! the effects in phase order: every record of the step in one SQLite
//! transaction (with the evidence events queued in the same transaction, and a
//! source's checkpoint beside them), then the runbook starts, then the log
//! lines. "Written to SQLite before anything is done about it" is thus a
//! property of this loop, not of call order in the policy. Between inputs it
//! sleeps until the core's next deadline, the watchdog or the heartbeat.
//!
//! Beside the loop run the sources' tasks, the evidence sealer (outbox → spool)
//! and the uploader (spool → bucket), and the metrics endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::act::Registry;
use crate::config::Config;
use crate::decide::agent::{self, Agent, Effect, Input, Level, Note, Recovered, RunStart, UuidIds};
use crate::decide::incident::{Edge, OpenIncident, chrono_dur};
use crate::decide::limits::Silence;
use crate::events::{IncidentState, RunOutcome, RunbookRun, StepRecord};
use crate::notify;
use crate::prove::{Evidence, S3Config, WormStatus};
use crate::report::metrics::{IncidentLabels, Metrics, RunLabels, RunbookLabel};
use crate::store::{self, AgentStatus, Batch, MountStatus, Store, StoreError};
use crate::watch::Checkpoint;
use crate::watch::disks::{DiskEvent, DiskWatchSettings, DiskWatcher};
use crate::watch::units::{UnitEvent, UnitWatchSettings, UnitWatcher};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often the status row is rewritten (the CLI calls a daemon whose
/// heartbeat is older than 30 s not running).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The shortest sleep between two deadline ticks: a guard against a deadline
/// that stays due, which would otherwise spin.
const MIN_TICK: Duration = Duration::from_millis(10);

/// What the runtime keeps of the configuration: the settings it hands out.
struct RuntimeSettings {
    source: String,
    hostname: String,
    dry_run: bool,
    shutdown_grace: Duration,
    flap_window: Duration,
    units: UnitWatchSettings,
    disks: DiskWatchSettings,
    s3: Option<S3Config>,
    metrics_addr: Option<std::net::SocketAddr>,
}

pub struct Daemon {
    settings: RuntimeSettings,
    agent: Agent,
    registry: Registry,
    store: Arc<Mutex<Store>>,
    evidence: Evidence,
    evidence_wake: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    run_tx: mpsc::Sender<RunbookRun>,
    run_rx: Option<mpsc::Receiver<RunbookRun>>,
    cancels: HashMap<String, CancellationToken>,
    started_at: DateTime<Utc>,
    last_status_line: String,
    uploads_seen: (u64, u64),
    silences_version: Option<i64>,
    ready: bool,
}

impl Daemon {
    pub fn new(config: Config, config_source: String) -> anyhow::Result<Daemon> {
        let state_dir = &config.agent.state_dir;
        std::fs::create_dir_all(state_dir).with_context(|| {
            format!("cannot create the state directory {}", state_dir.display())
        })?;
        let store = Store::open(&config.db_path())?;
        let hostname = config.hostname();
        let evidence = Evidence::open(&config.evidence, state_dir, &hostname, VERSION)
            .context("cannot open the evidence spool")?;
        tracing::info!(
            key_id = %evidence.key_id(),
            spool = %evidence.spool_dir().display(),
            "evidence: signing with {}",
            evidence.public_key_openssh()
        );
        let (run_tx, run_rx) = mpsc::channel(64);
        Ok(Daemon {
            settings: RuntimeSettings {
                source: config_source,
                hostname,
                dry_run: config.agent.dry_run,
                shutdown_grace: config.agent.shutdown_grace,
                flap_window: config.incidents.flap_window,
                units: config.unit_watch(),
                disks: config.disk_watch(),
                s3: config.evidence.s3.clone(),
                metrics_addr: config.metrics_addr(),
            },
            agent: Agent::new(config.agent_settings(), Box::new(UuidIds)),
            registry: config.registry(),
            store: Arc::new(Mutex::new(store)),
            evidence,
            evidence_wake: Arc::new(tokio::sync::Notify::new()),
            metrics: Metrics::new(),
            run_tx,
            run_rx: Some(run_rx),
            cancels: HashMap::new(),
            started_at: Utc::now(),
            last_status_line: String::new(),
            uploads_seen: (0, 0),
            silences_version: None,
            ready: false,
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
        self.recover().await?;
        self.write_status("starting").await;

        let tracker = tokio_util::task::TaskTracker::new();
        let sources_cancel = cancel.child_token();
        // Sources: one task each, one line each.
        let (units_tx, mut units_rx) = mpsc::channel(4096);
        tracker.spawn(
            UnitWatcher::new(self.settings.units.clone(), units_tx).run(sources_cancel.clone()),
        );
        let (disks_tx, mut disks_rx) = mpsc::channel(16);
        tracker.spawn(
            DiskWatcher::new(self.settings.disks.clone(), disks_tx).run(sources_cancel.clone()),
        );
        // Evidence: the sealer drains the outbox into signed bundles; the uploader
        // drains the spool into the bucket. They stop last, after runs are recorded.
        let evidence_cancel = CancellationToken::new();
        tracker.spawn(seal_outbox(
            self.store.clone(),
            self.evidence.clone(),
            self.evidence_wake.clone(),
            evidence_cancel.clone(),
        ));
        if let Some(s3) = self.settings.s3.clone() {
            tracker.spawn(supervise_upload(
                self.evidence.clone(),
                s3,
                evidence_cancel.clone(),
            ));
        } else {
            tracing::info!("evidence: no [evidence.s3]; bundles stay in the local spool");
        }
        if let Some(addr) = self.settings.metrics_addr {
            tracker.spawn(crate::report::metrics::serve(
                self.metrics.clone(),
                addr,
                sources_cancel.clone(),
            ));
        }
        self.update_open_gauges();

        let mut run_rx = self.run_rx.take().expect("run receiver");
        let watchdog = notify::watchdog_interval();
        let mut next_ping = watchdog.map(|w| Instant::now() + w);
        let mut next_heartbeat = Instant::now() + HEARTBEAT;
        let mut last_tick = Instant::now() - MIN_TICK;
        let mut fatal: Option<anyhow::Error> = None;
        loop {
            let now = Utc::now();
            let deadline = self.agent.next_deadline(now).map(|d| {
                let wait = (d - now).to_std().unwrap_or(Duration::ZERO);
                (Instant::now() + wait).max(last_tick + MIN_TICK)
            });
            let wake = [Some(next_heartbeat), next_ping, deadline]
                .into_iter()
                .flatten()
                .min()
                .expect("the heartbeat is always set");
            let input = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                ev = units_rx.recv() => match ev {
                    Some(ev) => {
                        self.on_units_event(&ev);
                        // The units source has no position to resume from.
                        Some((Input::Units(ev), None))
                    }
                    // The watcher ends with the stop token; otherwise it is a fault,
                    // and the runs in flight are still drained and recorded below.
                    None => {
                        fatal = Some(anyhow::anyhow!("the unit watcher stopped"));
                        break;
                    }
                },
                // The disks source ends early only when no disk is watched.
                Some(ev) = disks_rx.recv() => {
                    self.on_disks_event(&ev);
                    Some((Input::Disks(ev), None))
                }
                Some(run) = run_rx.recv() => {
                    self.cancels.remove(&run.run_id);
                    Some((Input::RunFinished(run), None))
                }
                _ = tokio::time::sleep_until(wake) => {
                    let at = Instant::now();
                    if next_ping.is_some_and(|p| at >= p) {
                        notify::watchdog();
                        next_ping = watchdog.map(|w| at + w);
                    }
                    if at >= next_heartbeat {
                        self.write_status("running").await;
                        next_heartbeat = at + HEARTBEAT;
                    }
                    deadline.filter(|d| at >= *d).map(|_| {
                        last_tick = at;
                        (Input::Tick, None)
                    })
                }
            };
            if let Some((input, checkpoint)) = input {
                let connected = matches!(input, Input::Units(UnitEvent::Connected { .. }));
                self.apply_from(input, checkpoint).await?;
                if connected {
                    if !self.ready {
                        // READY only once the initial state is read and decided on.
                        self.ready = true;
                        let line = self.agent.summary();
                        notify::ready(&line);
                        self.last_status_line = line;
                        tracing::info!(
                            units = self.agent.watched_units(),
                            dry_run = self.settings.dry_run,
                            "msp-agent ready"
                        );
                    }
                    self.write_status("running").await;
                }
            }
            let line = self.agent.summary();
            if self.ready && line != self.last_status_line {
                notify::status(&line);
                self.last_status_line = line;
            }
        }

        // Shutdown: let runbooks in flight finish within the grace period, then
        // interrupt them; either way each one ends up recorded.
        sources_cancel.cancel();
        self.apply(Input::Stopping).await?;
        notify::stopping("stopping: finishing runbooks in flight");
        let deadline = Instant::now() + self.settings.shutdown_grace;
        let mut cancelled = false;
        while self.agent.runs_in_flight() > 0 {
            tracing::info!(
                runs = self.agent.runs_in_flight(),
                "waiting for runbooks in flight before stopping"
            );
            let until = if cancelled {
                deadline + Duration::from_secs(5)
            } else {
                deadline
            };
            match tokio::time::timeout_at(until, run_rx.recv()).await {
                Ok(Some(run)) => self.apply(Input::RunFinished(run)).await?,
                Ok(None) => break,
                Err(_) if !cancelled => {
                    for c in self.cancels.values() {
                        c.cancel();
                    }
                    cancelled = true;
                }
                Err(_) => break,
            }
        }
        self.apply(Input::Abandon).await?;
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

    /// The first step: what a previous process left in the store.
    async fn recover(&mut self) -> anyhow::Result<()> {
        let now = Utc::now();
        let flap_since = now - chrono_dur(self.settings.flap_window);
        let history_since = now - chrono_dur(self.agent.history_horizon());
        let (recovered, version) = self
            .db(move |s| {
                let interrupted = s.close_interrupted_runs(now)?;
                let open = s.open_incidents()?;
                let edges = s.edges_since(flap_since)?;
                let history = s.run_history(history_since)?;
                let version = s.data_version()?;
                let silences = s.active_silences(now)?;
                Ok((
                    Recovered {
                        interrupted,
                        open: open.into_iter().map(open_incident).collect(),
                        edges: edges.into_iter().map(edge).collect(),
                        history: history
                            .into_iter()
                            .map(|r| RunStart {
                                runbook: r.runbook,
                                target: r.target,
                                at: r.started_at,
                            })
                            .collect(),
                        silences: silences.into_iter().map(silence).collect(),
                    },
                    version,
                ))
            })
            .await?;
        self.silences_version = Some(version);
        for run in &recovered.interrupted {
            self.count_run(run);
        }
        self.apply(Input::Recovered(recovered)).await
    }

    /// What the runtime itself makes of a units event (metrics, READY).
    fn on_units_event(&mut self, ev: &UnitEvent) {
        match ev {
            UnitEvent::Connected { units } => {
                self.metrics.watched_units.set(*units as i64);
                self.metrics.bus_connected.set(1);
            }
            UnitEvent::Tracking { units } => {
                self.metrics.watched_units.set(*units as i64);
            }
            UnitEvent::Disconnected { error } => {
                self.metrics.bus_connected.set(0);
                self.metrics.bus_reconnects.inc();
                notify::status(&format!("system bus lost ({error}); reconnecting"));
            }
            UnitEvent::Unit(_) => {}
        }
    }

    /// The disk metrics of a round of samples.
    fn on_disks_event(&mut self, ev: &DiskEvent) {
        self.metrics.set_disks(&ev.disks);
        self.metrics.disk_read_errors.inc_by(ev.errors);
    }

    /// Reads the silences again when another process (the CLI) wrote to the database.
    async fn refresh_silences(&mut self) -> anyhow::Result<()> {
        let now = Utc::now();
        let known = self.silences_version;
        let fresh = self
            .db(move |s| {
                let v = s.data_version()?;
                if Some(v) == known {
                    return Ok(None);
                }
                Ok(Some((v, s.active_silences(now)?)))
            })
            .await?;
        if let Some((v, rows)) = fresh {
            self.silences_version = Some(v);
            let silences = rows.into_iter().map(silence).collect();
            self.agent.step(Input::Silences(silences), now);
        }
        Ok(())
    }

    /// One step of the core, and its effects in phase order.
    async fn apply(&mut self, input: Input) -> anyhow::Result<()> {
        self.apply_from(input, None).await
    }

    /// As [`Daemon::apply`], for an input a source delivered up to `checkpoint`:
    /// the checkpoint is committed in the same transaction as the step's records
    /// (also when the step recorded nothing), so a restart resumes exactly after it.
    async fn apply_from(
        &mut self,
        input: Input,
        checkpoint: Option<Checkpoint>,
    ) -> anyhow::Result<()> {
        if matches!(
            input,
            Input::Units(UnitEvent::Unit(_) | UnitEvent::Connected { .. })
                | Input::RunFinished(_)
                | Input::Tick
        ) {
            self.refresh_silences().await?;
        }
        let fx = self.agent.step(input, Utc::now());
        // Phase 0: every record of the step, in one transaction.
        let records: Vec<agent::Record> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Record(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        if !records.is_empty() || checkpoint.is_some() {
            let batch = Batch {
                records: records.into_iter().map(store_record).collect(),
                checkpoint: checkpoint.map(|c| store::Checkpoint {
                    source: c.source.to_string(),
                    cursor: c.cursor,
                }),
            };
            self.db(move |s| s.commit(&batch)).await?;
            self.evidence_wake.notify_one();
        }
        // Phase 1: the runs, now that they are recorded as started.
        for e in &fx {
            if let Effect::Start(run) = e {
                self.start(run.clone());
            }
        }
        // Phase 2: metrics and log lines, in the order the core said them.
        for e in &fx {
            match e {
                Effect::Record(r) => self.observe_record(r),
                Effect::Note(n) => log_note(n),
                Effect::Start(_) => {}
            }
        }
        self.update_open_gauges();
        Ok(())
    }

    /// Metrics and the journal line of a committed record.
    fn observe_record(&self, r: &agent::Record) {
        match r {
            agent::Record::Transition { transition: t, .. } => {
                let span =
                    tracing::info_span!("incident", incident_id = %t.incident_id, unit = %t.target);
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
            }
            agent::Record::RunFinished(run) => self.count_run(run),
            agent::Record::RunStarted(_) | agent::Record::Edges { .. } => {}
        }
    }

    /// Starts a run whose `running` row is already committed.
    fn start(&mut self, run: RunbookRun) {
        let span = tracing::info_span!("incident", incident_id = %run.incident_id,
            unit = %run.target, runbook = %run.runbook);
        let cancel = CancellationToken::new();
        self.cancels.insert(run.run_id.clone(), cancel.clone());
        let runbook = self.registry.get(&run.runbook).cloned();
        let tx = self.run_tx.clone();
        let mut run = run;
        tokio::spawn(
            async move {
                match runbook {
                    Some(rb) => {
                        let (outcome, steps) = rb.run(&run.target, run.dry_run, &cancel).await;
                        run.outcome = outcome;
                        run.steps = steps;
                    }
                    None => {
                        run.outcome = RunOutcome::Failed;
                        run.steps = vec![StepRecord {
                            name: "find_runbook".into(),
                            started_at: Utc::now(),
                            duration_ms: 0,
                            result: "failed".into(),
                            detail: serde_json::json!({"error": format!("no runbook {} in this agent", run.runbook)}),
                        }];
                    }
                }
                run.finished_at = Some(Utc::now());
                let _ = tx.send(run).await;
            }
            .instrument(span),
        );
    }

    async fn write_status(&mut self, state: &str) {
        let stats = self.evidence.stats();
        let status = AgentStatus {
            state: state.to_string(),
            pid: std::process::id(),
            version: VERSION.to_string(),
            started_at: Some(self.started_at),
            heartbeat_at: Some(Utc::now()),
            dry_run: self.settings.dry_run,
            watched_units: self.agent.watched_units(),
            bus_connected: self.agent.units_ready(),
            config: self.settings.source.clone(),
            hostname: self.settings.hostname.clone(),
            runbooks_in_flight: self.agent.runs_in_flight(),
            summary: self.agent.summary(),
            evidence: serde_json::to_value(&stats).ok(),
            mounts: self
                .agent
                .mounts()
                .into_iter()
                .map(|m| MountStatus {
                    mount: m.mount,
                    used_ratio: m.used_ratio,
                    inodes_used_ratio: m.inodes_used_ratio,
                    seconds_to_full: m.seconds_to_full,
                    level: m.level,
                    remediate: m.remediate,
                })
                .collect(),
        };
        match self
            .db(move |s| {
                s.set_status(&status)?;
                s.outbox_len()
            })
            .await
        {
            Ok(n) => {
                self.metrics.evidence_pending.set(n as i64);
            }
            Err(e) => tracing::warn!(error = %e, "cannot write the agent status"),
        }
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
            self.agent
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
                RunOutcome::Success
                    | RunOutcome::Failed
                    | RunOutcome::Interrupted
                    | RunOutcome::Partial
                    | RunOutcome::Timeout
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
}

fn log_note(n: &Note) {
    let span = tracing::info_span!(
        "incident",
        incident_id = n.incident_id.as_deref(),
        unit = n.target.as_deref(),
        runbook = n.runbook.as_deref()
    );
    let _e = span.enter();
    match n.level {
        Level::Info => tracing::info!("{}", n.message),
        Level::Warn => tracing::warn!("{}", n.message),
    }
}

fn store_record(r: agent::Record) -> store::Record {
    match r {
        agent::Record::Transition {
            transition,
            detected_at,
        } => store::Record::Transition {
            transition,
            detected_at,
        },
        agent::Record::RunStarted(run) => store::Record::RunStarted(run),
        agent::Record::RunFinished(run) => store::Record::RunFinished(run),
        agent::Record::Edges { edges, keep_since } => store::Record::Edges {
            edges: edges
                .into_iter()
                .map(|e| store::EdgeRow {
                    check: e.check,
                    target: e.target,
                    at: e.at,
                })
                .collect(),
            keep_since,
        },
    }
}

fn open_incident(r: store::OpenIncidentRow) -> OpenIncident {
    OpenIncident {
        id: r.id,
        check: r.check,
        target: r.target,
        severity: r.severity,
        state: r.state,
        opened_at: r.opened_at,
    }
}

fn edge(r: store::EdgeRow) -> Edge {
    Edge {
        check: r.check,
        target: r.target,
        at: r.at,
    }
}

fn silence(r: store::SilenceRow) -> Silence {
    Silence {
        id: r.id,
        target: r.target,
        until: r.until,
        reason: r.reason,
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
    // Drain first: a previous process may have left events queued.
    let mut stopping = false;
    loop {
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
        // Woken by each commit; the timer only retries a failure.
        stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = wake.notified() => false,
            _ = tokio::time::sleep(Duration::from_secs(5)), if failing => false,
        };
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
async fn supervise_upload(evidence: Evidence, s3: S3Config, cancel: CancellationToken) {
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
