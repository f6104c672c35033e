//! The journal source's observation: one entry as journald stored it.
//!
//! Field values are bytes: journald stores `MESSAGE` and any other field as a
//! byte string, which need not be UTF-8 (a binary field, a program writing
//! Latin-1). The checks match on bytes and show text lossily.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// One journal entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The journal's cursor of this entry (`__CURSOR`).
    pub cursor: String,
    /// When journald received it (`__REALTIME_TIMESTAMP`).
    pub realtime: DateTime<Utc>,
    /// Every field of the entry, by name (`MESSAGE`, `_SYSTEMD_UNIT`, ...).
    pub fields: BTreeMap<String, Vec<u8>>,
}

impl JournalEntry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(name).map(Vec::as_slice)
    }

    /// A field as text, with invalid UTF-8 replaced.
    pub fn text(&self, name: &str) -> Option<String> {
        self.field(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}
