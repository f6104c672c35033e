//! `msp-agent free-disk`: RB-DISK-001's privileged half, run by systemd as root
//! in `msp-agent-free-disk@<mount>.service`.
//!
//! It frees space on one configured mount by the steps its root-owned
//! configuration names, each bounded by its own timeout and the run's, each
//! measured with `statvfs` before and after, and writes what it did to
//! `/run/msp-agent-free-disk/<instance>.json` with this run's `$INVOCATION_ID`,
//! where the agent reads it. The agent chooses only which configured mount:
//! what may be deleted comes from the configuration file, never from the caller.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use serde_json::json;

use super::clean::{self, CleanError};
use super::{Measure, REPORT_DIR, Report, measure};
use crate::act::StepTimer;
use crate::events::StepRecord;

/// One `[[watch.disks.clean]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanRule {
    pub path: PathBuf,
    pub glob: String,
    pub older_than: Duration,
}

/// What the helper does on one mount: `[runbooks.free_disk]` and the mount's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub mount: PathBuf,
    /// `systemd-escape --path` of the mount: the unit's instance.
    pub instance: String,
    pub timeout: Duration,
    pub step_timeout: Duration,
    /// `journalctl --vacuum-size=`; `None` skips it.
    pub journal_vacuum_size: Option<String>,
    pub journal_vacuum_time: Option<Duration>,
    pub tmpfiles_clean: bool,
    /// `nix-collect-garbage --delete-older-than <N>d`.
    pub nix_gc_older_than_days: Option<u64>,
    pub clean: Vec<CleanRule>,
}

/// Where the journal keeps its files (the vacuum step frees space there).
const JOURNAL_DIR: &str = "/var/log/journal";
const TMP_DIRS: &[&str] = &["/tmp", "/var/tmp"];
const NIX_STORE: &str = "/nix/store";

fn device_of(path: &str) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.dev())
}

/// Runs the plan's steps; the report is complete even when a step fails.
pub async fn run(plan: &Plan) -> Report {
    let started_at = Utc::now();
    let start = Instant::now();
    let deadline = start + plan.timeout;
    let mount = plan.mount.to_string_lossy().into_owned();
    let dev = device_of(&mount);
    let before = measure(&plan.mount).ok();
    let mut steps = Vec::new();

    let on_mount = |p: &str| dev.is_some() && device_of(p) == dev;

    // journal_vacuum
    let name = "journal_vacuum";
    match &plan.journal_vacuum_size {
        None if plan.journal_vacuum_time.is_none() => {
            steps.push(skipped(name, "turned off (journal_vacuum_size = \"\")"))
        }
        _ if !on_mount(JOURNAL_DIR) => {
            steps.push(skipped(name, &format!("{JOURNAL_DIR} is not on {mount}")))
        }
        _ => {
            let mut args = vec!["--quiet".to_string()];
            if let Some(s) = &plan.journal_vacuum_size {
                args.push(format!("--vacuum-size={s}"));
            }
            if let Some(t) = plan.journal_vacuum_time {
                args.push(format!("--vacuum-time={}s", t.as_secs().max(1)));
            }
            steps.push(command_step(name, plan, deadline, "journalctl", &args).await);
        }
    }

    // tmpfiles_clean
    let name = "tmpfiles_clean";
    if !plan.tmpfiles_clean {
        steps.push(skipped(name, "turned off (tmpfiles_clean = false)"));
    } else if !TMP_DIRS.iter().any(|d| on_mount(d)) {
        steps.push(skipped(
            name,
            &format!("neither /tmp nor /var/tmp is on {mount}"),
        ));
    } else {
        steps.push(
            command_step(
                name,
                plan,
                deadline,
                "systemd-tmpfiles",
                &["--clean".to_string()],
            )
            .await,
        );
    }

    // nix_gc
    let name = "nix_gc";
    match plan.nix_gc_older_than_days {
        None => steps.push(skipped(name, "not configured (nix_gc_older_than)")),
        Some(_) if !on_mount(NIX_STORE) => {
            steps.push(skipped(name, &format!("{NIX_STORE} is not on {mount}")))
        }
        Some(days) => {
            let args = ["--delete-older-than".to_string(), format!("{days}d")];
            steps.push(command_step(name, plan, deadline, "nix-collect-garbage", &args).await);
        }
    }

    // clean_path, once per entry
    for rule in &plan.clean {
        steps.push(clean_step(plan, rule, deadline).await);
    }

    let after = measure(&plan.mount).ok();
    let bytes_freed = freed(before.as_ref(), after.as_ref());
    Report {
        instance: plan.instance.clone(),
        mount,
        invocation_id: std::env::var("INVOCATION_ID").unwrap_or_default(),
        started_at,
        finished_at: Utc::now(),
        before,
        after,
        bytes_freed,
        steps,
    }
}

