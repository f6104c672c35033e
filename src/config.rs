//! The agent's TOML configuration: schema, defaults, and validation whose every
//! error names the file, the line and the key.
//!
//! Unknown keys are refused (`deny_unknown_fields` everywhere): a typo in a
//! safety setting such as `remediate` must stop the agent, not be ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

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

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint; the empty string turns it off.
    #[serde(default = "default_metrics_listen")]
    pub listen: Spanned<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9465".to_string())
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: default_state_dir(),
            dry_run: false,
            hostname: None,
            reconcile_interval: default_reconcile(),
            shutdown_grace: default_shutdown_grace(),
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    #[serde(default = "default_units")]
    pub units: Vec<UnitRule>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            units: default_units(),
        }
    }
}

/// The embedded default: every unit is watched, none is remediated.
fn default_units() -> Vec<UnitRule> {
    vec![UnitRule {
        pattern: Spanned::new(0..0, "*".to_string()),
        remediate: false,
        expect_active: false,
    }]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnitRule {
    /// A unit name or a glob (`*`, `?`, `[...]`).
    pub pattern: Spanned<String>,
    /// Run RB-SERVICE-001 when the unit fails.
    #[serde(default)]
    pub remediate: bool,
    /// Also open an incident when the unit is inactive without having failed.
    #[serde(default)]
    pub expect_active: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsConfig {
    #[serde(default = "default_flap_window", with = "humantime_serde")]
    pub flap_window: Duration,
    #[serde(default = "default_flap_threshold")]
    pub flap_threshold: Spanned<u32>,
    /// A failing check must pass this long before its incident resolves.
    #[serde(default = "default_resolve_hold", with = "humantime_serde")]
    pub resolve_hold: Duration,
    #[serde(default = "default_crash_loop_restarts")]
    pub crash_loop_restarts: Spanned<u32>,
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
fn default_flap_threshold() -> Spanned<u32> {
    Spanned::new(0..0, 6)
}
fn default_resolve_hold() -> Duration {
    Duration::from_secs(10)
}
fn default_crash_loop_restarts() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}
fn default_crash_loop_window() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunbooksConfig {
    #[serde(default)]
    pub service_restart: ServiceRestartConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRestartConfig {
    #[serde(default = "default_job_timeout", with = "humantime_serde")]
    pub job_timeout: Duration,
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    #[serde(default = "default_max_runs")]
    pub max_runs: Spanned<u32>,
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
fn default_max_runs() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}
fn default_window() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_min_interval() -> Duration {
    Duration::from_secs(5 * 60)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_global_per_hour")]
    pub global_per_hour: Spanned<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            global_per_hour: default_global_per_hour(),
        }
    }
}

fn default_global_per_hour() -> Spanned<u32> {
    Spanned::new(0..0, 20)
}

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
        Config::default()
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(text, path)?;
        Ok(config)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |span: std::ops::Range<usize>, key: &str, message: String| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of(text, span.start),
                key: key.to_string(),
                message,
            };
        if self.watch.units.is_empty() {
            return Err(invalid(
                0..0,
                "watch.units",
                "is empty: name at least one unit or pattern (\"*\" watches all)".into(),
            ));
        }
        for (i, rule) in self.watch.units.iter().enumerate() {
            let key = format!("watch.units[{i}].pattern");
            let p = rule.pattern.get_ref();
            if p.trim().is_empty() {
                return Err(invalid(rule.pattern.span(), &key, "is empty".into()));
            }
            if let Err(e) = glob::Pattern::new(p) {
                return Err(invalid(
                    rule.pattern.span(),
                    &key,
                    format!("`{p}` is not a valid glob: {e}"),
                ));
            }
            if p.contains(['/', '\'', '"', '\\']) {
                return Err(invalid(
                    rule.pattern.span(),
                    &key,
                    format!("`{p}` contains a character no unit name has"),
                ));
            }
        }
        let positive = [
            (&self.incidents.flap_threshold, "incidents.flap_threshold"),
            (
                &self.incidents.crash_loop_restarts,
                "incidents.crash_loop_restarts",
            ),
            (
                &self.runbooks.service_restart.max_runs,
                "runbooks.service_restart.max_runs",
            ),
            (&self.limits.global_per_hour, "limits.global_per_hour"),
        ];
        for (value, key) in positive {
            if *value.get_ref() == 0 {
                return Err(invalid(value.span(), key, "must be at least 1".into()));
            }
        }
        let listen = self.metrics.listen.get_ref();
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                self.metrics.listen.span(),
                "metrics.listen",
                format!(
                    "`{listen}` is not an address:port such as 127.0.0.1:9465 (\"\" turns metrics off)"
                ),
            ));
        }
        let sr = &self.runbooks.service_restart;
        if sr.job_timeout.is_zero() {
            return Err(invalid(
                find_key(text, "job_timeout"),
                "runbooks.service_restart.job_timeout",
                "must be longer than 0s".into(),
            ));
        }
        if sr.window.is_zero() {
            return Err(invalid(
                find_key(text, "window"),
                "runbooks.service_restart.window",
                "must be longer than 0s".into(),
            ));
        }
        if let Some(s3) = &self.evidence.s3 {
            if s3.bucket.trim().is_empty() {
                return Err(invalid(
                    find_key(text, "bucket"),
                    "evidence.s3.bucket",
                    "is empty".into(),
                ));
            }
            if s3.retention_days == 0 {
                return Err(invalid(
                    find_key(text, "retention_days"),
                    "evidence.s3.retention_days",
                    "must be at least 1: objects are locked until upload time plus this many days"
                        .into(),
                ));
            }
        }
        if self.evidence.spool_alarm_percent == 0 || self.evidence.spool_alarm_percent > 100 {
            return Err(invalid(
                find_key(text, "spool_alarm_percent"),
                "evidence.spool_alarm_percent",
                "must be between 1 and 100".into(),
            ));
        }
        if let Some(h) = &self.agent.hostname
            && (h.is_empty() || h.contains(['/', ' ']))
        {
            return Err(invalid(
                find_key(text, "hostname"),
                "agent.hostname",
                format!("`{h}` is not a usable host name"),
            ));
        }
        Ok(())
    }

    /// The first rule matching `unit`, if any.
    pub fn unit_rule(&self, unit: &str) -> Option<&UnitRule> {
        self.watch.units.iter().find(|r| r.matches(unit))
    }

    /// Units that may be restarted: the names and patterns with `remediate = true`.
    pub fn remediable_patterns(&self) -> Vec<String> {
        self.watch
            .units
            .iter()
            .filter(|r| r.remediate)
            .map(|r| r.pattern.get_ref().clone())
            .collect()
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
        self.metrics.listen.get_ref().parse().ok()
    }

    pub fn db_path(&self) -> PathBuf {
        self.agent.state_dir.join("state.db")
    }
}

impl UnitRule {
    pub fn matches(&self, unit: &str) -> bool {
        let p = self.pattern.get_ref();
        if is_glob(p) {
            glob::Pattern::new(p)
                .map(|g| g.matches(unit))
                .unwrap_or(false)
        } else {
            p == unit
        }
    }

    pub fn is_glob(&self) -> bool {
        is_glob(self.pattern.get_ref())
    }
}

pub fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Span of the first `key =` in the text, for values that carry no span of their own.
fn find_key(text: &str, key: &str) -> std::ops::Range<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return offset..offset;
        }
        offset += line.len();
    }
    0..0
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
        assert_eq!(*c.limits.global_per_hour.get_ref(), 7);
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
    fn globs_and_names_match_as_expected() {
        let rule = |p: &str| UnitRule {
            pattern: Spanned::new(0..0, p.to_string()),
            remediate: true,
            expect_active: false,
        };
        assert!(rule("demo*.service").matches("demo-crashloop.service"));
        assert!(!rule("demo*.service").matches("nginx.service"));
        assert!(rule("nginx.service").matches("nginx.service"));
        assert!(!rule("nginx.service").matches("nginx.service2"));
        assert!(rule("bench-???.service").matches("bench-007.service"));
    }
}
