//! The read-mostly commands a person or a script runs beside the daemon:
//! `status`, `incidents`, `silence`. They read the daemon's SQLite database
//! (WAL lets them do so while it runs) and print either a table a person reads
//! at a glance or JSON for scripts.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::store::{AgentStatus, IncidentRow, Store};

fn open_ro(db: &Path) -> anyhow::Result<Store> {
    if !db.exists() {
        anyhow::bail!(
            "no state database at {}: the agent has not run yet with this state_dir (see `systemctl status msp-agent`)",
            db.display()
        );
    }
    Ok(Store::open_read_only(db)?)
}

/// How old a heartbeat may be for the agent to count as running.
const HEARTBEAT_FRESH: chrono::Duration = chrono::Duration::seconds(30);

pub fn status(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open_ro(db)?;
    let agent = store.status()?;
    let open = store.list_incidents(false, 1000)?;
    let pending = store.outbox_len()?;
    let mut out = std::io::stdout().lock();
    let view = StatusView {
        agent: agent.as_ref(),
        open: &open,
        pending,
        now: Utc::now(),
    };
    if json {
        write_status_json(&mut out, &view)
    } else {
        write_status_table(&mut out, &view)
    }
}

/// What `msp-agent status` shows, read from the database.
pub struct StatusView<'a> {
    /// `None` when the agent never wrote its status.
    pub agent: Option<&'a AgentStatus>,
    pub open: &'a [IncidentRow],
    /// Events in the outbox, not yet sealed as evidence.
    pub pending: u64,
    pub now: DateTime<Utc>,
}

impl StatusView<'_> {
    /// The agent runs if it says so and its heartbeat is recent (a killed agent
    /// leaves `running` behind, but its heartbeat ages).
    pub fn running(&self) -> bool {
        self.agent.is_some_and(|a| {
            (a.state == "running" || a.state == "starting")
                && a.heartbeat_at
                    .is_some_and(|h| self.now - h < HEARTBEAT_FRESH)
        })
    }
}

fn bus_word(connected: bool) -> &'static str {
    if connected {
        "connected"
    } else {
        "disconnected"
    }
}

/// The `agent` object of `status --json`: the [`AgentStatus`] fields, plus what
/// scripts written against earlier releases read: `bus` (`connected` or
/// `disconnected`) and `evidence` as JSON text.
pub fn agent_json(agent: Option<&AgentStatus>) -> anyhow::Result<serde_json::Value> {
    let Some(a) = agent else {
        return Ok(serde_json::json!({}));
    };
    let mut v = serde_json::to_value(a)?;
    let obj = v
        .as_object_mut()
        .context("the agent status is not a JSON object")?;
    obj.insert("bus".into(), bus_word(a.bus_connected).into());
    if let Some(ev) = &a.evidence {
        obj.insert("evidence".into(), serde_json::to_string(ev)?.into());
    }
    Ok(v)
}