/// Space that came back: available bytes after less before (negative if it grew).
pub fn freed(before: Option<&Measure>, after: Option<&Measure>) -> Option<i64> {
    Some(after?.available_bytes as i64 - before?.available_bytes as i64)
}

fn skipped(name: &str, why: &str) -> StepRecord {
    StepTimer::start(name).finish("skipped", json!({"summary": why}))
}

/// The time a step may take: its own timeout, cut to what is left of the run's.
fn step_budget(plan: &Plan, deadline: Instant) -> Option<Duration> {
    let left = deadline.checked_duration_since(Instant::now())?;
    (!left.is_zero()).then(|| left.min(plan.step_timeout))
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(2000);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

async fn command_step(
    name: &str,
    plan: &Plan,
    deadline: Instant,
    program: &str,
    args: &[String],
) -> StepRecord {
    let timer = StepTimer::start(name);
    let command = format!("{program} {}", args.join(" "));
    let Some(budget) = step_budget(plan, deadline) else {
        return timer.finish(
            "timeout",
            json!({"command": command, "summary": "not started: the run's timeout had passed"}),
        );
    };
    let before = measure(&plan.mount).ok();
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            return timer.finish(
                "failed",
                json!({"command": command, "summary": format!("cannot start {program}: {e}")}),
            );
        }
    };
    let result = tokio::time::timeout(budget, child.wait_with_output()).await;
    let after = measure(&plan.mount).ok();
    let bytes_freed = freed(before.as_ref(), after.as_ref());
    match result {
        Err(_) => timer.finish(
            "timeout",
            json!({"command": command, "bytes_freed": bytes_freed, "timeout_secs": budget.as_secs_f64(),
                   "summary": format!("killed after {}s", budget.as_secs())}),
        ),
        Ok(Err(e)) => timer.finish(
            "failed",
            json!({"command": command, "summary": format!("waiting for {program}: {e}")}),
        ),
        Ok(Ok(out)) => {
            let ok = out.status.success();
            timer.finish(
                if ok { "ok" } else { "failed" },
                json!({
                    "command": command,
                    "exit_status": out.status.code(),
                    "bytes_freed": bytes_freed,
                    "output": tail(if out.stderr.is_empty() { &out.stdout } else { &out.stderr }),
                    "summary": format!("{program} exited {}; {} bytes freed", out.status, bytes_freed.unwrap_or(0)),
                }),
            )
        }
    }
}

async fn clean_step(plan: &Plan, rule: &CleanRule, deadline: Instant) -> StepRecord {
    let timer = StepTimer::start("clean_path");
    let path = rule.path.to_string_lossy().into_owned();
    let base =
        json!({"path": path, "glob": rule.glob, "older_than_secs": rule.older_than.as_secs()});
    let with = |extra: serde_json::Value| {
        let mut d = base.clone();
        if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        d
    };
    let Some(budget) = step_budget(plan, deadline) else {
        return timer.finish(
            "timeout",
            with(json!({"summary": "not started: the run's timeout had passed"})),
        );
    };
    let glob = match glob::Pattern::new(&rule.glob) {
        Ok(g) => g,
        Err(e) => return timer.finish("failed", with(json!({"summary": format!("glob: {e}")}))),
    };
    let before = measure(&plan.mount).ok();
    let mount = plan.mount.clone();
    let dir = rule.path.clone();
    let older_than = rule.older_than;
    let step_deadline = Instant::now() + budget;
    let walked = tokio::task::spawn_blocking(move || {
        let (fd, st) = clean::open_beneath(&mount, &dir)?;
        Ok::<_, CleanError>(clean::clean(
            fd,
            &st,
            &clean::Rule {
                glob: &glob,
                older_than,
                now: SystemTime::now(),
                deadline: step_deadline,
            },
        ))
    })
    .await;
    let after = measure(&plan.mount).ok();
    let bytes_freed = freed(before.as_ref(), after.as_ref());
    match walked {
        Err(e) => timer.finish(
            "failed",
            with(json!({"summary": format!("the walk panicked: {e}")})),
        ),
        Ok(Err(CleanError::Missing(m))) => timer.finish("skipped", with(json!({"summary": m}))),
        Ok(Err(CleanError::Refused(m))) => timer.finish("failed", with(json!({"summary": m}))),
        Ok(Ok(r)) => {
            let result = if r.timed_out {
                "timeout"
            } else if r.error_count > 0 {
                "failed"
            } else {
                "ok"
            };
            let summary = format!(
                "{} file(s) deleted ({} bytes), {} newer kept, {} symlink(s) not followed, {} error(s){}",
                r.files_deleted,
                r.bytes_deleted,
                r.files_kept_newer,
                r.symlinks_skipped,
                r.error_count,
                if r.timed_out {
                    ", stopped at the step's timeout"
                } else {
                    ""
                }
            );
            let mut d = with(serde_json::to_value(&r).unwrap_or_default());
            d["bytes_freed"] = json!(bytes_freed);
            d["summary"] = json!(summary);
            timer.finish(result, d)
        }
    }
}

