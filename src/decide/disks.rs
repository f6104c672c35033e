//! The checks on disks: `disk_space` and `disk_inodes` (levels after Netdata:
//! warning above 90 % until below 80 %, critical above 98 % until below 90 %)
//! and `disk_fill_rate` (the predicted time to full, once the disk is past a
//! floor).
//!
//! Each check keeps, per mount, since when the mount has been at or above each
//! level; a level fires once it has held for `hold`, and is left as soon as
//! the mount falls below its clearing value (hysteresis), so the fired level
//! never exceeds what is observed. The instant a hold ends is the check's
//! deadline, exactly.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::checks::Check;
use super::incident::{Condition, chrono_dur};
use crate::watch::disks::DiskObservation;

pub const CHECK_DISK_SPACE: &str = "disk_space";
pub const CHECK_DISK_INODES: &str = "disk_inodes";
pub const CHECK_DISK_FILL_RATE: &str = "disk_fill_rate";

/// A fill-rate level is left only once the time to full is this many times
/// its threshold (or the prediction is gone, or the disk below the floor).
pub const FILL_CLEAR_FACTOR: f64 = 1.5;

/// Is this check about disks (so its target is a mount point)?
pub fn is_disk_check(check: &str) -> bool {
    [CHECK_DISK_SPACE, CHECK_DISK_INODES, CHECK_DISK_FILL_RATE].contains(&check)
}

/// Ratio thresholds: a level is entered above `*_above` and left below `*_clear`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    pub warn_above: f64,
    pub warn_clear: f64,
    pub critical_above: f64,
    pub critical_clear: f64,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            warn_above: 0.90,
            warn_clear: 0.80,
            critical_above: 0.98,
            critical_clear: 0.90,
        }
    }
}

/// One mount's thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskThresholds {
    pub space: Levels,
    pub inodes: Levels,
    /// How long a level must hold before it fires.
    pub hold: Duration,
    /// `disk_fill_rate` is quiet below this used ratio.
    pub fill_floor: f64,
    pub fill_warn_within: Duration,
    pub fill_critical_within: Duration,
    /// RB-DISK-001 may free space on this mount (`remediate = true`).
    pub remediate: bool,
}

impl Default for DiskThresholds {
    fn default() -> Self {
        DiskThresholds {
            space: Levels::default(),
            inodes: Levels::default(),
            hold: Duration::from_secs(60),
            fill_floor: 0.5,
            fill_warn_within: Duration::from_secs(24 * 3600),
            fill_critical_within: Duration::from_secs(2 * 3600),
            remediate: false,
        }
    }
}

/// The thresholds of every mount: those configured for it, else the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskRules {
    pub default: DiskThresholds,
    pub mounts: HashMap<String, DiskThresholds>,
}

impl DiskRules {
    pub fn for_mount(&self, mount: &str) -> &DiskThresholds {
        self.mounts.get(mount).unwrap_or(&self.default)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskLevel {
    Ok,
    Warning,
    Critical,
}

impl DiskLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskLevel::Ok => "ok",
            DiskLevel::Warning => "warning",
            DiskLevel::Critical => "critical",
        }
    }
}

/// The level a ratio is at, given the level it was at (hysteresis).
pub fn ratio_level(prev: DiskLevel, r: f64, l: &Levels) -> DiskLevel {
    if r > l.critical_above || (prev == DiskLevel::Critical && r >= l.critical_clear) {
        DiskLevel::Critical
    } else if r > l.warn_above || (prev >= DiskLevel::Warning && r >= l.warn_clear) {
        DiskLevel::Warning
    } else {
        DiskLevel::Ok
    }
}

