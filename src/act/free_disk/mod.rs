//! RB-DISK-001: free disk space on a mount that is filling up.
//!
//! The agent runs unprivileged, so the deleting is done by a root helper unit,
//! `msp-agent-free-disk@<mount>.service` (`helper`), which the agent may only
//! restart (the polkit rule names exactly the instances of the mounts with
//! `remediate = true`). The agent's half, here: measure the mount, restart the
//! helper over D-Bus and wait for its job, read what the helper did from its
//! result file (trusted only if root wrote it for this very invocation), copy
//! those steps into the run's record, and verify the mount is below its
//! clearing threshold.
//!
//! Why a result file: the helper's exit code says only ok or not, and its
//! journal lines can be written by anyone who can log. The file lives in a
//! directory only root can write, is opened without following symlinks, and
//! carries `$INVOCATION_ID`, which must equal the invocation systemd reports
//! for the job the agent started: a stale or planted file is refused.

pub mod clean;
pub mod helper;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy};

use super::{JobError, StepTimer, journal_cursor, restart_and_wait};
use crate::bus::{connect, read_unit, unit_path};
use crate::events::{RunOutcome, StepRecord};

pub const RUNBOOK_ID: &str = "RB-DISK-001";

/// Where the helper writes its result (the unit's `RuntimeDirectory=`).
pub const REPORT_DIR: &str = "/run/msp-agent-free-disk";

/// How long the agent waits for the helper's job beyond the helper's own timeout.
pub const JOB_GRACE: Duration = Duration::from_secs(30);

/// A mount's usage; the same formula as the disks source (`f_bavail`: what
/// unprivileged users may still use).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    pub used_ratio: f64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub inodes_used_ratio: Option<f64>,
}

fn ratio(used: u64, available: u64) -> f64 {
    let total = used as f64 + available as f64;
    if total == 0.0 {
        0.0
    } else {
        used as f64 / total
    }
}

// the field types are narrower on some targets
#[allow(clippy::unnecessary_cast)]
pub fn measure(path: &Path) -> nix::Result<Measure> {
    let s = nix::sys::statvfs::statvfs(path)?;
    let frsize = s.fragment_size() as u64;
    let used = (s.blocks() as u64).saturating_sub(s.blocks_free() as u64) * frsize;
    let available = s.blocks_available() as u64 * frsize;
    let files = s.files() as u64;
    let inodes_used_ratio = (files > 0).then(|| {
        ratio(
            files.saturating_sub(s.files_free() as u64),
            s.files_available() as u64,
        )
    });
    Ok(Measure {
        used_ratio: ratio(used, available),
        used_bytes: used,
        available_bytes: available,
        inodes_used_ratio,
    })
}

/// What the helper wrote: `/run/msp-agent-free-disk/<instance>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub instance: String,
    pub mount: String,
    /// The helper's `$INVOCATION_ID`.
    pub invocation_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub before: Option<Measure>,
    pub after: Option<Measure>,
    pub bytes_freed: Option<i64>,
    pub steps: Vec<StepRecord>,
}

/// One remediable mount, as the agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `msp-agent-free-disk@<escaped>.service`.
    pub unit: String,
    pub instance: String,
    /// Below these the mount's levels clear (`warn_clear`); above these they fire.
    pub space_clear: f64,
    pub space_above: f64,
    pub inodes_clear: f64,
    pub inodes_above: f64,
}

/// `[runbooks.free_disk]` as the agent needs it, and the remediable mounts.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The helper's whole run (its own `timeout`); the agent waits this plus [`JOB_GRACE`].
    pub timeout: Duration,
    pub mounts: HashMap<String, Target>,
}

/// Whether the mount is out of its levels after the run: a ratio that was
/// above its firing value must now be below its clearing value (so the
/// incident resolves), and one that was not must not have risen above it.
pub fn below_threshold(t: &Target, before: &Measure, after: &Measure) -> bool {
    let dim = |b: f64, a: f64, clear: f64, above: f64| {
        if b > above { a < clear } else { a <= above }
    };
    let space = dim(
        before.used_ratio,
        after.used_ratio,
        t.space_clear,
        t.space_above,
    );
    let inodes = match (before.inodes_used_ratio, after.inodes_used_ratio) {
        (Some(b), Some(a)) => dim(b, a, t.inodes_clear, t.inodes_above),
        _ => true,
    };
    space && inodes
}

