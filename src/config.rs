//! The agent's TOML configuration: schema, defaults, and validation whose every
//! error names the file, the line and the key.
//!
//! Unknown keys are refused (`deny_unknown_fields` everywhere): a typo in a
//! safety setting such as `remediate` must stop the agent, not be ignored.
//! Each error's line comes from the parsed document's own spans, looked up by
//! the key's full path, so two sections with a key of the same name are told
//! apart. The result is not handed around whole: each component gets the
//! settings it needs (`agent_settings`, `unit_watch`, `registry`, ...).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::act::{self, Runbook};
use crate::decide::agent::AgentSettings;
use crate::decide::disks::{
    CHECK_DISK_FILL_RATE, CHECK_DISK_INODES, CHECK_DISK_SPACE, DiskRules, DiskThresholds, Levels,
};
use crate::decide::incident::EngineConfig;
use crate::decide::limits::Limits;
use crate::decide::policy::Answer;
use crate::decide::units::{CHECK_CRASH_LOOP, CHECK_UNIT_FAILED};
use crate::units::{UnitPattern, UnitRule, UnitRules};
use crate::watch::disks::DiskWatchSettings;
use crate::watch::units::UnitWatchSettings;

/// Where the packaged unit points the agent.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/msp-agent/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML parser's message already carries line, column and key.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}:{line}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub watch: WatchConfig,
    #[serde(default)]
    pub incidents: IncidentsConfig,
    #[serde(default)]
    pub runbooks: RunbooksConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub evidence: crate::prove::EvidenceConfig,
    /// Which answer each check gets: a runbook ID, "escalate" or "none".
    #[serde(default)]
    pub remediation: BTreeMap<String, String>,
    /// The watch rules, compiled once by validation.
    #[serde(skip)]
    rules: UnitRules,
    /// The disk thresholds, merged with the defaults by validation.
    #[serde(skip)]
    disk_rules: DiskRules,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint; the empty string turns it off.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9465".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub dry_run: bool,
    /// Defaults to the kernel's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// How often watched state is re-read in full, to repair anything a lost signal hid.
    #[serde(default = "default_reconcile", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How long SIGTERM waits for a runbook in flight before recording it as interrupted.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often the watched disks are sampled.
    #[serde(default = "default_disk_interval", with = "humantime_serde")]
    pub disk_interval: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: default_state_dir(),
            dry_run: false,
            hostname: None,
            reconcile_interval: default_reconcile(),
            shutdown_grace: default_shutdown_grace(),
            disk_interval: default_disk_interval(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/msp-agent")
}
fn default_reconcile() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_disk_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    #[serde(default = "default_units")]
    pub units: Vec<UnitRuleConfig>,
    /// The watched mounts; absent: every real mount, with the default thresholds.
    #[serde(default)]
    pub disks: Option<Vec<DiskRuleConfig>>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            units: default_units(),
            disks: None,
        }
    }
}

/// One watched mount; every threshold left out takes its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRuleConfig {
    /// The mount point, e.g. `/` or `/var/lib/postgresql`.
    pub path: String,
    pub warn_above: Option<f64>,
    pub warn_clear: Option<f64>,
    pub critical_above: Option<f64>,
    pub critical_clear: Option<f64>,
    pub inodes_warn_above: Option<f64>,
    pub inodes_warn_clear: Option<f64>,
    pub inodes_critical_above: Option<f64>,
    pub inodes_critical_clear: Option<f64>,
    /// How long a level must hold before it fires.
    #[serde(default, with = "humantime_serde")]
    pub hold: Option<Duration>,
    /// `disk_fill_rate` stays quiet below this used ratio.
    pub fill_floor: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub fill_warn_within: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub fill_critical_within: Option<Duration>,
    /// RB-DISK-001 may free space on this mount (through its helper unit).
    #[serde(default)]
    pub remediate: bool,
    /// What the helper may delete on this mount, besides journal vacuum and tmpfiles.
    #[serde(default)]
    pub clean: Vec<CleanConfig>,
}

/// One `[[watch.disks.clean]]`: old files below a directory of the mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanConfig {
    /// A directory on the mount, e.g. `/srv/data/cache`.
    pub path: String,
    /// Which file names, e.g. `*.log` (default: all).
    #[serde(default = "default_clean_glob")]
    pub glob: String,
    /// Only files not modified for this long.
    #[serde(with = "humantime_serde")]
    pub older_than: Duration,
}

fn default_clean_glob() -> String {
    "*".to_string()
}

/// A ratio's four thresholds with their keys, merged with the defaults and
/// checked: 0 < clear < level <= 1 and warning <= critical. An error names the
/// key the file set (the one of the pair that is out of order).
fn merge_levels(
    key: &str,
    prefix: &str,
    set: [Option<f64>; 4],
    default: Levels,
) -> Result<Levels, (String, String)> {
    let names = [
        "warn_above",
        "warn_clear",
        "critical_above",
        "critical_clear",
    ];
    let defaults = [
        default.warn_above,
        default.warn_clear,
        default.critical_above,
        default.critical_clear,
    ];
    let v: Vec<f64> = (0..4).map(|i| set[i].unwrap_or(defaults[i])).collect();
    let k = |i: usize| format!("{key}.{prefix}{}", names[i]);
    for (i, x) in v.iter().enumerate() {
        if !(*x > 0.0 && *x <= 1.0) {
            return Err((k(i), format!("{x} is not a ratio in (0, 1] (0.9 is 90 %)")));
        }
    }
    // (lower, higher): lower must be below higher
    for (lo, hi) in [(1, 0), (3, 2), (0, 2)] {
        let ok = if lo == 0 {
            v[lo] <= v[hi]
        } else {
            v[lo] < v[hi]
        };
        if !ok {
            // blame the key the file set; the later one if both were
            let (blame, other) = if set[hi].is_some() && set[lo].is_none() {
                (hi, lo)
            } else {
                (lo, hi)
            };
            let rel = if blame == lo { "below" } else { "above" };
            let strict = if lo == 0 { "" } else { "strictly " };
            return Err((
                k(blame),
                format!(
                    "{} must be {strict}{rel} {}{} ({})",
                    v[blame], prefix, names[other], v[other]
                ),
            ));
        }
    }
    Ok(Levels {
        warn_above: v[0],
        warn_clear: v[1],
        critical_above: v[2],
        critical_clear: v[3],
    })
}

