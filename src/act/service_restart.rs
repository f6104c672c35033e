//! RB-SERVICE-001: restart a unit over D-Bus, wait for the job's result, and
//! verify that the unit stays active for a settle period.
//!
//! The JobRemoved stream is opened before RestartUnit is called, so the job's
//! end cannot be missed. Cancellation (SIGTERM past the grace period) ends the
//! run between or inside steps with the steps done so far.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use zbus::zvariant::OwnedObjectPath;
use zbus_systemd::systemd1::ManagerProxy;

use super::{JobError, StepTimer, journal_cursor, restart_and_wait};
use crate::bus::{connect, read_unit, unit_path};
use crate::events::{RunOutcome, StepRecord};

pub const RUNBOOK_ID: &str = "RB-SERVICE-001";

/// `[runbooks.service_restart]` without its limits.
#[derive(Debug, Clone)]
pub struct Params {
    pub job_timeout: Duration,
    pub settle: Duration,
}

pub async fn run(
    unit: &str,
    p: &Params,
    dry_run: bool,
    cancel: &CancellationToken,
) -> (RunOutcome, Vec<StepRecord>) {
    let mut steps = Vec::new();
    if dry_run {
        steps.push(StepTimer::start("restart_unit").finish(
            "would_run",
            json!({"method": "org.freedesktop.systemd1.Manager.RestartUnit", "unit": unit, "mode": "replace"}),
        ));
        steps.push(
            StepTimer::start("verify_active")
                .finish("would_run", json!({"settle_secs": p.settle.as_secs_f64()})),
        );
        return (RunOutcome::DryRun, steps);
    }

    // Step 1: RestartUnit and wait for the job.
    let timer = StepTimer::start("restart_unit");
    let restart = tokio::select! {
        _ = cancel.cancelled() => Err("interrupted: the agent is stopping".to_string()),
        r = restart(unit, p.job_timeout) => r,
    };
    match restart {
        Ok(detail) => {
            let ok = detail["job_result"] == "done";
            steps.push(timer.finish(if ok { "ok" } else { "failed" }, detail));
            if !ok {
                return (RunOutcome::Failed, steps);
            }
        }
        Err(error) => {
            let interrupted = cancel.is_cancelled();
            steps.push(timer.finish("failed", json!({"error": error})));
            return (
                if interrupted {
                    RunOutcome::Interrupted
                } else {
                    RunOutcome::Failed
                },
                steps,
            );
        }
    }

    // Step 2: a long-running unit must stay active for the settle period; a oneshot
    // (a backup, say) has finished when its restart job is done and must have succeeded.
    let oneshot = service_type(unit).await.as_deref() == Some("oneshot");
    let timer = StepTimer::start(if oneshot {
        "verify_succeeded"
    } else {
        "verify_active"
    });
    let verify = tokio::select! {
        _ = cancel.cancelled() => Err(json!({"error": "interrupted: the agent is stopping"})),
        r = async { if oneshot { verify_oneshot(unit).await } else { verify_active(unit, p.settle).await } } => r,
    };
    let cursor = journal_cursor(unit).await;
    match verify {
        Ok(mut detail) => {
            detail["journal_cursor"] = json!(cursor);
            steps.push(timer.finish("ok", detail));
            (RunOutcome::Success, steps)
        }
        Err(mut detail) => {
            detail["journal_cursor"] = json!(cursor);
            steps.push(timer.finish("failed", detail));
            let outcome = if cancel.is_cancelled() {
                RunOutcome::Interrupted
            } else {
                RunOutcome::Failed
            };
            (outcome, steps)
        }
    }
}

async fn restart(unit: &str, timeout: Duration) -> Result<serde_json::Value, String> {
    match restart_and_wait(unit, timeout).await {
        Ok(end) => Ok(end.detail(unit)),
        Err(JobError::Timeout { job }) => Err(format!(
            "job {job} did not end within {}s",
            timeout.as_secs()
        )),
        Err(JobError::Other(e)) => Err(e),
    }
}

/// A bus connection and the unit's object path; errors as step detail.
async fn open_unit(unit: &str) -> Result<(zbus::Connection, OwnedObjectPath), serde_json::Value> {
    let conn = connect()
        .await
        .map_err(|e| json!({"error": format!("system bus: {e}")}))?;
    let manager = ManagerProxy::new(&conn)
        .await
        .map_err(|e| json!({"error": e.to_string()}))?;
    let path = unit_path(&manager, unit)
        .await
        .map_err(|e| json!({"error": e.to_string()}))?;
    Ok((conn, path))
}

async fn service_type(unit: &str) -> Option<String> {
    if !unit.ends_with(".service") {
        return None;
    }
    let (conn, path) = open_unit(unit).await.ok()?;
    let service = zbus_systemd::systemd1::ServiceProxy::builder(&conn)
        .path(path)
        .ok()?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .ok()?;
    service.type_property().await.ok()
}

/// A oneshot's restart job ends when its work has run: it must have succeeded.
async fn verify_oneshot(unit: &str) -> Result<serde_json::Value, serde_json::Value> {
    let (conn, path) = open_unit(unit).await?;
    let obs = read_unit(&conn, unit, &path)
        .await
        .map_err(|e| json!({"error": e.to_string()}))?;
    let detail = json!({
        "service_type": "oneshot",
        "active_state": obs.active_state,
        "sub_state": obs.sub_state,
        "result": obs.result,
        "invocation_id": obs.invocation_id,
    });
    if obs.result == "success" && obs.active_state != "failed" {
        Ok(detail)
    } else {
        Err(detail)
    }
}

/// Polls the unit during the settle period; fails as soon as it leaves `active`.
async fn verify_active(
    unit: &str,
    settle: Duration,
) -> Result<serde_json::Value, serde_json::Value> {
    let (conn, path) = open_unit(unit).await?;
    let start = tokio::time::Instant::now();
    let mut last;
    loop {
        let obs = read_unit(&conn, unit, &path)
            .await
            .map_err(|e| json!({"error": e.to_string()}))?;
        let detail = json!({
            "active_state": obs.active_state,
            "sub_state": obs.sub_state,
            "result": obs.result,
            "invocation_id": obs.invocation_id,
            "n_restarts": obs.n_restarts,
            "held_secs": start.elapsed().as_secs_f64(),
            "settle_secs": settle.as_secs_f64(),
        });
        last = detail;
        if obs.active_state != "active"
            && obs.active_state != "activating"
            && obs.active_state != "reloading"
        {
            return Err(last);
        }
        if start.elapsed() >= settle {
            return if obs.active_state == "active" {
                Ok(last)
            } else {
                Err(last)
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
