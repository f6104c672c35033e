//! Decisions, as pure code: incident state machines, flapping, crash loops,
//! rate limits and silences.
//!
//! Nothing here does I/O or reads a clock: every function takes the instant it
//! decides for. That is what lets the tables of tests below each module pin the
//! behaviour down, and what keeps "nothing done twice" a property of data.

pub mod agent;
pub mod checks;
pub mod disks;
pub mod incident;
pub mod journal;
pub mod limits;
pub mod policy;
pub mod units;