/// The embedded default: every unit is watched, none is remediated.
fn default_units() -> Vec<UnitRuleConfig> {
    vec![UnitRuleConfig {
        pattern: "*".to_string(),
        remediate: false,
        expect_active: false,
    }]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitRuleConfig {
    /// A unit name or a glob (`*`, `?`, `[...]`).
    pub pattern: String,
    /// The check's runbook (RB-SERVICE-001 for `unit_failed`) may act on the unit.
    #[serde(default)]
    pub remediate: bool,
    /// Also open an incident when the unit is inactive without having failed.
    #[serde(default)]
    pub expect_active: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsConfig {
    #[serde(default = "default_flap_window", with = "humantime_serde")]
    pub flap_window: Duration,
    #[serde(default = "default_flap_threshold")]
    pub flap_threshold: u32,
    /// A failing check must pass this long before its incident resolves.
    #[serde(default = "default_resolve_hold", with = "humantime_serde")]
    pub resolve_hold: Duration,
    #[serde(default = "default_crash_loop_restarts")]
    pub crash_loop_restarts: u32,
    #[serde(default = "default_crash_loop_window", with = "humantime_serde")]
    pub crash_loop_window: Duration,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig {
            flap_window: default_flap_window(),
            flap_threshold: default_flap_threshold(),
            resolve_hold: default_resolve_hold(),
            crash_loop_restarts: default_crash_loop_restarts(),
            crash_loop_window: default_crash_loop_window(),
        }
    }
}

fn default_flap_window() -> Duration {
    Duration::from_secs(600)
}
fn default_flap_threshold() -> u32 {
    6
}
fn default_resolve_hold() -> Duration {
    Duration::from_secs(10)
}
fn default_crash_loop_restarts() -> u32 {
    3
}
fn default_crash_loop_window() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunbooksConfig {
    #[serde(default)]
    pub service_restart: ServiceRestartConfig,
    #[serde(default)]
    pub free_disk: FreeDiskConfig,
}

/// `[runbooks.free_disk]`: RB-DISK-001's steps, timeouts and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeDiskConfig {
    /// The helper's whole run.
    #[serde(default = "default_free_disk_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Each step of it (cut to what is left of the run's timeout).
    #[serde(default = "default_step_timeout", with = "humantime_serde")]
    pub step_timeout: Duration,
    /// `journalctl --vacuum-size=`, e.g. `500M`; `""` leaves the journal alone.
    #[serde(default = "default_vacuum_size")]
    pub journal_vacuum_size: String,
    /// `journalctl --vacuum-time=` as well, e.g. `30d`.
    #[serde(default, with = "humantime_serde")]
    pub journal_vacuum_time: Option<Duration>,
    /// `systemd-tmpfiles --clean` when /tmp or /var/tmp is on the mount.
    #[serde(default = "default_true")]
    pub tmpfiles_clean: bool,
    /// `nix-collect-garbage --delete-older-than` (whole days) when /nix/store is on the mount.
    #[serde(default, with = "humantime_serde")]
    pub nix_gc_older_than: Option<Duration>,
    #[serde(default = "default_free_disk_max_runs")]
    pub max_runs: u32,
    #[serde(default = "default_free_disk_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(default = "default_free_disk_min_interval", with = "humantime_serde")]
    pub min_interval: Duration,
}

impl Default for FreeDiskConfig {
    fn default() -> Self {
        FreeDiskConfig {
            timeout: default_free_disk_timeout(),
            step_timeout: default_step_timeout(),
            journal_vacuum_size: default_vacuum_size(),
            journal_vacuum_time: None,
            tmpfiles_clean: true,
            nix_gc_older_than: None,
            max_runs: default_free_disk_max_runs(),
            window: default_free_disk_window(),
            min_interval: default_free_disk_min_interval(),
        }
    }
}

fn default_free_disk_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_step_timeout() -> Duration {
    Duration::from_secs(2 * 60)
}
fn default_vacuum_size() -> String {
    "500M".to_string()
}
fn default_true() -> bool {
    true
}
fn default_free_disk_max_runs() -> u32 {
    1
}
fn default_free_disk_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_free_disk_min_interval() -> Duration {
    Duration::from_secs(10 * 60)
}

/// A size as journalctl reads it: digits and an optional K, M, G, T, P or E.
fn is_journal_size(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'P', 'E']);
    !digits.is_empty()
        && s.len() - digits.len() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

