//! Journal rules: each rule selects entries by their fields and a regular
//! expression on `MESSAGE`, counts them per group (a named capture or a field)
//! in a sliding window, fires when `count` are in the window, and clears once
//! `window` has passed since the count last reached it.
//!
//! Windows run on the entries' own timestamps (`__REALTIME_TIMESTAMP`), so
//! reading a backlog counts as the entries happened; clearing runs on the
//! agent's clock. What a firing condition carries is bounded: the newest
//! [`KEPT_ENTRIES`] matching entries of the group, each message cut to
//! [`KEPT_MESSAGE_BYTES`], and the count of those not kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::bytes::Regex;
use serde_json::json;

use super::checks::Check;
use super::incident::{Condition, chrono_dur};
use crate::watch::journal::JournalEntry;

/// Every journal incident's check is `journal:<rule id>`.
pub const CHECK_PREFIX: &str = "journal:";
/// Matching entries a condition keeps, per group (the newest).
pub const KEPT_ENTRIES: usize = 20;
pub const KEPT_MESSAGE_BYTES: usize = 1024;
/// Groups a rule tracks at most; the quietest are forgotten first.
pub const MAX_GROUPS: usize = 10_000;

/// The journal fields a rule may match on.
pub const MATCH_FIELDS: &[&str] = &[
    "_SYSTEMD_UNIT",
    "_SYSTEMD_USER_UNIT",
    "UNIT",
    "SYSLOG_IDENTIFIER",
    "SYSLOG_FACILITY",
    "_TRANSPORT",
    "PRIORITY",
    "MESSAGE_ID",
    "_COMM",
    "_EXE",
];

pub fn is_journal_check(check: &str) -> bool {
    check.starts_with(CHECK_PREFIX)
}

/// What a rule counts by.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupBy {
    /// A named capture of the rule's `message` expression.
    Capture(String),
    /// A journal field of the entry.
    Field(String),
}

/// One rule, compiled.
#[derive(Debug, Clone)]
pub struct JournalRule {
    pub id: String,
    /// Each field must equal one of its values.
    pub fields: Vec<(String, Vec<Vec<u8>>)>,
    /// `PRIORITY` at most this (0 emerg … 7 debug).
    pub priority_max: Option<u8>,
    pub message: Option<Regex>,
    pub count: u32,
    pub window: Duration,
    pub group_by: Option<GroupBy>,
    pub severity: String,
    /// The incident's target: `{name}` is replaced by a capture or a field.
    pub target: Option<String>,
}

/// An entry a rule selected.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleMatch {
    pub group: String,
    pub captures: BTreeMap<String, String>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl JournalRule {
    pub fn check_name(&self) -> String {
        format!("{CHECK_PREFIX}{}", self.id)
    }

    /// Whether the rule selects `e`, and with what group and captures.
    pub fn matches(&self, e: &JournalEntry) -> Option<RuleMatch> {
        for (field, values) in &self.fields {
            let v = e.field(field)?;
            if !values.iter().any(|want| want.as_slice() == v) {
                return None;
            }
        }
        if let Some(max) = self.priority_max {
            let p = std::str::from_utf8(e.field("PRIORITY")?)
                .ok()?
                .trim()
                .parse::<u8>()
                .ok()?;
            if p > max {
                return None;
            }
        }
        let mut captures = BTreeMap::new();
        if let Some(re) = &self.message {
            let caps = re.captures(e.field("MESSAGE")?)?;
            for name in re.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    captures.insert(name.to_string(), lossy(m.as_bytes()));
                }
            }
        }
        let group = match &self.group_by {
            None => String::new(),
            Some(GroupBy::Capture(c)) => captures.get(c)?.clone(),
            Some(GroupBy::Field(f)) => lossy(e.field(f)?),
        };
        Some(RuleMatch { group, captures })
    }

    /// The incident's target for a match: the template, else the group, else the rule.
    fn target_of(&self, m: &RuleMatch, e: &JournalEntry) -> String {
        if let Some(t) = &self.target
            && let Some(rendered) = render(t, |name| {
                m.captures
                    .get(name)
                    .cloned()
                    .or_else(|| e.field(name).map(lossy))
            })
        {
            return rendered;
        }
        if m.group.is_empty() {
            self.id.clone()
        } else {
            m.group.clone()
        }
    }
}

