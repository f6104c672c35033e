//! The read-mostly commands a person or a script runs beside the daemon:
//! `status`, `incidents`, `silence`. They read the daemon's SQLite database
//! (WAL lets them do so while it runs) and print either a table a person reads
//! at a glance or JSON for scripts.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::store::{IncidentRow, Store};

fn open_ro(db: &Path) -> anyhow::Result<Store> {
    if !db.exists() {
        anyhow::bail!(
            "no state database at {}: the agent has not run yet with this state_dir (see `systemctl status msp-agent`)",
            db.display()
        );
    }
    Ok(Store::open_read_only(db)?)
}

pub fn status(db: &Path, json: bool) -> anyhow::Result<()> {
    let store = open_ro(db)?;
    let kv: std::collections::BTreeMap<String, String> = store.status()?.into_iter().collect();
    let open = store.list_incidents(false, 1000)?;
    let heartbeat = kv
        .get("heartbeat_at")
        .and_then(|h| DateTime::parse_from_rfc3339(h).ok())
        .map(|h| h.with_timezone(&Utc));
    let fresh = heartbeat.is_some_and(|h| Utc::now() - h < chrono::Duration::seconds(30));
    let running = fresh
        && kv
            .get("state")
            .is_some_and(|s| s == "running" || s == "starting");
    let pending = store.outbox_len()?;
    if json {
        let v = serde_json::json!({
            "running": running,
            "agent": kv,
            "open_incidents": open,
            "evidence_events_pending": pending,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let get = |k: &str| kv.get(k).map(String::as_str).unwrap_or("-");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "msp-agent {}  {}",
        get("version"),
        if running { "running" } else { "NOT RUNNING" }
    )?;
    writeln!(out, "  host:        {}", get("hostname"))?;
    writeln!(
        out,
        "  pid:         {}   since {}",
        get("pid"),
        get("started_at")
    )?;
    writeln!(out, "  heartbeat:   {}", get("heartbeat_at"))?;
    writeln!(out, "  config:      {}", get("config"))?;
    writeln!(
        out,
        "  system bus:  {}   watched units: {}",
        get("bus"),
        get("watched_units")
    )?;
    writeln!(out, "  dry run:     {}", get("dry_run"))?;
    writeln!(
        out,
        "  in flight:   {} runbook(s)",
        get("runbooks_in_flight")
    )?;
    writeln!(
        out,
        "  evidence:    {pending} event(s) waiting to be sealed"
    )?;
    if let Some(ev) = kv
        .get("evidence")
        .and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok())
    {
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
    writeln!(out)?;
    if open.is_empty() {
        writeln!(out, "No open incidents.")?;
    } else {
        writeln!(out, "{} open incident(s):", open.len())?;
        print_table(&mut out, &open)?;
    }
    Ok(())
}

pub fn incidents(db: &Path, json: bool, all: bool, limit: u32) -> anyhow::Result<()> {
    let store = open_ro(db)?;
    let rows = store.list_incidents(all, limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
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
    print_table(&mut out, &rows)
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
