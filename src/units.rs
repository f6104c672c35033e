//! Unit names and the patterns that select them, compiled once.
//!
//! One matcher serves the watcher (which units to follow), the agent core
//! (which rule applies to a unit, whether it may be remediated), silences and the
//! polkit rule, so all of them agree on what `demo*.service` means: a name
//! without `*`, `?` or `[` matches itself only; anything else is a glob as the
//! `glob` crate reads it (`*` and `?` match any character, `[!...]` negates).

use std::sync::Arc;

/// A unit name or glob, checked and compiled.
#[derive(Debug, Clone)]
pub struct UnitPattern {
    text: String,
    glob: Option<glob::Pattern>,
}

impl UnitPattern {
    /// Compiles `text`; the error says what is wrong with it.
    pub fn new(text: &str) -> Result<UnitPattern, String> {
        if text.trim().is_empty() {
            return Err("is empty".into());
        }
        if text.contains(['/', '\'', '"', '\\']) {
            return Err(format!("`{text}` contains a character no unit name has"));
        }
        let glob = if is_glob(text) {
            Some(
                glob::Pattern::new(text)
                    .map_err(|e| format!("`{text}` is not a valid glob: {e}"))?,
            )
        } else {
            None
        };
        Ok(UnitPattern {
            text: text.to_string(),
            glob,
        })
    }

    pub fn matches(&self, unit: &str) -> bool {
        match &self.glob {
            Some(g) => g.matches(unit),
            None => self.text == unit,
        }
    }

    pub fn is_glob(&self) -> bool {
        self.glob.is_some()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

pub fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// The template of RB-DISK-001's privileged helper.
pub const FREE_DISK_TEMPLATE: &str = "msp-agent-free-disk@";

/// A path as `systemd-escape --path` writes it (the `%i` of a unit whose `%f`
/// is the path): slashes at either end dropped, `/` becomes `-`, `/` alone is
/// `-`; bytes other than ASCII letters, digits, `:`, `_` and `.` (and a leading
/// `.`) become `\xNN`.
pub fn escape_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        return "-".to_string();
    }
    let joined = parts.join("/");
    let mut out = String::with_capacity(joined.len());
    for (i, b) in joined.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The helper unit that frees disk space on `mount`, e.g.
/// `msp-agent-free-disk@srv-data.service` for `/srv/data`.
pub fn free_disk_unit(mount: &str) -> String {
    format!("{FREE_DISK_TEMPLATE}{}.service", escape_path(mount))
}

/// One `[[watch.units]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct UnitRule {
    pub pattern: UnitPattern,
    /// The check's runbook may act on this unit.
    pub remediate: bool,
    /// An inactive unit is failing too, not only a failed one.
    pub expect_active: bool,
}

/// The watched units: rules in order, first match wins. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct UnitRules {
    rules: Arc<Vec<UnitRule>>,
}

impl UnitRules {
    pub fn new(rules: Vec<UnitRule>) -> UnitRules {
        UnitRules {
            rules: Arc::new(rules),
        }
    }

    /// The first rule matching `unit`: `None` means the unit is not watched.
    pub fn rule(&self, unit: &str) -> Option<&UnitRule> {
        self.rules.iter().find(|r| r.pattern.matches(unit))
    }

    pub fn watches(&self, unit: &str) -> bool {
        self.rule(unit).is_some()
    }

    pub fn may_remediate(&self, unit: &str) -> bool {
        self.rule(unit).is_some_and(|r| r.remediate)
    }

    pub fn iter(&self) -> impl Iterator<Item = &UnitRule> {
        self.rules.iter()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Names given without a glob: these are loaded even when systemd has not yet.
    pub fn explicit_names(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter(|r| !r.pattern.is_glob())
            .map(|r| r.pattern.as_str())
    }

    /// The patterns whose units may be remediated (for the polkit rule).
    pub fn remediable(&self) -> impl Iterator<Item = &UnitPattern> {
        self.rules
            .iter()
            .filter(|r| r.remediate)
            .map(|r| &r.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_table() {
        let cases = [
            ("demo*.service", "demo-crashloop.service", true),
            ("demo*.service", "nginx.service", false),
            ("nginx.service", "nginx.service", true),
            ("nginx.service", "nginx.service2", false),
            ("bench-???.service", "bench-007.service", true),
            ("bench-[!0]*.service", "bench-007.service", false),
            ("bench-[!0]*.service", "bench-107.service", true),
            ("*", "anything.timer", true),
        ];
        for (pattern, unit, expected) in cases {
            let p = UnitPattern::new(pattern).unwrap();
            assert_eq!(p.matches(unit), expected, "{pattern} ~ {unit}");
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(UnitPattern::new(" ").unwrap_err(), "is empty");
        assert!(
            UnitPattern::new("a/b.service")
                .unwrap_err()
                .contains("character")
        );
        assert!(
            UnitPattern::new("[.service")
                .unwrap_err()
                .contains("not a valid glob")
        );
    }

    /// The same as `systemd-escape --path` prints (checked against systemd 252).
    #[test]
    fn paths_escape_as_systemd_does() {
        let cases = [
            ("/", "-"),
            ("/srv/data", "srv-data"),
            ("/srv/data/", "srv-data"),
            ("//srv//data", "srv-data"),
            ("/var/lib/my-db", "var-lib-my\\x2ddb"),
            ("/.hidden/x.y", "\\x2ehidden-x.y"),
            ("/a b", "a\\x20b"),
            ("/mnt/ü", "mnt-\\xc3\\xbc"),
        ];
        for (path, escaped) in cases {
            assert_eq!(escape_path(path), escaped, "{path}");
        }
        assert_eq!(
            free_disk_unit("/srv/data"),
            "msp-agent-free-disk@srv-data.service"
        );
    }

    #[test]
    fn first_rule_wins() {
        let rule = |p: &str, remediate| UnitRule {
            pattern: UnitPattern::new(p).unwrap(),
            remediate,
            expect_active: false,
        };
        let rules = UnitRules::new(vec![rule("demo.service", true), rule("*", false)]);
        assert!(rules.may_remediate("demo.service"));
        assert!(rules.watches("other.service"));
        assert!(!rules.may_remediate("other.service"));
        assert_eq!(rules.explicit_names().collect::<Vec<_>>(), ["demo.service"]);
        assert_eq!(rules.remediable().count(), 1);
    }
}
