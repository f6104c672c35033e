//! The journal entry the rules read.

#[path = "../../src/watch/journal.rs"]
pub mod journal;
