//! Journal entries of arbitrary bytes through every default rule: no panic,
//! whatever the fields hold (not UTF-8, binary, empty, huge), and what a
//! condition keeps stays within its bounds. Target templates of arbitrary
//! text are checked and rendered without a panic too.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use msp_agent::decide::checks::Check;
use msp_agent::decide::journal::{
    JournalCheck, JournalRule, KEPT_ENTRIES, KEPT_MESSAGE_BYTES, default_rules, render,
    template_names,
};
use msp_agent::watch::journal::JournalEntry;

/// Fields the rules look at; each entry takes its values from the input.
const FIELDS: &[&str] = &[
    "MESSAGE",
    "_TRANSPORT",
    "SYSLOG_IDENTIFIER",
    "MESSAGE_ID",
    "PRIORITY",
    "UNIT",
    "COREDUMP_COMM",
    "_SYSTEMD_UNIT",
];

fuzz_target!(|data: &[u8]| {
    // Entries separated by 0x1e, fields within an entry by 0x1f, in FIELDS order;
    // a field that begins with 0x01 is left out.
    // compiled once: a Regex clone shares its program
    static RULES: OnceLock<Vec<JournalRule>> = OnceLock::new();
    let rules = RULES.get_or_init(default_rules);
    let mut checks: Vec<JournalCheck> = rules.iter().cloned().map(JournalCheck::new).collect();
    let start = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
    for (i, raw) in data.split(|b| *b == 0x1e).take(200).enumerate() {
        let mut fields = BTreeMap::new();
        for (name, value) in FIELDS.iter().zip(raw.split(|b| *b == 0x1f)) {
            if value.first() != Some(&0x01) {
                fields.insert(name.to_string(), value.to_vec());
            }
        }
        let at = start + chrono::Duration::seconds(i as i64 * 7);
        let e = JournalEntry {
            cursor: format!("i={i}"),
            realtime: at,
            fields,
        };
        for c in &mut checks {
            if let Some(cond) = c.observe(&e) {
                let entries = cond.observation["entries"].as_array().expect("entries");
                assert!(entries.len() <= KEPT_ENTRIES);
                for k in entries {
                    let m = k["message"].as_str().expect("message text");
                    // invalid bytes become U+FFFD (3 bytes each)
                    assert!(m.len() <= 3 * KEPT_MESSAGE_BYTES);
                }
            }
            let _ = c.tick(at);
            let _ = c.next_deadline();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if template_names(text).is_ok() {
            assert!(
                render(text, |n| Some(n.len().to_string())).is_some(),
                "a template that checks out renders"
            );
        }
        let _ = render(text, |_| None);
    }
});