pub async fn run(
    mount: &str,
    p: &Params,
    dry_run: bool,
    cancel: &CancellationToken,
) -> (RunOutcome, Vec<StepRecord>) {
    let mut steps = Vec::new();
    let Some(target) = p.mounts.get(mount) else {
        steps.push(StepTimer::start("find_mount").finish(
            "failed",
            json!({"error": format!("{mount} is not a mount with remediate = true")}),
        ));
        return (RunOutcome::Failed, steps);
    };
    if dry_run {
        steps.push(StepTimer::start("measure_before").finish("would_run", json!({"mount": mount})));
        steps.push(StepTimer::start("start_helper").finish(
            "would_run",
            json!({"method": "org.freedesktop.systemd1.Manager.RestartUnit", "unit": target.unit, "mode": "replace"}),
        ));
        steps.push(StepTimer::start("verify_below_threshold").finish(
            "would_run",
            json!({"clear_below": target.space_clear, "inodes_clear_below": target.inodes_clear}),
        ));
        return (RunOutcome::DryRun, steps);
    }

    // measure_before
    let timer = StepTimer::start("measure_before");
    let before = match measure(Path::new(mount)) {
        Ok(m) => {
            steps.push(timer.finish("ok", json!({"mount": mount, "usage": m})));
            m
        }
        Err(e) => {
            steps.push(timer.finish(
                "failed",
                json!({"mount": mount, "error": format!("statvfs: {e}")}),
            ));
            return (RunOutcome::Failed, steps);
        }
    };

    // start_helper: restart the instance and wait for its job
    let timer = StepTimer::start("start_helper");
    let wait = p.timeout + JOB_GRACE;
    let job = tokio::select! {
        _ = cancel.cancelled() => {
            steps.push(timer.finish("failed", json!({"unit": target.unit, "error": "interrupted: the agent is stopping; the helper's run goes on under systemd"})));
            return (RunOutcome::Interrupted, steps);
        }
        r = restart_and_wait(&target.unit, wait) => r,
    };
    let mut detail = match job {
        Ok(end) => end.detail(&target.unit),
        Err(JobError::Timeout { job }) => {
            steps.push(timer.finish(
                "timeout",
                json!({"unit": target.unit, "job": job, "error": format!("the helper's job did not end within {}s", wait.as_secs())}),
            ));
            return (RunOutcome::Timeout, steps);
        }
        Err(JobError::Other(error)) => {
            steps.push(timer.finish("failed", json!({"unit": target.unit, "error": error})));
            return (RunOutcome::Failed, steps);
        }
    };
    let unit = helper_unit_state(&target.unit).await;
    let (invocation, result) = match &unit {
        Ok(u) => {
            detail["invocation_id"] = json!(u.invocation_id);
            detail["unit_result"] = json!(u.result);
            detail["exec_main_status"] = json!(u.exec_main_status);
            detail["active_state"] = json!(u.active_state);
            (u.invocation_id.clone(), u.result.clone())
        }
        Err(e) => {
            detail["error"] = json!(e);
            (String::new(), String::new())
        }
    };
    detail["journal_cursor"] = json!(journal_cursor(&target.unit).await);
    let helper_ok = detail["job_result"] == "done" && result == "success";
    let timed_out = result == "timeout" || detail["job_result"] == "timeout";
    steps.push(timer.finish(
        if helper_ok {
            "ok"
        } else if timed_out {
            "timeout"
        } else {
            "failed"
        },
        detail,
    ));

    // the helper's own steps, from its result file
    let timer = StepTimer::start("read_helper_result");
    let report = read_report(Path::new(REPORT_DIR), &target.instance, &invocation);
    match &report {
        Ok(r) => {
            steps.push(timer.finish(
                "ok",
                json!({"path": report_path(Path::new(REPORT_DIR), &target.instance), "invocation_id": r.invocation_id,
                       "bytes_freed": r.bytes_freed, "steps": r.steps.len()}),
            ));
            steps.extend(r.steps.iter().cloned());
        }
        Err(e) => steps.push(timer.finish("failed", json!({"error": e}))),
    }

    // verify_below_threshold, measured by the agent itself
    let timer = StepTimer::start("verify_below_threshold");
    let after = measure(Path::new(mount));
    let (verified, detail) = match &after {
        Ok(a) => {
            let ok = below_threshold(target, &before, a);
            (
                ok,
                json!({
                    "used_ratio_before": before.used_ratio,
                    "used_ratio_after": a.used_ratio,
                    "bytes_freed": a.available_bytes as i64 - before.available_bytes as i64,
                    "clear_below": target.space_clear,
                    "inodes_used_ratio_before": before.inodes_used_ratio,
                    "inodes_used_ratio_after": a.inodes_used_ratio,
                    "inodes_clear_below": target.inodes_clear,
                }),
            )
        }
        Err(e) => (false, json!({"error": format!("statvfs: {e}")})),
    };
    steps.push(timer.finish(if verified { "ok" } else { "failed" }, detail));

    let outcome = if timed_out {
        RunOutcome::Timeout
    } else if !helper_ok || report.is_err() || after.is_err() {
        RunOutcome::Failed
    } else if verified {
        RunOutcome::Success
    } else {
        // Every step ran; what they may delete was not enough.
        RunOutcome::Partial
    };
    (outcome, steps)
}

struct HelperState {
    active_state: String,
    result: String,
    invocation_id: String,
    exec_main_status: i32,
}