/// Writes the report where the agent reads it: a temporary file in the same
/// root-only directory, then a rename, so the agent never sees half of it.
pub fn write_report(report: &Report) -> std::io::Result<PathBuf> {
    write_report_in(Path::new(REPORT_DIR), report)
}

pub fn write_report_in(dir: &Path, report: &Report) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.json", report.instance));
    let tmp = dir.join(format!(".{}.json.tmp", report.instance));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Whether every step ended ok or was skipped.
pub fn all_ok(report: &Report) -> bool {
    report
        .steps
        .iter()
        .all(|s| s.result == "ok" || s.result == "skipped")
}

/// The one line printed at the end (and so in the unit's journal).
pub fn summary(report: &Report) -> String {
    let steps: Vec<String> = report
        .steps
        .iter()
        .map(|s| format!("{}={}", s.name, s.result))
        .collect();
    format!(
        "free-disk {}: {} bytes freed, used {} -> {}; steps: {}",
        report.mount,
        report.bytes_freed.unwrap_or(0),
        report
            .before
            .as_ref()
            .map_or("?".into(), |m| format!("{:.3}", m.used_ratio)),
        report
            .after
            .as_ref()
            .map_or("?".into(), |m| format!("{:.3}", m.used_ratio)),
        steps.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn plan(mount: &Path) -> Plan {
        Plan {
            mount: mount.to_path_buf(),
            instance: "srv-data".into(),
            timeout: Duration::from_secs(30),
            step_timeout: Duration::from_secs(10),
            journal_vacuum_size: Some("500M".into()),
            journal_vacuum_time: None,
            tmpfiles_clean: true,
            nix_gc_older_than_days: None,
            clean: vec![
                CleanRule {
                    path: mount.join("cache"),
                    glob: "*".into(),
                    older_than: Duration::from_secs(1800),
                },
                CleanRule {
                    path: mount.join("absent"),
                    glob: "*".into(),
                    older_than: Duration::from_secs(1800),
                },
            ],
        }
    }

    #[tokio::test]
    async fn a_run_deletes_what_the_plan_says_and_reports_every_step() {
        // /dev/shm (a tmpfs) holds no journal; steps that do not concern the
        // mount are skipped with the reason.
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let m = t.path();
        fs::create_dir_all(m.join("cache")).unwrap();
        fs::write(m.join("cache/old"), vec![0u8; 4096]).unwrap();
        fs::File::options()
            .write(true)
            .open(m.join("cache/old"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        fs::write(m.join("cache/new"), b"x").unwrap();
        let mut p = plan(m);
        p.tmpfiles_clean = false;
        let r = run(&p).await;
        let names: Vec<(&str, &str)> = r
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.result.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("journal_vacuum", "skipped"),
                ("tmpfiles_clean", "skipped"),
                ("nix_gc", "skipped"),
                ("clean_path", "ok"),
                ("clean_path", "skipped"),
            ],
            "{r:?}"
        );
        assert_eq!(r.steps[3].detail["files_deleted"], 1);
        assert_eq!(r.steps[3].detail["bytes_deleted"], 4096);
        assert!(!m.join("cache/old").exists());
        assert!(m.join("cache/new").exists());
        assert!(all_ok(&r));
        assert!(r.before.is_some() && r.after.is_some());

        let out = tempfile::tempdir().unwrap();
        let path = write_report_in(out.path(), &r).unwrap();
        let back: Report = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(summary(&r).contains("clean_path=ok"));
    }

    #[tokio::test]
    async fn a_step_is_killed_at_its_timeout() {
        let t = tempfile::tempdir().unwrap();
        let mut p = plan(t.path());
        p.step_timeout = Duration::from_millis(200);
        let s = command_step(
            "slow",
            &p,
            Instant::now() + p.timeout,
            "sleep",
            &["5".into()],
        )
        .await;
        assert_eq!(s.result, "timeout", "{s:?}");
        assert!(s.duration_ms < 3000);
        let s = command_step("gone", &p, Instant::now(), "sleep", &["5".into()]).await;
        assert_eq!(s.result, "timeout");
        let s = command_step("bad", &p, Instant::now() + p.timeout, "false", &[]).await;
        assert_eq!(
            (s.result.as_str(), &s.detail["exit_status"]),
            ("failed", &json!(1))
        );
    }
}