/// An absolute path with no empty, `.` or `..` component and no trailing slash.
fn is_plain_absolute(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && !p.ends_with('/')
            && p[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// Whether `path` is `mount` or below it.
fn is_within(path: &str, mount: &str) -> bool {
    mount == "/" || path == mount || path.strip_prefix(mount).is_some_and(|r| r.starts_with('/'))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRestartConfig {
    #[serde(default = "default_job_timeout", with = "humantime_serde")]
    pub job_timeout: Duration,
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    #[serde(default = "default_max_runs")]
    pub max_runs: u32,
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(default = "default_min_interval", with = "humantime_serde")]
    pub min_interval: Duration,
}

impl Default for ServiceRestartConfig {
    fn default() -> Self {
        ServiceRestartConfig {
            job_timeout: default_job_timeout(),
            settle: default_settle(),
            max_runs: default_max_runs(),
            window: default_window(),
            min_interval: default_min_interval(),
        }
    }
}

fn default_job_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_settle() -> Duration {
    Duration::from_secs(10)
}
fn default_max_runs() -> u32 {
    3
}
fn default_window() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_min_interval() -> Duration {
    Duration::from_secs(5 * 60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_global_per_hour")]
    pub global_per_hour: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            global_per_hour: default_global_per_hour(),
        }
    }
}

fn default_global_per_hour() -> u32 {
    20
}

/// The answers when `[remediation]` does not say otherwise.
const DEFAULT_ANSWERS: &[(&str, &str)] = &[
    (CHECK_UNIT_FAILED, act::service_restart::RUNBOOK_ID),
    // systemd is already restarting it; another restart would not help.
    (CHECK_CRASH_LOOP, "escalate"),
    // On a mount with `remediate = true`; elsewhere the incident is recorded.
    (CHECK_DISK_SPACE, act::free_disk::RUNBOOK_ID),
    (CHECK_DISK_INODES, act::free_disk::RUNBOOK_ID),
    // A prediction: nothing is deleted before the disk is actually full.
    (CHECK_DISK_FILL_RATE, "none"),
];

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// The configuration the agent runs on when no file exists.
    pub fn embedded_default() -> Config {
        Config::parse("", Path::new("embedded default")).expect("the embedded default is valid")
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let doc = text.parse::<toml_edit::ImDocument<String>>().ok();
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: doc.as_ref().map_or(1, |d| line_of_key(d, key)),
            key: key.to_string(),
            message,
        };
        config.rules = config
            .validate()
            .map_err(|(key, message)| invalid(&key, message))?;
        config.disk_rules = config
            .validate_disks()
            .map_err(|(key, message)| invalid(&key, message))?;
        Ok(config)
    }

    /// Checks `[[watch.disks]]`; the thresholds of each mount, merged with the defaults.
    fn validate_disks(&self) -> Result<DiskRules, (String, String)> {
        let mut rules = DiskRules::default();
        let d = DiskThresholds::default();
        for (i, m) in self.watch.disks.iter().flatten().enumerate() {
            let key = format!("watch.disks[{i}]");
            let p = &m.path;
            if !is_plain_absolute(p) {
                return Err((
                    format!("{key}.path"),
                    format!("`{p}` is not a mount point such as / or /var/lib/postgresql"),
                ));
            }
            if rules.mounts.contains_key(p) {
                return Err((format!("{key}.path"), format!("`{p}` is listed twice")));
            }
            let space = merge_levels(
                &key,
                "",
                [
                    m.warn_above,
                    m.warn_clear,
                    m.critical_above,
                    m.critical_clear,
                ],
                d.space,
            )?;
            let inodes = merge_levels(
                &key,
                "inodes_",
                [
                    m.inodes_warn_above,
                    m.inodes_warn_clear,
                    m.inodes_critical_above,
                    m.inodes_critical_clear,
                ],
                d.inodes,
            )?;
            let fill_floor = m.fill_floor.unwrap_or(d.fill_floor);
            if !(0.0..1.0).contains(&fill_floor) {
                return Err((
                    format!("{key}.fill_floor"),
                    format!("{fill_floor} is not a ratio in [0, 1) (0.5 is 50 %)"),
                ));
            }
            let warn = m.fill_warn_within.unwrap_or(d.fill_warn_within);
            let crit = m.fill_critical_within.unwrap_or(d.fill_critical_within);
            if crit.is_zero() {
                return Err((
                    format!("{key}.fill_critical_within"),
                    "must be longer than 0s".into(),
                ));
            }
            if crit >= warn {
                let blame = if m.fill_warn_within.is_some() && m.fill_critical_within.is_none() {
                    "fill_warn_within"
                } else {
                    "fill_critical_within"
                };
                return Err((
                    format!("{key}.{blame}"),
                    format!(
                        "fill_critical_within ({}) must be shorter than fill_warn_within ({})",
                        humantime::format_duration(crit),
                        humantime::format_duration(warn)
                    ),
                ));
            }
            if !m.clean.is_empty() && !m.remediate {
                return Err((
                    format!("{key}.clean"),
                    "is set but `remediate` is not true: nothing would ever be cleaned".into(),
                ));
            }
            for (j, c) in m.clean.iter().enumerate() {
                let ckey = format!("{key}.clean[{j}]");
                if !is_plain_absolute(&c.path) {
                    return Err((
                        format!("{ckey}.path"),
                        format!(
                            "`{}` is not an absolute path without `.`, `..` or `//`",
                            c.path
                        ),
                    ));
                }
                if !is_within(&c.path, p) {
                    return Err((
                        format!("{ckey}.path"),
                        format!("`{}` is outside the mount {p}", c.path),
                    ));
                }
                if c.glob.is_empty() || c.glob.contains('/') {
                    return Err((
                        format!("{ckey}.glob"),
                        format!("`{}` is not a file-name glob such as *.log", c.glob),
                    ));
                }
                if let Err(e) = glob::Pattern::new(&c.glob) {
                    return Err((format!("{ckey}.glob"), format!("`{}`: {e}", c.glob)));
                }
                if c.older_than.is_zero() {
                    return Err((
                        format!("{ckey}.older_than"),
                        "must be longer than 0s".into(),
                    ));
                }
            }
            rules.mounts.insert(
                p.clone(),
                DiskThresholds {
                    space,
                    inodes,
                    hold: m.hold.unwrap_or(d.hold),
                    fill_floor,
                    fill_warn_within: warn,
                    fill_critical_within: crit,
                    remediate: m.remediate,
                },
            );
        }
        // RB-SERVICE-001 must not be able to start the helper: only RB-DISK-001 does.
        let mut helpers: Vec<String> = vec![
            crate::units::free_disk_unit("/"),
            crate::units::free_disk_unit("/srv/data"),
        ];
        helpers.extend(rules.mounts.keys().map(|m| crate::units::free_disk_unit(m)));
        for (i, u) in self.watch.units.iter().enumerate() {
            if !u.remediate {
                continue;
            }
            let Ok(pattern) = UnitPattern::new(&u.pattern) else {
                continue;
            };
            if let Some(h) = helpers.iter().find(|h| pattern.matches(h)) {
                return Err((
                    format!("watch.units[{i}].pattern"),
                    format!(
                        "`{}` with remediate = true would let RB-SERVICE-001 restart {h}, the free-disk helper; only RB-DISK-001 starts it",
                        u.pattern
                    ),
                ));
            }
        }
        let fd = &self.runbooks.free_disk;
        let k = |name: &str| format!("runbooks.free_disk.{name}");
        for (v, name) in [
            (fd.timeout, "timeout"),
            (fd.step_timeout, "step_timeout"),
            (fd.window, "window"),
        ] {
            if v.is_zero() {
                return Err((k(name), "must be longer than 0s".into()));
            }
        }
        if fd.max_runs == 0 {
            return Err((k("max_runs"), "must be at least 1".into()));
        }
        if !fd.journal_vacuum_size.is_empty() && !is_journal_size(&fd.journal_vacuum_size) {
            return Err((
                k("journal_vacuum_size"),
                format!(
                    "`{}` is not a size such as 500M or 2G (\"\" leaves the journal alone)",
                    fd.journal_vacuum_size
                ),
            ));
        }
        if fd.journal_vacuum_time.is_some_and(|t| t.as_secs() == 0) {
            return Err((k("journal_vacuum_time"), "must be at least 1s".into()));
        }
        if let Some(t) = fd.nix_gc_older_than
            && (t.as_secs() == 0 || t.as_secs() % 86_400 != 0)
        {
            return Err((
                k("nix_gc_older_than"),
                format!(
                    "{} is not a whole number of days (nix-collect-garbage takes days, e.g. 14d)",
                    humantime::format_duration(t)
                ),
            ));
        }
        Ok(rules)
    }

    /// Checks every section; the error is (full key path, message).
    fn validate(&self) -> Result<UnitRules, (String, String)> {
        let err = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
        if self.watch.units.is_empty() {
            return err(
                "watch.units",
                "is empty: name at least one unit or pattern (\"*\" watches all)",
            );
        }
        let mut rules = Vec::new();
        for (i, rule) in self.watch.units.iter().enumerate() {
            let pattern = UnitPattern::new(&rule.pattern)
                .map_err(|m| (format!("watch.units[{i}].pattern"), m))?;
            rules.push(UnitRule {
                pattern,
                remediate: rule.remediate,
                expect_active: rule.expect_active,
            });
        }
        let sr = &self.runbooks.service_restart;
        let positive = [
            (self.incidents.flap_threshold, "incidents.flap_threshold"),
            (
                self.incidents.crash_loop_restarts,
                "incidents.crash_loop_restarts",
            ),
            (sr.max_runs, "runbooks.service_restart.max_runs"),
            (self.limits.global_per_hour, "limits.global_per_hour"),
        ];
        for (value, key) in positive {
            if value == 0 {
                return err(key, "must be at least 1");
            }
        }
        let nonzero = [
            (sr.job_timeout, "runbooks.service_restart.job_timeout"),
            (sr.window, "runbooks.service_restart.window"),
            (self.incidents.flap_window, "incidents.flap_window"),
            (
                self.incidents.crash_loop_window,
                "incidents.crash_loop_window",
            ),
            (self.agent.reconcile_interval, "agent.reconcile_interval"),
            (self.agent.disk_interval, "agent.disk_interval"),
        ];
        for (value, key) in nonzero {
            if value.is_zero() {
                return err(key, "must be longer than 0s");
            }
        }
        let listen = &self.metrics.listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "metrics.listen".into(),
                format!(
                    "`{listen}` is not an address:port such as 127.0.0.1:9465 (\"\" turns metrics off)"
                ),
            ));
        }
        for (check, answer) in &self.remediation {
            let key = format!("remediation.{check}");
            if !DEFAULT_ANSWERS.iter().any(|(c, _)| c == check) {
                let known: Vec<&str> = DEFAULT_ANSWERS.iter().map(|(c, _)| *c).collect();
                return Err((
                    key,
                    format!("no check is called `{check}` (known: {})", known.join(", ")),
                ));
            }
            if parse_answer(answer).is_none() {
                return Err((
                    key,
                    format!(
                        "`{answer}` is neither a runbook ({}) nor \"escalate\" or \"none\"",
                        act::KNOWN.join(", ")
                    ),
                ));
            }
        }
        self.evidence
            .validate()
            .map_err(|(key, message)| (format!("evidence.{key}"), message))?;
        if let Some(h) = &self.agent.hostname
            && (h.is_empty() || h.contains(['/', ' ']))
        {
            return Err((
                "agent.hostname".into(),
                format!("`{h}` is not a usable host name"),
            ));
        }
        Ok(UnitRules::new(rules))
    }

    /// The watch rules, compiled.
    pub fn rules(&self) -> &UnitRules {
        &self.rules
    }

    /// The first rule matching `unit`, if any.
    pub fn unit_rule(&self, unit: &str) -> Option<&UnitRule> {
        self.rules.rule(unit)
    }

    /// Units that may be restarted: the names and patterns with `remediate = true`.
    pub fn remediable_patterns(&self) -> Vec<String> {
        self.rules
            .remediable()
            .map(|p| p.as_str().to_string())
            .collect()
    }

    /// What answers each check: the defaults, overridden by `[remediation]`.
    pub fn answers(&self) -> HashMap<String, Answer> {
        let mut out: HashMap<String, Answer> = DEFAULT_ANSWERS
            .iter()
            .filter_map(|(c, a)| Some((c.to_string(), parse_answer(a)?)))
            .collect();
        for (check, answer) in &self.remediation {
            if let Some(a) = parse_answer(answer) {
                out.insert(check.clone(), a);
            }
        }
        out
    }

    /// The agent core's settings.
    pub fn agent_settings(&self) -> AgentSettings {
        let sr = &self.runbooks.service_restart;
        let fd = &self.runbooks.free_disk;
        let limits = HashMap::from([
            (
                act::service_restart::RUNBOOK_ID.to_string(),
                Limits {
                    max_runs: sr.max_runs,
                    window: sr.window,
                    min_interval: sr.min_interval,
                    global_per_hour: self.limits.global_per_hour,
                },
            ),
            (
                act::free_disk::RUNBOOK_ID.to_string(),
                Limits {
                    max_runs: fd.max_runs,
                    window: fd.window,
                    min_interval: fd.min_interval,
                    global_per_hour: self.limits.global_per_hour,
                },
            ),
        ]);
        AgentSettings {
            dry_run: self.agent.dry_run,
            rules: self.rules.clone(),
            engine: EngineConfig {
                flap_window: self.incidents.flap_window,
                flap_threshold: self.incidents.flap_threshold,
                resolve_hold: self.incidents.resolve_hold,
            },
            crash_loop_restarts: self.incidents.crash_loop_restarts,
            crash_loop_window: self.incidents.crash_loop_window,
            disks: self.disk_rules.clone(),
            answers: self.answers(),
            limits,
        }
    }

    /// The units source's settings.
    pub fn unit_watch(&self) -> UnitWatchSettings {
        UnitWatchSettings {
            rules: self.rules.clone(),
            reconcile: self.agent.reconcile_interval,
        }
    }

    /// The disks source's settings.
    pub fn disk_watch(&self) -> DiskWatchSettings {
        DiskWatchSettings {
            interval: self.agent.disk_interval,
            mounts: self
                .watch
                .disks
                .as_ref()
                .map(|d| d.iter().map(|m| m.path.clone()).collect()),
        }
    }

    /// Every runbook with its settings.
    pub fn registry(&self) -> act::Registry {
        let sr = &self.runbooks.service_restart;
        let mounts = self
            .disk_rules
            .mounts
            .iter()
            .filter(|(_, t)| t.remediate)
            .map(|(m, t)| {
                (
                    m.clone(),
                    act::free_disk::Target {
                        unit: crate::units::free_disk_unit(m),
                        instance: crate::units::escape_path(m),
                        space_clear: t.space.warn_clear,
                        space_above: t.space.warn_above,
                        inodes_clear: t.inodes.warn_clear,
                        inodes_above: t.inodes.warn_above,
                    },
                )
            })
            .collect();
        act::Registry::new([
            Runbook::ServiceRestart(act::service_restart::Params {
                job_timeout: sr.job_timeout,
                settle: sr.settle,
            }),
            Runbook::FreeDisk(act::free_disk::Params {
                timeout: self.runbooks.free_disk.timeout,
                mounts,
            }),
        ])
    }

    /// The helper units the agent may restart: one per mount with `remediate = true`.
    pub fn free_disk_units(&self) -> Vec<String> {
        let mut units: Vec<String> = self
            .watch
            .disks
            .iter()
            .flatten()
            .filter(|m| m.remediate)
            .map(|m| crate::units::free_disk_unit(&m.path))
            .collect();
        units.sort();
        units
    }

    /// What the helper does for the unit instance `instance` (`systemd-escape
    /// --path` of a mount with `remediate = true`).
    pub fn free_disk_plan(&self, instance: &str) -> Result<act::free_disk::helper::Plan, String> {
        let remediable: Vec<&DiskRuleConfig> = self
            .watch
            .disks
            .iter()
            .flatten()
            .filter(|m| m.remediate)
            .collect();
        let Some(m) = remediable
            .iter()
            .find(|m| crate::units::escape_path(&m.path) == instance)
        else {
            let known: Vec<String> = remediable
                .iter()
                .map(|m| format!("{} ({})", crate::units::escape_path(&m.path), m.path))
                .collect();
            return Err(format!(
                "no [[watch.disks]] entry with remediate = true has the instance `{instance}` (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        };
        let fd = &self.runbooks.free_disk;
        Ok(act::free_disk::helper::Plan {
            mount: PathBuf::from(&m.path),
            instance: instance.to_string(),
            timeout: fd.timeout,
            step_timeout: fd.step_timeout,
            journal_vacuum_size: (!fd.journal_vacuum_size.is_empty())
                .then(|| fd.journal_vacuum_size.clone()),
            journal_vacuum_time: fd.journal_vacuum_time,
            tmpfiles_clean: fd.tmpfiles_clean,
            nix_gc_older_than_days: fd.nix_gc_older_than.map(|t| t.as_secs() / 86_400),
            clean: m
                .clean
                .iter()
                .map(|c| act::free_disk::helper::CleanRule {
                    path: PathBuf::from(&c.path),
                    glob: c.glob.clone(),
                    older_than: c.older_than,
                })
                .collect(),
        })
    }

    pub fn hostname(&self) -> String {
        self.agent.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".to_string())
        })
    }

    /// The metrics endpoint, if turned on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.listen.parse().ok()
    }

    pub fn db_path(&self) -> PathBuf {
        self.agent.state_dir.join("state.db")
    }
}

