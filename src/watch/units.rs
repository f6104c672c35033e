//! The units source: follows the watched systemd units over D-Bus, event-driven.
//!
//! Order matters (facts.md): subscribe to the manager, open the signal
//! streams, and only then read the initial state, so no change falls in
//! between. State is re-read in full periodically and after every reconnect,
//! because a burst can overflow a queue; the bus going away is survived with
//! bounded backoff and the gap is reported.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{MatchRule, MessageStream, message::Type};
use zbus_systemd::systemd1::ManagerProxy;

use crate::bus::{UnitProperties, apply_changes, connect, read_unit, unit_path};
use crate::units::UnitRules;

/// The state of one watched unit as systemd reported it, and when the agent saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitObservation {
    #[serde(flatten)]
    pub props: UnitProperties,
    pub seen_at: DateTime<Utc>,
}

impl std::ops::Deref for UnitObservation {
    type Target = UnitProperties;
    fn deref(&self) -> &UnitProperties {
        &self.props
    }
}

impl UnitObservation {
    pub fn now(props: UnitProperties) -> UnitObservation {
        UnitObservation {
            props,
            seen_at: Utc::now(),
        }
    }
}

/// What the units source reports.
#[derive(Debug, Clone)]
pub enum UnitEvent {
    /// The state of a watched unit, initial or changed.
    Unit(UnitObservation),
    /// Connected and the initial state was read: `units` are tracked.
    Connected { units: usize },
    /// The number of tracked units changed (a matching unit was loaded).
    Tracking { units: usize },
    /// The bus went away; changes in between may be missed until the re-read.
    Disconnected { error: String },
}

/// The units source's settings: which units, and how often to repair lost signals.
#[derive(Debug, Clone)]
pub struct UnitWatchSettings {
    pub rules: UnitRules,
    pub reconcile: Duration,
}

pub struct UnitWatcher {
    settings: UnitWatchSettings,
    tx: mpsc::Sender<UnitEvent>,
}

impl UnitWatcher {
    pub fn new(settings: UnitWatchSettings, tx: mpsc::Sender<UnitEvent>) -> UnitWatcher {
        UnitWatcher { settings, tx }
    }

    fn matches(&self, unit: &str) -> bool {
        self.settings.rules.watches(unit)
    }

    /// Runs until `cancel`; reconnects with backoff when the bus is lost.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.session(&cancel) => r,
            };
            if cancel.is_cancelled() {
                return;
            }
            let error = match result {
                Ok(()) => "the bus closed the connection".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(
                error = %error,
                retry_in_ms = backoff.as_millis() as u64,
                "lost the system bus; unit changes until the reconnect are recovered by a full re-read"
            );
            if self
                .tx
                .send(UnitEvent::Disconnected { error })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn session(&self, cancel: &CancellationToken) -> zbus::Result<()> {
        let conn = connect().await?;
        let manager = ManagerProxy::new(&conn).await?;
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .sender("org.freedesktop.systemd1")?
            .interface("org.freedesktop.DBus.Properties")?
            .member("PropertiesChanged")?
            .path_namespace("/org/freedesktop/systemd1/unit")?
            .build();
        let mut changes = MessageStream::for_match_rule(rule, &conn, Some(8192)).await?;
        let mut unit_new = manager.receive_unit_new().await?;
        manager.subscribe().await?;

        // path → (unit name, last observation)
        let mut tracked: HashMap<OwnedObjectPath, UnitObservation> = HashMap::new();
        for u in manager.list_units().await? {
            let (name, path) = (u.0, u.6);
            if self.matches(&name) {
                self.track(&conn, &mut tracked, &name, path).await;
            }
        }
        // explicitly named units that systemd has not loaded yet
        for p in self.settings.rules.explicit_names() {
            if tracked.values().any(|o| o.unit == p) {
                continue;
            }
            match unit_path(&manager, p).await {
                Ok(path) => self.track(&conn, &mut tracked, p, path).await,
                Err(e) => tracing::warn!(unit = %p, error = %e, "cannot load watched unit"),
            }
        }
        let _ = self
            .tx
            .send(UnitEvent::Connected {
                units: tracked.len(),
            })
            .await;
        tracing::info!(units = tracked.len(), "watching units over D-Bus");

        let mut reconcile = tokio::time::interval(self.settings.reconcile);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconcile.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                msg = changes.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let msg = msg?;
                    let Some(path) = msg.header().path().map(|p| OwnedObjectPath::from(p.to_owned())) else { continue };
                    let Some(obs) = tracked.get_mut(&path) else { continue };
                    let (iface, changed, invalidated): (String, HashMap<String, OwnedValue>, Vec<String>) =
                        match msg.body().deserialize() {
                            Ok(b) => b,
                            Err(e) => {
                                tracing::warn!(error = %e, "unreadable PropertiesChanged signal skipped");
                                continue;
                            }
                        };
                    let relevant = if invalidated.iter().any(|p| p == "ActiveState" || p == "SubState") {
                        match read_unit(&conn, &obs.unit.clone(), &path).await {
                            Ok(fresh) => { obs.props = fresh; true }
                            Err(_) => false,
                        }
                    } else {
                        apply_changes(&mut obs.props, &changed)
                    };
                    // The type-specific interface (Result, NRestarts) is sent before the
                    // generic one (ActiveState), so report on the latter, and on restarts.
                    let report = relevant
                        && (iface == "org.freedesktop.systemd1.Unit" || changed.contains_key("NRestarts"));
                    if report {
                        obs.seen_at = Utc::now();
                        if self.tx.send(UnitEvent::Unit(obs.clone())).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                new = unit_new.next() => {
                    let Some(new) = new else { return Ok(()) };
                    let Ok(args) = new.args() else { continue };
                    let (name, path) = (args.id().to_string(), args.unit().clone());
                    if self.matches(&name) && !tracked.contains_key(&path) {
                        self.track(&conn, &mut tracked, &name, path).await;
                        let _ = self.tx.send(UnitEvent::Tracking { units: tracked.len() }).await;
                    }
                }
                _ = reconcile.tick() => {
                    // One ListUnits call instead of a read per unit: only a unit whose
                    // state differs from what the signals said is read again and reported.
                    let listed = manager.list_units().await?;
                    let states: HashMap<OwnedObjectPath, (String, String)> =
                        listed.into_iter().map(|u| (u.6, (u.3, u.4))).collect();
                    for (path, obs) in tracked.iter_mut() {
                        let stale = states.get(path).is_some_and(|(active, sub)| {
                            *active != obs.active_state || *sub != obs.sub_state
                        });
                        if !stale {
                            continue;
                        }
                        if let Ok(fresh) = read_unit(&conn, &obs.unit.clone(), path).await {
                            tracing::info!(unit = %fresh.unit, "a change missed by the signals was repaired by the periodic re-read");
                            *obs = UnitObservation::now(fresh);
                            let _ = self.tx.send(UnitEvent::Unit(obs.clone())).await;
                        }
                    }
                }
            }
        }
    }

    async fn track(
        &self,
        conn: &zbus::Connection,
        tracked: &mut HashMap<OwnedObjectPath, UnitObservation>,
        name: &str,
        path: OwnedObjectPath,
    ) {
        match read_unit(conn, name, &path).await {
            Ok(props) => {
                let obs = UnitObservation::now(props);
                let _ = self.tx.send(UnitEvent::Unit(obs.clone())).await;
                tracked.insert(path, obs);
            }
            Err(e) => tracing::warn!(unit = %name, error = %e, "cannot read unit state"),
        }
    }
}