async fn helper_unit_state(unit: &str) -> Result<HelperState, String> {
    let conn = connect().await.map_err(|e| format!("system bus: {e}"))?;
    let manager = ManagerProxy::new(&conn).await.map_err(|e| e.to_string())?;
    let path = unit_path(&manager, unit).await.map_err(|e| e.to_string())?;
    let props = read_unit(&conn, unit, &path)
        .await
        .map_err(|e| e.to_string())?;
    let service = ServiceProxy::builder(&conn)
        .path(path)
        .map_err(|e| e.to_string())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    Ok(HelperState {
        active_state: props.active_state,
        result: props.result,
        invocation_id: props.invocation_id,
        exec_main_status: service.exec_main_status().await.unwrap_or(-1),
    })
}

fn report_path(dir: &Path, instance: &str) -> std::path::PathBuf {
    dir.join(format!("{instance}.json"))
}

/// Reads the helper's result, trusting it only if root wrote it for `invocation`:
/// the directory and the file are root-owned and writable by root alone, the
/// file is a regular file opened without following a symlink, and its
/// invocation ID is the one systemd reported.
pub fn read_report(dir: &Path, instance: &str, invocation: &str) -> Result<Report, String> {
    read_report_owned_by(dir, instance, invocation, 0)
}

fn read_report_owned_by(
    dir: &Path,
    instance: &str,
    invocation: &str,
    owner: u32,
) -> Result<Report, String> {
    let trusted = |what: &str, m: &std::fs::Metadata| {
        if m.uid() != owner {
            Err(format!("{what} is owned by uid {}, not {owner}", m.uid()))
        } else if m.mode() & 0o022 != 0 {
            Err(format!(
                "{what} is writable by others (mode {:o})",
                m.mode() & 0o7777
            ))
        } else {
            Ok(())
        }
    };
    let d = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !d.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    trusted(&dir.display().to_string(), &d)?;
    let path = report_path(dir, instance);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let m = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    trusted(&path.display().to_string(), &m)?;
    let mut text = Vec::new();
    f.take(16 << 20)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let report: Report =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if invocation.is_empty() || report.invocation_id != invocation {
        return Err(format!(
            "{} belongs to invocation `{}`, not to the one systemd reports (`{invocation}`): not this run's",
            path.display(),
            report.invocation_id
        ));
    }
    if report.instance != instance {
        return Err(format!(
            "{} names instance `{}`",
            path.display(),
            report.instance
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn target() -> Target {
        Target {
            unit: "msp-agent-free-disk@srv-data.service".into(),
            instance: "srv-data".into(),
            space_clear: 0.8,
            space_above: 0.9,
            inodes_clear: 0.8,
            inodes_above: 0.9,
        }
    }

    fn m(space: f64, inodes: Option<f64>) -> Measure {
        Measure {
            used_ratio: space,
            used_bytes: 0,
            available_bytes: 0,
            inodes_used_ratio: inodes,
        }
    }

    #[test]
    fn below_threshold_follows_the_levels_hysteresis() {
        let t = target();
        let cases = [
            // (before, after, below)
            (m(0.95, Some(0.1)), m(0.79, Some(0.1)), true),
            (m(0.95, Some(0.1)), m(0.85, Some(0.1)), false), // still above warn_clear
            (m(0.95, Some(0.1)), m(0.80, Some(0.1)), false), // clear is strict
            (m(0.95, Some(0.85)), m(0.5, Some(0.85)), true), // inodes never fired
            (m(0.95, Some(0.85)), m(0.5, Some(0.95)), false), // inodes now fire
            (m(0.5, Some(0.95)), m(0.5, Some(0.7)), true),   // an inode incident
            (m(0.5, Some(0.95)), m(0.5, Some(0.85)), false),
            (m(0.95, None), m(0.7, None), true), // no inode figures
        ];
        for (before, after, want) in cases {
            assert_eq!(
                below_threshold(&t, &before, &after),
                want,
                "{before:?} -> {after:?}"
            );
        }
    }

    fn report(invocation: &str) -> Report {
        Report {
            instance: "srv-data".into(),
            mount: "/srv/data".into(),
            invocation_id: invocation.into(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            before: None,
            after: None,
            bytes_freed: Some(10),
            steps: vec![],
        }
    }

    #[test]
    fn only_a_report_of_this_invocation_from_the_owner_is_trusted() {
        let me = nix::unistd::getuid().as_raw();
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        helper::write_report_in(dir, &report("abc")).unwrap();
        let read = |inv: &str, owner: u32| read_report_owned_by(dir, "srv-data", inv, owner);
        assert_eq!(read("abc", me).unwrap().bytes_freed, Some(10));
        assert!(read("def", me).unwrap_err().contains("not this run's"));
        assert!(
            read("", me).is_err(),
            "no invocation from systemd: nothing is trusted"
        );
        assert!(read("abc", me + 1).unwrap_err().contains("owned by"));
        // writable by others
        let file = dir.join("srv-data.json");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read("abc", me).unwrap_err().contains("writable"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(read("abc", me).unwrap_err().contains("writable"));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // a symlink in its place is not followed
        std::fs::rename(&file, dir.join("elsewhere.json")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere.json"), &file).unwrap();
        assert!(read("abc", me).is_err());
    }
}