fn parse_answer(text: &str) -> Option<Answer> {
    match text {
        "escalate" => Some(Answer::Escalate),
        "none" => Some(Answer::Nothing),
        id if act::KNOWN.contains(&id) => Some(Answer::Runbook(id.to_string())),
        _ => None,
    }
}

/// The 1-based line of a key given by its full path (`watch.units[2].pattern`),
/// from the document's spans; where the key itself is absent (a default that
/// validation refused), the line of the nearest table on the path that exists.
fn line_of_key(doc: &toml_edit::ImDocument<String>, path: &str) -> usize {
    let text = doc.raw();
    let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut best = 1;
    let mut item: Option<&toml_edit::Item> = None;
    let mut table: Option<&dyn toml_edit::TableLike> = Some(doc.as_table());
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let Some(t) = table else { break };
        let Some((key, found)) = t.get_key_value(name) else {
            break;
        };
        if let Some(span) = key.span() {
            best = line(span.start);
        }
        item = Some(found);
        table = found.as_table_like();
        if let Some(i) = index {
            match found {
                toml_edit::Item::ArrayOfTables(a) => {
                    let Some(t) = a.get(i) else { break };
                    if let Some(span) = t.span() {
                        best = line(span.start);
                    }
                    table = Some(t);
                }
                _ => break,
            }
        }
    }
    let _ = item;
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, expected: &[&str]) {
        let err = Config::parse(text, Path::new("/etc/msp-agent/config.toml"))
            .expect_err("config should be refused")
            .to_string();
        for e in expected {
            assert!(err.contains(e), "error {err:?} should contain {e:?}");
        }
    }

    #[test]
    fn empty_file_gives_the_embedded_default() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.watch.units.len(), 1);
        assert!(c.unit_rule("anything.service").is_some());
        assert!(c.remediable_patterns().is_empty());
        assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/msp-agent"));
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
[agent]
state_dir = "/tmp/x"
dry_run = true