/// `{name}` replaced by `value(name)`; `None` if a name has no value.
pub fn render(template: &str, value: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        out.push_str(&value(&rest[start + 1..end])?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// The names a target template uses.
pub fn template_names(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err(format!("`{template}` has a `{{` without its `}}`"));
        };
        let name = &rest[start + 1..start + len];
        if name.is_empty() {
            return Err(format!("`{template}` has an empty `{{}}`"));
        }
        names.push(name.to_string());
        rest = &rest[start + len + 1..];
    }
    if rest.contains('}') {
        return Err(format!("`{template}` has a `}}` without its `{{`"));
    }
    Ok(names)
}

#[derive(Debug, Clone)]
struct Kept {
    cursor: String,
    realtime: DateTime<Utc>,
    message: String,
    truncated: bool,
    unit: Option<String>,
    identifier: Option<String>,
    captures: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Group {
    /// Timestamps of the matches inside the window.
    times: VecDeque<DateTime<Utc>>,
    kept: VecDeque<Kept>,
    /// Matches no longer kept (beyond KEPT_ENTRIES).
    not_kept: u64,
    matched: u64,
    firing: bool,
    /// When the count last reached the rule's `count`.
    last_reached: Option<DateTime<Utc>>,
    target: String,
}

/// One rule as a check: its groups and their windows.
pub struct JournalCheck {
    rule: JournalRule,
    name: String,
    groups: HashMap<String, Group>,
}

impl JournalCheck {
    pub fn new(rule: JournalRule) -> JournalCheck {
        JournalCheck {
            name: rule.check_name(),
            rule,
            groups: HashMap::new(),
        }
    }

    pub fn rule(&self) -> &JournalRule {
        &self.rule
    }

    fn condition(&self, g: &Group, failing: bool, at: DateTime<Utc>) -> Condition {
        let r = &self.rule;
        let n = g.times.len();
        let reason = if failing {
            format!(
                "journal rule {}: {n} matching entr{} within {} (threshold {}){}",
                r.id,
                if n == 1 { "y" } else { "ies" },
                humantime::format_duration(r.window),
                r.count,
                g.kept
                    .back()
                    .map(|k| format!("; last: {}", k.message))
                    .unwrap_or_default()
            )
        } else {
            format!(
                "journal rule {}: below {} within {} for a whole window",
                r.id,
                r.count,
                humantime::format_duration(r.window)
            )
        };
        let entries: Vec<serde_json::Value> = g
            .kept
            .iter()
            .map(|k| {
                json!({
                    "cursor": k.cursor,
                    "realtime": k.realtime,
                    "message": k.message,
                    "message_truncated": k.truncated,
                    "unit": k.unit,
                    "identifier": k.identifier,
                    "captures": k.captures,
                })
            })
            .collect();
        Condition {
            check: r.check_name(),
            target: g.target.clone(),
            failing,
            at,
            severity: r.severity.clone(),
            reason,
            observation: json!({
                "rule": r.id,
                "group": g.target,
                "count_in_window": n,
                "threshold": r.count,
                "window_secs": r.window.as_secs(),
                "matched_total": g.matched,
                "entries": entries,
                "entries_not_kept": g.not_kept,
            }),
            induced: false,
        }
    }

    /// Forgets the quietest groups that are not firing once there are too many.
    fn bound_groups(&mut self) {
        if self.groups.len() <= MAX_GROUPS {
            return;
        }
        let mut quiet: Vec<(DateTime<Utc>, String)> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.firing)
            .map(|(k, g)| {
                (
                    g.times.back().copied().unwrap_or(DateTime::UNIX_EPOCH),
                    k.clone(),
                )
            })
            .collect();
        quiet.sort();
        let excess = self.groups.len() - MAX_GROUPS;
        for (_, k) in quiet.into_iter().take(excess) {
            self.groups.remove(&k);
        }
    }
}

impl Check<JournalEntry> for JournalCheck {
    fn name(&self) -> &str {
        &self.name
    }

