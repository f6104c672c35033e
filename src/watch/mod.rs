//! Sources of facts. Each source owns its settings, its event type and its task;
//! it emits typed observations on a channel and decides nothing.
//!
//! A source that reads from a position (the journal's cursor) hands a
//! [`Checkpoint`] with the events read up to it; the runtime commits the
//! checkpoint in the same SQLite transaction as whatever those events caused,
//! so a restart neither misses nor repeats what the source had delivered.
//! Adding a source: its module here, a variant of `decide::agent::Input`, and
//! one line in the runtime that spawns its task.

pub mod disks;
pub mod journal;
pub mod units;

/// How far a source has delivered, to be made durable with its effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The source's name, e.g. `journal`.
    pub source: &'static str,
    /// Its position, opaque to everyone else.
    pub cursor: String,
}