[[watch.units]]
pattern = "demo*.service"
remediate = true

[[watch.units]]
pattern = "sshd.service"
expect_active = true

[incidents]
flap_window = "5m"
flap_threshold = 4
resolve_hold = "2s"

[runbooks.service_restart]
settle = "2s"
job_timeout = "20s"
max_runs = 3
window = "10m"
min_interval = "1s"

[limits]
global_per_hour = 7
"#;
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert!(c.agent.dry_run);
        assert_eq!(c.runbooks.service_restart.settle, Duration::from_secs(2));
        assert_eq!(c.limits.global_per_hour, 7);
        assert!(c.unit_rule("demo-crashloop.service").unwrap().remediate);
        assert!(c.unit_rule("sshd.service").unwrap().expect_active);
        assert!(c.unit_rule("cron.service").is_none());
        assert_eq!(c.remediable_patterns(), vec!["demo*.service".to_string()]);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        // (input, fragments the message must contain)
        let cases: &[(&str, &[&str])] = &[
            (
                "[[watch.units]]\npattern = \"demo.service\"\nremediat = true\n",
                &["config.toml", "line 3", "remediat"],
            ),
            ("[agnet]\n", &["line 1", "agnet"]),
            (
                "[runbooks.service_restart]\nsettle = \"ten\"\n",
                &["line 2", "settle"],
            ),
            (
                "[[watch.units]]\npattern = \"demo[.service\"\n",
                &[
                    "config.toml:2",
                    "watch.units[0].pattern",
                    "not a valid glob",
                ],
            ),
            (
                "\n[runbooks.service_restart]\nmax_runs = 0\n",
                &[
                    "config.toml:3",
                    "runbooks.service_restart.max_runs",
                    "at least 1",
                ],
            ),
            (
                "[limits]\nglobal_per_hour = -1\n",
                &["line 2", "global_per_hour"],
            ),
            ("[watch]\nunits = []\n", &["watch.units", "empty"]),
            (
                "[metrics]\nlisten = \"localhost\"\n",
                &["config.toml:2", "metrics.listen"],
            ),
            (
                "[evidence.s3]\nbucket = \"b\"\nretention_days = 0\n",
                &["config.toml:3", "evidence.s3.retention_days"],
            ),
            ("[evidence.s3]\nbuckt = \"b\"\n", &["line 2", "buckt"]),
        ];
        for (text, expected) in cases {
            check_err(text, expected);
        }
    }

    #[test]
    fn the_documented_example_is_a_valid_config() {
        let doc = include_str!("../docs/config.md");
        let start = doc
            .find("```toml\n")
            .expect("a toml block in docs/config.md")
            + 8;
        let len = doc[start..].find("```").expect("the block ends");
        Config::parse(&doc[start..start + len], Path::new("docs/config.md")).unwrap();
    }

    #[test]
    fn keys_of_the_same_name_are_told_apart() {
        // `window` and `job_timeout` only in the second section that has them
        let text = "[incidents]\nflap_window = \"5m\"\n\n[runbooks.service_restart]\nsettle = \"1s\"\nwindow = \"0s\"\n";
        check_err(
            text,
            &[
                "config.toml:6",
                "runbooks.service_restart.window",
                "longer than 0s",
            ],
        );
        let text =
            "[[watch.units]]\npattern = \"a.service\"\n\n[[watch.units]]\npattern = \"b/c\"\n";
        check_err(text, &["config.toml:5", "watch.units[1].pattern"]);
    }

    #[test]
    fn free_disk_plans_come_from_the_remediable_entries() {
        let text = "[[watch.disks]]\npath = \"/srv/data\"\nremediate = true\n\n\
            [[watch.disks.clean]]\npath = \"/srv/data/cache\"\nolder_than = \"30m\"\n\n\
            [[watch.disks.clean]]\npath = \"/srv/data/logs\"\nglob = \"*.log\"\nolder_than = \"7d\"\n\n\
            [[watch.disks]]\npath = \"/\"\n\n\
            [runbooks.free_disk]\njournal_vacuum_size = \"\"\nnix_gc_older_than = \"14d\"\ntimeout = \"5m\"\n";
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(
            c.free_disk_units(),
            ["msp-agent-free-disk@srv-data.service"]
        );
        let p = c.free_disk_plan("srv-data").unwrap();
        assert_eq!(p.mount, PathBuf::from("/srv/data"));
        assert_eq!(p.timeout, Duration::from_secs(300));
        assert_eq!(p.step_timeout, Duration::from_secs(120));
        assert_eq!(p.journal_vacuum_size, None);
        assert_eq!(p.nix_gc_older_than_days, Some(14));
        assert!(p.tmpfiles_clean);
        assert_eq!(p.clean.len(), 2);
        assert_eq!(p.clean[0].glob, "*");
        assert_eq!(p.clean[1].older_than, Duration::from_secs(7 * 86_400));
        let e = c.free_disk_plan("-").unwrap_err();
        assert!(
            e.contains("`-`") && e.contains("srv-data (/srv/data)"),
            "{e}"
        );
        let s = c.agent_settings();
        assert!(s.disks.for_mount("/srv/data").remediate);
        assert!(!s.disks.for_mount("/").remediate);
        assert_eq!(s.limits["RB-DISK-001"].max_runs, 1);
        assert_eq!(s.limits["RB-DISK-001"].window, Duration::from_secs(3600));
        assert!(c.registry().get("RB-DISK-001").is_some());
    }

    #[test]
    fn free_disk_errors_name_the_entry_and_key() {
        let disk =
            "[[watch.disks]]\npath = \"/srv/data\"\nremediate = true\n\n[[watch.disks.clean]]\n";
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                format!("{disk}path = \"/srv/other\"\nolder_than = \"1h\"\n"),
                vec!["config.toml:6", "watch.disks[0].clean[0].path", "outside the mount"],
            ),
            (
                format!("{disk}path = \"/srv/data/../etc\"\nolder_than = \"1h\"\n"),
                vec!["watch.disks[0].clean[0].path", "`..`"],
            ),
            (
                format!("{disk}path = \"/srv/database\"\nolder_than = \"1h\"\n"),
                vec!["watch.disks[0].clean[0].path", "outside the mount"],
            ),
            (
                format!("{disk}path = \"/srv/data/c\"\nglob = \"a/b\"\nolder_than = \"1h\"\n"),
                vec!["config.toml:7", "watch.disks[0].clean[0].glob"],
            ),
            (
                format!("{disk}path = \"/srv/data/c\"\nolder_than = \"0s\"\n"),
                vec!["watch.disks[0].clean[0].older_than"],
            ),
            (
                "[[watch.disks]]\npath = \"/srv\"\n\n[[watch.disks.clean]]\npath = \"/srv/c\"\nolder_than = \"1h\"\n".into(),
                vec!["config.toml:4", "watch.disks[0].clean", "remediate"],
            ),
            (
                "[runbooks.free_disk]\njournal_vacuum_size = \"lots\"\n".into(),
                vec!["config.toml:2", "runbooks.free_disk.journal_vacuum_size"],
            ),
            (
                "[runbooks.free_disk]\nnix_gc_older_than = \"36h\"\n".into(),
                vec!["runbooks.free_disk.nix_gc_older_than", "whole number of days"],
            ),
            (
                "[runbooks.free_disk]\nstep_timeout = \"0s\"\n".into(),
                vec!["config.toml:2", "runbooks.free_disk.step_timeout"],
            ),
            (
                "[runbooks.free_disk]\nmax_runs = 0\n".into(),
                vec!["runbooks.free_disk.max_runs"],
            ),
            (
                "[[watch.units]]\npattern = \"msp-agent*\"\nremediate = true\n".into(),
                vec!["config.toml:2", "watch.units[0].pattern", "free-disk helper"],
            ),
            (
                "[[watch.disks]]\npath = \"/srv/./data\"\n".into(),
                vec!["watch.disks[0].path", "not a mount point"],
            ),
        ];
        for (text, want) in cases {
            check_err(&text, &want);
        }
        for size in ["500M", "2G", "1024", ""] {
            let text = format!("[runbooks.free_disk]\njournal_vacuum_size = \"{size}\"\n");
            assert!(Config::parse(&text, Path::new("x.toml")).is_ok(), "{size}");
        }
    }

    #[test]
    fn disks_are_all_real_mounts_unless_listed() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        let w = c.disk_watch();
        assert_eq!(w.interval, Duration::from_secs(10));
        assert_eq!(w.mounts, None, "absent: every real mount");
        assert_eq!(c.agent_settings().disks, DiskRules::default());
        for check in ["disk_space", "disk_inodes"] {
            assert_eq!(
                c.answers()[check],
                Answer::Runbook("RB-DISK-001".into()),
                "{check}: freed where remediate = true"
            );
        }
        assert_eq!(c.answers()["disk_fill_rate"], Answer::Nothing);
        assert!(
            c.free_disk_units().is_empty(),
            "no mount may be freed by default"
        );
        let text = "[agent]\ndisk_interval = \"30s\"\n\n[[watch.disks]]\npath = \"/\"\n\n[[watch.disks]]\npath = \"/var/lib/postgresql\"\nwarn_above = 0.8\nwarn_clear = 0.7\nhold = \"5m\"\nfill_floor = 0.2\nfill_critical_within = \"4h\"\n";
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        let w = c.disk_watch();
        assert_eq!(w.interval, Duration::from_secs(30));
        assert_eq!(
            w.mounts,
            Some(vec!["/".to_string(), "/var/lib/postgresql".to_string()])
        );
        let rules = c.agent_settings().disks;
        let pg = rules.for_mount("/var/lib/postgresql");
        assert_eq!(pg.space.warn_above, 0.8);
        assert_eq!(pg.space.critical_above, 0.98);
        assert_eq!(pg.hold, Duration::from_secs(300));
        assert_eq!(pg.fill_critical_within, Duration::from_secs(4 * 3600));
        assert_eq!(rules.for_mount("/"), &DiskThresholds::default());
        let c = Config::parse("[watch]\ndisks = []\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.disk_watch().mounts, Some(vec![]), "no disk watched");
    }

    #[test]
    fn disk_errors_name_the_entry_and_key() {
        let two = "[[watch.disks]]\npath = \"/\"\n\n[[watch.disks]]\npath = \"/srv\"\n";
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                format!("{two}warn_above = 1.5\n"),
                vec!["config.toml:6", "watch.disks[1].warn_above", "not a ratio"],
            ),
            (
                format!("{two}warn_above = 0\n"),
                vec!["config.toml:6", "watch.disks[1].warn_above"],
            ),
            (
                format!("{two}warn_clear = 0.95\n"),
                vec![
                    "config.toml:6",
                    "watch.disks[1].warn_clear",
                    "below warn_above (0.9)",
                ],
            ),
            (
                format!("{two}critical_above = 0.85\n"),
                vec![
                    "watch.disks[1].critical_above",
                    "above critical_clear (0.9)",
                ],
            ),
            (
                format!("{two}critical_above = 0.95\ncritical_clear = 0.85\nwarn_above = 0.96\n"),
                vec![
                    "config.toml:8",
                    "watch.disks[1].warn_above",
                    "below critical_above (0.95)",
                ],
            ),
            (
                format!("{two}inodes_critical_clear = 0.99\n"),
                vec![
                    "config.toml:6",
                    "watch.disks[1].inodes_critical_clear",
                    "below inodes_critical_above",
                ],
            ),
            (
                format!("{two}fill_floor = 1\n"),
                vec!["config.toml:6", "watch.disks[1].fill_floor"],
            ),
            (
                format!("{two}fill_warn_within = \"1h\"\n"),
                vec![
                    "config.toml:6",
                    "watch.disks[1].fill_warn_within",
                    "shorter than",
                ],
            ),
            (format!("{two}hold = \"soon\"\n"), vec!["line 6", "hold"]),
            (
                format!("{two}wran_above = 0.9\n"),
                vec!["line 6", "wran_above"],
            ),
            (
                "[[watch.disks]]\npath = \"var\"\n".to_string(),
                vec!["config.toml:2", "watch.disks[0].path", "not a mount point"],
            ),
            (
                "[[watch.disks]]\npath = \"/srv/\"\n".to_string(),
                vec!["watch.disks[0].path"],
            ),
            (
                format!("{two}\n[[watch.disks]]\npath = \"/srv\"\n"),
                vec!["config.toml:8", "watch.disks[2].path", "listed twice"],
            ),
            (
                "[agent]\ndisk_interval = \"0s\"\n".to_string(),
                vec!["config.toml:2", "agent.disk_interval", "longer than 0s"],
            ),
        ];
        for (text, expected) in &cases {
            check_err(text, expected);
        }
    }

    #[test]
    fn remediation_maps_checks_to_runbooks() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        let answers = c.answers();
        assert_eq!(
            answers["unit_failed"],
            Answer::Runbook("RB-SERVICE-001".into())
        );
        assert_eq!(answers["crash_loop"], Answer::Escalate);
        let c = Config::parse(
            "[remediation]\nunit_failed = \"none\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.answers()["unit_failed"], Answer::Nothing);
        check_err(
            "[remediation]\nunit_failed = \"RB-NOPE\"\n",
            &["config.toml:2", "remediation.unit_failed", "RB-SERVICE-001"],
        );
        check_err(
            "\n[remediation]\ndisk_full = \"escalate\"\n",
            &["config.toml:3", "no check"],
        );
    }
}