    fn observe(&mut self, e: &JournalEntry) -> Option<Condition> {
        let m = self.rule.matches(e)?;
        let target = self.rule.target_of(&m, e);
        let window = chrono_dur(self.rule.window);
        let count = self.rule.count as usize;
        let g = self.groups.entry(m.group.clone()).or_default();
        g.target = target;
        g.matched += 1;
        g.times.push_back(e.realtime);
        while g.times.front().is_some_and(|t| *t <= e.realtime - window) {
            g.times.pop_front();
        }
        let message = e.field("MESSAGE").unwrap_or_default();
        let truncated = message.len() > KEPT_MESSAGE_BYTES;
        g.kept.push_back(Kept {
            cursor: e.cursor.clone(),
            realtime: e.realtime,
            message: lossy(&message[..message.len().min(KEPT_MESSAGE_BYTES)]),
            truncated,
            unit: e.text("_SYSTEMD_UNIT"),
            identifier: e.text("SYSLOG_IDENTIFIER"),
            captures: m.captures,
        });
        if g.kept.len() > KEPT_ENTRIES {
            g.kept.pop_front();
            g.not_kept += 1;
        }
        let reached = g.times.len() >= count;
        if reached {
            g.last_reached = Some(e.realtime);
            g.firing = true;
        }
        let (firing, g) = (g.firing, g.clone());
        self.bound_groups();
        // Below the threshold and not firing: nothing to say yet.
        firing.then(|| self.condition(&g, true, e.realtime))
    }

    fn tick(&mut self, now: DateTime<Utc>) -> Vec<Condition> {
        let window = chrono_dur(self.rule.window);
        let mut cleared = Vec::new();
        for (key, g) in self.groups.iter_mut() {
            while g.times.front().is_some_and(|t| *t <= now - window) {
                g.times.pop_front();
            }
            if g.firing && g.last_reached.is_some_and(|t| t + window <= now) {
                g.firing = false;
                cleared.push(key.clone());
            }
        }
        cleared.sort();
        let out = cleared
            .iter()
            .filter_map(|k| self.groups.get(k))
            .map(|g| self.condition(g, false, now))
            .collect();
        self.groups.retain(|_, g| g.firing || !g.times.is_empty());
        out
    }

    fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let window = chrono_dur(self.rule.window);
        self.groups
            .values()
            .filter(|g| g.firing)
            .filter_map(|g| g.last_reached.map(|t| t + window))
            .min()
    }
}