pub fn write_status_json(out: &mut impl Write, view: &StatusView<'_>) -> anyhow::Result<()> {
    let v = serde_json::json!({
        "running": view.running(),
        "agent": agent_json(view.agent)?,
        "open_incidents": view.open,
        "evidence_events_pending": view.pending,
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    Ok(())
}

pub fn write_status_table(out: &mut impl Write, view: &StatusView<'_>) -> anyhow::Result<()> {
    let dash = || "-".to_string();
    let field = |f: fn(&AgentStatus) -> String| view.agent.map(f).unwrap_or_else(dash);
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(dash);
    writeln!(
        out,
        "msp-agent {}  {}",
        field(|a| a.version.clone()),
        if view.running() {
            "running"
        } else {
            "NOT RUNNING"
        }
    )?;
    writeln!(out, "  host:        {}", field(|a| a.hostname.clone()))?;
    writeln!(
        out,
        "  pid:         {}   since {}",
        field(|a| a.pid.to_string()),
        time(view.agent.and_then(|a| a.started_at))
    )?;
    writeln!(
        out,
        "  heartbeat:   {}",
        time(view.agent.and_then(|a| a.heartbeat_at))
    )?;
    writeln!(out, "  config:      {}", field(|a| a.config.clone()))?;
    writeln!(
        out,
        "  system bus:  {}   watched units: {}",
        field(|a| bus_word(a.bus_connected).to_string()),
        field(|a| a.watched_units.to_string())
    )?;
    writeln!(out, "  dry run:     {}", field(|a| a.dry_run.to_string()))?;
    writeln!(
        out,
        "  in flight:   {} runbook(s)",
        field(|a| a.runbooks_in_flight.to_string())
    )?;
    writeln!(
        out,
        "  evidence:    {} event(s) waiting to be sealed",
        view.pending
    )?;
    if let Some(ev) = view.agent.and_then(|a| a.evidence.as_ref()) {
        writeln!(
            out,
            "               last bundle #{}, {} not yet in the bucket, bucket WORM: {}",
            ev["last_seq"],
            ev["spool_depth"],
            ev["worm"].as_str().unwrap_or("?")
        )?;
        if ev["spool_alarm"] == true {
            writeln!(
                out,
                "               ALARM: the spool is nearly full ({} of {} bytes)",
                ev["spool_bytes"], ev["spool_max_bytes"]
            )?;
        }
        if let Some(err) = ev["last_error"].as_str() {
            writeln!(out, "               last upload error: {err}")?;
        }
    }
    let mounts = view.agent.map(|a| a.mounts.as_slice()).unwrap_or_default();
    for (i, m) in mounts.iter().enumerate() {
        let pct = |r: f64| format!("{:.1} %", r * 100.0);
        let line = format!(
            "  {} {:<20} {:>7} used, inodes {:>7}  {:<8}{}{}",
            if i == 0 { "disks:    " } else { "          " },
            m.mount,
            pct(m.used_ratio),
            m.inodes_used_ratio.map(pct).unwrap_or_else(|| "-".into()),
            m.level,
            m.seconds_to_full
                .map(|s| format!("  full in {:.1} h", s / 3600.0))
                .unwrap_or_default(),
            if m.remediate {
                "  (freed by RB-DISK-001)"
            } else {
                ""
            },
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out)?;
    if view.open.is_empty() {
        writeln!(out, "No open incidents.")?;
    } else {
        writeln!(out, "{} open incident(s):", view.open.len())?;
        print_table(out, view.open)?;
    }
    Ok(())
}

pub fn incidents(db: &Path, json: bool, all: bool, limit: u32) -> anyhow::Result<()> {
    let store = open_ro(db)?;
    let rows = store.list_incidents(all, limit)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    write_incidents(&mut out, &rows, all)
}

/// The table of `msp-agent incidents` (or what to say when it is empty).
pub fn write_incidents(
    out: &mut impl Write,
    rows: &[IncidentRow],
    all: bool,
) -> anyhow::Result<()> {
    if rows.is_empty() {
        writeln!(
            out,
            "{}",
            if all {
                "No incidents recorded."
            } else {
                "No open incidents (`--all` lists resolved ones too)."
            }
        )?;
        return Ok(());
    }
    print_table(out, rows)
}

fn print_table(out: &mut impl Write, rows: &[IncidentRow]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<40} {:<12} {:<28} {:<12} {:<20} {:>4}  REASON",
        "ID", "CHECK", "TARGET", "STATE", "OPENED (UTC)", "RUNS"
    )?;
    for r in rows {
        let runs: Vec<&str> = r.runs.iter().map(|x| x.outcome.as_str()).collect();
        writeln!(
            out,
            "{:<40} {:<12} {:<28} {:<12} {:<20} {:>4}  {}",
            r.id,
            r.check,
            r.target,
            r.state,
            r.opened_at.format("%Y-%m-%d %H:%M:%S"),
            r.runs.len(),
            r.reason
        )?;
        if !runs.is_empty() {
            writeln!(out, "{:<40} runs: {}", "", runs.join(", "))?;
        }
    }
    Ok(())
}

pub fn silence(
    db: &Path,
    target: &str,
    duration: std::time::Duration,
    reason: &str,
) -> anyhow::Result<()> {
    let mut store = Store::open(db).with_context(|| {
        format!(
            "cannot open {} for writing (run as root or as the agent's user)",
            db.display()
        )
    })?;
    let now = Utc::now();
    let until = now + chrono::Duration::from_std(duration)?;
    let by = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| nix::unistd::getuid().to_string());
    let id = store.add_silence(target, now, until, reason, &by)?;
    println!(
        "silence {id}: remediation of {target} stopped until {} ({})",
        until.format("%Y-%m-%d %H:%M:%S UTC"),
        reason
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn agent() -> AgentStatus {
        AgentStatus {
            state: "running".into(),
            pid: 4242,
            version: "0.1.0".into(),
            started_at: Some(t(-60)),
            heartbeat_at: Some(t(0)),
            dry_run: true,
            watched_units: 3,
            bus_connected: true,
            config: "/etc/msp-agent/config.toml".into(),
            hostname: "web-01".into(),
            runbooks_in_flight: 1,
            summary: "watching 3 units".into(),
            evidence: Some(serde_json::json!({
                "last_seq": 7, "spool_depth": 2, "worm": "enabled", "spool_alarm": true,
                "spool_bytes": 900, "spool_max_bytes": 1000, "last_error": "timeout"
            })),
            mounts: vec![
                crate::store::MountStatus {
                    mount: "/".into(),
                    used_ratio: 0.42,
                    inodes_used_ratio: Some(0.1),
                    seconds_to_full: None,
                    level: "ok".into(),
                    remediate: false,
                },
                crate::store::MountStatus {
                    mount: "/srv/data".into(),
                    used_ratio: 0.955,
                    inodes_used_ratio: None,
                    seconds_to_full: Some(7200.0),
                    level: "warning".into(),
                    remediate: true,
                },
            ],
        }
    }

    fn incident() -> IncidentRow {
        IncidentRow {
            id: "INC-1".into(),
            check: "unit_failed".into(),
            target: "demo.service".into(),
            severity: "critical".into(),
            state: "firing".into(),
            opened_at: t(-10),
            updated_at: t(-10),
            resolved_at: None,
            detected_at: Some(t(-11)),
            reason: "unit entered failed".into(),
            runs: vec![crate::store::RunRow {
                run_id: "R1".into(),
                runbook: "RB-SERVICE-001".into(),
                outcome: "dry_run".into(),
                started_at: t(-9),
                finished_at: Some(t(-8)),
                dry_run: true,
            }],
        }
    }

    fn table(view: &StatusView<'_>) -> String {
        let mut out = Vec::new();
        write_status_table(&mut out, view).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn json(view: &StatusView<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        write_status_json(&mut out, view).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn running_needs_a_running_state_and_a_fresh_heartbeat() {
        let with = |state: &str, heartbeat: Option<i64>| AgentStatus {
            state: state.into(),
            heartbeat_at: heartbeat.map(t),
            ..AgentStatus::default()
        };
        let cases = [
            ("running, fresh", Some(with("running", Some(-5))), true),
            ("starting, fresh", Some(with("starting", Some(0))), true),
            ("running, stale", Some(with("running", Some(-31))), false),
            ("running, no heartbeat", Some(with("running", None)), false),
            ("stopped, fresh", Some(with("stopped", Some(0))), false),
            ("never wrote a status", None, false),
        ];
        for (name, agent, want) in cases {
            let view = StatusView {
                agent: agent.as_ref(),
                open: &[],
                pending: 0,
                now: t(0),
            };
            assert_eq!(view.running(), want, "{name}");
        }
    }

    #[test]
    fn the_status_table_says_what_scripts_and_people_look_for() {
        let a = agent();
        let open = [incident()];
        let view = StatusView {
            agent: Some(&a),
            open: &open,
            pending: 3,
            now: t(1),
        };
        let text = table(&view);
        let cases = [
            "msp-agent 0.1.0  running\n",
            "  host:        web-01\n",
            "  pid:         4242   since 2027-01-15T07:59:00+00:00\n",
            "  heartbeat:   2027-01-15T08:00:00+00:00\n",
            "  config:      /etc/msp-agent/config.toml\n",
            "  system bus:  connected   watched units: 3\n",
            "  dry run:     true\n",
            "  in flight:   1 runbook(s)\n",
            "  evidence:    3 event(s) waiting to be sealed\n",
            "last bundle #7, 2 not yet in the bucket, bucket WORM: enabled\n",
            "ALARM: the spool is nearly full (900 of 1000 bytes)\n",
            "last upload error: timeout\n",
            "  disks:     /                     42.0 % used, inodes  10.0 %  ok\n",
            "             /srv/data             95.5 % used, inodes       -  warning   full in 2.0 h  (freed by RB-DISK-001)\n",
            "1 open incident(s):\n",
            "demo.service",
            "runs: dry_run\n",
        ];
        for want in cases {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
    }

    #[test]
    fn the_status_table_without_an_agent_or_incidents() {
        let view = StatusView {
            agent: None,
            open: &[],
            pending: 0,
            now: t(0),
        };
        let text = table(&view);
        for want in [
            "msp-agent -  NOT RUNNING\n",
            "  dry run:     -\n",
            "  system bus:  -   watched units: -\n",
            "No open incidents.\n",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        assert!(!text.contains("last bundle"));
    }

    #[test]
    fn status_json_keeps_the_keys_scripts_read() {
        let mut a = agent();
        let open = [incident()];
        let view = StatusView {
            agent: Some(&a),
            open: &open,
            pending: 3,
            now: t(1),
        };
        let v = json(&view);
        assert_eq!(v["running"], true);
        assert_eq!(v["evidence_events_pending"], 3);
        assert_eq!(v["open_incidents"][0]["id"], "INC-1");
        assert_eq!(v["open_incidents"][0]["state"], "firing");
        assert_eq!(v["agent"]["bus"], "connected");
        assert_eq!(v["agent"]["bus_connected"], true);
        assert_eq!(v["agent"]["pid"], 4242);
        assert_eq!(v["agent"]["dry_run"], true);
        // `evidence` stays JSON text, as scripts parse it a second time
        let raw = v["agent"]["evidence"]
            .as_str()
            .expect("evidence as a string");
        let ev: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(ev["last_seq"], 7);

        a.bus_connected = false;
        a.evidence = None;
        let view = StatusView {
            agent: Some(&a),
            open: &[],
            pending: 0,
            now: t(100),
        };
        let v = json(&view);
        assert_eq!(v["running"], false);
        assert_eq!(v["agent"]["bus"], "disconnected");
        assert!(v["agent"]["evidence"].is_null());

        let none = StatusView {
            agent: None,
            open: &[],
            pending: 0,
            now: t(0),
        };
        assert_eq!(json(&none)["agent"], serde_json::json!({}));
    }

    #[test]
    fn the_incidents_table_or_what_to_say_when_empty() {
        let cases: [(&[IncidentRow], bool, &str); 3] = [
            (&[], true, "No incidents recorded.\n"),
            (
                &[],
                false,
                "No open incidents (`--all` lists resolved ones too).\n",
            ),
            (&[incident()], false, "INC-1"),
        ];
        for (rows, all, want) in cases {
            let mut out = Vec::new();
            write_incidents(&mut out, rows, all).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
    }
}
