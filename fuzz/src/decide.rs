//! The agent's journal rules and the checks and incident types they use.

#[path = "../../src/decide/checks.rs"]
pub mod checks;
#[path = "../../src/decide/incident.rs"]
pub mod incident;
#[path = "../../src/decide/journal.rs"]
pub mod journal;
