//! What a check is: a small evaluator that owns its own sample state and turns
//! a source's observations (and time passing) into [`Condition`]s for the
//! incident engine.
//!
//! Adding a check: a type implementing [`Check`] for its source's observation,
//! in its own file, and one line in the list `Agent::new` builds.

use chrono::{DateTime, Utc};

use super::incident::Condition;

pub trait Check<O>: Send {
    /// The check's name, as it appears in incidents, evidence and metrics.
    fn name(&self) -> &str;
    /// One observation: the evaluation it causes, if the check applies to it.
    fn observe(&mut self, obs: &O) -> Option<Condition>;
    /// Time passing: re-evaluations whose answer may have changed by `now`.
    fn tick(&mut self, now: DateTime<Utc>) -> Vec<Condition>;
    /// The next instant at which `tick` could answer differently, if any.
    fn next_deadline(&self) -> Option<DateTime<Utc>>;
}