/// The level of a mount's predicted time to full, given the level it was at.
pub fn fill_level(prev: DiskLevel, obs: &DiskObservation, t: &DiskThresholds) -> DiskLevel {
    let Some(ttf) = obs.seconds_to_full else {
        return DiskLevel::Ok;
    };
    if obs.used_ratio < t.fill_floor {
        return DiskLevel::Ok;
    }
    let crit = t.fill_critical_within.as_secs_f64();
    let warn = t.fill_warn_within.as_secs_f64();
    if ttf < crit || (prev == DiskLevel::Critical && ttf < crit * FILL_CLEAR_FACTOR) {
        DiskLevel::Critical
    } else if ttf < warn || (prev >= DiskLevel::Warning && ttf < warn * FILL_CLEAR_FACTOR) {
        DiskLevel::Warning
    } else {
        DiskLevel::Ok
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Inodes,
    FillRate,
}

/// One mount as a check sees it.
#[derive(Debug, Clone)]
struct Track {
    /// The level observed (with hysteresis), not yet held.
    raw: DiskLevel,
    /// Since when the mount has been at or above warning, and critical.
    since: [Option<DateTime<Utc>>; 2],
    /// The level that fired (held for `hold`).
    fired: DiskLevel,
    hold: Duration,
    last: DiskObservation,
}

impl Track {
    /// The highest level held for `hold` by `now`.
    fn held(&self, now: DateTime<Utc>) -> DiskLevel {
        let hold = chrono_dur(self.hold);
        match self.since {
            [_, Some(c)] if now - c >= hold => DiskLevel::Critical,
            [Some(w), _] if now - w >= hold => DiskLevel::Warning,
            _ => DiskLevel::Ok,
        }
    }

    /// When a level above the fired one completes its hold.
    fn deadline(&self) -> Option<DateTime<Utc>> {
        let hold = chrono_dur(self.hold);
        [DiskLevel::Warning, DiskLevel::Critical]
            .into_iter()
            .zip(self.since)
            .filter(|(level, _)| *level > self.fired)
            .filter_map(|(_, since)| since.map(|s| s + hold))
            .min()
    }
}

/// `disk_space`, `disk_inodes` or `disk_fill_rate`: one per check, each with
/// its own tracks.
pub struct DiskCheck {
    kind: Kind,
    rules: DiskRules,
    tracks: HashMap<String, Track>,
}

impl DiskCheck {
    pub fn space(rules: DiskRules) -> DiskCheck {
        DiskCheck::new(Kind::Space, rules)
    }
    pub fn inodes(rules: DiskRules) -> DiskCheck {
        DiskCheck::new(Kind::Inodes, rules)
    }
    pub fn fill_rate(rules: DiskRules) -> DiskCheck {
        DiskCheck::new(Kind::FillRate, rules)
    }

    fn new(kind: Kind, rules: DiskRules) -> DiskCheck {
        DiskCheck {
            kind,
            rules,
            tracks: HashMap::new(),
        }
    }

    fn raw_level(&self, prev: DiskLevel, obs: &DiskObservation) -> Option<DiskLevel> {
        let t = self.rules.for_mount(&obs.mount);
        Some(match self.kind {
            Kind::Space => ratio_level(prev, obs.used_ratio, &t.space),
            Kind::Inodes => ratio_level(prev, obs.inodes_used_ratio?, &t.inodes),
            Kind::FillRate => fill_level(prev, obs, t),
        })
    }

    fn condition(&self, track: &Track, at: DateTime<Utc>) -> Condition {
        let obs = &track.last;
        let level = track.fired;
        let pct = |r: f64| format!("{:.1} %", r * 100.0);
        let t = self.rules.for_mount(&obs.mount);
        let reason = match (self.kind, level) {
            (Kind::Space, DiskLevel::Ok) => {
                format!("{} is {} full", obs.mount, pct(obs.used_ratio))
            }
            (Kind::Space, l) => format!(
                "{} is {} full: {} (above {} for {}s)",
                obs.mount,
                pct(obs.used_ratio),
                l.as_str(),
                pct(if l == DiskLevel::Critical {
                    t.space.critical_above
                } else {
                    t.space.warn_above
                }),
                t.hold.as_secs()
            ),
            (Kind::Inodes, l) => format!(
                "{} has used {} of its inodes{}",
                obs.mount,
                pct(obs.inodes_used_ratio.unwrap_or(0.0)),
                if l == DiskLevel::Ok {
                    String::new()
                } else {
                    format!(": {}", l.as_str())
                }
            ),
            (Kind::FillRate, DiskLevel::Ok) => match obs.seconds_to_full {
                Some(s) => format!(
                    "{} ({} full) would be full in {:.1} h at the last hour's rate",
                    obs.mount,
                    pct(obs.used_ratio),
                    s / 3600.0
                ),
                None => format!("{} is not filling up", obs.mount),
            },
            (Kind::FillRate, l) => format!(
                "{} ({} full) fills at {:.0} B/s: full in {:.1} h ({}: under {} h)",
                obs.mount,
                pct(obs.used_ratio),
                obs.fill_rate_bytes_per_second.unwrap_or(0.0),
                obs.seconds_to_full.unwrap_or(0.0) / 3600.0,
                l.as_str(),
                if l == DiskLevel::Critical {
                    t.fill_critical_within.as_secs_f64() / 3600.0
                } else {
                    t.fill_warn_within.as_secs_f64() / 3600.0
                }
            ),
        };
        let mut observation = serde_json::to_value(obs).unwrap_or_default();
        if let Some(o) = observation.as_object_mut() {
            o.insert("level".into(), level.as_str().into());
        }
        Condition {
            check: self.name().into(),
            target: obs.mount.clone(),
            failing: level > DiskLevel::Ok,
            at,
            severity: if level == DiskLevel::Critical {
                "critical"
            } else {
                "warning"
            }
            .into(),
            reason,
            observation,
            induced: false,
        }
    }
}

impl Check<DiskObservation> for DiskCheck {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Space => CHECK_DISK_SPACE,
            Kind::Inodes => CHECK_DISK_INODES,
            Kind::FillRate => CHECK_DISK_FILL_RATE,
        }
    }

    fn observe(&mut self, obs: &DiskObservation) -> Option<Condition> {
        let prev = self.tracks.get(&obs.mount).map_or(DiskLevel::Ok, |t| t.raw);
        let raw = self.raw_level(prev, obs)?;
        let hold = self.rules.for_mount(&obs.mount).hold;
        let at = obs.seen_at;
        let track = self.tracks.entry(obs.mount.clone()).or_insert(Track {
            raw,
            since: [None, None],
            fired: DiskLevel::Ok,
            hold,
            last: obs.clone(),
        });
        track.raw = raw;
        track.hold = hold;
        track.last = obs.clone();
        for (i, level) in [DiskLevel::Warning, DiskLevel::Critical]
            .into_iter()
            .enumerate()
        {
            if raw < level {
                track.since[i] = None;
            } else if track.since[i].is_none() {
                track.since[i] = Some(at);
            }
        }
        track.fired = track.held(at);
        // Above a level that has not held yet says nothing either way: it is not
        // a failure yet, and not a pass that would resolve an incident still open
        // (after a restart the tracks begin again while the disk is still full).
        if track.fired == DiskLevel::Ok && raw != DiskLevel::Ok {
            return None;
        }
        let track = track.clone();
        Some(self.condition(&track, at))
    }

    fn tick(&mut self, now: DateTime<Utc>) -> Vec<Condition> {
        let mut changed = Vec::new();
        for track in self.tracks.values_mut() {
            let held = track.held(now);
            if held != track.fired {
                track.fired = held;
                changed.push(track.clone());
            }
        }
        changed.sort_by(|a, b| a.last.mount.cmp(&b.last.mount));
        changed.iter().map(|t| self.condition(t, now)).collect()
    }

    fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.tracks.values().filter_map(Track::deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn disk(at: i64, mount: &str, used_ratio: f64) -> DiskObservation {
        let used = (used_ratio * 1000.0) as u64;
        DiskObservation {
            mount: mount.into(),
            device: "8:1".into(),
            fs_type: "ext4".into(),
            source: "/dev/sda1".into(),
            used_bytes: used,
            available_bytes: 1000 - used,
            used_ratio,
            inodes_used: Some(10),
            inodes_available: Some(90),
            inodes_used_ratio: Some(0.1),
            fill_rate_bytes_per_second: None,
            seconds_to_full: None,
            seen_at: t(at),
        }
    }

    #[test]
    fn ratio_levels_have_hysteresis() {
        use DiskLevel::*;
        let l = Levels::default();
        // (level before, ratio, level after)
        let cases = [
            (Ok, 0.50, Ok),
            (Ok, 0.90, Ok),
            (Ok, 0.905, Warning),
            (Ok, 0.99, Critical),
            (Warning, 0.85, Warning),
            (Warning, 0.80, Warning),
            (Warning, 0.79, Ok),
            (Warning, 0.98, Warning),
            (Warning, 0.981, Critical),
            (Critical, 0.95, Critical),
            (Critical, 0.90, Critical),
            (Critical, 0.89, Warning),
            (Critical, 0.79, Ok),
            (Ok, 0.85, Ok),
        ];
        for (prev, r, want) in cases {
            assert_eq!(ratio_level(prev, r, &l), want, "{prev:?} at {r}");
        }
    }

    #[test]
    fn fill_levels_need_the_floor_and_a_prediction() {
        use DiskLevel::*;
        let th = DiskThresholds::default();
        let h = 3600.0;
        let with = |ratio: f64, ttf: Option<f64>| DiskObservation {
            seconds_to_full: ttf,
            fill_rate_bytes_per_second: ttf.map(|_| 1.0),
            ..disk(0, "/", ratio)
        };
        let cases = [
            (Ok, 0.6, None, Ok),
            (Ok, 0.6, Some(30.0 * h), Ok),
            (Ok, 0.6, Some(20.0 * h), Warning),
            (Ok, 0.6, Some(1.0 * h), Critical),
            (Ok, 0.3, Some(1.0 * h), Ok),
            (Warning, 0.6, Some(30.0 * h), Warning),
            (Warning, 0.6, Some(37.0 * h), Ok),
            (Critical, 0.6, Some(2.5 * h), Critical),
            (Critical, 0.6, Some(3.5 * h), Warning),
            (Critical, 0.6, None, Ok),
        ];
        for (prev, ratio, ttf, want) in cases {
            assert_eq!(
                fill_level(prev, &with(ratio, ttf), &th),
                want,
                "{prev:?} {ratio} {ttf:?}"
            );
        }
    }

    #[test]
    fn a_level_fires_after_its_hold_and_the_deadline_is_exact() {
        let mut c = DiskCheck::space(DiskRules::default());
        let obs = |c: &mut DiskCheck, at, r| {
            let cond = c.observe(&disk(at, "/", r)).unwrap();
            (cond.failing, cond.severity, cond.at)
        };
        assert!(!obs(&mut c, 0, 0.5).0);
        assert_eq!(c.next_deadline(), None, "nothing pending");
        assert!(
            c.observe(&disk(10, "/", 0.95)).is_none(),
            "warning, not held yet: neither failing nor passing"
        );
        assert_eq!(c.next_deadline(), Some(t(70)));
        assert!(
            c.observe(&disk(20, "/", 0.85)).is_none(),
            "still above the clearing value"
        );
        assert_eq!(c.next_deadline(), Some(t(70)), "the hold goes on");
        assert!(c.tick(t(69)).is_empty());
        let conds = c.tick(t(70));
        assert_eq!(conds.len(), 1);
        assert!(conds[0].failing);
        assert_eq!(conds[0].severity, "warning");
        assert_eq!(conds[0].observation["level"], "warning");
        assert_eq!(c.next_deadline(), None, "fired: nothing pending");
        assert!(c.tick(t(80)).is_empty(), "a tick changes nothing more");
        // critical
        assert_eq!(obs(&mut c, 100, 0.99), (true, "warning".into(), t(100)));
        assert_eq!(c.next_deadline(), Some(t(160)));
        assert_eq!(obs(&mut c, 160, 0.99), (true, "critical".into(), t(160)));
        assert_eq!(c.next_deadline(), None);
        // down to warning at once below the critical clearing value, then ok
        assert_eq!(obs(&mut c, 200, 0.91), (true, "critical".into(), t(200)));
        assert_eq!(obs(&mut c, 210, 0.89), (true, "warning".into(), t(210)));
        assert_eq!(c.next_deadline(), None);
        assert!(!obs(&mut c, 220, 0.79).0);
        // a blip shorter than the hold never fires
        assert!(c.observe(&disk(300, "/", 0.99)).is_none());
        assert_eq!(c.next_deadline(), Some(t(360)));
        assert!(!obs(&mut c, 310, 0.5).0);
        assert_eq!(c.next_deadline(), None);
        assert!(c.tick(t(360)).is_empty());
    }

    /// After a restart the tracks begin again: a disk still full must not look
    /// like a pass (which would resolve the incident still open) during the hold.
    #[test]
    fn a_full_disk_seen_first_is_not_a_pass() {
        let mut c = DiskCheck::space(DiskRules::default());
        assert!(c.observe(&disk(0, "/", 0.95)).is_none());
        assert!(
            c.observe(&disk(30, "/", 0.85)).is_none(),
            "hysteresis holds it"
        );
        assert!(c.tick(t(60))[0].failing);
        let mut c = DiskCheck::space(DiskRules::default());
        assert!(!c.observe(&disk(0, "/", 0.5)).unwrap().failing);
    }

    #[test]
    fn thresholds_per_mount_and_a_zero_hold() {
        let mut rules = DiskRules::default();
        rules.mounts.insert(
            "/var".into(),
            DiskThresholds {
                hold: Duration::ZERO,
                space: Levels {
                    warn_above: 0.5,
                    warn_clear: 0.4,
                    critical_above: 0.7,
                    critical_clear: 0.6,
                },
                ..DiskThresholds::default()
            },
        );
        let mut c = DiskCheck::space(rules);
        let var = c.observe(&disk(0, "/var", 0.75)).unwrap();
        assert!(var.failing);
        assert_eq!(var.severity, "critical");
        assert_eq!(var.target, "/var");
        assert!(!c.observe(&disk(0, "/", 0.75)).unwrap().failing);
        assert_eq!(c.next_deadline(), None, "/ is below its warning level");
    }

    #[test]
    fn inodes_only_where_the_file_system_has_them() {
        let mut c = DiskCheck::inodes(DiskRules::default());
        let mut d = disk(0, "/", 0.1);
        d.inodes_used_ratio = Some(0.99);
        assert!(c.observe(&d).is_none(), "not held yet");
        assert_eq!(c.next_deadline(), Some(t(60)));
        let cond = &c.tick(t(60))[0];
        assert_eq!(cond.check, "disk_inodes");
        assert!(cond.failing);
        d.inodes_used_ratio = None;
        assert!(c.observe(&d).is_none(), "no inodes: not evaluated");
    }

    #[test]
    fn fill_rate_fires_with_its_figures() {
        let mut c = DiskCheck::fill_rate(DiskRules::default());
        let mut d = disk(0, "/", 0.6);
        d.fill_rate_bytes_per_second = Some(1e6);
        d.seconds_to_full = Some(3600.0);
        assert!(c.observe(&d).is_none(), "not held yet");
        d.seen_at = t(60);
        let cond = c.observe(&d).unwrap();
        assert!(cond.failing);
        assert_eq!(cond.severity, "critical");
        assert_eq!(cond.observation["seconds_to_full"], 3600.0);
        assert_eq!(cond.observation["fill_rate_bytes_per_second"], 1e6);
        assert!(cond.reason.contains("full in 1.0 h"), "{}", cond.reason);
        // a growing but nearly empty disk is quiet
        let mut quiet = DiskCheck::fill_rate(DiskRules::default());
        let mut d = disk(0, "/srv", 0.1);
        d.seconds_to_full = Some(60.0);
        quiet.observe(&d);
        assert_eq!(quiet.next_deadline(), None);
    }
}