/// The rules the agent runs unless `[journal] default_rules = false`; each is
/// tested against entries as journald stores them (tests below).
pub fn default_rules() -> Vec<JournalRule> {
    let re = |s: &str| Some(Regex::new(s).expect("a default rule's expression compiles"));
    let kernel = || vec![("_TRANSPORT".to_string(), vec![b"kernel".to_vec()])];
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let rule = |id: &str| JournalRule {
        id: id.into(),
        fields: vec![],
        priority_max: None,
        message: None,
        count: 1,
        window: minutes(10),
        group_by: None,
        severity: "critical".into(),
        target: None,
    };
    vec![
        // The kernel's OOM killer: "Out of memory: Killed process 1234 (stress) ..."
        JournalRule {
            fields: kernel(),
            message: re(r"Out of memory: Killed process (?P<pid>\d+) \((?P<comm>[^)]*)\)"),
            group_by: Some(GroupBy::Capture("comm".into())),
            ..rule("oom_kill")
        },
        // systemd: "A process of this unit has been killed by the OOM killer."
        JournalRule {
            fields: vec![(
                "MESSAGE_ID".into(),
                vec![b"fe6faa94e7774663a0da52717891d8ef".to_vec()],
            )],
            group_by: Some(GroupBy::Field("UNIT".into())),
            ..rule("unit_oom_killed")
        },
        // Block devices: "I/O error, dev sda, sector ...", "Buffer I/O error on dev sda1, ..."
        JournalRule {
            fields: kernel(),
            message: re(r"(?:Buffer )?I/O error,? (?:on )?dev(?:ice)? (?P<dev>[A-Za-z0-9._-]+)"),
            group_by: Some(GroupBy::Capture("dev".into())),
            ..rule("block_io_error")
        },
        // "EXT4-fs error (device sda1): ..."
        JournalRule {
            fields: kernel(),
            message: re(r"EXT4-fs error \(device (?P<dev>[^)]+)\)"),
            group_by: Some(GroupBy::Capture("dev".into())),
            ..rule("ext4_error")
        },
        // libata: "ata1.00: failed command: READ FPDMA QUEUED"
        JournalRule {
            fields: kernel(),
            message: re(r"(?P<port>ata\d+(?:\.\d+)?): failed command"),
            group_by: Some(GroupBy::Capture("port".into())),
            ..rule("ata_failed_command")
        },
        // "app[1234]: segfault at 0 ip ... sp ... error 4 in app[...]"
        JournalRule {
            fields: kernel(),
            // (?-u:\S): a program name is bytes, not necessarily UTF-8
            message: re(r"(?P<comm>(?-u:\S)+)\[(?P<pid>\d+)\]: segfault at"),
            group_by: Some(GroupBy::Capture("comm".into())),
            severity: "warning".into(),
            ..rule("segfault")
        },
        // systemd-coredump: "Process 1234 (app) of user 0 dumped core."
        JournalRule {
            fields: vec![(
                "MESSAGE_ID".into(),
                vec![b"fc2e22bc6ee647b6b90729ab34a250b1".to_vec()],
            )],
            group_by: Some(GroupBy::Field("COREDUMP_COMM".into())),
            severity: "warning".into(),
            ..rule("coredump")
        },
        // sshd (sshd-session from OpenSSH 9.8): "Failed password for root from 203.0.113.7 port 22 ssh2".
        // Five failures from one address in ten minutes are tolerated (fail2ban's
        // maxretry); the sixth opens the incident.
        JournalRule {
            fields: vec![(
                "SYSLOG_IDENTIFIER".into(),
                vec![b"sshd".to_vec(), b"sshd-session".to_vec()],
            )],
            message: re(
                r"(?:Failed \S+ for (?:invalid user )?\S* ?from|Invalid user \S* ?from) (?P<address>[0-9A-Fa-f:.]+)",
            ),
            count: 6,
            group_by: Some(GroupBy::Capture("address".into())),
            severity: "warning".into(),
            ..rule("ssh_failed_login")
        },
        // journald: "Suppressed 1234 messages from app.service"
        JournalRule {
            fields: vec![(
                "MESSAGE_ID".into(),
                vec![b"a596d6fe7bfa4994828e72309e95d61e".to_vec()],
            )],
            message: re(r"Suppressed (?P<dropped>\d+) messages from (?P<unit>\S+)"),
            group_by: Some(GroupBy::Capture("unit".into())),
            severity: "warning".into(),
            ..rule("journal_suppressed")
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn entry(at: i64, fields: &[(&str, &str)]) -> JournalEntry {
        JournalEntry {
            cursor: format!("s=abc;i={at:x}"),
            realtime: t(at),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn rule(id: &str) -> JournalRule {
        default_rules().into_iter().find(|r| r.id == id).unwrap()
    }

    fn ssh(at: i64, address: &str) -> JournalEntry {
        entry(
            at,
            &[
                ("SYSLOG_IDENTIFIER", "sshd-session"),
                ("_TRANSPORT", "syslog"),
                ("PRIORITY", "6"),
                (
                    "MESSAGE",
                    &format!(
                        "Failed password for invalid user admin from {address} port 51234 ssh2"
                    ),
                ),
            ],
        )
    }

    /// Entries as journald stores them (fields copied from `journalctl -o json`).
    #[test]
    fn the_default_rules_match_real_entries() {
        let kernel = |msg: &str| {
            entry(
                0,
                &[
                    ("_TRANSPORT", "kernel"),
                    ("PRIORITY", "3"),
                    ("MESSAGE", msg),
                    ("SYSLOG_IDENTIFIER", "kernel"),
                ],
            )
        };
        let cases: Vec<(&str, JournalEntry, Option<&str>)> = vec![
            (
                "oom_kill",
                kernel(
                    "Out of memory: Killed process 4242 (stress-ng) total-vm:1052648kB, anon-rss:1011052kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:2024kB oom_score_adj:0",
                ),
                Some("stress-ng"),
            ),
            (
                "oom_kill",
                kernel(
                    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=stress-ng,pid=4242,uid=0",
                ),
                None,
            ),
            (
                "unit_oom_killed",
                entry(
                    0,
                    &[
                        ("MESSAGE_ID", "fe6faa94e7774663a0da52717891d8ef"),
                        ("UNIT", "app.service"),
                        (
                            "MESSAGE",
                            "app.service: A process of this unit has been killed by the OOM killer.",
                        ),
                    ],
                ),
                Some("app.service"),
            ),
            (
                "block_io_error",
                kernel(
                    "I/O error, dev sdb, sector 2048 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 2",
                ),
                Some("sdb"),
            ),
            (
                "block_io_error",
                kernel("Buffer I/O error on dev sdb1, logical block 0, async page read"),
                Some("sdb1"),
            ),
            (
                "block_io_error",
                kernel("blk_update_request: I/O error, dev nvme0n1, sector 1234"),
                Some("nvme0n1"),
            ),
            (
                "ext4_error",
                kernel(
                    "EXT4-fs error (device sda1): ext4_find_entry:1463: inode #2: comm ls: reading directory lblock 0",
                ),
                Some("sda1"),
            ),
            (
                "ata_failed_command",
                kernel("ata1.00: failed command: READ FPDMA QUEUED"),
                Some("ata1.00"),
            ),
            (
                "segfault",
                kernel(
                    "crasher[4242]: segfault at 0 ip 000055d0c0a0b139 sp 00007ffd6b1a8f20 error 6 in crasher[55d0c0a0b000+1000]",
                ),
                Some("crasher"),
            ),
            (
                "coredump",
                entry(
                    0,
                    &[
                        ("MESSAGE_ID", "fc2e22bc6ee647b6b90729ab34a250b1"),
                        ("COREDUMP_COMM", "crasher"),
                        ("MESSAGE", "Process 4242 (crasher) of user 0 dumped core."),
                    ],
                ),
                Some("crasher"),
            ),
            (
                "ssh_failed_login",
                ssh(0, "203.0.113.7"),
                Some("203.0.113.7"),
            ),
            (
                "ssh_failed_login",
                entry(
                    0,
                    &[
                        ("SYSLOG_IDENTIFIER", "sshd"),
                        (
                            "MESSAGE",
                            "Failed publickey for git from 2001:db8::7 port 40222 ssh2: ED25519 SHA256:abc",
                        ),
                    ],
                ),
                Some("2001:db8::7"),
            ),
            (
                "ssh_failed_login",
                entry(
                    0,
                    &[
                        ("SYSLOG_IDENTIFIER", "sshd"),
                        (
                            "MESSAGE",
                            "Invalid user oracle from 198.51.100.9 port 50000",
                        ),
                    ],
                ),
                Some("198.51.100.9"),
            ),
            (
                "ssh_failed_login",
                entry(
                    0,
                    &[
                        ("SYSLOG_IDENTIFIER", "sshd"),
                        (
                            "MESSAGE",
                            "Accepted publickey for deploy from 198.51.100.9 port 50000 ssh2",
                        ),
                    ],
                ),
                None,
            ),
            (
                "ssh_failed_login",
                entry(
                    0,
                    &[
                        ("SYSLOG_IDENTIFIER", "su"),
                        (
                            "MESSAGE",
                            "Failed password for root from 198.51.100.9 port 1 ssh2",
                        ),
                    ],
                ),
                None,
            ),
            (
                "journal_suppressed",
                entry(
                    0,
                    &[
                        ("MESSAGE_ID", "a596d6fe7bfa4994828e72309e95d61e"),
                        ("_SYSTEMD_UNIT", "systemd-journald.service"),
                        ("MESSAGE", "Suppressed 1234 messages from chatty.service"),
                    ],
                ),
                Some("chatty.service"),
            ),
            (
                "segfault",
                entry(
                    0,
                    &[("_TRANSPORT", "syslog"), ("MESSAGE", "x[1]: segfault at 0")],
                ),
                None,
            ),
        ];
        for (id, e, group) in cases {
            let got = rule(id).matches(&e).map(|m| m.group);
            assert_eq!(got.as_deref(), group, "{id}: {:?}", e.text("MESSAGE"));
        }
    }

    #[test]
    fn six_failed_logins_from_one_address_open_one_incident_five_do_not() {
        let mut c = JournalCheck::new(rule("ssh_failed_login"));
        assert_eq!(c.name(), "journal:ssh_failed_login");
        for i in 0..5 {
            assert!(c.observe(&ssh(i * 60, "203.0.113.7")).is_none(), "{i}");
            assert!(c.observe(&ssh(i * 60, "198.51.100.1")).is_none());
        }
        let cond = c
            .observe(&ssh(300, "203.0.113.7"))
            .expect("the sixth fires");
        assert!(cond.failing);
        assert_eq!(cond.check, "journal:ssh_failed_login");
        assert_eq!(cond.target, "203.0.113.7");
        assert_eq!(cond.observation["count_in_window"], 6);
        assert_eq!(cond.observation["entries"].as_array().unwrap().len(), 6);
        assert_eq!(cond.observation["entries"][5]["cursor"], "s=abc;i=12c");
        // the other address stays quiet; spread over more than the window, none fires
        let mut spread = JournalCheck::new(rule("ssh_failed_login"));
        for i in 0..12 {
            assert!(spread.observe(&ssh(i * 150, "192.0.2.1")).is_none(), "{i}");
        }
        // clears once a whole window passes since the count last reached the threshold
        assert_eq!(c.next_deadline(), Some(t(300 + 600)));
        assert!(c.tick(t(899)).is_empty());
        let cleared = c.tick(t(900));
        assert_eq!(cleared.len(), 1);
        assert!(!cleared[0].failing);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn what_a_condition_keeps_is_bounded() {
        let mut r = rule("segfault");
        r.count = 1;
        let mut c = JournalCheck::new(r);
        let long = format!("app[1]: segfault at 0 {}", "x".repeat(5000));
        let mut last = None;
        for i in 0..50 {
            last = c.observe(&entry(i, &[("_TRANSPORT", "kernel"), ("MESSAGE", &long)]));
        }
        let o = last.unwrap().observation;
        assert_eq!(o["entries"].as_array().unwrap().len(), KEPT_ENTRIES);
        assert_eq!(o["entries_not_kept"], 30);
        assert_eq!(o["matched_total"], 50);
        assert_eq!(o["entries"][0]["message_truncated"], true);
        assert!(o["entries"][0]["message"].as_str().unwrap().len() <= KEPT_MESSAGE_BYTES);
    }

    #[test]
    fn binary_and_non_utf8_fields_do_not_break_matching() {
        let r = rule("segfault");
        let mut e = entry(0, &[("_TRANSPORT", "kernel")]);
        e.fields.insert(
            "MESSAGE".into(),
            b"caf\xe9[12]: segfault at 0 ip 0 \x00\xff".to_vec(),
        );
        let m = r.matches(&e).expect("matches on bytes");
        assert_eq!(m.group, "caf\u{fffd}");
        e.fields.insert("MESSAGE".into(), vec![0xff; 64]);
        assert!(r.matches(&e).is_none());
        e.fields.remove("MESSAGE");
        assert!(r.matches(&e).is_none(), "no MESSAGE, no match");
    }

    #[test]
    fn priorities_and_templates() {
        let r = JournalRule {
            id: "app_errors".into(),
            fields: vec![("_SYSTEMD_UNIT".into(), vec![b"app.service".to_vec()])],
            priority_max: Some(3),
            message: None,
            count: 1,
            window: Duration::from_secs(60),
            group_by: None,
            severity: "warning".into(),
            target: Some("{_SYSTEMD_UNIT}".into()),
        };
        let e = |p: &str| {
            entry(
                0,
                &[
                    ("_SYSTEMD_UNIT", "app.service"),
                    ("PRIORITY", p),
                    ("MESSAGE", "boom"),
                ],
            )
        };
        assert!(r.matches(&e("3")).is_some());
        assert!(r.matches(&e("2")).is_some());
        assert!(r.matches(&e("4")).is_none());
        assert!(r.matches(&e("x")).is_none());
        let mut c = JournalCheck::new(r);
        assert_eq!(c.observe(&e("3")).unwrap().target, "app.service");
        assert_eq!(template_names("{a}-{b}").unwrap(), ["a", "b"]);
        assert!(template_names("{a").is_err());
        assert!(template_names("a}").is_err());
        assert!(template_names("{}").is_err());
        assert_eq!(
            render("x{a}y", |n| Some(n.to_uppercase())).as_deref(),
            Some("xAy")
        );
        assert_eq!(render("{a}", |_| None), None);
    }
}
